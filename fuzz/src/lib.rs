//! Input generators and the checks shared by the fuzz targets.
//!
//! Raw bytes rarely get past the opt-in check or the annotation key table, so the
//! structured targets build their input from [`arbitrary`] choices: keys from the real
//! annotation table with a secret name, values from a dictionary of plausible ones,
//! and free text everywhere else. libFuzzer's coverage feedback then steers the
//! choices.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use sidekey_agent::contract::annotations::{self, Defaults, PREFIX, TABLE};
use sidekey_agent::contract::config::{AgentConfig, CONFIG_ENV};
use sidekey_webhook::admission;
use sidekey_webhook::patch::{Decision, PatchSettings, SidecarMode, SkipReason};

/// Values that get past most checks, so the fuzzer reaches what comes after them.
const VALUES: &[&str] = &[
    "true",
    "false",
    "app",
    "secret/data/app",
    "secret/app",
    "pki/issue/web",
    "database/creds/ro",
    "db/config.json",
    "db",
    "a/b/c",
    "../escape",
    "/etc/passwd",
    "./x",
    "a//b",
    "0440",
    "400",
    "0o600",
    "0777",
    "4755",
    "json",
    "yaml",
    "dotenv",
    "properties",
    "key:password",
    "key:",
    "30s",
    "5m",
    "1h30m",
    "0s",
    "8d",
    "http://localhost:8080/-/reload",
    "http://127.0.0.1:9/x",
    "signal:SIGHUP:app",
    "exec:[\"/bin/true\",\"x\"]",
    "exec:[]",
    "common_name=app.demo.svc,ttl=1h",
    "a=1,a=2",
    "web",
    "web,sidecar,setup",
    "/run/secrets/app",
    "/vault/secrets",
    "/",
    "native-sidecar",
    "init-and-sidecar",
    "init-only",
    "16Mi",
    "1Gi",
    "2Gi",
    "50m",
    "100m",
    "64",
    "8Mi",
    "1000",
    "0",
    "-1",
    "https://vault.example:8200",
    "http://v:8200/",
    "https://u:p@v",
    "team-a",
    "org/team-a",
    "secret:ca/ca.crt",
    "configmap:ca/ca.pem",
    "auth/k8s-prod",
    "kubernetes",
    "jwt",
    "vault.example",
    "{{ with secret \"secret/data/a\" }}{{ .Data.data.password }}{{ end }}",
    "{{ range $k, $v := (secret \"secret/data/a\").Data.data }}{{ $k }}={{ $v }}\n{{ end }}",
    "{{ with pkiCert \"pki/issue/web\" \"common_name=a.example\" }}{{ .Cert }}{{ end }}",
    "{{ .Data",
    "",
];

/// Keys of the Vault Agent Injector's and OpenBao's annotations Sidekey translates or
/// refuses (after `vault.hashicorp.com/` or `openbao.org/`); per-secret ones end in `-`.
const FOREIGN_KEYS: &[&str] = &[
    "agent-inject",
    "agent-inject-status",
    "role",
    "auth-path",
    "namespace",
    "service",
    "tls-skip-verify",
    "ca-cert",
    "tls-secret",
    "agent-pre-populate-only",
    "agent-pre-populate",
    "agent-init-first",
    "agent-revoke-on-shutdown",
    "agent-revoke-grace",
    "agent-run-as-user",
    "agent-run-as-group",
    "agent-limits-cpu",
    "agent-requests-mem",
    "agent-configmap",
    "agent-cache-enable",
    "agent-inject-default-template",
    "template-static-secret-render-interval",
    "secret-volume-path",
    "agent-inject-secret-",
    "agent-inject-template-",
    "agent-inject-template-file-",
    "agent-inject-file-",
    "agent-inject-perms-",
    "agent-inject-command-",
    "secret-volume-path-",
    "agent-template-left-delim-",
    "agent-template-right-delim-",
    "error-on-missing-key-",
];

/// Secret names: a few fixed ones make per-secret options meet their secret.
const NAMES: &[&str] = &["a", "db", "web.tls", "x_1", "B", "a.", "-", ""];

/// Container names, Sidekey's own included (an already-injected pod).
const CONTAINERS: &[&str] = &[
    "web",
    "sidecar",
    "setup",
    "sidekey-agent",
    "sidekey-init",
    "",
];

/// Volume names, Sidekey's own included (a collision).
const VOLUMES: &[&str] = &[
    "data",
    "sidekey-secrets",
    "sidekey-state",
    "sidekey-token",
    "sidekey-ca",
    "kube-api-access-x",
];

/// Mount paths, the secrets directory and its neighbours included.
const MOUNT_PATHS: &[&str] = &[
    "/data",
    "/vault/secrets",
    "/vault",
    "/vault/secrets/db",
    "/run/secrets/app",
    "/sidekey/state",
    "/var/run/secrets/kubernetes.io/serviceaccount",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> arbitrary::Result<&'a str> {
    Ok(*u.choose(from)?)
}

