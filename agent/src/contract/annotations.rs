//! The pod annotations users write, and how they become an [`AgentConfig`].
//!
//! [`TABLE`] is the single list of supported keys; `docs/annotations.md` is checked
//! against it by a test. Every key lives under [`PREFIX`]. A key under the prefix that
//! is not in the table is refused, so that a typo (`secrets-db`) is reported at pod
//! creation instead of silently rendering nothing.

use std::collections::BTreeMap;

use super::config::{self, AgentConfig, AuthConfig, AuthMethod, Notify, SecretSpec, VaultConfig};
use super::duration;
use super::layout;

/// Prefix of every Sidekey annotation and of the opt-in label.
pub const PREFIX: &str = "sidekey.dev/";

/// Opt-in key; as an annotation or as a label with value `"true"`.
pub const INJECT: &str = "inject";
pub const ROLE: &str = "role";
pub const AUTH_PATH: &str = "auth-path";
/// Per-secret prefix: `secret-<name>: <vault path>`.
pub const SECRET_PREFIX: &str = "secret-";
/// Pod-wide re-read interval of static secrets.
pub const REFRESH: &str = "refresh";
/// Per-secret override of [`REFRESH`].
pub const REFRESH_PREFIX: &str = "refresh-";
/// Per-secret notification after a change.
pub const NOTIFY_PREFIX: &str = "notify-";
/// Delay between SIGTERM and revocation.
pub const REVOKE_DELAY: &str = "revoke-delay";

/// Shortest refresh interval accepted: anything faster only loads Vault.
pub const MIN_REFRESH_SECS: u64 = 1;
/// Longest refresh interval accepted (7 days); longer is almost surely a typo.
pub const MAX_REFRESH_SECS: u64 = 7 * 24 * 3600;
/// Longest revoke delay accepted; the pod's `terminationGracePeriodSeconds` must cover it.
pub const MAX_REVOKE_DELAY_SECS: u64 = 3600;

/// Default auth mount path when `auth-path` is not set.
pub const DEFAULT_AUTH_PATH: &str = "auth/kubernetes";

/// Longest name part of an annotation key Kubernetes accepts.
const MAX_KEY_NAME_LEN: usize = 63;
/// Longest Vault path accepted in an annotation value.
const MAX_PATH_LEN: usize = 1024;

/// One supported annotation, as documented.
#[derive(Debug, Clone, Copy)]
pub struct Annotation {
    /// Key without [`PREFIX`]; per-secret keys end in `-` and take a `<name>`.
    pub key: &'static str,
    /// Whether the key takes a `<name>` suffix naming the secret.
    pub per_secret: bool,
    /// Default when absent, as shown to users.
    pub default: &'static str,
    /// Values accepted, as shown to users.
    pub allowed: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every annotation Sidekey understands.
pub const TABLE: &[Annotation] = &[
    Annotation {
        key: INJECT,
        per_secret: false,
        default: "`false`",
        allowed: "`true`, `false`",
        meaning: "Opt the pod in to injection. Also accepted as a label, which lets the \
                  cluster fail closed for labelled pods only.",
    },
    Annotation {
        key: ROLE,
        per_secret: false,
        default: "none (required)",
        allowed: "a Vault role name",
        meaning: "Role of the auth method the agent logs in as.",
    },
    Annotation {
        key: AUTH_PATH,
        per_secret: false,
        default: "`auth/kubernetes`",
        allowed: "a mount path such as `auth/k8s-prod`",
        meaning: "Mount path of the Kubernetes auth method in Vault.",
    },
    Annotation {
        key: SECRET_PREFIX,
        per_secret: true,
        default: "none",
        allowed: "a Vault path such as `secret/data/app` (KV v2) or `secret/app`",
        meaning: "Read this path and render it to `/vault/secrets/<name>`. KV v2 data \
                  renders as a JSON object of the secret's keys.",
    },
    Annotation {
        key: REFRESH,
        per_secret: false,
        default: "`5m`",
        allowed: "a duration from `1s` to `7d`, e.g. `30s`, `5m`, `1h30m`",
        meaning: "How often static secrets (KV) are re-read. A file is rewritten, and \
                  the app notified, only when its content changed. Dynamic credentials \
                  follow their lease instead and are never re-issued by a refresh.",
    },
    Annotation {
        key: REFRESH_PREFIX,
        per_secret: true,
        default: "the pod's `refresh`",
        allowed: "a duration from `1s` to `7d`",
        meaning: "Re-read interval for this one secret.",
    },
    Annotation {
        key: NOTIFY_PREFIX,
        per_secret: true,
        default: "none",
        allowed: "`http://localhost:<port>/<path>` (POST), `signal:<SIGNAL>:<process>`, \
                  or `exec:[\"/path/to/program\", \"arg\"]`",
        meaning: "Tell the app once after each real change of this file, when the file \
                  is complete. Signals need `shareProcessNamespace: true`; commands run \
                  in the agent container without a shell.",
    },
    Annotation {
        key: REVOKE_DELAY,
        per_secret: false,
        default: "`0s`",
        allowed: "a duration up to `1h`",
        meaning: "On pod termination, wait this long before revoking the pod's \
                  credentials, so the app can drain. Keep it below the pod's \
                  `terminationGracePeriodSeconds`.",
    },
];

/// Settings of the webhook that every injected agent inherits.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Vault address given to the webhook (`--vault-addr`).
    pub vault_addr: String,
    /// PEM CA bundle given to the webhook (`--vault-ca-file`), passed on to the agent.
    pub vault_ca_pem: Option<String>,
}

