//! The pod annotations users write, and how they become an [`AgentConfig`] and a
//! [`Placement`].
//!
//! [`TABLE`] is the single list of supported keys; `docs/annotations.md` is checked
//! against it by a test. Every key lives under [`PREFIX`]. A key under the prefix that
//! is not in the table is refused, so that a typo (`secrets-db`) is reported at pod
//! creation instead of silently rendering nothing.
//!
//! [`parse`] reads every key once: what the agent executes goes into the
//! [`AgentConfig`], what only shapes the pod (which containers, which mode, resources)
//! into the [`Placement`] the webhook applies.

use std::collections::{BTreeMap, BTreeSet};

use super::compat;
use super::config::{
    self, AgentConfig, AuthConfig, AuthMethod, Format, Notify, SecretSpec, VaultConfig,
};
use super::duration;
use super::layout;
use super::quantity::{self, Quantity};

/// Prefix of every Sidekey annotation and of the opt-in label.
pub const PREFIX: &str = "sidekey.dev/";

/// Opt-in key; as an annotation or as a label with value `"true"`.
pub const INJECT: &str = "inject";
pub const ROLE: &str = "role";
pub const AUTH_PATH: &str = "auth-path";
pub const AUTH_METHOD: &str = "auth-method";
pub const VAULT_ADDR: &str = "vault-addr";
pub const VAULT_NAMESPACE: &str = "vault-namespace";
pub const CA_CERT: &str = "ca-cert";
pub const TLS_SERVER_NAME: &str = "tls-server-name";
/// Skip verifying Vault's TLS certificate (tests and emergencies only).
pub const TLS_SKIP_VERIFY: &str = "tls-skip-verify";
/// Per-secret prefix: `secret-<name>: <vault path>`.
pub const SECRET_PREFIX: &str = "secret-";
/// Per-secret file name or sub-path under the secrets directory.
pub const FILE_PREFIX: &str = "file-";
/// Per-secret octal file mode.
pub const PERMS_PREFIX: &str = "perms-";
/// Per-secret output format.
pub const FORMAT_PREFIX: &str = "format-";
/// Pod-wide re-read interval of static secrets.
pub const REFRESH: &str = "refresh";
/// Per-secret override of [`REFRESH`].
pub const REFRESH_PREFIX: &str = "refresh-";
/// Per-secret notification after a change.
pub const NOTIFY_PREFIX: &str = "notify-";
/// Per-secret request parameters, which make the request a write (`pki/issue/<role>`).
pub const PARAMS_PREFIX: &str = "params-";
/// Per-secret Go text/template template rendering the file.
pub const TEMPLATE_PREFIX: &str = "template-";
pub const CONTAINERS: &str = "containers";
pub const MOUNT_PATH: &str = "mount-path";
pub const AGENT_MODE: &str = "agent-mode";
/// Delay between SIGTERM and revocation.
pub const REVOKE_DELAY: &str = "revoke-delay";
pub const SIZE_LIMIT: &str = "size-limit";
pub const INIT_FIRST: &str = "init-first";
pub const AGENT_CPU_REQUEST: &str = "agent-cpu-request";
pub const AGENT_CPU_LIMIT: &str = "agent-cpu-limit";
pub const AGENT_MEMORY_REQUEST: &str = "agent-memory-request";
pub const AGENT_MEMORY_LIMIT: &str = "agent-memory-limit";
pub const RUN_AS_USER: &str = "run-as-user";
pub const RUN_AS_GROUP: &str = "run-as-group";
/// Port of the sidecar's Prometheus endpoint; absent: no listener.
pub const METRICS_PORT: &str = "metrics-port";
/// Lowest `metrics-port`: the agent runs as non-root without capabilities.
pub const MIN_METRICS_PORT: u16 = 1024;

/// Shortest refresh interval accepted: anything faster only loads Vault.
pub const MIN_REFRESH_SECS: u64 = 1;
/// Longest refresh interval accepted (7 days); longer is almost surely a typo.
pub const MAX_REFRESH_SECS: u64 = 7 * 24 * 3600;
/// Longest revoke delay accepted; the pod's `terminationGracePeriodSeconds` must cover it.
pub const MAX_REVOKE_DELAY_SECS: u64 = 3600;
/// Most secrets (`secret-<name>` and `template-<name>` files) one pod may declare:
/// each is a file, a Vault source and a few hundred bytes of the agent's configuration.
pub const MAX_SECRETS: usize = 512;
/// Largest agent configuration accepted, in bytes of JSON. It travels in one
/// environment variable, and Linux refuses to start a program with an environment
/// string of 128 KiB or more (`MAX_ARG_STRLEN`), so the agent would never start; the
/// limit leaves room for the variable's name.
pub const MAX_CONFIG_BYTES: usize = 120 * 1024;

/// Default auth mount path when `auth-path` is not set and the method is Kubernetes.
pub const DEFAULT_AUTH_PATH: &str = "auth/kubernetes";
/// Default auth mount path when `auth-path` is not set and the method is JWT.
pub const DEFAULT_JWT_AUTH_PATH: &str = "auth/jwt";

/// Default resources of each agent container, sized for a small static Rust binary
/// that sleeps between refreshes (not yet confirmed by a measurement of the agent's
/// peak RSS; the limit leaves room for TLS handshakes and large secrets). No CPU limit
/// by default: throttling the agent only delays the pod's start.
pub const DEFAULT_CPU_REQUEST: &str = "10m";
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "64Mi";

/// Longest name part of an annotation key Kubernetes accepts.
const MAX_KEY_NAME_LEN: usize = 63;
/// Longest Vault path accepted in an annotation value.
const MAX_PATH_LEN: usize = 1024;
/// Largest user or group id Kubernetes accepts.
const MAX_ID: i64 = 2_147_483_647;

/// Which part of the pod an annotation is about; the documentation groups by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Injection,
    Secrets,
    Placement,
    Lifecycle,
    AgentContainer,
}

impl Group {
    fn title(self) -> &'static str {
        match self {
            Group::Injection => "Injection and Vault connection",
            Group::Secrets => "Secrets",
            Group::Placement => "Placement",
            Group::Lifecycle => "Lifecycle",
            Group::AgentContainer => "Agent container",
        }
    }
}

