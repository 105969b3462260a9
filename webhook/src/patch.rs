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

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECS: u64 = 30;
/// Time the sidecar needs after its revoke delay to revoke its token and exit.
const REVOKE_MARGIN_SECS: u64 = 5;

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
    check_revoke_delay(spec, &config)?;
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

/// Refuses a revoke delay the pod's grace period cannot cover: the kubelet would kill
/// the sidecar before it revokes its token, leaving the credentials valid until their
/// TTL. Only the webhook sees both numbers, so the check lives here.
fn check_revoke_delay(spec: &Map<String, Value>, config: &AgentConfig) -> Result<(), String> {
    if config.revoke_delay_secs == 0 {
        return Ok(());
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_GRACE_SECS);
    let needed = config.revoke_delay_secs + REVOKE_MARGIN_SECS;
    if needed > grace {
        return Err(format!(
            "annotation \"{}{}\": a revoke delay of {}s needs terminationGracePeriodSeconds of \
             at least {needed} (the delay plus {REVOKE_MARGIN_SECS}s to revoke), but the pod has \
             {grace}: shorten the delay or raise the grace period",
            annotations::PREFIX,
            annotations::REVOKE_DELAY,
            config.revoke_delay_secs,
        ));
    }
    Ok(())
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
        match mutate(pod, &settings()) {
            Decision::Patch(patch) => patch,
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    fn patched(pod: &Value) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch_of(pod)).expect("the patch applies to its pod");
        out
    }

    fn denial(pod: &Value) -> String {
        match mutate(pod, &settings()) {
            Decision::Deny(message) => message,
            other => panic!("expected a denial, got {other:?}"),
        }
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
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-init"]);
        assert_eq!(names(&out["spec"]["containers"]), ["app", "sidekey-agent"]);
        assert_eq!(
            out["metadata"]["annotations"]["sidekey.dev/status"],
            "injected"
        );
    }

    #[test]
    fn agent_containers_carry_the_config_and_run_the_right_mode() {
        let out = patched(&pod());

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
        let out = patched(&pod());

        for c in [
            container(&out, "initContainers", "sidekey-init"),
            container(&out, "containers", "sidekey-agent"),
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
            ["sidekey-init", "migrate", "warm"]
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
            ["web", "worker", "metrics", "sidekey-agent"]
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
        let once = patched(&pod());
        assert!(matches!(
            mutate(&once, &settings()),
            Decision::Skip(SkipReason::AlreadyInjected)
        ));
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
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-init"]);
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
        assert_eq!(names(&out["spec"]["initContainers"]), ["sidekey-init"]);

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
        let config = annotations::agent_config(
            &BTreeMap::from([
                ("sidekey.dev/role".to_owned(), "app".to_owned()),
                ("sidekey.dev/secret-db".to_owned(), "secret/db".to_owned()),
            ]),
            &settings().defaults,
        )
        .expect("valid annotations");
        for pod in [
            json!({ "metadata": { "name": "a" }, "spec": { "containers": [] } }),
            json!({ "spec": { "containers": [] } }),
        ] {
            let spec = pod["spec"].as_object().expect("spec");
            let patch = build_patch(&pod, spec, &[], &config, &settings()).expect("builds");
            let mut out = pod.clone();
            json_patch::patch(&mut out, &patch).expect("applies");
            assert_eq!(
                out["metadata"]["annotations"],
                json!({ "sidekey.dev/status": "injected" })
            );
        }
    }
}
