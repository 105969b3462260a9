//! The agent layouts at work in whole pods run by the harness kubelet: Jobs in the
//! native default (the pod completes, the agent stops after the app and revokes) and in
//! a cluster whose webhook runs with `--sidecar-mode classic` (Jobs get `init-only`,
//! Deployments `init-and-sidecar`; a classic sidecar would keep a Job's pod alive).
//!
//! Needs root and the built binaries (`cargo build --bins`). One stack (OpenBao, fake
//! API server, native webhook) plus one classic webhook serve every test here.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use sidekey_agent::contract::layout;
use sidekey_tests::kubelet::KubeletPod;
use sidekey_tests::stack::{INIT_LIMIT, Stack, logged_accessor};
use sidekey_tests::webhook::Webhook;
use sidekey_tests::{Result, podcheck, review, workload};

fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", Stack::shared().diagnostics()))
}

/// A webhook of a classic cluster, against the shared OpenBao.
fn classic() -> &'static Webhook {
    static CLASSIC: OnceLock<std::result::Result<Webhook, String>> = OnceLock::new();
    let stack = Stack::shared();
    match CLASSIC.get_or_init(|| {
        Webhook::start_with(
            stack.bao.addr(),
            stack.bao.ca_path(),
            &["--sidecar-mode", "classic"],
        )
        .map_err(|e| e.to_string())
    }) {
        Ok(w) => w,
        Err(e) => panic!("the classic webhook did not start: {e}"),
    }
}

/// Sends `pod` through `webhook` and returns the verdict and the patched pod.
fn admit_via(webhook: &Webhook, pod: &Value) -> (review::Verdict, Value) {
    let r = review::admission_review(pod);
    let answer = ok(webhook.post_review(&r));
    let verdict = ok(review::verdict(&r, &answer));
    let patched = ok(review::apply_patch(pod, &verdict));
    (verdict, patched)
}

/// A Job's app: reads its secret once, reports its hash, exits 0.
const JOB_SCRIPT: &str = "set -e\n\
    h=`sha256sum /vault/secrets/app.json | cut -d' ' -f1`\n\
    echo \"seen $h uid=`id -u`\"\n";

fn start(stack: &Stack, pod: &Value) -> KubeletPod {
    match KubeletPod::start(ok(stack.pod_run(pod)), INIT_LIMIT) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", stack.diagnostics()),
    }
}

#[test]
fn job_pod_in_native_mode_completes_and_the_agent_revokes_after_the_app() {
    let stack = Stack::shared();
    let pod = ok(workload::job_pod("report", |_| {}, JOB_SCRIPT));
    let admitted = ok(stack.admit(&pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    let mutated = admitted.pod;
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        [layout::SIDECAR_CONTAINER, "migrate"]
    );
    assert_eq!(workload::names(&mutated, "containers"), ["app"]);
    ok(podcheck::check_all(&mutated));

    let mut pod = start(stack, &mutated);
    let took = pod
        .complete(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pod.end_order(),
        ["migrate", "app", layout::SIDECAR_CONTAINER],
        "{}",
        pod.all_logs()
    );
    let bytes = std::fs::read(
        pod.run
            .volume_path(layout::SECRETS_VOLUME)
            .unwrap()
            .join("app.json"),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        stack.secret_data()
    );
    let app = pod.ended("app").unwrap();
    assert_eq!(app.finished.code(), Some(0), "{}", pod.all_logs());
    assert!(
        app.finished
            .stdout
            .contains(&format!("{} uid=1000", workload::seen_line(&bytes))),
        "{}",
        pod.all_logs()
    );
    // The kubelet stopped the agent once the app was done: exit 0, token revoked.
    let agent = pod.ended(layout::SIDECAR_CONTAINER).unwrap();
    assert!(!agent.killed, "{}", pod.all_logs());
    assert_eq!(agent.finished.code(), Some(0), "{}", pod.all_logs());
    assert!(agent.at > app.at);
    let accessor = logged_accessor(&pod.output(layout::SIDECAR_CONTAINER))
        .unwrap_or_else(|| panic!("no token.accessor logged\n{}", pod.all_logs()));
    assert!(
        !ok(stack.bao.accessor_valid(&accessor)),
        "the Job's agent token outlived the pod\n{}",
        pod.all_logs()
    );
    assert!(took < Duration::from_secs(15), "completion took {took:?}");
}

#[test]
fn job_pod_in_a_classic_cluster_gets_init_only_and_completes() {
    let stack = Stack::shared();
    let pod = ok(workload::job_pod("nightly", |_| {}, JOB_SCRIPT));
    let (verdict, mutated) = admit_via(classic(), &pod);
    assert!(verdict.allowed, "{verdict:?}");
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        [layout::INIT_CONTAINER, "migrate"]
    );
    assert_eq!(workload::names(&mutated, "containers"), ["app"]);
    let init = workload::container(&mutated, "initContainers", layout::INIT_CONTAINER).unwrap();
    assert_eq!(init["args"], json!(["init"]));
    assert!(init["restartPolicy"].is_null());
    ok(podcheck::check_all(&mutated));

    let mut pod = start(stack, &mutated);
    pod.complete(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pod.end_order(), [layout::INIT_CONTAINER, "migrate", "app"]);
    let init = pod.ended(layout::INIT_CONTAINER).unwrap();
    assert_eq!(init.finished.code(), Some(0), "{}", pod.all_logs());
    let app = pod.ended("app").unwrap();
    assert_eq!(app.finished.code(), Some(0), "{}", pod.all_logs());
    let bytes = std::fs::read(
        pod.run
            .volume_path(layout::SECRETS_VOLUME)
            .unwrap()
            .join("app.json"),
    )
    .unwrap();
    assert!(
        app.finished.stdout.contains(&workload::seen_line(&bytes)),
        "{}",
        pod.all_logs()
    );
}

