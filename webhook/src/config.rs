//! Command line and environment, validated into [`Settings`] before anything serves.
//!
//! Every flag has an environment alias under `SIDEKEY_`; a flag on the command line wins
//! over its variable. Validation reads the Vault CA file (it is public and small) so
//! that a wrong path or a non-certificate fails at startup, naming the flag, instead of
//! failing in every injected pod later.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sidekey_agent::contract::annotations::Defaults;

use crate::patch::{PatchSettings, SidecarMode};

/// Agent image injected when `--agent-image` is not given: the agent of this very
/// release, so webhook and agent always speak the same configuration version.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("ghcr.io/sidekey/agent:", env!("CARGO_PKG_VERSION"));

/// Raw command line of `sidekey-webhook`.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidekey-webhook", version, about)]
pub struct Cli {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "SIDEKEY_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain served to the API server; reloaded when the file changes.
    #[arg(long, env = "SIDEKEY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert; reloaded when the file changes.
    #[arg(long, env = "SIDEKEY_TLS_KEY", value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Vault address the injected agents use, as an http:// or https:// URL.
    #[arg(long, env = "SIDEKEY_VAULT_ADDR", value_name = "URL")]
    pub vault_addr: String,
    /// PEM bundle of CAs the agents trust for Vault's certificate (default: system roots).
    /// An empty value means unset.
    #[arg(long, env = "SIDEKEY_VAULT_CA_FILE", value_name = "FILE")]
    pub vault_ca_file: Option<PathBuf>,
    /// Image of the injected agent containers.
    #[arg(long, env = "SIDEKEY_AGENT_IMAGE", value_name = "IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// Log line format.
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How the agent runs by default: `native` (one init container with
    /// restartPolicy Always; Kubernetes 1.29 or later) or `classic` (init container plus
    /// sidecar; Job pods get init-only), for older API servers.
    #[arg(long, env = "SIDEKEY_SIDECAR_MODE", value_enum, default_value_t = SidecarMode::Native)]
    pub sidecar_mode: SidecarMode,
    /// Comma-separated namespaces whose pods are never mutated, in addition to
    /// kube-system and the webhook's own namespace.
    #[arg(
        long,
        env = "SIDEKEY_EXCLUDE_NAMESPACES",
        value_name = "NS,...",
        value_delimiter = ','
    )]
    pub exclude_namespaces: Vec<String>,
    /// The webhook's own namespace, never mutated (default: $POD_NAMESPACE, as the
    /// Deployment sets it from the downward API).
    #[arg(long, env = "SIDEKEY_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// How often to check that --vault-addr answers (sys/health), e.g. 30s or 2m; the
    /// first check runs at start. 0s turns the check off.
    #[arg(long, env = "SIDEKEY_VAULT_CHECK_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub vault_check_interval: Duration,
    /// After SIGTERM, keep serving this long before closing the listener, so that the
    /// API server stops picking this replica first (its endpoints update is
    /// asynchronous). Then open connections get 10 s to finish.
    #[arg(long, env = "SIDEKEY_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
}

/// Accepts `0s` as well as the contract's durations (`30s`, `2m`, `1h30m`).
fn parse_duration(raw: &str) -> Result<Duration, String> {
    if raw.trim() == "0" || raw.trim() == "0s" {
        return Ok(Duration::ZERO);
    }
    sidekey_agent::contract::duration::parse(raw).map_err(|e| e.to_string())
}

/// Namespace never mutated whatever the flags say: the cluster's own machinery.
pub const ALWAYS_EXCLUDED_NAMESPACE: &str = "kube-system";

/// Environment variable the downward API fills with the webhook pod's namespace.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// Format of the webhook's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address the HTTPS server binds.
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM), watched for changes.
    pub tls_cert: PathBuf,
    /// Serving private key (PEM), watched for changes.
    pub tls_key: PathBuf,
    /// Format of the webhook's own logs.
    pub log_format: LogFormat,
    /// Interval of the Vault health check; zero for none.
    pub vault_check_interval: Duration,
    /// How long to keep serving after SIGTERM before draining.
    pub shutdown_delay: Duration,
    /// Everything the pure patch function needs.
    pub patch: PatchSettings,
}

