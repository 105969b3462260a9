//! The pod annotations users write, and how they become an [`AgentConfig`].
//!
//! [`TABLE`] is the single list of supported keys; `docs/annotations.md` is checked
//! against it by a test. Every key lives under [`PREFIX`]. A key under the prefix that
//! is not in the table is refused, so that a typo (`secrets-db`) is reported at pod
//! creation instead of silently rendering nothing.

use std::collections::BTreeMap;

use super::config::{self, AgentConfig, AuthConfig, AuthMethod, SecretSpec, VaultConfig};
use super::layout;

/// Prefix of every Sidekey annotation and of the opt-in label.
pub const PREFIX: &str = "sidekey.dev/";

/// Opt-in key; as an annotation or as a label with value `"true"`.
pub const INJECT: &str = "inject";
pub const ROLE: &str = "role";
pub const AUTH_PATH: &str = "auth-path";
/// Per-secret prefix: `secret-<name>: <vault path>`.
pub const SECRET_PREFIX: &str = "secret-";

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
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();

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
        match key {
            ROLE => {
                let v = value.trim();
                if v.is_empty() || v.contains(char::is_whitespace) || v.contains('/') {
                    return Err(err(key, format!("{value:?} is not a role name")));
                }
                role = Some(v.to_owned());
            }
            AUTH_PATH => auth_path = parse_mount_path(key, value)?,
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
    config.secrets = secrets
        .into_iter()
        .map(|(name, path)| SecretSpec {
            file: name.clone(),
            name,
            path,
            mode: config::DEFAULT_FILE_MODE,
            refresh_secs: None,
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
