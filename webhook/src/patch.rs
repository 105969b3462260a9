//! The admission decision for one pod, and the JSON patch that injects the agent.
//!
//! [`mutate`] is a pure function of the pod and the webhook's [`PatchSettings`]: no
//! network, no file, no clock. It answers in microseconds and does not depend on Vault
//! being reachable, which is why the whole agent configuration is derived from the
//! pod's annotations here and handed to the agent in an environment variable.
//!
//! The patch is built against the pod as it is, because RFC 6902 `add` fails on a path
//! whose parent does not exist: a missing `spec.volumes`, `volumeMounts`,
//! `spec.initContainers` or `metadata.annotations` is created whole instead of appended
//! to. Keys containing `/` are escaped (`~1`) by building every path from tokens.
//!
//! What the patch adds, for an opted-in pod:
//!
//! * volumes `sidekey-secrets` and `sidekey-state` (memory `emptyDir`s with a size
//!   limit), `sidekey-token` (a projected service-account token for audience `vault`)
//!   and, with `ca-cert`, `sidekey-ca` (one key of the user's Secret or ConfigMap);
//! * `sidekey-secrets` mounted read-only at the mount path (`/vault/secrets`) in every
//!   app container, or in the containers the `containers` annotation names;
//! * the agent, in one of three layouts ([`AgentMode`]): a native sidecar (one init
//!   container with `restartPolicy: Always` and a startup probe), an init container
//!   plus a classic sidecar, or an init container alone. Sidekey's init container goes
//!   before the pod's own init containers unless `init-first: "false"`;
//! * the annotation `sidekey.dev/status: injected`, which makes a second pass skip.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Map, Value, json};
use sidekey_agent::contract::annotations::{self, AgentMode, CaSource, Defaults, Placement};
use sidekey_agent::contract::compat;
use sidekey_agent::contract::config::{AgentConfig, CONFIG_ENV};
use sidekey_agent::contract::layout;

/// Downward-API variable carrying the pod's name, for the agent's log fields.
pub const POD_NAME_ENV: &str = "SIDEKEY_POD_NAME";
/// Downward-API variable carrying the pod's namespace, for the agent's log fields.
pub const POD_NAMESPACE_ENV: &str = "SIDEKEY_POD_NAMESPACE";

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECS: u64 = 30;
/// Time the sidecar needs after its revoke delay to revoke its token and exit.
const REVOKE_MARGIN_SECS: u64 = 5;

/// Volume names the webhook adds; a pod that already uses one is refused.
const RESERVED_VOLUMES: [&str; 4] = [
    layout::SECRETS_VOLUME,
    layout::STATE_VOLUME,
    layout::TOKEN_VOLUME,
    layout::CA_VOLUME,
];

/// How the agent is laid out by default, cluster-wide (`--sidecar-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// Native sidecars (an init container with `restartPolicy: Always`): Kubernetes
    /// 1.29 or later.
    #[default]
    Native,
    /// An init container plus a sidecar in `spec.containers`, for older clusters,
    /// whose API server would drop `restartPolicy` and leave an init container that
    /// never exits. Pods of a Job get `init-only` by default so that they complete.
    Classic,
}

/// The webhook's settings that shape every patch.
#[derive(Debug, Clone, Default)]
pub struct PatchSettings {
    /// Image of both injected containers, e.g. `ghcr.io/sidekey/agent:0.1.0`.
    pub agent_image: String,
    /// Vault address and CA that every agent inherits.
    pub defaults: Defaults,
    /// Default agent layout of the cluster.
    pub sidecar_mode: SidecarMode,
    /// Namespaces whose pods are never mutated (always `kube-system` and the
    /// webhook's own, see [`crate::config`]).
    pub excluded_namespaces: BTreeSet<String>,
}

/// What to do with a pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Admit unchanged.
    Skip(SkipReason),
    /// Admit with this patch applied. Never empty.
    Patch(Patch),
    /// Refuse. The message is shown to the person creating the pod, so it names the
    /// annotation, volume or container at fault and says what to change.
    Deny(String),
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// No `sidekey.dev/inject: "true"` annotation or label.
    NotOptedIn,
    /// The pod already carries the status annotation or the agent containers.
    AlreadyInjected,
    /// The review is not the creation of a core/v1 Pod.
    NotPodCreate,
    /// The pod's namespace is excluded (`kube-system`, the webhook's own, or listed).
    ExcludedNamespace,
}

impl SkipReason {
    /// Short stable name, used as a log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotOptedIn => "not_opted_in",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::NotPodCreate => "not_pod_create",
            SkipReason::ExcludedNamespace => "excluded_namespace",
        }
    }
}

/// Decides what to do with `pod` (the `object` of a Pod CREATE review) and builds the
/// patch that injects the agent. The namespace filter is applied by the caller
/// ([`crate::admission::decide`]), which knows the review's namespace.
///
/// Order of checks: opt-in (a malformed opt-in value is a denial), then idempotence,
/// then the annotations, then the pod's shape against them (containers named, mode,
/// grace period), then collisions with the user's own volumes and mounts.
pub fn mutate(pod: &Value, settings: &PatchSettings) -> Decision {
    match decide(pod, settings) {
        Ok(decision) => decision,
        Err(message) => Decision::Deny(name_written_keys(pod, message)),
    }
}

/// A denial of a pod written for the Vault Agent Injector names the keys its author
/// wrote: the checks here see the translated `sidekey.dev/` keys (e.g.
/// `"sidekey.dev/containers"` for `vault.hashicorp.com/agent-inject-containers`).
fn name_written_keys(pod: &Value, message: String) -> String {
    let Ok(annotations) = string_map(pod.get("metadata"), "annotations") else {
        return message;
    };
    if !compat::uses_foreign_prefix(&annotations) {
        return message;
    }
    let Ok(translation) = compat::translate_with_origins(&annotations) else {
        return message;
    };
    translation
        .origins
        .iter()
        .fold(message, |m, (ours, theirs)| {
            m.replace(&format!("{ours:?}"), &format!("{theirs:?}"))
        })
}

/// Everything [`build_patch`] needs, resolved and checked.
struct Plan<'a> {
    config: AgentConfig,
    placement: Placement,
    mode: AgentMode,
    /// Indices in `spec.containers` that get the secrets mount.
    app_targets: Vec<usize>,
    /// Indices in `spec.initContainers` that get the secrets mount.
    init_targets: Vec<usize>,
    containers: &'a [Value],
    init_containers: &'a [Value],
}

fn decide(pod: &Value, settings: &PatchSettings) -> Result<Decision, String> {
    let metadata = pod.get("metadata");
    let annotations = string_map(metadata, "annotations")?;
    let labels = string_map(metadata, "labels")?;
    // Injected by the Vault Agent Injector or the OpenBao injector: theirs.
    if compat::injected_by_incumbent(&annotations) {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }
    if !annotations::opted_in(&annotations, &labels).map_err(|e| e.to_string())? {
        return Ok(Decision::Skip(SkipReason::NotOptedIn));
    }

    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or("the pod has no spec")?;
    let containers = list(spec, "containers")?.unwrap_or_default();
    let init_containers = list(spec, "initContainers")?.unwrap_or_default();
    if already_injected(&annotations, containers, init_containers) {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }
    check_shapes(spec, containers, init_containers)?;

    let (config, placement) =
        annotations::parse(&annotations, &settings.defaults).map_err(|e| e.to_string())?;
    let mode = agent_mode(&placement, settings.sidecar_mode, owned_by_job(pod))?;
    check_revoke_delay(spec, &config, mode)?;
    let (app_targets, init_targets) = targets(&placement, containers, init_containers)?;
    let plan = Plan {
        config,
        placement,
        mode,
        app_targets,
        init_targets,
        containers,
        init_containers,
    };
    check_collisions(spec, &plan)?;

    let patch = build_patch(pod, spec, &plan, settings)?;
    Ok(Decision::Patch(patch))
}

