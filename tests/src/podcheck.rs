//! Is the mutated pod one the API server would accept and the cluster would run?
//!
//! Three layers, each catching what the previous can't:
//! 1. [`schema`]: `kubernetes-validate --strict` against the published OpenAPI schema
//!    (unknown fields, wrong types, missing required fields).
//! 2. [`api_rules`]: rules of the API server's pod validation that a schema can't
//!    express (uniqueness, references between fields, numeric minimums, which
//!    containers may carry which fields).
//! 3. [`restricted`]: the Pod Security Standard "restricted" profile (which includes
//!    "baseline"), as enforced by Pod Security Admission on a locked-down namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::{IoContext, Result, bins, failed, process};

/// One broken rule, located by a JSON-path-like string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Short rule name, stable for assertions.
    pub rule: &'static str,
    /// Where in the pod, e.g. `spec.initContainers[0].securityContext`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.at, self.message)
    }
}

fn v(rule: &'static str, at: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation {
        rule,
        at: at.into(),
        message: message.into(),
    }
}

/// Runs `kubernetes-validate --strict` on `pod` and returns its report line. The
/// error carries the tool's message verbatim.
pub fn schema(pod: &Value) -> Result<String> {
    let tool = bins::kubernetes_validate()?;
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory".into())?;
    let file = dir.path().join("pod.json");
    // The tool needs metadata.name; a pod from generateName gets it from the API server
    // only after admission, so validate it with the name it would get.
    let mut pod = pod.clone();
    if pod["metadata"]["name"].is_null()
        && let Some(prefix) = pod["metadata"]["generateName"].as_str()
    {
        pod["metadata"]["name"] = Value::from(format!("{prefix}x7k2q"));
    }
    let text =
        serde_json::to_string_pretty(&pod).map_err(|e| failed(format!("encoding the pod: {e}")))?;
    std::fs::write(&file, text).ctx(|| format!("writing {}", file.display()))?;

    let mut cmd = std::process::Command::new(tool);
    cmd.arg("--strict").arg(&file);
    match process::run("kubernetes-validate", cmd, Duration::from_secs(60)) {
        Ok(out) => {
            let report = String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace(&file.display().to_string(), "pod.json");
            if report.contains("ERROR") {
                Err(failed(format!("kubernetes-validate: {report}")))
            } else {
                Ok(report)
            }
        }
        Err(crate::Error::Failed(msg)) => Err(failed(msg)),
        Err(e) => Err(e),
    }
}