/// A string from `dict` or free text.
fn text(u: &mut Unstructured<'_>, dict: &[&str]) -> arbitrary::Result<String> {
    Ok(if u.ratio(3, 4)? {
        pick(u, dict)?.to_owned()
    } else {
        String::arbitrary(u)?
    })
}

/// An annotation key: a known one (with a secret name when per-secret), any key under
/// the prefix, or any key at all.
fn annotation_key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=11)? {
        0 => format!("{PREFIX}{}", String::arbitrary(u)?),
        1 => String::arbitrary(u)?,
        2 | 3 => {
            let prefix = pick(u, &["vault.hashicorp.com/", "openbao.org/"])?;
            let key = pick(u, FOREIGN_KEYS)?;
            let name = if key.ends_with('-') {
                text(u, NAMES)?
            } else {
                String::new()
            };
            format!("{prefix}{key}{name}")
        }
        _ => {
            let a = u.choose(TABLE)?;
            if a.per_secret {
                format!("{PREFIX}{}{}", a.key, text(u, NAMES)?)
            } else {
                format!("{PREFIX}{}", a.key)
            }
        }
    })
}

/// Annotations of a pod; mostly opted in, with a role and one secret, so that the
/// parser gets past its first checks.
pub fn annotations(u: &mut Unstructured<'_>) -> arbitrary::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    if u.ratio(7, 8)? {
        map.insert(format!("{PREFIX}inject"), "true".to_owned());
        map.insert(format!("{PREFIX}role"), "app".to_owned());
        map.insert(format!("{PREFIX}secret-a"), "secret/data/a".to_owned());
    }
    let count = u.int_in_range(0..=24)?;
    for _ in 0..count {
        let key = annotation_key(u)?;
        let value = text(u, VALUES)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// The webhook's settings in either sidecar mode.
pub fn settings(u: &mut Unstructured<'_>) -> arbitrary::Result<PatchSettings> {
    Ok(PatchSettings {
        agent_image: "registry.example/sidekey/agent:fuzz".into(),
        defaults: Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: u.arbitrary::<bool>()?.then(|| "PEM".to_owned()),
        },
        sidecar_mode: if u.arbitrary()? {
            SidecarMode::Classic
        } else {
            SidecarMode::Native
        },
        excluded_namespaces: ["kube-system".to_owned(), "sidekey".to_owned()].into(),
    })
}

/// A small JSON value of any shape, for fields whose type the pod's author got wrong.
fn junk(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let kind = if depth >= 4 {
        u.int_in_range(0..=3)?
    } else {
        u.int_in_range(0..=5)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(i64::arbitrary(u)?),
        3 => Value::String(text(u, VALUES)?),
        4 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array(
                (0..n)
                    .map(|_| junk(u, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(
                    text(u, &["name", "mountPath", "readOnly"])?,
                    junk(u, depth + 1)?,
                );
            }
            Value::Object(m)
        }
    })
}

fn container(u: &mut Unstructured<'_>, init: bool) -> arbitrary::Result<Value> {
    let mut c = Map::new();
    c.insert("name".into(), json!(text(u, CONTAINERS)?));
    c.insert("image".into(), json!("app:1"));
    match u.int_in_range(0..=4)? {
        0 => {}
        1 => {
            c.insert("volumeMounts".into(), Value::Null);
        }
        2 => {
            c.insert("volumeMounts".into(), junk(u, 1)?);
        }
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut mounts = Vec::new();
            for _ in 0..n {
                mounts.push(json!({
                    "name": text(u, VOLUMES)?,
                    "mountPath": text(u, MOUNT_PATHS)?,
                }));
            }
            c.insert("volumeMounts".into(), Value::Array(mounts));
        }
    }
    if init && u.ratio(1, 4)? {
        c.insert("restartPolicy".into(), json!("Always"));
    }
    if u.ratio(1, 4)? {
        c.insert(
            "securityContext".into(),
            json!({ "runAsUser": u.int_in_range(-1..=70000)? }),
        );
    }
    Ok(Value::Object(c))
}

