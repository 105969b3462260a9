//! The manifests as `kubectl apply -k` would send them: every kustomize build (with the
//! pinned `kubectl kustomize` from `.venv`) and every plain manifest is checked against
//! the Kubernetes JSON schema, strictly, for the oldest and newest supported versions.
//! cert-manager's kinds are outside that schema set: they are named as unchecked, and
//! any other unknown kind fails the test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use common::bao::DevServer;
use common::tools::{self, run_ok};

/// Kubernetes versions the manifests must be valid for: the first with native sidecars
/// and `matchConditions` on by default, and the newest the schema tool knows.
const VERSIONS: [&str; 2] = ["1.29", "1.37"];

/// Kinds kubernetes-validate has no schema for, allowed in the builds and reported.
const UNCHECKED_API_GROUP: &str = "cert-manager.io/";

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// `kubectl kustomize DIR`, without a network when this user can make a network
/// namespace (root, as in CI): the build must not depend on fetching anything.
fn kustomize(dir: &Path) -> String {
    let offline = Command::new("unshare")
        .args(["--net", "--", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = if offline {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--"]).arg(tools::kubectl());
        cmd
    } else {
        Command::new(tools::kubectl())
    };
    let out = run_ok(cmd.arg("kustomize").arg(dir));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// YAML documents to JSON values, with the venv's PyYAML.
fn documents(yaml: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(tools::python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python finishes");
    assert!(out.status.success(), "the YAML does not parse");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Validates `file` strictly for every version; returns the `Kind apiVersion` of the
/// documents left unchecked, failing on an unknown kind outside cert-manager's group.
fn validate(file: &Path, label: &str) -> BTreeSet<String> {
    let mut unchecked = BTreeSet::new();
    for version in VERSIONS {
        let out = Command::new(tools::kubernetes_validate())
            .args(["--strict", "-k", version])
            .arg(file)
            .output()
            .expect("kubernetes-validate runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{label} is refused by the Kubernetes {version} schema:\n{text}"
        );
        for line in text.lines() {
            if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
                // "<Kind> with api version <group/version> for kubernetes version ..."
                let mut words = rest.split_whitespace();
                let kind = words.next().unwrap_or_default();
                let api_version = words.nth(3).unwrap_or_default();
                assert!(
                    api_version.starts_with(UNCHECKED_API_GROUP),
                    "{label}: {kind} {api_version} has no schema and is not cert-manager's: \
                     a typo in apiVersion or kind?"
                );
                unchecked.insert(format!("{kind} {api_version}"));
            }
        }
    }
    unchecked
}

fn build_and_validate(dir: &Path, label: &str) -> Vec<Value> {
    let yaml = kustomize(dir);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("build.yaml");
    std::fs::write(&file, &yaml).expect("write");
    let unchecked = validate(&file, label);
    if !unchecked.is_empty() {
        eprintln!("{label}: not schema-checked (no schema in kubernetes-validate): {unchecked:?}");
    }
    documents(&yaml)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the build"))
}

#[test]
fn the_default_install_is_the_cert_manager_overlay_and_is_schema_valid() {
    let docs = build_and_validate(&manifests(), "manifests/");
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    let want = [
        "Certificate",
        "Deployment",
        "Issuer",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ];
    assert!(kinds.iter().eq(want.iter()), "{kinds:?}");
    // No RBAC: the webhook calls no Kubernetes API.
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"].as_str().is_some_and(|k| k.contains("Role")))
    );

    let config = find(&docs, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "sidekey-system/sidekey-webhook-tls"
    );
    let serving = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == "sidekey-webhook-tls")
        .expect("serving certificate");
    assert_eq!(serving["spec"]["secretName"], "sidekey-webhook-tls");
    assert_eq!(serving["metadata"]["namespace"], "sidekey-system");
    let names = serving["spec"]["dnsNames"].as_array().expect("dnsNames");
    assert!(
        names.contains(&"sidekey-webhook.sidekey-system.svc".into()),
        "{names:?}"
    );
}

#[test]
fn the_base_is_hardened_and_both_webhook_entries_are_scoped() {
    let docs = build_and_validate(&manifests().join("base"), "manifests/base");
    for doc in &docs {
        if doc["kind"] != "Namespace" && doc["kind"] != "MutatingWebhookConfiguration" {
            assert_eq!(doc["metadata"]["namespace"], "sidekey-system", "{doc}");
        }
    }

    let deployment = find(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{pod}");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    // The webhook image of this release, which injects the agent of this release.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        container["image"],
        format!("ghcr.io/sidekey/webhook:{version}")
    );
    assert_eq!(
        sidekey_webhook::config::DEFAULT_AGENT_IMAGE,
        format!("ghcr.io/sidekey/agent:{version}")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    let pdb = find(&docs, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );

    let config = find(&docs, "MutatingWebhookConfiguration");
    let entries = config["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = entries.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, sidekey_webhook::certs::WEBHOOK_ENTRIES);
    for entry in entries {
        let name = &entry["name"];
        assert_eq!(
            entry["admissionReviewVersions"],
            serde_json::json!(["v1"]),
            "{name}"
        );
        assert_eq!(entry["sideEffects"], "None", "{name}");
        assert!(
            entry["timeoutSeconds"].as_u64().is_some_and(|t| t <= 5),
            "{name}"
        );
        assert_eq!(
            entry["rules"][0]["operations"],
            serde_json::json!(["CREATE"]),
            "{name}"
        );
        assert_eq!(
            entry["rules"][0]["resources"],
            serde_json::json!(["pods"]),
            "{name}"
        );
        // The caBundle comes from an overlay, never an empty placeholder.
        assert!(entry["clientConfig"].get("caBundle").is_none(), "{name}");
        assert_eq!(
            entry["clientConfig"]["service"]["namespace"],
            "sidekey-system"
        );
        let excluded = &entry["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["operator"], "NotIn", "{name}");
        assert_eq!(
            excluded["values"],
            serde_json::json!(["kube-system", "sidekey-system"]),
            "{name}"
        );
    }
    assert_eq!(entries[0]["failurePolicy"], "Fail");
    assert_eq!(
        entries[0]["objectSelector"]["matchLabels"]["sidekey.dev/inject"],
        "true"
    );
    assert_eq!(entries[1]["failurePolicy"], "Ignore");
    // Pods migrated from the Vault Agent Injector opt in with its annotation only;
    // the condition must let all three opt-in keys through (docs/migrating.md).
    let expression = entries[1]["matchConditions"][0]["expression"]
        .as_str()
        .expect("the annotated entry has a match condition");
    assert!(
        expression.starts_with("has(object.metadata.annotations) &&"),
        "{expression}"
    );
    for key in [
        "sidekey.dev/inject",
        "vault.hashicorp.com/agent-inject",
        "openbao.org/agent-inject",
    ] {
        assert!(
            expression.contains(&format!("'{key}' in object.metadata.annotations")),
            "{key} missing from {expression}"
        );
    }
}

#[test]
fn the_example_application_is_schema_valid_and_opts_in_by_label() {
    let file = manifests().join("examples/app.yaml");
    let unchecked = validate(&file, "manifests/examples/app.yaml");
    assert!(unchecked.is_empty(), "{unchecked:?}");
    let docs = documents(&std::fs::read_to_string(&file).expect("read"));
    let template = &find(&docs, "Deployment")["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["sidekey.dev/inject"], "true");
    assert_eq!(template["spec"]["serviceAccountName"], "app");
}

#[test]
fn the_schema_check_refuses_a_misspelt_field() {
    let yaml = kustomize(&manifests().join("base"))
        .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("broken.yaml");
    std::fs::write(&file, yaml).expect("write");
    let out = Command::new(tools::kubernetes_validate())
        .args(["--strict", "--quiet", "-k", VERSIONS[0]])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "a misspelt field passed the strict schema"
    );
}

#[test]
fn the_vault_setup_example_binds_one_service_account_in_one_namespace() {
    let bao = DevServer::start(false);
    // The API server CA is only stored by Vault here; any certificate will do.
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".to_owned()]).expect("cert");
    let ca_file = bao.dir.path().join("k8s-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).expect("write");
    let script = manifests().join("examples/vault-setup.sh");
    let path = format!(
        "{}:{}",
        tools::bao().parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for _ in 0..2 {
        // Twice: running it again must succeed and change nothing.
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env("PATH", &path)
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", &bao.root_token)
            .env("KUBERNETES_CA_FILE", &ca_file);
        run_ok(&mut cmd);
    }
    let out = run_ok(
        bao.cli()
            .args(["read", "-format=json", "auth/kubernetes/role/demo-app"]),
    );
    let role: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let data = &role["data"];
    assert_eq!(
        data["bound_service_account_names"],
        serde_json::json!(["app"])
    );
    assert_eq!(
        data["bound_service_account_namespaces"],
        serde_json::json!(["demo"])
    );
    assert_eq!(data["audience"], "vault");
    assert_eq!(data["token_policies"], serde_json::json!(["demo-app"]));
    let out = run_ok(bao.cli().args(["policy", "read", "demo-app"]));
    let policy = String::from_utf8_lossy(&out.stdout);
    assert!(policy.contains("secret/data/demo/app"), "{policy}");
    assert!(!policy.contains("\"*\""), "{policy}");
}

#[test]
fn the_vault_address_overlay_of_the_install_guide_builds_and_sets_the_address() {
    // The overlay docs/install.md shows, applied to this checkout.
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = dir.path().join("my-install");
    std::fs::create_dir(&overlay).expect("mkdir");
    // kustomize takes relative resource paths only: climb to / and back down.
    let up = "../".repeat(overlay.components().count() - 1);
    let target = manifests().canonicalize().expect("manifests");
    let relative = format!(
        "{up}{}",
        target.display().to_string().trim_start_matches('/')
    );
    let kustomization = format!(
        "resources:\n  - {}\npatches:\n  - target: {{kind: Deployment, name: sidekey-webhook}}\n    \
         patch: |\n      - op: replace\n        path: /spec/template/spec/containers/0/env/1/value\n        \
         value: https://vault.example.internal:8200\n",
        relative
    );
    std::fs::write(overlay.join("kustomization.yaml"), kustomization).expect("write");
    let docs = documents(&kustomize(&overlay));
    let env = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"][1];
    assert_eq!(env["name"], "SIDEKEY_VAULT_ADDR");
    assert_eq!(env["value"], "https://vault.example.internal:8200");
}
