//! Names and paths shared by the patch the webhook writes and the agent that runs in it.

/// Where app containers find their rendered secrets (read-only for them).
pub const SECRETS_MOUNT_PATH: &str = "/vault/secrets";
/// Memory-backed volume holding the rendered secrets.
pub const SECRETS_VOLUME: &str = "sidekey-secrets";
/// Default `sizeLimit` of the secrets volume: rendered files are small, and a limit
/// keeps a runaway template from eating the node's memory. The `size-limit`
/// annotation overrides it, up to [`MAX_SECRETS_SIZE_LIMIT`].
pub const SECRETS_SIZE_LIMIT: &str = "16Mi";
/// Largest `size-limit` accepted: the volume is memory, counted against the pod.
pub const MAX_SECRETS_SIZE_LIMIT: &str = "1Gi";

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

/// Read-only volume with the user's CA bundle (`ca-cert` annotation: one key of a
/// Secret or ConfigMap), agent-only, mounted at [`CA_MOUNT_PATH`]; the key becomes the
/// file name, so `VaultConfig::ca_file` is `<CA_MOUNT_PATH>/<key>`.
pub const CA_VOLUME: &str = "sidekey-ca";
pub const CA_MOUNT_PATH: &str = "/sidekey/ca";

/// Container names of the injected agent. In the classic layout `sidekey-init` is the
/// init container (`args: ["init"]`) and `sidekey-agent` the sidecar in
/// `spec.containers`. In the native-sidecar layout there is only `sidekey-agent`, an
/// init container with `restartPolicy: Always` running `args: ["sidecar"]`.
pub const INIT_CONTAINER: &str = "sidekey-init";
pub const SIDECAR_CONTAINER: &str = "sidekey-agent";

/// Name of the marker file, in the config's `state_dir`, that the agent creates (empty,
/// atomically) once it has rendered every secret for the first time, in `sidecar` and
/// in `init` mode alike. It is removed never; the state volume dies with the pod.
pub const READY_FILE: &str = "ready";
/// Argument of `/sidekey-agent probe`: reads the config from `SIDEKEY_AGENT_CONFIG`
/// like the other modes, exits 0 when `<state_dir>/ready` exists and 1 otherwise,
/// quickly and without network. Used as the native sidecar's `startupProbe`, which
/// the kubelet runs until it passes and only then starts the next container.
pub const PROBE_ARG: &str = "probe";
/// The startup probe's exec command (there is no shell in the image).
pub const PROBE_COMMAND: [&str; 2] = [AGENT_BINARY, PROBE_ARG];
/// Seconds between two startup probes of the native sidecar.
pub const PROBE_PERIOD_SECONDS: u32 = 1;
/// Failed probes before the kubelet restarts the native sidecar: 180 periods, longer
/// than the agent's default init deadline (`SIDEKEY_INIT_DEADLINE`, 2m), so the agent's
/// own clear error comes first.
pub const PROBE_FAILURE_THRESHOLD: u32 = 180;

/// Path of the agent binary inside its image (the image has no shell).
pub const AGENT_BINARY: &str = "/sidekey-agent";
/// Numeric non-root user of the agent image. The webhook sets it explicitly only when
/// the pod asks for root (`runAsUser: 0`), which the agent never runs as.
pub const AGENT_USER: i64 = 65532;

/// Annotation the webhook sets on every pod it mutated; its presence makes the
/// webhook leave the pod alone (idempotence).
pub const STATUS_ANNOTATION: &str = "sidekey.dev/status";
pub const STATUS_INJECTED: &str = "injected";

/// Full path of the service-account token file the agent logs in with.
pub fn token_path() -> String {
    format!("{TOKEN_MOUNT_PATH}/{TOKEN_FILE}")
}

/// Full path of the readiness marker for a config's `state_dir`.
pub fn ready_path(state_dir: &str) -> String {
    format!("{}/{READY_FILE}", state_dir.trim_end_matches('/'))
}
