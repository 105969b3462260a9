//! Sidekey's in-pod agent.
//!
//! The [`contract`] module is shared with the webhook (built without the `runtime`
//! feature). Everything else runs inside the agent container.

#![forbid(unsafe_code)]

pub mod contract;
#[cfg(feature = "runtime")]
pub mod notify;
