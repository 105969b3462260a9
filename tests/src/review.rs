//! Pods as the API server hands them to a mutating webhook, the AdmissionReview around
//! them, and the webhook's answer applied back.
//!
//! A Deployment never reaches the webhook; the ReplicaSet controller's pods do. So a
//! fixture is a Deployment, and [`pod_from_deployment`] does what happens between
//! `kubectl apply` and the webhook call: the controller copies the template and adds
//! `generateName`, the `pod-template-hash` label and its owner reference; then the
//! built-in admission plugins that run before webhooks add the service-account token
//! volume (`kube-api-access-*`) to every container and the default tolerations.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{IoContext, Result, failed};

/// Reads a JSON fixture from `tests/data/`.
pub fn fixture(name: &str) -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The pod the ReplicaSet controller creates from `deployment`, as the webhook sees it.
pub fn pod_from_deployment(deployment: &Value) -> Result<Value> {
    let name = deployment["metadata"]["name"]
        .as_str()
        .ok_or_else(|| failed("deployment has no metadata.name"))?;
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let template = &deployment["spec"]["template"];
    if !template.is_object() {
        return Err(failed("deployment has no spec.template"));
    }

    let hash = crate::random_id(10);
    let rs_name = format!("{name}-{hash}");
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["generateName"] = json!(format!("{rs_name}-"));
    metadata["namespace"] = json!(namespace);
    if !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    metadata["labels"]["pod-template-hash"] = json!(hash);
    metadata["ownerReferences"] = json!([{
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": rs_name,
        "uid": crate::random_uuid(),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);

    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"].clone(),
    });
    admit_service_account(&mut pod);
    add_default_tolerations(&mut pod);
    Ok(pod)
}

/// The ServiceAccount admission plugin: a projected `kube-api-access-<suffix>` volume
/// mounted read-only at the standard path in every container, unless opted out.
fn admit_service_account(pod: &mut Value) {
    let spec = &mut pod["spec"];
    if spec["serviceAccountName"].is_null() {
        spec["serviceAccountName"] = json!("default");
    }
    if spec["automountServiceAccountToken"] == json!(false) {
        return;
    }
    let volume_name = format!("kube-api-access-{}", crate::random_id(5));
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]
        }
    });
    match spec["volumes"].as_array_mut() {
        Some(v) => v.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for c in containers {
                let mount = json!({
                    "name": volume_name,
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                });
                match c["volumeMounts"].as_array_mut() {
                    Some(m) => m.push(mount),
                    None => c["volumeMounts"] = json!([mount]),
                }
            }
        }
    }
}

/// The DefaultTolerationSeconds plugin.
fn add_default_tolerations(pod: &mut Value) {
    let defaults = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    .map(|key| {
        json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    });
    match pod["spec"]["tolerations"].as_array_mut() {
        Some(t) => t.extend(defaults),
        None => pod["spec"]["tolerations"] = json!(defaults),
    }
}

/// A v1 AdmissionReview for creating `pod`, as the API server sends it on behalf of
/// the ReplicaSet controller. The request uid is random.
pub fn admission_review(pod: &Value) -> Value {
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let pod_resource = json!({"group": "", "version": "v1", "resource": "pods"});
    let mut request = json!({
        "uid": crate::random_uuid(),
        "kind": pod_kind,
        "resource": pod_resource,
        "requestKind": pod_kind,
        "requestResource": pod_resource,
        "namespace": pod["metadata"]["namespace"],
        "operation": "CREATE",
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": crate::random_uuid(),
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
        },
        "object": pod,
        "oldObject": null,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    });
    // A pod made from generateName has no name yet; the field is then omitted.
    if let Some(name) = pod["metadata"]["name"].as_str() {
        request["name"] = json!(name);
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    })
}

/// The webhook's decision, checked for the envelope the API server requires.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    /// `status.message` of a denial (shown to the user by kubectl).
    pub message: Option<String>,
    /// `status.code` of a denial.
    pub code: Option<u64>,
    /// The decoded JSONPatch, if any.
    pub patch: Option<json_patch::Patch>,
}