/// A `metadata` map of strings (annotations or labels); absent or `null` is empty.
fn string_map(metadata: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(value) = metadata.and_then(|m| m.get(field)) else {
        return Ok(BTreeMap::new());
    };
    if value.is_null() {
        return Ok(BTreeMap::new());
    }
    let bad = || format!("the pod's metadata.{field} is not a map of strings");
    value
        .as_object()
        .ok_or_else(bad)?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_owned())))
        .collect()
}

/// A list field of the pod spec: `None` when absent or `null`.
fn list<'a>(spec: &'a Map<String, Value>, field: &str) -> Result<Option<&'a [Value]>, String> {
    match spec.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(format!("the pod's spec.{field} is not a list")),
    }
}

fn name_of(item: &Value) -> &str {
    item.get("name").and_then(Value::as_str).unwrap_or("")
}

fn already_injected(
    annotations: &BTreeMap<String, String>,
    containers: &[Value],
    init_containers: &[Value],
) -> bool {
    let marked = annotations
        .get(layout::STATUS_ANNOTATION)
        .is_some_and(|v| v == layout::STATUS_INJECTED);
    marked
        || containers.iter().chain(init_containers).any(|c| {
            matches!(
                name_of(c),
                layout::INIT_CONTAINER | layout::SIDECAR_CONTAINER
            )
        })
}

/// Refuses the shapes a patch cannot be built against (the API server would refuse
/// them too): containers and volumes that are not objects, mount lists that are not
/// lists.
fn check_shapes(
    spec: &Map<String, Value>,
    containers: &[Value],
    init_containers: &[Value],
) -> Result<(), String> {
    let groups = [
        ("containers", containers),
        ("initContainers", init_containers),
        ("volumes", list(spec, "volumes")?.unwrap_or_default()),
    ];
    for (field, items) in groups {
        for (i, item) in items.iter().enumerate() {
            if !item.is_object() {
                return Err(format!("the pod's spec.{field}[{i}] is not an object"));
            }
            match item.get("volumeMounts") {
                None | Some(Value::Null | Value::Array(_)) => {}
                Some(_) => {
                    return Err(format!(
                        "the pod's spec.{field}[{i}].volumeMounts is not a list"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether a Job controller owns the pod (its `ownerReferences`).
fn owned_by_job(pod: &Value) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|owners| {
            owners
                .iter()
                .any(|o| o["kind"] == "Job" && o["apiVersion"] == "batch/v1")
        })
}

/// The agent layout for this pod: the annotation, else the cluster's default, with
/// Jobs defaulting to `init-only` in classic mode so that they can complete.
fn agent_mode(placement: &Placement, cluster: SidecarMode, job: bool) -> Result<AgentMode, String> {
    match (placement.agent_mode, cluster) {
        (Some(AgentMode::NativeSidecar), SidecarMode::Classic) => Err(format!(
            "annotation \"{}{}\": native-sidecar is turned off in this cluster (the webhook \
             runs with --sidecar-mode classic, for API servers older than Kubernetes 1.29, \
             which would drop restartPolicy and leave an init container that never exits): \
             use init-and-sidecar or init-only",
            annotations::PREFIX,
            annotations::AGENT_MODE
        )),
        (Some(mode), _) => Ok(mode),
        (None, SidecarMode::Native) => Ok(AgentMode::NativeSidecar),
        (None, SidecarMode::Classic) if job => Ok(AgentMode::InitOnly),
        (None, SidecarMode::Classic) => Ok(AgentMode::InitAndSidecar),
    }
}

/// Refuses a revoke delay the pod's grace period cannot cover: the kubelet would kill
/// the sidecar before it revokes its token, leaving the credentials valid until their
/// TTL. Only the webhook sees both numbers, so the check lives here. With `init-only`
/// nothing ever revokes, so a delay would be a silent no-op: refused as well.
fn check_revoke_delay(
    spec: &Map<String, Value>,
    config: &AgentConfig,
    mode: AgentMode,
) -> Result<(), String> {
    if config.revoke_delay_secs == 0 {
        return Ok(());
    }
    let key = format!("{}{}", annotations::PREFIX, annotations::REVOKE_DELAY);
    if mode == AgentMode::InitOnly {
        return Err(format!(
            "annotation {key:?}: the agent runs as init-only here (no sidecar, so nothing \
             revokes the token at the end); remove the delay, or choose another \
             {}{}",
            annotations::PREFIX,
            annotations::AGENT_MODE
        ));
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_GRACE_SECS);
    let needed = config.revoke_delay_secs + REVOKE_MARGIN_SECS;
    if needed > grace {
        return Err(format!(
            "annotation {key:?}: a revoke delay of {}s needs terminationGracePeriodSeconds of \
             at least {needed} (the delay plus {REVOKE_MARGIN_SECS}s to revoke), but the pod has \
             {grace}: shorten the delay or raise the grace period",
            config.revoke_delay_secs,
        ));
    }
    Ok(())
}

/// The containers that get the secrets mount: every app container by default, or the
/// ones the `containers` annotation names (app or init containers). An unknown name,
/// or an init container that runs before Sidekey's, is refused.
fn targets(
    placement: &Placement,
    containers: &[Value],
    init_containers: &[Value],
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let Some(wanted) = &placement.containers else {
        return Ok(((0..containers.len()).collect(), Vec::new()));
    };
    let key = format!("{}{}", annotations::PREFIX, annotations::CONTAINERS);
    let pick = |list: &[Value]| -> Vec<usize> {
        (0..list.len())
            .filter(|&i| wanted.contains(name_of(&list[i])))
            .collect()
    };
    let app = pick(containers);
    let init = pick(init_containers);
    for name in wanted {
        let known = containers
            .iter()
            .chain(init_containers)
            .any(|c| name_of(c) == name);
        if !known {
            let mut names: Vec<&str> = containers
                .iter()
                .chain(init_containers)
                .map(name_of)
                .collect();
            names.sort_unstable();
            return Err(format!(
                "annotation {key:?}: the pod has no container or init container named \
                 {name:?} (it has {})",
                names.join(", ")
            ));
        }
    }
    if !placement.init_first
        && let Some(&i) = init.first()
    {
        return Err(format!(
            "annotation {key:?}: init container {:?} runs before Sidekey's, because \
             {}{} is \"false\", so the secrets would not be there yet: drop it from the \
             list or let Sidekey's init container run first",
            name_of(&init_containers[i]),
            annotations::PREFIX,
            annotations::INIT_FIRST
        ));
    }
    Ok((app, init))
}

/// Refuses pods whose own volumes or mounts would clash with the injected ones. Such a
/// pod would otherwise be rejected by the API server with a message about a duplicate
/// volume that the user never wrote, or would silently shadow the secrets.
fn check_collisions(spec: &Map<String, Value>, plan: &Plan<'_>) -> Result<(), String> {
    // The agent's metrics listener shares the pod's network namespace: a port a
    // container already declares would fail one of the two binds at run time.
    if let Some(port) = plan.config.metrics_port {
        let groups = [
            ("container", plan.containers),
            ("init container", plan.init_containers),
        ];
        for (kind, group) in groups {
            for container in group {
                let ports = container.get("ports").and_then(Value::as_array);
                let taken = ports
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .any(|p| {
                        p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port))
                    });
                if taken {
                    return Err(format!(
                        "annotation \"{}{}\": {kind} {:?} already declares containerPort \
                         {port}; choose a port no container of the pod uses",
                        annotations::PREFIX,
                        annotations::METRICS_PORT,
                        name_of(container)
                    ));
                }
            }
        }
    }

    let reserved = RESERVED_VOLUMES.join(", ");
    for volume in list(spec, "volumes")?.unwrap_or_default() {
        let name = name_of(volume);
        if RESERVED_VOLUMES.contains(&name) {
            return Err(format!(
                "the pod already has a volume named {name:?}; Sidekey reserves the volume \
                 names {reserved} for the volumes it injects: rename that volume"
            ));
        }
    }

    let mount_path = plan.placement.mount_path.as_str();
    let groups = [
        ("container", plan.containers, &plan.app_targets),
        ("init container", plan.init_containers, &plan.init_targets),
    ];
    for (kind, group, targets) in groups {
        for (index, container) in group.iter().enumerate() {
            let container_name = name_of(container);
            let mounts = container.get("volumeMounts").and_then(Value::as_array);
            for mount in mounts.map(Vec::as_slice).unwrap_or_default() {
                let volume = name_of(mount);
                if RESERVED_VOLUMES.contains(&volume) {
                    return Err(format!(
                        "{kind} {container_name:?} mounts volume {volume:?}, which Sidekey \
                         reserves for its own containers: remove that mount (Sidekey mounts \
                         the secrets at {mount_path} by itself)"
                    ));
                }
                let path = mount.get("mountPath").and_then(Value::as_str);
                let path = path.map(|p| {
                    if p.len() > 1 {
                        p.trim_end_matches('/')
                    } else {
                        p
                    }
                });
                if targets.contains(&index) && path == Some(mount_path) {
                    return Err(format!(
                        "{kind} {container_name:?} already mounts volume {volume:?} at \
                         {mount_path}, where Sidekey mounts the rendered secrets: move that \
                         mount, or choose another path with {}{}",
                        annotations::PREFIX,
                        annotations::MOUNT_PATH
                    ));
                }
            }
        }
    }
    Ok(())
}

fn build_patch(
    pod: &Value,
    spec: &Map<String, Value>,
    plan: &Plan<'_>,
    settings: &PatchSettings,
) -> Result<Patch, String> {
    let mut ops = Vec::with_capacity(plan.containers.len() + plan.init_containers.len() + 8);

    let mut volumes = vec![
        secrets_volume(&plan.placement.size_limit),
        state_volume(),
        token_volume(),
    ];
    if let Some(ca) = &plan.placement.ca_cert {
        volumes.push(ca_volume(ca));
    }
    if list(spec, "volumes")?.is_some() {
        for volume in volumes {
            ops.push(add(["spec", "volumes", "-"], volume));
        }
    } else {
        ops.push(add(["spec", "volumes"], Value::Array(volumes)));
    }

    let app_mount = json!({
        "name": layout::SECRETS_VOLUME,
        "mountPath": plan.placement.mount_path,
        "readOnly": true,
    });
    // Mounts first, while the indices of the pod's own init containers still hold.
    let targets = [
        ("containers", plan.containers, &plan.app_targets),
        ("initContainers", plan.init_containers, &plan.init_targets),
    ];
    for (field, group, indices) in targets {
        for &index in indices {
            let path = [Token::new("spec"), Token::new(field), Token::from(index)];
            match group[index].get("volumeMounts") {
                Some(Value::Array(_)) => {
                    let path = path
                        .into_iter()
                        .chain([Token::new("volumeMounts"), Token::new("-")]);
                    ops.push(add(path, app_mount.clone()));
                }
                _ => {
                    let path = path.into_iter().chain([Token::new("volumeMounts")]);
                    ops.push(add(path, json!([app_mount])));
                }
            }
        }
    }

    let config_json = plan.config.to_json();
    let agent = |name: &str, args: &str| {
        let mut c = agent_container(name, args, &config_json, &plan.placement, pod, settings);
        // Only the long-running agent serves metrics (`metrics-port`).
        if let (Some(port), "sidecar") = (plan.config.metrics_port, args) {
            c["ports"] = json!([{ "name": "metrics", "containerPort": port, "protocol": "TCP" }]);
        }
        c
    };
    let init = match plan.mode {
        AgentMode::NativeSidecar => {
            let mut c = agent(layout::SIDECAR_CONTAINER, "sidecar");
            c["restartPolicy"] = json!("Always");
            c["startupProbe"] = json!({
                "exec": { "command": layout::PROBE_COMMAND },
                "periodSeconds": layout::PROBE_PERIOD_SECONDS,
                "failureThreshold": layout::PROBE_FAILURE_THRESHOLD,
            });
            c
        }
        AgentMode::InitAndSidecar | AgentMode::InitOnly => agent(layout::INIT_CONTAINER, "init"),
    };
    if list(spec, "initContainers")?.is_some() {
        let at = if plan.placement.init_first { "0" } else { "-" };
        ops.push(add(["spec", "initContainers", at], init));
    } else {
        ops.push(add(["spec", "initContainers"], json!([init])));
    }
    if plan.mode == AgentMode::InitAndSidecar {
        let sidecar = agent(layout::SIDECAR_CONTAINER, "sidecar");
        if list(spec, "containers")?.is_some() {
            ops.push(add(["spec", "containers", "-"], sidecar));
        } else {
            ops.push(add(["spec", "containers"], json!([sidecar])));
        }
    }

    let status = Value::from(layout::STATUS_INJECTED);
    let metadata = pod.get("metadata").filter(|m| m.is_object());
    let has_annotations = metadata
        .and_then(|m| m.get("annotations"))
        .is_some_and(Value::is_object);
    if has_annotations {
        let path = ["metadata", "annotations", layout::STATUS_ANNOTATION];
        ops.push(add(path, status));
        // A pod opted in with an incumbent's annotations is marked injected for that
        // injector too, so that one, if it also runs, leaves the pod to Sidekey.
        let own = metadata.and_then(|m| m.get("annotations"));
        for prefix in [compat::VAULT_PREFIX, compat::OPENBAO_PREFIX] {
            let opt_in = format!("{prefix}{}", compat::AGENT_INJECT);
            if own.is_some_and(|a| a.get(&opt_in).is_some()) {
                let key = format!("{prefix}{}", compat::AGENT_INJECT_STATUS);
                ops.push(add(
                    ["metadata", "annotations", key.as_str()],
                    Value::from("injected"),
                ));
            }
        }
    } else if metadata.is_some() {
        let value = json!({ layout::STATUS_ANNOTATION: status });
        ops.push(add(["metadata", "annotations"], value));
    } else {
        let value = json!({ "annotations": { layout::STATUS_ANNOTATION: status } });
        ops.push(add(["metadata"], value));
    }

    Ok(Patch(ops))
}

fn add<'t>(path: impl IntoIterator<Item: Into<Token<'t>>>, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path),
        value,
    })
}