/// One supported annotation, as documented.
#[derive(Debug, Clone, Copy)]
pub struct Annotation {
    /// Key without [`PREFIX`]; per-secret keys end in `-` and take a `<name>`.
    pub key: &'static str,
    /// Documentation section.
    pub group: Group,
    /// Whether the key takes a `<name>` suffix naming the secret.
    pub per_secret: bool,
    /// Default when absent, as shown to users.
    pub default: &'static str,
    /// Values accepted, as shown to users.
    pub allowed: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every annotation Sidekey understands.
pub const TABLE: &[Annotation] = &[
    Annotation {
        key: INJECT,
        group: Group::Injection,
        per_secret: false,
        default: "`false`",
        allowed: "`true`, `false`",
        meaning: "Opt the pod in to injection. Also accepted as a label, which lets the \
                  cluster fail closed for labelled pods only.",
    },
    Annotation {
        key: ROLE,
        group: Group::Injection,
        per_secret: false,
        default: "none (required)",
        allowed: "a Vault role name",
        meaning: "Role of the auth method the agent logs in as.",
    },
    Annotation {
        key: AUTH_METHOD,
        group: Group::Injection,
        per_secret: false,
        default: "`kubernetes`",
        allowed: "`kubernetes`, `jwt`",
        meaning: "Auth method to log in with, using the pod's projected service-account \
                  token (audience `vault`). `jwt` suits clusters whose TokenReview API \
                  Vault cannot reach: Vault checks the token against the cluster's OIDC \
                  keys itself.",
    },
    Annotation {
        key: AUTH_PATH,
        group: Group::Injection,
        per_secret: false,
        default: "`auth/kubernetes`, or `auth/jwt` with `auth-method: jwt`",
        allowed: "a mount path such as `auth/k8s-prod`",
        meaning: "Mount path of the auth method in Vault.",
    },
    Annotation {
        key: VAULT_ADDR,
        group: Group::Injection,
        per_secret: false,
        default: "the webhook's `--vault-addr`",
        allowed: "an `http://` or `https://` URL without credentials, query or fragment",
        meaning: "Vault address for this pod. The webhook's CA bundle still applies \
                  unless `ca-cert` is set.",
    },
    Annotation {
        key: VAULT_NAMESPACE,
        group: Group::Injection,
        per_secret: false,
        default: "none",
        allowed: "a namespace path such as `team-a` or `org/team-a`",
        meaning: "Vault Enterprise / OpenBao namespace, sent with every request \
                  (`X-Vault-Namespace`), login included.",
    },
    Annotation {
        key: CA_CERT,
        group: Group::Injection,
        per_secret: false,
        default: "the webhook's `--vault-ca-file`, else the system roots",
        allowed: "`secret:<secret name>/<key>` or `configmap:<configmap name>/<key>`",
        meaning: "PEM CA bundle to trust for Vault, from one key of a Secret or \
                  ConfigMap in the pod's namespace. Mounted read-only into the agent \
                  containers only, at `/sidekey/ca/<key>`; it replaces the webhook's CA.",
    },
    Annotation {
        key: TLS_SERVER_NAME,
        group: Group::Injection,
        per_secret: false,
        default: "the host of the Vault address",
        allowed: "a DNS name or IP address",
        meaning: "Name Vault's certificate is verified against (and sent as SNI), for \
                  when the address is not the name in the certificate.",
    },
    Annotation {
        key: TLS_SKIP_VERIFY,
        group: Group::Injection,
        per_secret: false,
        default: "`false`",
        allowed: "`true`, `false`",
        meaning: "Do not verify Vault's certificate. For tests only: anyone on the \
                  network path can then read the agent's token and every secret. The \
                  agent logs a warning at every start while it is on.",
    },
    Annotation {
        key: SECRET_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "none",
        allowed: "a Vault path such as `secret/data/app` (KV v2) or `secret/app`",
        meaning: "Read this path and render it to `/vault/secrets/<name>` (or \
                  `file-<name>`). `<name>` is what Kubernetes accepts in a key: letters, \
                  digits, `-`, `_`, `.`, ending with a letter or digit.",
    },
    Annotation {
        key: FILE_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "`<name>`",
        allowed: "a relative file name or sub-path such as `db/config.json`; no `..`, \
                  `.` or empty component, not absolute",
        meaning: "File the secret is rendered to, under the secrets directory. Missing \
                  directories are created. Two secrets cannot share a file, and a file \
                  cannot be another's directory.",
    },
    Annotation {
        key: PERMS_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "`0644`",
        allowed: "an octal mode such as `0440` or `400`, including owner read",
        meaning: "Mode of the rendered file. The file belongs to the agent's user (see \
                  `run-as-user`): without read for others, the app can read it only when \
                  it runs as that user or group.",
    },
    Annotation {
        key: FORMAT_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "`json`",
        allowed: "`json`, `yaml`, `dotenv`, `properties`, or `key:<key>`",
        meaning: "How the secret's keys are written: a JSON object, a YAML mapping, \
                  `KEY=\"value\"` lines, Java properties, or the raw value of one key \
                  (`key:password` writes just the password).",
    },
    Annotation {
        key: REFRESH,
        group: Group::Secrets,
        per_secret: false,
        default: "`5m`",
        allowed: "a duration from `1s` to `7d`, e.g. `30s`, `5m`, `1h30m`",
        meaning: "How often static secrets (KV) are re-read. A file is rewritten, and \
                  the app notified, only when its content changed. Dynamic credentials \
                  follow their lease instead and are never re-issued by a refresh.",
    },
    Annotation {
        key: REFRESH_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "the pod's `refresh`",
        allowed: "a duration from `1s` to `7d`",
        meaning: "Re-read interval for this one secret.",
    },
    Annotation {
        key: NOTIFY_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "none",
        allowed: "`http://localhost:<port>/<path>` (POST), `signal:<SIGNAL>:<process>`, \
                  or `exec:[\"/path/to/program\", \"arg\"]`",
        meaning: "Tell the app once after each real change of this file, when the file \
                  is complete. Signals need `shareProcessNamespace: true`; commands run \
                  in the agent container without a shell.",
    },
    Annotation {
        key: PARAMS_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "none (the path is read)",
        allowed: "comma-separated `key=value` pairs, e.g. \
                  `common_name=app.demo.svc,ttl=1h`",
        meaning: "Write to the path with these parameters instead of reading it, as \
                  `pki/issue/<role>` needs. The certificate is issued again at about two \
                  thirds of its lifetime. Values cannot contain `,`.",
    },
    Annotation {
        key: TEMPLATE_PREFIX,
        group: Group::Secrets,
        per_secret: true,
        default: "none (the file is written in `format-<name>`)",
        allowed: "a Go text/template template, up to 64 KiB; see docs/templates.md",
        meaning: "Render the file from this template, which reads its secrets with \
                  `secret \"<path>\"` (consul-template's functions, as in Vault Agent \
                  Injector templates). A template alone declares the secret: \
                  `secret-<name>` is then optional and not read. Not with `format-<name>` \
                  or `params-<name>`. A missing key is an error, and a failing template \
                  keeps its last good file.",
    },
    Annotation {
        key: CONTAINERS,
        group: Group::Placement,
        per_secret: false,
        default: "every app container, no init container",
        allowed: "comma-separated names of the pod's containers or init containers",
        meaning: "Containers that get the secrets volume (read-only). Name an init \
                  container to let it read the secrets; it must then run after \
                  Sidekey's (`init-first` not `false`). An unknown name is refused.",
    },
    Annotation {
        key: MOUNT_PATH,
        group: Group::Placement,
        per_secret: false,
        default: "`/vault/secrets`",
        allowed: "an absolute, clean directory path of its own, e.g. `/run/secrets/app`",
        meaning: "Where the secrets volume is mounted, in the app and the agent alike. \
                  Refused when a chosen container already mounts something there, and \
                  for `/`, system directories and Sidekey's own paths.",
    },
    Annotation {
        key: AGENT_MODE,
        group: Group::Lifecycle,
        per_secret: false,
        default: "`native-sidecar`; with `--sidecar-mode classic`: `init-and-sidecar`, \
                  or `init-only` for pods of a Job",
        allowed: "`native-sidecar`, `init-and-sidecar`, `init-only`",
        meaning: "How the agent runs: one init container with `restartPolicy: Always` \
                  (Kubernetes 1.29+), an init container plus a sidecar, or an init \
                  container alone (no refresh, no revocation). See docs/modes.md.",
    },
    Annotation {
        key: INIT_FIRST,
        group: Group::Lifecycle,
        per_secret: false,
        default: "`true`",
        allowed: "`true`, `false`",
        meaning: "Whether Sidekey's init container runs before the pod's other init \
                  containers (so they can read secrets) or after them (`false`, e.g. \
                  after a service mesh's network setup). See docs/modes.md.",
    },
    Annotation {
        key: REVOKE_DELAY,
        group: Group::Lifecycle,
        per_secret: false,
        default: "`0s`",
        allowed: "a duration up to `1h`, covered by `terminationGracePeriodSeconds` \
                  with 5s to spare",
        meaning: "On pod termination, wait this long before revoking the pod's \
                  credentials, so the app can drain. Not with `init-only`, which never \
                  revokes.",
    },
    Annotation {
        key: SIZE_LIMIT,
        group: Group::Lifecycle,
        per_secret: false,
        default: "`16Mi`",
        allowed: "a quantity from `1Mi` to `1Gi`",
        meaning: "`sizeLimit` of the memory volume holding the rendered secrets; it \
                  counts against the pod's memory.",
    },
    Annotation {
        key: AGENT_CPU_REQUEST,
        group: Group::AgentContainer,
        per_secret: false,
        default: "`10m`",
        allowed: "a CPU quantity from `1m` to `64`, e.g. `50m`, `0.1`",
        meaning: "CPU request of each agent container.",
    },
    Annotation {
        key: AGENT_CPU_LIMIT,
        group: Group::AgentContainer,
        per_secret: false,
        default: "none",
        allowed: "a CPU quantity from `1m` to `64`, not below the request",
        meaning: "CPU limit of each agent container. Some quota policies require one.",
    },
    Annotation {
        key: AGENT_MEMORY_REQUEST,
        group: Group::AgentContainer,
        per_secret: false,
        default: "`16Mi`",
        allowed: "a memory quantity from `8Mi` to `16Gi`",
        meaning: "Memory request of each agent container. A request above the default \
                  limit raises the limit to match.",
    },
    Annotation {
        key: AGENT_MEMORY_LIMIT,
        group: Group::AgentContainer,
        per_secret: false,
        default: "`64Mi`",
        allowed: "a memory quantity from `8Mi` to `16Gi`, not below the request",
        meaning: "Memory limit of each agent container. A limit below the default \
                  request lowers the request to match.",
    },
    Annotation {
        key: RUN_AS_USER,
        group: Group::AgentContainer,
        per_secret: false,
        default: "none: the pod's `runAsUser`, else the image's user 65532, or the \
                  platform's choice (OpenShift)",
        allowed: "a user id from 1 to 2147483647 (0 is refused: the agent never runs \
                  as root, and the restricted profile forbids it)",
        meaning: "User id of the agent containers, which owns the rendered files. Set \
                  it to the app's user id to use modes such as `0400`.",
    },
    Annotation {
        key: RUN_AS_GROUP,
        group: Group::AgentContainer,
        per_secret: false,
        default: "none: the pod's, else the image's",
        allowed: "a group id from 0 to 2147483647",
        meaning: "Primary group id of the agent containers (and so of the rendered \
                  files), e.g. to use modes such as `0440` with a shared group.",
    },
    Annotation {
        key: METRICS_PORT,
        group: Group::AgentContainer,
        per_secret: false,
        default: "none: no metrics listener",
        allowed: "a port from 1024 to 65535 that no container of the pod uses",
        meaning: "Serve Prometheus metrics (render times, staleness, errors, expiry, \
                  renewals, Vault requests) on this port of the pod IP, from the sidecar; \
                  the container gets a `containerPort` named `metrics`. No secret is in \
                  them, but anyone who can reach the pod IP can read them. Ignored with \
                  `init-only`. See docs/metrics.md.",
    },
];

/// Settings of the webhook that every injected agent inherits.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Vault address given to the webhook (`--vault-addr`).
    pub vault_addr: String,
    /// PEM CA bundle given to the webhook (`--vault-ca-file`), passed on to the agent.
    pub vault_ca_pem: Option<String>,
}

/// How the agent runs in the pod (`agent-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// One init container `sidekey-agent` with `restartPolicy: Always` running
    /// `sidecar`, with a startup probe that passes after the first render. Needs
    /// Kubernetes 1.29 or later.
    NativeSidecar,
    /// Init container `sidekey-init` (`init`) plus sidecar `sidekey-agent` (`sidecar`).
    InitAndSidecar,
    /// Init container `sidekey-init` alone: files rendered once, never refreshed, the
    /// token never revoked (it expires with its TTL).
    InitOnly,
}

impl AgentMode {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::NativeSidecar => "native-sidecar",
            AgentMode::InitAndSidecar => "init-and-sidecar",
            AgentMode::InitOnly => "init-only",
        }
    }
}

/// Where the `ca-cert` bundle comes from: one key of a Secret or ConfigMap in the
/// pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// `secret:<name>/<key>`
    Secret { name: String, key: String },
    /// `configmap:<name>/<key>`
    ConfigMap { name: String, key: String },
}

impl CaSource {
    /// The key, which is also the file name under [`layout::CA_MOUNT_PATH`].
    pub fn key(&self) -> &str {
        match self {
            CaSource::Secret { key, .. } | CaSource::ConfigMap { key, .. } => key,
        }
    }
}

/// Requests and limits of each agent container, after defaults; `None` is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// What the annotations say about the pod itself rather than about the agent's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Containers (app or init, by name) that get the secrets mount; `None`: every
    /// app container. Sorted and deduplicated.
    pub containers: Option<BTreeSet<String>>,
    /// Mount path of the secrets volume, in the app and the agent alike.
    pub mount_path: String,
    /// `None`: the webhook's default for this pod.
    pub agent_mode: Option<AgentMode>,
    /// Whether Sidekey's init container goes before the pod's other init containers.
    pub init_first: bool,
    /// `sizeLimit` of the secrets volume.
    pub size_limit: String,
    /// Agent container resources.
    pub resources: Resources,
    /// Agent containers' `runAsUser`; `None`: not set by the annotations.
    pub run_as_user: Option<i64>,
    /// Agent containers' `runAsGroup`; `None`: not set by the annotations.
    pub run_as_group: Option<i64>,
    /// The `ca-cert` source the webhook mounts, if any.
    pub ca_cert: Option<CaSource>,
}

/// A pod annotation that cannot be honoured. Its `Display` is what the person creating
/// the pod reads in the admission denial, so it names the key and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key:?}: {problem}")]
pub struct AnnotationError {
    /// Full annotation key (with prefix).
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        key: format!("{PREFIX}{key}"),
        problem: problem.into(),
    }
}

