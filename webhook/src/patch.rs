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
//! * volumes `sidekey-secrets` and `sidekey-state` (memory `emptyDir`s with a size limit)
//!   and `sidekey-token` (a projected service-account token for audience `vault`);
//! * `sidekey-secrets` mounted read-only at `/vault/secrets` in every app container
//!   (`spec.containers`; the user's own init containers are left alone for now);
//! * the init container `sidekey-init` as the first init container, so it has rendered
//!   every secret before anything else in the pod starts;
//! * the sidecar `sidekey-agent`, appended to `spec.containers`;
//! * the annotation `sidekey.dev/status: injected`, which makes a second pass skip.

use std::collections::BTreeMap;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Map, Value, json};
use sidekey_agent::contract::annotations::{self, Defaults};
use sidekey_agent::contract::config::{AgentConfig, CONFIG_ENV};
use sidekey_agent::contract::layout;

/// Downward-API variable carrying the pod's name, for the agent's log fields.
pub const POD_NAME_ENV: &str = "SIDEKEY_POD_NAME";
/// Downward-API variable carrying the pod's namespace, for the agent's log fields.
pub const POD_NAMESPACE_ENV: &str = "SIDEKEY_POD_NAMESPACE";

/// Volume names the webhook adds; a pod that already uses one is refused.
const RESERVED_VOLUMES: [&str; 3] = [
    layout::SECRETS_VOLUME,
    layout::STATE_VOLUME,
    layout::TOKEN_VOLUME,
];

/// The webhook's settings that shape every patch.
#[derive(Debug, Clone)]
pub struct PatchSettings {
    /// Image of both injected containers, e.g. `ghcr.io/sidekey/agent:0.1.0`.
    pub agent_image: String,
    /// Vault address and CA that every agent inherits.
    pub defaults: Defaults,
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
}

impl SkipReason {
    /// Short stable name, used as a log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotOptedIn => "not_opted_in",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::NotPodCreate => "not_pod_create",
        }
    }
}

/// Decides what to do with `pod` (the `object` of a Pod CREATE review) and builds the
/// patch that injects the agent.
///
/// Order of checks: opt-in (a malformed opt-in value is a denial), then idempotence,
/// then the annotations, then collisions with the user's own volumes and mounts.
pub fn mutate(pod: &Value, settings: &PatchSettings) -> Decision {
    match decide(pod, settings) {
        Ok(decision) => decision,
        Err(message) => Decision::Deny(message),
    }
}

fn decide(pod: &Value, settings: &PatchSettings) -> Result<Decision, String> {
    let metadata = pod.get("metadata");
    let annotations = string_map(metadata, "annotations")?;
    let labels = string_map(metadata, "labels")?;
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

    let config =
        annotations::agent_config(&annotations, &settings.defaults).map_err(|e| e.to_string())?;
    check_collisions(spec, containers, init_containers)?;

    let patch = build_patch(pod, spec, containers, &config, settings)?;
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

/// Refuses pods whose own volumes or mounts would clash with the injected ones. Such a
/// pod would otherwise be rejected by the API server with a message about a duplicate
/// volume that the user never wrote, or would silently shadow the secrets.
fn check_collisions(
    spec: &Map<String, Value>,
    containers: &[Value],
    init_containers: &[Value],
) -> Result<(), String> {
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

    let groups = [
        ("container", containers),
        ("init container", init_containers),
    ];
    for (kind, group) in groups {
        for container in group {
            let container_name = name_of(container);
            let mounts = container.get("volumeMounts").and_then(Value::as_array);
            for mount in mounts.map(Vec::as_slice).unwrap_or_default() {
                let volume = name_of(mount);
                if RESERVED_VOLUMES.contains(&volume) {
                    return Err(format!(
                        "{kind} {container_name:?} mounts volume {volume:?}, which Sidekey \
                         reserves for its own containers: remove that mount (Sidekey mounts \
                         the secrets at {} by itself)",
                        layout::SECRETS_MOUNT_PATH
                    ));
                }
                let path = mount.get("mountPath").and_then(Value::as_str);
                let path = path.map(|p| p.trim_end_matches('/'));
                if kind == "container" && path == Some(layout::SECRETS_MOUNT_PATH) {
                    return Err(format!(
                        "container {container_name:?} already mounts volume {volume:?} at {}, \
                         where Sidekey mounts the rendered secrets: move that mount",
                        layout::SECRETS_MOUNT_PATH
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
    containers: &[Value],
    config: &AgentConfig,
    settings: &PatchSettings,
) -> Result<Patch, String> {
    let mut ops = Vec::with_capacity(containers.len() + 8);

    let volumes = [secrets_volume(), state_volume(), token_volume()];
    if list(spec, "volumes")?.is_some() {
        for volume in volumes {
            ops.push(add(["spec", "volumes", "-"], volume));
        }
    } else {
        ops.push(add(["spec", "volumes"], Value::Array(volumes.into())));
    }

    let app_mount = json!({
        "name": layout::SECRETS_VOLUME,
        "mountPath": layout::SECRETS_MOUNT_PATH,
        "readOnly": true,
    });
    for (index, container) in containers.iter().enumerate() {
        let index = Token::from(index);
        let path = [Token::new("spec"), Token::new("containers"), index];
        match container.get("volumeMounts") {
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

    let config_json = config.to_json();
    let init = agent_container(layout::INIT_CONTAINER, "init", &config_json, settings);
    if list(spec, "initContainers")?.is_some() {
        ops.push(add(["spec", "initContainers", "0"], init));
    } else {
        ops.push(add(["spec", "initContainers"], json!([init])));
    }
    let sidecar = agent_container(layout::SIDECAR_CONTAINER, "sidecar", &config_json, settings);
    ops.push(add(["spec", "containers", "-"], sidecar));

    let status = Value::from(layout::STATUS_INJECTED);
    let metadata = pod.get("metadata").filter(|m| m.is_object());
    let has_annotations = metadata
        .and_then(|m| m.get("annotations"))
        .is_some_and(Value::is_object);
    if has_annotations {
        let path = ["metadata", "annotations", layout::STATUS_ANNOTATION];
        ops.push(add(path, status));
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

fn secrets_volume() -> Value {
    json!({
        "name": layout::SECRETS_VOLUME,
        "emptyDir": { "medium": "Memory", "sizeLimit": layout::SECRETS_SIZE_LIMIT },
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

/// One injected agent container; `mode` is the agent's subcommand (`init`, `sidecar`).
fn agent_container(name: &str, mode: &str, config_json: &str, settings: &PatchSettings) -> Value {
    json!({
        "name": name,
        "image": settings.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [layout::AGENT_BINARY],
        "args": [mode],
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
        "volumeMounts": [
            { "name": layout::SECRETS_VOLUME, "mountPath": layout::SECRETS_MOUNT_PATH },
            { "name": layout::STATE_VOLUME, "mountPath": layout::STATE_MOUNT_PATH },
            {
                "name": layout::TOKEN_VOLUME,
                "mountPath": layout::TOKEN_MOUNT_PATH,
                "readOnly": true,
            },
        ],
        // Sized for a small Rust binary. No CPU limit: throttling the init container
        // only delays the pod's start.
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "memory": "64Mi" },
        },
        // Passes the Pod Security Standard "restricted". No runAsUser: the image's
        // numeric USER (65532) applies, and OpenShift can still assign its own range.
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}