fn secrets_volume(size_limit: &str) -> Value {
    json!({
        "name": layout::SECRETS_VOLUME,
        "emptyDir": { "medium": "Memory", "sizeLimit": size_limit },
    })
}

fn state_volume() -> Value {
    json!({
        "name": layout::STATE_VOLUME,
        "emptyDir": { "medium": "Memory", "sizeLimit": layout::STATE_SIZE_LIMIT },
    })
}

fn token_volume() -> Value {
    json!({
        "name": layout::TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": layout::TOKEN_AUDIENCE,
                    "expirationSeconds": layout::TOKEN_EXPIRATION_SECONDS,
                    "path": layout::TOKEN_FILE,
                },
            }],
        },
    })
}

/// The `ca-cert` key, alone, from the user's Secret or ConfigMap: the key is the file.
fn ca_volume(ca: &CaSource) -> Value {
    let items = json!([{ "key": ca.key(), "path": ca.key() }]);
    match ca {
        CaSource::Secret { name, .. } => json!({
            "name": layout::CA_VOLUME,
            "secret": { "secretName": name, "items": items },
        }),
        CaSource::ConfigMap { name, .. } => json!({
            "name": layout::CA_VOLUME,
            "configMap": { "name": name, "items": items },
        }),
    }
}

/// The agent container's security context: passes the Pod Security Standard
/// "restricted". No user id unless asked for: the pod's `runAsUser`, else the image's
/// numeric USER (65532), applies, and OpenShift can assign its own range. A pod that
/// runs as root gets the image's user for the agent, which never runs as root.
fn security_context(placement: &Placement, pod: &Value) -> Value {
    let mut sc = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    let pod_user = pod
        .pointer("/spec/securityContext/runAsUser")
        .and_then(Value::as_i64);
    match placement.run_as_user {
        Some(uid) => sc["runAsUser"] = json!(uid),
        None if pod_user == Some(0) => sc["runAsUser"] = json!(layout::AGENT_USER),
        None => {}
    }
    if let Some(gid) = placement.run_as_group {
        sc["runAsGroup"] = json!(gid);
    }
    sc
}

