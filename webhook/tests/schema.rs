//! The patched pod checked against the Kubernetes OpenAPI schema, strictly (unknown
//! fields refused), with the `kubernetes-validate` tool that `scripts/setup.sh` installs.
//!
//! Ignored by default because it needs that tool: run with
//! `cargo test -p sidekey-webhook --test schema -- --ignored`. The tool is looked up in
//! `KUBERNETES_VALIDATE`, then in the repository's `.venv/bin`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::json;

fn tool() -> PathBuf {
    std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.venv/bin/kubernetes-validate"
            ))
        },
        PathBuf::from,
    )
}

#[test]
#[ignore = "needs kubernetes-validate (scripts/setup.sh)"]
fn the_patched_pod_is_a_valid_pod_for_every_supported_kubernetes() {
    let review = json(POD_CREATE);
    let settings = settings();
    let mut pod = review["request"]["object"].clone();
    let sidekey_webhook::patch::Decision::Patch(patch) =
        sidekey_webhook::patch::mutate(&pod, &settings)
    else {
        panic!("the fixture is injected");
    };
    json_patch::patch(&mut pod, &patch).expect("applies");
    // The API server fills in the name from generateName before validation.
    pod["metadata"]["name"] = json!("web-7d9c8b5f4-x2b9q");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).expect("write");
    let tool = tool();
    for version in ["1.28", "1.33", "1.37"] {
        let out = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "Kubernetes {version} refuses the patched pod:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
