//! Distinct sources: each Vault path (with its request parameters) the pod's secrets
//! come from, fetched once however many secrets render it.
//!
//! A [`Source`] holds what was last fetched ([`Held`]: data, lease, expiry) and its next
//! due action. The kind is learnt from the first response ([`Kind::of`]):
//!
//! - a response with a `certificate` and an `expiration` is a [`Kind::Certificate`]
//!   (PKI issue), re-issued at 2/3 of its validity, whether or not it has a lease;
//! - a response with a lease id is a [`Kind::Lease`] (database credentials and other
//!   dynamic secrets), renewed or replaced by the lease rules;
//! - anything else is [`Kind::Static`] and re-read at the refresh interval. KV v1
//!   belongs here even though Vault reports the mount's default TTL (768 h) for it: it
//!   has no lease id, and a KV update should appear at the next refresh, not in a month.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    schedule::{self, Action, Backoff},
    vault::{SecretData, SecretResponse},
};

/// What kind of credential a source yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Static,
    Lease,
    Certificate,
}

impl Kind {
    /// Classifies a response; see the module docs.
    pub fn of(resp: &SecretResponse) -> Kind {
        let data = resp.data.expose();
        let cert = data.get("certificate").is_some_and(Value::is_string)
            && data.get("expiration").is_some_and(Value::is_u64);
        if cert {
            Kind::Certificate
        } else if !resp.lease_id.is_empty() && resp.lease_duration > 0 {
            Kind::Lease
        } else {
            Kind::Static
        }
    }

    /// Whether a fresh fetch mints a new credential (so a static refresh must never
    /// cause one, and a new token means a new one).
    pub fn is_dynamic(self) -> bool {
        self != Kind::Static
    }
}

/// The identity of a source: two secrets with equal keys share one fetch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The path as configured, without slashes at either end.
    pub path: String,
    /// Request parameters; not empty means the request is a write.
    pub params: BTreeMap<String, String>,
}

/// What was last fetched from a source.
#[derive(Clone)]
pub struct Held {
    pub data: SecretData,
    pub kind: Kind,
    /// Empty for static secrets and certificates without a lease.
    pub lease_id: String,
    /// TTL at issue: what a renewal asks for.
    pub ttl: Duration,
    pub renewable: bool,
    /// When the credential stops working (static secrets: never, far in the future).
    pub expires: Instant,
    /// The token that created the lease: it dies with that token.
    pub token_accessor: Option<String>,
    /// `data` is a whole KV v2 response (`data` and `metadata`): formats render its
    /// `data`, templates see it whole.
    pub kv_v2: bool,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("data", &self.data)
            .field("kind", &self.kind)
            .field("lease_id", &self.lease_id)
            .field("ttl", &self.ttl)
            .field("renewable", &self.renewable)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The data a format renders: for KV v2 the secret's own map.
    pub fn format_data(&self) -> std::borrow::Cow<'_, Value> {
        if self.kv_v2 {
            std::borrow::Cow::Owned(crate::kv::kv_v2_data(self.data.expose()))
        } else {
            std::borrow::Cow::Borrowed(self.data.expose())
        }
    }

    /// What a response fetched at `now` holds, and the first action on it.
    pub fn from_response(
        resp: SecretResponse,
        now: Instant,
        refresh: Duration,
        token_accessor: Option<String>,
        jitter: f64,
    ) -> (Held, Action, Instant) {
        let kind = Kind::of(&resp);
        let ttl = Duration::from_secs(resp.lease_duration);
        let (expires, (action, at)) = match kind {
            Kind::Static => (
                now + Duration::from_secs(10 * 365 * 86_400),
                schedule::refresh(now, refresh, jitter),
            ),
            Kind::Lease => (
                now + ttl,
                schedule::after_grant(now, ttl, ttl, resp.renewable, jitter),
            ),
            Kind::Certificate => {
                let expiration = resp.data.expose()["expiration"].as_u64().unwrap_or(0);
                let unix_now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let lifetime = Duration::from_secs(expiration.saturating_sub(unix_now));
                (now + lifetime, schedule::certificate(now, lifetime, jitter))
            }
        };
        let held = Held {
            kind,
            lease_id: if kind == Kind::Static {
                String::new()
            } else {
                resp.lease_id
            },
            ttl,
            renewable: resp.renewable,
            expires,
            token_accessor,
            data: resp.data,
            kv_v2: false,
        };
        (held, action, at)
    }
}

