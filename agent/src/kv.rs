//! Reading a secret the way the user wrote its path.
//!
//! A KV version 2 secret can be written as `secret/data/app` (the API path) or
//! `secret/app` (the path the `bao kv` CLI shows). The agent asks Vault once per mount
//! which engine serves a path (`sys/internal/ui/mounts/<path>`, allowed for any token
//! with a capability under the path) and remembers the answer, so a refresh is one read.
//!
//! For KV v2 the rendered data is the secret's own key/value map (`data.data`), never
//! the `metadata` wrapper; for every other engine it is the response's `data`.
//!
//! If Vault refuses the mount lookup (a policy without access to it), the path is read
//! as given, and a response shaped like KV v2 (`data.data` plus `data.metadata`) is
//! unwrapped. That guess is remembered per path, so it, too, is made once.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::vault::{self, Client, SecretData, SecretResponse};

/// How to read one user path, as decided once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A KV v2 secret: read `api_path` (`<mount>data/<rest>`) and render `data.data`.
    KvV2 { api_path: String },
    /// Any other engine: read the path as given and render `data`.
    Plain,
    /// The mount could not be looked up: read as given, unwrap if it looks like KV v2.
    Guess,
}

/// Remembers mounts, so each is looked up once per process.
#[derive(Debug, Default)]
pub struct Resolver {
    /// Mount path (with trailing slash) → is KV v2.
    mounts: HashMap<String, bool>,
    /// User paths whose mount lookup was refused.
    unknown: HashSet<String>,
}

impl Resolver {
    /// Decides how to read `path`, asking Vault only for a mount not seen before.
    ///
    /// # Errors
    /// Transport-level failures of the mount lookup (so the caller retries); a refused
    /// or failed lookup is not an error but a [`Plan::Guess`].
    pub async fn plan(&mut self, client: &Client, path: &str) -> vault::Result<Plan> {
        let path = path.trim_matches('/');
        if let Some((mount, v2)) = self.known_mount(path) {
            return Ok(plan_for(mount, v2, path));
        }
        if self.unknown.contains(path) {
            return Ok(Plan::Guess);
        }
        match client.mount_info(path).await {
            Ok(info) => {
                let v2 = info.kind == "kv" && info.version.as_deref() == Some("2");
                let mount = normalize_mount(&info.path);
                tracing::debug!(
                    secret.path = %path,
                    mount = %mount,
                    mount.kind = %info.kind,
                    kv_v2 = v2,
                    "mount looked up"
                );
                let plan = plan_for(&mount, v2, path);
                self.mounts.insert(mount, v2);
                Ok(plan)
            }
            Err(e) if e.is_transient() || matches!(e, vault::Error::Tls { .. }) => Err(e),
            Err(e) => {
                tracing::debug!(
                    secret.path = %path,
                    error = %e,
                    "mount lookup refused; reading the path as given"
                );
                self.unknown.insert(path.to_owned());
                Ok(Plan::Guess)
            }
        }
    }

    /// Mounts looked up so far (mount path → is KV v2), for the state file.
    pub fn mounts(&self) -> std::collections::BTreeMap<String, bool> {
        self.mounts.iter().map(|(m, v2)| (m.clone(), *v2)).collect()
    }

    /// Remembers mounts looked up by an earlier process of the same pod.
    pub fn remember(&mut self, mounts: impl IntoIterator<Item = (String, bool)>) {
        self.mounts.extend(mounts);
    }

    fn known_mount(&self, path: &str) -> Option<(&str, bool)> {
        // The longest mount that prefixes the path wins (`a/` vs `a/b/`).
        self.mounts
            .iter()
            .filter(|(m, _)| path.starts_with(m.as_str()) || format!("{path}/") == **m)
            .max_by_key(|(m, _)| m.len())
            .map(|(m, v2)| (m.as_str(), *v2))
    }

    /// Reads the secret at the user's `path` and returns the data to render.
    pub async fn read(&mut self, client: &Client, path: &str) -> vault::Result<SecretResponse> {
        let (mut resp, kv_v2) = self.read_whole(client, path).await?;
        if kv_v2 {
            resp.data = SecretData(kv_v2_data(resp.data.expose()));
        }
        Ok(resp)
    }