/// Whether the pod asks for injection, by annotation or by label. An opt-in value that
/// is neither `true` nor `false` is an error rather than a silent "no".
pub fn opted_in(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, AnnotationError> {
    let key = format!("{PREFIX}{INJECT}");
    let mut own: Option<bool> = None;
    for (source, map) in [("annotation", annotations), ("label", labels)] {
        if let Some(v) = map.get(&key) {
            match parse_bool(v) {
                Some(b) => own = Some(own.unwrap_or(false) | b),
                None => {
                    return Err(AnnotationError {
                        key,
                        problem: format!("{source} value {v:?} is not \"true\" or \"false\""),
                    });
                }
            }
        }
    }
    // A pod the Vault Agent Injector or the OpenBao injector already injected is
    // theirs, so both can run side by side during a migration.
    if compat::injected_by_incumbent(annotations) {
        return Ok(false);
    }
    // An explicit sidekey.dev/inject wins: "false" keeps a pod on the incumbent.
    match own {
        Some(b) => Ok(b),
        None => Ok(compat::foreign_opt_in(annotations)?.unwrap_or(false)),
    }
}

/// Builds the agent configuration for an opted-in pod from its annotations.
pub fn agent_config(
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<AgentConfig, AnnotationError> {
    parse(annotations, defaults).map(|(config, _)| config)
}

/// Per-secret options of one secret, with the key each came from (for errors).
#[derive(Default)]
struct SecretOptions {
    refresh: Option<(String, u64)>,
    notify: Option<(String, Notify)>,
    file: Option<(String, String)>,
    mode: Option<(String, u32)>,
    format: Option<(String, Format)>,
    params: Option<(String, BTreeMap<String, String>)>,
}

/// Reads every Sidekey annotation of an opted-in pod.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<(AgentConfig, Placement), AnnotationError> {
    parse_with_warnings(annotations, defaults).map(|(c, p, _)| (c, p))
}

/// [`parse`], first translating `vault.hashicorp.com/` and `openbao.org/` annotations
/// ([`compat::translate`]); also returns the translation's warnings (keys accepted but
/// ignored), for the admission response.
pub fn parse_with_warnings(
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<(AgentConfig, Placement, Vec<String>), AnnotationError> {
    if compat::uses_foreign_prefix(annotations) {
        let translation = compat::translate_with_origins(annotations)?;
        let (config, placement) =
            parse_own(&translation.annotations, defaults).map_err(|e| translation.origin_of(e))?;
        return Ok((config, placement, translation.warnings));
    }
    let (config, placement) = parse_own(annotations, defaults)?;
    Ok((config, placement, Vec::new()))
}

fn parse_own(
    annotations: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> Result<(AgentConfig, Placement), AnnotationError> {
    let mut role = None;
    let mut auth_path = None;
    let mut auth_method = AuthMethod::Kubernetes;
    let mut vault_addr = None;
    let mut vault_namespace = None;
    let mut tls_server_name = None;
    let mut tls_skip_verify = false;
    let mut refresh_secs = config::DEFAULT_REFRESH_SECS;
    let mut revoke_delay_secs = 0;
    let mut metrics_port = None;
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    let mut templates: BTreeMap<String, String> = BTreeMap::new();
    let mut options: BTreeMap<String, SecretOptions> = BTreeMap::new();
    let mut quantities: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut placement = Placement {
        containers: None,
        mount_path: layout::SECRETS_MOUNT_PATH.to_owned(),
        agent_mode: None,
        init_first: true,
        size_limit: layout::SECRETS_SIZE_LIMIT.to_owned(),
        resources: Resources {
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
        },
        run_as_user: None,
        run_as_group: None,
        ca_cert: None,
    };

    for (full_key, value) in annotations {
        let Some(key) = full_key.strip_prefix(PREFIX) else {
            continue;
        };
        if key.len() > MAX_KEY_NAME_LEN {
            return Err(err(
                key,
                format!("the key's name part is longer than {MAX_KEY_NAME_LEN} characters"),
            ));
        }
        if full_key == layout::STATUS_ANNOTATION || key == INJECT {
            continue;
        }
        if let Some(name) = key.strip_prefix(SECRET_PREFIX) {
            check_secret_name(key, name)?;
            secrets.insert(name.to_owned(), parse_vault_path(key, value)?);
            continue;
        }
        if let Some(name) = key.strip_prefix(TEMPLATE_PREFIX) {
            check_secret_name(key, name)?;
            templates.insert(name.to_owned(), parse_template(key, value)?);
            continue;
        }
        let per_secret = [
            REFRESH_PREFIX,
            NOTIFY_PREFIX,
            FILE_PREFIX,
            PERMS_PREFIX,
            FORMAT_PREFIX,
            PARAMS_PREFIX,
        ];
        if let Some((prefix, name)) = per_secret
            .iter()
            .find_map(|p| key.strip_prefix(p).map(|n| (*p, n)))
        {
            let o = options.entry(name.to_owned()).or_default();
            let k = key.to_owned();
            match prefix {
                REFRESH_PREFIX => o.refresh = Some((k, parse_refresh(key, value)?)),
                NOTIFY_PREFIX => o.notify = Some((k, parse_notify(key, value)?)),
                FILE_PREFIX => o.file = Some((k, parse_file(key, value)?)),
                PERMS_PREFIX => o.mode = Some((k, parse_perms(key, value)?)),
                PARAMS_PREFIX => o.params = Some((k, parse_params(key, value)?)),
                _ => o.format = Some((k, parse_format(key, value)?)),
            }
            continue;
        }
        match key {
            ROLE => {
                let v = value.trim();
                if v.is_empty() || v.contains(char::is_whitespace) || v.contains('/') {
                    return Err(err(key, format!("{value:?} is not a role name")));
                }
                role = Some(v.to_owned());
            }
            AUTH_PATH => auth_path = Some(parse_mount_path(key, value)?),
            AUTH_METHOD => {
                auth_method = match value.trim() {
                    "kubernetes" => AuthMethod::Kubernetes,
                    "jwt" => AuthMethod::Jwt,
                    _ => return Err(err(key, format!("{value:?} is not kubernetes or jwt"))),
                }
            }
            VAULT_ADDR => {
                vault_addr = Some(config::check_vault_addr(value).map_err(|e| err(key, e))?);
            }
            VAULT_NAMESPACE => vault_namespace = Some(parse_vault_namespace(key, value)?),
            TLS_SERVER_NAME => tls_server_name = Some(parse_server_name(key, value)?),
            TLS_SKIP_VERIFY => {
                tls_skip_verify = parse_bool(value)
                    .ok_or_else(|| err(key, format!("{value:?} is not \"true\" or \"false\"")))?;
            }
            CA_CERT => placement.ca_cert = Some(parse_ca_source(key, value)?),
            REFRESH => refresh_secs = parse_refresh(key, value)?,
            REVOKE_DELAY => {
                let d = parse_duration(key, value)?;
                if d.as_secs() > MAX_REVOKE_DELAY_SECS {
                    return Err(err(
                        key,
                        format!("{value:?} is longer than the maximum of 1h"),
                    ));
                }
                revoke_delay_secs = d.as_secs();
            }
            CONTAINERS => placement.containers = Some(parse_containers(key, value)?),
            MOUNT_PATH => placement.mount_path = parse_secrets_mount_path(key, value)?,
            AGENT_MODE => {
                placement.agent_mode = Some(match value.trim() {
                    "native-sidecar" => AgentMode::NativeSidecar,
                    "init-and-sidecar" => AgentMode::InitAndSidecar,
                    "init-only" => AgentMode::InitOnly,
                    _ => {
                        return Err(err(
                            key,
                            format!(
                                "{value:?} is not one of native-sidecar, init-and-sidecar, init-only"
                            ),
                        ));
                    }
                });
            }
            INIT_FIRST => {
                placement.init_first = parse_bool(value)
                    .ok_or_else(|| err(key, format!("{value:?} is not \"true\" or \"false\"")))?;
            }
            SIZE_LIMIT => {
                let q = parse_quantity(key, value, "1Mi", layout::MAX_SECRETS_SIZE_LIMIT)?;
                placement.size_limit = q.text;
            }
            AGENT_CPU_REQUEST | AGENT_CPU_LIMIT => {
                let q = parse_quantity(key, value, "1m", "64")?;
                quantities.insert(
                    if key == AGENT_CPU_REQUEST {
                        AGENT_CPU_REQUEST
                    } else {
                        AGENT_CPU_LIMIT
                    },
                    q,
                );
            }
            AGENT_MEMORY_REQUEST | AGENT_MEMORY_LIMIT => {
                let q = parse_quantity(key, value, "8Mi", "16Gi")?;
                quantities.insert(
                    if key == AGENT_MEMORY_REQUEST {
                        AGENT_MEMORY_REQUEST
                    } else {
                        AGENT_MEMORY_LIMIT
                    },
                    q,
                );
            }
            RUN_AS_USER => placement.run_as_user = Some(parse_id(key, value, 1)?),
            RUN_AS_GROUP => placement.run_as_group = Some(parse_id(key, value, 0)?),
            METRICS_PORT => {
                let port = value
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p >= MIN_METRICS_PORT)
                    .ok_or_else(|| {
                        err(
                            key,
                            format!("{value:?} is not a port from {MIN_METRICS_PORT} to 65535"),
                        )
                    })?;
                metrics_port = Some(port);
            }
            _ => return Err(unknown(key)),
        }
    }

    let role = role.ok_or_else(|| {
        err(
            ROLE,
            "is required when injection is on: set it to the Vault role the pod logs in as",
        )
    })?;
    // A template alone declares its secret; its path is then not read.
    for name in templates.keys() {
        secrets.entry(name.clone()).or_default();
    }
    if secrets.is_empty() {
        return Err(err(
            &format!("{SECRET_PREFIX}<name>"),
            "no secret to render: add at least one, e.g. sidekey.dev/secret-db: secret/data/db",
        ));
    }

    // A per-secret option must name a declared secret, or it would silently do nothing.
    for (name, o) in &options {
        if secrets.contains_key(name) {
            continue;
        }
        let keys = [
            o.refresh.as_ref().map(|(k, _)| k),
            o.notify.as_ref().map(|(k, _)| k),
            o.file.as_ref().map(|(k, _)| k),
            o.mode.as_ref().map(|(k, _)| k),
            o.format.as_ref().map(|(k, _)| k),
            o.params.as_ref().map(|(k, _)| k),
        ];
        if let Some(key) = keys.into_iter().flatten().next() {
            return Err(err(
                key,
                format!(
                    "names secret {name:?}, but there is no {PREFIX}{SECRET_PREFIX}{name} annotation"
                ),
            ));
        }
    }

    placement.resources = resources(&quantities)?;

    let auth_path = auth_path.unwrap_or_else(|| {
        match auth_method {
            AuthMethod::Kubernetes => DEFAULT_AUTH_PATH,
            AuthMethod::Jwt => DEFAULT_JWT_AUTH_PATH,
        }
        .to_owned()
    });
    let ca_file = placement
        .ca_cert
        .as_ref()
        .map(|ca| format!("{}/{}", layout::CA_MOUNT_PATH, ca.key()));
    let vault = VaultConfig {
        addr: vault_addr.unwrap_or_else(|| defaults.vault_addr.clone()),
        // A pod's own CA replaces the webhook's: it may point at another Vault.
        ca_pem: if ca_file.is_some() {
            None
        } else {
            defaults.vault_ca_pem.clone()
        },
        namespace: vault_namespace,
        tls_server_name,
        ca_file,
        tls_skip_verify,
    };
    let auth = AuthConfig {
        method: auth_method,
        mount_path: auth_path,
        role,
        jwt_path: layout::token_path(),
    };
    let mut config = AgentConfig::new(vault, auth);
    config.secrets_dir.clone_from(&placement.mount_path);
    config.refresh_secs = refresh_secs;
    config.revoke_delay_secs = revoke_delay_secs;
    config.metrics_port = metrics_port;

    // Which annotation chose each file, to name it when two collide.
    let mut file_keys: BTreeMap<String, String> = BTreeMap::new();
    for (name, path) in secrets {
        let o = options.remove(&name).unwrap_or_default();
        let (file_key, file) = o
            .file
            .unwrap_or_else(|| (format!("{SECRET_PREFIX}{name}"), name.clone()));
        if let Some(other) = file_keys.insert(file.clone(), file_key.clone()) {
            return Err(err(
                &file_key,
                format!(
                    "renders to {file:?}, which {PREFIX}{other} already renders to: give one of \
                     them another file with {PREFIX}{FILE_PREFIX}<name>"
                ),
            ));
        }
        let template = templates.remove(&name);
        if template.is_some() {
            let clash = [
                o.format.as_ref().map(|(k, _)| k),
                o.params.as_ref().map(|(k, _)| k),
            ];
            if let Some(k) = clash.into_iter().flatten().next() {
                return Err(err(
                    k,
                    format!(
                        "{PREFIX}{TEMPLATE_PREFIX}{name} renders this file; a template reads \
                         its own secrets and writes its own format"
                    ),
                ));
            }
        }
        config.secrets.push(SecretSpec {
            template,
            file,
            mode: o.mode.map_or(config::DEFAULT_FILE_MODE, |(_, m)| m),
            format: o.format.map(|(_, f)| f).unwrap_or_default(),
            refresh_secs: o.refresh.map(|(_, secs)| secs),
            notify: o.notify.map(|(_, n)| n),
            params: o.params.map(|(_, p)| p).unwrap_or_default(),
            ..SecretSpec::new(name, path)
        });
    }
    if let Some((file, under)) = config::file_under_file(file_keys.keys().map(String::as_str)) {
        return Err(err(
            &file_keys[under],
            format!(
                "renders to {under:?}, but {PREFIX}{} renders to {file:?}, which cannot be a file \
                 and a directory at once",
                file_keys[file]
            ),
        ));
    }
    check_size(&config)?;
    Ok((config, placement))
}

/// Refuses more than [`MAX_SECRETS`] secrets and a configuration too large for the
/// environment variable that carries it.
fn check_size(config: &AgentConfig) -> Result<(), AnnotationError> {
    let key = format!("{SECRET_PREFIX}<name>");
    if config.secrets.len() > MAX_SECRETS {
        return Err(err(
            &key,
            format!(
                "the pod declares {} secrets and templates, more than the {MAX_SECRETS} one \
                 pod may have: group them (a template can read several secrets into one file) \
                 or split the workload",
                config.secrets.len()
            ),
        ));
    }
    let bytes = config.to_json().len();
    if bytes > MAX_CONFIG_BYTES {
        return Err(err(
            &key,
            format!(
                "the agent configuration these annotations make is {bytes} bytes, more than \
                 the {MAX_CONFIG_BYTES} its environment variable can carry: use fewer or \
                 shorter secrets and templates"
            ),
        ));
    }
    Ok(())
}

/// Applies defaults to the resource annotations and checks requests against limits.
fn resources(q: &BTreeMap<&str, Quantity>) -> Result<Resources, AnnotationError> {
    let default = |s: &str| quantity::parse(s).ok();
    let pair =
        |req_key: &str, lim_key: &str, req_default: Option<&str>, lim_default: Option<&str>| {
            let req = q.get(req_key).cloned();
            let lim = q.get(lim_key).cloned();
            match (req, lim) {
                (Some(r), Some(l)) if r.milli > l.milli => Err(err(
                    req_key,
                    format!(
                        "request {:?} is above the limit {:?} of {PREFIX}{lim_key}",
                        r.text, l.text
                    ),
                )),
                (Some(r), Some(l)) => Ok((Some(r.text), Some(l.text))),
                (Some(r), None) => {
                    // A request above the default limit raises the limit with it.
                    let l = lim_default.and_then(default);
                    match l {
                        Some(l) if l.milli >= r.milli => Ok((Some(r.text), Some(l.text))),
                        Some(_) => Ok((Some(r.text.clone()), Some(r.text))),
                        None => Ok((Some(r.text), None)),
                    }
                }
                (None, Some(l)) => {
                    let r = req_default.and_then(default);
                    match r {
                        Some(r) if r.milli <= l.milli => Ok((Some(r.text), Some(l.text))),
                        Some(_) => Ok((Some(l.text.clone()), Some(l.text))),
                        None => Ok((None, Some(l.text))),
                    }
                }
                (None, None) => Ok((
                    req_default.map(str::to_owned),
                    lim_default.map(str::to_owned),
                )),
            }
        };
    let (cpu_request, cpu_limit) = pair(
        AGENT_CPU_REQUEST,
        AGENT_CPU_LIMIT,
        Some(DEFAULT_CPU_REQUEST),
        None,
    )?;
    let (memory_request, memory_limit) = pair(
        AGENT_MEMORY_REQUEST,
        AGENT_MEMORY_LIMIT,
        Some(DEFAULT_MEMORY_REQUEST),
        Some(DEFAULT_MEMORY_LIMIT),
    )?;
    Ok(Resources {
        cpu_request,
        cpu_limit,
        memory_request,
        memory_limit,
    })
}

/// The annotation table as Markdown, one table per [`Group`], as it stands in
/// `docs/annotations.md` between the `BEGIN TABLE` and `END TABLE` markers (a test
/// keeps the two equal).
pub fn markdown_table() -> String {
    let groups = [
        Group::Injection,
        Group::Secrets,
        Group::Placement,
        Group::Lifecycle,
        Group::AgentContainer,
    ];
    let mut out = String::new();
    for group in groups {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("### {}\n\n", group.title()));
        out.push_str("| annotation | per secret | default | allowed values | meaning |\n");
        out.push_str("|---|---|---|---|---|\n");
        for a in TABLE.iter().filter(|a| a.group == group) {
            let key = if a.per_secret {
                format!("`{PREFIX}{}<name>`", a.key)
            } else {
                format!("`{PREFIX}{}`", a.key)
            };
            let per = if a.per_secret { "yes" } else { "no" };
            let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            out.push_str(&format!(
                "| {key} | {per} | {} | {} | {} |\n",
                squash(a.default),
                squash(a.allowed),
                squash(a.meaning)
            ));
        }
    }
    out
}

fn unknown(key: &str) -> AnnotationError {
    let known: Vec<String> = TABLE
        .iter()
        .map(|a| {
            if a.per_secret {
                format!("{}<name>", a.key)
            } else {
                a.key.to_owned()
            }
        })
        .collect();
    err(
        key,
        format!(
            "unknown Sidekey annotation; known keys are {}",
            known.join(", ")
        ),
    )
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A secret name is what Kubernetes accepts after `secret-` in an annotation key's
/// name part: letters, digits, `-`, `_`, `.`, ending with a letter or digit. As a file
/// name that can never be `.`, `..` or contain `/`.
fn check_secret_name(key: &str, name: &str) -> Result<(), AnnotationError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!(
                "secret name {name:?} must be letters, digits, '-', '_' or '.', \
                 ending with a letter or digit"
            ),
        ))
    }
}

