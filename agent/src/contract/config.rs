//! The agent's configuration: what the webhook derives from a pod's annotations and the
//! agent executes.
//!
//! It travels as JSON in [`CONFIG_ENV`] so the mutated pod is runnable as is, with no
//! ConfigMap or Secret created by the webhook, and so `kubectl get pod -o yaml` shows
//! exactly what the agent will do. It never holds a secret value: paths, names and the
//! Vault CA certificate (public) only.
//!
//! # Versions
//!
//! The JSON carries `"version"`. An agent reads its own [`VERSION`] and the one before
//! it (so a webhook may be upgraded before or after the agent image during a rollout)
//! and refuses a newer one with an error that says to upgrade the agent image, rather
//! than guessing at fields it does not know.

use serde::{Deserialize, Serialize};

use super::layout;

/// Environment variable holding the JSON configuration in the agent containers.
pub const CONFIG_ENV: &str = "SIDEKEY_AGENT_CONFIG";

/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// The oldest version this build still reads. Version 1 is the first, so for now this
/// equals [`VERSION`]; when version 2 lands it stays 1 and [`AgentConfig::from_json`]
/// upgrades a v1 document.
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// Default interval for re-reading static secrets (KV) when no annotation sets one.
pub const DEFAULT_REFRESH_SECS: u64 = 300;

/// Default file mode of a rendered secret: readable by any user id in the pod, so the
/// app can read it without an `fsGroup`. The volume is visible only to the pod's
/// containers that mount it.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Everything the agent needs to run, for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Schema version, see the module docs.
    pub version: u32,
    pub vault: VaultConfig,
    pub auth: AuthConfig,
    /// Directory the secrets are rendered into.
    pub secrets_dir: String,
    /// Agent-only directory for the token and lease state.
    pub state_dir: String,
    /// Re-read interval for static secrets, in seconds.
    pub refresh_secs: u64,
    /// Seconds the sidecar waits after SIGTERM before revoking its credentials, so the
    /// app can drain while its database login still works.
    #[serde(default)]
    pub revoke_delay_secs: u64,
    pub secrets: Vec<SecretSpec>,
}

/// How to reach Vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// PEM bundle of CAs to trust for Vault's certificate. `None`: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Vault namespace sent as `X-Vault-Namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How the agent logs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub method: AuthMethod,
    /// Mount path of the auth method without leading or trailing slash, e.g.
    /// `auth/kubernetes`.
    pub mount_path: String,
    /// Vault role to log in as.
    pub role: String,
    /// File holding the service-account JWT; re-read at every login because the
    /// kubelet rotates it.
    pub jwt_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Kubernetes,
    Jwt,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// The name from the annotation key (`secret-<name>`); used in logs and metrics.
    pub name: String,
    /// Vault path to read, as written by the user (`secret/data/app` or `secret/app`).
    pub path: String,
    /// File name relative to `secrets_dir`. Validated by the webhook never to escape
    /// it; the agent checks again before writing.
    pub file: String,
    /// File mode (permission bits only).
    pub mode: u32,
    /// Per-secret refresh override, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_secs: Option<u64>,
    /// How to tell the app, once, after each real change of this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// A notification sent after a rendered file really changed, once the file is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Notify {
    /// `POST` to a URL on the pod's own loopback (the containers of a pod share their
    /// network namespace), e.g. `http://127.0.0.1:8080/-/reload`.
    Http { url: String },
    /// A signal (`SIGHUP`, `HUP`, ...) to every process whose name is `process`; needs
    /// `shareProcessNamespace: true` on the pod to reach the app's processes.
    Signal { signal: String, process: String },
    /// A program run as an argument vector, without a shell (the agent image has none).
    Command { argv: Vec<String> },
}

/// Why a configuration document was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or JSON of the wrong shape.
    #[error("agent configuration in {CONFIG_ENV} is not valid: {0}")]
    Invalid(#[source] serde_json::Error),
    /// The document has no numeric `version` field.
    #[error("agent configuration in {CONFIG_ENV} has no \"version\" number")]
    NoVersion,
    /// Written by a newer webhook than this agent understands.
    #[error(
        "agent configuration version {found} is newer than this agent reads \
         (up to {VERSION}); upgrade the agent image to the webhook's release"
    )]
    TooNew { found: u32 },
    /// Written by a webhook too old for this agent.
    #[error(
        "agent configuration version {found} is too old for this agent (reads \
         {OLDEST_READABLE_VERSION} to {VERSION}); upgrade the webhook or pin an older agent image"
    )]
    TooOld { found: u32 },
    /// Well-formed but unusable (for example a file name that escapes the directory).
    #[error("agent configuration is not usable: {0}")]
    Unusable(String),
}