/// A pod annotation that cannot be honoured. Its `Display` is what the person creating
/// the pod reads in the admission denial, so it names the key and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key:?}: {problem}")]
pub struct AnnotationError {
    /// Full annotation key (with prefix).
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        key: format!("{PREFIX}{key}"),
        problem: problem.into(),
    }
}

/// Whether the pod asks for injection, by annotation or by label. An opt-in value that
/// is neither `true` nor `false` is an error rather than a silent "no".
pub fn opted_in(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, AnnotationError> {
    let key = format!("{PREFIX}{INJECT}");
    let mut wanted = false;
    for (source, map) in [("annotation", annotations), ("label", labels)] {
        if let Some(v) = map.get(&key) {
            match parse_bool(v) {
                Some(b) => wanted |= b,
                None => {
                    return Err(AnnotationError {
                        key,
                        problem: format!("{source} value {v:?} is not \"true\" or \"false\""),
                    });
                }
            }
        }
    }
    Ok(wanted)
}

/// Builds the agent configuration for an opted-in pod from its annotations.
pub fn agent_config(
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<AgentConfig, AnnotationError> {
    let mut role = None;
    let mut auth_path = DEFAULT_AUTH_PATH.to_owned();
    let mut refresh_secs = config::DEFAULT_REFRESH_SECS;
    let mut revoke_delay_secs = 0;
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    // Per-secret options, by secret name, with the key they came from (for errors).
    let mut refresh_of: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut notify_of: BTreeMap<String, (String, Notify)> = BTreeMap::new();

    for (full_key, value) in annotations {
        let Some(key) = full_key.strip_prefix(PREFIX) else {
            continue;
        };
        if key.len() > MAX_KEY_NAME_LEN {
            return Err(err(
                key,
                format!("the key's name part is longer than {MAX_KEY_NAME_LEN} characters"),
            ));
        }
        if full_key == layout::STATUS_ANNOTATION || key == INJECT {
            continue;
        }
        if let Some(name) = key.strip_prefix(SECRET_PREFIX) {
            check_secret_name(key, name)?;
            secrets.insert(name.to_owned(), parse_vault_path(key, value)?);
            continue;
        }
        if let Some(name) = key.strip_prefix(REFRESH_PREFIX) {
            let secs = parse_refresh(key, value)?;
            refresh_of.insert(name.to_owned(), (key.to_owned(), secs));
            continue;
        }
        if let Some(name) = key.strip_prefix(NOTIFY_PREFIX) {
            notify_of.insert(name.to_owned(), (key.to_owned(), parse_notify(key, value)?));
            continue;
        }
        match key {
            ROLE => {
                let v = value.trim();
                if v.is_empty() || v.contains(char::is_whitespace) || v.contains('/') {
                    return Err(err(key, format!("{value:?} is not a role name")));
                }
                role = Some(v.to_owned());
            }
            AUTH_PATH => auth_path = parse_mount_path(key, value)?,
            REFRESH => refresh_secs = parse_refresh(key, value)?,
            REVOKE_DELAY => {
                let d = parse_duration(key, value)?;
                if d.as_secs() > MAX_REVOKE_DELAY_SECS {
                    return Err(err(
                        key,
                        format!("{value:?} is longer than the maximum of 1h"),
                    ));
                }
                revoke_delay_secs = d.as_secs();
            }
            _ => return Err(unknown(key)),
        }
    }

    let role = role.ok_or_else(|| {
        err(
            ROLE,
            "is required when injection is on: set it to the Vault role the pod logs in as",
        )
    })?;
    if secrets.is_empty() {
        return Err(err(
            &format!("{SECRET_PREFIX}<name>"),
            "no secret to render: add at least one, e.g. sidekey.dev/secret-db: secret/data/db",
        ));
    }

    // A per-secret option must name a declared secret, or it would silently do nothing.
    let option_keys = refresh_of.iter().map(|(n, (k, _))| (n, k));
    for (name, key) in option_keys.chain(notify_of.iter().map(|(n, (k, _))| (n, k))) {
        if !secrets.contains_key(name) {
            return Err(err(
                key,
                format!(
                    "names secret {name:?}, but there is no {PREFIX}{SECRET_PREFIX}{name} annotation"
                ),
            ));
        }
    }

    let vault = VaultConfig {
        addr: defaults.vault_addr.clone(),
        ca_pem: defaults.vault_ca_pem.clone(),
        namespace: None,
    };
    let auth = AuthConfig {
        method: AuthMethod::Kubernetes,
        mount_path: auth_path,
        role,
        jwt_path: layout::token_path(),
    };
    let mut config = AgentConfig::new(vault, auth);
    config.refresh_secs = refresh_secs;
    config.revoke_delay_secs = revoke_delay_secs;
    config.secrets = secrets
        .into_iter()
        .map(|(name, path)| SecretSpec {
            file: name.clone(),
            refresh_secs: refresh_of.get(&name).map(|(_, secs)| *secs),
            notify: notify_of.remove(&name).map(|(_, n)| n),
            name,
            path,
            mode: config::DEFAULT_FILE_MODE,
        })
        .collect();
    Ok(config)
}

/// The annotation table as Markdown rows, as it stands in `docs/annotations.md` between
/// the `BEGIN TABLE` and `END TABLE` markers (a test keeps the two equal).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| annotation | per secret | default | allowed values | meaning |\n");
    out.push_str("|---|---|---|---|---|\n");
    for a in TABLE {
        let key = if a.per_secret {
            format!("`{PREFIX}{}<name>`", a.key)
        } else {
            format!("`{PREFIX}{}`", a.key)
        };
        let per = if a.per_secret { "yes" } else { "no" };
        let meaning = a.meaning.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "| {key} | {per} | {} | {} | {meaning} |\n",
            a.default, a.allowed
        ));
    }
    out
}

