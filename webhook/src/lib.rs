//! Sidekey's mutating admission webhook.
//!
//! The API server sends every Pod CREATE to `POST /mutate`; a pod that opted in with
//! `sidekey.dev/inject: "true"` comes back with the Sidekey agent injected (by default
//! as a native sidecar: an init container with `restartPolicy: Always`), and its
//! secrets volume mounted at `/vault/secrets`. Pods in `kube-system`, in the webhook's
//! own namespace and in `--exclude-namespaces` are never mutated.
//!
//! Parts, in the order a review goes through them:
//!
//! * [`patch`]: the decision and the JSON patch, a pure function of the pod. Start here.
//! * [`admission`]: the AdmissionReview wire types, the Pod CREATE filter and the
//!   response with its base64 patch.
//! * [`server`]: the axum routes and the TLS accept loop with graceful shutdown.
//! * [`tls`]: the serving certificate and its reload when the files change.
//! * [`config`]: flags and environment, validated into [`config::Settings`].
//! * [`metrics`]: the Prometheus metrics served at `/metrics`.
//! * [`vault`]: the periodic check that the configured Vault answers.
//! * [`certs`]: `sidekey-webhook certs`, a CA and serving certificate as manifests.
//! * [`logging`]: text or JSON log lines.

#![forbid(unsafe_code)]

pub mod admission;
pub mod certs;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod patch;
pub mod server;
pub mod tls;
pub mod vault;
