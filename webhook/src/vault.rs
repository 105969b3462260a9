//! Whether the Vault the agents are sent to answers: checked at start and then
//! periodically, reported in the log and in the metrics `sidekey_webhook_vault_up` and
//! `sidekey_webhook_vault_last_check_timestamp_seconds`.
//!
//! Never in the admission path: a review is answered from the pod alone, whatever Vault
//! does. The point is to see a wrong `--vault-addr`, a CA that does not match, or a
//! sealed Vault in the webhook's own log and alerts, before every new pod hangs in its
//! init container.
//!
//! The check is `GET <addr>/v1/sys/health?standbyok=true&perfstandbyok=true`, which
//! needs no token. Up means: a 2xx answer whose JSON says `"sealed": false`. Standbys
//! count as up (they forward), sealed or uninitialised servers do not.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::metrics::Metrics;

/// How often the check runs by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long one check may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the checker cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Vault CA bundle does not parse (it was checked at startup already).
    #[error("--vault-ca-file (SIDEKEY_VAULT_CA_FILE): {0}")]
    Ca(String),
    /// The HTTP client cannot be built.
    #[error("cannot build the Vault health-check client")]
    Client(#[source] reqwest::Error),
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Vault answered unsealed; the HTTP status it answered with.
    Up { status: u16 },
    /// Vault did not answer usably; why, for the operator.
    Down { reason: String },
}

impl Health {
    /// Whether Vault is usable.
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up { .. })
    }
}

/// Checks one Vault address.
#[derive(Debug, Clone)]
pub struct Checker {
    addr: String,
    url: String,
    client: reqwest::Client,
}

impl Checker {
    /// A checker for `addr` (`http(s)://host[:port]`), trusting `ca_pem` when given and
    /// the system roots otherwise, as the agents do.
    ///
    /// # Errors
    ///
    /// An unparsable CA bundle, or a client that cannot be built.
    pub fn new(addr: &str, ca_pem: Option<&str>) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .user_agent(concat!("sidekey-webhook/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let mut roots = Vec::new();
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let der = der.map_err(|e| Error::Ca(format!("is not valid PEM: {e}")))?;
                roots.push(
                    reqwest::Certificate::from_der(der.as_ref())
                        .map_err(|e| Error::Ca(e.to_string()))?,
                );
            }
            builder = builder.tls_certs_only(roots);
        }
        let addr = addr.trim_end_matches('/').to_owned();
        Ok(Checker {
            url: format!("{addr}/v1/sys/health?standbyok=true&perfstandbyok=true"),
            addr,
            client: builder.build().map_err(Error::Client)?,
        })
    }

    /// The address checked.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One check, bounded by [`TIMEOUT`].
    pub async fn check(&self) -> Health {
        let response = match self.client.get(&self.url).send().await {
            Ok(response) => response,
            Err(error) => {
                return Health::Down {
                    reason: describe(&error),
                };
            }
        };
        let status = response.status();
        let body: Option<serde_json::Value> = response.json().await.ok();
        let sealed = body
            .as_ref()
            .and_then(|b| b.get("sealed"))
            .and_then(serde_json::Value::as_bool);
        match (status.is_success(), sealed) {
            (true, Some(false)) => Health::Up {
                status: status.as_u16(),
            },
            (true, _) => Health::Down {
                reason: format!("answered {status} without \"sealed\": false: is this Vault?"),
            },
            (false, _) => Health::Down {
                reason: match status.as_u16() {
                    503 => "sealed (503)".to_owned(),
                    501 => "not initialised (501)".to_owned(),
                    472 => "a disaster-recovery secondary (472)".to_owned(),
                    _ => format!("answered {status}"),
                },
            },
        }
    }

    /// Checks now and then every `interval` until the task is dropped or aborted,
    /// updating `metrics`. Logs the first result and every change (down is logged as a
    /// warning each time, so it stays visible).
    pub async fn run(self, interval: Duration, metrics: Arc<Metrics>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        loop {
            ticks.tick().await;
            let health = self.check().await;
            metrics.vault_checked(health.is_up());
            match &health {
                Health::Up { status } => {
                    if last != Some(true) {
                        tracing::info!(vault_addr = %self.addr, status, "vault answers");
                    }
                }
                Health::Down { reason } => tracing::warn!(
                    vault_addr = %self.addr,
                    reason = %reason,
                    "vault does not answer: injected agents will fail to log in until it does"
                ),
            }
            last = Some(health.is_up());
        }
    }
}

/// The error chain of a failed request, without the URL's query (no secrets there, but
/// the address is already a field).
fn describe(error: &reqwest::Error) -> String {
    let mut out = if error.is_timeout() {
        format!("no answer within {} s", TIMEOUT.as_secs())
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
