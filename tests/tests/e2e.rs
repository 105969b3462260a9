//! End to end, on real parts: an annotated pod goes through the real webhook binary
//! over TLS, the patched pod is checked as the API server and Pod Security Admission
//! would, and its injected containers run as specified (mount namespaces, chroot,
//! non-root) against a real OpenBao that authenticates them through the TokenReview
//! stand-in.
//!
//! Needs root and the built binaries (`cargo build --bins`). One stack (OpenBao, fake
//! API server, webhook) serves every test here.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use sidekey_agent::contract::layout;
use sidekey_tests::stack::{INIT_LIMIT, Stack, TERM_GRACE};
use sidekey_tests::{Result, container, podcheck, process, review};

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
        assert!(
            !text.contains(s.as_str()),
            "{what} contains a secret value or token (length {})",
            s.len()
        );
    }
}

#[test]
fn annotated_pod_gets_an_agent_that_renders_refreshes_and_revokes() {
    require_root();
    let stack = Stack::shared();
    let pod = app_pod(|a| {
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

    // The API server and Pod Security Admission ("restricted") would accept it.
    ok(podcheck::check_all(&mutated));

    // The init container renders every secret and exits 0, having logged in through a
    // TokenReview of its projected token.
    let reviews_before = stack.api.authenticated();
    let mut run = ok(stack.pod_run(&mutated));
    let init = ok(run.run(layout::INIT_CONTAINER, INIT_LIMIT));
    assert_eq!(
        init.code(),
        Some(0),
        "init container failed\n{}\n{}",
        init.logs(),
        stack.diagnostics()
    );

    assert!(
        stack.api.authenticated() > reviews_before,
        "no TokenReview was answered"
    );

    let secrets_dir = run
        .volume_path(layout::SECRETS_VOLUME)
        .expect("the init container mounts the secrets volume")
        .to_path_buf();
    let file = secrets_dir.join("app.json");
    let rendered: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(rendered, stack.secret_data());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    // The app runs as another uid (1000 in the fixture) and can read it.
    let as_app: Value = serde_json::from_str(&ok(container::read_as_uid(&file, 1000))).unwrap();
    assert_eq!(as_app, rendered);

    // Neither the secret nor the pod's token shows in any output.
    let token_dir = run.volume_path(layout::TOKEN_VOLUME).expect("token volume");
    let jwt = std::fs::read_to_string(token_dir.join(layout::TOKEN_FILE)).unwrap();
    let mut never = secret_values(&stack.secret_data());
    never.push(jwt.clone());
    never.push(stack.bao.root_token().to_owned());
    assert_no_leak(
        "init container output",
        &format!("{}{}", init.stdout, init.stderr),
        &never,
    );

    // The sidecar keeps the file fresh: a rotation in OpenBao reaches the file.
    let mut sidecar = ok(run.start(layout::SIDECAR_CONTAINER));
    let rotated = ok(stack.rotate());
    never.extend(secret_values(&rotated));
    let seen = process::wait_for(
        "the rotated secret in app.json",
        Duration::from_secs(20),
        || {
            let now: Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
            (now == rotated).then_some(())
        },
    );
    if let Err(e) = seen {
        panic!("{e}\n{}\n{}", sidecar.logs(), stack.diagnostics());
    }
    assert!(sidecar.is_running(), "{}", sidecar.logs());

    // SIGTERM: the sidecar revokes its token and exits 0.
    let logs_before = sidecar.output();
    let accessor = sidekey_tests::stack::logged_accessor(&logs_before)
        .unwrap_or_else(|| panic!("the sidecar logged no token.accessor at login\n{logs_before}"));
    assert!(
        ok(stack.bao.accessor_valid(&accessor)),
        "token already invalid before SIGTERM"
    );
    let done = sidecar
        .terminate(TERM_GRACE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.code(), Some(0), "sidecar exit\n{}", done.logs());
    assert!(
        !ok(stack.bao.accessor_valid(&accessor)),
        "the sidecar's token is still valid after SIGTERM\n{}",
        done.logs()
    );
    assert_no_leak(
        "sidecar output",
        &format!("{}{}", done.stdout, done.stderr),
        &never,
    );
    assert_no_leak("webhook output", &stack.webhook.logs(), &never);
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
