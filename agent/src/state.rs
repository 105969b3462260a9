//! The state file `<state_dir>/state.json`: how the init container hands its token and
//! leases to the sidecar, and how a restarted sidecar finds them again.
//!
//! It holds the Vault token, its schedule, the mounts already looked up and, per
//! distinct source, the lease and the data last fetched (so files can be rendered again
//! without a request). The state volume is an agent-only memory `emptyDir`; the file is
//! written with mode 0600 by the same atomic writer as the secrets ([`files::write`]),
//! and only when its bytes change.
//!
//! It is versioned like the agent configuration: a file from a newer agent is not
//! guessed at; the agent starts fresh instead.
//!
//! Nothing here implements `Debug` with values: the token and the data never reach a
//! log.

use std::{collections::BTreeMap, fmt, io, path::Path};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{files, schedule::Action, vault::SecretData};

/// File name under `state_dir`.
pub const FILE: &str = "state.json";
/// Version this build writes; it reads this one only.
pub const VERSION: u32 = 1;
/// Mode of the state file: the token is in it.
pub const MODE: u32 = 0o600;

/// Why the state file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the state file {path} failed")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Not the JSON this agent writes. Only the position is reported: the file holds
    /// the token and secret data.
    #[error("the state file {path} is not valid (line {line}, column {column})")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
    },
    #[error("the state file {path} has version {found}, newer than this agent's {VERSION}")]
    TooNew { path: String, found: u64 },
    #[error("writing the state file failed")]
    Write(#[source] files::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything handed from one agent process to the next.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Who the token belongs to: a state written for another Vault, namespace or role
    /// is not adopted.
    pub vault_addr: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub auth_mount: String,
    pub role: String,
    pub token: TokenRecord,
    /// Mount path → is KV v2, so mounts are looked up once per pod, not per process.
    #[serde(default)]
    pub mounts: BTreeMap<String, bool>,
    #[serde(default)]
    pub sources: Vec<SourceRecord>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("vault_addr", &self.vault_addr)
            .field("role", &self.role)
            .field("token.accessor", &self.token.accessor)
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// The agent's token and its schedule. Times are milliseconds since the Unix epoch.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    #[serde(serialize_with = "expose", deserialize_with = "secret")]
    pub token: SecretString,
    #[serde(default)]
    pub accessor: Option<String>,
    /// TTL granted at login, in seconds; renewals ask for it again.
    pub ttl_secs: u64,
    pub renewable: bool,
    pub expires_ms: u64,
    pub next_ms: u64,
    pub action: Action,
}

/// One distinct source (path and parameters) and what was last fetched from it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub path: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub kind: crate::source::Kind,
    #[serde(default)]
    pub lease_id: String,
    /// TTL at issue, in seconds; renewals ask for it again.
    pub ttl_secs: u64,
    pub renewable: bool,
    pub expires_ms: u64,
    pub next_ms: u64,
    pub action: Action,
    /// Accessor of the token that created the lease.
    #[serde(default)]
    pub token_accessor: Option<String>,
    /// `data` is a whole KV v2 response; see [`crate::source::Held::kv_v2`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kv_v2: bool,
    #[serde(serialize_with = "expose_data", deserialize_with = "data")]
    pub data: SecretData,
}

fn expose<S: Serializer>(token: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose_secret())
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn expose_data<S: Serializer>(data: &SecretData, s: S) -> Result<S::Ok, S::Error> {
    data.expose().serialize(s)
}

fn data<'de, D: Deserializer<'de>>(d: D) -> Result<SecretData, D::Error> {
    Value::deserialize(d).map(SecretData)
}

/// Reads the state in `dir`. `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<State>> {
    let path = dir.join(FILE);
    let shown = path.display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: shown,
                source,
            });
        }
    };
    let invalid = |e: serde_json::Error| Error::Invalid {
        path: shown.clone(),
        line: e.line(),
        column: e.column(),
    };
    let doc: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    let found = doc.get("version").and_then(Value::as_u64).unwrap_or(0);
    if found > u64::from(VERSION) {
        return Err(Error::TooNew { path: shown, found });
    }
    serde_json::from_value(doc).map(Some).map_err(invalid)
}

/// Writes `state` into `dir` atomically with mode [`MODE`], unless unchanged.
pub fn save(dir: &Path, state: &State) -> Result<files::Outcome> {
    // Serializing strings, numbers and JSON values cannot fail.
    let bytes = serde_json::to_vec(state).unwrap_or_default();
    files::write(dir, FILE, &bytes, MODE).map_err(Error::Write)
}

/// Removes the state in `dir` (after its token was revoked). Missing is fine.
pub fn remove(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> State {
        State {
            version: VERSION,
            vault_addr: "https://v".into(),
            namespace: None,
            auth_mount: "auth/kubernetes".into(),
            role: "app".into(),
            token: TokenRecord {
                token: SecretString::from("s.tok-secret-123"),
                accessor: Some("acc".into()),
                ttl_secs: 60,
                renewable: true,
                expires_ms: 1,
                next_ms: 1,
                action: Action::Renew,
            },
            mounts: BTreeMap::from([("secret/".into(), true)]),
            sources: vec![SourceRecord {
                path: "database/creds/app".into(),
                params: BTreeMap::new(),
                kind: Kind::Lease,
                lease_id: "database/creds/app/x".into(),
                ttl_secs: 30,
                renewable: true,
                expires_ms: 2,
                next_ms: 2,
                action: Action::Renew,
                token_accessor: Some("acc".into()),
                kv_v2: false,
                data: SecretData(serde_json::json!({"password": "pw-data-secret"})),
            }],
        }
    }

    #[test]
    fn round_trips_with_mode_0600_and_debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let meta = std::fs::metadata(dir.path().join(FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.token.token.expose_secret(), "s.tok-secret-123");
        assert_eq!(back.sources[0].data.expose()["password"], "pw-data-secret");
        let shown = format!("{back:?}");
        assert!(
            !shown.contains("tok-secret") && !shown.contains("pw-data"),
            "{shown}"
        );
        assert_eq!(
            save(dir.path(), &back).unwrap(),
            files::Outcome::Unchanged,
            "the same state is not rewritten"
        );
    }

    #[test]
    fn refuses_newer_and_broken_files_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());

        let mut doc = serde_json::to_value(sample()).unwrap();
        doc["version"] = (VERSION + 1).into();
        std::fs::write(dir.path().join(FILE), doc.to_string()).unwrap();
        assert!(matches!(load(dir.path()), Err(Error::TooNew { .. })));

        std::fs::write(dir.path().join(FILE), r#"{"token": "s.tok-secret-123""#).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("tok-secret"), "{err}");

        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
    }
}
