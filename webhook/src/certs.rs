//! `sidekey-webhook certs`: a CA and a serving certificate for clusters without
//! cert-manager, written as manifests to apply.
//!
//! Each run makes a new CA, signs a serving certificate for the webhook's Service with
//! it, and throws the CA's key away: nothing can sign another certificate later, and
//! the next rotation is simply the next run. The `caBundle` written for the webhook
//! entries trusts the new CA and the previous one (the `ca.crt` an earlier run left in
//! the output directory, or `--previous-ca`), so during a rotation the API server
//! accepts both the replicas still serving the old certificate and those that have
//! reloaded the new one. Running it again is always safe for the same reason.
//!
//! Files written to `--out` (each replaced atomically):
//! `ca.crt` (the new CA), `ca-bundle.crt` (new and previous CA), `tls.crt`,
//! `tls.key`, `secret.yaml` (the Secret the Deployment mounts) and
//! `webhook-ca-bundle.yaml` (a strategic merge patch setting `caBundle` on every entry
//! of the MutatingWebhookConfiguration). `manifests/overlays/static-certs` uses the
//! last two when `--out` is its `certs` directory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Namespace of the install in `manifests/`.
pub const NAMESPACE: &str = "sidekey-system";
/// The webhook's Service, which the API server dials as `<service>.<namespace>.svc`.
pub const SERVICE: &str = "sidekey-webhook";
/// The Secret holding the serving certificate, mounted by the Deployment.
pub const SECRET: &str = "sidekey-webhook-tls";
/// Name of the MutatingWebhookConfiguration.
pub const CONFIGURATION: &str = "sidekey";
/// Its entries, in order: failurePolicy Fail for labelled pods, Ignore for pods opted
/// in by annotation only.
pub const WEBHOOK_ENTRIES: [&str; 2] = [
    "labelled.inject.sidekey.dev",
    "annotated.inject.sidekey.dev",
];

/// Command line of `sidekey-webhook certs`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sidekey-webhook certs",
    version,
    about = "Writes a new CA, a serving certificate signed by it, and the manifests that \
             install them: the Secret and a caBundle patch for every webhook entry. \
             The caBundle also trusts the previous CA, so running it again rotates \
             without a failed request."
)]
pub struct CertsCli {
    /// Directory to write to (created if missing), e.g.
    /// manifests/overlays/static-certs/certs. Its ca.crt from an earlier run is the
    /// previous CA.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Namespace of the webhook's Service and Secret.
    #[arg(long, value_name = "NS", default_value = NAMESPACE)]
    pub namespace: String,
    /// Name of the webhook's Service.
    #[arg(long, value_name = "NAME", default_value = SERVICE)]
    pub service: String,
    /// Validity of the CA and the serving certificate, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// PEM file of the CA (or bundle) to keep trusting, instead of DIR/ca.crt: e.g.
    /// the caBundle now in the cluster, when the previous run's files are gone.
    #[arg(long, value_name = "FILE")]
    pub previous_ca: Option<PathBuf>,
}

