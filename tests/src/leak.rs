//! The "no secret in any log" check: gather every value that must never be printed
//! (KV values, database passwords from the rendered files, the agent's Vault token from
//! its state file, the pod's JWT, the root token), then search the logs for them.
//!
//! A failure names the kind of value and its length, never the value.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{Result, failed};

/// Shortest value searched for: shorter strings (`true`, a port) would match by chance.
pub const MIN_LEN: usize = 8;

/// Values that must not appear in logs, each with what it is.
#[derive(Default)]
pub struct Secrets {
    values: Vec<(String, SecretString)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("count", &self.values.len())
            .finish()
    }
}

/// Key names whose values are credentials in a rendered file or a state file.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.contains("accessor")
        && ["password", "token", "secret", "private_key", "jwt"]
            .iter()
            .any(|s| k.contains(s))
}

/// Whether `s` looks like an OpenBao/Vault token (`s.…`, `hvs.…`, `b.…`, `hvb.…`).
fn looks_like_token(s: &str) -> bool {
    ["s.", "hvs.", "b.", "hvb.", "r.", "hvr."]
        .iter()
        .any(|p| s.strip_prefix(p).is_some_and(|rest| rest.len() >= 20))
}

impl Secrets {
    /// An empty set.
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Adds one value (ignored when shorter than [`MIN_LEN`]).
    pub fn add(&mut self, what: &str, value: &str) {
        let value = value.trim();
        suite_value(value);
        if value.len() >= MIN_LEN && !self.values.iter().any(|(_, v)| v.expose_secret() == value) {
            self.values
                .push((what.to_owned(), SecretString::from(value.to_owned())));
        }
    }

    /// Adds every string value of `data` (a KV secret's data: all of it is secret).
    pub fn add_all_values(&mut self, what: &str, data: &Value) {
        match data {
            Value::String(s) => self.add(what, s),
            Value::Array(a) => a.iter().for_each(|v| self.add_all_values(what, v)),
            Value::Object(m) => m.values().for_each(|v| self.add_all_values(what, v)),
            _ => {}
        }
    }

    /// Adds the values of credential-named keys (`password`, `*token*` but not
    /// accessors, `secret*`, `private_key`, `jwt`) and anything shaped like a token.
    pub fn add_credentials(&mut self, what: &str, data: &Value) {
        fn walk(s: &mut Secrets, what: &str, v: &Value, secret_key: bool) {
            match v {
                Value::String(x) if secret_key || looks_like_token(x) => s.add(what, x),
                Value::Array(a) => a.iter().for_each(|x| walk(s, what, x, secret_key)),
                Value::Object(m) => m.iter().for_each(|(k, x)| {
                    // An accessor names a token without granting anything.
                    let nested = !k.to_ascii_lowercase().contains("accessor")
                        && (secret_key || is_secret_key(k));
                    walk(s, what, x, nested)
                }),
                _ => {}
            }
        }
        walk(self, what, data, false);
    }

    /// Adds the credentials of every JSON file under `dir` (rendered secrets, or the
    /// agent's state directory). Files that are not JSON are taken whole when they
    /// look like a token or a JWT.
    pub fn add_files(&mut self, what: &str, dir: &Path) -> Result<()> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| failed(format!("reading {}: {e}", dir.display())))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                self.add_files(what, &path)?;
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => self.add_credentials(what, &v),
                Err(_)
                    if looks_like_token(text.trim()) || text.trim().matches('.').count() == 2 =>
                {
                    self.add(what, &text)
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// An error if `text` (a log, named `where_`) contains any value.
    pub fn check(&self, where_: &str, text: &str) -> Result<()> {
        for (what, v) in &self.values {
            if text.contains(v.expose_secret()) {
                return Err(failed(format!(
                    "{where_} contains a secret value ({what}, length {})",
                    v.expose_secret().len()
                )));
            }
        }
        Ok(())
    }
}

/// Environment variable naming the directory of the suite-wide leak scan (`make test`
/// sets it; `scripts/leak-scan.sh` reads it afterwards). Unset, nothing is collected.
pub const SUITE_DIR_ENV: &str = "SIDEKEY_LEAK_DIR";

/// The suite-wide leak scan's directory, when one is set.
pub fn suite_dir() -> Option<PathBuf> {
    std::env::var_os(SUITE_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Appends `value` to `<suite dir>/values`, one line each, for the suite-wide scan. A
/// multi-line value (a PEM key) goes line by line, without its `-----` armour lines;
/// lines shorter than [`MIN_LEN`] are skipped as the per-test check skips them.
pub fn suite_value(value: &str) {
    let Some(dir) = suite_dir() else { return };
    if unscanned()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|u| u.expose_secret() == value.trim())
    {
        return;
    }
    let lines: String = value
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= MIN_LEN && !l.starts_with("-----"))
        .map(|l| format!("{l}\n"))
        .collect();
    if lines.is_empty() {
        return;
    }
    // One append per call: O_APPEND keeps concurrent writers' lines whole.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("values"))
        .and_then(|mut f| f.write_all(lines.as_bytes()));
}

/// Values kept out of the suite-wide scan: a dev server's root token, which
/// `bao server -dev` prints in its own startup banner (the per-test checks still search
/// the agent's and the webhook's logs for it).
fn unscanned() -> &'static std::sync::Mutex<Vec<SecretString>> {
    static UNSCANNED: std::sync::OnceLock<std::sync::Mutex<Vec<SecretString>>> =
        std::sync::OnceLock::new();
    UNSCANNED.get_or_init(Default::default)
}

/// Keeps `value` out of the suite-wide scan (see [`unscanned`]).
pub fn suite_exempt(value: &str) {
    unscanned()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(SecretString::from(value.trim().to_owned()));
}

/// A fresh path in the suite directory for a log named `name`, unique across the test
/// binaries and threads writing there at once.
pub fn suite_log_path(name: &str) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = suite_dir()?.join("logs");
    std::fs::create_dir_all(&dir).ok()?;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(dir.join(format!("{exe}-{}-{n}-{name}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_credentials_but_not_accessors_and_never_prints_them() {
        let mut s = Secrets::new();
        s.add_credentials(
            "state",
            &json!({"token": {"client_token": "opaque-value-1234", "accessor": "acc-123456789"},
                    "leases": [{"id": "database/creds/x/abc", "other": "s.abcdefghijklmnopqrstuvwxyz"}]}),
        );
        assert_eq!(s.len(), 2);
        assert!(s.check("log", "accessor acc-123456789 renewed").is_ok());
        let err = s
            .check("log", "token opaque-value-1234")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("opaque-value-1234"), "{err}");
        assert!(s.check("log", "s.abcdefghijklmnopqrstuvwxyz").is_err());
        assert!(!format!("{s:?}").contains("opaque"));
    }
}
