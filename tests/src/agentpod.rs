//! The injected agent of a mutated pod, run the way the pod's spec lays it out.
//!
//! The webhook has two layouts, and this reads which one the patched pod has rather
//! than assuming:
//! - classic (`agent-mode: init-and-sidecar`): init container `sidekey-init` runs to
//!   completion, then `sidekey-agent` starts among the app's containers;
//! - native sidecar (the default): `sidekey-agent` is an init container with
//!   `restartPolicy: Always`; the kubelet starts it and holds back the next container
//!   until its startup probe (`/sidekey-agent probe`: the `ready` file in the state
//!   volume exists) passes. The harness runs that probe as the kubelet would, in the
//!   sidecar's container environment.
//!
//! "Crash" and "restart" act on the sidecar container only, as the kubelet restarts a
//! single container of a pod: the volumes (secrets, state) survive.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use sidekey_agent::contract::layout;

use crate::container::{Finished, PodRun, Running};
use crate::{Result, failed, process};

/// How long the agent may take to become ready (init exit, or the ready file).
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// Where the agent containers are in a patched pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `sidekey-init` init container plus `sidekey-agent` in `containers`.
    Classic,
    /// `sidekey-agent` as an init container with `restartPolicy: Always`.
    Native,
    /// `sidekey-init` alone (pods of Jobs): no sidecar.
    InitOnly,
}

