//! A small kubelet: runs a whole (mutated) pod the way the kubelet of Kubernetes 1.29+
//! does, one container at a time through [`crate::container`].
//!
//! Start-up, in spec order:
//! - a regular init container runs to completion and must exit 0 before the next one
//!   starts (a failure is an error: the real kubelet would retry or fail the pod);
//! - an init container with `restartPolicy: Always` (a native sidecar) is started and
//!   left running; the next container starts only after its `startupProbe` passed. The
//!   probe's `exec` command runs inside the container (its mount and PID namespaces,
//!   root, user and environment) every `periodSeconds` (default 10), after
//!   `initialDelaySeconds`, and the sidecar fails after `failureThreshold` (default 3)
//!   failed probes in a row. A sidecar without a startup probe counts as started at once;
//! - then every app container, in order, without waiting for each other.
//!
//! Termination ([`KubeletPod::terminate`], the pod being deleted): SIGTERM to every app
//! container at once (a classic sidecar in `spec.containers` is one of them), wait for
//! them; then SIGTERM to the native sidecars one by one in reverse start order, each
//! awaited. `terminationGracePeriodSeconds` (default 30) bounds the whole sequence:
//! whatever runs when it is spent gets SIGKILL, and the result lists it.
//!
//! Completion ([`KubeletPod::complete`], pods of Jobs with `restartPolicy` `Never` or
//! `OnFailure`): once every app container has exited, the pod is done, and the kubelet
//! stops the native sidecars the same way. A classic sidecar never exits on its own, so
//! such a pod never completes; that is reported as an error naming the container.
//!
//! Not reproduced (an error if the pod depends on it): container restarts. An app
//! container of a `restartPolicy: Always` pod that exits stays exited, and the result
//! says so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::container::{Finished, PodRun, Running};
use crate::{Result, failed};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Longest time a harness exec probe may take (`timeoutSeconds` defaults to 1 s; the
/// harness's namespace entry costs a few milliseconds more).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a running container was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container with `restartPolicy: Always`.
    NativeSidecar,
    /// A container of `spec.containers`.
    App,
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub finished: Finished,
    /// Whether it needed SIGKILL (it outlived the grace period).
    pub killed: bool,
    /// When it ended, relative to the start of the pod.
    pub at: Duration,
}

/// A pod started by [`KubeletPod::start`], with every container's output kept.
pub struct KubeletPod {
    pub run: PodRun,
    started_at: Instant,
    /// Running containers, in start order.
    running: Vec<(String, Role, Running)>,
    /// Containers that ended, in the order they ended.
    ended: Vec<(String, Ended)>,
    /// Every container name in the order it was started.
    start_order: Vec<String>,
    /// How long each native sidecar took until its startup probe passed.
    probe_times: BTreeMap<String, Duration>,
}

impl std::fmt::Debug for KubeletPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletPod")
            .field("pod", &self.run.name())
            .field("start_order", &self.start_order)
            .finish_non_exhaustive()
    }
}

/// The startup probe of a container, as the kubelet reads it.
struct Probe {
    command: Vec<String>,
    initial_delay: Duration,
    period: Duration,
    failure_threshold: u32,
}

fn probe_of(c: &Value, at: &str) -> Result<Option<Probe>> {
    let p = &c["startupProbe"];
    if p.is_null() {
        return Ok(None);
    }
    let command: Vec<String> = p["exec"]["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        return Err(failed(format!(
            "{at}: only exec startup probes are supported by the harness"
        )));
    }
    let secs = |k: &str, default: u64| Duration::from_secs(p[k].as_u64().unwrap_or(default));
    Ok(Some(Probe {
        command,
        initial_delay: secs("initialDelaySeconds", 0),
        period: secs("periodSeconds", 10),
        failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3) as u32,
    }))
}

impl KubeletPod {
    /// Starts the pod: init containers in order (native sidecars awaited through their
    /// startup probe), then the app containers. A regular init container may take at
    /// most `init_limit`. On error every started container is killed, and the message
    /// carries the output of all of them.
    pub fn start(run: PodRun, init_limit: Duration) -> Result<KubeletPod> {
        let mut pod = KubeletPod {
            run,
            started_at: Instant::now(),
            running: Vec::new(),
            ended: Vec::new(),
            start_order: Vec::new(),
            probe_times: BTreeMap::new(),
        };
        match pod.start_all(init_limit) {
            Ok(()) => Ok(pod),
            Err(e) => {
                let logs = pod.all_logs();
                pod.kill_all();
                Err(failed(format!("{e}\n{logs}")))
            }
        }
    }

