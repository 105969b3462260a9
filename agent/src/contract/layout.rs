//! Names and paths shared by the patch the webhook writes and the agent that runs in it.

/// Where app containers find their rendered secrets (read-only for them).
pub const SECRETS_MOUNT_PATH: &str = "/vault/secrets";
/// Memory-backed volume holding the rendered secrets.
pub const SECRETS_VOLUME: &str = "sidekey-secrets";
/// Default `sizeLimit` of the secrets volume: rendered files are small, and a limit
/// keeps a runaway template from eating the node's memory.
pub const SECRETS_SIZE_LIMIT: &str = "16Mi";

/// Agent-only memory volume: the agent's Vault token and lease state. Never mounted
/// into app containers.
pub const STATE_VOLUME: &str = "sidekey-state";
pub const STATE_MOUNT_PATH: &str = "/sidekey/state";
pub const STATE_SIZE_LIMIT: &str = "1Mi";

/// Projected service-account token with audience [`TOKEN_AUDIENCE`], agent-only.
pub const TOKEN_VOLUME: &str = "sidekey-token";
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/sidekey.dev/serviceaccount";
pub const TOKEN_FILE: &str = "token";
pub const TOKEN_AUDIENCE: &str = "vault";
/// The API server's minimum for `expirationSeconds` is 600; the kubelet refreshes
/// the file at 80 % of it, and the agent re-reads it at every login.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// Container names of the injected agent.
pub const INIT_CONTAINER: &str = "sidekey-init";
pub const SIDECAR_CONTAINER: &str = "sidekey-agent";

/// Path of the agent binary inside its image (the image has no shell).
pub const AGENT_BINARY: &str = "/sidekey-agent";

/// Annotation the webhook sets on every pod it mutated; its presence makes the
/// webhook leave the pod alone (idempotence).
pub const STATUS_ANNOTATION: &str = "sidekey.dev/status";
pub const STATUS_INJECTED: &str = "injected";

/// Full path of the service-account token file the agent logs in with.
pub fn token_path() -> String {
    format!("{TOKEN_MOUNT_PATH}/{TOKEN_FILE}")
}
