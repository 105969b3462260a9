//! Sidekey's in-pod agent.
//!
//! The [`contract`] module is shared with the webhook (built without the `runtime`
//! feature). Everything else runs inside the agent container:
//!
//! - [`vault`]: a small Vault/OpenBao HTTP client (login, read, token calls) with
//!   classified, value-free errors.
//! - [`kv`]: reads a secret the way the user wrote its path (KV v2 in either form).
//! - [`render`]: secret data to file bytes.
//! - [`template`]: Go text/template templates with consul-template's functions.
//! - [`metrics`]: counters and gauges, and the opt-in Prometheus endpoint.
//! - [`failpoint`]: pause points for the fault tests (debug builds only).
//! - [`files`]: atomic, change-only writes into the secrets directory.
//! - [`schedule`]: the timing rules (renew, replace, refresh, jitter, backoff).
//! - [`source`]: distinct sources (path + parameters), their kind and what is held.
//! - [`state`]: the state file handing token and leases from init to sidecar.
//! - [`run`]: the `init` and `sidecar` modes: one scheduler loop, token lifecycle,
//!   revocation.

#![forbid(unsafe_code)]

pub mod contract;
#[cfg(feature = "runtime")]
pub mod notify;

#[cfg(feature = "runtime")]
pub mod failpoint;
#[cfg(feature = "runtime")]
pub mod files;
#[cfg(feature = "runtime")]
pub mod kv;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod render;
#[cfg(feature = "runtime")]
pub mod run;
#[cfg(feature = "runtime")]
pub mod schedule;
#[cfg(feature = "runtime")]
pub mod source;
#[cfg(feature = "runtime")]
pub mod state;
#[cfg(feature = "runtime")]
pub mod template;
#[cfg(feature = "runtime")]
pub mod vault;