/// Checks `answer` against `request_review` as the API server would (same apiVersion,
/// kind AdmissionReview, echoed uid, base64 JSONPatch) and decodes it.
pub fn verdict(request_review: &Value, answer: &Value) -> Result<Verdict> {
    if answer["apiVersion"] != request_review["apiVersion"] {
        return Err(failed(format!(
            "answer apiVersion {} differs from the request's {}",
            answer["apiVersion"], request_review["apiVersion"]
        )));
    }
    if answer["kind"] != "AdmissionReview" {
        return Err(failed(format!("answer kind is {}", answer["kind"])));
    }
    let response = &answer["response"];
    if response["uid"] != request_review["request"]["uid"] {
        return Err(failed(format!(
            "answer uid {} does not echo the request uid {}",
            response["uid"], request_review["request"]["uid"]
        )));
    }
    let allowed = response["allowed"]
        .as_bool()
        .ok_or_else(|| failed("answer has no boolean response.allowed"))?;

    let patch = match (&response["patch"], &response["patchType"]) {
        (Value::Null, Value::Null) => None,
        (Value::String(b64), t) if t == "JSONPatch" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| failed(format!("response.patch is not standard base64: {e}")))?;
            let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| failed(format!("response.patch is not a JSON Patch: {e}")))?;
            Some(patch)
        }
        (p, t) => {
            return Err(failed(format!(
                "response has patch {} with patchType {t}; the API server needs a base64 \
                 string with patchType JSONPatch",
                if p.is_null() { "absent" } else { "present" }
            )));
        }
    };
    if patch.is_some() && !allowed {
        return Err(failed("a denial carries a patch"));
    }
    Ok(Verdict {
        allowed,
        message: response["status"]["message"].as_str().map(str::to_owned),
        code: response["status"]["code"].as_u64(),
        patch,
    })
}

/// Applies the verdict's patch (if any) to a copy of `pod`.
pub fn apply_patch(pod: &Value, verdict: &Verdict) -> Result<Value> {
    let mut out = pod.clone();
    if let Some(patch) = &verdict.patch {
        json_patch::patch(&mut out, patch)
            .map_err(|e| failed(format!("the webhook's patch does not apply: {e}")))?;
    }
    Ok(out)
}

/// `(op, path)` of each patch operation, for display.
pub fn patch_ops(patch: &json_patch::Patch) -> Vec<(String, String)> {
    serde_json::to_value(patch)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|op| {
            (
                op["op"].as_str().unwrap_or("?").to_owned(),
                op["path"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        pod_from_deployment(&fixture("deployment-app.json").unwrap()).unwrap()
    }

    #[test]
    fn pod_is_what_the_replicaset_controller_creates() {
        let p = pod();
        let gen_name = p["metadata"]["generateName"].as_str().unwrap();
        let hash = p["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(gen_name, format!("app-{hash}-"));
        assert!(p["metadata"]["name"].is_null());
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["metadata"]["annotations"]["sidekey.dev/role"], "app");
        assert_eq!(p["spec"]["serviceAccountName"], "app-sa");
        // Every container got the service-account token mount.
        for list in ["initContainers", "containers"] {
            for c in p["spec"][list].as_array().unwrap() {
                assert!(
                    c["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
                );
            }
        }
    }

    #[test]
    fn review_wraps_the_pod_with_a_fresh_uid_and_no_name() {
        let p = pod();
        let a = admission_review(&p);
        let b = admission_review(&p);
        assert_ne!(a["request"]["uid"], b["request"]["uid"]);
        assert_eq!(a["request"]["operation"], "CREATE");
        assert_eq!(a["request"]["namespace"], "demo");
        assert!(a["request"].get("name").is_none());
        assert_eq!(a["request"]["object"], p);
    }

    #[test]
    fn verdict_applies_a_base64_json_patch_and_rejects_other_encodings() {
        let review = admission_review(&pod());
        let uid = review["request"]["uid"].clone();
        let patch = json!([{"op": "add", "path": "/metadata/annotations/x", "value": "y"}]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
        let answer = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": b64}});
        let v = verdict(&review, &answer).unwrap();
        let patched = apply_patch(&review["request"]["object"], &v).unwrap();
        assert_eq!(patched["metadata"]["annotations"]["x"], "y");
        assert_eq!(
            patch_ops(v.patch.as_ref().unwrap()),
            [("add".into(), "/metadata/annotations/x".into())]
        );

        // kube-core's array-of-bytes encoding is refused, as is a foreign uid.
        let mut bytes = answer.clone();
        bytes["response"]["patch"] = json!(patch.to_string().into_bytes());
        assert!(verdict(&review, &bytes).is_err());
        let mut other = answer.clone();
        other["response"]["uid"] = json!("someone-else");
        assert!(verdict(&review, &other).is_err());
    }
}