/// `file-<name>`: a relative path that stays under the secrets directory.
fn parse_file(key: &str, value: &str) -> Result<String, AnnotationError> {
    let file = value.trim();
    if let Err(why) = config::check_relative_file(file) {
        return Err(err(key, format!("file {file:?} {why}")));
    }
    if file.len() > 1024 || file.split('/').any(|p| p.len() > 255) {
        return Err(err(key, format!("file {file:?} is too long")));
    }
    if file.chars().any(char::is_control) {
        return Err(err(
            key,
            format!("file {file:?} contains a control character"),
        ));
    }
    Ok(file.to_owned())
}

/// `perms-<name>`: octal permission bits, `0440`, `440` or `0o440`.
fn parse_perms(key: &str, value: &str) -> Result<u32, AnnotationError> {
    let v = value.trim();
    let digits = v.strip_prefix("0o").unwrap_or(v);
    let digits = if digits.len() == 4 {
        digits.strip_prefix('0').unwrap_or("x")
    } else {
        digits
    };
    let mode = (digits.len() == 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .ok_or_else(|| {
            err(
                key,
                format!(
                    "{value:?} is not an octal file mode such as 0440 (permission bits only; \
                     no setuid, setgid or sticky bit)"
                ),
            )
        })?;
    if mode & 0o400 == 0 {
        return Err(err(
            key,
            format!("mode {mode:04o} does not let the file's owner read it; the agent must"),
        ));
    }
    Ok(mode)
}

/// `format-<name>`.
fn parse_format(key: &str, value: &str) -> Result<Format, AnnotationError> {
    let v = value.trim();
    Ok(match v {
        "json" => Format::Json,
        "yaml" => Format::Yaml,
        "dotenv" => Format::Dotenv,
        "properties" => Format::Properties,
        _ => match v.strip_prefix("key:") {
            Some(k) if !k.is_empty() && k.len() <= 256 && !k.chars().any(char::is_control) => {
                Format::Key(k.to_owned())
            }
            Some(_) => return Err(err(key, "key:<key> needs a key name, e.g. key:password")),
            None => {
                return Err(err(
                    key,
                    format!("{v:?} is not one of json, yaml, dotenv, properties or key:<key>"),
                ));
            }
        },
    })
}

/// `params-<name>`: `key=value` pairs separated by commas. Keys are Vault parameter
/// names (letters, digits, `_`, `-`, `.`); values are anything but `,` and control
/// characters. A key given twice is refused rather than one silently winning.
fn parse_params(key: &str, value: &str) -> Result<BTreeMap<String, String>, AnnotationError> {
    let mut params = BTreeMap::new();
    for pair in value.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(err(
                key,
                format!("{pair:?} is not key=value, e.g. common_name=app.demo.svc"),
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        let key_ok = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(err(key, format!("{k:?} is not a parameter name")));
        }
        if v.len() > 4096 || v.chars().any(char::is_control) {
            return Err(err(
                key,
                format!("the value of {k:?} is too long or has a control character"),
            ));
        }
        if params.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(err(key, format!("parameter {k:?} is given twice")));
        }
    }
    if params.is_empty() {
        return Err(err(
            key,
            "needs at least one key=value pair, e.g. common_name=app.demo.svc",
        ));
    }
    Ok(params)
}

