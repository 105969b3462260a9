//! Runnable workloads: the fixture's pods with app containers that really run.
//!
//! The fixture's app image (`/app/bin/server`) does not exist here, so the app and its
//! `migrate` init container become [`HOST_TOOLS_IMAGE`] containers whose `command` is a
//! shell script; the kubelet runs exactly that command. Scripts report what they saw on
//! stdout as hashes, never as secret values, so an app's output is safe to print.

use serde_json::{Value, json};

use crate::container::HOST_TOOLS_IMAGE;
use crate::{Result, failed, review};

/// A script that reports every new content of `file` as `seen <sha256> uid=<uid>`
/// (polling every 0.2 s), and exits 0 on SIGTERM after printing `app: SIGTERM`.
pub fn watch_script(file: &str) -> String {
    format!(
        "last=\n\
         trap 'echo \"app: SIGTERM\"; exit 0' TERM\n\
         while :; do\n\
         \x20 h=`sha256sum {file} 2>/dev/null | cut -d' ' -f1`\n\
         \x20 if [ -n \"$h\" ] && [ \"$h\" != \"$last\" ]; then echo \"seen $h uid=`id -u`\"; last=$h; fi\n\
         \x20 sleep 0.2\n\
         done\n"
    )
}

/// The `seen <sha256>` line [`watch_script`] prints for `bytes`.
pub fn seen_line(bytes: &[u8]) -> String {
    format!("seen {}", sha256_hex(bytes))
}

/// Lowercase hex SHA-256, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes container `c` a host-tools container running `/bin/sh -c script`.
pub fn run_script(c: &mut Value, script: &str) {
    c["image"] = json!(HOST_TOOLS_IMAGE);
    c["command"] = json!(["/bin/sh", "-c", script]);
    if let Some(o) = c.as_object_mut() {
        o.remove("args");
        o.remove("readinessProbe");
    }
}

/// The fixture Deployment's pod (as the ReplicaSet controller creates it), with
/// `tweak` applied to the template's annotations, the `migrate` init container
/// running `echo migrated`, and the app container running `app_script`.
pub fn deployment_pod(
    tweak: impl FnOnce(&mut serde_json::Map<String, Value>),
    app_script: &str,
) -> Result<Value> {
    let mut deployment = review::fixture("deployment-app.json")?;
    let template = &mut deployment["spec"]["template"];
    let annotations = template["metadata"]["annotations"]
        .as_object_mut()
        .ok_or_else(|| failed("the fixture has no template annotations"))?;
    tweak(annotations);
    run_script(&mut template["spec"]["initContainers"][0], "echo migrated");
    run_script(&mut template["spec"]["containers"][0], app_script);
    review::pod_from_deployment(&deployment)
}

/// A pod as the Job controller creates it for Job `job` (batch/v1, `restartPolicy:
/// Never`), from the fixture's pod template: annotations `annotations` (plus the
/// opt-in and role of the fixture), the app container running `app_script` once.
pub fn job_pod(
    job: &str,
    tweak: impl FnOnce(&mut serde_json::Map<String, Value>),
    app_script: &str,
) -> Result<Value> {
    let mut pod = deployment_pod(tweak, app_script)?;
    let uid = crate::random_uuid();
    let meta = &mut pod["metadata"];
    meta["generateName"] = json!(format!("{job}-"));
    if let Some(labels) = meta["labels"].as_object_mut() {
        labels.remove("pod-template-hash");
        labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
        labels.insert("batch.kubernetes.io/job-name".into(), json!(job));
        labels.insert("controller-uid".into(), json!(uid));
        labels.insert("job-name".into(), json!(job));
    }
    meta["ownerReferences"] = json!([{
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    pod["spec"]["restartPolicy"] = json!("Never");
    Ok(pod)
}

/// The container named `name` of `list` (`containers`, `initContainers`) in `pod`.
pub fn container<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod["spec"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// Names of the containers of `list` in `pod`, in order.
pub fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}
