//! Each pod rule of `common::rules` against a fixture that breaks it, so that a rule
//! that can never fire is caught here rather than trusted by the property tests.

mod common;

use common::rules::broken;
use serde_json::{Value, json};

/// A pod that passes every rule: restricted, a native sidecar with a probe, a
/// projected token, requests below limits.
fn good() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "good" },
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "initContainers": [{
                "name": "side",
                "image": "s",
                "restartPolicy": "Always",
                "startupProbe": { "exec": { "command": ["/ok"] } },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
            "containers": [{
                "name": "app",
                "image": "a",
                "readinessProbe": { "httpGet": { "port": 8080 } },
                "resources": { "requests": { "memory": "16Mi" }, "limits": { "memory": "64Mi" } },
                "volumeMounts": [
                    { "name": "data", "mountPath": "/data" },
                    { "name": "token", "mountPath": "/token" },
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] },
                },
            }],
            "volumes": [
                { "name": "data", "emptyDir": {} },
                { "name": "token", "projected": { "sources": [
                    { "serviceAccountToken": { "path": "t", "expirationSeconds": 600 } },
                ] } },
            ],
        },
    })
}

fn breaks(edit: impl FnOnce(&mut Value), rule: &str) {
    let mut pod = good();
    edit(&mut pod);
    assert_eq!(broken(&pod), [rule], "{pod:#}");
}

#[test]
fn the_good_fixture_breaks_no_rule() {
    assert_eq!(broken(&good()), Vec::<&str>::new());
}

#[test]
fn a_pod_needs_a_container() {
    breaks(
        |p| p["spec"]["containers"] = json!([]),
        "at-least-one-container",
    );
}

#[test]
fn container_names_are_dns_labels() {
    breaks(
        |p| p["spec"]["containers"][0]["name"] = json!("App_1"),
        "container-name-dns-label",
    );
}

#[test]
fn container_names_are_unique_across_init_and_app_containers() {
    breaks(
        |p| p["spec"]["initContainers"][0]["name"] = json!("app"),
        "unique-container-names",
    );
}

#[test]
fn volume_names_are_unique() {
    breaks(
        |p| {
            let volumes = p["spec"]["volumes"].as_array_mut().unwrap();
            volumes.push(json!({ "name": "data", "secret": { "secretName": "s" } }));
        },
        "unique-volume-names",
    );
}

#[test]
fn mounts_refer_to_existing_volumes() {
    breaks(
        |p| p["spec"]["containers"][0]["volumeMounts"][0]["name"] = json!("gone"),
        "mount-refers-to-volume",
    );
}

#[test]
fn mount_paths_are_unique_within_a_container() {
    breaks(
        |p| p["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/data"),
        "unique-mount-paths",
    );
}

#[test]
fn restart_policy_is_only_always_and_only_on_init_containers() {
    breaks(
        |p| p["spec"]["containers"][0]["restartPolicy"] = json!("Always"),
        "restart-policy-only-always-on-init",
    );
    breaks(
        |p| {
            p["spec"]["initContainers"][0]["restartPolicy"] = json!("OnFailure");
            p["spec"]["initContainers"][0]
                .as_object_mut()
                .unwrap()
                .remove("startupProbe");
        },
        "restart-policy-only-always-on-init",
    );
}

#[test]
fn probes_only_on_app_containers_and_native_sidecars() {
    breaks(
        |p| {
            p["spec"]["initContainers"][0]
                .as_object_mut()
                .unwrap()
                .remove("restartPolicy");
        },
        "probes-only-where-allowed",
    );
}

#[test]
fn projected_tokens_live_at_least_ten_minutes() {
    breaks(
        |p| {
            p["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] =
                json!(599)
        },
        "token-expiration-bounds",
    );
}

#[test]
fn requests_are_not_above_limits() {
    breaks(
        |p| p["spec"]["containers"][0]["resources"]["requests"]["memory"] = json!("65Mi"),
        "request-not-above-limit",
    );
}

#[test]
fn restricted_allows_only_some_volume_types() {
    breaks(
        |p| p["spec"]["volumes"][0] = json!({ "name": "data", "hostPath": { "path": "/" } }),
        "restricted-volume-types",
    );
}

#[test]
fn baseline_forbids_host_namespaces_privileged_and_host_ports() {
    breaks(
        |p| p["spec"]["hostPID"] = json!(true),
        "baseline-host-namespaces",
    );
    breaks(
        |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
        "baseline-privileged",
    );
    breaks(
        |p| p["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 80, "hostPort": 80 }]),
        "baseline-host-ports",
    );
}

#[test]
fn restricted_forbids_privilege_escalation() {
    breaks(
        |p| {
            p["spec"]["initContainers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("allowPrivilegeEscalation");
        },
        "restricted-privilege-escalation",
    );
}

#[test]
fn restricted_drops_all_capabilities_and_adds_at_most_net_bind_service() {
    breaks(
        |p| p["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = json!([]),
        "restricted-capabilities",
    );
    breaks(
        |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_ADMIN"])
        },
        "restricted-capabilities",
    );
}

#[test]
fn restricted_runs_as_non_root() {
    breaks(
        |p| p["spec"]["securityContext"]["runAsNonRoot"] = json!(false),
        "restricted-run-as-non-root",
    );
    breaks(
        |p| p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false),
        "restricted-run-as-non-root",
    );
    breaks(
        |p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0),
        "restricted-run-as-user",
    );
    breaks(
        |p| p["spec"]["securityContext"]["runAsUser"] = json!(0),
        "restricted-run-as-user",
    );
}

#[test]
fn restricted_needs_a_seccomp_profile() {
    breaks(
        |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        },
        "restricted-seccomp",
    );
    breaks(
        |p| {
            p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({ "type": "Unconfined" })
        },
        "restricted-seccomp",
    );
}
