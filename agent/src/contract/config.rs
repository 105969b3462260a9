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

use std::collections::BTreeMap;

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
    /// Port of the sidecar's Prometheus endpoint on all addresses
    /// (`sidekey.dev/metrics-port`); `None`: no listener. See docs/metrics.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
    pub secrets: Vec<SecretSpec>,
}

/// How to reach Vault.
///
/// Trust: the agent trusts the certificates of [`VaultConfig::ca_pem`] and of
/// [`VaultConfig::ca_file`] together; only when both are `None` does it use the system
/// roots. The webhook never sets both (a pod's `ca-cert` replaces the webhook's CA).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`: the pod's `vault-addr`
    /// annotation, else the webhook's `--vault-addr`. No trailing slash.
    pub addr: String,
    /// PEM bundle of CAs to trust for Vault's certificate. `None`: see the type docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Vault namespace sent as `X-Vault-Namespace` on every request, login included
    /// (`vault-namespace` annotation). Without slashes at either end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name to verify Vault's certificate against (and send as SNI) instead of the host
    /// of [`VaultConfig::addr`] (`tls-server-name` annotation). A DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Absolute path, inside the agent container, of a PEM CA bundle to trust for
    /// Vault's certificate (`ca-cert` annotation). The webhook mounts the user's Secret
    /// or ConfigMap key read-only under [`layout::CA_MOUNT_PATH`]. The agent reads it at
    /// start; a missing or unparsable file is a configuration error (exit 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Skip verifying Vault's certificate (`tls-skip-verify` annotation). Only for
    /// tests and emergencies: anyone on the path can then read the token and every
    /// secret. The agent logs a warning at every start while it is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
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

/// The Vault auth method the agent logs in with. Both send the projected
/// service-account token of [`AuthConfig::jwt_path`]; they differ in the login body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `POST /v1/<mount_path>/login` with `{"role": ..., "jwt": ...}` of the Kubernetes
    /// auth method (Vault asks the cluster's TokenReview API about the token).
    #[default]
    Kubernetes,
    /// `POST /v1/<mount_path>/login` with `{"role": ..., "jwt": ...}` of the JWT/OIDC
    /// auth method (Vault checks the token's signature itself, against the cluster's
    /// JWKS or OIDC discovery). Default mount path then `auth/jwt`.
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
    /// File name relative to `secrets_dir`: `<name>`, or the `file-<name>` annotation,
    /// which may be a sub-path such as `db/config.json`. Validated by the webhook
    /// ([`check_relative_file`], and no file is another's directory) never to escape
    /// it; the agent checks again, creates missing parent directories (mode 0755) and
    /// writes the file atomically inside them.
    pub file: String,
    /// File mode, permission bits only, always including owner read (`perms-<name>`,
    /// default [`DEFAULT_FILE_MODE`]). The file belongs to the agent's user: a mode
    /// without read for others is readable by the app only when it runs as that user
    /// or shares its group.
    pub mode: u32,
    /// How the secret's data becomes the file's bytes (`format-<name>`).
    #[serde(default, skip_serializing_if = "Format::is_default")]
    pub format: Format,
    /// Per-secret refresh override, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_secs: Option<u64>,
    /// How to tell the app, once, after each real change of this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// Request parameters (`params-<name>`). Empty: the path is read (`GET`). Not empty:
    /// the path is written (`PUT`) with these parameters as the JSON body and the
    /// response rendered, as for `pki/issue/<role>` with `common_name`. Two secrets with
    /// the same path and parameters share one request (and one credential).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// A Go text/template template (`template-<name>`) rendering the file instead of
    /// [`SecretSpec::format`]; it reads its own secrets with `secret "<path>"`, so
    /// [`SecretSpec::path`] and [`SecretSpec::params`] are then not read and the path
    /// may be empty. See docs/templates.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl SecretSpec {
    /// A secret rendered to the file `name`, with the default mode and format and no
    /// per-secret refresh or notification.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        let name = name.into();
        SecretSpec {
            file: name.clone(),
            name,
            path: path.into(),
            mode: DEFAULT_FILE_MODE,
            format: Format::default(),
            refresh_secs: None,
            notify: None,
            params: BTreeMap::new(),
            template: None,
        }
    }
}