fn parse_vault_namespace(key: &str, value: &str) -> Result<String, AnnotationError> {
    let ns = value.trim().trim_matches('/');
    let ok = !ns.is_empty()
        && ns.len() <= 256
        && ns.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        });
    if ok {
        Ok(ns.to_owned())
    } else {
        Err(err(
            key,
            format!("{value:?} is not a Vault namespace such as team-a or org/team-a"),
        ))
    }
}

fn parse_server_name(key: &str, value: &str) -> Result<String, AnnotationError> {
    let v = value.trim();
    if v.parse::<std::net::IpAddr>().is_ok() {
        return Ok(v.to_owned());
    }
    let name = v.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(err(
            key,
            format!("{value:?} is not a DNS name or IP address"),
        ))
    }
}

/// A Kubernetes object name (DNS subdomain): lowercase letters, digits, `-`, `.`.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A container name (DNS label).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// `ca-cert`: `secret:<name>/<key>` or `configmap:<name>/<key>`.
fn parse_ca_source(key: &str, value: &str) -> Result<CaSource, AnnotationError> {
    let v = value.trim();
    let usage = "use secret:<secret name>/<key> or configmap:<configmap name>/<key>";
    // The kind first: `file:/etc/ca.pem` is a wrong kind, not a Secret named "".
    let (kind, rest) = v
        .split_once(':')
        .ok_or_else(|| err(key, format!("{v:?} names no Secret or ConfigMap; {usage}")))?;
    if !matches!(kind, "secret" | "configmap") {
        return Err(err(
            key,
            format!("{kind:?} is not secret or configmap; {usage}"),
        ));
    }
    let (name, item) = rest.split_once('/').ok_or_else(|| err(key, usage))?;
    if !is_dns_subdomain(name) {
        return Err(err(
            key,
            format!("{name:?} is not the name of a Secret or ConfigMap"),
        ));
    }
    // What Kubernetes accepts as a key of a Secret or ConfigMap.
    let key_ok = !item.is_empty()
        && item.len() <= 253
        && item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && item != "."
        && !item.starts_with("..");
    if !key_ok {
        return Err(err(
            key,
            format!("{item:?} is not a key of a Secret or ConfigMap"),
        ));
    }
    let (name, item) = (name.to_owned(), item.to_owned());
    if kind == "secret" {
        Ok(CaSource::Secret { name, key: item })
    } else {
        Ok(CaSource::ConfigMap { name, key: item })
    }
}

fn parse_containers(key: &str, value: &str) -> Result<BTreeSet<String>, AnnotationError> {
    let mut names = BTreeSet::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !is_dns_label(name) {
            return Err(err(key, format!("{name:?} is not a container name")));
        }
        names.insert(name.to_owned());
    }
    if names.is_empty() {
        return Err(err(key, "name at least one container, e.g. app,worker"));
    }
    Ok(names)
}

/// Directories a secrets mount would hide from the app or the agent.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
    "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
];

/// `mount-path`: absolute, clean, not `/`, not a system directory itself (a
/// sub-directory is fine, except under `/proc`, `/sys`, `/dev`), and apart from the
/// agent's own paths, since the agent mounts the volume at the same place.
fn parse_secrets_mount_path(key: &str, value: &str) -> Result<String, AnnotationError> {
    let v = value.trim();
    let path = if v.len() > 1 {
        v.trim_end_matches('/')
    } else {
        v
    };
    let clean = path.starts_with('/')
        && path.len() <= 256
        && path[1..]
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && !path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':');
    if !clean || path == "/" {
        return Err(err(
            key,
            format!("{value:?} is not an absolute, clean directory path such as /vault/secrets"),
        ));
    }
    let overlaps = |other: &str| {
        path == other
            || other.starts_with(&format!("{path}/"))
            || path.starts_with(&format!("{other}/"))
    };
    for own in [
        layout::STATE_MOUNT_PATH,
        layout::TOKEN_MOUNT_PATH,
        layout::CA_MOUNT_PATH,
        layout::AGENT_BINARY,
    ] {
        if overlaps(own) {
            return Err(err(
                key,
                format!("{path:?} overlaps Sidekey's own path {own}"),
            ));
        }
    }
    let under_kernel = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|d| path.starts_with(&format!("{d}/")));
    if SYSTEM_DIRS.contains(&path) || under_kernel {
        return Err(err(
            key,
            format!("{path:?} would hide a system directory: use a directory of its own"),
        ));
    }
    Ok(path.to_owned())
}

fn parse_quantity(
    key: &str,
    value: &str,
    min: &str,
    max: &str,
) -> Result<Quantity, AnnotationError> {
    let q = quantity::parse(value).map_err(|e| err(key, e.to_string()))?;
    let bound = |b: &str| quantity::parse(b).map(|b| b.milli).unwrap_or(0);
    if q.milli < bound(min) || q.milli > bound(max) {
        return Err(err(
            key,
            format!("{:?} is not between {min} and {max}", q.text),
        ));
    }
    Ok(q)
}

fn parse_id(key: &str, value: &str, min: i64) -> Result<i64, AnnotationError> {
    let v = value.trim();
    let id: i64 = v
        .parse()
        .ok()
        .filter(|id| (0..=MAX_ID).contains(id))
        .ok_or_else(|| {
            err(
                key,
                format!("{value:?} is not an id from {min} to {MAX_ID}"),
            )
        })?;
    if id < min {
        return Err(err(
            key,
            "0 (root) is refused: the agent never runs as root, and the Pod Security \
             Standard \"restricted\" forbids it; leave it unset or pick a non-zero id",
        ));
    }
    Ok(id)
}

/// `template-<name>`: kept verbatim (whitespace is part of the output); only its size
/// is checked here, its syntax when the agent starts.
fn parse_template(key: &str, value: &str) -> Result<String, AnnotationError> {
    const MAX: usize = 64 * 1024;
    if value.trim().is_empty() {
        return Err(err(key, "the template is empty"));
    }
    if value.len() > MAX {
        return Err(err(key, "the template is longer than 64 KiB"));
    }
    Ok(value.to_owned())
}

fn parse_vault_path(key: &str, value: &str) -> Result<String, AnnotationError> {
    let path = value.trim().trim_start_matches('/');
    if path.is_empty() {
        return Err(err(key, "the Vault path is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(err(
            key,
            format!("the Vault path is longer than {MAX_PATH_LEN} characters"),
        ));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(err(
            key,
            format!("Vault path {path:?} contains whitespace, '?' or '#'"),
        ));
    }
    if path
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(err(
            key,
            format!("Vault path {path:?} has an empty, '.' or '..' segment"),
        ));
    }
    Ok(path.to_owned())
}

fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration, AnnotationError> {
    duration::parse(value).map_err(|e| err(key, e.to_string()))
}

fn parse_refresh(key: &str, value: &str) -> Result<u64, AnnotationError> {
    let d = parse_duration(key, value)?;
    if d.as_secs() < MIN_REFRESH_SECS {
        return Err(err(
            key,
            format!("{value:?} is shorter than the minimum of 1s"),
        ));
    }
    if d.as_secs() > MAX_REFRESH_SECS {
        return Err(err(
            key,
            format!("{value:?} is longer than the maximum of 7d"),
        ));
    }
    Ok(d.as_secs())
}

/// Signals a notification may send: the ones apps conventionally reload or rotate on.
const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH",
];

fn parse_notify(key: &str, value: &str) -> Result<Notify, AnnotationError> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix("http://") {
        // Userinfo first: `admin:pw@localhost:8080` would otherwise be read as host
        // `admin` and port `pw@localhost:8080`, echoing the password.
        if config::has_userinfo(v) {
            return Err(err(
                key,
                format!(
                    "{:?} must not carry credentials (user@host); the agent POSTs to the \
                     pod's own loopback without them",
                    config::redact_url(v)
                ),
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if !h.ends_with(']') || h.starts_with('[') => {
                if port.parse::<u16>().is_err() {
                    return Err(err(key, format!("{port:?} is not a port number")));
                }
                h
            }
            _ => authority,
        };
        if !matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return Err(err(
                key,
                format!(
                    "host {host:?} is not the pod's own loopback: use localhost, 127.0.0.1 or [::1]"
                ),
            ));
        }
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(key, "the URL contains whitespace"));
        }
        return Ok(Notify::Http { url: v.to_owned() });
    }
    if let Some(rest) = v.strip_prefix("signal:") {
        let Some((sig, process)) = rest.split_once(':') else {
            return Err(err(
                key,
                "write a signal notification as signal:<SIGNAL>:<process name>",
            ));
        };
        let sig = sig.trim().to_ascii_uppercase();
        let sig = if sig.starts_with("SIG") {
            sig
        } else {
            format!("SIG{sig}")
        };
        if !SIGNALS.contains(&sig.as_str()) {
            return Err(err(
                key,
                format!("signal {sig:?} is not one of {}", SIGNALS.join(", ")),
            ));
        }
        let process = process.trim();
        if process.is_empty() || process.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(err(key, format!("{process:?} is not a process name")));
        }
        return Ok(Notify::Signal {
            signal: sig,
            process: process.to_owned(),
        });
    }
    if let Some(rest) = v.strip_prefix("exec:") {
        let argv: Vec<String> = serde_json::from_str(rest.trim()).map_err(|_| {
            err(key, "write a command as exec:[\"/path/to/program\", \"arg\", ...] (a JSON array; there is no shell)")
        })?;
        match argv.first() {
            Some(p) if p.starts_with('/') => {}
            _ => {
                return Err(err(
                    key,
                    "the command's first element must be an absolute program path",
                ));
            }
        }
        return Ok(Notify::Command { argv });
    }
    Err(err(
        key,
        "use http://localhost:<port>/<path>, signal:<SIGNAL>:<process> or exec:[\"/program\", \"arg\"]",
    ))
}

