//! The machine's PostgreSQL (127.0.0.1:5432, superuser `postgres`, trust auth), driven
//! with `psql`: list the roles the database secrets engine created, drop leftovers, and
//! log in as a client would with the credentials an agent rendered.
//!
//! The server trusts every local connection, so a connection alone proves only that
//! the role exists and may log in. [`login`] therefore also checks what a
//! `scram-sha-256` server would: the password against the role's stored SCRAM verifier
//! (`pg_authid.rolpassword`) and `VALID UNTIL` against the clock. A login that passes
//! here would pass on a server that asks for the password.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use crate::{Result, failed, process};

/// Host and port of the server.
pub const HOST: &str = "127.0.0.1";
pub const PORT: u16 = 5432;
/// Superuser the harness (and OpenBao's connection) uses.
pub const SUPERUSER: &str = "postgres";
/// The database everyone connects to.
pub const DATABASE: &str = "postgres";
/// How long one `psql` may take.
const PSQL_LIMIT: Duration = Duration::from_secs(10);

/// A `psql` connected as `user`, unaligned and tuples-only, stopping at the first error.
fn psql(user: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host={HOST} port={PORT} dbname={DATABASE} user={user} connect_timeout=5"
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    // Never read a password file or service file of whoever runs the tests.
    .env("PGPASSFILE", "/dev/null")
    .env_remove("PGSERVICE")
    .env_remove("PGPASSWORD");
    cmd
}

