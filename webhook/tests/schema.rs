//! Patched pods checked against the Kubernetes OpenAPI schema, strictly (unknown fields
//! refused), with the `kubernetes-validate` tool that `make setup` installs into
//! `.venv`. The tool is slow to start, so generated pods are batched into one
//! multi-document file per layout and validated once per Kubernetes version.
//!
//! The tool is looked up in `KUBERNETES_VALIDATE`, then in the repository's
//! `.venv/bin`; without it this test fails and says to run `make setup`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pods::pod_and_settings;
use common::*;
use proptest::strategy::{Strategy as _, ValueTree as _};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use sidekey_webhook::patch::{Decision, PatchSettings, SidecarMode, mutate};

fn tool() -> PathBuf {
    let path = std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.venv/bin/kubernetes-validate"
            ))
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (scripts/setup.sh installs kubernetes-validate \
         into .venv), or point KUBERNETES_VALIDATE at the tool",
        path.display()
    );
    path
}

fn patched(pod: &Value, settings: &PatchSettings) -> Option<Value> {
    let Decision::Patch(patch) = mutate(pod, settings) else {
        return None;
    };
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("applies");
    Some(out)
}

fn validate(file: &Path, versions: &[&str]) {
    let tool = tool();
    for version in versions {
        let out = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "Kubernetes {version} refuses a patched pod of {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn patched_pods_are_valid_pods_for_every_supported_kubernetes() {
    // The fixture of a Deployment's pod, in both layouts.
    let review = json(POD_CREATE);
    let fixture = review["request"]["object"].clone();
    let mut native = Vec::new();
    let mut classic = Vec::new();
    for (mode, docs) in [
        (SidecarMode::Native, &mut native),
        (SidecarMode::Classic, &mut classic),
    ] {
        let settings = PatchSettings {
            sidecar_mode: mode,
            ..settings()
        };
        let mut pod = patched(&fixture, &settings).expect("the fixture is injected");
        // The API server fills in the name from generateName before validation.
        pod["metadata"]["name"] = json!("web-7d9c8b5f4-x2b9q");
        docs.push(pod);
    }

    // Generated pods, a dozen of each layout, and the pods they came from (so the
    // generator itself is held to the schema).
    let mut originals = Vec::new();
    let strategy = pod_and_settings();
    let mut runner = TestRunner::deterministic();
    for _ in 0..400 {
        if native.len() >= 12 && classic.len() >= 12 {
            break;
        }
        let (pod, settings) = strategy.new_tree(&mut runner).expect("a pod").current();
        let Some(out) = patched(&pod, &settings) else {
            continue;
        };
        // The layout actually chosen: a native sidecar or the classic pair/init-only.
        let is_native = out["spec"]["initContainers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["restartPolicy"] == "Always"));
        let docs = if is_native { &mut native } else { &mut classic };
        if docs.len() < 12 {
            docs.push(out);
            originals.push(pod);
        }
    }
    assert!(
        native.len() >= 12 && classic.len() >= 12,
        "too few patched pods"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, docs: &[Value]| {
        let file = dir.path().join(name);
        let text: Vec<String> = docs.iter().map(Value::to_string).collect();
        std::fs::write(&file, text.join("\n---\n")).expect("write");
        file
    };
    // restartPolicy on init containers (native sidecars) is in the schema from 1.28
    // and on by default from 1.29; classic pods must also pass on 1.28.
    validate(&write("native.yaml", &native), &["1.29", "1.33", "1.37"]);
    validate(&write("classic.yaml", &classic), &["1.28", "1.33", "1.37"]);
    validate(&write("originals.yaml", &originals), &["1.33"]);
}

#[test]
fn the_schema_check_catches_a_broken_pod_in_a_batch() {
    let review = json(POD_CREATE);
    let mut good = patched(&review["request"]["object"], &settings()).expect("injected");
    good["metadata"]["name"] = json!("ok");
    let mut bad = good.clone();
    bad["spec"]["containers"][0]["volumeMountz"] = json!([]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("batch.yaml");
    std::fs::write(&file, format!("{good}\n---\n{bad}")).expect("write");
    let out = Command::new(tool())
        .args(["--strict", "--quiet", "-k", "1.33"])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "a misspelt field passed the strict schema"
    );
}
