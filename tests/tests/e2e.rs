//! End to end, on real parts: an annotated pod goes through the real webhook binary
//! over TLS, the patched pod is checked as the API server and Pod Security Admission
//! would, and the whole pod runs as the kubelet runs it (init containers in order, the
//! native sidecar gated on its startup probe, the app reading its secret, deletion in
//! the kubelet's order), each container in mount namespaces, chroot, non-root, against
//! a real OpenBao that authenticates the agent through the TokenReview stand-in.
//!
//! Needs root and the built binaries (`cargo build --bins`). One stack (OpenBao, fake
//! API server, webhook) serves every test here.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use sidekey_agent::contract::layout;
use sidekey_tests::kubelet::KubeletPod;
use sidekey_tests::stack::{INIT_LIMIT, Stack, TERM_GRACE};
use sidekey_tests::{Result, container, podcheck, process, review, workload};

/// Unwraps, or fails with the servers' logs attached.
fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", Stack::shared().diagnostics()))
}

/// The demo app's pod, as the ReplicaSet controller would create it, with `tweak`
/// applied to the Deployment's pod template annotations first.
fn app_pod(tweak: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut deployment = ok(review::fixture("deployment-app.json"));
    let annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .expect("fixture has template annotations");
    tweak(annotations);
    ok(review::pod_from_deployment(&deployment))
}

/// The same pod with app containers that run: the app reports every content of its
/// secret file it sees (as a hash) and exits 0 on SIGTERM.
fn runnable_app_pod(tweak: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    ok(workload::deployment_pod(
        tweak,
        &workload::watch_script("/vault/secrets/app.json"),
    ))
}

/// Held by the tests that rotate the demo app's secret: they share it, and one's
/// rotation must not overwrite the version the other waits for.
static ROTATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_root() {
    assert!(
        sidekey_tests::is_root(),
        "the end-to-end tests run containers in mount namespaces and need root"
    );
}

/// Strings that must never appear in any log: the secret's values.
fn secret_values(data: &Value) -> Vec<String> {
    data.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str().map(str::to_owned))
        .filter(|v| v.len() >= 8)
        .collect()
}

fn assert_no_leak(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        sidekey_tests::leak::suite_value(s);
        assert!(
            !text.contains(s.as_str()),
            "{what} contains a secret value or token (length {})",
            s.len()
        );
    }
}

/// Waits until the app container printed `line`.
fn wait_app_saw(pod: &KubeletPod, line: &str) {
    let seen = process::wait_for(
        "the app container to see the expected content",
        Duration::from_secs(20),
        || pod.output("app").contains(line).then_some(()),
    );
    if let Err(e) = seen {
        panic!("{e}\n{}\n{}", pod.all_logs(), Stack::shared().diagnostics());
    }
}

