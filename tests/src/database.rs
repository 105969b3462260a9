//! OpenBao's database secrets engine over the machine's PostgreSQL, one connection and
//! one role per test, as an operator would set it up with the CLI.
//!
//! Each role gets its own connection whose `username_template` starts every user name
//! with `v-<role>-`, so a test lists exactly its own PostgreSQL roles even while other
//! tests (and other test binaries) use the same server.

use serde_json::json;

use crate::openbao::OpenBao;
use crate::{Result, failed, postgres};

/// Mount path of the engine.
pub const MOUNT: &str = "database";

/// Enables the engine at [`MOUNT`] unless it already is.
pub fn enable(bao: &OpenBao) -> Result<()> {
    match bao.cli(&["secrets", "enable", "-path", MOUNT, "database"]) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already in use") => Ok(()),
        Err(e) => Err(e),
    }
}

/// TTLs of a dynamic role, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub default: u64,
    pub max: u64,
}

/// A database role (and its connection) of one test. On drop: its leases are revoked
/// through OpenBao if it still answers, and any PostgreSQL role left with its prefix is
/// dropped, so nothing outlives the test.
pub struct DbRole<'a> {
    bao: &'a OpenBao,
    pub name: String,
    pub ttls: Ttls,
}

impl std::fmt::Debug for DbRole<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbRole")
            .field("name", &self.name)
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl<'a> DbRole<'a> {
    /// Creates connection and role `name` (lowercase letters and digits, at most 20).
    pub fn create(bao: &'a OpenBao, name: &str, ttls: Ttls) -> Result<DbRole<'a>> {
        if name.is_empty()
            || name.len() > 20
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(failed(format!("unusable database role name {name:?}")));
        }
        enable(bao)?;
        bao.write_json(
            &format!("{MOUNT}/config/{name}"),
            &json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!(
                    "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}?sslmode=disable",
                    postgres::HOST, postgres::PORT, postgres::DATABASE
                ),
                "username": postgres::SUPERUSER,
                // Trust auth: the server never checks it.
                "password": "unused-with-trust-auth",
                "allowed_roles": [name],
                "verify_connection": true,
                "username_template": format!("v-{name}-{{{{random 16}}}}"),
            }),
        )?;
        let role = DbRole {
            bao,
            name: name.to_owned(),
            ttls,
        };
        bao.write_json(
            &format!("{MOUNT}/roles/{name}"),
            &json!({
                "db_name": name,
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
                ],
                "default_ttl": ttls.default,
                "max_ttl": ttls.max,
            }),
        )?;
        Ok(role)
    }

    /// The path an agent reads: `database/creds/<name>`.
    pub fn creds_path(&self) -> String {
        format!("{MOUNT}/creds/{}", self.name)
    }

    /// Prefix of every PostgreSQL user this role creates.
    pub fn user_prefix(&self) -> String {
        format!("v-{}-", self.name)
    }

    /// The PostgreSQL roles this role created that still exist.
    pub fn pg_roles(&self) -> Result<Vec<String>> {
        postgres::roles_with_prefix(&self.user_prefix())
    }

    /// Lease ids OpenBao still holds for this role (`sys/leases/lookup`, as root);
    /// empty when there are none.
    pub fn leases(&self) -> Result<Vec<String>> {
        let prefix = format!("{}/", self.creds_path());
        match self
            .bao
            .cli(&["list", &format!("sys/leases/lookup/{prefix}")])
        {
            Ok(out) => {
                let keys: Vec<String> = serde_json::from_str(&out)
                    .map_err(|e| failed(format!("listing leases printed non-JSON: {e}")))?;
                Ok(keys.into_iter().map(|k| format!("{prefix}{k}")).collect())
            }
            // Nothing left: the CLI prints `{}` and exits 2 (404 from the API).
            Err(e)
                if e.to_string().contains("exit status: 2")
                    && e.to_string().trim_end().ends_with("{}") =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for DbRole<'_> {
    fn drop(&mut self) {
        let _ = self.bao.cli(&[
            "lease",
            "revoke",
            "-prefix",
            &format!("{}/", self.creds_path()),
        ]);
        let _ = postgres::drop_roles_with_prefix(&self.user_prefix());
    }
}
