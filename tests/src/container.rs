//! Runs one container of a pod exactly as its spec says, the way a kubelet and a
//! container runtime would, without either.
//!
//! For each container: a fresh root directory holding what the agent image holds (the
//! agent binary at `/sidekey-agent`, the CA bundle, and, because the debug agent is
//! dynamically linked, the host's library directories, read-only), then in a private
//! mount and PID namespace (`unshare --mount --pid --fork`) every `volumeMount` at its
//! `mountPath`, `/proc`, a minimal `/dev`, and a read-only root if the container asks
//! for one; then `chroot --userspec` to the container's user (the image's `65532` unless
//! `runAsUser` says otherwise) and `exec` of `command` + `args` with exactly the
//! container's `env` (downward-API fields resolved from the pod). The command is PID 1
//! of its namespace, as in a pod, so it receives SIGTERM only if it handles it.
//!
//! Volumes live for the pod, not the container: each `emptyDir` is a directory on the
//! host (a `tmpfs` mounted once, for `medium: Memory`, with its `sizeLimit` and mode
//! 0777 as the kubelet does), bind-mounted into every container that mounts it. So the
//! init container's output is there for the sidecar, and the test reads it from the host
//! side with [`PodRun::volume_path`]. Projected volumes are written once, with tokens
//! minted by the fake API server's key.
//!
//! Secret and ConfigMap volumes are written once from objects the test registers with
//! [`PodRun::add_object`] (the harness has no API server to read them from), read-only
//! as the kubelet mounts them.
//!
//! Two "images" exist: the agent image (the default: only `/sidekey-agent` and the
//! libraries), and [`HOST_TOOLS_IMAGE`], whose root holds the host's `/usr/bin` and
//! `/usr/sbin` read-only, so an app container can be `/bin/sh -c '...'` and its
//! `command` is exactly what runs.
//!
//! Anything the harness can't reproduce faithfully (a `subPath`, an unregistered Secret,
//! an `envFrom`, an unknown downward-API field) is an error, never a silent
//! approximation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::podcheck::parse_quantity;
use crate::process::{self, Process};
use crate::tokenreview::{BoundPod, Minter, ServiceAccount};
use crate::{IoContext, Result, failed};

/// The agent image's `USER`.
pub const IMAGE_USER: u32 = 65532;
/// The kubelet's default size for a memory emptyDir with no limit (the harness has no
/// node allocatable to derive one from).
const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;
/// Default projected token lifetime when `expirationSeconds` is absent.
const DEFAULT_TOKEN_SECONDS: u64 = 3600;
/// Audience of a projected token with no `audience` (the API server's own).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// `PATH` of the agent image (distroless/scratch convention).
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host directories bound read-only so a dynamically linked binary can load.
const HOST_LIB_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];
/// Host files bound read-only (what the image or the runtime provides).
const HOST_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/resolv.conf",
    "/etc/hosts",
];
/// Image name of app containers whose root is the host's programs (read-only): a
/// container with this image runs e.g. `/bin/sh -c '...'` as written in its spec.
pub const HOST_TOOLS_IMAGE: &str = "harness.local/host-tools:latest";
/// Host program directories bound read-only in a [`HOST_TOOLS_IMAGE`] container.
const HOST_TOOL_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];
/// Device nodes a runtime provides in `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// What a finished container left.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Exit code, if it exited rather than died of a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both outputs, labelled, for a failure report.
    pub fn logs(&self) -> String {
        format!(
            "----- stdout -----\n{}\n----- stderr -----\n{}",
            self.stdout, self.stderr
        )
    }
}

/// A pod being "run": its volumes on the host and its containers started one by one.
pub struct PodRun {
    pod: Value,
    minter: Minter,
    service_account_uid: String,
    kube_ca_pem: String,
    agent_binary: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    tmpfs: Vec<PathBuf>,
    /// Secrets and ConfigMaps of the pod's namespace: (kind, name) -> key -> bytes.
    objects: BTreeMap<(ObjectKind, String), BTreeMap<String, Vec<u8>>>,
    runs: usize,
    dir: tempfile::TempDir,
}

/// Kind of a namespaced object a volume can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Secret,
    ConfigMap,
}