/// The whole life of a pod in the default layout (native sidecar), run as the kubelet
/// runs it: admission, checks, start-up gated on the startup probe, the app reading
/// its secret, a rotation reaching the app, deletion in the kubelet's order, revocation.
#[test]
fn annotated_pod_gets_a_native_sidecar_that_renders_refreshes_and_revokes() {
    require_root();
    let _rotation = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
    let stack = Stack::shared();
    let pod = runnable_app_pod(|a| {
        a.insert("sidekey.dev/refresh".into(), json!("1s"));
    });

    // Admission: allowed, with a base64 JSONPatch that applies to the pod.
    let admitted = ok(stack.admit(&pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    assert!(
        admitted.verdict.patch.is_some(),
        "an opted-in pod must be patched"
    );
    let mutated = admitted.pod;
    assert_eq!(
        mutated["metadata"]["annotations"][layout::STATUS_ANNOTATION],
        layout::STATUS_INJECTED
    );

    // The default layout: one native sidecar, first among the init containers.
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        [layout::SIDECAR_CONTAINER, "migrate"]
    );
    assert_eq!(workload::names(&mutated, "containers"), ["app"]);
    let agent = workload::container(&mutated, "initContainers", layout::SIDECAR_CONTAINER)
        .expect("the native sidecar");
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(agent["command"], json!([layout::AGENT_BINARY]));
    assert_eq!(agent["args"], json!(["sidecar"]));
    assert_eq!(
        agent["startupProbe"]["exec"]["command"],
        json!(layout::PROBE_COMMAND)
    );

    // The API server and Pod Security Admission ("restricted") would accept it.
    ok(podcheck::check_all(&mutated));

    // The kubelet starts the agent, waits for its startup probe, then the rest; the
    // agent logged in through a TokenReview of its projected token.
    let reviews_before = stack.api.authenticated();
    let mut pod = match KubeletPod::start(ok(stack.pod_run(&mutated)), INIT_LIMIT) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", stack.diagnostics()),
    };
    assert_eq!(
        pod.start_order(),
        [layout::SIDECAR_CONTAINER, "migrate", "app"]
    );
    assert!(
        stack.api.authenticated() > reviews_before,
        "no TokenReview was answered"
    );

    let secrets_dir = pod
        .run
        .volume_path(layout::SECRETS_VOLUME)
        .expect("the agent mounts the secrets volume")
        .to_path_buf();
    let file = secrets_dir.join("app.json");
    let bytes = std::fs::read(&file).unwrap();
    let rendered: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(rendered, stack.secret_data());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    // The app runs as another uid (1000 in the fixture) and reads it, in its container.
    let as_app: Value = serde_json::from_str(&ok(container::read_as_uid(&file, 1000))).unwrap();
    assert_eq!(as_app, rendered);
    wait_app_saw(&pod, &format!("{} uid=1000", workload::seen_line(&bytes)));

    // Neither the secret nor the pod's token shows in any output.
    let token_dir = pod
        .run
        .volume_path(layout::TOKEN_VOLUME)
        .expect("token volume");
    let jwt = std::fs::read_to_string(token_dir.join(layout::TOKEN_FILE)).unwrap();
    let mut never = secret_values(&stack.secret_data());
    never.push(jwt.clone());
    never.push(stack.bao.root_token().to_owned());

    // The sidecar keeps the file fresh: a rotation in OpenBao reaches the app.
    let rotated = ok(stack.rotate());
    never.extend(secret_values(&rotated));
    let seen = process::wait_for(
        "the rotated secret in app.json",
        Duration::from_secs(20),
        || {
            let bytes = std::fs::read(&file).ok()?;
            let now: Value = serde_json::from_slice(&bytes).ok()?;
            (now == rotated).then_some(bytes)
        },
    );
    let new_bytes = match seen {
        Ok(b) => b,
        Err(e) => panic!("{e}\n{}\n{}", pod.all_logs(), stack.diagnostics()),
    };
    wait_app_saw(&pod, &workload::seen_line(&new_bytes));
    assert!(
        pod.is_running(layout::SIDECAR_CONTAINER),
        "{}",
        pod.all_logs()
    );

    // Deletion: the app gets SIGTERM and exits first, then the agent, which revokes
    // its token and exits 0, within the grace period.
    let agent_out = pod.output(layout::SIDECAR_CONTAINER);
    let accessor = sidekey_tests::stack::logged_accessor(&agent_out)
        .unwrap_or_else(|| panic!("the agent logged no token.accessor at login\n{agent_out}"));
    assert!(
        ok(stack.bao.accessor_valid(&accessor)),
        "token already invalid before SIGTERM"
    );
    let took = pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pod.end_order(),
        ["migrate", "app", layout::SIDECAR_CONTAINER]
    );
    for name in ["app", layout::SIDECAR_CONTAINER] {
        let ended = pod.ended(name).unwrap();
        assert!(!ended.killed, "{name} needed SIGKILL\n{}", pod.all_logs());
        assert_eq!(
            ended.finished.code(),
            Some(0),
            "{name} exit\n{}",
            pod.all_logs()
        );
    }
    assert!(took < TERM_GRACE, "termination took {took:?}");
    assert!(
        !ok(stack.bao.accessor_valid(&accessor)),
        "the agent's token is still valid after SIGTERM\n{}",
        pod.all_logs()
    );
    assert_no_leak(
        "agent output",
        &pod.output(layout::SIDECAR_CONTAINER),
        &never,
    );
    assert_no_leak("app output", &pod.output("app"), &never);
    assert_no_leak("webhook output", &stack.webhook.logs(), &never);
}