/// One distinct source and its schedule.
#[derive(Debug)]
pub struct Source {
    pub key: Key,
    /// Indices into the configuration's secrets that render from this source.
    pub secrets: Vec<usize>,
    /// Shortest refresh interval among those secrets (static sources only).
    pub refresh: Duration,
    pub held: Option<Held>,
    pub action: Action,
    pub due: Instant,
    pub backoff: Backoff,
    /// Failed since its last success (to log recovery once).
    pub failing: bool,
}

impl Source {
    /// Whether it must be fetched afresh (nothing held yet, or a replacement is due).
    pub fn needs_fetch(&self) -> bool {
        self.held.is_none() || self.action != Action::Renew
    }
}

/// Groups `secrets` (path, params, refresh) by source, in order of first appearance.
pub fn group<'a>(
    secrets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>, Duration)>,
    now: Instant,
) -> Vec<Source> {
    let mut sources: Vec<Source> = Vec::new();
    for (index, (path, params, refresh)) in secrets.into_iter().enumerate() {
        let key = Key {
            path: path.trim_matches('/').to_owned(),
            params: params.clone(),
        };
        if let Some(s) = sources.iter_mut().find(|s| s.key == key) {
            s.secrets.push(index);
            s.refresh = s.refresh.min(refresh);
            continue;
        }
        sources.push(Source {
            key,
            secrets: vec![index],
            refresh,
            held: None,
            action: Action::Refresh,
            due: now,
            backoff: Backoff::new(),
            failing: false,
        });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resp(data: Value, lease_id: &str, ttl: u64, renewable: bool) -> SecretResponse {
        SecretResponse {
            data: SecretData(data),
            lease_id: lease_id.into(),
            lease_duration: ttl,
            renewable,
        }
    }

    #[test]
    fn kv_v1_with_its_month_long_default_ttl_is_static() {
        // What a KV v1 read returns on a dev server: no lease id, 768 h, not renewable.
        let r = resp(json!({"k": "v"}), "", 2_764_800, false);
        assert_eq!(Kind::of(&r), Kind::Static);
        let now = Instant::now();
        let (_, action, at) = Held::from_response(r, now, Duration::from_secs(60), None, 0.0);
        assert_eq!(
            (action, at),
            (Action::Refresh, now + Duration::from_secs(60))
        );
    }

    #[test]
    fn database_credentials_are_a_lease_and_pki_a_certificate() {
        let db = resp(json!({"username": "u"}), "database/creds/app/abc", 30, true);
        assert_eq!(Kind::of(&db), Kind::Lease);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 90;
        let cert = resp(
            json!({"certificate": "-----", "expiration": exp}),
            "",
            0,
            false,
        );
        assert_eq!(Kind::of(&cert), Kind::Certificate);
        let now = Instant::now();
        let (held, action, at) = Held::from_response(cert, now, Duration::from_secs(5), None, 0.0);
        assert_eq!(action, Action::Reissue);
        let when = at - now;
        assert!(
            when > Duration::from_secs(58) && when <= Duration::from_secs(60),
            "{when:?}"
        );
        assert!(held.lease_id.is_empty());
    }

    #[test]
    fn identical_paths_and_params_share_one_source() {
        let none = BTreeMap::new();
        let cn = BTreeMap::from([("common_name".to_owned(), "a".to_owned())]);
        let s = Duration::from_secs;
        let sources = group(
            [
                ("database/creds/app", &none, s(60)),
                ("/database/creds/app/", &none, s(30)),
                ("pki/issue/web", &cn, s(60)),
                ("pki/issue/web", &none, s(60)),
            ],
            Instant::now(),
        );
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[0].secrets, [0, 1]);
        assert_eq!(sources[0].refresh, s(30));
    }
}
