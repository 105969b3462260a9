//! One test's corner of the shared OpenBao: its own Kubernetes auth role, policy, KV
//! secret and (optionally) database role, all named after a random id, so tests that
//! share a server never see each other's logins, leases or PostgreSQL users.
//!
//! The auth role is bound to the demo app's service account, so the webhook-mutated
//! demo pod logs in as it once its `sidekey.dev/role` names it ([`Tenant::pod`]).

use serde_json::{Value, json};

use crate::audit::Trail;
use crate::database::{DbRole, Ttls};
use crate::openbao::OpenBao;
use crate::{Result, failed, review, setup};

/// Mount of the Kubernetes auth method (as [`setup::configure`] enables it).
pub const AUTH_MOUNT: &str = "auth/kubernetes";
/// File names the tenant's secrets render to.
pub const KV_FILE: &str = "kv.json";
pub const DB_FILE: &str = "db.json";

/// What a tenant needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `token_ttl` / `token_max_ttl` of the auth role (OpenBao durations).
    pub token_ttl: String,
    pub token_max_ttl: String,
    /// A database role with these TTLs, rendered to [`DB_FILE`]; `None`: no database.
    pub db: Option<Ttls>,
    /// Whether the policy has the optional `sys/leases/revoke/<creds path>/*` line.
    pub revoke_replaced: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_ttl: "10m".into(),
            token_max_ttl: "1h".into(),
            db: Some(Ttls {
                default: 30,
                max: 30,
            }),
            revoke_replaced: true,
        }
    }
}

/// A test's auth role, policy, KV secret and database role.
pub struct Tenant<'a> {
    bao: &'a OpenBao,
    /// Random id every name derives from (lowercase letters and digits).
    pub id: String,
    /// Kubernetes auth role and policy name.
    pub auth_role: String,
    pub policy: String,
    /// KV secret as the CLI names it (`secret/<id>`) and as the agent reads it.
    pub kv_path: String,
    pub kv_api_path: String,
    /// What the KV secret holds now.
    pub kv_data: Value,
    pub db: Option<DbRole<'a>>,
}

impl std::fmt::Debug for Tenant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The minimal policy of `docs/vault-policy.md` for an agent reading `kv_api_path`
/// and, if any, `creds_path`: read on those paths and, with `revoke_replaced` (the
/// optional, recommended line), revocation of that path's leases only. Token renewal,
/// lookup and self-revocation and lease renewal come from OpenBao's `default` policy,
/// which every login gets.
pub fn agent_policy(kv_api_path: &str, creds_path: Option<&str>, revoke_replaced: bool) -> String {
    let mut hcl = format!("path \"{kv_api_path}\" {{\n  capabilities = [\"read\"]\n}}\n");
    if let Some(p) = creds_path {
        hcl.push_str(&format!(
            "path \"{p}\" {{\n  capabilities = [\"read\"]\n}}\n"
        ));
        if revoke_replaced {
            hcl.push_str(&format!(
                "path \"sys/leases/revoke/{p}/*\" {{\n  capabilities = [\"update\"]\n}}\n"
            ));
        }
    }
    hcl
}

impl<'a> Tenant<'a> {
    /// Creates everything on `bao` (whose Kubernetes auth is already configured, see
    /// [`setup::configure`]).
    pub fn create(bao: &'a OpenBao, options: &Options) -> Result<Tenant<'a>> {
        let id = format!("t{}", crate::random_id(7));
        let kv_path = format!("secret/{id}");
        let kv_api_path = format!("secret/data/{id}");
        let kv_data = json!({
            "username": format!("user-{id}"),
            "password": crate::random_id(32),
        });
        bao.kv_put(&kv_path, &kv_data)?;
        let db = match options.db {
            Some(ttls) => Some(DbRole::create(bao, &id, ttls)?),
            None => None,
        };
        let policy = format!("sidekey-{id}");
        bao.policy_write(
            &policy,
            &agent_policy(
                &kv_api_path,
                db.as_ref().map(DbRole::creds_path).as_deref(),
                options.revoke_replaced,
            ),
        )?;
        bao.write_json(
            &format!("{AUTH_MOUNT}/role/{id}"),
            &json!({
                "bound_service_account_names": [setup::SERVICE_ACCOUNT],
                "bound_service_account_namespaces": [setup::NAMESPACE],
                "audience": setup::AUDIENCE,
                "token_policies": [policy],
                "token_ttl": options.token_ttl,
                "token_max_ttl": options.token_max_ttl,
            }),
        )?;
        Ok(Tenant {
            bao,
            auth_role: id.clone(),
            id,
            policy,
            kv_path,
            kv_api_path,
            kv_data,
            db,
        })
    }

    /// The database role; an error if the tenant has none.
    pub fn db(&self) -> Result<&DbRole<'a>> {
        self.db
            .as_ref()
            .ok_or_else(|| failed("this tenant has no database role"))
    }

    /// Stores a new random password in the KV secret and returns the new data.
    pub fn update_kv(&mut self) -> Result<Value> {
        let mut data = self.kv_data.clone();
        data["password"] = json!(crate::random_id(32));
        self.bao.kv_put(&self.kv_path, &data)?;
        self.kv_data = data.clone();
        Ok(data)
    }

    /// The demo app's pod (as the ReplicaSet controller creates it) with its Sidekey
    /// annotations replaced by this tenant's: role, the KV secret as [`KV_FILE`], the
    /// database credential as [`DB_FILE`], then `extra` (`refresh`, `agent-mode`, ...;
    /// keys without the `sidekey.dev/` prefix).
    pub fn pod(&self, extra: &[(&str, &str)]) -> Result<Value> {
        let mut deployment = review::fixture("deployment-app.json")?;
        let annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            .as_object_mut()
            .ok_or_else(|| failed("the fixture has no template annotations"))?;
        annotations.retain(|k, _| !k.starts_with("sidekey.dev/"));
        let mut put = |k: &str, v: &str| {
            annotations.insert(format!("sidekey.dev/{k}"), json!(v));
        };
        put("inject", "true");
        put("role", &self.auth_role);
        put(&format!("secret-{KV_FILE}"), &self.kv_api_path);
        if let Some(db) = &self.db {
            put(&format!("secret-{DB_FILE}"), &db.creds_path());
        }
        for (k, v) in extra {
            put(k, v);
        }
        review::pod_from_deployment(&deployment)
    }

    /// The audit log now.
    pub fn trail(&self) -> Result<Trail> {
        Trail::read(self.bao.audit_log())
    }
}
