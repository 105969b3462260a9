//! The serving certificate, and its reload when the files change.
//!
//! The certificate usually comes from a Kubernetes Secret volume, which the kubelet
//! updates by swapping a `..data` symlink rather than by writing the files in place. A
//! watch on the file paths can miss that, so [`Reloader::watch`] polls instead: it
//! re-reads both files every interval and reloads when their bytes change. A pair that
//! does not load (a half-finished rotation, a key that does not match the certificate)
//! is logged and the old certificate stays in use; the next change is tried again.
//!
//! New handshakes get the new certificate; open connections keep theirs. With
//! [`Reloader::with_metrics`], the expiry of the certificate in use is exported and
//! follows every reload.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs;
use crate::metrics::Metrics;

/// How often [`Reloader::watch`] re-reads the files in production.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Why the certificate pair cannot be loaded. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file cannot be read.
    #[error("{flag} {path}: cannot read")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("--tls-cert {path}: {problem}")]
    Cert { path: PathBuf, problem: String },
    /// The key file holds no usable PEM private key.
    #[error("--tls-key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    /// rustls refuses the pair, e.g. the key does not belong to the certificate.
    #[error("--tls-cert {cert} with --tls-key {key}: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider cannot build a server configuration.
    #[error("cannot configure tls")]
    Config(#[source] rustls::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Hands rustls whichever certificate is current.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// The certificate served to new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

// Written by hand so that the key can never be printed.
impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.current.load().cert.len();
        f.debug_struct("CertResolver")
            .field("chain_len", &certs)
            .finish_non_exhaustive()
    }
}

/// Loads the certificate pair and keeps it current.
pub struct Reloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<CertResolver>,
    /// Bytes of the pair in use, to notice a change.
    loaded: (Vec<u8>, Vec<u8>),
    /// Bytes of the last pair that failed to load, so a broken pair is reported once.
    failed: Option<(Vec<u8>, Vec<u8>)>,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reads and checks the pair once.
    ///
    /// # Errors
    ///
    /// Unreadable files, PEM without a certificate or key, or a key that does not match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let certified = certified_key(cert_path, key_path, &cert, &key)?;
        Ok(Reloader {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            resolver: Arc::new(CertResolver {
                current: ArcSwap::from_pointee(certified),
            }),
            loaded: (cert, key),
            failed: None,
            metrics: None,
        })
    }

    /// Exports the serving certificate's expiry to `metrics`, now and after every
    /// reload, and counts reloads.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        if let Some(not_after) = self.not_after() {
            metrics.set_certificate_expiry(not_after);
        }
        self.metrics = Some(metrics);
        self
    }

    /// notAfter of the leaf certificate in use, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<i64> {
        let current = self.resolver.current();
        certs::not_after(current.cert.first()?.as_ref())
    }

    /// The resolver to serve with; it follows every reload.
    pub fn resolver(&self) -> Arc<CertResolver> {
        Arc::clone(&self.resolver)
    }

    /// A server configuration for TLS 1.3 and 1.2 offering HTTP/2 and HTTP/1.1.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the installed crypto provider lacks both TLS versions.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(Error::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files once and swaps the certificate if they changed and load.
    /// Returns whether the certificate was replaced.
    ///
    /// # Errors
    ///
    /// The changed pair does not load; the old certificate stays in use. A pair that
    /// failed before and has not changed since is not reported again (`Ok(false)`).
    pub fn poll(&mut self) -> Result<bool> {
        let pair = read_pair(&self.cert_path, &self.key_path)?;
        if pair == self.loaded || self.failed.as_ref() == Some(&pair) {
            return Ok(false);
        }
        match certified_key(&self.cert_path, &self.key_path, &pair.0, &pair.1) {
            Ok(certified) => {
                self.resolver.current.store(Arc::new(certified));
                self.loaded = pair;
                self.failed = None;
                if let Some(metrics) = &self.metrics {
                    metrics.certificate_reloaded();
                    if let Some(not_after) = self.not_after() {
                        metrics.set_certificate_expiry(not_after);
                    }
                }
                Ok(true)
            }
            Err(e) => {
                self.failed = Some(pair);
                Err(e)
            }
        }
    }

    /// Polls every `interval` until the task is dropped or aborted, logging reloads and
    /// refused pairs.
    pub async fn watch(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            // Two small files; reading them on the runtime thread costs less than a
            // hop to the blocking pool.
            match self.poll() {
                Ok(true) => tracing::info!(
                    cert = %self.cert_path.display(),
                    not_after = self.not_after(),
                    "tls certificate reloaded"
                ),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    error = %error,
                    "keeping the current tls certificate: the changed files do not load"
                ),
            }
        }
    }
}