/// The classic layout, chosen per pod: `sidekey-init` renders before the other init
/// containers, `sidekey-agent` runs beside the app, and both stop on SIGTERM together.
#[test]
fn classic_layout_renders_in_init_then_refreshes_and_revokes_from_the_sidecar() {
    require_root();
    let _rotation = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
    let stack = Stack::shared();
    let pod = runnable_app_pod(|a| {
        a.insert("sidekey.dev/refresh".into(), json!("1s"));
        a.insert("sidekey.dev/agent-mode".into(), json!("init-and-sidecar"));
    });
    let admitted = ok(stack.admit(&pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    let mutated = admitted.pod;
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        [layout::INIT_CONTAINER, "migrate"]
    );
    assert_eq!(
        workload::names(&mutated, "containers"),
        ["app", layout::SIDECAR_CONTAINER]
    );
    ok(podcheck::check_all(&mutated));

    let mut pod = match KubeletPod::start(ok(stack.pod_run(&mutated)), INIT_LIMIT) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", stack.diagnostics()),
    };
    let init = pod.ended(layout::INIT_CONTAINER).expect("init ran");
    assert_eq!(init.finished.code(), Some(0), "{}", pod.all_logs());
    let file = pod
        .run
        .volume_path(layout::SECRETS_VOLUME)
        .unwrap()
        .join("app.json");
    let bytes = std::fs::read(&file).unwrap();
    let rendered: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(rendered, stack.secret_data());
    wait_app_saw(&pod, &format!("{} uid=1000", workload::seen_line(&bytes)));

    let mut never = secret_values(&stack.secret_data());
    let rotated = ok(stack.rotate());
    never.extend(secret_values(&rotated));
    let new_bytes = process::wait_for("the rotation in app.json", Duration::from_secs(20), || {
        let b = std::fs::read(&file).ok()?;
        (serde_json::from_slice::<Value>(&b).ok()? == rotated).then_some(b)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    wait_app_saw(&pod, &workload::seen_line(&new_bytes));

    let accessor = sidekey_tests::stack::logged_accessor(&pod.output(layout::SIDECAR_CONTAINER))
        .unwrap_or_else(|| panic!("no token.accessor logged\n{}", pod.all_logs()));
    pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    for name in ["app", layout::SIDECAR_CONTAINER] {
        let ended = pod.ended(name).unwrap();
        assert!(!ended.killed, "{name} needed SIGKILL\n{}", pod.all_logs());
        assert_eq!(ended.finished.code(), Some(0), "{}", pod.all_logs());
    }
    assert!(
        !ok(stack.bao.accessor_valid(&accessor)),
        "the sidecar's token is still valid after SIGTERM\n{}",
        pod.all_logs()
    );
    let agents = format!(
        "{}{}",
        pod.output(layout::INIT_CONTAINER),
        pod.output(layout::SIDECAR_CONTAINER)
    );
    assert_no_leak("agent output", &agents, &never);
}

#[test]
fn pod_without_opt_in_is_allowed_untouched() {
    let stack = Stack::shared();
    for tweak in [None, Some("false")] {
        let pod = app_pod(|a| {
            a.retain(|k, _| !k.starts_with("sidekey.dev/"));
            if let Some(v) = tweak {
                a.insert("sidekey.dev/inject".into(), json!(v));
            }
        });
        let admitted = ok(stack.admit(&pod));
        assert!(admitted.verdict.allowed);
        assert!(
            admitted.verdict.patch.is_none(),
            "inject={tweak:?} was patched"
        );
        assert_eq!(admitted.pod, pod);
    }
}

#[test]
fn pod_with_a_bad_annotation_is_denied_with_a_message_naming_it() {
    let stack = Stack::shared();
    let pod = app_pod(|a| {
        a.insert("sidekey.dev/secrets-db".into(), json!("secret/data/db"));
    });
    let admitted = ok(stack.admit(&pod));
    assert!(!admitted.verdict.allowed, "{:?}", admitted.verdict);
    let message = admitted.verdict.message.clone().unwrap_or_default();
    assert!(message.contains("sidekey.dev/secrets-db"), "{message}");

    let pod = app_pod(|a| {
        a.remove("sidekey.dev/role");
    });
    let admitted = ok(stack.admit(&pod));
    assert!(!admitted.verdict.allowed);
    let message = admitted.verdict.message.unwrap_or_default();
    assert!(message.contains("sidekey.dev/role"), "{message}");
}

#[test]
fn malformed_body_is_answered_400() {
    let stack = Stack::shared();
    for body in [
        &b"{not json"[..],
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let answer = ok(stack
            .webhook
            .post_raw("/mutate", "application/json", body.to_vec()));
        assert_eq!(answer.status, 400, "{}", answer.body);
    }
}

#[test]
fn mutated_pod_passes_the_same_checks_when_it_has_no_volumes_or_init_containers() {
    let stack = Stack::shared();
    let mut deployment = ok(review::fixture("deployment-app.json"));
    let spec = deployment["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap();
    spec.remove("initContainers");
    spec.remove("volumes");
    spec.insert("automountServiceAccountToken".into(), json!(false));
    spec["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    let pod = ok(review::pod_from_deployment(&deployment));
    assert!(pod["spec"]["volumes"].is_null());

    let admitted = ok(stack.admit(&pod));
    assert!(admitted.verdict.allowed);
    ok(podcheck::check_all(&admitted.pod));
}
