//! Generated pods for the property tests: containers, init containers (some of them
//! native sidecars already), volumes of several types, mounts in every shape the API
//! accepts (absent, `null`, empty, listed), security contexts from "restricted" to
//! root and privileged, probes, Job ownership, and Sidekey's annotations in many
//! combinations, with the webhook in native or classic mode.

use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Map, Value, json};
use sidekey_webhook::patch::{PatchSettings, SidecarMode};

/// Security context of one container (or of the pod, for the first three).
#[derive(Debug, Clone, Copy)]
enum Sc {
    None,
    Restricted,
    Root,
    User,
    Privileged,
}

fn container_sc(sc: Sc) -> Option<Value> {
    match sc {
        Sc::None => None,
        Sc::Restricted => Some(restricted_sc()),
        Sc::Root => Some(json!({ "runAsUser": 0 })),
        Sc::User => Some(json!({ "runAsUser": 1000, "runAsGroup": 1000 })),
        Sc::Privileged => Some(json!({ "privileged": true })),
    }
}

fn restricted_sc() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "runAsNonRoot": true,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn sc() -> impl Strategy<Value = Sc> {
    prop_oneof![
        3 => Just(Sc::None),
        3 => Just(Sc::Restricted),
        1 => Just(Sc::Root),
        1 => Just(Sc::User),
        1 => Just(Sc::Privileged),
    ]
}

/// One volume of the pod, by index.
fn volume(i: usize, kind: u8) -> Value {
    let name = format!("vol-{i}");
    match kind {
        0 => json!({ "name": name, "emptyDir": {} }),
        1 => json!({ "name": name, "configMap": { "name": "conf" } }),
        2 => json!({ "name": name, "secret": { "secretName": "creds" } }),
        3 => json!({ "name": name, "projected": { "sources": [
            { "serviceAccountToken": { "path": "token", "expirationSeconds": 3600 } },
        ] } }),
        _ => json!({ "name": name, "hostPath": { "path": "/var/log" } }),
    }
}

/// How a container's `volumeMounts` looks.
#[derive(Debug, Clone)]
enum Mounts {
    Absent,
    Null,
    Empty,
    /// Indices of the pod's volumes mounted, at `/mnt/vol-<i>`; `true` adds a mount
    /// of the first volume at `/vault/secrets`, which a default injection refuses.
    Some(Vec<usize>, bool),
}

fn mounts(volumes: usize) -> impl Strategy<Value = Mounts> {
    let listed = (
        subsequence((0..volumes).collect::<Vec<_>>(), 0..=volumes),
        prop::bool::weighted(0.05),
    )
        .prop_map(move |(v, at_secrets)| Mounts::Some(v, at_secrets && volumes > 0));
    prop_oneof![
        1 => Just(Mounts::Absent),
        1 => Just(Mounts::Null),
        1 => Just(Mounts::Empty),
        3 => listed.boxed(),
    ]
}

#[derive(Debug, Clone)]
struct ContainerShape {
    sc: Sc,
    mounts: Mounts,
    /// App containers: a readiness probe. Init containers: a native sidecar of the
    /// user's own (restartPolicy Always with a startup probe).
    probe: bool,
}

fn container_shape(volumes: usize) -> impl Strategy<Value = ContainerShape> {
    (sc(), mounts(volumes), any::<bool>()).prop_map(|(sc, mounts, probe)| ContainerShape {
        sc,
        mounts,
        probe,
    })
}

fn container(name: &str, shape: &ContainerShape, restricted: bool, init: bool) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    c.insert("image".into(), json!(format!("registry.example/{name}:1")));
    let sc = if restricted {
        Some(restricted_sc())
    } else {
        container_sc(shape.sc)
    };
    if let Some(sc) = sc {
        c.insert("securityContext".into(), sc);
    }
    match &shape.mounts {
        Mounts::Absent => {}
        Mounts::Null => {
            c.insert("volumeMounts".into(), Value::Null);
        }
        Mounts::Empty => {
            c.insert("volumeMounts".into(), json!([]));
        }
        Mounts::Some(indices, at_secrets) => {
            let mut list: Vec<Value> = indices
                .iter()
                .map(
                    |i| json!({ "name": format!("vol-{i}"), "mountPath": format!("/mnt/vol-{i}") }),
                )
                .collect();
            if *at_secrets {
                list.push(json!({ "name": "vol-0", "mountPath": "/vault/secrets" }));
            }
            c.insert("volumeMounts".into(), Value::Array(list));
        }
    }
    if shape.probe {
        if init {
            c.insert("restartPolicy".into(), json!("Always"));
            c.insert(
                "startupProbe".into(),
                json!({ "tcpSocket": { "port": 15021 } }),
            );
        } else {
            c.insert(
                "readinessProbe".into(),
                json!({ "httpGet": { "path": "/ready", "port": 8080 } }),
            );
        }
    }
    Value::Object(c)
}

