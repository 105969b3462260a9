//! HTTP routes and the TLS accept loop.
//!
//! [`router`] is the whole HTTP application, so tests drive it in-process; [`serve`]
//! puts it behind rustls on a socket and shuts down gracefully.
//!
//! Logging: one span per review carrying its uid, namespace, pod name (or generateName),
//! kind and operation, and one info event with the outcome. The review body is never
//! logged, not even at trace level: it holds the pod's environment values.
//!
//! Every review is also counted in [`Metrics`] by outcome, with its latency.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, field};

use crate::admission;
use crate::metrics::{self, Metrics, Outcome};
use crate::patch::{Decision, PatchSettings};

/// Largest review body accepted. A pod spec is far smaller; the API server's own limit
/// on an object is 3 MiB, so anything above is not a real review.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Shared state of the routes.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Settings of every patch, shared by all requests.
    pub settings: Arc<PatchSettings>,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// State with fresh metrics.
    pub fn new(settings: PatchSettings) -> Self {
        AppState {
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn ok() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    let started = Instant::now();
    let review = match admission::parse(&body) {
        Ok(review) => review,
        Err(error) => {
            tracing::warn!(%error, "refused a malformed admission review");
            state.metrics.admission(Outcome::Error, started.elapsed());
            return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
        }
    };

    let request = &review.request;
    let span = tracing::info_span!(
        "review",
        uid = %request.uid,
        namespace = request.namespace.as_deref().unwrap_or(""),
        pod = request.display_name(),
        kind = %request.kind.kind,
        operation = %request.operation,
        outcome = field::Empty,
        patch_ops = field::Empty,
    );
    let _entered = span.enter();

    let decision = admission::decide(request, &state.settings);
    let outcome = match &decision {
        Decision::Skip(_) => Outcome::Skipped,
        Decision::Patch(_) => Outcome::Mutated,
        Decision::Deny(_) => Outcome::Denied,
    };
    span.record("outcome", outcome.as_str());
    match &decision {
        Decision::Skip(reason) => {
            tracing::info!(reason = reason.as_str(), "admitted unchanged");
        }
        Decision::Patch(patch) => {
            span.record("patch_ops", patch.0.len());
            tracing::info!("injected the agent");
        }
        Decision::Deny(message) => {
            tracing::info!(reason = %message, "denied");
        }
    }

    let response = match admission::respond(&review, &decision) {
        Ok(response) => axum::Json(response).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the admission response");
            state.metrics.admission(Outcome::Error, started.elapsed());
            let message = "internal error encoding the admission response\n";
            return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
        }
    };
    state.metrics.admission(outcome, started.elapsed());
    response
}

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// After shutdown starts, how long open connections get to finish their requests
    /// before they are closed. Keep it below the pod's `terminationGracePeriodSeconds`.
    pub drain_timeout: Duration,
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// A connection with no request for this long is closed, so clients that connect
    /// and then say nothing cannot hold all [`ServeOptions::max_connections`] slots.
    /// (hyper's HTTP/1 header timeout only starts once bytes arrive.)
    pub idle_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting
/// and lets open connections finish for up to [`ServeOptions::drain_timeout`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's HTTP/1 header read timeout (30 s) and HTTP/2 keep-alive.
    builder.http1().timer(TokioTimer::new());
    // HTTP/2 pings find peers that vanished without closing; the idle watchdog of
    // each connection closes those that stay but send no request.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Typically out of file descriptors; pausing lets some close.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = options.max_connections, "too many connections; closing a new one");
                    continue;
                };
                let connection = Connection {
                    acceptor: acceptor.clone(),
                    builder: Arc::clone(&builder),
                    app: app.clone(),
                    stop: stop_rx.clone(),
                    handshake_timeout: options.handshake_timeout,
                    idle_timeout: options.idle_timeout,
                };
                let span = tracing::debug_span!("connection", %peer);
                connections.spawn(
                    async move {
                        connection.run(tcp, peer).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
        }
    }

    drop(listener);
    tracing::info!(
        open = connections.len(),
        "shutting down: no new connections, draining open ones"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            timeout = ?options.drain_timeout,
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
    tracing::info!("stopped serving");
}

struct Connection {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

/// Requests of one connection: how many are in flight and when one last began or
/// ended (the connection's start before the first).
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a request in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        RequestGuard(Arc::clone(self))
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Connection {
    async fn run(mut self, tcp: TcpStream, peer: SocketAddr) {
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            // Info, not debug: a wrong caBundle in the webhook configuration shows up
            // here first.
            Ok(Err(error)) => {
                tracing::info!(%peer, %error, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "tls handshake timed out");
                return;
            }
        };

        let activity = Arc::new(Activity::new());
        let inner = TowerToHyperService::new(self.app);
        let tracked = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |request| {
            let guard = tracked.begin();
            let response = hyper::service::Service::call(&inner, request);
            async move {
                let response = response.await;
                drop(guard);
                response
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let stop = async {
            // An error means the sender is gone, which also means stop.
            let _ = self.stop.wait_for(|stop| *stop).await;
        };
        let idle_timeout = self.idle_timeout;
        let finished = tokio::select! {
            result = conn.as_mut() => Some(result),
            () = stop => None,
            () = activity.idle_for(idle_timeout) => {
                tracing::debug!(timeout = ?idle_timeout, "closing an idle connection");
                None
            }
        };
        let result = match finished {
            Some(result) => result,
            None => {
                // Finishes in-flight requests, then closes (HTTP/2 GOAWAY). Bounded:
                // a peer that never reads must not keep the slot (serve's drain
                // timeout also bounds this at shutdown).
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(idle_timeout.max(Duration::from_secs(10)), conn).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::debug!("connection did not close in time; dropping it");
                        return;
                    }
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}
