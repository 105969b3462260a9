//! What the webhook logs about a review. Alone in its test binary: tracing caches
//! per-callsite interest process-wide, and a test running in parallel without this
//! subscriber could make it skip events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sidekey_webhook::server::{AppState, router};
use tower::ServiceExt as _;

use common::*;

async fn review(body: &str) {
    let app = router(AppState::new(settings()));
    let request = Request::builder()
        .method("POST")
        .uri("/mutate")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

/// A `MakeWriter` that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_the_outcome_per_review_but_never_the_body() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    review(POD_CREATE).await;
    review(POD_BAD_ANNOTATION).await;

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    leak_log("webhook-in-process.log", &logs);
    assert!(
        logs.contains("uid=705ab4f5-6393-11e8-b7cc-42010a800002"),
        "{logs}"
    );
    assert!(logs.contains("namespace=\"demo\""), "{logs}");
    assert!(logs.contains("pod=\"web-7d9c8b5f4-\""), "{logs}");
    assert!(logs.contains("outcome=\"mutated\""), "{logs}");
    assert!(logs.contains("patch_ops=6"), "{logs}");
    assert!(logs.contains("outcome=\"denied\""), "{logs}");
    assert!(
        !logs.contains("env-value-that-must-never-be-logged"),
        "{logs}"
    );
    assert!(!logs.contains("SIDEKEY_AGENT_CONFIG"), "{logs}");
}
