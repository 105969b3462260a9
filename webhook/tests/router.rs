//! The HTTP application in-process (no socket, no TLS), against review fixtures.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sidekey_webhook::server::{AppState, MAX_BODY_BYTES, router};
use tower::ServiceExt as _;

use common::*;

fn app() -> Router {
    router(AppState::new(settings()))
}

async fn call(method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let response = app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, body.to_vec())
}

async fn review(body: &str) -> Value {
    let (status, bytes) = call("POST", "/mutate", body.to_owned()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).expect("response is JSON")
}

#[tokio::test]
async fn mutates_an_opted_in_pod_and_echoes_the_uid() {
    let request = json(POD_CREATE);
    let response = review(POD_CREATE).await;

    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["response"]["uid"], request["request"]["uid"]);
    assert_eq!(response["response"]["allowed"], true);

    let pod = apply_response_patch(&response, &request["request"]["object"]);
    assert_eq!(container_names(&pod, "initContainers"), ["sidekey-agent"]);
    assert_eq!(container_names(&pod, "containers"), ["web"]);
    let mounts = &pod["spec"]["containers"][0]["volumeMounts"];
    assert_eq!(mounts[0]["name"], "kube-api-access-x7k2p");
    assert_eq!(mounts[1]["mountPath"], "/vault/secrets");
    assert_eq!(
        pod["metadata"]["annotations"]["sidekey.dev/status"],
        "injected"
    );
}

#[tokio::test]
async fn a_pod_the_webhook_already_mutated_gets_no_patch() {
    let mut request = json(POD_CREATE);
    let first = review(POD_CREATE).await;
    let mutated = apply_response_patch(&first, &request["request"]["object"]);
    request["request"]["object"] = mutated;

    let second = review(&request.to_string()).await;
    assert_eq!(second["response"]["allowed"], true);
    assert_eq!(second["response"].get("patch"), None, "{second}");
    assert_eq!(second["response"].get("patchType"), None, "{second}");
}

#[tokio::test]
async fn admits_a_pod_that_did_not_opt_in_unchanged() {
    let response = review(POD_NOT_OPTED_IN).await;
    assert_eq!(
        response["response"],
        json!({ "uid": "b1c7e0de-0000-4000-8000-000000000001", "allowed": true })
    );
}

#[tokio::test]
async fn admits_anything_but_a_pod_create_unchanged() {
    let response = review(DEPLOYMENT_CREATE).await;
    assert_eq!(
        response["response"],
        json!({ "uid": "b1c7e0de-0000-4000-8000-000000000003", "allowed": true })
    );

    let mut update = json(POD_CREATE);
    update["request"]["operation"] = json!("UPDATE");
    let response = review(&update.to_string()).await;
    assert_eq!(response["response"].get("patch"), None, "{response}");
}

#[tokio::test]
async fn denies_a_bad_annotation_with_a_403_naming_it() {
    let response = review(POD_BAD_ANNOTATION).await;
    let r = &response["response"];
    assert_eq!(r["uid"], "b1c7e0de-0000-4000-8000-000000000002");
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("annotation \"sidekey.dev/secret-db\""),
        "{message}"
    );
    assert_eq!(r.get("patch"), None);
}

#[tokio::test]
async fn answers_a_v1beta1_review_in_kind() {
    let mut request = json(POD_CREATE);
    request["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = review(&request.to_string()).await;
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1beta1");
}

#[tokio::test]
async fn refuses_malformed_reviews_with_400_and_a_reason() {
    let mut no_uid = json(POD_CREATE);
    no_uid["request"]
        .as_object_mut()
        .expect("request")
        .remove("uid");
    let mut wrong_kind = json(POD_CREATE);
    wrong_kind["kind"] = json!("TokenReview");
    let mut no_request = json(POD_CREATE);
    no_request
        .as_object_mut()
        .expect("review")
        .remove("request");

    let cases = [
        ("not json".to_owned(), "not a JSON AdmissionReview"),
        (
            r#"{"apiVersion": "admission.k8s.io/v1", "#.to_owned(),
            "truncated",
        ),
        (no_uid.to_string(), "no uid"),
        (wrong_kind.to_string(), "not an AdmissionReview"),
        (no_request.to_string(), "no request"),
    ];
    for (body, expected) in cases {
        let (status, bytes) = call("POST", "/mutate", body).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}: {text}");
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

#[tokio::test]
async fn refuses_an_oversized_body_with_413() {
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _) = call("POST", "/mutate", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn health_endpoints_answer_200() {
    for path in ["/healthz", "/readyz"] {
        let (status, _) = call("GET", path, Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = call("GET", "/mutate", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
