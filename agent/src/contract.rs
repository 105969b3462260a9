//! The contract between the webhook and the agent.
//!
//! The webhook reads a pod's annotations ([`annotations`]) and turns them into an
//! [`config::AgentConfig`], which travels to the agent as JSON in the
//! [`config::CONFIG_ENV`] environment variable of the injected containers. Both
//! sides compile this one module, so a key, a default or a path is defined once.
//!
//! [`compat`] translates the Vault Agent Injector's and OpenBao injector's annotations
//! into Sidekey's.
//!
//! [`layout`] names the volumes, mount paths and container names the webhook adds
//! and the agent relies on.

pub mod annotations;
pub mod compat;
pub mod config;
pub mod duration;
pub mod layout;
pub mod quantity;