impl AgentConfig {
    /// A configuration with Sidekey's standard layout and no secrets.
    pub fn new(vault: VaultConfig, auth: AuthConfig) -> Self {
        AgentConfig {
            version: VERSION,
            vault,
            auth,
            secrets_dir: layout::SECRETS_MOUNT_PATH.to_owned(),
            state_dir: layout::STATE_MOUNT_PATH.to_owned(),
            refresh_secs: DEFAULT_REFRESH_SECS,
            revoke_delay_secs: 0,
            secrets: Vec::new(),
        }
    }

    /// Reads a configuration document of any version this build understands.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(Error::Invalid)?;
        let found = doc
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or(Error::NoVersion)?;
        let found = u32::try_from(found).map_err(|_| Error::TooNew { found: u32::MAX })?;
        if found > VERSION {
            return Err(Error::TooNew { found });
        }
        if found < OLDEST_READABLE_VERSION {
            return Err(Error::TooOld { found });
        }
        // Only one version exists so far. An upgrade of an older document goes here,
        // as a function from the old struct to this one.
        let config: AgentConfig = serde_json::from_value(doc).map_err(Error::Invalid)?;
        config.check()?;
        Ok(config)
    }

    /// Serializes for [`CONFIG_ENV`].
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and vectors always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Invariants the webhook guarantees and the agent relies on; checked again on the
    /// agent side because the environment variable can be edited by hand.
    pub fn check(&self) -> Result<(), Error> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.secrets {
            if let Err(why) = check_relative_file(&s.file) {
                return Err(Error::Unusable(format!(
                    "secret {:?}: file {:?} {why}",
                    s.name, s.file
                )));
            }
            if !seen.insert(s.file.as_str()) {
                return Err(Error::Unusable(format!(
                    "two secrets render to the same file {:?}",
                    s.file
                )));
            }
            if s.mode > 0o777 {
                return Err(Error::Unusable(format!(
                    "secret {:?}: mode {:o} is not a permission mode",
                    s.name, s.mode
                )));
            }
        }
        if self.vault.addr.is_empty() {
            return Err(Error::Unusable("vault.addr is empty".into()));
        }
        Ok(())
    }
}

/// Checks that `file` is a relative path that stays inside the directory it is joined
/// to: no empty, absolute, `.` or `..` component. Returns why not.
pub fn check_relative_file(file: &str) -> Result<(), &'static str> {
    if file.is_empty() {
        return Err("is empty");
    }
    if file.starts_with('/') {
        return Err("is absolute; it must be relative to the secrets directory");
    }
    if file.contains('\0') {
        return Err("contains a NUL byte");
    }
    for part in file.split('/') {
        match part {
            "" => return Err("has an empty path component"),
            "." | ".." => return Err("has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        let mut c = AgentConfig::new(
            VaultConfig {
                addr: "https://vault:8200".into(),
                ca_pem: None,
                namespace: None,
            },
            AuthConfig {
                method: AuthMethod::Kubernetes,
                mount_path: "auth/kubernetes".into(),
                role: "app".into(),
                jwt_path: layout::token_path(),
            },
        );
        c.secrets.push(SecretSpec {
            name: "db".into(),
            path: "secret/data/db".into(),
            file: "db".into(),
            mode: DEFAULT_FILE_MODE,
            refresh_secs: None,
            notify: Some(Notify::Signal {
                signal: "SIGHUP".into(),
                process: "nginx".into(),
            }),
        });
        c
    }

    #[test]
    fn round_trips_through_json() {
        let c = sample();
        assert_eq!(AgentConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn refuses_a_newer_version_and_says_what_to_do() {
        let mut doc: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        doc["version"] = (VERSION + 1).into();
        doc["something_new"] = true.into();
        let err = AgentConfig::from_json(&doc.to_string()).unwrap_err();
        assert!(matches!(err, Error::TooNew { found } if found == VERSION + 1));
        assert!(err.to_string().contains("upgrade the agent image"), "{err}");
    }

    #[test]
    fn refuses_missing_version_and_unknown_fields() {
        assert!(matches!(
            AgentConfig::from_json("{}"),
            Err(Error::NoVersion)
        ));
        assert!(matches!(
            AgentConfig::from_json("not json"),
            Err(Error::Invalid(_))
        ));
        let mut doc: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        doc["typo_field"] = 1.into();
        assert!(matches!(
            AgentConfig::from_json(&doc.to_string()),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn refuses_files_that_escape_the_directory() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "",
            "./x",
        ] {
            let mut c = sample();
            c.secrets[0].file = bad.into();
            assert!(
                matches!(
                    AgentConfig::from_json(&c.to_json()),
                    Err(Error::Unusable(_))
                ),
                "{bad:?} was accepted"
            );
        }
        let mut c = sample();
        c.secrets[0].file = "sub/dir/file.txt".into();
        assert!(AgentConfig::from_json(&c.to_json()).is_ok());
    }
}
