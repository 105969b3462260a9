//! The harness's own tokio runtime, shared by every test of a binary.
//!
//! In-process servers (the fake TokenReview API) must outlive the test that started
//! them when they are shared, so they can't run on a `#[tokio::test]` runtime. The
//! harness API is synchronous and drives async clients with [`block_on`].

use std::sync::OnceLock;

/// The process-wide harness runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        install_crypto();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("harness-rt")
            .enable_all()
            .build()
            .expect("building the harness tokio runtime")
    })
}

/// Runs a future to completion on the harness runtime. Must not be called from inside
/// an async context.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// Installs rustls' ring provider once; the workspace builds rustls without a default.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means someone else installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