/// How a secret's data (the key/value map of a KV secret, or the `data` of any other
/// read) is written to its file. Keys are written in sorted order so the bytes only
/// change when the data does.
///
/// Serialized as `"json"`, `"yaml"`, `"dotenv"`, `"properties"` or `{"key": "<key>"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Format {
    /// A JSON object of the data, with a trailing newline.
    #[default]
    Json,
    /// A YAML mapping of the data.
    Yaml,
    /// `KEY=value` lines, values double-quoted with `\`, `"`, `$`, `` ` `` and newlines
    /// escaped, for `source`/`--env-file`-style loaders. Keys that are not shell
    /// identifiers are a render error naming the key (never the value).
    Dotenv,
    /// Java `.properties` lines `key=value`, escaped per `java.util.Properties`.
    Properties,
    /// The raw value of this one key, with no trailing newline added (a string as is;
    /// any other JSON value as compact JSON). A missing key is a render error naming it.
    Key(String),
}

impl Format {
    /// Whether this is [`Format::Json`], the default (left out of the JSON).
    pub fn is_default(&self) -> bool {
        *self == Format::Json
    }
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
            metrics_port: None,
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
            if s.path.is_empty() && s.template.is_none() {
                return Err(Error::Unusable(format!(
                    "secret {:?} has neither a path nor a template",
                    s.name
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
            if s.mode & 0o400 == 0 {
                return Err(Error::Unusable(format!(
                    "secret {:?}: mode {:04o} does not let the owner read the file",
                    s.name, s.mode
                )));
            }
        }
        if let Some((file, dir)) = file_under_file(self.secrets.iter().map(|s| s.file.as_str())) {
            return Err(Error::Unusable(format!(
                "file {file:?} would have to be a directory for {dir:?}"
            )));
        }
        if self.vault.addr.is_empty() {
            return Err(Error::Unusable("vault.addr is empty".into()));
        }
        Ok(())
    }
}

/// The first pair `(a, b)` of files where `b` lies under `a` (`a` = `db`,
/// `b` = `db/extra`): both cannot exist, since `a` would have to be a directory.
pub fn file_under_file<'a>(files: impl IntoIterator<Item = &'a str>) -> Option<(&'a str, &'a str)> {
    let files: std::collections::BTreeSet<&str> = files.into_iter().collect();
    for b in &files {
        let mut prefix = *b;
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if files.contains(parent) {
                return Some((parent, b));
            }
            prefix = parent;
        }
    }
    None
}

/// Checks a Vault address: `http://host[:port][/path]` or `https://…`, without user
/// info (it would land in every pod's environment), query or fragment. Returns it
/// without a trailing slash, or why not (never echoing user info).
pub fn check_vault_addr(raw: &str) -> Result<String, String> {
    let addr = raw.trim().trim_end_matches('/');
    // Messages quote the address without userinfo, query or fragment: a token or
    // password put there by mistake must not reach a denial or a log.
    let shown = redact_url(raw);
    if has_userinfo(addr) {
        return Err(format!(
            "{shown:?}: the URL must not carry credentials (user@host)"
        ));
    }
    let rest = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .ok_or_else(|| {
            format!(
                "{shown:?} is not an http:// or https:// URL, e.g. https://vault.vault.svc:8200"
            )
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("{shown:?} has no host"));
    }
    if addr.contains(['?', '#']) {
        return Err(format!(
            "{shown:?} is followed by a query or fragment ('?' or '#'); a Vault address has none"
        ));
    }
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{shown:?} contains whitespace"));
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{shown:?} has an invalid port"));
    }
    Ok(addr.to_owned())
}