/// Optional Sidekey annotations, as `(key without prefix, value)`.
fn options(names: Vec<String>) -> impl Strategy<Value = Vec<(String, String)>> {
    let one = |key: &'static str, values: &'static [&'static str]| {
        proptest::option::weighted(
            0.3,
            proptest::sample::select(values).prop_map(move |v| (key.to_owned(), v.to_owned())),
        )
    };
    let n = names.len();
    let containers = proptest::option::weighted(
        0.3,
        subsequence(names, 1..=n).prop_map(|s| ("containers".to_owned(), s.join(","))),
    );
    (
        one(
            "agent-mode",
            &["native-sidecar", "init-and-sidecar", "init-only"],
        ),
        one("init-first", &["true", "false"]),
        containers,
        one("mount-path", &["/run/secrets/app", "/vault/secrets/"]),
        one("size-limit", &["4Mi", "64Mi"]),
        one("run-as-user", &["1000", "65532"]),
        one("run-as-group", &["0", "3000"]),
        one(
            "ca-cert",
            &["secret:vault-tls/ca.crt", "configmap:vault-ca/ca.pem"],
        ),
        one("agent-memory-request", &["32Mi", "128Mi"]),
        one("agent-cpu-limit", &["5m", "500m"]),
        one("revoke-delay", &["5s"]),
        one("file-db", &["db/config.json", "db.env"]),
    )
        .prop_map(|t| {
            [t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10, t.11]
                .into_iter()
                .flatten()
                .collect()
        })
}

/// A generated pod (opted in, never injected yet) and the webhook's settings.
pub fn pod_and_settings() -> impl Strategy<Value = (Value, PatchSettings)> {
    (1usize..=3, 0usize..=3, 0usize..=3).prop_flat_map(|(n_app, n_init, n_vol)| {
        let names: Vec<String> = (0..n_app)
            .map(|i| format!("app-{i}"))
            .chain((0..n_init).map(|i| format!("init-{i}")))
            .collect();
        (
            prop::collection::vec(container_shape(n_vol), n_app),
            prop::collection::vec(container_shape(n_vol), n_init),
            prop::collection::vec(0u8..=4, n_vol),
            prop_oneof![
                Just(Sc::None),
                Just(Sc::Restricted),
                Just(Sc::Root),
                Just(Sc::User)
            ],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            options(names),
            prop_oneof![Just(SidecarMode::Native), Just(SidecarMode::Classic)],
        )
            .prop_map(
                |(apps, inits, kinds, pod_sc, restricted, job, labelled, options, mode)| {
                    build(
                        &apps, &inits, &kinds, pod_sc, restricted, job, labelled, &options, mode,
                    )
                },
            )
    })
}

#[allow(clippy::too_many_arguments, reason = "one call site, every part named")]
fn build(
    apps: &[ContainerShape],
    inits: &[ContainerShape],
    kinds: &[u8],
    pod_sc: Sc,
    restricted: bool,
    job: bool,
    labelled: bool,
    options: &[(String, String)],
    mode: SidecarMode,
) -> (Value, PatchSettings) {
    let mut annotations = json!({
        "sidekey.dev/role": "app",
        "sidekey.dev/secret-db": "secret/data/db",
        "example.io/other": "kept",
    });
    if labelled {
        annotations["sidekey.dev/inject"] = json!("false");
    } else {
        annotations["sidekey.dev/inject"] = json!("true");
    }
    for (k, v) in options {
        annotations[format!("sidekey.dev/{k}")] = json!(v);
    }
    let mut metadata = json!({
        "name": "generated",
        "namespace": "apps",
        "annotations": annotations,
    });
    if labelled {
        metadata["labels"] = json!({ "sidekey.dev/inject": "true", "app": "x" });
    }
    if job {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "batch/v1", "kind": "Job", "name": "once", "uid": "u-1",
            "controller": true, "blockOwnerDeletion": true,
        }]);
    }

    // A restricted pod has no hostPath volume and only restricted containers.
    let volumes: Vec<Value> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| volume(i, if restricted { k % 4 } else { k }))
        .collect();
    let mut spec = json!({
        "containers": apps.iter().enumerate()
            .map(|(i, s)| container(&format!("app-{i}"), s, restricted, false))
            .collect::<Vec<_>>(),
        "terminationGracePeriodSeconds": 30,
    });
    if job {
        spec["restartPolicy"] = json!("Never");
    }
    if !inits.is_empty() {
        spec["initContainers"] = inits
            .iter()
            .enumerate()
            .map(|(i, s)| container(&format!("init-{i}"), s, restricted, true))
            .collect();
    }
    if !volumes.is_empty() {
        spec["volumes"] = Value::Array(volumes);
    }
    let pod_level_restricted =
        json!({ "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } });
    let psc = match pod_sc {
        _ if restricted => Some(pod_level_restricted),
        Sc::Restricted => Some(pod_level_restricted),
        Sc::Root => Some(json!({ "runAsUser": 0 })),
        Sc::User => Some(json!({ "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000 })),
        Sc::None | Sc::Privileged => None,
    };
    if let Some(psc) = psc {
        spec["securityContext"] = psc;
    }

    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec });
    let settings = PatchSettings {
        agent_image: "registry.example/sidekey/agent:test".into(),
        defaults: sidekey_agent::contract::annotations::Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
        },
        sidecar_mode: mode,
        ..PatchSettings::default()
    };
    (pod, settings)
}