/// The layout of a patched pod.
pub fn layout(pod: &Value) -> Result<Layout> {
    let find = |list: &str, name: &str| -> Option<Value> {
        pod["spec"][list]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    let init = find("initContainers", layout::INIT_CONTAINER);
    let native = find("initContainers", layout::SIDECAR_CONTAINER);
    let classic = find("containers", layout::SIDECAR_CONTAINER);
    match (init, native, classic) {
        (None, Some(c), None) if c["restartPolicy"] == "Always" => Ok(Layout::Native),
        (Some(_), None, Some(_)) => Ok(Layout::Classic),
        (Some(_), None, None) => Ok(Layout::InitOnly),
        _ => Err(failed(
            "the patched pod has no agent layout the harness knows (sidekey-init / sidekey-agent)",
        )),
    }
}

/// A pod's agent containers, with every output they produced kept for leak checks.
pub struct AgentPod {
    pub run: PodRun,
    pub layout: Layout,
    /// The init container's result (classic and init-only layouts).
    pub init: Option<Finished>,
    sidecar: Option<Running>,
    /// Output of sidecar runs that ended (crashed or terminated).
    past: Vec<String>,
}

impl std::fmt::Debug for AgentPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPod")
            .field("run", &self.run)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl AgentPod {
    /// Runs the agent of `run`'s pod up to the point where the app would start: the
    /// init container exited 0 and the sidecar is started (classic), or the native
    /// sidecar's startup probe passes. A failure carries the agent's output.
    pub fn start(run: PodRun) -> Result<AgentPod> {
        let layout = layout(run.pod())?;
        let mut pod = AgentPod {
            run,
            layout,
            init: None,
            sidecar: None,
            past: Vec::new(),
        };
        if layout != Layout::Native {
            let init = pod.run.run(layout::INIT_CONTAINER, READY_LIMIT)?;
            if init.code() != Some(0) {
                return Err(failed(format!(
                    "init container exited with {}\n{}",
                    init.status,
                    init.logs()
                )));
            }
            pod.init = Some(init);
        }
        if layout != Layout::InitOnly {
            pod.start_sidecar()?;
        }
        Ok(pod)
    }

    /// Starts the sidecar container (again); for the native layout, waits for its
    /// startup probe to pass.
    pub fn start_sidecar(&mut self) -> Result<()> {
        if self.sidecar.is_some() {
            return Err(failed("the sidecar is already running"));
        }
        let running = self.run.start(layout::SIDECAR_CONTAINER)?;
        let name = layout::AGENT_BINARY.trim_start_matches('/');
        running
            .wait_exec(name, Duration::from_secs(10))
            .map_err(|e| failed(format!("{e}\n{}", running.logs())))?;
        self.sidecar = Some(running);
        if self.layout == Layout::Native {
            self.wait_ready(READY_LIMIT)?;
        }
        Ok(())
    }

    /// Runs the sidecar's `startupProbe` (an exec probe) every `periodSeconds`, as the
    /// kubelet does, until it exits 0; bounded by `limit` and by the sidecar exiting.
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let spec = self.run.pod()["spec"]["initContainers"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == layout::SIDECAR_CONTAINER))
            .map(|c| c["startupProbe"].clone())
            .unwrap_or_default();
        let argv: Vec<String> = spec["exec"]["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if argv.is_empty() {
            return Err(failed(
                "the native sidecar has no exec startupProbe; the kubelet would start the app at once",
            ));
        }
        let period = Duration::from_secs(spec["periodSeconds"].as_u64().unwrap_or(10).max(1));
        let deadline = Instant::now() + limit;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        loop {
            let sidecar = self.sidecar.as_ref().ok_or_else(|| failed("no sidecar"))?;
            let probe = sidecar.exec(&argv, Duration::from_secs(10))?;
            self.past.push(format!("{}{}", probe.stdout, probe.stderr));
            match probe.code() {
                Some(0) => return Ok(()),
                // Not ready yet: the only other answer the probe's contract allows.
                Some(1) => {}
                _ => {
                    return Err(failed(format!(
                        "the native sidecar's startup probe {argv:?} exited {}, which is \
                         neither ready (0) nor not-yet-ready (1); it would never pass:\n{}",
                        probe.status,
                        probe.logs()
                    )));
                }
            }
            let sidecar = self.sidecar.as_mut().ok_or_else(|| failed("no sidecar"))?;
            if !sidecar.is_running() {
                return Err(failed(format!(
                    "the native sidecar exited before its startup probe passed\n{}",
                    sidecar.logs()
                )));
            }
            if Instant::now() + period >= deadline {
                return Err(failed(format!(
                    "the native sidecar's startup probe {argv:?} did not pass within {limit:?}; \
                     last probe exited {}:\n{}\n{}",
                    probe.status,
                    probe.logs(),
                    sidecar.logs()
                )));
            }
            std::thread::sleep(period);
        }
    }

    /// The running sidecar.
    pub fn sidecar(&mut self) -> Result<&mut Running> {
        self.sidecar
            .as_mut()
            .ok_or_else(|| failed("the sidecar is not running"))
    }

    /// Kills the sidecar with SIGKILL, as a crash or an OOM kill would; no chance to
    /// revoke anything. Its output is kept.
    pub fn crash_sidecar(&mut self) -> Result<()> {
        let running = self
            .sidecar
            .take()
            .ok_or_else(|| failed("the sidecar is not running"))?;
        self.past.push(running.output());
        running.crash();
        Ok(())
    }

    /// Sends SIGTERM to the sidecar and waits up to `grace` for it to exit (see
    /// [`Running::terminate`]); also records how long it took.
    pub fn terminate_sidecar(&mut self, grace: Duration) -> Result<(Finished, Duration)> {
        let running = self
            .sidecar
            .take()
            .ok_or_else(|| failed("the sidecar is not running"))?;
        let started = Instant::now();
        let done = running.terminate(grace);
        let took = started.elapsed();
        let done = done?;
        self.past.push(format!("{}{}", done.stdout, done.stderr));
        Ok((done, took))
    }

    /// Every line any agent container of this pod wrote so far.
    pub fn all_output(&self) -> String {
        let mut out = String::new();
        if let Some(init) = &self.init {
            out.push_str(&init.stdout);
            out.push_str(&init.stderr);
        }
        for p in &self.past {
            out.push_str(p);
        }
        if let Some(s) = &self.sidecar {
            out.push_str(&s.output());
        }
        out
    }

    /// Host directory of the secrets volume.
    pub fn secrets_dir(&self) -> Result<PathBuf> {
        self.volume(layout::SECRETS_VOLUME)
    }

    /// Host directory of the agent's state volume.
    pub fn state_dir(&self) -> Result<PathBuf> {
        self.volume(layout::STATE_VOLUME)
    }

    fn volume(&self, name: &str) -> Result<PathBuf> {
        self.run
            .volume_path(name)
            .map(PathBuf::from)
            .ok_or_else(|| {
                failed(format!(
                    "volume {name} has not been mounted by any container"
                ))
            })
    }

    /// A rendered file parsed as JSON.
    pub fn read_json(&self, file: &str) -> Result<Value> {
        let path = self.secrets_dir()?.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("{} is not JSON: {e}", path.display())))
    }

    /// Waits until `check` holds for the JSON in `file` (bounded).
    pub fn wait_json(
        &self,
        what: &str,
        file: &str,
        limit: Duration,
        mut check: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        process::wait_for(what, limit, || {
            let v = self.read_json(file).ok()?;
            check(&v).then_some(v)
        })
        .map_err(|e| failed(format!("{e}\n{}", self.all_output())))
    }
}