/// Why the certificates cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory cannot be read or written.
    #[error("{path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The previous CA file holds no usable certificate.
    #[error("previous CA {path}: {problem}")]
    PreviousCa { path: PathBuf, problem: String },
    /// `--namespace` or `--service` is not a DNS label.
    #[error("--{flag}: {value:?} is not a DNS label (lowercase letters, digits and '-')")]
    Name { flag: &'static str, value: String },
    /// rcgen refused to build a certificate.
    #[error("cannot generate the certificates")]
    Generate(#[from] rcgen::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`write`] produced.
#[derive(Debug)]
pub struct Written {
    /// The serving certificate's DNS names.
    pub dns_names: Vec<String>,
    /// How many CAs the caBundle trusts (1, or 2 with a previous CA).
    pub bundle_cas: usize,
    /// The serving certificate's notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// Generates and writes everything; see the module documentation.
///
/// # Errors
///
/// Bad names, an unreadable or empty previous CA, or a file that cannot be written.
pub fn write(cli: &CertsCli) -> Result<Written> {
    for (flag, value) in [("namespace", &cli.namespace), ("service", &cli.service)] {
        if !is_dns_label(value) {
            return Err(Error::Name {
                flag,
                value: value.clone(),
            });
        }
    }
    let out = &cli.out;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.clone(),
        action: "cannot create the directory",
        source,
    })?;
    let previous_path = cli.previous_ca.clone().or_else(|| {
        let path = out.join("ca.crt");
        path.exists().then_some(path)
    });
    let previous = match &previous_path {
        Some(path) => read_previous_ca(path)?,
        None => Vec::new(),
    };

    let now = time::OffsetDateTime::now_utc();
    // An hour back for clocks that lag behind this machine's.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(cli.days));

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("sidekey-webhook-ca {}", now.unix_timestamp()),
    );
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let dns_names = vec![
        format!("{}.{}.svc", cli.service, cli.namespace),
        format!("{}.{}.svc.cluster.local", cli.service, cli.namespace),
    ];
    let mut params = CertificateParams::new(dns_names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, dns_names[0].clone());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let ca_pem = ca_cert.pem();
    let mut bundle = ca_pem.clone();
    let mut bundle_cas = 1;
    for der in &previous {
        if der.as_ref() != ca_cert.der().as_ref() {
            bundle.push_str(&pem("CERTIFICATE", der));
            bundle_cas += 1;
        }
    }
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();

    write_file(&out.join("tls.key"), key_pem.as_bytes(), 0o600)?;
    write_file(&out.join("tls.crt"), cert_pem.as_bytes(), 0o644)?;
    write_file(
        &out.join("secret.yaml"),
        secret_manifest(cli, &cert_pem, &key_pem, &ca_pem).as_bytes(),
        0o600,
    )?;
    write_file(
        &out.join("webhook-ca-bundle.yaml"),
        ca_bundle_patch(&bundle).as_bytes(),
        0o644,
    )?;
    write_file(&out.join("ca-bundle.crt"), bundle.as_bytes(), 0o644)?;
    // Last: it is what the next run reads as the previous CA.
    write_file(&out.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;

    Ok(Written {
        dns_names,
        bundle_cas,
        not_after: not_after.unix_timestamp(),
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn read_previous_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        action: "cannot read the previous CA",
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::PreviousCa {
            path: path.to_owned(),
            problem: format!("is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::PreviousCa {
            path: path.to_owned(),
            problem: "holds no PEM certificate".to_owned(),
        });
    }
    Ok(certs)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn secret_manifest(cli: &CertsCli, cert_pem: &str, key_pem: &str, ca_pem: &str) -> String {
    format!(
        "# Written by `sidekey-webhook certs`. Holds a private key: keep it out of git.\n\
         apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: {SECRET}\n  namespace: {namespace}\n  labels:\n    \
         app.kubernetes.io/name: sidekey-webhook\n\
         type: kubernetes.io/tls\n\
         data:\n  tls.crt: {cert}\n  tls.key: {key}\n  ca.crt: {ca}\n",
        namespace = cli.namespace,
        cert = STANDARD.encode(cert_pem),
        key = STANDARD.encode(key_pem),
        ca = STANDARD.encode(ca_pem),
    )
}

fn ca_bundle_patch(bundle_pem: &str) -> String {
    let encoded = STANDARD.encode(bundle_pem);
    let mut out = format!(
        "# Written by `sidekey-webhook certs`: the CAs the API server trusts for the\n\
         # webhook (the new CA and the previous one), on every webhook entry. A strategic\n\
         # merge patch: entries are matched by name.\n\
         apiVersion: admissionregistration.k8s.io/v1\n\
         kind: MutatingWebhookConfiguration\n\
         metadata:\n  name: {CONFIGURATION}\n\
         webhooks:\n"
    );
    for name in WEBHOOK_ENTRIES {
        let _ = write!(
            out,
            "  - name: {name}\n    clientConfig:\n      caBundle: {encoded}\n"
        );
    }
    out
}

/// Replaces `path` atomically: a temporary file in the same directory, synced, renamed.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let io = |action, source| Error::Io {
        path: path.to_owned(),
        action,
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("cannot create a temporary file beside it", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cannot write", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot replace", e)
    })
}

/// The notAfter of a DER X.509 certificate, in seconds since the Unix epoch; `None`
/// when the DER is not a certificate this walk understands.
///
/// A small walk over the DER rather than a full X.509 parser: the webhook needs this one
/// field (for its expiry metric), and rustls has already parsed and checked the
/// certificate by the time it is asked.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (tag, certificate, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = tlv(certificate)?;
    if tag != 0x30 {
        return None;
    }
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = tlv(tbs)?;
        if tag != expected {
            return None;
        }
        tbs = rest;
    }
    let (tag, validity, _) = tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = tlv(validity)?;
    let (tag, time, _) = tlv(rest)?;
    asn1_time(tag, time)
}

/// One DER tag-length-value: (tag, value, what follows). Single-byte tags only, which is
/// all a certificate's outer structure uses.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0_usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2])?;
            // RFC 5280: 50-99 are 1950-1999, 00-49 are 2000-2049.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[0..2])?, num(&rest[2..4])?);
    let (hour, minute, second) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March, so the leap day is the last day of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn reads_the_not_after_rcgen_wrote_in_both_time_encodings() {
        for (y, m, d) in [(2031, 7, 14), (2051, 1, 2), (1999, 12, 31)] {
            let mut params = CertificateParams::new(vec!["x".to_owned()]).expect("params");
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("cert");
            let want = params.not_after.unix_timestamp();
            assert_eq!(not_after(cert.der()), Some(want), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(b"\x30\x84\xff\xff\xff\xff"), None);
        let cert = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).expect("cert");
        let der = cert.cert.der();
        assert_eq!(not_after(&der[..der.len() / 2]), None);
    }
}