impl std::fmt::Debug for PodRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRun")
            .field("pod", &self.name())
            .field("dir", &self.dir.path())
            .field("volumes", &self.volumes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A container started in the background (the sidecar).
pub struct Running {
    name: String,
    process: Process,
    /// What an exec into the container needs: its user, environment and privileges.
    uid: u32,
    gid: u32,
    env: Vec<(String, String)>,
    no_new_privs: bool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PodRun {
    /// Prepares to run `pod` (after admission). A pod created from `generateName` gets
    /// its name and uid here, as the API server assigns them after admission.
    pub fn new(
        pod: &Value,
        minter: Minter,
        service_account_uid: &str,
        kube_ca_pem: &str,
        agent_binary: &Path,
    ) -> Result<PodRun> {
        if !crate::is_root() {
            return Err(failed(
                "running a pod's containers needs root (mount namespaces, tmpfs, chroot)",
            ));
        }
        let mut pod = pod.clone();
        if pod["metadata"]["name"].as_str().is_none() {
            let prefix = pod["metadata"]["generateName"].as_str().unwrap_or("pod-");
            pod["metadata"]["name"] = Value::from(format!("{prefix}{}", crate::random_id(5)));
        }
        if pod["metadata"]["uid"].is_null() {
            pod["metadata"]["uid"] = Value::from(crate::random_uuid());
        }

        let dir = crate::tempdir("pod-")?;
        // Other uids must reach the volumes for read_as_uid.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .ctx(|| "chmod pod directory".into())?;
        for sub in ["volumes", "containers", "logs"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        Ok(PodRun {
            pod,
            minter,
            service_account_uid: service_account_uid.to_owned(),
            kube_ca_pem: kube_ca_pem.to_owned(),
            agent_binary: agent_binary.to_path_buf(),
            volumes: BTreeMap::new(),
            tmpfs: Vec::new(),
            objects: BTreeMap::new(),
            runs: 0,
            dir,
        })
    }

    /// The pod as run (with its assigned name and uid).
    pub fn pod(&self) -> &Value {
        &self.pod
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// Registers a Secret or ConfigMap of the pod's namespace, for `secret` and
    /// `configMap` volumes (which must be registered before a container mounts them).
    pub fn add_object(&mut self, kind: ObjectKind, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.objects.insert((kind, name.to_owned()), data);
    }

    /// Host directory backing volume `name` (prepared when a container first mounts it).
    pub fn volume_path(&self, name: &str) -> Option<&Path> {
        self.volumes.get(name).map(PathBuf::as_path)
    }

    /// Runs container `name` to completion, at most `limit`; killed on timeout.
    pub fn run(&mut self, name: &str, limit: Duration) -> Result<Finished> {
        let mut running = self.start(name)?;
        match running.process.wait_timeout(limit) {
            Ok(status) => Ok(Finished {
                status,
                stdout: running.process.stdout(),
                stderr: running.process.stderr(),
            }),
            Err(e) => Err(failed(format!(
                "container {name}: {e}\n{}",
                running.process.logs()
            ))),
        }
    }

    /// Starts container `name` in the background.
    pub fn start(&mut self, name: &str) -> Result<Running> {
        let container = self.container(name)?.clone();
        self.start_container(name, container)
    }

    fn start_container(&mut self, name: &str, container: Value) -> Result<Running> {
        let at = format!("container {name:?}");

        let argv = self.argv(&container, &at)?;
        let env = self.env(&container, &at)?;
        let argv: Vec<String> = argv
            .iter()
            .map(|a| expand(a, |k| lookup(&env, k)))
            .collect();
        let (uid, gid, groups) = self.user(&container, &at)?;
        let sc = &container["securityContext"];
        let read_only_root = sc["readOnlyRootFilesystem"] == true;
        let no_new_privs = sc["allowPrivilegeEscalation"] == false;
        let host_tools = container["image"] == HOST_TOOLS_IMAGE;

        // Mounts, parents before children.
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let vol = m["name"].as_str().unwrap_or_default();
            if !m["subPath"].is_null() || !m["subPathExpr"].is_null() {
                return Err(failed(format!(
                    "{at}: subPath mounts are not supported by the harness"
                )));
            }
            let path = m["mountPath"]
                .as_str()
                .filter(|p| p.starts_with('/') && !p.split('/').any(|s| s == ".."))
                .ok_or_else(|| failed(format!("{at}: mount of {vol:?} has no usable mountPath")))?;
            let host = self.prepare_volume(vol)?;
            let v = self.volume(vol)?;
            // Projected, Secret and ConfigMap volumes are always read-only, whatever
            // the mount says.
            let ro = m["readOnly"] == true
                || !v["projected"].is_null()
                || !v["secret"].is_null()
                || !v["configMap"].is_null();
            mounts.push((path.to_owned(), host, ro));
        }
        mounts.sort_by_key(|(p, _, _)| p.matches('/').count());

        self.runs += 1;
        let cdir = self
            .dir
            .path()
            .join("containers")
            .join(format!("{}-{name}", self.runs));
        let root = cdir.join("root");
        self.build_root(&root, host_tools)?;
        let image = if host_tools {
            Image::HostTools
        } else {
            Image::Agent(&self.agent_binary)
        };
        let script = mount_script(&root, image, &mounts, read_only_root);

        let mut chroot = vec!["/usr/sbin/chroot".to_owned()];
        chroot.push(format!("--userspec={uid}:{gid}"));
        chroot.push(format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
        chroot.push(root.display().to_string());
        chroot.extend(argv);
        let mut exec = String::from("exec ");
        if no_new_privs {
            exec.push_str("/usr/bin/setpriv --no-new-privs -- ");
        }
        exec.push_str(
            &chroot
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );

        let mut cmd = process::guarded("/usr/bin/unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(format!("{script}{exec}\n"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
        let log_name = format!("{}-{name}", self.runs);
        let process = Process::spawn(&log_name, cmd, &self.dir.path().join("logs"))?;
        Ok(Running {
            name: name.to_owned(),
            process,
            uid,
            gid,
            env,
            no_new_privs,
        })
    }

    fn container(&self, name: &str) -> Result<&Value> {
        ["initContainers", "containers"]
            .iter()
            .filter_map(|l| self.pod["spec"][*l].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .ok_or_else(|| failed(format!("the pod has no container named {name:?}")))
    }

    fn volume(&self, name: &str) -> Result<&Value> {
        self.pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .ok_or_else(|| {
                failed(format!(
                    "a mount refers to volume {name:?}, which the pod lacks"
                ))
            })
    }

    fn argv(&self, c: &Value, at: &str) -> Result<Vec<String>> {
        let strings = |v: &Value, field: &str| -> Result<Vec<String>> {
            match v {
                Value::Null => Ok(Vec::new()),
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| failed(format!("{at}: {field} holds a non-string")))
                    })
                    .collect(),
                _ => Err(failed(format!("{at}: {field} is not a list"))),
            }
        };
        let mut argv = strings(&c["command"], "command")?;
        if argv.is_empty() {
            // Without `command` the image's ENTRYPOINT would run; the harness has no image.
            return Err(failed(format!(
                "{at}: no command; the harness can't know the image's entrypoint"
            )));
        }
        argv.extend(strings(&c["args"], "args")?);
        Ok(argv)
    }

    /// The container's environment as the kubelet builds it.
    fn env(&self, c: &Value, at: &str) -> Result<Vec<(String, String)>> {
        if !c["envFrom"].is_null() {
            return Err(failed(format!(
                "{at}: envFrom is not supported by the harness"
            )));
        }
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), IMAGE_PATH.into()),
            ("HOSTNAME".into(), self.name().into()),
        ];
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"]
                .as_str()
                .ok_or_else(|| failed(format!("{at}: env entry without a name")))?
                .to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, |k| lookup(&env, k))
            } else if e["valueFrom"].is_null() {
                String::new()
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                self.field(path).ok_or_else(|| {
                    failed(format!("{at}: env {name}: can't resolve fieldRef {path:?}"))
                })?
            } else {
                return Err(failed(format!(
                    "{at}: env {name}: only value and valueFrom.fieldRef are supported by the harness"
                )));
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        Ok(env)
    }

    /// A downward-API field of the pod.
    fn field(&self, path: &str) -> Option<String> {
        let m = &self.pod["metadata"];
        let s = |v: &Value| v.as_str().map(str::to_owned);
        match path {
            "metadata.name" => s(&m["name"]),
            "metadata.namespace" => s(&m["namespace"]),
            "metadata.uid" => s(&m["uid"]),
            "spec.serviceAccountName" => s(&self.pod["spec"]["serviceAccountName"]),
            "spec.nodeName" => Some("harness-node".into()),
            "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
            _ => {
                let (map, key) = path
                    .strip_prefix("metadata.labels['")
                    .map(|k| ("labels", k))
                    .or_else(|| {
                        path.strip_prefix("metadata.annotations['")
                            .map(|k| ("annotations", k))
                    })?;
                let key = key.strip_suffix("']")?;
                s(&m[map][key])
            }
        }
    }

    /// uid, gid and supplementary groups, as the kubelet resolves them.
    fn user(&self, c: &Value, at: &str) -> Result<(u32, u32, Vec<u32>)> {
        let psc = &self.pod["spec"]["securityContext"];
        let sc = &c["securityContext"];
        let pick = |field: &str| sc[field].as_u64().or_else(|| psc[field].as_u64());
        let uid = pick("runAsUser").unwrap_or(IMAGE_USER as u64) as u32;
        let gid = pick("runAsGroup").unwrap_or(IMAGE_USER as u64) as u32;
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(psc["runAsNonRoot"].as_bool());
        if non_root == Some(true) && uid == 0 {
            return Err(failed(format!(
                "{at}: runAsNonRoot is set but the container would run as root"
            )));
        }
        let mut groups = vec![gid];
        if let Some(fs) = psc["fsGroup"].as_u64() {
            groups.push(fs as u32);
        }
        for g in psc["supplementalGroups"].as_array().into_iter().flatten() {
            groups.extend(g.as_u64().map(|g| g as u32));
        }
        Ok((uid, gid, groups))
    }

    /// Creates the host side of volume `name` once.
    fn prepare_volume(&mut self, name: &str) -> Result<PathBuf> {
        if let Some(p) = self.volumes.get(name) {
            return Ok(p.clone());
        }
        let vol = self.volume(name)?.clone();
        let host = self.dir.path().join("volumes").join(name);
        std::fs::create_dir(&host).ctx(|| format!("creating {}", host.display()))?;

        if let Some(ed) = vol["emptyDir"].as_object() {
            if ed.get("medium").and_then(Value::as_str) == Some("Memory") {
                let size = match ed.get("sizeLimit").and_then(Value::as_str) {
                    Some(q) => parse_quantity(q)
                        .ok_or_else(|| failed(format!("volume {name}: bad sizeLimit {q:?}")))?,
                    None => DEFAULT_TMPFS_BYTES,
                };
                let mut cmd = Command::new("mount");
                cmd.args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={size},mode=0777"))
                    .arg(format!("sidekey-{name}"))
                    .arg(&host);
                process::run("mount tmpfs", cmd, Duration::from_secs(10))?;
                self.tmpfs.push(host.clone());
            } else {
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777))
                    .ctx(|| format!("chmod {}", host.display()))?;
            }
        } else if let Some(sources) = vol["projected"]["sources"].as_array() {
            let mode = vol["projected"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for src in sources {
                self.project(name, src, &host, mode)?;
            }
        } else if let Some(src) = vol["secret"].as_object() {
            let object = src.get("secretName").and_then(Value::as_str);
            self.materialise(name, ObjectKind::Secret, object, src, &host)?;
        } else if let Some(src) = vol["configMap"].as_object() {
            let object = src.get("name").and_then(Value::as_str);
            self.materialise(name, ObjectKind::ConfigMap, object, src, &host)?;
        } else {
            return Err(failed(format!(
                "volume {name}: only emptyDir, projected, secret and configMap volumes are \
                 supported by the harness"
            )));
        }
        self.volumes.insert(name.to_owned(), host.clone());
        Ok(host)
    }

    /// Writes a registered Secret or ConfigMap into `dir`: its `items` (key -> path,
    /// optional mode), or every key; files mode `defaultMode` (0644 if absent).
    fn materialise(
        &self,
        vol: &str,
        kind: ObjectKind,
        object: Option<&str>,
        src: &serde_json::Map<String, Value>,
        dir: &Path,
    ) -> Result<()> {
        let object = object.ok_or_else(|| failed(format!("volume {vol}: no {kind:?} name")))?;
        let data = self
            .objects
            .get(&(kind, object.to_owned()))
            .ok_or_else(|| {
                failed(format!(
                    "volume {vol}: {kind:?} {object:?} was not registered with add_object \
                     (in a cluster the pod would not start: the object does not exist)"
                ))
            })?;
        let default_mode = src
            .get("defaultMode")
            .and_then(Value::as_u64)
            .unwrap_or(0o644) as u32;
        let items: Vec<(String, String, u32)> = match src.get("items").and_then(Value::as_array) {
            Some(items) => items
                .iter()
                .map(|i| {
                    let key = i["key"].as_str().unwrap_or_default().to_owned();
                    let path = i["path"].as_str().unwrap_or_default().to_owned();
                    let mode = i["mode"].as_u64().map_or(default_mode, |m| m as u32);
                    (key, path, mode)
                })
                .collect(),
            None => data
                .keys()
                .map(|k| (k.clone(), k.clone(), default_mode))
                .collect(),
        };
        for (key, rel, mode) in items {
            let bytes = data.get(&key).ok_or_else(|| {
                failed(format!(
                    "volume {vol}: {kind:?} {object:?} has no key {key:?}"
                ))
            })?;
            if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|s| s == "..") {
                return Err(failed(format!("volume {vol}: bad item path {rel:?}")));
            }
            let p = dir.join(&rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&p, bytes).ctx(|| format!("writing {}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .ctx(|| format!("chmod {}", p.display()))?;
        }
        Ok(())
    }

    /// Writes one projected source into `dir`.
    fn project(&self, vol: &str, src: &Value, dir: &Path, mode: u32) -> Result<()> {
        let write = |rel: &str, content: &str, mode: u32| -> Result<()> {
            if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|s| s == "..") {
                return Err(failed(format!("volume {vol}: bad projected path {rel:?}")));
            }
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&p, content).ctx(|| format!("writing {}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .ctx(|| format!("chmod {}", p.display()))
        };

        if let Some(tok) = src["serviceAccountToken"].as_object() {
            let path = tok.get("path").and_then(Value::as_str).unwrap_or_default();
            let audience = tok
                .get("audience")
                .and_then(Value::as_str)
                .unwrap_or(API_AUDIENCE);
            let secs = tok
                .get("expirationSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_TOKEN_SECONDS);
            let sa = ServiceAccount {
                namespace: self.pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .into(),
                name: self.pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .into(),
                uid: self.service_account_uid.clone(),
            };
            let pod = BoundPod {
                name: self.name().into(),
                uid: self.pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
            };
            let jwt = self
                .minter
                .mint(&sa, Some(&pod), audience, Duration::from_secs(secs))?;
            write(path, &jwt, mode)
        } else if let Some(cm) = src["configMap"].as_object() {
            if cm.get("name").and_then(Value::as_str) != Some("kube-root-ca.crt") {
                return Err(failed(format!(
                    "volume {vol}: the harness only knows the kube-root-ca.crt ConfigMap"
                )));
            }
            for item in cm
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if item["key"] != "ca.crt" {
                    return Err(failed(format!(
                        "volume {vol}: kube-root-ca.crt has only ca.crt"
                    )));
                }
                write(
                    item["path"].as_str().unwrap_or_default(),
                    &self.kube_ca_pem,
                    mode,
                )?;
            }
            Ok(())
        } else if let Some(items) = src["downwardAPI"]["items"].as_array() {
            for item in items {
                let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                let value = self.field(field).ok_or_else(|| {
                    failed(format!("volume {vol}: can't resolve fieldRef {field:?}"))
                })?;
                write(item["path"].as_str().unwrap_or_default(), &value, mode)?;
            }
            Ok(())
        } else {
            Err(failed(format!(
                "volume {vol}: projected source {src} is not supported by the harness"
            )))
        }
    }

    /// The container root: mount points for the image's files and the runtime's.
    fn build_root(&self, root: &Path, host_tools: bool) -> Result<()> {
        let mkdir =
            |p: &Path| std::fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()));
        let touch = |p: &Path| -> Result<()> {
            if let Some(parent) = p.parent() {
                mkdir(parent)?;
            }
            std::fs::write(p, b"").ctx(|| format!("creating {}", p.display()))
        };
        mkdir(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
            .ctx(|| "chmod container root".into())?;
        mkdir(&root.join("proc"))?;
        mkdir(&root.join("dev"))?;
        let tool_dirs = if host_tools { HOST_TOOL_DIRS } else { &[] };
        for d in HOST_LIB_DIRS.iter().chain(tool_dirs) {
            let host = Path::new(d);
            let inside = root.join(d.trim_start_matches('/'));
            if let Ok(target) = std::fs::read_link(host) {
                if let Some(parent) = inside.parent() {
                    mkdir(parent)?;
                }
                std::os::unix::fs::symlink(&target, &inside)
                    .ctx(|| format!("linking {}", inside.display()))?;
            } else if host.is_dir() {
                mkdir(&inside)?;
            }
        }
        for f in HOST_FILES {
            if Path::new(f).exists() {
                touch(&root.join(f.trim_start_matches('/')))?;
            }
        }
        if host_tools {
            Ok(())
        } else {
            touch(&root.join("sidekey-agent"))
        }
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        // Containers are gone by now (Running kills on drop); lazy unmount in case a
        // straggler still holds the tmpfs.
        for p in self.tmpfs.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

impl Running {
    /// Container name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the container is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_status(), Ok(None))
    }

    /// Output so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Output so far, stdout and stderr concatenated.
    pub fn output(&self) -> String {
        format!("{}{}", self.process.stdout(), self.process.stderr())
    }

    /// Runs `argv` inside the running container, as the kubelet's exec probe does: in
    /// its mount and PID namespaces and its root, as its user, with its environment;
    /// at most `limit`.
    pub fn exec(&self, argv: &[&str], limit: Duration) -> Result<Finished> {
        let pid = self.init_pid().ok_or_else(|| {
            failed(format!(
                "exec in container {}: it is not running",
                self.name
            ))
        })?;
        // setpriv is the host's, applied before entering: no_new_privs survives exec.
        let mut args: Vec<String> = Vec::new();
        if self.no_new_privs {
            args.extend(["--no-new-privs", "--", "/usr/bin/nsenter"].map(String::from));
        }
        args.push(format!("--target={pid}"));
        args.extend(["--mount", "--pid", "--root", "--wd"].map(String::from));
        args.push(format!("--setuid={}", self.uid));
        args.push(format!("--setgid={}", self.gid));
        args.push("--".into());
        args.extend(argv.iter().map(|a| (*a).to_owned()));
        let program = if self.no_new_privs {
            "/usr/bin/setpriv"
        } else {
            "/usr/bin/nsenter"
        };
        let mut cmd = process::guarded(program);
        cmd.args(&args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let dir = crate::tempdir("exec-")?;
        let mut p = Process::spawn(&format!("exec-{}", self.name), cmd, dir.path())?;
        let status = p.wait_timeout(limit).map_err(|e| {
            failed(format!(
                "exec {argv:?} in container {}: {e}\n{}",
                self.name,
                p.logs()
            ))
        })?;
        Ok(Finished {
            status,
            stdout: p.stdout(),
            stderr: p.stderr(),
        })
    }

    /// Sends signal `sig` (`TERM`, `KILL`, ...) to the container's PID 1.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.init_pid().ok_or_else(|| {
            failed(format!(
                "signal {sig} to container {}: it is not running",
                self.name
            ))
        })?;
        process::send_signal(pid, sig)
    }

    /// Waits up to `limit` for the container to exit: `Some` with its result, or
    /// `None` if it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<Finished>> {
        match self.process.wait_timeout(limit) {
            Ok(status) => Ok(Some(Finished {
                status,
                stdout: self.process.stdout(),
                stderr: self.process.stderr(),
            })),
            Err(crate::Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// SIGKILL to the whole container (it stays inspectable: logs, status).
    pub fn kill_now(&mut self) {
        self.kill();
    }

    /// Waits until the container's PID 1 is its command (`comm`, the executable's
    /// name cut to 15 bytes) rather than the harness's mount script, at most `limit`.
    /// A runtime starts a container only once its process runs; a signal sent to
    /// the script would be lost (PID 1 ignores what it has no handler for).
    pub fn wait_exec(&self, comm: &str, limit: Duration) -> Result<()> {
        let want: String = comm.chars().take(15).collect();
        process::wait_for(
            &format!("container {} to exec {comm}", self.name),
            limit,
            || {
                let pid = self.init_pid()?;
                let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                (now.trim_end() == want).then_some(())
            },
        )
    }

    /// Host pid of the container's PID 1 (the command), if it is running.
    fn init_pid(&self) -> Option<u32> {
        process::children(self.process.pid()).first().copied()
    }

    /// Sends SIGTERM to the container's PID 1 (as the kubelet does) and waits up to
    /// `grace`; then SIGKILL, and that is an error naming the overrun.
    pub fn terminate(mut self, grace: Duration) -> Result<Finished> {
        let pid = self.init_pid().ok_or_else(|| {
            failed(format!(
                "container {} is not running\n{}",
                self.name,
                self.logs()
            ))
        })?;
        process::send_signal(pid, "TERM")?;
        match self.process.wait_timeout(grace) {
            Ok(status) => Ok(Finished {
                status,
                stdout: self.process.stdout(),
                stderr: self.process.stderr(),
            }),
            Err(_) => {
                self.kill();
                Err(failed(format!(
                    "container {} did not exit within {grace:?} of SIGTERM\n{}",
                    self.name,
                    self.logs()
                )))
            }
        }
    }

    /// SIGKILL to the container's PID 1, as an OOM kill or a node problem would:
    /// nothing in it runs again, the pod's volumes stay.
    pub fn crash(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // The command changed uid, which clears --kill-child's death signal; kill the
        // namespace's init directly, which takes the whole PID namespace with it.
        if let Some(pid) = self.init_pid() {
            let _ = process::send_signal(pid, "KILL");
        }
        self.process.kill();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a container's root holds besides the runtime's files.
enum Image<'a> {
    /// The agent image: the agent binary at `/sidekey-agent`.
    Agent(&'a Path),
    /// [`HOST_TOOLS_IMAGE`]: the host's program directories, read-only.
    HostTools,
}

/// The shell run inside the new namespaces before `exec`: mounts only.
fn mount_script(
    root: &Path,
    image: Image<'_>,
    mounts: &[(String, PathBuf, bool)],
    read_only_root: bool,
) -> String {
    let r = root.display().to_string();
    let at = |p: &str| sh_quote(&format!("{r}{p}"));
    let mut s = String::from("set -eu\n");
    s.push_str(&format!("mount --bind {} {}\n", sh_quote(&r), sh_quote(&r)));
    s.push_str(&format!("mount -t proc proc {}\n", at("/proc")));
    s.push_str(&format!(
        "mount -t tmpfs -o mode=0755,size=65536 dev {}\n",
        at("/dev")
    ));
    for n in DEV_NODES {
        s.push_str(&format!(
            "touch {d} && mount --bind /dev/{n} {d}\n",
            d = at(&format!("/dev/{n}"))
        ));
    }
    let tool_dirs = match image {
        Image::HostTools => HOST_TOOL_DIRS,
        Image::Agent(_) => &[],
    };
    for d in HOST_LIB_DIRS.iter().chain(tool_dirs) {
        let host = Path::new(d);
        if host.is_dir() && std::fs::read_link(host).is_err() {
            s.push_str(&format!("mount --bind -o ro {d} {}\n", at(d)));
        }
    }
    for f in HOST_FILES {
        if Path::new(f).exists() {
            s.push_str(&format!("mount --bind -o ro {f} {}\n", at(f)));
        }
    }
    if let Image::Agent(agent) = image {
        s.push_str(&format!(
            "mount --bind -o ro {} {}\n",
            sh_quote(&agent.display().to_string()),
            at("/sidekey-agent")
        ));
    }
    for (path, host, ro) in mounts {
        let opts = if *ro { "-o ro " } else { "" };
        s.push_str(&format!(
            "mkdir -p {p} && mount --bind {opts}{h} {p}\n",
            p = at(path),
            h = sh_quote(&host.display().to_string())
        ));
    }
    if read_only_root {
        s.push_str(&format!("mount -o remount,bind,ro {}\n", sh_quote(&r)));
    }
    s
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` is a literal
/// `$`, and an undefined reference stays as written.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of `name` in an ordered environment (last definition wins).
fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Reads `path` as `uid`/`gid` with no supplementary groups: proves a file is readable
/// by a user other than its owner.
pub fn read_as_uid(path: &Path, uid: u32) -> Result<String> {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path);
    let out = process::run(&format!("cat as uid {uid}"), cmd, Duration::from_secs(10))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_defined_variables_and_keeps_the_rest() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        let e = |s: &str| expand(s, |k| lookup(&env, k));
        assert_eq!(e("x$(A)y"), "x1y");
        assert_eq!(e("$(B)"), "$(B)");
        assert_eq!(e("$$(A)"), "$(A)");
        assert_eq!(e("cost $5"), "cost $5");
        assert_eq!(e("$(A"), "$(A");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    fn minter() -> (crate::tokenreview::TokenReviewApi, Minter) {
        let api = crate::tokenreview::TokenReviewApi::start().unwrap();
        let m = api.minter();
        (api, m)
    }

    /// A pod with one container and a memory emptyDir and a projected token volume.
    fn pod_with(container: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "p-", "namespace": "demo", "labels": {"app": "x"}},
            "spec": {
                "serviceAccountName": "app-sa",
                "containers": [container],
                "volumes": [
                    {"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                    {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}}]}}
                ]
            }
        })
    }

    #[test]
    fn resolves_env_and_refuses_what_it_cannot_reproduce() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_api, m) = minter();
        let c = json!({"name": "c", "image": "i", "command": ["/x"],
            "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "G", "value": "hello-$(N)"}]});
        let run = PodRun::new(
            &pod_with(c.clone()),
            m.clone(),
            "uid",
            "ca",
            Path::new("/bin/true"),
        )
        .unwrap();
        let env = run.env(&c, "c").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert!(get("N").starts_with("p-"));
        assert_eq!(get("L"), "x");
        assert_eq!(get("G"), format!("hello-{}", get("N")));

        let bad = json!({"name": "c", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]});
        assert!(run.env(&bad, "c").unwrap_err().to_string().contains("S"));
        let bad = json!({"name": "c", "env": [{"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]});
        assert!(
            run.env(&bad, "c")
                .unwrap_err()
                .to_string()
                .contains("status.phase")
        );
    }

    #[test]
    fn secret_volumes_hold_the_registered_keys_read_only_and_unknown_ones_are_refused() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_api, m) = minter();
        let c = json!({"name": "c", "image": HOST_TOOLS_IMAGE,
            "command": ["/bin/sh", "-c", "cat /ca/bundle.pem; stat -c %a /ca/bundle.pem; \
                                          touch /ca/x 2>/dev/null && echo writable || echo read-only"],
            "volumeMounts": [{"name": "ca", "mountPath": "/ca"}]});
        let mut pod = pod_with(c);
        pod["spec"]["volumes"] = json!([{"name": "ca", "secret": {"secretName": "vault-ca",
            "items": [{"key": "ca.crt", "path": "bundle.pem"}], "defaultMode": 0o444}}]);
        let mut run = PodRun::new(&pod, m.clone(), "uid", "ca", Path::new("/bin/true")).unwrap();
        let err = run
            .run("c", Duration::from_secs(20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"vault-ca\" was not registered"), "{err}");

        let mut run = PodRun::new(&pod, m, "uid", "ca", Path::new("/bin/true")).unwrap();
        let data = BTreeMap::from([("ca.crt".to_owned(), b"PEM\n".to_vec())]);
        run.add_object(ObjectKind::Secret, "vault-ca", data);
        let done = run.run("c", Duration::from_secs(20)).unwrap();
        assert_eq!(done.code(), Some(0), "{}", done.logs());
        assert_eq!(done.stdout, "PEM\n444\nread-only\n", "{}", done.logs());
    }

    #[test]
    fn runs_a_static_command_in_a_chroot_with_its_volumes_as_non_root() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // The host's `ls` is dynamically linked against the same libraries the harness
        // binds, so it runs in the chroot as the "agent binary".
        let ls = Path::new("/bin/ls");
        let (_api, m) = minter();
        let c = json!({"name": "c", "image": "i", "command": ["/sidekey-agent"],
            "args": ["-ln", "/data", "/tok/token", "/proc/1/cmdline"],
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tok", "mountPath": "/tok"}]});
        let mut run = PodRun::new(&pod_with(c), m, "uid", "ca", ls).unwrap();
        let done = run.run("c", Duration::from_secs(20)).unwrap();
        assert_eq!(done.code(), Some(0), "{}", done.logs());
        // The token is root-owned 0644, and PID 1 (the command) runs as the image user.
        let line = |suffix: &str| -> Vec<String> {
            let l = done
                .stdout
                .lines()
                .find(|l| l.ends_with(suffix))
                .unwrap_or_default();
            l.split_whitespace().take(4).map(str::to_owned).collect()
        };
        assert_eq!(
            line("/tok/token"),
            ["-rw-r--r--", "1", "0", "0"],
            "{}",
            done.stdout
        );
        assert_eq!(
            line("/proc/1/cmdline")[2..],
            ["65532", "65532"],
            "{}",
            done.stdout
        );

        // The memory volume is a tmpfs on the host side, shared by later containers.
        let data = run.volume_path("data").unwrap().to_path_buf();
        std::fs::write(data.join("f"), "x").unwrap();
        assert_eq!(read_as_uid(&data.join("f"), 1000).unwrap(), "x");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            mounts.contains(&format!("{} tmpfs", data.display())),
            "not a tmpfs"
        );
        drop(run);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&data.display().to_string()),
            "tmpfs left mounted"
        );
    }
}