/// The crypto provider: the process default when one is installed, ring otherwise.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            flag,
            path: path.to_owned(),
            source,
        })
    };
    Ok((read("--tls-cert", cert_path)?, read("--tls-key", key_path)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey> {
    let cert_err = |problem: String| Error::Cert {
        path: cert_path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("holds no PEM certificate".to_owned()));
    }
    // The PEM error names the section, never the key material.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Key {
        path: key_path.to_owned(),
        problem: format!("holds no usable PEM private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| Error::Pair {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Pair {
        cert: String,
        key: String,
        der: CertificateDer<'static>,
    }

    fn pair(name: &str) -> Pair {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
        Pair {
            cert: c.cert.pem(),
            key: c.signing_key.serialize_pem(),
            der: c.cert.der().clone(),
        }
    }

    /// Lays out `dir` like a kubelet Secret volume: `tls.crt -> ..data/tls.crt`,
    /// `..data -> ..<generation>`, and swaps `..data` atomically by rename.
    fn publish(dir: &Path, generation: &str, cert: &str, key: &str) {
        let generation_dir = dir.join(generation);
        std::fs::create_dir(&generation_dir).expect("mkdir");
        std::fs::write(generation_dir.join("tls.crt"), cert).expect("write");
        std::fs::write(generation_dir.join("tls.key"), key).expect("write");
        let tmp = dir.join("..data_tmp");
        symlink(generation, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap");
        for file in ["tls.crt", "tls.key"] {
            let link = dir.join(file);
            if !link.exists() {
                symlink(format!("..data/{file}"), link).expect("symlink");
            }
        }
    }

    fn serving(reloader: &Reloader) -> CertificateDer<'static> {
        reloader.resolver().current().cert[0].clone()
    }

    #[test]
    fn reloads_after_a_kubelet_style_swap_and_keeps_the_old_pair_when_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a"), pair("b"));
        publish(dir.path(), "..gen1", &a.cert, &a.key);
        let mut reloader = Reloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .expect("loads");
        assert_eq!(serving(&reloader), a.der);
        assert!(!reloader.poll().expect("unchanged"), "nothing changed yet");

        publish(dir.path(), "..gen2", &b.cert, &b.key);
        assert!(reloader.poll().expect("reloads"));
        assert_eq!(serving(&reloader), b.der);

        // Certificate of A with the key of B: refused once, B stays in use.
        publish(dir.path(), "..gen3", &a.cert, &b.key);
        let err = reloader.poll().expect_err("mismatched pair");
        assert!(matches!(err, Error::Pair { .. }), "{err}");
        assert_eq!(serving(&reloader), b.der);
        assert!(!reloader.poll().expect("reported once"));

        publish(dir.path(), "..gen4", &a.cert, &a.key);
        assert!(reloader.poll().expect("reloads"));
        assert_eq!(serving(&reloader), a.der);
    }

    #[test]
    fn load_errors_name_the_file_and_never_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair("a");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");

        std::fs::write(&cert, &a.cert).expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let err = Reloader::load(&cert, &key).expect_err("no key");
        assert!(err.to_string().starts_with("--tls-key"), "{err}");

        std::fs::write(&cert, &a.key).expect("write");
        std::fs::write(&key, &a.key).expect("write");
        let err = Reloader::load(&cert, &key).expect_err("no certificate");
        assert!(err.to_string().starts_with("--tls-cert"), "{err}");
        let body: String = a.key.lines().nth(1).expect("a base64 line").to_owned();
        assert!(!err.to_string().contains(&body), "{err}");
        assert!(!format!("{err:?}").contains(&body), "{err:?}");

        let err = Reloader::load(&dir.path().join("nope.crt"), &key).expect_err("missing");
        assert!(matches!(err, Error::Read { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_watcher_picks_up_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a"), pair("b"));
        publish(dir.path(), "..gen1", &a.cert, &a.key);
        let reloader = Reloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .expect("loads");
        let resolver = reloader.resolver();
        let watcher = tokio::spawn(reloader.watch(Duration::from_millis(20)));

        publish(dir.path(), "..gen2", &b.cert, &b.key);
        let mut seen = false;
        for _ in 0..250 {
            if resolver.current().cert[0] == b.der {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watcher.abort();
        assert!(
            seen,
            "the watcher did not load the new certificate within 5 s"
        );
    }

    #[test]
    fn debug_output_elides_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair("a");
        publish(dir.path(), "..gen1", &a.cert, &a.key);
        let reloader = Reloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .expect("loads");
        let body = a.key.lines().nth(1).expect("a base64 line");
        let debug = format!("{reloader:?} {:?}", reloader.resolver());
        assert!(!debug.contains(body), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