    fn start_all(&mut self, init_limit: Duration) -> Result<()> {
        let spec = &self.run.pod()["spec"];
        let inits: Vec<Value> = spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let apps: Vec<Value> = spec["containers"].as_array().cloned().unwrap_or_default();
        for c in &inits {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let at = format!("init container {name:?}");
            match c["restartPolicy"].as_str() {
                None => {
                    self.start_order.push(name.clone());
                    let done = self.run.run(&name, init_limit)?;
                    let ok = done.code() == Some(0);
                    let status = done.status;
                    self.ended.push((
                        name.clone(),
                        Ended {
                            finished: done,
                            killed: false,
                            at: self.started_at.elapsed(),
                        },
                    ));
                    if !ok {
                        return Err(failed(format!(
                            "{at} exited with {status}; the app containers would not start"
                        )));
                    }
                }
                Some("Always") => {
                    let probe = probe_of(c, &at)?;
                    self.start_order.push(name.clone());
                    let running = self.run.start(&name)?;
                    let t = Instant::now();
                    self.running
                        .push((name.clone(), Role::NativeSidecar, running));
                    if let Some(probe) = probe {
                        self.await_startup(&name, &probe)?;
                    }
                    self.probe_times.insert(name, t.elapsed());
                }
                Some(other) => {
                    return Err(failed(format!(
                        "{at}: restartPolicy {other:?}; only \"Always\" is valid on an init container"
                    )));
                }
            }
        }
        for c in &apps {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            if !c["restartPolicy"].is_null() {
                return Err(failed(format!(
                    "container {name:?}: restartPolicy is only valid on init containers"
                )));
            }
            self.start_order.push(name.clone());
            let running = self.run.start(&name)?;
            self.running.push((name, Role::App, running));
        }
        Ok(())
    }

    /// Runs the startup probe until it passes; an error when the container exits first
    /// or the probe fails `failure_threshold` times in a row.
    fn await_startup(&mut self, name: &str, probe: &Probe) -> Result<()> {
        let argv: Vec<&str> = probe.command.iter().map(String::as_str).collect();
        std::thread::sleep(probe.initial_delay);
        let mut failures = 0;
        loop {
            let running = self.running_mut(name)?;
            if !running.is_running() {
                return Err(failed(format!(
                    "native sidecar {name:?} exited before its startup probe passed \
                     (the kubelet would restart it)"
                )));
            }
            let next = Instant::now() + probe.period;
            let last = match running.exec(&argv, PROBE_TIMEOUT) {
                Ok(done) if done.code() == Some(0) => return Ok(()),
                Ok(done) => format!("exit {}: {}", done.status, done.logs()),
                Err(e) => e.to_string(),
            };
            failures += 1;
            if failures >= probe.failure_threshold {
                return Err(failed(format!(
                    "startup probe {:?} of {name:?} failed {failures} times (the kubelet \
                     would restart the container); last: {last}",
                    probe.command
                )));
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }

    fn running_mut(&mut self, name: &str) -> Result<&mut Running> {
        self.running
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, r)| r)
            .ok_or_else(|| failed(format!("container {name:?} is not running")))
    }

    /// A running container.
    pub fn container(&mut self, name: &str) -> Result<&mut Running> {
        self.running_mut(name)
    }

    /// Names of the containers in the order they were started.
    pub fn start_order(&self) -> &[String] {
        &self.start_order
    }

    /// How long native sidecar `name` took until its startup probe passed.
    pub fn probe_time(&self, name: &str) -> Option<Duration> {
        self.probe_times.get(name).copied()
    }