#[test]
fn classic_cluster_gives_deployments_init_and_sidecar_and_refuses_native_per_pod() {
    let pod = ok(workload::deployment_pod(|_| {}, "true"));
    let (verdict, mutated) = admit_via(classic(), &pod);
    assert!(verdict.allowed, "{verdict:?}");
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        [layout::INIT_CONTAINER, "migrate"]
    );
    assert_eq!(
        workload::names(&mutated, "containers"),
        ["app", layout::SIDECAR_CONTAINER]
    );
    ok(podcheck::check_all(&mutated));

    let pod = ok(workload::deployment_pod(
        |a| {
            a.insert("sidekey.dev/agent-mode".into(), json!("native-sidecar"));
        },
        "true",
    ));
    let (verdict, _) = admit_via(classic(), &pod);
    assert!(!verdict.allowed);
    let message = verdict.message.unwrap_or_default();
    assert!(
        message.contains("sidekey.dev/agent-mode") && message.contains("classic"),
        "{message}"
    );
}

/// Why classic clusters give Jobs `init-only`: with a classic sidecar asked for
/// explicitly, the app finishes but the pod never completes.
#[test]
fn classic_sidecar_keeps_a_jobs_pod_from_completing() {
    let stack = Stack::shared();
    let pod = ok(workload::job_pod(
        "stuck",
        |a| {
            a.insert("sidekey.dev/agent-mode".into(), json!("init-and-sidecar"));
        },
        JOB_SCRIPT,
    ));
    let (verdict, mutated) = admit_via(classic(), &pod);
    assert!(verdict.allowed, "{verdict:?}");
    let mut pod = start(stack, &mutated);
    let err = pod
        .complete(Duration::from_secs(3))
        .expect_err("a pod with a classic sidecar must not complete")
        .to_string();
    assert!(err.contains(layout::SIDECAR_CONTAINER), "{err}");
    assert_eq!(
        pod.ended("app").map(|e| e.finished.code()),
        Some(Some(0)),
        "{}",
        pod.all_logs()
    );
    // Deleting the pod still revokes the sidecar's token.
    let accessor = logged_accessor(&pod.output(layout::SIDECAR_CONTAINER))
        .unwrap_or_else(|| panic!("no token.accessor logged\n{}", pod.all_logs()));
    pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok(stack.bao.accessor_valid(&accessor)));
}

/// The startup probe is what makes secrets available to later init containers: an
/// init container named in `containers` runs after the native sidecar's probe passed
/// and reads the rendered file (a regular init container cannot wait or retry).
#[test]
fn init_container_after_the_native_sidecar_reads_the_rendered_secret() {
    let stack = Stack::shared();
    let mut pod = ok(workload::deployment_pod(
        |a| {
            a.insert("sidekey.dev/containers".into(), json!("app,migrate"));
        },
        "trap 'exit 0' TERM; echo up; while :; do sleep 0.1; done",
    ));
    workload::run_script(
        &mut pod["spec"]["initContainers"][0],
        "set -e; h=`sha256sum /vault/secrets/app.json | cut -d' ' -f1`; echo \"seen $h\"",
    );
    let admitted = ok(stack.admit(&pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    let mutated = admitted.pod;
    ok(podcheck::check_all(&mutated));
    let migrate = workload::container(&mutated, "initContainers", "migrate").unwrap();
    assert!(
        migrate["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == layout::SECRETS_VOLUME && m["readOnly"] == true),
        "{migrate}"
    );

    let mut pod = start(stack, &mutated);
    let bytes = std::fs::read(
        pod.run
            .volume_path(layout::SECRETS_VOLUME)
            .unwrap()
            .join("app.json"),
    )
    .unwrap();
    let migrate = pod.ended("migrate").unwrap();
    assert_eq!(migrate.finished.code(), Some(0), "{}", pod.all_logs());
    assert!(
        migrate
            .finished
            .stdout
            .contains(&workload::seen_line(&bytes)),
        "{}",
        pod.all_logs()
    );
    sidekey_tests::process::wait_for("the app's handler", Duration::from_secs(10), || {
        pod.output("app").contains("up").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    let agent = pod.ended(layout::SIDECAR_CONTAINER).unwrap();
    assert_eq!(agent.finished.code(), Some(0), "{}", pod.all_logs());
}