/// Every container of the pod with its list name and index.
fn containers(pod: &Value) -> Vec<(&'static str, usize, &Value)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = pod["spec"][list].as_array() {
            for (i, c) in cs.iter().enumerate() {
                out.push((list, i, c));
            }
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

/// Kinds of volume source the API knows; a volume must have exactly one.
const VOLUME_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// API-server pod validation rules a schema can't express.
pub fn api_rules(pod: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &pod["spec"];

    // Volumes: valid unique names, exactly one source, projected token minimums.
    let mut volumes = BTreeSet::new();
    for (i, vol) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.volumes[{i}]");
        let name = vol["name"].as_str().unwrap_or_default();
        if !is_dns_label(name) {
            out.push(v(
                "volume-name",
                &at,
                format!("{name:?} is not a DNS-1123 label"),
            ));
        }
        if !volumes.insert(name) {
            out.push(v(
                "unique-volume-names",
                &at,
                format!("duplicate volume name {name:?}"),
            ));
        }
        let sources: Vec<&str> = VOLUME_SOURCES
            .iter()
            .copied()
            .filter(|s| !vol[*s].is_null())
            .collect();
        if sources.len() != 1 {
            out.push(v(
                "one-volume-source",
                &at,
                format!("has sources {sources:?}"),
            ));
        }
        if let Some(limit) = vol["emptyDir"]["sizeLimit"].as_str()
            && parse_quantity(limit).is_none()
        {
            out.push(v(
                "quantity",
                &at,
                format!("sizeLimit {limit:?} is not a quantity"),
            ));
        }
        for (j, src) in vol["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let tok = &src["serviceAccountToken"];
            if tok.is_null() {
                continue;
            }
            let at = format!("{at}.projected.sources[{j}].serviceAccountToken");
            match tok["expirationSeconds"].as_i64() {
                Some(s) if s < 600 => out.push(v(
                    "token-expiration",
                    &at,
                    format!("expirationSeconds {s} is below the minimum of 600"),
                )),
                Some(s) if s > 1 << 32 => out.push(v(
                    "token-expiration",
                    &at,
                    format!("expirationSeconds {s} is above 2^32"),
                )),
                _ => {}
            }
            if tok["path"].as_str().is_none_or(str::is_empty) {
                out.push(v("token-path", &at, "path is required"));
            }
        }
    }

    // Containers: valid unique names, mounts refer to volumes, unique mount paths,
    // restartPolicy and probes only where allowed.
    let mut names = BTreeSet::new();
    for (list, i, c) in containers(pod) {
        let at = format!("spec.{list}[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if !is_dns_label(name) {
            out.push(v(
                "container-name",
                &at,
                format!("{name:?} is not a DNS-1123 label"),
            ));
        }
        if !names.insert(name) {
            out.push(v(
                "unique-container-names",
                &at,
                format!("container name {name:?} is used twice in the pod"),
            ));
        }

        let mut paths = BTreeSet::new();
        for (j, m) in c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mat = format!("{at}.volumeMounts[{j}]");
            let vname = m["name"].as_str().unwrap_or_default();
            if !volumes.contains(vname) {
                out.push(v(
                    "mount-refers-to-volume",
                    &mat,
                    format!("no volume named {vname:?}"),
                ));
            }
            let path = m["mountPath"].as_str().unwrap_or_default();
            if !path.starts_with('/') && !path.is_empty() {
                // Windows paths aside, the kubelet needs absolute paths on Linux.
                out.push(v("mount-path", &mat, format!("{path:?} is not absolute")));
            }
            if path.is_empty() {
                out.push(v("mount-path", &mat, "mountPath is required"));
            }
            if !paths.insert(path.trim_end_matches('/')) {
                out.push(v(
                    "unique-mount-paths",
                    &mat,
                    format!("{path:?} is mounted twice"),
                ));
            }
        }

        let is_init = list == "initContainers";
        let sidecar = is_init && c["restartPolicy"] == "Always";
        if !c["restartPolicy"].is_null() {
            if !is_init {
                out.push(v(
                    "restart-policy-init-only",
                    &at,
                    "restartPolicy may only be set on init containers",
                ));
            } else if c["restartPolicy"] != "Always" {
                out.push(v(
                    "restart-policy-init-only",
                    &at,
                    format!("restartPolicy {} is not \"Always\"", c["restartPolicy"]),
                ));
            }
        }
        if is_init && !sidecar {
            for probe in [
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
                "lifecycle",
            ] {
                if !c[probe].is_null() {
                    out.push(v(
                        "no-probes-on-init-containers",
                        &at,
                        format!("{probe} is only allowed on sidecar (restartPolicy: Always) init containers"),
                    ));
                }
            }
        }
        let mut env_names = BTreeMap::new();
        for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
            let n = e["name"].as_str().unwrap_or_default();
            if n.is_empty() || n.contains('=') {
                out.push(v(
                    "env-name",
                    format!("{at}.env[{j}]"),
                    format!("{n:?} is not a valid name"),
                ));
            }
            if !e["value"].is_null() && !e["valueFrom"].is_null() {
                out.push(v(
                    "env-one-source",
                    format!("{at}.env[{j}]"),
                    "both value and valueFrom",
                ));
            }
            env_names.insert(n, j);
        }
    }
    out
}