/// Runs `sql` as the superuser and returns the output lines.
pub fn query(sql: &str) -> Result<Vec<String>> {
    let mut cmd = psql(SUPERUSER);
    cmd.arg("-c").arg(sql);
    let out = process::run("psql", cmd, PSQL_LIMIT)
        .map_err(|e| failed(format!("PostgreSQL at {HOST}:{PORT}: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Whether the server answers; an error says how to get one.
pub fn check_available() -> Result<()> {
    query("select 1").map(|_| ()).map_err(|e| {
        failed(format!(
            "{e}\n(the lease tests need PostgreSQL on {HOST}:{PORT} with trust auth for {SUPERUSER})"
        ))
    })
}

/// Whether `s` is safe to put between single quotes in SQL: the names the harness and
/// OpenBao's username templates produce. Anything else is refused, never escaped.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%'))
}

/// Role names starting with `prefix`, sorted.
pub fn roles_with_prefix(prefix: &str) -> Result<Vec<String>> {
    if !plain(prefix) || prefix.contains('%') {
        return Err(failed(format!("unusable role prefix {prefix:?}")));
    }
    // `_` is a LIKE wildcard; starts_with() is exact.
    let mut roles = query(&format!(
        "select rolname from pg_roles where starts_with(rolname, '{prefix}') order by rolname"
    ))?;
    roles.sort();
    Ok(roles)
}

/// Whether role `name` exists.
pub fn role_exists(name: &str) -> Result<bool> {
    if !plain(name) {
        return Err(failed(format!("unusable role name {name:?}")));
    }
    Ok(!query(&format!("select 1 from pg_roles where rolname = '{name}'"))?.is_empty())
}

/// Drops every role starting with `prefix` (cleanup after a test whose OpenBao can no
/// longer revoke). Returns how many were dropped.
pub fn drop_roles_with_prefix(prefix: &str) -> Result<usize> {
    let roles = roles_with_prefix(prefix)?;
    for r in &roles {
        query(&format!("drop role if exists \"{r}\""))?;
    }
    Ok(roles.len())
}

/// Why a login was refused, as a database client would see it (and more precisely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("role {0:?} does not exist")]
    NoRole(String),
    #[error("role {0:?} may not log in")]
    NoLogin(String),
    #[error("role {0:?} has expired (VALID UNTIL is past)")]
    Expired(String),
    #[error("password authentication failed for role {0:?}")]
    BadPassword(String),
    #[error("role {user:?}: {why}")]
    Other { user: String, why: String },
}

/// Logs in as `user` with `password`: connects as that user (the server must know the
/// role and let it log in), and checks the password and expiry as `scram-sha-256`
/// authentication would.
pub fn login(user: &str, password: &SecretString) -> Result<(), LoginError> {
    let other = |why: String| LoginError::Other {
        user: user.to_owned(),
        why,
    };
    if !plain(user) || user.contains('%') {
        return Err(other("not a name the harness accepts".into()));
    }
    let row = query(&format!(
        "select rolcanlogin, coalesce(rolvaliduntil > now(), true), coalesce(rolpassword, '') \
         from pg_authid where rolname = '{user}'"
    ))
    .map_err(|e| other(e.to_string()))?;
    let Some(row) = row.first() else {
        return Err(LoginError::NoRole(user.to_owned()));
    };
    let mut cols = row.splitn(3, '|');
    let (can_login, valid, verifier) = (
        cols.next().unwrap_or_default(),
        cols.next().unwrap_or_default(),
        cols.next().unwrap_or_default(),
    );
    if can_login != "t" {
        return Err(LoginError::NoLogin(user.to_owned()));
    }
    if valid != "t" {
        return Err(LoginError::Expired(user.to_owned()));
    }
    if !scram_matches(verifier, password.expose_secret()) {
        return Err(LoginError::BadPassword(user.to_owned()));
    }

    // A real session as the role.
    let mut cmd = psql(user);
    cmd.env("PGPASSWORD", password.expose_secret())
        .args(["-c", "select current_user"]);
    match process::run("psql login", cmd, PSQL_LIMIT) {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == user => Ok(()),
        Ok(out) => Err(other(format!(
            "connected as {:?}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))),
        // The role can vanish between the check and the connection (revoked).
        Err(e) if e.to_string().contains("does not exist") => {
            Err(LoginError::NoRole(user.to_owned()))
        }
        Err(e) => Err(other(e.to_string())),
    }
}

/// Checks `password` against a PostgreSQL SCRAM-SHA-256 verifier
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, 7677).
/// Passwords are taken as their UTF-8 bytes (SASLprep is the identity for the ASCII
/// passwords OpenBao generates).
pub fn scram_matches(verifier: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let parse = || -> Option<(u32, Vec<u8>, Vec<u8>)> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, _server) = keys.split_once(':')?;
        Some((
            iter.parse().ok()?,
            b64.decode(salt).ok()?,
            b64.decode(stored).ok()?,
        ))
    };
    let Some((iterations, salt, stored)) = parse() else {
        return false;
    };
    let Some(iterations) = std::num::NonZeroU32::new(iterations) else {
        return false;
    };
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    let computed = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
    computed.as_ref() == stored.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifier_accepts_the_password_and_nothing_else() {
        if check_available().is_err() {
            eprintln!("skipped: no PostgreSQL");
            return;
        }
        let name = format!("sk-h-{}", crate::random_id(8));
        query(&format!(
            "create role \"{name}\" login password 'hunter2-correct'"
        ))
        .unwrap();
        let good = login(&name, &SecretString::from("hunter2-correct"));
        let bad = login(&name, &SecretString::from("hunter2-wrong"));
        query(&format!("alter role \"{name}\" valid until '2000-01-01'")).unwrap();
        let expired = login(&name, &SecretString::from("hunter2-correct"));
        drop_roles_with_prefix(&name).unwrap();
        let gone = login(&name, &SecretString::from("hunter2-correct"));
        assert_eq!(good, Ok(()));
        assert_eq!(bad, Err(LoginError::BadPassword(name.clone())));
        assert_eq!(expired, Err(LoginError::Expired(name.clone())));
        assert_eq!(gone, Err(LoginError::NoRole(name)));
    }

    #[test]
    fn malformed_verifiers_never_match() {
        for v in [
            "",
            "md5abc",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "SCRAM-SHA-256$x",
        ] {
            assert!(!scram_matches(v, "p"), "{v}");
        }
    }
}