fn unknown(key: &str) -> AnnotationError {
    let known: Vec<String> = TABLE
        .iter()
        .map(|a| {
            if a.per_secret {
                format!("{}<name>", a.key)
            } else {
                a.key.to_owned()
            }
        })
        .collect();
    err(
        key,
        format!(
            "unknown Sidekey annotation; known keys are {}",
            known.join(", ")
        ),
    )
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A secret name becomes a file name, so it must be a valid annotation-key name part:
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric. That rules out `/`,
/// `..` and hidden files by construction.
fn check_secret_name(key: &str, name: &str) -> Result<(), AnnotationError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!(
                "secret name {name:?} must be letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

fn parse_vault_path(key: &str, value: &str) -> Result<String, AnnotationError> {
    let path = value.trim().trim_start_matches('/');
    if path.is_empty() {
        return Err(err(key, "the Vault path is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(err(
            key,
            format!("the Vault path is longer than {MAX_PATH_LEN} characters"),
        ));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(err(
            key,
            format!("Vault path {path:?} contains whitespace, '?' or '#'"),
        ));
    }
    if path
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(err(
            key,
            format!("Vault path {path:?} has an empty, '.' or '..' segment"),
        ));
    }
    Ok(path.to_owned())
}

fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration, AnnotationError> {
    duration::parse(value).map_err(|e| err(key, e.to_string()))
}

fn parse_refresh(key: &str, value: &str) -> Result<u64, AnnotationError> {
    let d = parse_duration(key, value)?;
    if d.as_secs() < MIN_REFRESH_SECS {
        return Err(err(
            key,
            format!("{value:?} is shorter than the minimum of 1s"),
        ));
    }
    if d.as_secs() > MAX_REFRESH_SECS {
        return Err(err(
            key,
            format!("{value:?} is longer than the maximum of 7d"),
        ));
    }
    Ok(d.as_secs())
}

/// Signals a notification may send: the ones apps conventionally reload or rotate on.
const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH",
];

