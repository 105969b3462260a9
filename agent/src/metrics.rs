//! The agent's metrics, and the opt-in endpoint serving them (`sidekey.dev/metrics-port`).
//!
//! The counters and gauges are always kept (a few atomics per secret); only the listener
//! is opt-in. Labels are names and Vault paths, never values: `secret` is the secret's
//! name from its annotation, `path` its configured Vault path. See docs/metrics.md.
//!
//! The endpoint speaks just enough HTTP/1.1 for Prometheus: one `GET` per connection,
//! answered with the text exposition format and `Connection: close`. A full HTTP
//! server would cost the agent more memory than everything else it does; Prometheus
//! needs nothing more. Requests are bounded in size and time, a few at once.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info};

use crate::vault;

/// Longest request head read; Prometheus sends a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait for a slot.
const MAX_CONCURRENT: usize = 4;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    secret: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Every metric of one agent process.
pub struct Metrics {
    registry: Registry,
    last_render: Family<SecretLabels, F64Gauge>,
    errors: Family<SecretLabels, Counter>,
    stale: Family<SecretLabels, Gauge>,
    expiry: Family<SecretLabels, F64Gauge>,
    renewals: Family<SecretLabels, Counter>,
    reissues: Family<SecretLabels, Counter>,
    login_failures: Counter,
    token_expiry: F64Gauge,
    vault_requests: Family<OutcomeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(secret: &str, path: &str) -> SecretLabels {
    SecretLabels {
        secret: secret.to_owned(),
        path: path.to_owned(),
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let last_render = Family::<SecretLabels, F64Gauge>::default();
        registry.register(
            "sidekey_agent_secret_last_render_timestamp_seconds",
            "When the secret's file was last confirmed current (written or found unchanged), Unix seconds",
            last_render.clone(),
        );
        let errors = Family::<SecretLabels, Counter>::default();
        registry.register(
            "sidekey_agent_secret_errors",
            "Failed attempts to fetch or render the secret",
            errors.clone(),
        );
        let stale = Family::<SecretLabels, Gauge>::default();
        registry.register(
            "sidekey_agent_secret_stale",
            "1 while the last attempt failed and the file keeps older content, else 0",
            stale.clone(),
        );
        let expiry = Family::<SecretLabels, F64Gauge>::default();
        registry.register(
            "sidekey_agent_secret_expiry_timestamp_seconds",
            "When the secret's lease or certificate expires, Unix seconds (leased and PKI secrets only)",
            expiry.clone(),
        );
        let renewals = Family::<SecretLabels, Counter>::default();
        registry.register(
            "sidekey_agent_secret_renewals",
            "Lease renewals of the secret's credential",
            renewals.clone(),
        );
        let reissues = Family::<SecretLabels, Counter>::default();
        registry.register(
            "sidekey_agent_secret_reissues",
            "New credentials issued to replace the secret's previous one",
            reissues.clone(),
        );
        let login_failures = Counter::default();
        registry.register(
            "sidekey_agent_login_failures",
            "Failed logins to Vault",
            login_failures.clone(),
        );
        let token_expiry = F64Gauge::default();
        registry.register(
            "sidekey_agent_token_expiry_timestamp_seconds",
            "When the agent's Vault token expires, Unix seconds",
            token_expiry.clone(),
        );
        let vault_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sidekey_agent_vault_requests",
            "Requests to Vault by outcome: ok, denied (403), not_found (404), error (anything else)",
            vault_requests.clone(),
        );
        // Every outcome shows from the start, so rates work from the first scrape.
        for outcome in ["ok", "denied", "not_found", "error"] {
            let _ = vault_requests.get_or_create(&OutcomeLabels { outcome });
        }
        Arc::new(Metrics {
            registry,
            last_render,
            errors,
            stale,
            expiry,
            renewals,
            reissues,
            login_failures,
            token_expiry,
            vault_requests,
        })
    }

    /// Makes a secret's series exist (zero) before anything happens to it.
    pub fn declare(&self, secret: &str, path: &str) {
        let l = labels(secret, path);
        let _ = self.errors.get_or_create(&l);
        let _ = self.stale.get_or_create(&l);
        let _ = self.renewals.get_or_create(&l);
        let _ = self.reissues.get_or_create(&l);
    }

    /// The secret's file is current (written, or already holding these bytes).
    pub fn rendered(&self, secret: &str, path: &str) {
        self.last_render
            .get_or_create(&labels(secret, path))
            .set(unix_now());
    }

    /// A fetch or render for the secret failed; the file keeps older content.
    pub fn failed(&self, secret: &str, path: &str) {
        let l = labels(secret, path);
        self.errors.get_or_create(&l).inc();
        self.stale.get_or_create(&l).set(1);
    }

    /// The secret's source was fetched and rendered again.
    pub fn fresh(&self, secret: &str, path: &str) {
        self.stale.get_or_create(&labels(secret, path)).set(0);
    }

    /// The secret's credential expires at `unix_secs`.
    pub fn expires(&self, secret: &str, path: &str, unix_secs: f64) {
        self.expiry
            .get_or_create(&labels(secret, path))
            .set(unix_secs);
    }

    pub fn renewed(&self, secret: &str, path: &str) {
        self.renewals.get_or_create(&labels(secret, path)).inc();
    }

    pub fn reissued(&self, secret: &str, path: &str) {
        self.reissues.get_or_create(&labels(secret, path)).inc();
    }

    pub fn login_failed(&self) {
        self.login_failures.inc();
    }

    pub fn token_expires(&self, unix_secs: f64) {
        self.token_expiry.set(unix_secs);
    }

    /// Counts one Vault request by its outcome.
    pub fn request<T>(&self, result: &vault::Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(vault::Error::Forbidden { .. }) => "denied",
            Err(vault::Error::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        self.vault_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds the endpoint on all addresses (Prometheus scrapes the pod IP).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port)).await
}

/// Serves `metrics` on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    info!(
        metrics.addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "serving metrics"
    );
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                debug!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => respond(&mut stream, "200 OK", &metrics.encode()).await,
        (b"GET", _) => respond(&mut stream, "404 Not Found", "only /metrics is served\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_and_labels_are_names_and_paths() {
        let m = Metrics::new();
        m.declare("db", "database/creds/app");
        m.failed("db", "database/creds/app");
        m.rendered("db", "database/creds/app");
        let text = m.encode();
        assert!(
            text.contains(
                r#"sidekey_agent_secret_errors_total{secret="db",path="database/creds/app"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_agent_secret_stale{secret="db",path="database/creds/app"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"sidekey_agent_vault_requests_total{outcome="denied"} 0"#));
        assert!(text.contains("sidekey_agent_secret_last_render_timestamp_seconds{"));
    }
}