/// Whether the authority of `url` (the part after `scheme://`, or the start when
/// there is no scheme, up to the first `/`, `?` or `#`) carries `user@` or
/// `user:password@`.
pub fn has_userinfo(url: &str) -> bool {
    let url = url.trim();
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

/// `url` as it may be quoted in a message or log: userinfo replaced by `***@`, query
/// and fragment dropped, so credentials written into a URL by mistake (an annotation
/// or a flag) are never echoed back.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let url = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    let (scheme, rest) = url.find("://").map_or(("", url), |i| url.split_at(i + 3));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rfind('@') {
        Some(at) => format!("{scheme}***@{}{path}", &authority[at + 1..]),
        None => format!("{scheme}{authority}{path}"),
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
                ..VaultConfig::default()
            },
            AuthConfig {
                method: AuthMethod::Kubernetes,
                mount_path: "auth/kubernetes".into(),
                role: "app".into(),
                jwt_path: layout::token_path(),
            },
        );
        c.secrets.push(SecretSpec {
            notify: Some(Notify::Signal {
                signal: "SIGHUP".into(),
                process: "nginx".into(),
            }),
            ..SecretSpec::new("db", "secret/data/db")
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

    #[test]
    fn new_fields_round_trip_and_old_documents_still_read() {
        let mut c = sample();
        c.vault.tls_server_name = Some("vault.internal".into());
        c.vault.ca_file = Some(format!("{}/ca.crt", layout::CA_MOUNT_PATH));
        c.auth.method = AuthMethod::Jwt;
        c.secrets[0].format = Format::Key("password".into());
        c.secrets[0].mode = 0o440;
        let text = c.to_json();
        assert!(text.contains(r#""format":{"key":"password"}"#), "{text}");
        assert_eq!(AgentConfig::from_json(&text).unwrap(), c);

        // A version 1 document written before these fields existed.
        let old = r#"{"version":1,"vault":{"addr":"https://v"},"auth":{"method":"kubernetes",
            "mount_path":"auth/kubernetes","role":"r","jwt_path":"/t"},"secrets_dir":"/s",
            "state_dir":"/st","refresh_secs":300,"secrets":[{"name":"db","path":"p",
            "file":"db","mode":420}]}"#;
        let read = AgentConfig::from_json(old).unwrap();
        assert_eq!(read.secrets[0].format, Format::Json);
        assert_eq!(read.vault.ca_file, None);
        // The default format is left out, so documents stay as they were.
        assert!(!sample().to_json().contains("format"));
    }

    #[test]
    fn refuses_modes_without_owner_read_and_files_under_files() {
        let mut c = sample();
        c.secrets[0].mode = 0o044;
        assert!(matches!(
            AgentConfig::from_json(&c.to_json()),
            Err(Error::Unusable(m)) if m.contains("owner read")
        ));
        let mut c = sample();
        c.secrets.push(SecretSpec {
            file: "db/extra".into(),
            ..SecretSpec::new("extra", "secret/data/extra")
        });
        assert!(matches!(
            AgentConfig::from_json(&c.to_json()),
            Err(Error::Unusable(m)) if m.contains("directory")
        ));
    }

    #[test]
    fn vault_addresses_are_http_urls_without_credentials() {
        assert_eq!(
            check_vault_addr("https://v:8200/").unwrap(),
            "https://v:8200"
        );
        for bad in [
            "v:8200",
            "https://",
            "https://u:hunter2@v",
            "https://v:x",
            "https://v/a b",
        ] {
            let e = check_vault_addr(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn credentials_in_a_refused_vault_address_are_never_echoed() {
        for bad in [
            "ftp://admin:hunter2@vault",
            "https://vault?token=hunter2",
            "https://vault#hunter2",
            "admin:hunter2@vault:8200",
            "https://admin:hunter2@vault/x y",
        ] {
            let e = check_vault_addr(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            assert!(e.contains("vault"), "the message still names the host: {e}");
        }
        let e = check_vault_addr("ftp://admin:hunter2@vault").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
    }

    #[test]
    fn redaction_drops_userinfo_query_and_fragment_only() {
        for (raw, shown) in [
            ("ftp://admin:hunter2@vault", "ftp://***@vault"),
            ("https://vault:8200?token=hunter2", "https://vault:8200"),
            (
                "http://admin:hunter2@localhost:8080/reload#x",
                "http://***@localhost:8080/reload",
            ),
            ("https://a@b@vault/p@q", "https://***@vault/p@q"),
            ("user:pw@host", "***@host"),
            ("https://vault:8200/v1", "https://vault:8200/v1"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
        assert!(has_userinfo("http://a:b@localhost"));
        assert!(!has_userinfo("http://localhost/a@b"));
    }
}