/// A configuration value that cannot be used. Each message names the flag and its
/// environment variable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--vault-addr` is not an http(s) URL.
    #[error("--vault-addr (SIDEKEY_VAULT_ADDR): {0}")]
    VaultAddr(String),
    /// `--vault-ca-file` cannot be read.
    #[error("--vault-ca-file (SIDEKEY_VAULT_CA_FILE): cannot read {path}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--vault-ca-file` holds something other than PEM certificates.
    #[error("--vault-ca-file (SIDEKEY_VAULT_CA_FILE): {path} {problem}")]
    BadCa { path: PathBuf, problem: String },
    /// `--agent-image` is empty or has whitespace.
    #[error("--agent-image (SIDEKEY_AGENT_IMAGE): {0:?} is not an image reference")]
    AgentImage(String),
    /// An entry of `--exclude-namespaces` or `--namespace` is not a namespace name.
    #[error("{flag}: {value:?} is not a namespace name")]
    Namespace { flag: &'static str, value: String },
    /// `--tls-cert` or `--tls-key` is empty.
    #[error("--tls-cert and --tls-key (SIDEKEY_TLS_CERT, SIDEKEY_TLS_KEY) must both be set")]
    TlsPaths,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Cli {
    /// Checks every value and reads the Vault CA bundle.
    ///
    /// # Errors
    ///
    /// The first unusable value, see [`Error`].
    pub fn validate(self) -> Result<Settings> {
        let pod_namespace = std::env::var(POD_NAMESPACE_ENV).ok();
        self.validate_in(pod_namespace)
    }

    /// [`Cli::validate`] with the value of `POD_NAMESPACE` given, for tests.
    ///
    /// # Errors
    ///
    /// The first unusable value, see [`Error`].
    pub fn validate_in(self, pod_namespace: Option<String>) -> Result<Settings> {
        if self.tls_cert.as_os_str().is_empty() || self.tls_key.as_os_str().is_empty() {
            return Err(Error::TlsPaths);
        }
        let vault_addr = check_vault_addr(&self.vault_addr)?;
        let vault_ca_pem = match &self.vault_ca_file {
            Some(path) if !path.as_os_str().is_empty() => Some(read_ca(path)?),
            _ => None,
        };
        let image = self.agent_image.trim();
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(Error::AgentImage(self.agent_image));
        }

        Ok(Settings {
            listen: self.listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            log_format: self.log_format,
            vault_check_interval: self.vault_check_interval,
            shutdown_delay: self.shutdown_delay,
            patch: PatchSettings {
                agent_image: image.to_owned(),
                defaults: Defaults {
                    vault_addr,
                    vault_ca_pem,
                },
                sidecar_mode: self.sidecar_mode,
                excluded_namespaces: excluded_namespaces(
                    &self.exclude_namespaces,
                    self.namespace.as_deref().or(pod_namespace.as_deref()),
                )?,
            },
        })
    }
}

/// Accepts `http://host[:port][/path]` and `https://…`; returns it without a trailing
/// slash. User info (`user:pass@`) is refused, and its value is not echoed, because it
/// would end up in every pod's environment.
/// The same check as the `vault-addr` annotation's, from the contract.
fn check_vault_addr(raw: &str) -> Result<String> {
    sidekey_agent::contract::config::check_vault_addr(raw).map_err(Error::VaultAddr)
}

/// The namespaces never mutated: kube-system, the webhook's own, and the listed ones.
fn excluded_namespaces(listed: &[String], own: Option<&str>) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::from([ALWAYS_EXCLUDED_NAMESPACE.to_owned()]);
    let entries = listed
        .iter()
        .map(|n| {
            (
                "--exclude-namespaces (SIDEKEY_EXCLUDE_NAMESPACES)",
                n.as_str(),
            )
        })
        .chain(own.map(|n| ("--namespace (SIDEKEY_NAMESPACE or POD_NAMESPACE)", n)));
    for (flag, name) in entries {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let label = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(Error::Namespace {
                flag,
                value: name.to_owned(),
            });
        }
        out.insert(name.to_owned());
    }
    Ok(out)
}

