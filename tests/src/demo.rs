//! The `sidekey-demo` flow: the e2e path narrated step by step for a human.
//!
//! It prints what is set up and what happens, never a secret value: file names,
//! sizes, modes and JSON keys only.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidekey_agent::contract::layout;

use crate::kubelet::KubeletPod;
use crate::stack::{INIT_LIMIT, Stack};
use crate::{Result, container, failed, podcheck, process, review, setup, workload};

/// Refresh interval the demo pod asks for, so a rotation shows within seconds.
const DEMO_REFRESH: &str = "2s";

struct Out<'a, W: Write> {
    w: &'a mut W,
    step: usize,
    /// Everything printed, to prove afterwards that no secret value was.
    copy: String,
}

impl<W: Write> Out<'_, W> {
    fn print(&mut self, text: String) {
        let _ = writeln!(self.w, "{text}");
        self.copy.push_str(&text);
        self.copy.push('\n');
    }

    fn step(&mut self, title: &str) {
        self.step += 1;
        let n = self.step;
        self.print(format!("\n== {n}. {title}"));
    }

    fn line(&mut self, text: impl AsRef<str>) {
        self.print(format!("   {}", text.as_ref()));
    }

    fn block(&mut self, text: &str) {
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            self.print(format!("   | {l}"));
        }
    }
}