/// Capabilities "restricted" allows a container to add.
const ALLOWED_ADD_CAPS: &[&str] = &["NET_BIND_SERVICE"];
/// Volume types "restricted" allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Pod Security Standard "restricted" (latest), which includes "baseline".
pub fn restricted(pod: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];

    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            out.push(v(
                "baseline-host-namespaces",
                format!("spec.{host}"),
                "must not be true",
            ));
        }
    }
    for (i, vol) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let kind = VOLUME_SOURCES
            .iter()
            .find(|s| !vol[**s].is_null())
            .copied()
            .unwrap_or("unknown");
        if !RESTRICTED_VOLUMES.contains(&kind) {
            out.push(v(
                "restricted-volume-types",
                format!("spec.volumes[{i}]"),
                format!("volume type {kind} is not allowed"),
            ));
        }
    }
    if psc["runAsUser"] == 0 {
        out.push(v(
            "restricted-run-as-user",
            "spec.securityContext.runAsUser",
            "must not be 0",
        ));
    }
    if psc["seccompProfile"]["type"] == "Unconfined" {
        out.push(v(
            "restricted-seccomp",
            "spec.securityContext.seccompProfile",
            "must not be Unconfined",
        ));
    }
    let pod_seccomp_ok = matches!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    );
    let pod_non_root = psc["runAsNonRoot"] == true;

    for (list, i, c) in containers(pod) {
        let at = format!("spec.{list}[{i}].securityContext");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            out.push(v("baseline-privileged", &at, "privileged must not be true"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(v(
                "restricted-privilege-escalation",
                &at,
                "allowPrivilegeEscalation must be false",
            ));
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            out.push(v(
                "restricted-capabilities",
                &at,
                "capabilities.drop must include ALL",
            ));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or_default();
            if !ALLOWED_ADD_CAPS.contains(&cap) {
                out.push(v(
                    "restricted-capabilities",
                    &at,
                    format!("may not add {cap}"),
                ));
            }
        }
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(b) => b,
            None => pod_non_root,
        };
        if !non_root {
            out.push(v(
                "restricted-run-as-non-root",
                &at,
                "runAsNonRoot must be true here or in the pod securityContext",
            ));
        }
        if sc["runAsUser"] == 0 {
            out.push(v("restricted-run-as-user", &at, "runAsUser must not be 0"));
        }
        let seccomp_ok = match sc["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault" | "Localhost") => true,
            Some(_) => false,
            None => pod_seccomp_ok,
        };
        if !seccomp_ok {
            out.push(v(
                "restricted-seccomp",
                &at,
                "seccompProfile must be RuntimeDefault or Localhost here or in the pod",
            ));
        }
        if !sc["procMount"].is_null() && sc["procMount"] != "Default" {
            out.push(v("baseline-proc-mount", &at, "procMount must be Default"));
        }
        for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
            if port["hostPort"].as_i64().is_some_and(|p| p != 0) {
                out.push(v(
                    "baseline-host-ports",
                    format!("spec.{list}[{i}].ports[{j}]"),
                    "hostPort is not allowed",
                ));
            }
        }
    }
    out
}

/// All three layers; the error lists every violation.
pub fn check_all(pod: &Value) -> Result<String> {
    let report = schema(pod)?;
    let mut violations = api_rules(pod);
    violations.extend(restricted(pod));
    if violations.is_empty() {
        Ok(report)
    } else {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        Err(failed(format!(
            "the pod breaks {} rule(s):\n  {}",
            list.len(),
            list.join("\n  ")
        )))
    }
}

