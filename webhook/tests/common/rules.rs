//! Rules the API server applies to a pod beyond its OpenAPI schema, and the Pod Security
//! Standard "restricted" profile, written as code because no offline checker exists for
//! either. Each rule has a stable id, and `tests/rules.rs` has a fixture that breaks it.
//!
//! Only the rules a webhook's patch can plausibly break are here; each follows the API
//! server's pod validation and the Pod Security admission's checks of Kubernetes 1.29+.

use std::collections::BTreeSet;

use serde_json::Value;
use sidekey_agent::contract::quantity;

/// One broken rule: its id and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub at: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.rule, self.at)
    }
}

fn v(rule: &'static str, at: impl Into<String>) -> Violation {
    Violation {
        rule,
        at: at.into(),
    }
}

fn items<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    pod["spec"][field].as_array().map_or(&[], Vec::as_slice)
}

/// Every container with its list field and index: init containers, then app containers.
pub fn containers(pod: &Value) -> Vec<(&'static str, usize, &Value)> {
    let mut out = Vec::new();
    for field in ["initContainers", "containers"] {
        for (i, c) in items(pod, field).iter().enumerate() {
            out.push((field, i, c));
        }
    }
    out
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The API server's pod rules that a schema cannot express.
pub fn api_rules(pod: &Value) -> Vec<Violation> {
    let mut out = Vec::new();

    if items(pod, "containers").is_empty() {
        out.push(v("at-least-one-container", "spec.containers"));
    }

    let mut names = BTreeSet::new();
    for (field, i, c) in containers(pod) {
        let at = format!("spec.{field}[{i}]");
        let name = c["name"].as_str().unwrap_or("");
        if !is_dns_label(name) {
            out.push(v("container-name-dns-label", &at));
        }
        if !names.insert(name) {
            out.push(v("unique-container-names", &at));
        }
    }

    let mut volumes = BTreeSet::new();
    for (i, volume) in items(pod, "volumes").iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if !volumes.insert(volume["name"].as_str().unwrap_or("")) {
            out.push(v("unique-volume-names", &at));
        }
        let sources = volume["projected"]["sources"].as_array();
        for source in sources.map(Vec::as_slice).unwrap_or_default() {
            if let Some(e) = source["serviceAccountToken"].get("expirationSeconds") {
                let ok = e.as_i64().is_some_and(|e| (600..=1 << 32).contains(&e));
                if !ok {
                    out.push(v("token-expiration-bounds", &at));
                }
            }
        }
    }

    for (field, i, c) in containers(pod) {
        let at = format!("spec.{field}[{i}]");
        let mut paths = BTreeSet::new();
        let mounts = c["volumeMounts"].as_array().map_or(&[][..], Vec::as_slice);
        for (j, m) in mounts.iter().enumerate() {
            let mat = format!("{at}.volumeMounts[{j}]");
            if !volumes.contains(m["name"].as_str().unwrap_or("")) {
                out.push(v("mount-refers-to-volume", &mat));
            }
            let path = m["mountPath"].as_str().unwrap_or("");
            if path.is_empty() || !paths.insert(path) {
                out.push(v("unique-mount-paths", &mat));
            }
        }

        let restart = c.get("restartPolicy");
        let native_sidecar = field == "initContainers" && restart == Some(&"Always".into());
        if restart.is_some() && !native_sidecar {
            out.push(v("restart-policy-only-always-on-init", &at));
        }
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if c.get(probe).is_some() && field == "initContainers" && !native_sidecar {
                out.push(v("probes-only-where-allowed", format!("{at}.{probe}")));
            }
        }

        let resources = &c["resources"];
        for name in ["cpu", "memory"] {
            let parse = |kind: &str| {
                resources[kind][name]
                    .as_str()
                    .and_then(|q| quantity::parse(q).ok())
                    .map(|q| q.milli)
            };
            if let (Some(r), Some(l)) = (parse("requests"), parse("limits"))
                && r > l
            {
                out.push(v(
                    "request-not-above-limit",
                    format!("{at}.resources.{name}"),
                ));
            }
        }
    }
    out
}

/// Capabilities "restricted" allows a container to add.
const ADDABLE: &[&str] = &["NET_BIND_SERVICE"];
/// Volume types "restricted" allows.
const VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The Pod Security Standard "restricted" (latest), with the "baseline" checks a
/// webhook could upset.
pub fn restricted(pod: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];

    for (i, volume) in items(pod, "volumes").iter().enumerate() {
        let kind = volume
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name"))
            .map_or("", String::as_str);
        if !VOLUME_TYPES.contains(&kind) {
            out.push(v("restricted-volume-types", format!("spec.volumes[{i}]")));
        }
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            out.push(v("baseline-host-namespaces", format!("spec.{host}")));
        }
    }
    if psc["runAsUser"] == 0 {
        out.push(v("restricted-run-as-user", "spec.securityContext"));
    }
    let pod_seccomp_ok = matches!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    );
    if psc["seccompProfile"]["type"] == "Unconfined" {
        out.push(v("restricted-seccomp", "spec.securityContext"));
    }

    for (field, i, c) in containers(pod) {
        let at = format!("spec.{field}[{i}]");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            out.push(v("baseline-privileged", &at));
        }
        let ports = c["ports"].as_array().map_or(&[][..], Vec::as_slice);
        if ports
            .iter()
            .any(|p| p["hostPort"].as_i64().unwrap_or(0) != 0)
        {
            out.push(v("baseline-host-ports", &at));
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(v("restricted-privilege-escalation", &at));
        }
        let drop = sc["capabilities"]["drop"].as_array();
        if !drop.is_some_and(|d| d.iter().any(|c| c == "ALL")) {
            out.push(v("restricted-capabilities", &at));
        }
        let add = sc["capabilities"]["add"].as_array();
        if add.is_some_and(|a| {
            a.iter()
                .any(|c| !ADDABLE.contains(&c.as_str().unwrap_or("")))
        }) {
            out.push(v("restricted-capabilities", &at));
        }
        let non_root = match sc.get("runAsNonRoot").and_then(Value::as_bool) {
            Some(b) => b,
            None => psc["runAsNonRoot"] == true,
        };
        if !non_root {
            out.push(v("restricted-run-as-non-root", &at));
        }
        if sc["runAsUser"] == 0 {
            out.push(v("restricted-run-as-user", &at));
        }
        match sc["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault" | "Localhost") => {}
            None if pod_seccomp_ok => {}
            _ => out.push(v("restricted-seccomp", &at)),
        }
    }
    out
}

/// The ids of the rules `pod` breaks, API rules and "restricted" alike.
pub fn broken(pod: &Value) -> Vec<&'static str> {
    let mut ids: Vec<_> = api_rules(pod).iter().map(|v| v.rule).collect();
    ids.extend(restricted(pod).iter().map(|v| v.rule));
    ids.sort_unstable();
    ids.dedup();
    ids
}