fn parse_notify(key: &str, value: &str) -> Result<Notify, AnnotationError> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if !h.ends_with(']') || h.starts_with('[') => {
                if port.parse::<u16>().is_err() {
                    return Err(err(key, format!("{port:?} is not a port number")));
                }
                h
            }
            _ => authority,
        };
        if !matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return Err(err(
                key,
                format!(
                    "host {host:?} is not the pod's own loopback: use localhost, 127.0.0.1 or [::1]"
                ),
            ));
        }
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(key, "the URL contains whitespace"));
        }
        return Ok(Notify::Http { url: v.to_owned() });
    }
    if let Some(rest) = v.strip_prefix("signal:") {
        let Some((sig, process)) = rest.split_once(':') else {
            return Err(err(
                key,
                "write a signal notification as signal:<SIGNAL>:<process name>",
            ));
        };
        let sig = sig.trim().to_ascii_uppercase();
        let sig = if sig.starts_with("SIG") {
            sig
        } else {
            format!("SIG{sig}")
        };
        if !SIGNALS.contains(&sig.as_str()) {
            return Err(err(
                key,
                format!("signal {sig:?} is not one of {}", SIGNALS.join(", ")),
            ));
        }
        let process = process.trim();
        if process.is_empty() || process.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(err(key, format!("{process:?} is not a process name")));
        }
        return Ok(Notify::Signal {
            signal: sig,
            process: process.to_owned(),
        });
    }
    if let Some(rest) = v.strip_prefix("exec:") {
        let argv: Vec<String> = serde_json::from_str(rest.trim()).map_err(|_| {
            err(key, "write a command as exec:[\"/path/to/program\", \"arg\", ...] (a JSON array; there is no shell)")
        })?;
        match argv.first() {
            Some(p) if p.starts_with('/') => {}
            _ => {
                return Err(err(
                    key,
                    "the command's first element must be an absolute program path",
                ));
            }
        }
        return Ok(Notify::Command { argv });
    }
    Err(err(
        key,
        "use http://localhost:<port>/<path>, signal:<SIGNAL>:<process> or exec:[\"/program\", \"arg\"]",
    ))
}