fn parse_mount_path(key: &str, value: &str) -> Result<String, AnnotationError> {
    let path = value.trim().trim_matches('/');
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.split('/').all(|p| {
            !p.is_empty()
                && p != ".."
                && p != "."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(path.to_owned())
    } else {
        Err(err(
            key,
            format!("{value:?} is not an auth mount path such as auth/kubernetes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn defaults() -> Defaults {
        Defaults {
            vault_addr: "https://vault:8200".into(),
            vault_ca_pem: Some("PEM".into()),
        }
    }

    #[test]
    fn opt_in_by_annotation_or_label() {
        let on = map(&[("sidekey.dev/inject", "true")]);
        let none = map(&[]);
        assert_eq!(opted_in(&on, &none), Ok(true));
        assert_eq!(opted_in(&none, &on), Ok(true));
        assert_eq!(opted_in(&none, &none), Ok(false));
        assert_eq!(
            opted_in(&map(&[("sidekey.dev/inject", "False")]), &none),
            Ok(false)
        );
        let bad = opted_in(&map(&[("sidekey.dev/inject", "yes please")]), &none).unwrap_err();
        assert_eq!(bad.key, "sidekey.dev/inject");
    }

    #[test]
    fn builds_config_with_defaults() {
        let a = map(&[
            ("sidekey.dev/inject", "true"),
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-database-config.txt", "secret/data/db"),
            ("other.io/ignored", "x"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.auth.role, "app");
        assert_eq!(c.auth.mount_path, "auth/kubernetes");
        assert_eq!(c.vault.ca_pem.as_deref(), Some("PEM"));
        assert_eq!(c.secrets.len(), 1);
        assert_eq!(c.secrets[0].file, "database-config.txt");
        assert_eq!(c.secrets[0].path, "secret/data/db");
        assert!(c.check().is_ok());
    }

    #[test]
    fn denials_name_the_annotation() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("sidekey.dev/secret-db", "secret/db")],
                "sidekey.dev/role",
            ),
            (&[("sidekey.dev/role", "app")], "sidekey.dev/secret-<name>"),
            (
                &[("sidekey.dev/role", "app"), ("sidekey.dev/secret-db", "")],
                "sidekey.dev/secret-db",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/../b"),
                ],
                "sidekey.dev/secret-db",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-hidden.", "a/b"),
                ],
                "sidekey.dev/secret-hidden.",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/b"),
                    ("sidekey.dev/secrets-x", "a"),
                ],
                "sidekey.dev/secrets-x",
            ),
            (
                &[
                    ("sidekey.dev/role", "a b"),
                    ("sidekey.dev/secret-db", "a/b"),
                ],
                "sidekey.dev/role",
            ),
            (
                &[
                    ("sidekey.dev/role", "app"),
                    ("sidekey.dev/secret-db", "a/b"),
                    ("sidekey.dev/auth-path", "../x"),
                ],
                "sidekey.dev/auth-path",
            ),
        ];
        for (pairs, key) in cases {
            let e = agent_config(&map(pairs), &defaults()).unwrap_err();
            assert_eq!(&e.key, key, "{pairs:?} -> {e}");
            assert!(
                e.to_string().starts_with(&format!("annotation {key:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn metrics_port_is_opt_in_and_above_the_privileged_range() {
        let base = [
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
        ];
        let parse = |extra: &[(&str, &str)]| {
            let map: BTreeMap<String, String> = base
                .iter()
                .chain(extra)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            agent_config(&map, &Defaults::default())
        };
        assert_eq!(parse(&[]).unwrap().metrics_port, None);
        assert_eq!(
            parse(&[("sidekey.dev/metrics-port", "9102")])
                .unwrap()
                .metrics_port,
            Some(9102)
        );
        for bad in ["80", "0", "65536", "http", ""] {
            let e = parse(&[("sidekey.dev/metrics-port", bad)]).unwrap_err();
            assert!(e.to_string().contains("metrics-port"), "{e}");
        }
    }

    #[test]
    fn docs_annotations_md_matches_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/annotations.md");
        let doc = std::fs::read_to_string(path).expect("docs/annotations.md exists");
        let begin = doc
            .find("<!-- BEGIN TABLE -->\n")
            .expect("BEGIN TABLE marker")
            + 21;
        let end = doc.find("<!-- END TABLE -->").expect("END TABLE marker");
        let table = markdown_table();
        if std::env::var_os("SIDEKEY_BLESS").is_some() {
            let updated = format!("{}{table}{}", &doc[..begin], &doc[end..]);
            std::fs::write(path, updated).expect("rewrite docs/annotations.md");
            return;
        }
        assert_eq!(
            &doc[begin..end],
            table,
            "docs/annotations.md is out of date: run `SIDEKEY_BLESS=1 cargo test -p sidekey-agent --lib docs_annotations`"
        );
    }

    #[test]
    fn refresh_and_notify_per_secret() {
        let a = map(&[
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
            ("sidekey.dev/secret-api", "secret/data/api"),
            ("sidekey.dev/refresh", "1m"),
            ("sidekey.dev/refresh-db", "30s"),
            ("sidekey.dev/notify-db", "signal:hup:nginx"),
            ("sidekey.dev/notify-api", "http://localhost:8080/-/reload"),
            ("sidekey.dev/revoke-delay", "10s"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.refresh_secs, 60);
        assert_eq!(c.revoke_delay_secs, 10);
        let db = c.secrets.iter().find(|s| s.name == "db").unwrap();
        assert_eq!(db.refresh_secs, Some(30));
        assert_eq!(
            db.notify,
            Some(Notify::Signal {
                signal: "SIGHUP".into(),
                process: "nginx".into()
            })
        );
        let api = c.secrets.iter().find(|s| s.name == "api").unwrap();
        assert_eq!(api.refresh_secs, None);
        assert_eq!(
            api.notify,
            Some(Notify::Http {
                url: "http://localhost:8080/-/reload".into()
            })
        );
    }

    #[test]
    fn params_make_a_write_and_skip_verify_is_explicit() {
        let a = map(&[
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-cert", "pki/issue/web"),
            (
                "sidekey.dev/params-cert",
                "common_name=app.demo.svc, ttl=1h",
            ),
            ("sidekey.dev/tls-skip-verify", "true"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert!(c.vault.tls_skip_verify);
        let params: Vec<(&str, &str)> = c.secrets[0]
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(params, [("common_name", "app.demo.svc"), ("ttl", "1h")]);

        let base = [
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-cert", "pki/issue/web"),
        ];
        for (k, v, says) in [
            ("sidekey.dev/params-cert", "common_name", "not key=value"),
            ("sidekey.dev/params-cert", "a=1,a=2", "given twice"),
            (
                "sidekey.dev/params-cert",
                "bad key=1",
                "not a parameter name",
            ),
            ("sidekey.dev/params-cert", " , ", "at least one"),
            (
                "sidekey.dev/params-other",
                "a=1",
                "no sidekey.dev/secret-other",
            ),
            ("sidekey.dev/tls-skip-verify", "yes", "not \"true\""),
        ] {
            let mut a = map(&base);
            a.insert(k.into(), v.into());
            let e = agent_config(&a, &defaults()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&k["sidekey.dev/".len()..]), "{text}");
            assert!(text.contains(says), "{k}={v}: {text}");
        }
    }

    #[test]
    fn bad_refresh_and_notify_values_are_denied_by_key() {
        let base = [
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
        ];
        let cases: &[(&str, &str)] = &[
            ("sidekey.dev/refresh", "500ms"),
            ("sidekey.dev/refresh", "soon"),
            ("sidekey.dev/refresh", "30d"),
            ("sidekey.dev/refresh-db", "0s"),
            ("sidekey.dev/refresh-other", "5s"),
            ("sidekey.dev/notify-other", "signal:HUP:nginx"),
            ("sidekey.dev/notify-db", "http://example.com/reload"),
            ("sidekey.dev/notify-db", "signal:KILL:nginx"),
            ("sidekey.dev/notify-db", "exec:/bin/sh -c reload"),
            ("sidekey.dev/notify-db", "exec:[\"reload\"]"),
            ("sidekey.dev/notify-db", "reload please"),
            ("sidekey.dev/revoke-delay", "2h"),
        ];
        for (k, v) in cases {
            let mut pairs = base.to_vec();
            pairs.push((k, v));
            let e = agent_config(&map(&pairs), &defaults()).unwrap_err();
            assert_eq!(&e.key, k, "{k}={v} -> {e}");
        }
    }

    #[test]
    fn auth_path_slashes_are_trimmed() {
        let a = map(&[
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "/secret/data/db"),
            ("sidekey.dev/auth-path", "/auth/k8s-prod/"),
        ]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.auth.mount_path, "auth/k8s-prod");
        assert_eq!(c.secrets[0].path, "secret/data/db");
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("sidekey.dev/role", "app"),
            ("sidekey.dev/secret-db", "secret/data/db"),
        ]
    }

    fn with(
        extra: &[(&'static str, &'static str)],
    ) -> Result<(AgentConfig, Placement), AnnotationError> {
        let mut pairs = base();
        pairs.extend_from_slice(extra);
        parse(&map(&pairs), &defaults())
    }

    fn denied(extra: &[(&'static str, &'static str)]) -> AnnotationError {
        let e = with(extra).expect_err("denied");
        assert!(
            e.to_string()
                .starts_with(&format!("annotation {:?}", e.key)),
            "{e}"
        );
        e
    }

    #[test]
    fn secret_names_follow_the_kubernetes_key_rule() {
        for name in [".hidden", "_x", "-x", "a.b-c_d", "X9"] {
            let key = format!("sidekey.dev/secret-{name}");
            let mut a = map(&base());
            a.insert(key, "secret/x".into());
            let c = agent_config(&a, &defaults()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.secrets.iter().any(|s| s.file == name), "{name}");
        }
        for name in ["x.", "x-", "a/b", "a b", ""] {
            let key = format!("sidekey.dev/secret-{name}");
            let mut a = map(&base());
            a.insert(key.clone(), "secret/x".into());
            assert_eq!(agent_config(&a, &defaults()).unwrap_err().key, key);
        }
    }

    #[test]
    fn injection_annotations_reach_the_vault_and_auth_config() {
        let (c, p) = with(&[
            ("sidekey.dev/auth-method", "jwt"),
            ("sidekey.dev/vault-addr", "https://vault.other:8200/"),
            ("sidekey.dev/vault-namespace", "/org/team-a/"),
            ("sidekey.dev/tls-server-name", "Vault.Internal"),
            ("sidekey.dev/ca-cert", "configmap:vault-ca/ca.crt"),
        ])
        .unwrap();
        assert_eq!(c.auth.method, AuthMethod::Jwt);
        assert_eq!(c.auth.mount_path, "auth/jwt");
        assert_eq!(c.vault.addr, "https://vault.other:8200");
        assert_eq!(c.vault.namespace.as_deref(), Some("org/team-a"));
        assert_eq!(c.vault.tls_server_name.as_deref(), Some("vault.internal"));
        assert_eq!(c.vault.ca_file.as_deref(), Some("/sidekey/ca/ca.crt"));
        assert_eq!(c.vault.ca_pem, None, "the pod's CA replaces the webhook's");
        assert_eq!(
            p.ca_cert,
            Some(CaSource::ConfigMap {
                name: "vault-ca".into(),
                key: "ca.crt".into()
            })
        );
        let (c, _) = with(&[
            ("sidekey.dev/auth-method", "jwt"),
            ("sidekey.dev/auth-path", "auth/oidc-prod"),
            ("sidekey.dev/ca-cert", "secret:tls/ca.pem"),
        ])
        .unwrap();
        assert_eq!(c.auth.mount_path, "auth/oidc-prod");
        assert_eq!(c.vault.ca_file.as_deref(), Some("/sidekey/ca/ca.pem"));
        let (c, p) = with(&[]).unwrap();
        assert_eq!(c.auth.method, AuthMethod::Kubernetes);
        assert_eq!(c.vault.addr, "https://vault:8200");
        assert_eq!(c.vault.ca_pem.as_deref(), Some("PEM"));
        assert_eq!(p.ca_cert, None);
        assert_eq!(c.vault.tls_server_name, None);
    }

    #[test]
    fn injection_annotations_that_cannot_be_honoured_are_denied_by_key() {
        for (k, v) in [
            ("sidekey.dev/auth-method", "approle"),
            ("sidekey.dev/vault-addr", "vault:8200"),
            ("sidekey.dev/vault-addr", "https://user:pw@vault"),
            ("sidekey.dev/vault-namespace", "a//b"),
            ("sidekey.dev/vault-namespace", "a b"),
            ("sidekey.dev/tls-server-name", "-bad-.example"),
            ("sidekey.dev/tls-server-name", "a_b.example"),
            ("sidekey.dev/ca-cert", "/etc/ssl/ca.pem"),
            ("sidekey.dev/ca-cert", "secret:Upper/ca.crt"),
            ("sidekey.dev/ca-cert", "secret:tls/../x"),
            ("sidekey.dev/ca-cert", "secret:tls/"),
            ("sidekey.dev/ca-cert", "vault:tls/ca.crt"),
        ] {
            assert_eq!(denied(&[(k, v)]).key, k, "{k}={v}");
        }
    }

    #[test]
    fn file_perms_and_format_per_secret() {
        let (c, _) = with(&[
            ("sidekey.dev/secret-api", "secret/data/api"),
            ("sidekey.dev/secret-env", "secret/data/env"),
            ("sidekey.dev/file-db", "db/config.json"),
            ("sidekey.dev/perms-db", "0440"),
            ("sidekey.dev/perms-api", "600"),
            ("sidekey.dev/format-db", "yaml"),
            ("sidekey.dev/format-api", "key:password"),
            ("sidekey.dev/format-env", "dotenv"),
        ])
        .unwrap();
        let by = |n: &str| c.secrets.iter().find(|s| s.name == n).unwrap();
        assert_eq!(by("db").file, "db/config.json");
        assert_eq!(by("db").mode, 0o440);
        assert_eq!(by("db").format, Format::Yaml);
        assert_eq!(by("api").file, "api");
        assert_eq!(by("api").mode, 0o600);
        assert_eq!(by("api").format, Format::Key("password".into()));
        assert_eq!(by("env").format, Format::Dotenv);
        assert_eq!(by("env").mode, config::DEFAULT_FILE_MODE);
        assert!(c.check().is_ok());
        let (c, _) = with(&[("sidekey.dev/format-db", "properties")]).unwrap();
        assert_eq!(c.secrets[0].format, Format::Properties);
    }

    #[test]
    fn file_perms_and_format_that_cannot_be_honoured_are_denied_by_key() {
        for (k, v) in [
            ("sidekey.dev/file-db", "../escape"),
            ("sidekey.dev/file-db", "/abs"),
            ("sidekey.dev/file-db", "a//b"),
            ("sidekey.dev/file-db", "./a"),
            ("sidekey.dev/file-other", "x"),
            ("sidekey.dev/perms-db", "0044"),
            ("sidekey.dev/perms-db", "4755"),
            ("sidekey.dev/perms-db", "rw-r--r--"),
            ("sidekey.dev/perms-db", "0800"),
            ("sidekey.dev/perms-other", "0400"),
            ("sidekey.dev/format-db", "xml"),
            ("sidekey.dev/format-db", "key:"),
            ("sidekey.dev/format-other", "yaml"),
        ] {
            assert_eq!(denied(&[(k, v)]).key, k, "{k}={v}");
        }
    }

    #[test]
    fn two_secrets_cannot_share_a_file_or_nest_under_one() {
        let e = denied(&[
            ("sidekey.dev/secret-api", "secret/data/api"),
            ("sidekey.dev/file-api", "db"),
        ]);
        assert_eq!(e.key, "sidekey.dev/secret-db");
        assert!(e.problem.contains("file-api"), "{e}");
        let e = denied(&[
            ("sidekey.dev/secret-api", "secret/data/api"),
            ("sidekey.dev/file-api", "db/api.json"),
        ]);
        assert_eq!(e.key, "sidekey.dev/file-api");
        assert!(e.problem.contains("directory"), "{e}");
    }

    #[test]
    fn placement_and_lifecycle_annotations_are_read() {
        let (c, p) = with(&[
            ("sidekey.dev/containers", "web, migrate,web"),
            ("sidekey.dev/mount-path", "/run/secrets/app/"),
            ("sidekey.dev/agent-mode", "init-only"),
            ("sidekey.dev/init-first", "false"),
            ("sidekey.dev/size-limit", "4Mi"),
        ])
        .unwrap();
        assert_eq!(
            p.containers,
            Some(BTreeSet::from(["migrate".to_owned(), "web".to_owned()]))
        );
        assert_eq!(p.mount_path, "/run/secrets/app");
        assert_eq!(
            c.secrets_dir, "/run/secrets/app",
            "the agent writes where it is mounted"
        );
        assert_eq!(p.agent_mode, Some(AgentMode::InitOnly));
        assert!(!p.init_first);
        assert_eq!(p.size_limit, "4Mi");
        let (c, p) = with(&[]).unwrap();
        assert_eq!(p.containers, None);
        assert_eq!(p.mount_path, "/vault/secrets");
        assert_eq!(c.secrets_dir, "/vault/secrets");
        assert_eq!(p.agent_mode, None);
        assert!(p.init_first);
        assert_eq!(p.size_limit, layout::SECRETS_SIZE_LIMIT);
        for (v, mode) in [
            ("native-sidecar", AgentMode::NativeSidecar),
            ("init-and-sidecar", AgentMode::InitAndSidecar),
        ] {
            let (_, p) = with(&[("sidekey.dev/agent-mode", v)]).unwrap();
            assert_eq!(p.agent_mode, Some(mode));
            assert_eq!(mode.as_str(), v);
        }
    }

    #[test]
    fn placement_and_lifecycle_values_that_cannot_be_honoured_are_denied_by_key() {
        for (k, v) in [
            ("sidekey.dev/containers", " , "),
            ("sidekey.dev/containers", "Web"),
            ("sidekey.dev/containers", "a.b"),
            ("sidekey.dev/mount-path", "relative/path"),
            ("sidekey.dev/mount-path", "/"),
            ("sidekey.dev/mount-path", "/a/../b"),
            ("sidekey.dev/mount-path", "/a//b"),
            ("sidekey.dev/mount-path", "/etc"),
            ("sidekey.dev/mount-path", "/proc/x"),
            ("sidekey.dev/mount-path", "/sidekey"),
            ("sidekey.dev/mount-path", "/sidekey/state/x"),
            ("sidekey.dev/mount-path", "/var/run/secrets/sidekey.dev"),
            ("sidekey.dev/mount-path", "/sidekey-agent"),
            ("sidekey.dev/mount-path", "/a b"),
            ("sidekey.dev/agent-mode", "sidecar"),
            ("sidekey.dev/init-first", "yes"),
            ("sidekey.dev/size-limit", "2Gi"),
            ("sidekey.dev/size-limit", "100k"),
            ("sidekey.dev/size-limit", "lots"),
        ] {
            assert_eq!(denied(&[(k, v)]).key, k, "{k}={v}");
        }
        let (_, p) = with(&[("sidekey.dev/mount-path", "/etc/app-secrets")]).unwrap();
        assert_eq!(p.mount_path, "/etc/app-secrets");
    }

    #[test]
    fn agent_resources_default_and_follow_each_other() {
        let (_, p) = with(&[]).unwrap();
        assert_eq!(
            p.resources,
            Resources {
                cpu_request: Some("10m".into()),
                cpu_limit: None,
                memory_request: Some("16Mi".into()),
                memory_limit: Some("64Mi".into()),
            }
        );
        let (_, p) = with(&[
            ("sidekey.dev/agent-cpu-request", "50m"),
            ("sidekey.dev/agent-cpu-limit", "0.5"),
            ("sidekey.dev/agent-memory-request", "32Mi"),
            ("sidekey.dev/agent-memory-limit", "128Mi"),
        ])
        .unwrap();
        assert_eq!(p.resources.cpu_request.as_deref(), Some("50m"));
        assert_eq!(p.resources.cpu_limit.as_deref(), Some("0.5"));
        assert_eq!(p.resources.memory_request.as_deref(), Some("32Mi"));
        assert_eq!(p.resources.memory_limit.as_deref(), Some("128Mi"));
        // A request above the default limit raises it; a limit below the default
        // request lowers it: the API server refuses request > limit.
        let (_, p) = with(&[("sidekey.dev/agent-memory-request", "100Mi")]).unwrap();
        assert_eq!(p.resources.memory_limit.as_deref(), Some("100Mi"));
        let (_, p) = with(&[("sidekey.dev/agent-memory-limit", "12Mi")]).unwrap();
        assert_eq!(p.resources.memory_request.as_deref(), Some("12Mi"));
        let (_, p) = with(&[("sidekey.dev/agent-cpu-limit", "5m")]).unwrap();
        assert_eq!(p.resources.cpu_request.as_deref(), Some("5m"));
    }

    #[test]
    fn agent_container_values_that_cannot_be_honoured_are_denied_by_key() {
        for (k, v) in [
            ("sidekey.dev/agent-cpu-request", "lots"),
            ("sidekey.dev/agent-cpu-request", "0"),
            ("sidekey.dev/agent-cpu-limit", "100"),
            ("sidekey.dev/agent-memory-request", "1Mi"),
            ("sidekey.dev/agent-memory-limit", "64MB"),
            ("sidekey.dev/agent-memory-limit", "32Gi"),
            ("sidekey.dev/run-as-user", "0"),
            ("sidekey.dev/run-as-user", "-5"),
            ("sidekey.dev/run-as-user", "nobody"),
            ("sidekey.dev/run-as-group", "2147483648"),
        ] {
            assert_eq!(denied(&[(k, v)]).key, k, "{k}={v}");
        }
        let e = denied(&[
            ("sidekey.dev/agent-memory-request", "128Mi"),
            ("sidekey.dev/agent-memory-limit", "64Mi"),
        ]);
        assert_eq!(e.key, "sidekey.dev/agent-memory-request");
        assert!(e.problem.contains("above the limit"), "{e}");
        assert!(
            denied(&[("sidekey.dev/run-as-user", "0")])
                .problem
                .contains("restricted")
        );
        let (_, p) = with(&[
            ("sidekey.dev/run-as-user", "1000"),
            ("sidekey.dev/run-as-group", "0"),
        ])
        .unwrap();
        assert_eq!((p.run_as_user, p.run_as_group), (Some(1000), Some(0)));
    }

    #[test]
    fn every_table_key_is_understood() {
        // A key in the table that the parser refuses as unknown would be a doc lie.
        for a in TABLE {
            let key = if a.per_secret {
                format!("{PREFIX}{}db", a.key)
            } else {
                format!("{PREFIX}{}", a.key)
            };
            let mut m = map(&base());
            m.insert(key.clone(), "?".into());
            if let Err(e) = parse(&m, &defaults()) {
                assert!(!e.problem.contains("unknown"), "{key}: {e}");
            }
        }
    }

    #[test]
    fn a_template_alone_declares_a_secret_and_excludes_format_and_params() {
        let t = "{{ with secret \"kv/a\" }}{{ .Data.x }}{{ end }}\n";
        let a = map(&[("sidekey.dev/role", "app"), ("sidekey.dev/template-cfg", t)]);
        let c = agent_config(&a, &defaults()).unwrap();
        assert_eq!(c.secrets[0].template.as_deref(), Some(t), "kept verbatim");
        assert_eq!(c.secrets[0].path, "");
        assert!(c.check().is_ok());
        assert_eq!(AgentConfig::from_json(&c.to_json()).unwrap(), c);
        for extra in [
            ("sidekey.dev/format-db", "yaml"),
            ("sidekey.dev/params-db", "common_name=a"),
        ] {
            let e = denied(&[("sidekey.dev/template-db", t), extra]);
            assert_eq!(e.key, extra.0, "{e}");
        }
        assert_eq!(
            denied(&[("sidekey.dev/template-db", "  ")]).key,
            "sidekey.dev/template-db"
        );
    }

    #[test]
    fn vault_agent_injector_annotations_are_translated_with_warnings() {
        let a = map(&[
            ("vault.hashicorp.com/agent-inject", "true"),
            ("vault.hashicorp.com/role", "app"),
            (
                "vault.hashicorp.com/agent-inject-secret-db",
                "database/creds/app",
            ),
            ("vault.hashicorp.com/agent-inject-perms-db", "0400"),
            ("vault.hashicorp.com/go-max-procs", "2"),
        ]);
        assert!(opted_in(&a, &BTreeMap::new()).unwrap());
        let (c, p, warnings) = parse_with_warnings(&a, &defaults()).unwrap();
        assert_eq!(c.auth.role, "app");
        assert_eq!(c.secrets[0].path, "database/creds/app");
        assert_eq!(c.secrets[0].mode, 0o400);
        assert_eq!(
            c.secrets[0].template.as_deref(),
            Some(compat::default_map_template("database/creds/app").as_str())
        );
        assert!(!p.init_first, "the injector's init container runs last");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let e = parse(
            &map(&[
                ("vault.hashicorp.com/role", "app"),
                ("vault.hashicorp.com/agent-inject-secret-db", "kv/db"),
                ("vault.hashicorp.com/agent-inject-token", "true"),
            ]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(e.key, "vault.hashicorp.com/agent-inject-token");
    }

    #[test]
    fn a_notify_url_with_credentials_is_refused_without_echoing_them() {
        for bad in [
            "http://admin:hunter2@localhost:8080/reload",
            "http://hunter2@localhost/reload",
            "http://localhost:99999?token=hunter2",
            "http://example.com?token=hunter2",
        ] {
            let e = parse_notify("notify-db", bad).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{bad}: {e}");
        }
        let e =
            parse_notify("notify-db", "http://admin:hunter2@localhost:8080/reload").unwrap_err();
        assert!(e.problem.contains("must not carry credentials"), "{e}");
    }

    #[test]
    fn a_ca_cert_of_another_kind_is_told_the_accepted_forms() {
        for (value, kind) in [
            ("file:/etc/ca.pem", "\"file\""),
            ("https://ca.example/ca.pem", "\"https\""),
            ("Secret:tls/ca.crt", "\"Secret\""),
        ] {
            let e = parse_ca_source(CA_CERT, value).unwrap_err();
            assert!(e.problem.contains(kind), "{value}: {e}");
            assert!(
                e.problem.contains("secret:<secret name>/<key>")
                    && e.problem.contains("configmap:<configmap name>/<key>"),
                "{value}: {e}"
            );
            assert!(!e.problem.contains("\"\""), "{value}: {e}");
        }
        assert!(matches!(
            parse_ca_source(CA_CERT, "configmap:ca/ca.crt"),
            Ok(CaSource::ConfigMap { .. })
        ));
    }

    #[test]
    fn denials_of_translated_keys_name_the_key_the_user_wrote() {
        let denied = |extra: &[(&str, &str)]| {
            let mut a = map(&[
                ("vault.hashicorp.com/agent-inject", "true"),
                ("vault.hashicorp.com/role", "app"),
                ("vault.hashicorp.com/agent-inject-secret-db", "kv/db"),
            ]);
            a.extend(map(extra));
            parse(&a, &defaults()).unwrap_err()
        };
        let e = denied(&[(
            "vault.hashicorp.com/agent-inject-file-db",
            "../../etc/passwd",
        )]);
        assert_eq!(e.key, "vault.hashicorp.com/agent-inject-file-db", "{e}");
        assert!(
            e.to_string()
                .contains("vault.hashicorp.com/agent-inject-file-db")
        );
        let e = denied(&[("vault.hashicorp.com/agent-inject-perms-db", "0999")]);
        assert_eq!(e.key, "vault.hashicorp.com/agent-inject-perms-db");
        let e = denied(&[("vault.hashicorp.com/service", "ftp://vault")]);
        assert_eq!(e.key, "vault.hashicorp.com/service");
        let e = denied(&[("vault.hashicorp.com/agent-revoke-grace", "999999")]);
        assert_eq!(e.key, "vault.hashicorp.com/agent-revoke-grace");
        // openbao.org/ wins over vault.hashicorp.com/ and is named when it is the source.
        let e = denied(&[("openbao.org/agent-inject-perms-db", "rwx")]);
        assert_eq!(e.key, "openbao.org/agent-inject-perms-db");
        // The pod's own sidekey.dev/ key is named as itself.
        let e = denied(&[("sidekey.dev/perms-db", "0999")]);
        assert_eq!(e.key, "sidekey.dev/perms-db");

        // A missing role is named under the prefix the pod is written in.
        let no_role = |prefix: &str| {
            let a = map(&[
                (&format!("{prefix}agent-inject"), "true"),
                (&format!("{prefix}agent-inject-secret-db"), "kv/db"),
            ]);
            parse(&a, &defaults()).unwrap_err().key
        };
        assert_eq!(no_role("vault.hashicorp.com/"), "vault.hashicorp.com/role");
        assert_eq!(no_role("openbao.org/"), "openbao.org/role");
    }

    #[test]
    fn pods_of_the_incumbent_injectors_are_left_alone() {
        let none = BTreeMap::new();
        let injected = map(&[
            ("vault.hashicorp.com/agent-inject", "true"),
            ("vault.hashicorp.com/agent-inject-status", "injected"),
        ]);
        assert!(!opted_in(&injected, &none).unwrap());
        let mut both = injected.clone();
        both.insert("sidekey.dev/inject".into(), "true".into());
        assert!(!opted_in(&both, &none).unwrap());
        let bao = map(&[("openbao.org/agent-inject", "true")]);
        assert!(opted_in(&bao, &none).unwrap());
        let mut kept = bao.clone();
        kept.insert("sidekey.dev/inject".into(), "false".into());
        assert!(!opted_in(&kept, &none).unwrap(), "an explicit false wins");
        let bad = map(&[("vault.hashicorp.com/agent-inject", "yes")]);
        assert_eq!(
            opted_in(&bad, &none).unwrap_err().key,
            "vault.hashicorp.com/agent-inject"
        );
    }

    fn secrets(n: usize) -> BTreeMap<String, String> {
        let mut m = map(&[("sidekey.dev/role", "app")]);
        for i in 0..n {
            m.insert(
                format!("sidekey.dev/secret-s{i}"),
                format!("secret/data/s{i}"),
            );
        }
        m
    }

    #[test]
    fn a_pod_has_at_most_max_secrets_and_more_are_denied_by_count() {
        let config = parse(&secrets(MAX_SECRETS), &defaults()).expect("the maximum");
        assert_eq!(config.0.secrets.len(), MAX_SECRETS);
        for n in [MAX_SECRETS + 1, 2000] {
            let e = parse(&secrets(n), &defaults()).expect_err("too many");
            assert_eq!(e.key, "sidekey.dev/secret-<name>");
            assert!(e.problem.contains(&format!("declares {n} secrets")), "{e}");
            assert!(e.problem.contains(&MAX_SECRETS.to_string()), "{e}");
        }
    }

    #[test]
    fn a_configuration_too_large_for_its_environment_variable_is_denied() {
        // Four templates at the 64 KiB limit each: every value is acceptable, the
        // whole is not.
        let big = format!("{{{{/* {} */}}}}", "x".repeat(64 * 1024 - 10));
        let mut m = map(&[("sidekey.dev/role", "app")]);
        for i in 0..4 {
            m.insert(format!("sidekey.dev/template-t{i}"), big.clone());
        }
        let e = parse(&m, &defaults()).expect_err("too large");
        assert_eq!(e.key, "sidekey.dev/secret-<name>");
        assert!(e.problem.contains("environment variable"), "{e}");
        assert!(!e.problem.contains("xxxx"), "the message quotes no value");
        // One fits; two do not (128 KiB of templates alone).
        for i in 1..4 {
            m.remove(&format!("sidekey.dev/template-t{i}"));
        }
        let (config, _) = parse(&m, &defaults()).expect("one fits");
        assert!(config.to_json().len() <= MAX_CONFIG_BYTES);
    }

    #[test]
    fn the_config_size_limit_is_one_the_kernel_starts_a_program_with() {
        // The agent reads its configuration from one environment variable; Linux
        // refuses an environment string of 128 KiB (MAX_ARG_STRLEN) with E2BIG.
        let at_limit = "x".repeat(MAX_CONFIG_BYTES);
        let status = std::process::Command::new("true")
            .env(config::CONFIG_ENV, &at_limit)
            .status()
            .expect("a program starts with the largest accepted configuration");
        assert!(status.success());
        let over = "x".repeat(128 * 1024);
        let refused = std::process::Command::new("true")
            .env(config::CONFIG_ENV, &over)
            .status()
            .expect_err("the kernel refuses 128 KiB");
        assert_eq!(refused.raw_os_error(), Some(7), "E2BIG: {refused}");
    }
}