/// A pod: annotations as above, containers, init containers and volumes that may
/// collide with Sidekey's, Job ownership, a grace period, and now and then a field of
/// the wrong type.
pub fn pod(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let annotations = annotations(u)?;
    let mut labels = Map::new();
    if u.ratio(1, 8)? {
        labels.insert(format!("{PREFIX}inject"), json!(text(u, VALUES)?));
    }
    let mut spec = Map::new();
    let n = u.int_in_range(0..=3)?;
    let containers = (0..n)
        .map(|_| container(u, false))
        .collect::<Result<Vec<_>, _>>()?;
    spec.insert("containers".into(), Value::Array(containers));
    let n = u.int_in_range(0..=2)?;
    if n > 0 {
        let init = (0..n)
            .map(|_| container(u, true))
            .collect::<Result<Vec<_>, _>>()?;
        spec.insert("initContainers".into(), Value::Array(init));
    }
    let n = u.int_in_range(0..=2)?;
    if n > 0 {
        let volumes = (0..n)
            .map(|_| Ok(json!({ "name": text(u, VOLUMES)?, "emptyDir": {} })))
            .collect::<arbitrary::Result<Vec<_>>>()?;
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    if u.arbitrary()? {
        spec.insert(
            "terminationGracePeriodSeconds".into(),
            json!(u.int_in_range(-1..=7200)?),
        );
    }
    let mut metadata = json!({
        "name": "p",
        "namespace": "apps",
        "annotations": annotations,
        "labels": labels,
    });
    if u.ratio(1, 4)? {
        metadata["ownerReferences"] = json!([{ "kind": "Job", "name": "j", "controller": true }]);
    }
    let mut pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec });
    if u.ratio(1, 8)? {
        // One field of the wrong shape.
        let field = pick(
            u,
            &[
                "/metadata/annotations",
                "/metadata/labels",
                "/spec",
                "/spec/containers",
                "/spec/initContainers",
                "/spec/volumes",
                "/spec/securityContext",
                "/spec/terminationGracePeriodSeconds",
            ],
        )?;
        let value = junk(u, 0)?;
        let (parent, leaf) = field.rsplit_once('/').unwrap_or(("", field));
        if let Some(Value::Object(m)) = pod.pointer_mut(parent) {
            m.insert(leaf.to_owned(), value);
        }
    }
    Ok(pod)
}

/// Wraps a pod in a Pod CREATE AdmissionReview.
pub fn review(pod: &Value, namespace: &str) -> Value {
    json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz-uid",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        },
    })
}

/// The webhook's handler from body to response body, with the checks every answer
/// must pass: it serializes, echoes the uid, a patch is standard base64 of a JSON patch
/// that applies to the pod, the agent reads the configuration it carries, and a second
/// review of the patched pod changes nothing. A denial names what is at fault.
pub fn handle(body: &[u8], settings: &PatchSettings) {
    let Ok(review) = admission::parse(body) else {
        return;
    };
    let decision = admission::decide(&review.request, settings);
    let response = admission::respond(&review, &decision).expect("a response encodes");
    let bytes = serde_json::to_vec(&response).expect("a response serializes");
    let answer: Value = serde_json::from_slice(&bytes).expect("the response is JSON");
    assert_eq!(answer["response"]["uid"], json!(review.request.uid));

    match decision {
        Decision::Skip(_) => assert_eq!(answer["response"]["allowed"], true),
        Decision::Deny(message) => {
            assert_eq!(answer["response"]["allowed"], false);
            assert!(!message.is_empty(), "a denial without a message");
        }
        Decision::Patch(_) => {
            let encoded = answer["response"]["patch"]
                .as_str()
                .expect("a patch string");
            let patch_bytes = STANDARD.decode(encoded).expect("standard base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&patch_bytes).expect("a JSON patch");
            let mut pod = review.request.object.clone().expect("a patched pod exists");
            if let Err(e) = json_patch::patch(&mut pod, &patch) {
                panic!("the patch does not apply: {e}\npatch: {patch}");
            }
            for config in agent_configs(&pod) {
                if let Err(e) = AgentConfig::from_json(&config) {
                    panic!("the agent refuses the config the webhook wrote: {e}\n{config}");
                }
            }
            let again = sidekey_webhook::patch::mutate(&pod, settings);
            assert!(
                matches!(again, Decision::Skip(SkipReason::AlreadyInjected)),
                "a second review of the patched pod did not skip: {again:?}"
            );
        }
    }
}

/// The `SIDEKEY_AGENT_CONFIG` values of the pod's agent containers.
fn agent_configs(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        let Some(items) = pod["spec"][list].as_array() else {
            continue;
        };
        let agents = items
            .iter()
            .filter(|c| c["name"] == "sidekey-agent" || c["name"] == "sidekey-init");
        for c in agents {
            let Some(env) = c["env"].as_array() else {
                continue;
            };
            for e in env {
                if e["name"] == CONFIG_ENV {
                    if let Some(v) = e["value"].as_str() {
                        out.push(v.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// The annotation parser's contract: a configuration it accepts is one the agent
/// accepts unchanged; a refusal names the annotation at fault (a Sidekey one, or the
/// Vault Agent Injector's it was translated from).
pub fn check_annotations(annotations: &BTreeMap<String, String>, defaults: &Defaults) {
    let _ = annotations::opted_in(annotations, &BTreeMap::new());
    match annotations::parse(annotations, defaults) {
        Ok((config, placement)) => {
            let json = config.to_json();
            match AgentConfig::from_json(&json) {
                Ok(read) => assert_eq!(read, config, "the config changed on its way"),
                Err(e) => panic!("the agent refuses what the parser accepted: {e}\n{json}"),
            }
            assert!(placement.mount_path.starts_with('/'));
        }
        Err(e) => assert!(
            !e.key.is_empty() && e.to_string().starts_with("annotation \""),
            "a refusal that names no annotation: {e}"
        ),
    }
}