fn resources(placement: &Placement) -> Value {
    let r = &placement.resources;
    let pairs = |cpu: &Option<String>, memory: &Option<String>| -> Map<String, Value> {
        [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), json!(v))))
            .collect()
    };
    let requests = pairs(&r.cpu_request, &r.memory_request);
    let limits = pairs(&r.cpu_limit, &r.memory_limit);
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".to_owned(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".to_owned(), Value::Object(limits));
    }
    Value::Object(out)
}

/// One injected agent container; `args` is the agent's subcommand (`init`, `sidecar`).
fn agent_container(
    name: &str,
    args: &str,
    config_json: &str,
    placement: &Placement,
    pod: &Value,
    settings: &PatchSettings,
) -> Value {
    let mut mounts = vec![
        json!({ "name": layout::SECRETS_VOLUME, "mountPath": placement.mount_path }),
        json!({ "name": layout::STATE_VOLUME, "mountPath": layout::STATE_MOUNT_PATH }),
        json!({
            "name": layout::TOKEN_VOLUME,
            "mountPath": layout::TOKEN_MOUNT_PATH,
            "readOnly": true,
        }),
    ];
    if placement.ca_cert.is_some() {
        mounts.push(json!({
            "name": layout::CA_VOLUME,
            "mountPath": layout::CA_MOUNT_PATH,
            "readOnly": true,
        }));
    }
    json!({
        "name": name,
        "image": settings.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [layout::AGENT_BINARY],
        "args": [args],
        "env": [
            { "name": CONFIG_ENV, "value": config_json },
            {
                "name": POD_NAME_ENV,
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } },
            },
            {
                "name": POD_NAMESPACE_ENV,
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } },
            },
        ],
        "volumeMounts": mounts,
        "resources": resources(placement),
        "securityContext": security_context(placement, pod),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PatchSettings {
        PatchSettings {
            agent_image: "registry.example/sidekey/agent:1.2.3".into(),
            defaults: Defaults {
                vault_addr: "https://vault.vault.svc:8200".into(),
                vault_ca_pem: Some("-----BEGIN CERTIFICATE-----\n...".into()),
            },
            ..PatchSettings::default()
        }
    }

    fn classic() -> PatchSettings {
        PatchSettings {
            sidecar_mode: SidecarMode::Classic,
            ..settings()
        }
    }

    /// An opted-in pod with the minimum of annotations and one container that has
    /// neither volumes nor mounts.
    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "app-",
                "namespace": "demo",
                "annotations": {
                    "sidekey.dev/inject": "true",
                    "sidekey.dev/role": "app",
                    "sidekey.dev/secret-db": "secret/data/db",
                },
            },
            "spec": {
                "containers": [{ "name": "app", "image": "nginx" }],
            },
        })
    }

    fn patch_of(pod: &Value) -> Patch {
        patch_with(pod, &settings())
    }

    fn patch_with(pod: &Value, settings: &PatchSettings) -> Patch {
        match mutate(pod, settings) {
            Decision::Patch(patch) => patch,
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    fn patched(pod: &Value) -> Value {
        patched_with(pod, &settings())
    }

    fn patched_with(pod: &Value, settings: &PatchSettings) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch_with(pod, settings))
            .expect("the patch applies to its pod");
        assert!(
            matches!(
                mutate(&out, settings),
                Decision::Skip(SkipReason::AlreadyInjected)
            ),
            "the webhook's own output yields no second patch"
        );
        out
    }

    fn denial(pod: &Value) -> String {
        denial_with(pod, &settings())
    }

    fn denial_with(pod: &Value, settings: &PatchSettings) -> String {
        match mutate(pod, settings) {
            Decision::Deny(message) => message,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// The pod with these extra Sidekey annotations.
    fn annotated(extra: &[(&str, &str)]) -> Value {
        let mut pod = pod();
        for (k, v) in extra {
            pod["metadata"]["annotations"][format!("sidekey.dev/{k}")] = json!(v);
        }
        pod
    }

    fn config_of(container: &Value) -> AgentConfig {
        let text = env(container, CONFIG_ENV)["value"]
            .as_str()
            .expect("a string");
        AgentConfig::from_json(text).expect("the agent reads it")
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(name_of)
            .collect()
    }

    fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
        pod["spec"][list]
            .as_array()
            .and_then(|l| l.iter().find(|c| name_of(c) == name))
            .unwrap_or_else(|| panic!("no {name} in spec.{list}"))
    }

    fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
        container["env"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == name))
            .unwrap_or_else(|| panic!("no env {name}"))
    }

    #[test]
    fn denials_of_a_translated_pod_name_the_vault_keys_it_was_written_with() {
        let mut pod = pod();
        pod["metadata"]["annotations"] = json!({
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "app",
            "vault.hashicorp.com/agent-inject-secret-db": "kv/db",
            "vault.hashicorp.com/agent-inject-containers": "nope",
        });
        let message = denial(&pod);
        assert!(
            message.contains("\"vault.hashicorp.com/agent-inject-containers\""),
            "{message}"
        );
        assert!(!message.contains("sidekey.dev/containers"), "{message}");
        // A Sidekey pod keeps its own key.
        let message = denial(&annotated(&[("containers", "nope")]));
        assert!(message.contains("\"sidekey.dev/containers\""), "{message}");
    }

    #[test]
    fn a_metrics_port_a_container_already_declares_is_denied_naming_both() {
        for list in ["containers", "initContainers"] {
            let mut pod = annotated(&[("metrics-port", "9102")]);
            pod["spec"][list] = json!([{
                "name": "web",
                "image": "nginx",
                "ports": [{ "containerPort": 8080 }, { "containerPort": 9102 }],
            }]);
            if list == "initContainers" {
                pod["spec"]["containers"] = json!([{ "name": "app", "image": "nginx" }]);
            }
            let message = denial(&pod);
            assert!(message.contains("sidekey.dev/metrics-port"), "{message}");
            assert!(message.contains("\"web\""), "{message}");
            assert!(message.contains("9102"), "{message}");
        }
        // Another port is fine.
        let mut pod = annotated(&[("metrics-port", "9103")]);
        pod["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 9102 }]);
        patch_of(&pod);
    }

    #[test]
    fn a_metrics_port_becomes_a_named_container_port_of_the_sidecar_only() {
        let pod = annotated(&[("metrics-port", "9102")]);
        for settings in [settings(), classic()] {
            let out = patched_with(&pod, &settings);
            let sidecar = ["initContainers", "containers"]
                .iter()
                .filter_map(|list| out["spec"][list].as_array())
                .flatten()
                .find(|c| c["name"] == layout::SIDECAR_CONTAINER)
                .unwrap();
            assert_eq!(
                sidecar["ports"],
                json!([{ "name": "metrics", "containerPort": 9102, "protocol": "TCP" }])
            );
            assert_eq!(config_of(sidecar).metrics_port, Some(9102));
            let init = out["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == layout::INIT_CONTAINER);
            assert!(init.is_none_or(|c| c.get("ports").is_none()));
        }
        let plain = patched(&annotated(&[]));
        assert!(plain.to_string().find("containerPort").is_none());
    }

    #[test]
    fn injects_into_a_pod_without_volumes_or_mounts() {
        let out = patched(&pod());

        assert_eq!(
            names(&out["spec"]["volumes"]),
            ["sidekey-secrets", "sidekey-state", "sidekey-token"]
        );
        assert_eq!(
            out["spec"]["volumes"][0]["emptyDir"],
            json!({ "medium": "Memory", "sizeLimit": layout::SECRETS_SIZE_LIMIT })
        );
        assert_eq!(
            out["spec"]["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"],
            json!({ "audience": "vault", "expirationSeconds": 600, "path": "token" })
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{ "name": "sidekey-secrets", "mountPath": "/vault/secrets", "readOnly": true }])
        );
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-agent"]);
        assert_eq!(names(&out["spec"]["containers"]), ["app"]);
        assert_eq!(
            out["metadata"]["annotations"]["sidekey.dev/status"],
            "injected"
        );
    }

    #[test]
    fn agent_containers_carry_the_config_and_run_the_right_mode() {
        let out = patched_with(&pod(), &classic());

        for (list, name, mode) in [
            ("initContainers", "sidekey-init", "init"),
            ("containers", "sidekey-agent", "sidecar"),
        ] {
            let c = container(&out, list, name);
            assert_eq!(c["image"], "registry.example/sidekey/agent:1.2.3");
            assert_eq!(c["command"], json!(["/sidekey-agent"]));
            assert_eq!(c["args"], json!([mode]));
            let config = env(c, CONFIG_ENV)["value"].as_str().expect("a string");
            let config = AgentConfig::from_json(config).expect("the agent reads it");
            assert_eq!(config.auth.role, "app");
            assert_eq!(config.vault.addr, "https://vault.vault.svc:8200");
            assert!(config.vault.ca_pem.is_some());
            assert_eq!(config.secrets[0].path, "secret/data/db");
            assert_eq!(
                env(c, POD_NAME_ENV)["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.name"
            );
            assert_eq!(
                env(c, POD_NAMESPACE_ENV)["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.namespace"
            );
            let mounts = &c["volumeMounts"];
            assert_eq!(
                names(mounts),
                ["sidekey-secrets", "sidekey-state", "sidekey-token"]
            );
            assert_eq!(mounts[0].get("readOnly"), None, "the agent writes secrets");
            assert_eq!(mounts[1]["mountPath"], layout::STATE_MOUNT_PATH);
            assert_eq!(mounts[2]["mountPath"], layout::TOKEN_MOUNT_PATH);
            assert_eq!(mounts[2]["readOnly"], true);
        }
    }

    #[test]
    fn agent_containers_meet_the_restricted_pod_security_standard() {
        let native = patched(&pod());
        let classic = patched_with(&pod(), &classic());

        for c in [
            container(&native, "initContainers", "sidekey-agent"),
            container(&classic, "initContainers", "sidekey-init"),
            container(&classic, "containers", "sidekey-agent"),
        ] {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            assert_eq!(sc.get("runAsUser"), None, "the image's USER applies");
            assert_eq!(sc.get("privileged"), None);
            assert_eq!(c["resources"]["limits"].get("cpu"), None);
            assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
            assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
            assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        }
    }

    #[test]
    fn puts_the_init_container_before_the_users_and_leaves_theirs_alone() {
        let mut pod = pod();
        pod["spec"]["initContainers"] = json!([
            { "name": "migrate", "image": "migrate" },
            { "name": "warm", "image": "warm", "volumeMounts": [] },
        ]);
        let out = patched(&pod);

        assert_eq!(
            names(&out["spec"]["initContainers"]),
            ["sidekey-agent", "migrate", "warm"]
        );
        assert_eq!(out["spec"]["initContainers"][1].get("volumeMounts"), None);
        assert_eq!(out["spec"]["initContainers"][2]["volumeMounts"], json!([]));
    }

    #[test]
    fn appends_to_existing_volumes_and_mounts() {
        let mut pod = pod();
        pod["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{ "name": "data", "mountPath": "/data" }]);
        let out = patched(&pod);

        assert_eq!(
            names(&out["spec"]["volumes"]),
            ["data", "sidekey-secrets", "sidekey-state", "sidekey-token"]
        );
        assert_eq!(
            names(&out["spec"]["containers"][0]["volumeMounts"]),
            ["data", "sidekey-secrets"]
        );
    }

    #[test]
    fn mounts_the_secrets_read_only_in_every_app_container() {
        let mut pod = pod();
        pod["spec"]["containers"] = json!([
            { "name": "web", "image": "web" },
            { "name": "worker", "image": "worker", "volumeMounts": [{ "name": "x", "mountPath": "/x" }] },
            { "name": "metrics", "image": "metrics", "volumeMounts": null },
        ]);
        pod["spec"]["volumes"] = json!([{ "name": "x", "emptyDir": {} }]);
        let out = patched(&pod);

        assert_eq!(
            names(&out["spec"]["containers"]),
            ["web", "worker", "metrics"]
        );
        for name in ["web", "worker", "metrics"] {
            let mounts = container(&out, "containers", name)["volumeMounts"]
                .as_array()
                .expect("mounts");
            let ours = mounts.last().expect("a mount");
            assert_eq!(ours["name"], "sidekey-secrets", "{name}");
            assert_eq!(ours["mountPath"], "/vault/secrets", "{name}");
            assert_eq!(ours["readOnly"], true, "{name}");
        }
    }

    #[test]
    fn feeding_the_output_back_yields_no_patch() {
        for settings in [settings(), classic()] {
            let once = patched_with(&pod(), &settings);
            assert!(matches!(
                mutate(&once, &settings),
                Decision::Skip(SkipReason::AlreadyInjected)
            ));
            // Also without the status annotation: the agent containers are enough.
            let mut stripped = once.clone();
            stripped["metadata"]["annotations"]
                .as_object_mut()
                .expect("annotations")
                .remove("sidekey.dev/status");
            assert!(matches!(
                mutate(&stripped, &settings),
                Decision::Skip(SkipReason::AlreadyInjected)
            ));
        }
    }

    /// A pod annotated the way the Vault Agent Injector's documentation shows.
    fn vault_pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "annotations": {
                    "vault.hashicorp.com/agent-inject": "true",
                    "vault.hashicorp.com/role": "web",
                    "vault.hashicorp.com/agent-inject-secret-db-creds": "database/creds/web",
                    "vault.hashicorp.com/agent-inject-template-db-creds":
                        "{{- with secret \"database/creds/web\" -}}\npostgres://{{ .Data.username }}:{{ .Data.password }}@db/web\n{{- end }}",
                },
            },
            "spec": { "containers": [{ "name": "web", "image": "nginx" }] },
        })
    }

    #[test]
    fn a_vault_agent_injector_pod_is_injected_and_marked_for_both_injectors() {
        let out = patched(&vault_pod());
        let annotations = &out["metadata"]["annotations"];
        assert_eq!(annotations["sidekey.dev/status"], "injected");
        assert_eq!(
            annotations["vault.hashicorp.com/agent-inject-status"], "injected",
            "the Vault Agent Injector, if it also runs, leaves the pod alone"
        );
        assert!(annotations.get("openbao.org/agent-inject-status").is_none());
        let agent = container(&out, "initContainers", "sidekey-agent");
        let config = config_of(agent);
        assert_eq!(config.auth.role, "web");
        assert_eq!(config.secrets[0].name, "db-creds");
        assert!(
            config.secrets[0]
                .template
                .as_deref()
                .is_some_and(|t| t.contains("postgres://"))
        );
    }

    #[test]
    fn pods_of_the_incumbent_injectors_are_left_alone() {
        for prefix in ["vault.hashicorp.com/", "openbao.org/"] {
            let mut pod = vault_pod();
            pod["metadata"]["annotations"][format!("{prefix}agent-inject-status")] =
                json!("injected");
            assert!(matches!(
                mutate(&pod, &settings()),
                Decision::Skip(SkipReason::AlreadyInjected)
            ));
        }
        let mut pod = vault_pod();
        pod["metadata"]["annotations"]["sidekey.dev/inject"] = json!("false");
        assert!(matches!(
            mutate(&pod, &settings()),
            Decision::Skip(SkipReason::NotOptedIn)
        ));
        let mut pod = vault_pod();
        pod["metadata"]["annotations"]["vault.hashicorp.com/agent-configmap"] = json!("cfg");
        assert!(denial(&pod).contains("vault.hashicorp.com/agent-configmap"));
    }

    #[test]
    fn skips_a_pod_that_already_runs_an_agent_container() {
        let mut pod = pod();
        pod["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({ "name": "sidekey-agent", "image": "x" }));
        assert!(matches!(
            mutate(&pod, &settings()),
            Decision::Skip(SkipReason::AlreadyInjected)
        ));
    }

    #[test]
    fn skips_pods_that_did_not_opt_in() {
        let mut pod = pod();
        pod["metadata"]["annotations"]["sidekey.dev/inject"] = json!("false");
        assert!(matches!(
            mutate(&pod, &settings()),
            Decision::Skip(SkipReason::NotOptedIn)
        ));
        let bare = json!({ "spec": { "containers": [{ "name": "app" }] } });
        assert!(matches!(
            mutate(&bare, &settings()),
            Decision::Skip(SkipReason::NotOptedIn)
        ));
    }

    #[test]
    fn a_label_opt_in_without_annotations_is_denied_for_the_missing_role() {
        let pod = json!({
            "metadata": { "name": "app", "labels": { "sidekey.dev/inject": "true" } },
            "spec": { "containers": [{ "name": "app" }] },
        });
        let message = denial(&pod);
        assert!(
            message.starts_with("annotation \"sidekey.dev/role\""),
            "{message}"
        );
    }

    #[test]
    fn opted_in_by_label_with_annotations_elsewhere_is_injected() {
        let mut pod = pod();
        let annotations = pod["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations");
        annotations.remove("sidekey.dev/inject");
        pod["metadata"]["labels"] = json!({ "sidekey.dev/inject": "true" });
        let out = patched(&pod);
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-agent"]);
    }

    #[test]
    fn denies_an_unreadable_opt_in_value_naming_the_key() {
        let mut pod = pod();
        pod["metadata"]["annotations"]["sidekey.dev/inject"] = json!("yes");
        assert!(denial(&pod).contains("sidekey.dev/inject"));
    }

    #[test]
    fn denies_an_invalid_annotation_with_its_key() {
        let mut pod = pod();
        pod["metadata"]["annotations"]["sidekey.dev/secret-db"] = json!("secret/../db");
        let message = denial(&pod);
        assert!(
            message.starts_with("annotation \"sidekey.dev/secret-db\""),
            "{message}"
        );
    }

    #[test]
    fn denies_a_user_volume_with_a_reserved_name() {
        let mut pod = pod();
        pod["spec"]["volumes"] = json!([{ "name": "sidekey-token", "emptyDir": {} }]);
        let message = denial(&pod);
        assert!(message.contains("\"sidekey-token\""), "{message}");
        assert!(message.contains("rename"), "{message}");
    }

    #[test]
    fn denies_a_user_mount_at_the_secrets_path_naming_the_container() {
        let mut pod = pod();
        pod["spec"]["volumes"] = json!([{ "name": "mine", "emptyDir": {} }]);
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{ "name": "mine", "mountPath": "/vault/secrets/" }]);
        let message = denial(&pod);
        assert!(message.contains("container \"app\""), "{message}");
        assert!(message.contains("/vault/secrets"), "{message}");
    }

    #[test]
    fn denies_a_user_mount_of_a_reserved_volume_in_an_init_container() {
        let mut pod = pod();
        pod["spec"]["initContainers"] = json!([{
            "name": "peek",
            "volumeMounts": [{ "name": "sidekey-state", "mountPath": "/peek" }],
        }]);
        let message = denial(&pod);
        assert!(message.contains("init container \"peek\""), "{message}");
        assert!(message.contains("\"sidekey-state\""), "{message}");
    }

    #[test]
    fn denies_pods_of_the_wrong_shape_without_panicking() {
        let mut numbers = pod();
        numbers["metadata"]["annotations"]["x.io/count"] = json!(3);
        assert!(denial(&numbers).contains("metadata.annotations"));

        let mut containers = pod();
        containers["spec"]["containers"] = json!({ "name": "app" });
        assert!(denial(&containers).contains("spec.containers"));

        let mut no_spec = pod();
        no_spec.as_object_mut().expect("object").remove("spec");
        assert!(denial(&no_spec).contains("spec"));

        assert!(matches!(
            mutate(&json!("not a pod"), &settings()),
            Decision::Skip(SkipReason::NotOptedIn)
        ));
    }

    #[test]
    fn denies_a_revoke_delay_the_grace_period_cannot_cover() {
        let mut pod = pod();
        pod["metadata"]["annotations"]["sidekey.dev/revoke-delay"] = json!("30s");
        let message = denial(&pod);
        assert!(
            message.starts_with("annotation \"sidekey.dev/revoke-delay\""),
            "{message}"
        );
        assert!(message.contains("at least 35"), "{message}");

        pod["spec"]["terminationGracePeriodSeconds"] = json!(35);
        let out = patched(&pod);
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-agent"]);

        pod["metadata"]["annotations"]["sidekey.dev/revoke-delay"] = json!("20s");
        pod["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("terminationGracePeriodSeconds");
        patched(&pod);
    }

    #[test]
    fn escapes_the_slash_of_the_status_annotation_key() {
        let text = serde_json::to_string(&patch_of(&pod())).expect("serializes");
        assert!(
            text.contains(r#""path":"/metadata/annotations/sidekey.dev~1status""#),
            "{text}"
        );
    }

    #[test]
    fn creates_the_annotations_map_or_metadata_when_missing() {
        // Unreachable through mutate (the role is an annotation), but build_patch must
        // still never add under a missing path.
        let (config, placement) = annotations::parse(
            &BTreeMap::from([
                ("sidekey.dev/role".to_owned(), "app".to_owned()),
                ("sidekey.dev/secret-db".to_owned(), "secret/db".to_owned()),
            ]),
            &settings().defaults,
        )
        .expect("valid annotations");
        for pod in [
            json!({ "metadata": { "name": "a" }, "spec": {} }),
            json!({ "spec": {} }),
        ] {
            let spec = pod["spec"].as_object().expect("spec");
            let plan = Plan {
                config: config.clone(),
                placement: placement.clone(),
                mode: AgentMode::InitAndSidecar,
                app_targets: Vec::new(),
                init_targets: Vec::new(),
                containers: &[],
                init_containers: &[],
            };
            let patch = build_patch(&pod, spec, &plan, &settings()).expect("builds");
            let mut out = pod.clone();
            json_patch::patch(&mut out, &patch).expect("applies");
            assert_eq!(
                out["metadata"]["annotations"],
                json!({ "sidekey.dev/status": "injected" })
            );
            assert_eq!(names(&out["spec"]["containers"]), ["sidekey-agent"]);
        }
    }

    fn job_pod() -> Value {
        let mut pod = pod();
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "batch/v1", "kind": "Job", "name": "migrate", "uid": "u",
            "controller": true,
        }]);
        pod["spec"]["restartPolicy"] = json!("Never");
        pod
    }

    #[test]
    fn native_mode_runs_one_init_container_with_restart_always_and_a_startup_probe() {
        let out = patched(&pod());
        let agent = container(&out, "initContainers", "sidekey-agent");
        assert_eq!(agent["restartPolicy"], "Always");
        assert_eq!(agent["args"], json!(["sidecar"]));
        assert_eq!(
            agent["startupProbe"],
            json!({
                "exec": { "command": ["/sidekey-agent", "probe"] },
                "periodSeconds": 1,
                "failureThreshold": layout::PROBE_FAILURE_THRESHOLD,
            })
        );
        assert_eq!(config_of(agent).state_dir, layout::STATE_MOUNT_PATH);
        assert_eq!(names(&out["spec"]["containers"]), ["app"]);
    }

    #[test]
    fn classic_mode_pairs_an_init_container_and_a_sidecar_without_probes() {
        let out = patched_with(&pod(), &classic());
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-init"]);
        assert_eq!(names(&out["spec"]["containers"]), ["app", "sidekey-agent"]);
        for c in [
            container(&out, "initContainers", "sidekey-init"),
            container(&out, "containers", "sidekey-agent"),
        ] {
            assert_eq!(c.get("restartPolicy"), None);
            assert_eq!(c.get("startupProbe"), None);
        }
    }

    #[test]
    fn job_pods_get_init_only_in_classic_mode_and_a_native_sidecar_otherwise() {
        let out = patched_with(&job_pod(), &classic());
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-init"]);
        assert_eq!(names(&out["spec"]["containers"]), ["app"]);
        assert_eq!(
            container(&out, "initContainers", "sidekey-init")["args"],
            json!(["init"])
        );

        let out = patched(&job_pod());
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-agent"]);

        // Owned by something else called Job: not a batch Job.
        let mut other = job_pod();
        other["metadata"]["ownerReferences"][0]["apiVersion"] = json!("example.io/v1");
        let out = patched_with(&other, &classic());
        assert_eq!(names(&out["spec"]["containers"]), ["app", "sidekey-agent"]);
    }

    #[test]
    fn agent_mode_annotation_chooses_the_layout() {
        let cases = [
            ("native-sidecar", vec!["sidekey-agent"], vec!["app"]),
            (
                "init-and-sidecar",
                vec!["sidekey-init"],
                vec!["app", "sidekey-agent"],
            ),
            ("init-only", vec!["sidekey-init"], vec!["app"]),
        ];
        for (mode, init, app) in cases {
            let out = patched(&annotated(&[("agent-mode", mode)]));
            assert_eq!(names(&out["spec"]["initContainers"]), init, "{mode}");
            assert_eq!(names(&out["spec"]["containers"]), app, "{mode}");
        }
        let out = patched_with(&job_pod(), &classic());
        assert_eq!(names(&out["spec"]["containers"]), ["app"]);
        let mut job = job_pod();
        job["metadata"]["annotations"]["sidekey.dev/agent-mode"] = json!("init-and-sidecar");
        let out = patched_with(&job, &classic());
        assert_eq!(names(&out["spec"]["containers"]), ["app", "sidekey-agent"]);
    }

    #[test]
    fn agent_mode_native_sidecar_is_denied_on_a_classic_cluster() {
        let message = denial_with(&annotated(&[("agent-mode", "native-sidecar")]), &classic());
        assert!(
            message.starts_with("annotation \"sidekey.dev/agent-mode\""),
            "{message}"
        );
        assert!(message.contains("1.29"), "{message}");
    }

    #[test]
    fn init_first_false_puts_sidekeys_init_container_last() {
        for (settings, name) in [(settings(), "sidekey-agent"), (classic(), "sidekey-init")] {
            let mut pod = annotated(&[("init-first", "false")]);
            pod["spec"]["initContainers"] = json!([{ "name": "istio-init", "image": "i" }]);
            let out = patched_with(&pod, &settings);
            assert_eq!(names(&out["spec"]["initContainers"]), ["istio-init", name]);
        }
        let mut pod = pod();
        pod["spec"]["initContainers"] = json!([{ "name": "istio-init", "image": "i" }]);
        let out = patched(&pod);
        assert_eq!(
            names(&out["spec"]["initContainers"]),
            ["sidekey-agent", "istio-init"]
        );
    }

    #[test]
    fn containers_annotation_mounts_only_the_named_app_and_init_containers() {
        let mut pod = annotated(&[("containers", "web,migrate")]);
        pod["spec"]["containers"] = json!([
            { "name": "web", "image": "w" },
            { "name": "proxy", "image": "p" },
        ]);
        pod["spec"]["initContainers"] = json!([
            { "name": "migrate", "image": "m" },
            { "name": "other", "image": "o", "volumeMounts": [] },
        ]);
        let out = patched(&pod);
        let mounted = |list: &str, name: &str| {
            container(&out, list, name)["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["name"] == "sidekey-secrets"))
        };
        assert!(mounted("containers", "web"));
        assert!(!mounted("containers", "proxy"));
        assert!(mounted("initContainers", "migrate"));
        assert!(!mounted("initContainers", "other"));
        assert_eq!(
            names(&out["spec"]["initContainers"]),
            ["sidekey-agent", "migrate", "other"]
        );
    }

    #[test]
    fn containers_annotation_naming_an_unknown_container_is_denied() {
        let message = denial(&annotated(&[("containers", "app,wbe")]));
        assert!(
            message.starts_with("annotation \"sidekey.dev/containers\""),
            "{message}"
        );
        assert!(message.contains("\"wbe\""), "{message}");
        assert!(message.contains("it has app"), "{message}");
    }

    #[test]
    fn containers_annotation_naming_an_init_container_that_runs_first_is_denied() {
        let mut pod = annotated(&[("containers", "migrate"), ("init-first", "false")]);
        pod["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "m" }]);
        let message = denial(&pod);
        assert!(
            message.starts_with("annotation \"sidekey.dev/containers\""),
            "{message}"
        );
        assert!(message.contains("init-first"), "{message}");
    }

    #[test]
    fn mount_path_moves_the_mount_in_the_app_and_the_agent() {
        let out = patched(&annotated(&[("mount-path", "/run/secrets/app")]));
        let app = container(&out, "containers", "app");
        assert_eq!(app["volumeMounts"][0]["mountPath"], "/run/secrets/app");
        let agent = container(&out, "initContainers", "sidekey-agent");
        assert_eq!(agent["volumeMounts"][0]["mountPath"], "/run/secrets/app");
        assert_eq!(config_of(agent).secrets_dir, "/run/secrets/app");
    }

    #[test]
    fn mount_path_taken_by_a_chosen_container_is_denied_and_elsewhere_allowed() {
        let mut pod = annotated(&[("mount-path", "/etc/app")]);
        pod["spec"]["volumes"] = json!([{ "name": "conf", "configMap": { "name": "c" } }]);
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{ "name": "conf", "mountPath": "/etc/app" }]);
        let message = denial(&pod);
        assert!(message.contains("container \"app\""), "{message}");
        assert!(message.contains("sidekey.dev/mount-path"), "{message}");

        // The same mount in a container that does not get the secrets is fine.
        pod["spec"]["containers"] = json!([
            { "name": "app", "image": "a" },
            { "name": "sidecar", "image": "s",
              "volumeMounts": [{ "name": "conf", "mountPath": "/etc/app" }] },
        ]);
        pod["metadata"]["annotations"]["sidekey.dev/containers"] = json!("app");
        patched(&pod);
    }

    #[test]
    fn size_limit_sets_the_secrets_volume_limit() {
        let out = patched(&annotated(&[("size-limit", "128Mi")]));
        assert_eq!(out["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "128Mi");
        let message = denial(&annotated(&[("size-limit", "4Gi")]));
        assert!(
            message.starts_with("annotation \"sidekey.dev/size-limit\""),
            "{message}"
        );
    }

    #[test]
    fn revoke_delay_is_denied_for_init_only() {
        let mut pod = annotated(&[("revoke-delay", "5s")]);
        pod["spec"]["terminationGracePeriodSeconds"] = json!(60);
        patched(&pod);
        pod["metadata"]["annotations"]["sidekey.dev/agent-mode"] = json!("init-only");
        let message = denial(&pod);
        assert!(
            message.starts_with("annotation \"sidekey.dev/revoke-delay\""),
            "{message}"
        );
        assert!(message.contains("init-only"), "{message}");
        let mut job = job_pod();
        job["metadata"]["annotations"]["sidekey.dev/revoke-delay"] = json!("5s");
        job["spec"]["terminationGracePeriodSeconds"] = json!(60);
        assert!(denial_with(&job, &classic()).contains("init-only"));
    }

    #[test]
    fn agent_resource_annotations_set_requests_and_limits() {
        let out = patched(&annotated(&[
            ("agent-cpu-request", "50m"),
            ("agent-cpu-limit", "200m"),
            ("agent-memory-request", "32Mi"),
            ("agent-memory-limit", "96Mi"),
        ]));
        let agent = container(&out, "initContainers", "sidekey-agent");
        assert_eq!(
            agent["resources"],
            json!({
                "requests": { "cpu": "50m", "memory": "32Mi" },
                "limits": { "cpu": "200m", "memory": "96Mi" },
            })
        );
        let out = patched(&pod());
        assert_eq!(
            container(&out, "initContainers", "sidekey-agent")["resources"],
            json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } })
        );
        for key in [
            "agent-cpu-request",
            "agent-cpu-limit",
            "agent-memory-request",
            "agent-memory-limit",
        ] {
            let message = denial(&annotated(&[(key, "plenty")]));
            assert!(
                message.starts_with(&format!("annotation \"sidekey.dev/{key}\"")),
                "{message}"
            );
        }
    }

    #[test]
    fn run_as_user_and_group_set_the_agents_ids_and_root_pods_get_the_image_user() {
        let out = patched_with(
            &annotated(&[("run-as-user", "1000"), ("run-as-group", "3000")]),
            &classic(),
        );
        for c in [
            container(&out, "initContainers", "sidekey-init"),
            container(&out, "containers", "sidekey-agent"),
        ] {
            assert_eq!(c["securityContext"]["runAsUser"], 1000);
            assert_eq!(c["securityContext"]["runAsGroup"], 3000);
        }
        let mut root = pod();
        root["spec"]["securityContext"] = json!({ "runAsUser": 0 });
        let out = patched(&root);
        let sc = &container(&out, "initContainers", "sidekey-agent")["securityContext"];
        assert_eq!(sc["runAsUser"], layout::AGENT_USER);
        let mut user = pod();
        user["spec"]["securityContext"] = json!({ "runAsUser": 1001 });
        let out = patched(&user);
        let sc = &container(&out, "initContainers", "sidekey-agent")["securityContext"];
        assert_eq!(sc.get("runAsUser"), None, "the pod's user applies");
        let message = denial(&annotated(&[("run-as-user", "0")]));
        assert!(
            message.starts_with("annotation \"sidekey.dev/run-as-user\""),
            "{message}"
        );
    }

    #[test]
    fn ca_cert_mounts_one_key_into_the_agent_only() {
        for (value, source) in [
            (
                "secret:vault-tls/ca.crt",
                json!({ "secret": { "secretName": "vault-tls",
                "items": [{ "key": "ca.crt", "path": "ca.crt" }] } }),
            ),
            (
                "configmap:vault-ca/ca.crt",
                json!({ "configMap": { "name": "vault-ca",
                "items": [{ "key": "ca.crt", "path": "ca.crt" }] } }),
            ),
        ] {
            let out = patched(&annotated(&[("ca-cert", value)]));
            let volume = out["spec"]["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == "sidekey-ca"))
                .expect("a CA volume");
            let mut want = source.clone();
            want["name"] = json!("sidekey-ca");
            assert_eq!(volume, &want);
            let agent = container(&out, "initContainers", "sidekey-agent");
            let mount = agent["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "sidekey-ca"))
                .expect("mounted in the agent");
            assert_eq!(mount["mountPath"], layout::CA_MOUNT_PATH);
            assert_eq!(mount["readOnly"], true);
            let config = config_of(agent);
            assert_eq!(config.vault.ca_file.as_deref(), Some("/sidekey/ca/ca.crt"));
            assert_eq!(config.vault.ca_pem, None);
            let app = container(&out, "containers", "app");
            assert_eq!(names(&app["volumeMounts"]), ["sidekey-secrets"]);
        }
        let mut pod = annotated(&[("ca-cert", "secret:x/ca.crt")]);
        pod["spec"]["volumes"] = json!([{ "name": "sidekey-ca", "emptyDir": {} }]);
        assert!(denial(&pod).contains("\"sidekey-ca\""));
        assert!(
            denial(&annotated(&[("ca-cert", "/etc/ca.pem")]))
                .starts_with("annotation \"sidekey.dev/ca-cert\"")
        );
    }

    #[test]
    fn vault_connection_annotations_reach_the_agent_config() {
        let out = patched(&annotated(&[
            ("vault-addr", "https://vault.team.svc:8200"),
            ("vault-namespace", "team-a"),
            ("tls-server-name", "vault.internal"),
            ("auth-method", "jwt"),
            ("auth-path", "auth/jwt-prod"),
        ]));
        let config = config_of(container(&out, "initContainers", "sidekey-agent"));
        assert_eq!(config.vault.addr, "https://vault.team.svc:8200");
        assert_eq!(config.vault.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            config.vault.tls_server_name.as_deref(),
            Some("vault.internal")
        );
        assert!(
            config.vault.ca_pem.is_some(),
            "the webhook's CA still applies"
        );
        assert_eq!(
            config.auth.method,
            sidekey_agent::contract::config::AuthMethod::Jwt
        );
        assert_eq!(config.auth.mount_path, "auth/jwt-prod");
        assert_eq!(config.auth.role, "app");
        for key in [
            "vault-addr",
            "vault-namespace",
            "tls-server-name",
            "auth-method",
            "auth-path",
            "role",
        ] {
            let message = denial(&annotated(&[(key, "not valid at all")]));
            assert!(
                message.starts_with(&format!("annotation \"sidekey.dev/{key}\"")),
                "{message}"
            );
        }
    }

    #[test]
    fn per_secret_annotations_reach_the_agent_config() {
        let out = patched(&annotated(&[
            ("secret-api", "secret/data/api"),
            ("file-db", "db/config.yaml"),
            ("perms-db", "0440"),
            ("format-db", "yaml"),
            ("format-api", "key:token"),
            ("refresh", "1m"),
            ("refresh-api", "30s"),
            ("notify-api", "http://localhost:8080/reload"),
        ]));
        let config = config_of(container(&out, "initContainers", "sidekey-agent"));
        use sidekey_agent::contract::config::Format;
        let by = |n: &str| config.secrets.iter().find(|s| s.name == n).expect("secret");
        assert_eq!(by("db").file, "db/config.yaml");
        assert_eq!(by("db").mode, 0o440);
        assert_eq!(by("db").format, Format::Yaml);
        assert_eq!(by("api").format, Format::Key("token".into()));
        assert_eq!(by("api").refresh_secs, Some(30));
        assert!(by("api").notify.is_some());
        assert_eq!(config.refresh_secs, 60);
        for (key, value) in [
            ("file-db", "../../etc/passwd"),
            ("perms-db", "0044"),
            ("format-db", "toml"),
            ("refresh-db", "never"),
            ("notify-db", "ftp://x"),
            ("secret-db", "a/../b"),
        ] {
            let message = denial(&annotated(&[(key, value)]));
            assert!(
                message.starts_with(&format!("annotation \"sidekey.dev/{key}\"")),
                "{message}"
            );
        }
    }

    #[test]
    fn malformed_containers_and_mount_lists_are_denied_not_panicked_on() {
        let mut pod = pod();
        pod["spec"]["containers"] = json!(["app"]);
        assert!(denial(&pod).contains("spec.containers[0]"));
        let mut pod = self::pod();
        pod["spec"]["containers"][0]["volumeMounts"] = json!({ "name": "x" });
        assert!(denial(&pod).contains("volumeMounts"));
    }
}
