//! Hostile sizes through the HTTP application in-process: annotations at Kubernetes'
//! 256 KiB limit, thousands of secrets, JSON nested past serde_json's recursion limit.
//! Each is answered, with a patch or with a denial naming the limit (docs/limits.md).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sidekey_agent::contract::annotations::{MAX_CONFIG_BYTES, MAX_SECRETS};
use sidekey_webhook::patch::PatchSettings;
use sidekey_webhook::server::{AppState, router};
use tower::ServiceExt as _;

/// Kubernetes' limit on the total size of an object's annotations (keys and values).
const ANNOTATIONS_LIMIT: usize = 256 * 1024;

const POD_CREATE: &str = include_str!("data/pod-create.json");

fn app() -> Router {
    router(AppState::new(PatchSettings {
        agent_image: "registry.example/sidekey/agent:test".into(),
        defaults: sidekey_agent::contract::annotations::Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
        },
        ..PatchSettings::default()
    }))
}

async fn post(body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method("POST")
        .uri("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

/// The fixture review with these annotations added to its pod.
fn review_with(annotations: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut review: Value = serde_json::from_str(POD_CREATE).expect("fixture");
    let map = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations");
    for (k, v) in annotations {
        map.insert(k, Value::String(v));
    }
    review
}

fn annotations_size(review: &Value) -> usize {
    review["request"]["object"]["metadata"]["annotations"]
        .as_object()
        .expect("annotations")
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum()
}

async fn answer(review: &Value) -> Value {
    let (status, bytes) = post(serde_json::to_vec(review).expect("serializes")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).expect("a JSON review")
}

fn denial(response: &Value) -> &str {
    assert_eq!(response["response"]["allowed"], false, "{response}");
    response["response"]["status"]["message"]
        .as_str()
        .expect("a message")
}

#[tokio::test]
async fn a_pod_with_256_kib_of_other_annotations_is_injected() {
    // Most of the budget spent by someone else (kubectl's last-applied-configuration,
    // a service mesh): Sidekey reads its own keys and leaves the rest alone.
    let other = "x".repeat(ANNOTATIONS_LIMIT - 1024);
    let review = review_with([(
        "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
        other,
    )]);
    assert!(annotations_size(&review) > ANNOTATIONS_LIMIT - 1024);
    let response = answer(&review).await;
    assert_eq!(response["response"]["allowed"], true, "{response}");
    let patch = STANDARD
        .decode(response["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    assert_eq!(
        pod["metadata"]["annotations"]["sidekey.dev/status"],
        "injected"
    );
}

#[tokio::test]
async fn a_pod_with_256_kib_of_templates_is_denied_naming_the_size() {
    // Four templates at the per-template limit: each is acceptable, together they make
    // an agent configuration no environment variable can carry.
    let template = format!("{{{{/* {} */}}}}", "t".repeat(64 * 1024 - 10));
    let review =
        review_with((0..4).map(|i| (format!("sidekey.dev/template-t{i}"), template.clone())));
    assert!(annotations_size(&review) >= ANNOTATIONS_LIMIT);
    let response = answer(&review).await;
    let message = denial(&response);
    assert!(
        message.contains("sidekey.dev/secret-<name>")
            && message.contains(&MAX_CONFIG_BYTES.to_string()),
        "{message}"
    );
    assert!(!message.contains("tttt"), "the denial quotes no template");
}

#[tokio::test]
async fn a_pod_with_2000_secrets_is_denied_naming_the_count() {
    let review = review_with((0..2000).map(|i| {
        (
            format!("sidekey.dev/secret-s{i}"),
            format!("secret/data/s{i}"),
        )
    }));
    let response = answer(&review).await;
    let message = denial(&response);
    // 2000 declared here plus the fixture's own secret-db.
    assert!(message.contains("declares 2001 secrets"), "{message}");
    assert!(message.contains(&MAX_SECRETS.to_string()), "{message}");
}

#[tokio::test]
async fn a_pod_with_the_most_secrets_allowed_is_injected() {
    let review = review_with((1..MAX_SECRETS).map(|i| {
        (
            format!("sidekey.dev/secret-s{i}"),
            format!("secret/data/s{i}"),
        )
    }));
    let response = answer(&review).await;
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert_eq!(response["response"]["patchType"], "JSONPatch");
}

/// The fixture review with `depth` nested arrays in a field of the pod's spec.
fn nested(depth: usize) -> Vec<u8> {
    let mut review: Value = serde_json::from_str(POD_CREATE).expect("fixture");
    review["request"]["object"]["spec"]["x-nested"] = json!("HOLE");
    let text = review.to_string();
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    text.replace("\"HOLE\"", &deep).into_bytes()
}

#[tokio::test]
async fn json_nested_past_the_parser_limit_is_refused_with_400() {
    for depth in [200, 100_000] {
        let (status, bytes) = post(nested(depth)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, StatusCode::BAD_REQUEST, "depth {depth}: {text}");
        assert!(text.contains("not a JSON AdmissionReview"), "{text}");
    }
}

#[tokio::test]
async fn json_nested_within_the_parser_limit_is_answered() {
    // The review itself takes a few levels; 100 more in the pod stay below 128.
    let (status, bytes) = post(nested(100)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let response: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(response["response"]["allowed"], true, "{response}");
}