/// Reads a PEM bundle and checks that it holds at least one certificate rustls accepts
/// as a trust anchor. Returns the text unchanged: the agents parse it again.
fn read_ca(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let bad = |problem: String| Error::BadCa {
        path: path.to_owned(),
        problem,
    };

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let cert = cert.map_err(|e| bad(format!("is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("holds a certificate that does not parse: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(extra: &[&str]) -> std::result::Result<Cli, clap::Error> {
        let base = [
            "sidekey-webhook",
            "--tls-cert",
            "/tls/tls.crt",
            "--tls-key",
            "/tls/tls.key",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    fn settings(extra: &[&str]) -> Result<Settings> {
        cli(extra).expect("flags parse").validate_in(None)
    }

    #[test]
    fn defaults_listen_and_the_agent_image_of_this_release() {
        let s = settings(&["--vault-addr", "https://vault:8200/"]).expect("valid");
        assert_eq!(s.listen, "0.0.0.0:8443".parse().expect("address"));
        assert_eq!(
            s.patch.agent_image,
            format!("ghcr.io/sidekey/agent:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s.patch.defaults.vault_addr, "https://vault:8200");
        assert_eq!(s.patch.defaults.vault_ca_pem, None);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.vault_check_interval, Duration::from_secs(30));
        assert_eq!(s.shutdown_delay, Duration::from_secs(5));
    }

    #[test]
    fn durations_accept_zero_and_name_the_flag_when_bad() {
        let s = settings(&[
            "--vault-addr",
            "https://v",
            "--vault-check-interval",
            "0s",
            "--shutdown-delay",
            "1m",
        ])
        .expect("valid");
        assert_eq!(s.vault_check_interval, Duration::ZERO);
        assert_eq!(s.shutdown_delay, Duration::from_secs(60));
        let err = cli(&["--vault-addr", "https://v", "--shutdown-delay", "soon"]).expect_err("bad");
        assert!(err.to_string().contains("--shutdown-delay"), "{err}");
    }

    #[test]
    fn accepts_http_and_https_vault_addresses() {
        for addr in [
            "http://127.0.0.1:8200",
            "https://vault.vault.svc",
            "https://[::1]:8200",
            "https://vault.example/prefix",
        ] {
            let s = settings(&["--vault-addr", addr]).unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(s.patch.defaults.vault_addr, addr);
        }
    }

    #[test]
    fn refuses_vault_addresses_that_are_not_http_urls_naming_the_flag() {
        for addr in [
            "vault:8200",
            "ftp://vault",
            "https://",
            "https://:8200",
            "https://vault:port",
            "https://vault/a b",
        ] {
            let err = settings(&["--vault-addr", addr]).expect_err(addr);
            assert!(matches!(err, Error::VaultAddr(_)), "{addr}: {err}");
            assert!(err.to_string().starts_with("--vault-addr"), "{err}");
        }
    }

    #[test]
    fn refuses_credentials_in_the_vault_address_without_echoing_them() {
        let err =
            settings(&["--vault-addr", "https://user:hunter2@vault:8200"]).expect_err("refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // Also when the scheme is wrong or the secret is in a query or fragment.
        for addr in [
            "ftp://admin:hunter2@vault",
            "https://vault?token=hunter2",
            "https://vault:8200/#hunter2",
        ] {
            let err = settings(&["--vault-addr", addr]).expect_err(addr);
            assert!(!err.to_string().contains("hunter2"), "{addr}: {err}");
        }
    }

    #[test]
    fn reads_the_vault_ca_bundle_and_refuses_non_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["vault".to_owned()]).expect("cert");
        std::fs::write(&good, cert.cert.pem()).expect("write");
        let s = settings(&[
            "--vault-addr",
            "https://vault:8200",
            "--vault-ca-file",
            good.to_str().expect("utf-8"),
        ])
        .expect("valid");
        assert_eq!(s.patch.defaults.vault_ca_pem, Some(cert.cert.pem()));

        let key_only = dir.path().join("key.pem");
        std::fs::write(&key_only, cert.signing_key.serialize_pem()).expect("write");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for path in [&key_only, &garbage] {
            let path = path.to_str().expect("utf-8");
            let err =
                settings(&["--vault-addr", "https://v", "--vault-ca-file", path]).expect_err(path);
            assert!(matches!(err, Error::BadCa { .. }), "{path}: {err}");
            assert!(err.to_string().contains("--vault-ca-file"), "{err}");
            assert!(err.to_string().contains(path), "{err}");
        }

        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("utf-8");
        let err = settings(&["--vault-addr", "https://v", "--vault-ca-file", missing])
            .expect_err("missing file");
        assert!(matches!(err, Error::ReadCa { .. }), "{err}");
    }

    #[test]
    fn parse_errors_name_the_flag() {
        let err = cli(&["--vault-addr", "https://v", "--listen", "nowhere"]).expect_err("bad");
        assert!(err.to_string().contains("--listen"), "{err}");
        let err = cli(&["--vault-addr", "https://v", "--log-format", "xml"]).expect_err("bad");
        assert!(err.to_string().contains("--log-format"), "{err}");
        let err = cli(&[]).expect_err("vault address is required");
        assert!(err.to_string().contains("--vault-addr"), "{err}");
    }

    #[test]
    fn refuses_an_image_with_whitespace() {
        let err =
            settings(&["--vault-addr", "https://v", "--agent-image", "a b"]).expect_err("bad");
        assert!(matches!(err, Error::AgentImage(_)), "{err}");
    }

    #[test]
    fn sidecar_mode_defaults_to_native_and_classic_can_be_chosen() {
        let s = settings(&["--vault-addr", "https://v"]).expect("valid");
        assert_eq!(s.patch.sidecar_mode, SidecarMode::Native);
        let s =
            settings(&["--vault-addr", "https://v", "--sidecar-mode", "classic"]).expect("valid");
        assert_eq!(s.patch.sidecar_mode, SidecarMode::Classic);
        let err =
            cli(&["--vault-addr", "https://v", "--sidecar-mode", "sometimes"]).expect_err("bad");
        assert!(err.to_string().contains("--sidecar-mode"), "{err}");
    }

    #[test]
    fn kube_system_and_the_own_namespace_are_always_excluded() {
        let s = settings(&["--vault-addr", "https://v"]).expect("valid");
        assert_eq!(
            s.patch.excluded_namespaces,
            BTreeSet::from(["kube-system".to_owned()])
        );
        let s = cli(&[
            "--vault-addr",
            "https://v",
            "--exclude-namespaces",
            "monitoring, istio-system,",
        ])
        .expect("parses")
        .validate_in(Some("sidekey".into()))
        .expect("valid");
        let want = ["istio-system", "kube-system", "monitoring", "sidekey"];
        assert!(
            s.patch.excluded_namespaces.iter().eq(want.iter()),
            "{:?}",
            s.patch.excluded_namespaces
        );
        // --namespace wins over POD_NAMESPACE.
        let s = cli(&["--vault-addr", "https://v", "--namespace", "hooks"])
            .expect("parses")
            .validate_in(Some("other".into()))
            .expect("valid");
        assert!(s.patch.excluded_namespaces.contains("hooks"));
        assert!(!s.patch.excluded_namespaces.contains("other"));
    }

    #[test]
    fn refuses_a_namespace_that_is_not_a_name_naming_the_flag() {
        let err = settings(&[
            "--vault-addr",
            "https://v",
            "--exclude-namespaces",
            "Bad_NS",
        ])
        .expect_err("bad");
        assert!(err.to_string().starts_with("--exclude-namespaces"), "{err}");
        let err = settings(&["--vault-addr", "https://v", "--namespace", "a b"]).expect_err("bad");
        assert!(err.to_string().starts_with("--namespace"), "{err}");
    }
}