/// Keys of a JSON object, for display.
fn keys(v: &Value) -> String {
    v.as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Runs the whole demo, writing the narration to `w`. Every server it starts is
/// stopped when it returns, on success or failure.
pub fn run<W: Write>(w: &mut W) -> Result<()> {
    if !crate::is_root() {
        return Err(failed(
            "the demo runs the injected containers in mount and PID namespaces with chroot, \
             which needs root; run it as root (e.g. `sudo make demo`)",
        ));
    }
    let mut out = Out {
        w,
        step: 0,
        copy: String::new(),
    };
    let started = Instant::now();

    out.step("Starting OpenBao, a TokenReview stand-in for the Kubernetes API, and the webhook");
    let stack = Stack::start()?;
    out.line(format!("OpenBao dev server (TLS)   {}", stack.bao.addr()));
    out.line(format!(
        "  audit log                {}",
        stack.bao.audit_log().display()
    ));
    out.line(format!(
        "Kubernetes API stand-in    {} (TokenReview only; verifies ES256 tokens)",
        stack.api.host()
    ));
    out.line(format!(
        "sidekey-webhook (TLS)      {}/mutate",
        stack.webhook.base_url()
    ));

    let mut values = Vec::new();
    let result = flow(&mut out, &stack, &mut values);
    if result.is_err() {
        out.step("Server logs (they hold no secret)");
        out.block(&stack.diagnostics());
    }
    out.line("");
    out.line(format!(
        "stopping all servers ({:.1} s in total)",
        started.elapsed().as_secs_f64()
    ));
    drop(stack);
    result
}

/// String values of a secret, collected so the narration can be checked for them.
fn collect_values(data: &Value, into: &mut Vec<String>) {
    for v in data.as_object().into_iter().flatten().map(|(_, v)| v) {
        if let Some(s) = v.as_str().filter(|s| s.len() >= 8) {
            into.push(s.to_owned());
        }
    }
}

fn flow<W: Write>(out: &mut Out<'_, W>, stack: &Stack, values: &mut Vec<String>) -> Result<()> {
    collect_values(&stack.secret_data(), values);
    out.step("What OpenBao was set up with");
    out.line(format!(
        "KV v2 secret   {} (keys: {}; values are random and never printed)",
        setup::KV_PATH,
        keys(&stack.secret_data())
    ));
    out.line(format!(
        "policy         {} = read on {}",
        setup::POLICY,
        setup::KV_API_PATH
    ));
    out.line(format!(
        "auth method    auth/kubernetes, kubernetes_host = {}",
        stack.api.host()
    ));
    out.line(format!(
        "role           {} -> service account {}/{}, audience {:?}, policy {}, token TTL {}",
        setup::ROLE,
        setup::NAMESPACE,
        setup::SERVICE_ACCOUNT,
        setup::AUDIENCE,
        setup::POLICY,
        setup::TOKEN_TTL
    ));

    out.step("The pod the ReplicaSet controller creates for tests/data/deployment-app.json");
    let app_file = format!("{}/app.json", layout::SECRETS_MOUNT_PATH);
    let pod = workload::deployment_pod(
        |a| {
            a.insert("sidekey.dev/refresh".into(), json!(DEMO_REFRESH));
        },
        &workload::watch_script(&app_file),
    )?;
    out.line(format!(
        "generateName {}  namespace {}  serviceAccountName {}",
        pod["metadata"]["generateName"].as_str().unwrap_or("?"),
        pod["metadata"]["namespace"].as_str().unwrap_or("?"),
        pod["spec"]["serviceAccountName"].as_str().unwrap_or("?")
    ));
    for (k, v) in pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if k.starts_with("sidekey.dev/") {
            out.line(format!("  {k}: {}", v.as_str().unwrap_or("?")));
        }
    }
    out.line(format!(
        "the app container runs a shell script that prints the SHA-256 of {app_file} \
         each time it changes (never its content)"
    ));
    out.line(format!("containers before: {}", container_names(&pod)));

    out.step("AdmissionReview -> POST /mutate over TLS");
    let admitted = stack.admit(&pod)?;
    out.line(format!(
        "request uid {}  operation CREATE  kind Pod",
        admitted.review["request"]["uid"].as_str().unwrap_or("?")
    ));
    out.line(format!(
        "response: uid echoed, allowed = {}, patchType = {}",
        admitted.verdict.allowed,
        admitted.answer["response"]["patchType"]
            .as_str()
            .unwrap_or("none")
    ));
    if !admitted.verdict.allowed {
        return Err(failed(format!(
            "the webhook denied the demo pod: {}",
            admitted.verdict.message.unwrap_or_default()
        )));
    }
    let patch = admitted
        .verdict
        .patch
        .as_ref()
        .ok_or_else(|| failed("the webhook returned no patch for an opted-in pod"))?;
    for (op, path) in review::patch_ops(patch) {
        out.line(format!("  {op:<8} {path}"));
    }
    let mutated = admitted.pod;
    out.line(format!("containers after: {}", container_names(&mutated)));
    if let Some(agent) = workload::container(&mutated, "initContainers", layout::SIDECAR_CONTAINER)
    {
        out.line(format!(
            "{} is a native sidecar: restartPolicy {}, args {}, startupProbe exec {}",
            layout::SIDECAR_CONTAINER,
            agent["restartPolicy"].as_str().unwrap_or("none"),
            agent["args"],
            agent["startupProbe"]["exec"]["command"]
        ));
    }

    out.step("Would the cluster accept it?");
    let report = podcheck::schema(&mutated)?;
    out.line(format!("schema (kubernetes-validate --strict): {report}"));
    let rules = podcheck::api_rules(&mutated);
    let pss = podcheck::restricted(&mutated);
    for v in rules.iter().chain(&pss) {
        out.line(format!("  VIOLATION {v}"));
    }
    if !rules.is_empty() || !pss.is_empty() {
        return Err(failed("the mutated pod breaks the rules listed above"));
    }
    out.line("API-server pod rules: ok (names, mounts, token expiry, init-container fields)");
    out.line("Pod Security Standard \"restricted\": ok for every container");

    out.step("Running the pod as the kubelet does");
    let run = stack.pod_run(&mutated)?;
    out.line(format!(
        "pod {} (each container: mount + PID namespace, chroot, its own user)",
        run.name()
    ));
    let mut pod = KubeletPod::start(run, INIT_LIMIT)?;
    let probe = pod
        .probe_time(layout::SIDECAR_CONTAINER)
        .map(|t| format!("{:.1} s", t.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    out.line(format!(
        "start order: {} (the startup probe of {} passed after {probe})",
        pod.start_order().join(" -> "),
        layout::SIDECAR_CONTAINER
    ));
    out.line(format!("{} log so far:", layout::SIDECAR_CONTAINER));
    out.block(&pod.output(layout::SIDECAR_CONTAINER));

    out.step(
        format!(
            "Rendered files in {} (host side of the volume)",
            layout::SECRETS_MOUNT_PATH
        )
        .as_str(),
    );
    let dir = pod
        .run
        .volume_path(layout::SECRETS_VOLUME)
        .ok_or_else(|| failed("the agent did not mount the secrets volume"))?
        .to_path_buf();
    list_files(out, &dir)?;
    let file = dir.join("app.json");
    let bytes = std::fs::read(&file).map_err(|e| failed(format!("reading app.json: {e}")))?;
    let rendered: Value =
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("app.json is not JSON: {e}")))?;
    let same = rendered == stack.secret_data();
    out.line(format!("app.json equals the KV data in OpenBao: {same}"));
    let readable = container::read_as_uid(&file, 1000).is_ok();
    out.line(format!("readable by the app's uid 1000: {readable}"));
    if !same || !readable {
        return Err(failed("the rendered file is wrong or unreadable"));
    }
    let seen = workload::seen_line(&bytes);
    wait_app(&pod, &seen)?;
    out.line(format!(
        "the app container printed: {}",
        last_line(&pod, &seen)
    ));

    out.step("Secret rotation, picked up by the sidecar and seen by the app");
    let rotated = stack.rotate()?;
    collect_values(&rotated, values);
    let t = Instant::now();
    out.line("bao kv put secret/app (new random values)");
    let new_bytes = process::wait_for(
        "the rotated secret in app.json",
        Duration::from_secs(20),
        || {
            let b = std::fs::read(&file).ok()?;
            let now: Value = serde_json::from_slice(&b).ok()?;
            (now == rotated).then_some(b)
        },
    );
    let new_bytes = match new_bytes {
        Ok(b) => b,
        Err(e) => {
            out.block(&pod.output(layout::SIDECAR_CONTAINER));
            return Err(e);
        }
    };
    out.line(format!(
        "app.json holds the new version after {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let seen = workload::seen_line(&new_bytes);
    wait_app(&pod, &seen)?;
    out.line(format!(
        "the app container printed: {}",
        last_line(&pod, &seen)
    ));
    list_files(out, &dir)?;

    out.step("Deleting the pod: SIGTERM to the app, then to the native sidecar");
    if !pod.is_running(layout::SIDECAR_CONTAINER) {
        out.block(&pod.output(layout::SIDECAR_CONTAINER));
        return Err(failed("the sidecar exited before the pod was deleted"));
    }
    let accessor = crate::stack::logged_accessor(&pod.output(layout::SIDECAR_CONTAINER));
    let before = pod.output(layout::SIDECAR_CONTAINER).len();
    let took = pod.terminate()?;
    out.line(format!(
        "exit order: {} ({:.1} s)",
        pod.end_order().join(", "),
        took.as_secs_f64()
    ));
    let app = pod
        .ended("app")
        .ok_or_else(|| failed("the app did not end"))?;
    out.line(format!("app: exit code {:?}", app.finished.code()));
    let agent = pod
        .ended(layout::SIDECAR_CONTAINER)
        .ok_or_else(|| failed("the sidecar did not end"))?;
    let agent_code = agent.finished.code();
    out.line(format!(
        "{}: exit code {agent_code:?}; its log since the deletion:",
        layout::SIDECAR_CONTAINER
    ));
    let log = pod.output(layout::SIDECAR_CONTAINER);
    out.block(log.get(before..).unwrap_or(&log));
    if agent_code != Some(0) || app.finished.code() != Some(0) {
        return Err(failed("a container did not exit 0 on SIGTERM"));
    }
    match accessor {
        Some(a) => {
            let valid = stack.bao.accessor_valid(&a)?;
            out.line(format!("sidecar token {a} still valid in OpenBao: {valid}"));
            if valid {
                return Err(failed("the sidecar's token survived SIGTERM"));
            }
        }
        None => out.line("(the sidecar logged no token accessor; revocation not checked)"),
    }
    out.line(format!(
        "TokenReview calls answered by the API stand-in: {} ({} authenticated)",
        stack.api.requests(),
        stack.api.authenticated()
    ));
    out.line("");
    out.line("demo finished: every step passed");
    Ok(())
}

/// Waits until the app container printed `line`.
fn wait_app(pod: &KubeletPod, line: &str) -> Result<()> {
    process::wait_for(
        "the app container to see the file",
        Duration::from_secs(20),
        || pod.output("app").contains(line).then_some(()),
    )
    .map_err(|e| failed(format!("{e}\n{}", pod.all_logs())))
}

/// The app's output line containing `needle`.
fn last_line(pod: &KubeletPod, needle: &str) -> String {
    pod.output("app")
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned()
}

fn container_names(pod: &Value) -> String {
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    format!(
        "init [{}], app [{}]",
        names("initContainers").join(", "),
        names("containers").join(", ")
    )
}

fn list_files<W: Write>(out: &mut Out<'_, W>, dir: &std::path::Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| failed(format!("listing {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(meta) = e.metadata() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let keys = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| format!("  keys: {}", keys(&v)))
            .unwrap_or_default();
        out.line(format!(
            "{:04o} uid {:<5} {:>6} B  {name}{keys}",
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.len()
        ));
    }
    Ok(())
}