    /// How container `name` ended, if it did (the last run, if several).
    pub fn ended(&self, name: &str) -> Option<&Ended> {
        self.ended
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e)
    }

    /// Names of the containers in the order they ended.
    pub fn end_order(&self) -> Vec<&str> {
        self.ended.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Output of container `name` (running or ended), stdout then stderr.
    pub fn output(&self, name: &str) -> String {
        let mut out = String::new();
        for (n, e) in &self.ended {
            if n == name {
                out.push_str(&e.finished.stdout);
                out.push_str(&e.finished.stderr);
            }
        }
        for (n, _, r) in &self.running {
            if n == name {
                out.push_str(&r.output());
            }
        }
        out
    }

    /// Every output of every container, unlabelled (for leak checks).
    pub fn all_output(&self) -> String {
        let mut names: Vec<&String> = self.start_order.iter().collect();
        names.dedup();
        names.iter().map(|n| self.output(n)).collect()
    }

    /// Every container's output, labelled (for failure reports).
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for (n, e) in &self.ended {
            out.push_str(&format!(
                "===== {n} (ended: {}) =====\n{}\n",
                e.finished.status,
                e.finished.logs()
            ));
        }
        for (n, _, r) in &self.running {
            out.push_str(&format!("===== {n} (running) =====\n{}\n", r.logs()));
        }
        out
    }

    /// Moves containers that exited by themselves to `ended`.
    fn reap(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            if let Some(done) = self.running[i].2.wait_timeout(Duration::ZERO)? {
                let (name, _, _) = self.running.remove(i);
                self.ended.push((
                    name,
                    Ended {
                        finished: done,
                        killed: false,
                        at: self.started_at.elapsed(),
                    },
                ));
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Whether app container `name` is still running.
    pub fn is_running(&mut self, name: &str) -> bool {
        let _ = self.reap();
        self.running.iter().any(|(n, _, _)| n == name)
    }

    fn grace(&self) -> Duration {
        self.run.pod()["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .map_or(DEFAULT_GRACE, Duration::from_secs)
    }

    /// The pod is deleted: app containers get SIGTERM together, then the native
    /// sidecars one by one in reverse order, all within the grace period. Returns how
    /// long the whole termination took; see [`KubeletPod::ended`] for each container.
    pub fn terminate(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let deadline = t + self.grace();
        self.reap()?;
        let apps: Vec<String> = self
            .running
            .iter()
            .filter(|(_, role, _)| *role == Role::App)
            .map(|(n, _, _)| n.clone())
            .collect();
        for name in &apps {
            // It may have exited since the reap: then there is nothing to signal.
            let _ = self.running_mut(name)?.signal("TERM");
        }
        for name in &apps {
            self.await_exit(name, deadline)?;
        }
        self.stop_sidecars(deadline)?;
        Ok(t.elapsed())
    }

    /// For a Job's pod: waits up to `limit` for every app container to exit, then
    /// stops the native sidecars (reverse order, within the grace period). An error if
    /// an app container is still running at `limit`.
    pub fn complete(&mut self, limit: Duration) -> Result<Duration> {
        let policy = self.run.pod()["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_owned();
        if policy == "Always" {
            return Err(failed(
                "complete() is for pods of Jobs (restartPolicy Never or OnFailure); \
                 this pod's containers would be restarted forever",
            ));
        }
        let t = Instant::now();
        let deadline = t + limit;
        loop {
            self.reap()?;
            let apps: Vec<&str> = self
                .running
                .iter()
                .filter(|(_, role, _)| *role == Role::App)
                .map(|(n, _, _)| n.as_str())
                .collect();
            if apps.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "the pod did not complete within {limit:?}: containers {apps:?} still \
                     run (a sidecar in spec.containers never exits on its own)\n{}",
                    self.all_logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let grace_deadline = Instant::now() + self.grace();
        self.stop_sidecars(grace_deadline)?;
        Ok(t.elapsed())
    }

    /// SIGTERM to each native sidecar in reverse start order, each awaited.
    fn stop_sidecars(&mut self, deadline: Instant) -> Result<()> {
        let sidecars: Vec<String> = self
            .running
            .iter()
            .filter(|(_, role, _)| *role == Role::NativeSidecar)
            .map(|(n, _, _)| n.clone())
            .rev()
            .collect();
        for name in &sidecars {
            let _ = self.running_mut(name)?.signal("TERM");
            self.await_exit(name, deadline)?;
        }
        Ok(())
    }

    /// Waits for `name` to exit until `deadline`; SIGKILL after it.
    fn await_exit(&mut self, name: &str, deadline: Instant) -> Result<()> {
        let Some(i) = self.running.iter().position(|(n, _, _)| n == name) else {
            return Ok(()); // already ended
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let (done, killed) = match self.running[i].2.wait_timeout(left)? {
            Some(done) => (done, false),
            None => {
                self.running[i].2.kill_now();
                let done = self.running[i]
                    .2
                    .wait_timeout(Duration::from_secs(5))?
                    .ok_or_else(|| failed(format!("container {name:?} survived SIGKILL")))?;
                (done, true)
            }
        };
        self.running.remove(i);
        self.ended.push((
            name.to_owned(),
            Ended {
                finished: done,
                killed,
                at: self.started_at.elapsed(),
            },
        ));
        Ok(())
    }

    /// Kills every running container at once (SIGKILL), e.g. after a failed test.
    pub fn kill_all(&mut self) {
        for (_, _, r) in &mut self.running {
            r.kill_now();
        }
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::HOST_TOOLS_IMAGE;
    use serde_json::json;
    use std::path::Path;

    fn sh(name: &str, script: &str) -> Value {
        json!({"name": name, "image": HOST_TOOLS_IMAGE, "command": ["/bin/sh", "-c", script],
               "volumeMounts": [{"name": "state", "mountPath": "/state"}]})
    }

    fn run_of(spec: Value) -> (crate::tokenreview::TokenReviewApi, PodRun) {
        let api = crate::tokenreview::TokenReviewApi::start().unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "k-", "namespace": "demo"}, "spec": spec});
        let run = PodRun::new(&pod, api.minter(), "uid", "ca", Path::new("/bin/true")).unwrap();
        (api, run)
    }

    /// A sidecar that becomes ready after a while, probed inside its own mount
    /// namespace (the marker's path exists only there).
    fn sidecar() -> Value {
        let mut c = sh(
            "sc",
            "sleep 1; touch /state/ready; trap 'echo sc: TERM; exit 0' TERM; \
             while :; do sleep 0.1; done",
        );
        c["restartPolicy"] = json!("Always");
        c["startupProbe"] = json!({"exec": {"command": ["/bin/sh", "-c", "test -e /state/ready"]},
                                   "periodSeconds": 1, "failureThreshold": 10});
        c
    }

    #[test]
    fn job_pod_starts_after_the_probe_and_completes_stopping_the_sidecar() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_api, run) = run_of(json!({
            "restartPolicy": "Never",
            "initContainers": [sidecar(), sh("after", "test -e /state/ready")],
            "containers": [sh("app", "test -e /state/ready && echo app-saw-ready")],
            "volumes": [{"name": "state", "emptyDir": {}}],
        }));
        let mut pod = KubeletPod::start(run, Duration::from_secs(10)).unwrap();
        assert_eq!(pod.start_order(), ["sc", "after", "app"]);
        assert!(pod.probe_time("sc").unwrap() >= Duration::from_secs(1));
        pod.complete(Duration::from_secs(10)).unwrap();
        assert_eq!(pod.end_order(), ["after", "app", "sc"]);
        assert!(
            pod.output("app").contains("app-saw-ready"),
            "{}",
            pod.all_logs()
        );
        let sc = pod.ended("sc").unwrap();
        assert_eq!(sc.finished.code(), Some(0), "{}", pod.all_logs());
        assert!(!sc.killed);
        assert!(pod.output("sc").contains("sc: TERM"));
    }

    #[test]
    fn termination_stops_apps_first_and_kills_what_outlives_the_grace_period() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_api, run) = run_of(json!({
            "terminationGracePeriodSeconds": 2,
            "initContainers": [sidecar()],
            "containers": [
                sh("slow", "trap 'sleep 0.5; exit 0' TERM; echo up; while :; do sleep 0.1; done"),
                sh("deaf", "trap '' TERM; echo up; while :; do sleep 0.1; done"),
            ],
            "volumes": [{"name": "state", "emptyDir": {}}],
        }));
        let mut pod = KubeletPod::start(run, Duration::from_secs(10)).unwrap();
        // PID 1 ignores a signal it has no handler for yet: wait for the traps.
        crate::process::wait_for("traps set", Duration::from_secs(10), || {
            (pod.output("slow").contains("up") && pod.output("deaf").contains("up")).then_some(())
        })
        .unwrap();
        let took = pod.terminate().unwrap();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert_eq!(pod.end_order(), ["slow", "deaf", "sc"]);
        assert!(!pod.ended("slow").unwrap().killed);
        assert!(pod.ended("deaf").unwrap().killed);
        // The grace period was spent on the app: the sidecar is killed too.
        assert!(pod.ended("sc").unwrap().killed);
    }

    #[test]
    fn a_failing_init_container_or_probe_stops_the_start_with_its_output() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_api, run) = run_of(json!({
            "initContainers": [sh("bad", "echo broken >&2; exit 3")],
            "containers": [sh("app", "true")],
            "volumes": [{"name": "state", "emptyDir": {}}],
        }));
        let err = KubeletPod::start(run, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"bad\" exited") && err.contains("broken"),
            "{err}"
        );

        let mut never = sidecar();
        never["command"] = json!(["/bin/sh", "-c", "while :; do sleep 0.1; done"]);
        never["startupProbe"]["failureThreshold"] = json!(2);
        let (_api, run) = run_of(json!({
            "initContainers": [never],
            "containers": [sh("app", "true")],
            "volumes": [{"name": "state", "emptyDir": {}}],
        }));
        let err = KubeletPod::start(run, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed 2 times"), "{err}");
    }
}
