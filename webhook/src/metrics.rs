//! The webhook's Prometheus metrics, served at `GET /metrics` in the Prometheus text
//! format (0.0.4). Names and meanings are listed in `docs/metrics.md`.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the admission latency buckets, in seconds. A decision is a pure
/// function of the pod and takes well under a millisecond; the upper buckets catch a
/// starved process, long before the API server's timeout of a few seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// What became of one admission review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The pod was patched.
    Mutated,
    /// Admitted unchanged: not opted in, excluded namespace, not a Pod CREATE, ...
    Skipped,
    /// Refused, with a message naming the annotation at fault.
    Denied,
    /// No answer could be given: the body was not a review, or the answer could not be
    /// encoded. The API server applies the entry's failurePolicy.
    Error,
}

impl Outcome {
    /// Every outcome, so each is exported (at 0) from the start.
    pub const ALL: [Outcome; 4] = [
        Outcome::Mutated,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

/// Every metric of the webhook, cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    admissions: Family<OutcomeLabel, Counter>,
    admission_duration: Histogram,
    tls_certificate_expiry: Gauge<f64, AtomicU64>,
    tls_reloads: Counter,
    vault_up: Gauge,
    vault_last_check: Gauge<f64, AtomicU64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at its initial value.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidekey_webhook");
        let admissions = Family::<OutcomeLabel, Counter>::default();
        for outcome in Outcome::ALL {
            let _ = admissions.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "admissions",
            "Admission reviews answered, by outcome (mutated, skipped, denied, error)",
            admissions.clone(),
        );
        let admission_duration = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "admission_duration",
            "Time from a complete review body to the answer",
            Unit::Seconds,
            admission_duration.clone(),
        );
        let tls_certificate_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "tls_certificate_expiry_timestamp",
            "notAfter of the serving certificate in use, in seconds since the Unix epoch",
            Unit::Seconds,
            tls_certificate_expiry.clone(),
        );
        let tls_reloads = Counter::default();
        registry.register(
            "tls_certificate_reloads",
            "Times a changed serving certificate was loaded without a restart",
            tls_reloads.clone(),
        );
        let vault_up = Gauge::default();
        registry.register(
            "vault_up",
            "1 if the configured Vault answered its last health check unsealed, else 0",
            vault_up.clone(),
        );
        let vault_last_check = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "vault_last_check_timestamp",
            "When Vault was last checked, in seconds since the Unix epoch (0: not yet)",
            Unit::Seconds,
            vault_last_check.clone(),
        );
        Metrics {
            registry,
            admissions,
            admission_duration,
            tls_certificate_expiry,
            tls_reloads,
            vault_up,
            vault_last_check,
        }
    }

    /// Counts one review and how long it took.
    pub fn admission(&self, outcome: Outcome, took: Duration) {
        self.admissions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    /// Sets the serving certificate's notAfter (seconds since the epoch).
    pub fn set_certificate_expiry(&self, not_after: i64) {
        // Exact for any date before the year 285 million.
        #[allow(clippy::cast_precision_loss, reason = "exact below 2^53 seconds")]
        self.tls_certificate_expiry.set(not_after as f64);
    }

    /// Counts one reload of a changed certificate.
    pub fn certificate_reloaded(&self) {
        self.tls_reloads.inc();
    }

    /// Records the result of a Vault health check made now.
    pub fn vault_checked(&self, up: bool) {
        self.vault_up.set(i64::from(up));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.vault_last_check.set(now.as_secs_f64());
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_follow_prometheus_conventions_and_every_outcome_starts_at_zero() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for outcome in ["mutated", "skipped", "denied", "error"] {
            let name = format!("sidekey_webhook_admissions_total{{outcome=\"{outcome}\"}}");
            assert_eq!(sample(&text, &name), Some(0.0), "{text}");
        }
        for name in [
            "sidekey_webhook_admission_duration_seconds_count",
            "sidekey_webhook_tls_certificate_expiry_timestamp_seconds",
            "sidekey_webhook_tls_certificate_reloads_total",
            "sidekey_webhook_vault_up",
            "sidekey_webhook_vault_last_check_timestamp_seconds",
        ] {
            assert_eq!(sample(&text, name), Some(0.0), "{name} in\n{text}");
        }
        assert!(
            text.contains("# TYPE sidekey_webhook_admissions_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sidekey_webhook_admission_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn values_move() {
        let metrics = Metrics::new();
        metrics.admission(Outcome::Mutated, Duration::from_micros(300));
        metrics.admission(Outcome::Mutated, Duration::from_millis(2));
        metrics.admission(Outcome::Error, Duration::from_micros(10));
        metrics.set_certificate_expiry(1_900_000_000);
        metrics.vault_checked(true);
        let text = metrics.render();
        let get = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name}\n{text}"));
        assert_eq!(
            get("sidekey_webhook_admissions_total{outcome=\"mutated\"}"),
            2.0
        );
        assert_eq!(
            get("sidekey_webhook_admissions_total{outcome=\"error\"}"),
            1.0
        );
        assert_eq!(get("sidekey_webhook_admission_duration_seconds_count"), 3.0);
        assert_eq!(
            get("sidekey_webhook_admission_duration_seconds_bucket{le=\"0.0005\"}"),
            2.0
        );
        assert_eq!(
            get("sidekey_webhook_tls_certificate_expiry_timestamp_seconds"),
            1_900_000_000.0
        );
        assert_eq!(get("sidekey_webhook_vault_up"), 1.0);
        assert!(get("sidekey_webhook_vault_last_check_timestamp_seconds") > 1.7e9);
    }
}