fn parse_mount_path(key: &str, value: &str) -> Result<String, AnnotationError> {
    let path = value.trim().trim_matches('/');
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.split('/').all(|p| {
            !p.is_empty()
                && p != ".."
                && p != "."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(path.to_owned())
    } else {
        Err(err(
            key,
            format!("{value:?} is not an auth mount path such as auth/kubernetes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn defaults() -> Defaults {
        Defaults {
            vault_addr: "https://vault:8200".into(),
            vault_ca_pem: Some("PEM".into()),
        }
    }

    #[test]
    fn opt_in_by_annotation_or_label() {
        let on = map(&[("sidekey.dev/inject", "true")]);
        let none = map(&[]);
        assert_eq!(opted_in(&on, &none), Ok(true));
        assert_eq!(opted_in(&none, &on), Ok(true));
        assert_eq!(opted_in(&none, &none), Ok(false));
        assert_eq!(
            opted_in(&map(&[("sidekey.dev/inject", "False")]), &none),
            Ok(false)
        );
        let bad = opted_in(&map(&[("sidekey.dev/inject", "yes please")]), &none).unwrap_err();
        assert_eq!(bad.key, "sidekey.dev/inject");
    }

    #[test]
    fn builds_config_with_defaults() {
        let a = map(&[
            ("sidekey.dev/inject", "true"),
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-database-config.txt", "secret/data/db"),
            ("other.io/ignored", "x"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.auth.role, "app");
        assert_eq!(c.auth.mount_path, "auth/kubernetes");
        assert_eq!(c.vault.ca_pem.as_deref(), Some("PEM"));
        assert_eq!(c.secrets.len(), 1);
        assert_eq!(c.secrets[0].file, "database-config.txt");
        assert_eq!(c.secrets[0].path, "secret/data/db");
        assert!(c.check().is_ok());
    }

    #[test]
    fn denials_name_the_annotation() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("sidekey.dev/secret-db", "secret/db")],
                "sidekey.dev/role",
            ),
            (&[("sidekey.dev/role", "app")], "sidekey.dev/secret-<name>"),
            (
                &[("sidekey.dev/role", "app"), ("sidekey.dev/secret-db", "")],
                "sidekey.dev/secret-db",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/../b"),
                ],
                "sidekey.dev/secret-db",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-.hidden", "a/b"),
                ],
                "sidekey.dev/secret-.hidden",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/b"),
                    ("sidekey.dev/secrets-x", "a"),
                ],
                "sidekey.dev/secrets-x",
            ),
            (
                &[
                    ("sidekey.dev/role", "a b"),
                    ("sidekey.dev/secret-db", "a/b"),
                ],
                "sidekey.dev/role",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/b"),
                    ("sidekey.dev/auth-path", "../x"),
                ],
                "sidekey.dev/auth-path",
            ),
        ];
        for (pairs, key) in cases {
            let e = agent_config(&map(pairs), &defaults()).unwrap_err();
            assert_eq!(&e.key, key, "{pairs:?} -> {e}");
            assert!(
                e.to_string().starts_with(&format!("annotation {key:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn docs_annotations_md_matches_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/annotations.md");
        let doc = std::fs::read_to_string(path).expect("docs/annotations.md exists");
        let begin = doc
            .find("<!-- BEGIN TABLE -->\n")
            .expect("BEGIN TABLE marker")
            + 21;
        let end = doc.find("<!-- END TABLE -->").expect("END TABLE marker");
        let table = markdown_table();
        if std::env::var_os("SIDEKEY_BLESS").is_some() {
            let updated = format!("{}{table}{}", &doc[..begin], &doc[end..]);
            std::fs::write(path, updated).expect("rewrite docs/annotations.md");
            return;
        }
        assert_eq!(
            &doc[begin..end],
            table,
            "docs/annotations.md is out of date: run `SIDEKEY_BLESS=1 cargo test -p sidekey-agent --lib docs_annotations`"
        );
    }

    #[test]
    fn refresh_and_notify_per_secret() {
        let a = map(&[
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
            ("sidekey.dev/secret-api", "secret/data/api"),
            ("sidekey.dev/refresh", "1m"),
            ("sidekey.dev/refresh-db", "30s"),
            ("sidekey.dev/notify-db", "signal:hup:nginx"),
            ("sidekey.dev/notify-api", "http://localhost:8080/-/reload"),
            ("sidekey.dev/revoke-delay", "10s"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.refresh_secs, 60);
        assert_eq!(c.revoke_delay_secs, 10);
        let db = c.secrets.iter().find(|s| s.name == "db").unwrap();
        assert_eq!(db.refresh_secs, Some(30));
        assert_eq!(
            db.notify,
            Some(Notify::Signal {
                signal: "SIGHUP".into(),
                process: "nginx".into()
            })
        );
        let api = c.secrets.iter().find(|s| s.name == "api").unwrap();
        assert_eq!(api.refresh_secs, None);
        assert_eq!(
            api.notify,
            Some(Notify::Http {
                url: "http://localhost:8080/-/reload".into()
            })
        );
    }

    #[test]
    fn bad_refresh_and_notify_values_are_denied_by_key() {
        let base = [
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
        ];
        let cases: &[(&str, &str)] = &[
            ("sidekey.dev/refresh", "500ms"),
            ("sidekey.dev/refresh", "soon"),
            ("sidekey.dev/refresh", "30d"),
            ("sidekey.dev/refresh-db", "0s"),
            ("sidekey.dev/refresh-other", "5s"),
            ("sidekey.dev/notify-other", "signal:HUP:nginx"),
            ("sidekey.dev/notify-db", "http://example.com/reload"),
            ("sidekey.dev/notify-db", "signal:KILL:nginx"),
            ("sidekey.dev/notify-db", "exec:/bin/sh -c reload"),
            ("sidekey.dev/notify-db", "exec:[\"reload\"]"),
            ("sidekey.dev/notify-db", "reload please"),
            ("sidekey.dev/revoke-delay", "2h"),
        ];
        for (k, v) in cases {
            let mut pairs = base.to_vec();
            pairs.push((k, v));
            let e = agent_config(&map(&pairs), &defaults()).unwrap_err();
            assert_eq!(&e.key, k, "{k}={v} -> {e}");
        }
    }

    #[test]
    fn auth_path_slashes_are_trimmed() {
        let a = map(&[
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "/secret/data/db"),
            ("sidekey.dev/auth-path", "/auth/k8s-prod/"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.auth.mount_path, "auth/k8s-prod");
        assert_eq!(c.secrets[0].path, "secret/data/db");
    }
}
