//! Throwaway certificate authorities and serving certificates, and clients that trust
//! only them. Generated fresh per run; no key is ever committed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::{IoContext, Result, failed};

/// A CA certificate and one serving certificate it signed, as PEM.
pub struct ServingCert {
    /// The CA's certificate: what clients trust.
    pub ca_pem: String,
    /// The leaf certificate followed by nothing else (the CA is the trust anchor).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_pem", &"<certificate>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Files written by [`ServingCert::write`].
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServingCert {
    /// A new CA named `ca_name` and a leaf for `names` (DNS names or IP addresses).
    pub fn generate(ca_name: &str, names: &[&str]) -> Result<ServingCert> {
        let gen_err = |e: rcgen::Error| failed(format!("generating certificates: {e}"));

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(gen_err)?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;

        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut leaf_params = CertificateParams::new(names.clone()).map_err(gen_err)?;
        leaf_params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let leaf_key = KeyPair::generate().map_err(gen_err)?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(gen_err)?;

        Ok(ServingCert {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The leaf's private key PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<CertFiles> {
        use std::os::unix::fs::PermissionsExt;
        let files = CertFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.ca, &self.ca_pem)
            .ctx(|| format!("writing {}", files.ca.display()))?;
        std::fs::write(&files.cert, &self.cert_pem)
            .ctx(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, &self.key_pem)
            .ctx(|| format!("writing {}", files.key.display()))?;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .ctx(|| format!("chmod {}", files.key.display()))?;
        Ok(files)
    }

    /// A rustls server configuration serving the leaf, with h2 and http/1.1 ALPN.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        crate::rt::install_crypto();
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| failed(format!("parsing generated certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| failed(format!("parsing generated key: {e}")))?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| failed(format!("building TLS server config: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An HTTPS client that trusts `ca_pem` and nothing else.
pub fn client_trusting(ca_pem: &str) -> Result<reqwest::Client> {
    crate::rt::install_crypto();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| failed(format!("parsing CA certificate: {e}")))?;
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| failed(format!("building HTTPS client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_private_key() {
        let c = ServingCert::generate("test-ca", &["localhost"]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(c.key_pem().contains("PRIVATE KEY"));
        assert!(c.server_config().is_ok());
    }
}