/// Parses a Kubernetes quantity (`16Mi`, `1G`, `500k`, `1024`) into bytes.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    (f.is_finite() && f >= 0.0).then(|| (f * mult as f64).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small pod that passes every rule; each test breaks one.
    fn good() -> Value {
        let sc = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [
                    {"name": "init", "image": "i", "securityContext": sc,
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "side", "image": "i", "restartPolicy": "Always", "securityContext": sc,
                     "readinessProbe": {"exec": {"command": ["true"]}}}
                ],
                "containers": [{"name": "app", "image": "a", "securityContext": sc,
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true},
                                     {"name": "tok", "mountPath": "/tok"}]}],
                "volumes": [
                    {"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                    {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}]}}
                ]
            }
        })
    }

    fn rules_broken(pod: &Value) -> Vec<&'static str> {
        let mut r: Vec<&str> = api_rules(pod).iter().map(|v| v.rule).collect();
        r.extend(restricted(pod).iter().map(|v| v.rule));
        r
    }

    #[test]
    fn good_pod_breaks_no_rule() {
        assert_eq!(rules_broken(&good()), Vec::<&str>::new());
    }

    #[test]
    fn good_pod_passes_the_strict_schema() {
        schema(&good()).unwrap();
    }

    #[test]
    fn schema_refuses_unknown_fields_with_the_tools_message() {
        let mut p = good();
        p["spec"]["containers"][0]["mountPoints"] = json!([]);
        let err = schema(&p).unwrap_err().to_string();
        assert!(err.contains("mountPoints"), "{err}");
    }

    #[test]
    fn container_names_must_be_unique_across_init_and_app_containers() {
        let mut p = good();
        p["spec"]["initContainers"][0]["name"] = json!("app");
        assert_eq!(rules_broken(&p), ["unique-container-names"]);
    }

    #[test]
    fn volume_names_must_be_unique() {
        let mut p = good();
        p["spec"]["volumes"][1]["name"] = json!("data");
        assert!(rules_broken(&p).contains(&"unique-volume-names"));
    }

    #[test]
    fn mounts_must_refer_to_a_volume() {
        let mut p = good();
        p["spec"]["containers"][0]["volumeMounts"][0]["name"] = json!("nope");
        assert_eq!(rules_broken(&p), ["mount-refers-to-volume"]);
    }

    #[test]
    fn mount_paths_must_be_unique_within_a_container() {
        let mut p = good();
        p["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/data/");
        assert_eq!(rules_broken(&p), ["unique-mount-paths"]);
    }

    #[test]
    fn projected_token_expiration_is_at_least_ten_minutes() {
        let mut p = good();
        p["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] =
            json!(599);
        assert_eq!(rules_broken(&p), ["token-expiration"]);
    }

    #[test]
    fn restart_policy_is_for_init_containers_only() {
        let mut p = good();
        p["spec"]["containers"][0]["restartPolicy"] = json!("Always");
        assert_eq!(rules_broken(&p), ["restart-policy-init-only"]);
    }

    #[test]
    fn probes_are_refused_on_plain_init_containers() {
        let mut p = good();
        p["spec"]["initContainers"][0]["readinessProbe"] = json!({"exec": {"command": ["true"]}});
        assert_eq!(rules_broken(&p), ["no-probes-on-init-containers"]);
    }

    #[test]
    fn restricted_requires_no_privilege_escalation_and_dropping_all() {
        let mut p = good();
        p["spec"]["initContainers"][1]["securityContext"] =
            json!({"capabilities": {"drop": ["NET_RAW"]}});
        assert_eq!(
            rules_broken(&p),
            ["restricted-privilege-escalation", "restricted-capabilities"]
        );
    }

    #[test]
    fn restricted_requires_run_as_non_root_somewhere() {
        let mut p = good();
        p["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsNonRoot");
        assert_eq!(rules_broken(&p).len(), 3, "{:?}", rules_broken(&p));
        p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(true);
        assert_eq!(rules_broken(&p).len(), 2);
    }

    #[test]
    fn restricted_requires_a_seccomp_profile_and_no_host_path() {
        let mut p = good();
        p["spec"]["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
        p["spec"]["volumes"][0] = json!({"name": "data", "hostPath": {"path": "/"}});
        let broken = rules_broken(&p);
        assert!(broken.contains(&"restricted-seccomp"));
        assert!(broken.contains(&"restricted-volume-types"));
    }

    #[test]
    fn quantities_parse_like_the_api_server() {
        assert_eq!(parse_quantity("16Mi"), Some(16 << 20));
        assert_eq!(parse_quantity("1M"), Some(1_000_000));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity("3 apples"), None);
    }
}
