//! `sidekey-webhook certs`: the binary writes a CA, a serving certificate and manifests
//! that kustomize turns into a schema-valid install; running it again yields a bundle
//! trusting the old and the new CA.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use common::tools::{self, run_ok};

fn certs(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sidekey-webhook"))
        .args(["certs", "--out"])
        .arg(out)
        .env("SIDEKEY_LOG_FORMAT", "text")
        .output()
        .expect("runs")
}

fn pems(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("readable")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM")
}

/// Whether a client trusting `bundle` accepts `serving` for the Service's name.
fn trusted(bundle: &[CertificateDer<'static>], serving: &CertificateDer<'static>) -> bool {
    common::setup();
    let mut roots = rustls::RootCertStore::empty();
    for ca in bundle {
        roots.add(ca.clone()).expect("root");
    }
    let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .expect("verifier");
    let name = ServerName::try_from("sidekey-webhook.sidekey-system.svc").expect("name");
    verifier
        .verify_server_cert(serving, &[], &name, &[], UnixTime::now())
        .is_ok()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_second_run_trusts_the_old_and_the_new_ca_and_each_serving_certificate_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let first = certs(&out);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first_ca = pems(&out.join("ca.crt"));
    let first_serving = pems(&out.join("tls.crt"));
    assert_eq!(first_ca.len(), 1);
    assert_eq!(pems(&out.join("ca-bundle.crt")), first_ca);
    assert!(trusted(&first_ca, &first_serving[0]));

    let second = certs(&out);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second_ca = pems(&out.join("ca.crt"));
    let second_serving = pems(&out.join("tls.crt"));
    let bundle = pems(&out.join("ca-bundle.crt"));
    assert_ne!(second_ca, first_ca, "a new CA each run");
    assert_eq!(bundle, [second_ca[0].clone(), first_ca[0].clone()]);
    // Replicas still serving the old certificate and those that reloaded the new one
    // are both trusted during the rotation; the old CA alone does not trust the new.
    assert!(trusted(&bundle, &first_serving[0]));
    assert!(trusted(&bundle, &second_serving[0]));
    assert!(!trusted(&first_ca, &second_serving[0]));

    // A third run drops the first CA: the bundle never grows.
    assert!(certs(&out).status.success());
    let third_bundle = pems(&out.join("ca-bundle.crt"));
    assert_eq!(third_bundle.len(), 2);
    assert!(!third_bundle.contains(&first_ca[0]));

    // The key is written for its owner only, the CA key not at all.
    use std::os::unix::fs::PermissionsExt as _;
    for file in ["tls.key", "secret.yaml"] {
        let mode = std::fs::metadata(out.join(file))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
    }
    let names: Vec<String> = std::fs::read_dir(&out)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "temporary files left: {names:?}"
    );
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            "ca-bundle.crt",
            "ca.crt",
            "secret.yaml",
            "tls.crt",
            "tls.key",
            "webhook-ca-bundle.yaml"
        ]
    );
}

#[test]
fn the_static_certs_overlay_builds_into_a_schema_valid_install_with_every_ca_bundle_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let copy = dir.path().join("manifests");
    copy_tree(&manifests, &copy);
    let overlay = copy.join("overlays/static-certs");
    let _ = std::fs::remove_dir_all(overlay.join("certs"));
    let written = certs(&overlay.join("certs"));
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let bundle = std::fs::read(overlay.join("certs/ca-bundle.crt")).expect("bundle");

    let out = run_ok(
        Command::new(tools::kubectl())
            .arg("kustomize")
            .arg(&overlay),
    );
    let build = dir.path().join("build.yaml");
    std::fs::write(&build, &out.stdout).expect("write");
    for version in ["1.29", "1.37"] {
        run_ok(
            Command::new(tools::kubernetes_validate())
                .args(["--strict", "--quiet", "-k", version])
                .arg(&build),
        );
    }

    let json = run_ok(
        Command::new(tools::python())
            .args([
                "-c",
                "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            ])
            .arg(&build),
    );
    let docs: Vec<Value> = serde_json::from_slice(&json.stdout).expect("JSON");
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("the Secret is part of the build");
    assert_eq!(secret["metadata"]["name"], sidekey_webhook::certs::SECRET);
    assert_eq!(secret["metadata"]["namespace"], "sidekey-system");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let config = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook configuration");
    let entries = config["webhooks"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        2,
        "the patch merged by name, adding no entry"
    );
    use base64::Engine as _;
    for entry in entries {
        let encoded = entry["clientConfig"]["caBundle"]
            .as_str()
            .expect("caBundle set");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(decoded, bundle, "{}", entry["name"]);
        // The merge kept everything else of the entry.
        assert!(entry["failurePolicy"].is_string(), "{entry}");
        assert_eq!(entry["clientConfig"]["service"]["path"], "/mutate");
    }
}

#[test]
fn bad_names_and_a_previous_ca_that_is_not_one_are_refused_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_sidekey-webhook"))
        .args(["certs", "--namespace", "Bad_NS", "--out"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--namespace"));

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sidekey-webhook"))
        .args(["certs", "--previous-ca"])
        .arg(&junk)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("junk.pem") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
