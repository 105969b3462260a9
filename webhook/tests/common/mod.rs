//! Shared setup of the webhook's integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod bao;
pub mod pods;
pub mod rules;
pub mod tools;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sidekey_agent::contract::annotations::Defaults;
use sidekey_webhook::patch::PatchSettings;

pub const POD_CREATE: &str = include_str!("../data/pod-create.json");
pub const POD_NOT_OPTED_IN: &str = include_str!("../data/pod-not-opted-in.json");
pub const POD_BAD_ANNOTATION: &str = include_str!("../data/pod-bad-annotation.json");
pub const DEPLOYMENT_CREATE: &str = include_str!("../data/deployment-create.json");

/// The secret-looking env value in the pod fixtures: no log may ever hold it.
pub const FIXTURE_SECRET: &str = "env-value-that-must-never-be-logged";

/// Hands a log the test captured to the suite-wide leak scan (docs/faults.md, "Leaks")
/// when `SIDEKEY_LEAK_DIR` is set (`make test`), with the fixtures' secret value;
/// otherwise does nothing.
pub fn leak_log(name: &str, text: &str) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(dir) = std::env::var_os("SIDEKEY_LEAK_DIR").filter(|d| !d.is_empty()) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let logs = dir.join("logs");
    let _ = std::fs::create_dir_all(&logs).and_then(|()| {
        std::fs::write(
            logs.join(format!("{exe}-{}-{n}-{name}", std::process::id())),
            text,
        )
    });
    // One append per call: O_APPEND keeps concurrent writers' lines whole.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("values"))
        .and_then(|mut f| writeln!(f, "{FIXTURE_SECRET}"));
}

/// Installs the process-wide rustls provider, as `main` does; later calls are no-ops.
pub fn setup() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn settings() -> PatchSettings {
    PatchSettings {
        agent_image: "registry.example/sidekey/agent:test".into(),
        defaults: Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
        },
        ..PatchSettings::default()
    }
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// Decodes the base64 JSON patch of a review response and applies it to `object`.
pub fn apply_response_patch(response: &Value, object: &Value) -> Value {
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    let encoded = response["response"]["patch"]
        .as_str()
        .expect("patch is a string");
    let bytes = STANDARD.decode(encoded).expect("patch is standard base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON patch");
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).expect("patch applies to the pod");
    out
}

pub fn container_names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}