    /// Reads the secret at the user's `path` and returns the whole response, as a
    /// template sees it (for KV v2, `data` and `metadata`), and whether it is a KV v2
    /// secret, whose rendered data is [`kv_v2_data`] of it.
    pub async fn read_whole(
        &mut self,
        client: &Client,
        path: &str,
    ) -> vault::Result<(SecretResponse, bool)> {
        let plan = self.plan(client, path).await?;
        read_planned(client, path, plan).await
    }
}

/// Reads the secret at the user's `path` as `plan` (from [`Resolver::plan`]) says, like
/// [`Resolver::read_whole`]. Needs no resolver, so reads of several paths, once planned,
/// can be in flight together.
pub async fn read_planned(
    client: &Client,
    path: &str,
    plan: Plan,
) -> vault::Result<(SecretResponse, bool)> {
    let api_path = match &plan {
        Plan::KvV2 { api_path } => api_path.as_str(),
        Plan::Plain | Plan::Guess => path.trim_matches('/'),
    };
    let resp = client.read(api_path).await?;
    let unwrap = match plan {
        Plan::KvV2 { .. } => true,
        Plan::Guess => looks_like_kv_v2(resp.data.expose()),
        Plan::Plain => false,
    };
    Ok((resp, unwrap))
}

/// The secret's own key/value map of a whole KV v2 response (`data.data`), never the
/// `metadata` wrapper.
pub fn kv_v2_data(whole: &Value) -> Value {
    match whole.get("data") {
        Some(v @ Value::Object(_)) => v.clone(),
        // A deleted or destroyed version has `"data": null`; Vault answers 404 for
        // those, so this is only reached on an odd server. Render nothing.
        _ => Value::Object(Default::default()),
    }
}

fn normalize_mount(mount: &str) -> String {
    format!("{}/", mount.trim_matches('/'))
}

/// The API path for a KV v2 `path` under `mount` (which ends in `/`). A path already
/// in API form (`<mount>data/...`) is kept.
fn plan_for(mount: &str, v2: bool, path: &str) -> Plan {
    if !v2 {
        return Plan::Plain;
    }
    let rest = path.strip_prefix(mount).unwrap_or("");
    let api_path = if rest.starts_with("data/") {
        path.to_owned()
    } else {
        format!("{mount}data/{rest}")
    };
    Plan::KvV2 { api_path }
}

fn looks_like_kv_v2(data: &Value) -> bool {
    data.get("data").is_some_and(Value::is_object)
        && data.get("metadata").is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kv_v2_paths_in_either_form_read_the_data_endpoint() {
        let expect = Plan::KvV2 {
            api_path: "secret/data/app".into(),
        };
        assert_eq!(plan_for("secret/", true, "secret/app"), expect);
        assert_eq!(plan_for("secret/", true, "secret/data/app"), expect);
        assert_eq!(
            plan_for("team/kv/", true, "team/kv/a/b"),
            Plan::KvV2 {
                api_path: "team/kv/data/a/b".into()
            }
        );
        assert_eq!(plan_for("kv1/", false, "kv1/app"), Plan::Plain);
    }

    #[test]
    fn the_longest_known_mount_wins() {
        let mut r = Resolver::default();
        r.mounts.insert("a/".into(), false);
        r.mounts.insert("a/b/".into(), true);
        assert_eq!(r.known_mount("a/b/c"), Some(("a/b/", true)));
        assert_eq!(r.known_mount("a/c"), Some(("a/", false)));
        assert_eq!(r.known_mount("ab/c"), None);
    }

    #[test]
    fn only_a_data_and_metadata_pair_looks_like_kv_v2() {
        assert!(looks_like_kv_v2(
            &json!({"data": {"k": "v"}, "metadata": {"version": 1}})
        ));
        assert!(!looks_like_kv_v2(&json!({"data": {"k": "v"}})));
        assert!(!looks_like_kv_v2(&json!({"data": "x", "metadata": {}})));
    }
}
