//! Sidekey's in-pod agent.
//!
//! The [`contract`] module is shared with the webhook (built without the `runtime`
//! feature). Everything else runs inside the agent container:
//!
//! - [`vault`]: a small Vault/OpenBao HTTP client (login, read, token calls) with
//!   classified, value-free errors.
//! - [`kv`]: reads a secret the way the user wrote its path (KV v2 in either form).
//! - [`render`]: secret data to file bytes.
//! - [`files`]: atomic, change-only writes into the secrets directory.
//! - [`run`]: the `init` and `sidecar` modes, retries, token refresh and shutdown.

#![forbid(unsafe_code)]

pub mod contract;
#[cfg(feature = "runtime")]
pub mod notify;

#[cfg(feature = "runtime")]
pub mod files;
#[cfg(feature = "runtime")]
pub mod kv;
#[cfg(feature = "runtime")]
pub mod render;
#[cfg(feature = "runtime")]
pub mod run;
#[cfg(feature = "runtime")]
pub mod vault;
