//! The Vault Agent Injector's `vault.hashicorp.com/` annotations and the OpenBao
//! injector's `openbao.org/` ones, translated into Sidekey's, so a Deployment written
//! for either injector is injected by Sidekey unchanged and gets the same files.
//!
//! [`translate`] is pure: annotations in, `sidekey.dev/` annotations and warnings out,
//! or a denial naming the key that cannot be honoured. A key that would change what the
//! pod gets (a proxy, an mTLS client certificate, a ConfigMap replacing the agent's
//! configuration) is denied with what to do instead; a key about the incumbent agent's
//! own tuning (log level, GOMAXPROCS, cache listener off) is accepted with a warning
//! that it is ignored. docs/migrating.md lists every key.
//!
//! Both prefixes may be present: as the OpenBao injector does, an `openbao.org/` key
//! wins over the same `vault.hashicorp.com/` key. A `sidekey.dev/` annotation on the
//! same pod wins over a translated one, which is how a team switches one secret to a
//! Sidekey format (`sidekey.dev/format-<name>: json`) without touching the rest.

use std::collections::BTreeMap;

use super::annotations::{AnnotationError, PREFIX, ROLE};

/// The Vault Agent Injector's prefix.
pub const VAULT_PREFIX: &str = "vault.hashicorp.com/";
/// The OpenBao injector's prefix.
pub const OPENBAO_PREFIX: &str = "openbao.org/";

/// Key (without prefix) of the incumbents' opt-in.
pub const AGENT_INJECT: &str = "agent-inject";
/// Key (without prefix) of the incumbents' status annotation.
pub const AGENT_INJECT_STATUS: &str = "agent-inject-status";

/// The Vault Agent Injector's "map" default template for a path: one `key: value`
/// line per key of the response's data, values in Go's `%v` format.
pub fn default_map_template(path: &str) -> String {
    format!(
        "{{{{ with secret {} }}}}{{{{ range $k, $v := .Data }}}}{{{{ $k }}}}: {{{{ $v }}}}\n{{{{ end }}}}{{{{ end }}}}",
        go_quote(path)
    )
}

/// The Vault Agent Injector's "json" default template: the response's data as
/// compact JSON and a newline.
pub fn default_json_template(path: &str) -> String {
    format!(
        "{{{{ with secret {} }}}}{{{{ .Data | toJSON }}}}\n{{{{ end }}}}",
        go_quote(path)
    )
}

/// A Go interpreted string literal of `s`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.ParseBool`, which the incumbents use for every boolean.
pub fn go_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The foreign annotations of a pod, by key without prefix; an `openbao.org/` key
/// replaces the same `vault.hashicorp.com/` key. Values carry the full key for errors.
fn foreign(annotations: &BTreeMap<String, String>) -> BTreeMap<&str, (&str, &str)> {
    let mut out = BTreeMap::new();
    for prefix in [VAULT_PREFIX, OPENBAO_PREFIX] {
        for (k, v) in annotations {
            if let Some(rest) = k.strip_prefix(prefix) {
                out.insert(rest, (k.as_str(), v.as_str()));
            }
        }
    }
    out
}

/// Whether the pod carries any `vault.hashicorp.com/` or `openbao.org/` annotation.
pub fn uses_foreign_prefix(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .keys()
        .any(|k| k.starts_with(VAULT_PREFIX) || k.starts_with(OPENBAO_PREFIX))
}

/// Whether the Vault Agent Injector or the OpenBao injector already injected the pod
/// (its status annotation says `injected`): Sidekey then leaves it alone.
pub fn injected_by_incumbent(annotations: &BTreeMap<String, String>) -> bool {
    [VAULT_PREFIX, OPENBAO_PREFIX].iter().any(|p| {
        annotations
            .get(&format!("{p}{AGENT_INJECT_STATUS}"))
            .is_some_and(|v| v.trim() == "injected")
    })
}

/// The incumbents' opt-in: `Some(true)` when `agent-inject` under either prefix is
/// true, `Some(false)` when present and false, `None` when absent.
///
/// # Errors
/// A value Go's `ParseBool` refuses, as the incumbents refuse it.
pub fn foreign_opt_in(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<bool>, AnnotationError> {
    let mut wanted = None;
    for prefix in [VAULT_PREFIX, OPENBAO_PREFIX] {
        let key = format!("{prefix}{AGENT_INJECT}");
        if let Some(v) = annotations.get(&key) {
            let b = go_bool(v).ok_or_else(|| AnnotationError {
                key: key.clone(),
                problem: format!("{v:?} is not a boolean such as \"true\" or \"false\""),
            })?;
            wanted = Some(wanted.unwrap_or(false) | b);
        }
    }
    Ok(wanted)
}

/// Keys accepted and ignored, with why (shown as an admission warning).
const IGNORED: &[(&str, &str)] = &[
    (
        "agent-image",
        "the webhook chooses the Sidekey agent image (--agent-image)",
    ),
    (
        "agent-request-namespace",
        "set by the incumbent injector itself",
    ),
    (
        "agent-limits-ephemeral",
        "the agent writes only to memory volumes",
    ),
    (
        "agent-requests-ephemeral",
        "the agent writes only to memory volumes",
    ),
    (
        "agent-set-security-context",
        "Sidekey always sets a restricted securityContext on its containers",
    ),
    (
        "agent-service-account-token-volume-name",
        "Sidekey mounts its own projected service-account token (audience vault)",
    ),
    (
        "auth-min-backoff",
        "Sidekey retries logins with its own bounded backoff",
    ),
    (
        "auth-max-backoff",
        "Sidekey retries logins with its own bounded backoff",
    ),
    (
        "agent-auto-auth-exit-on-err",
        "the init container fails after SIDEKEY_INIT_DEADLINE; the sidecar keeps retrying",
    ),
    (
        "template-config-exit-on-retry-failure",
        "a failing template keeps its last good file and is retried; the init container \
         fails after its deadline",
    ),
    (
        "template-max-connections-per-host",
        "the agent uses one connection pool per Vault",
    ),
    (
        "template-lease-renewal-threshold",
        "Sidekey renews leases and re-issues certificates at two thirds of their lifetime",
    ),
    (
        "client-max-retries",
        "the agent retries transient failures itself",
    ),
    ("client-timeout", "the agent has its own request timeouts"),
    (
        "agent-disable-idle-connections",
        "no effect on the Sidekey agent",
    ),
    (
        "agent-disable-keep-alives",
        "no effect on the Sidekey agent",
    ),
    ("go-max-procs", "the Sidekey agent is not a Go program"),
    (
        "log-level",
        "the Sidekey agent logs at info; a per-pod log level is not supported yet",
    ),
    (
        "log-format",
        "the agent logs text or JSON per SIDEKEY_LOG_FORMAT",
    ),
    (
        "agent-cache-use-auto-auth-token",
        "Sidekey has no agent cache listener",
    ),
    (
        "agent-cache-listener-port",
        "Sidekey has no agent cache listener",
    ),
    (
        "agent-cache-exit-on-err",
        "Sidekey has no agent cache listener",
    ),
    (
        "agent-enable-quit",
        "a Job's pods get the init-only agent (agent-pre-populate-only) or a native \
         sidecar, which ends with the pod; no quit endpoint is needed",
    ),
    (
        "tls-secret",
        "only its use by ca-cert is honoured (mapped to sidekey.dev/ca-cert)",
    ),
];

/// Keys refused, with what to do instead.
const DENIED: &[(&str, &str)] = &[
    (
        "agent-configmap",
        "a ConfigMap replacing the agent's whole configuration cannot apply to the Sidekey \
         agent; express the secrets as annotations",
    ),
    (
        "agent-extra-secret",
        "Sidekey does not mount extra Secrets into the agent",
    ),
    (
        "agent-copy-volume-mounts",
        "Sidekey does not copy volume mounts into the agent; templates are annotations",
    ),
    (
        "agent-json-patch",
        "patches of the agent container are not supported; use the sidekey.dev/ \
         resource and run-as annotations",
    ),
    (
        "agent-init-json-patch",
        "patches of the agent container are not supported; use the sidekey.dev/ \
         resource and run-as annotations",
    ),
    (
        "agent-inject-token",
        "Sidekey never writes its Vault token where the app can read it; give the app \
         its own role if it must call Vault",
    ),
    (
        "proxy-address",
        "the agent does not go through an HTTP proxy; reach Vault directly",
    ),
    (
        "client-cert",
        "TLS client certificates to Vault are not supported",
    ),
    (
        "client-key",
        "TLS client certificates to Vault are not supported",
    ),
    (
        "ca-key",
        "a CA directory is not supported; put the CA bundle in one key of a Secret and \
         use ca-cert with tls-secret, or sidekey.dev/ca-cert",
    ),
    (
        "agent-run-as-same-user",
        "set sidekey.dev/run-as-user to the app's user id instead",
    ),
    (
        "agent-share-process-namespace",
        "set spec.shareProcessNamespace: true on the pod yourself (needed for signal \
         notifications)",
    ),
];

fn deny(key: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// One secret being translated, keyed by its raw name.
#[derive(Default)]
struct Secret {
    /// The path and the full key it came from.
    path: Option<(String, String)>,
    /// The template and the full key it came from.
    template: Option<(String, String)>,
}

/// What [`translate_with_origins`] produces.
pub struct Translation {
    /// The `sidekey.dev/` annotations (the pod's own merged in).
    pub annotations: BTreeMap<String, String>,
    /// Warnings for keys accepted but ignored.
    pub warnings: Vec<String>,
    /// For each translated `sidekey.dev/` key, the foreign key the user wrote.
    pub origins: BTreeMap<String, String>,
    /// The foreign prefix the pod opts in with (`vault.hashicorp.com/` unless only
    /// `openbao.org/` keys are present), to name keys the pod lacks.
    pub prefix: &'static str,
}

impl Translation {
    /// Rewrites a denial of a translated `sidekey.dev/` key to name the key the user
    /// wrote: they never wrote `sidekey.dev/file-db`, they wrote
    /// `vault.hashicorp.com/agent-inject-file-db`. A required key the pod lacks is
    /// named under the pod's own prefix.
    pub fn origin_of(&self, mut e: AnnotationError) -> AnnotationError {
        if let Some(original) = self.origins.get(&e.key) {
            e.key.clone_from(original);
        } else if e.key == format!("{PREFIX}{ROLE}") && !self.annotations.contains_key(&e.key) {
            // The role is missing: the user wrote neither form; name the foreign one,
            // which is what their pod is written in.
            e.key = format!("{}{ROLE}", self.prefix);
        }
        e
    }
}

/// Translates the foreign annotations of `annotations` into `sidekey.dev/` ones (the
/// pod's own `sidekey.dev/` annotations are merged in and win) and warnings for what
/// is ignored. See the module docs and docs/migrating.md.
///
/// # Errors
/// A key that cannot be honoured, named in the error with what to do instead.
pub fn translate(
    annotations: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Vec<String>), AnnotationError> {
    let t = translate_with_origins(annotations)?;
    Ok((t.annotations, t.warnings))
}

/// [`translate`], also remembering which foreign key each `sidekey.dev/` key came
/// from, so a later denial names what the user wrote ([`Translation::origin_of`]).
///
/// # Errors
/// A key that cannot be honoured, named in the error with what to do instead.
pub fn translate_with_origins(
    annotations: &BTreeMap<String, String>,
) -> Result<Translation, AnnotationError> {
    let f = foreign(annotations);
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut set = |k: &str, v: String, origin: &str| {
        let key = format!("{PREFIX}{k}");
        if !origin.is_empty() {
            origins.insert(key.clone(), origin.to_owned());
        }
        out.insert(key, v);
    };
    let get_bool = |key: &str, full: &str, v: &str| {
        go_bool(v).ok_or_else(|| {
            deny(
                full,
                format!("{v:?} is not a boolean such as \"true\" or \"false\" ({key})"),
            )
        })
    };

    // Secret names, as vault-k8s finds them: a non-blank secret or template key.
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    for (key, (full, value)) in &f {
        if value.trim().is_empty() {
            continue;
        }
        if let Some(raw) = key.strip_prefix("agent-inject-template-file-") {
            return Err(deny(
                full,
                format!(
                    "a template file inside the agent container cannot be read by Sidekey; \
                     put the template in {VAULT_PREFIX}agent-inject-template-{raw}"
                ),
            ));
        }
        if let Some(raw) = key.strip_prefix("agent-inject-secret-") {
            secrets.entry(raw.to_owned()).or_default().path =
                Some((value.trim().to_owned(), (*full).to_owned()));
        } else if let Some(raw) = key.strip_prefix("agent-inject-template-") {
            secrets.entry(raw.to_owned()).or_default().template =
                Some(((*value).to_owned(), (*full).to_owned()));
        }
    }

    let default_template = match f.get("agent-inject-default-template") {
        None => "map",
        Some((full, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "map" => "map",
            "json" => "json",
            other => {
                return Err(deny(full, format!("{other:?} is not map or json")));
            }
        },
    };
    let preserve_all = match f.get("preserve-secret-case") {
        Some((full, v)) => get_bool("preserve-secret-case", full, v)?,
        None => false,
    };

    // Names used for files and sidekey keys: lowercased unless preserved.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (raw, s) in &secrets {
        let preserve = match f.get(format!("preserve-secret-case-{raw}").as_str()) {
            Some((full, v)) => get_bool("preserve-secret-case", full, v)?,
            None => preserve_all,
        };
        let name = if preserve {
            raw.clone()
        } else {
            raw.to_lowercase()
        };
        if let Some(other) = names.values().find(|n| **n == name) {
            let _ = other;
            return Err(deny(
                &format!("{VAULT_PREFIX}agent-inject-secret-{raw}"),
                format!(
                    "two secrets are both named {name:?} once lowercased; rename one or set \
                     preserve-secret-case"
                ),
            ));
        }
        names.insert(raw.clone(), name.clone());
        if let Some((path, full)) = &s.path {
            set(&format!("secret-{name}"), path.clone(), full);
        }
        let own_format = annotations.contains_key(&format!("{PREFIX}format-{name}"));
        let own_template = annotations.contains_key(&format!("{PREFIX}template-{name}"));
        match (&s.template, &s.path) {
            (Some((t, full)), _) => set(&format!("template-{name}"), t.clone(), full),
            (None, Some((path, full))) if !own_format && !own_template => {
                let t = if default_template == "json" {
                    default_json_template(path)
                } else {
                    default_map_template(path)
                };
                set(&format!("template-{name}"), t, full);
            }
            _ => {}
        }
    }
    let name_of = |raw: &str, full: &str| -> Result<String, AnnotationError> {
        names.get(raw).cloned().ok_or_else(|| {
            deny(
                full,
                format!(
                    "names secret {raw:?}, but there is no agent-inject-secret-{raw} or \
                     agent-inject-template-{raw} annotation"
                ),
            )
        })
    };

    let tls_secret = f.get("tls-secret").map(|(_, v)| v.trim().to_owned());
    let mut auth_type = "kubernetes".to_owned();
    let mut revoke = true;
    // The Vault Agent Injector puts its init container after the pod's own unless told
    // otherwise; so does a translated pod, so init containers see what they saw.
    if !f.contains_key("agent-init-first") {
        set("init-first", "false".to_owned(), "");
    }

    for (key, (full, value)) in &f {
        let key: &str = key;
        let v = value.trim();
        if key.starts_with("agent-inject-secret-")
            || key.starts_with("agent-inject-template-")
            || key.starts_with("preserve-secret-case")
        {
            continue;
        }
        if let Some(raw) = key.strip_prefix("agent-inject-file-") {
            let name = name_of(raw, full)?;
            set(
                &format!("file-{name}"),
                v.trim_start_matches('/').to_owned(),
                full,
            );
            continue;
        }
        if let Some(raw) = key.strip_prefix("agent-inject-perms-") {
            let name = name_of(raw, full)?;
            set(&format!("perms-{name}"), v.to_owned(), full);
            continue;
        }
        if let Some(raw) = key.strip_prefix("agent-inject-command-") {
            let name = name_of(raw, full)?;
            let notify = command_to_notify(v).map_err(|why| deny(full, why))?;
            set(&format!("notify-{name}"), notify, full);
            continue;
        }
        if let Some(raw) = key.strip_prefix("error-on-missing-key-") {
            name_of(raw, full)?;
            if go_bool(v) == Some(false) {
                warnings.push(format!(
                    "{full}: Sidekey always fails a template on a missing key (it never \
                     writes \"<no value>\"); the last good file is kept"
                ));
            }
            continue;
        }
        if let Some(raw) = key
            .strip_prefix("agent-template-left-delim-")
            .or_else(|| key.strip_prefix("agent-template-right-delim-"))
        {
            name_of(raw, full)?;
            let standard = if key.contains("-left-") { "{{" } else { "}}" };
            if v != standard {
                return Err(deny(
                    full,
                    "custom template delimiters are not supported yet; write the template \
                     with {{ and }}",
                ));
            }
            continue;
        }
        if let Some(raw) = key.strip_prefix("secret-volume-path-") {
            name_of(raw, full)?;
            let global = f.get("secret-volume-path").map(|(_, g)| g.trim());
            if Some(v) != global {
                return Err(deny(
                    full,
                    "a secret in its own mount path is not supported: every Sidekey secret \
                     lives under one mount path (use agent-inject-file-<name> for a \
                     sub-directory)",
                ));
            }
            continue;
        }
        if let Some(param) = key.strip_prefix("auth-config-") {
            if param == "role" {
                set("role", v.to_owned(), full);
                continue;
            }
            return Err(deny(
                full,
                format!(
                    "auth method parameter {param:?} is not supported: Sidekey logs in with \
                     the pod's projected service-account token and the role"
                ),
            ));
        }
        if key.starts_with("agent-telemetry-") {
            warnings.push(format!(
                "{full} is ignored: the agent exposes no telemetry listener"
            ));
            continue;
        }
        if let Some((_, why)) = IGNORED.iter().find(|(k, _)| *k == key) {
            warnings.push(format!("{full} is ignored: {why}"));
            continue;
        }
        if let Some((_, why)) = DENIED.iter().find(|(k, _)| *k == key) {
            return Err(deny(full, format!("not supported by Sidekey: {why}")));
        }
        match key {
            AGENT_INJECT | AGENT_INJECT_STATUS | "agent-inject-default-template" => {}
            "role" => set("role", v.to_owned(), full),
            "auth-path" => set("auth-path", v.to_owned(), full),
            "auth-type" => auth_type = v.to_owned(),
            "namespace" => set("vault-namespace", v.to_owned(), full),
            "service" => set("vault-addr", v.to_owned(), full),
            "tls-skip-verify" => {
                set("tls-skip-verify", get_bool(key, full, v)?.to_string(), full);
            }
            "tls-server-name" => set("tls-server-name", v.to_owned(), full),
            "ca-cert" => {
                let file = v.strip_prefix("/vault/tls/");
                match (file, &tls_secret) {
                    (Some(file), Some(secret)) if !file.contains('/') => {
                        set("ca-cert", format!("secret:{secret}/{file}"), full);
                    }
                    _ => {
                        return Err(deny(
                            full,
                            "a CA file path is honoured only as /vault/tls/<key> together \
                             with tls-secret: <secret name>; otherwise use sidekey.dev/ca-cert \
                             with secret:<name>/<key> or configmap:<name>/<key>",
                        ));
                    }
                }
            }
            "secret-volume-path" => set("mount-path", v.to_owned(), full),
            "agent-inject-containers" => set("containers", v.to_owned(), full),
            "agent-init-first" => {
                set("init-first", get_bool(key, full, v)?.to_string(), full);
            }
            "agent-pre-populate" => {
                if !get_bool(key, full, v)? {
                    warnings.push(format!(
                        "{full}: Sidekey always renders the secrets before the app starts"
                    ));
                }
            }
            "agent-pre-populate-only" => {
                if get_bool(key, full, v)? {
                    set("agent-mode", "init-only".to_owned(), full);
                }
            }
            "agent-revoke-on-shutdown" => revoke = get_bool(key, full, v)?,
            "agent-revoke-grace" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| deny(full, format!("{v:?} is not a number of seconds")))?;
                set("revoke-delay", format!("{secs}s"), full);
            }
            "template-static-secret-render-interval" => set("refresh", v.to_owned(), full),
            "agent-limits-cpu" => set("agent-cpu-limit", v.to_owned(), full),
            "agent-limits-mem" => set("agent-memory-limit", v.to_owned(), full),
            "agent-requests-cpu" => set("agent-cpu-request", v.to_owned(), full),
            "agent-requests-mem" => set("agent-memory-request", v.to_owned(), full),
            "agent-run-as-user" => set("run-as-user", v.to_owned(), full),
            "agent-run-as-group" => set("run-as-group", v.to_owned(), full),
            "agent-cache-enable" => {
                if get_bool(key, full, v)? {
                    return Err(deny(
                        full,
                        "Sidekey has no agent cache listener for the app to call Vault \
                         through; give the app its own Vault login",
                    ));
                }
            }
            _ => {
                return Err(deny(
                    full,
                    "unknown annotation of the Vault Agent Injector; see docs/migrating.md \
                     for the keys Sidekey understands",
                ));
            }
        }
    }

    match auth_type.as_str() {
        "kubernetes" => {}
        "jwt" => {
            let full = f.get("auth-type").map_or("", |(k, _)| k);
            set("auth-method", "jwt".to_owned(), full);
        }
        other => {
            let full = f.get("auth-type").map_or("auth-type", |(k, _)| k);
            return Err(deny(
                full,
                format!(
                    "auth type {other:?} is not supported: Sidekey logs in with kubernetes or \
                     jwt, using the pod's projected service-account token"
                ),
            ));
        }
    }
    if !revoke {
        warnings.push(format!(
            "{VAULT_PREFIX}agent-revoke-on-shutdown: false is not honoured: Sidekey revokes \
             the pod's token and leases when the pod stops"
        ));
    }

    // The pod's own sidekey.dev/ annotations win, and are named as themselves.
    for (k, v) in annotations {
        if k.starts_with(PREFIX) {
            origins.remove(k);
            out.insert(k.clone(), v.clone());
        }
    }
    let only_openbao = !annotations.keys().any(|k| k.starts_with(VAULT_PREFIX));
    Ok(Translation {
        annotations: out,
        warnings,
        origins,
        prefix: if only_openbao {
            OPENBAO_PREFIX
        } else {
            VAULT_PREFIX
        },
    })
}

/// Signals a command may send, by the names and numbers `kill` accepts.
const SIGNALS: &[(&str, &str)] = &[
    ("HUP", "1"),
    ("INT", "2"),
    ("QUIT", "3"),
    ("USR1", "10"),
    ("USR2", "12"),
    ("TERM", "15"),
    ("WINCH", "28"),
];

fn signal_name(flag: &str) -> Option<&'static str> {
    let s = flag.trim_start_matches('-');
    let s = s.strip_prefix("SIG").unwrap_or(s);
    SIGNALS
        .iter()
        .find(|(name, num)| s.eq_ignore_ascii_case(name) || s == *num)
        .map(|(name, _)| *name)
}

/// Turns an `agent-inject-command-<name>` shell command into a `notify-<name>` value.
///
/// The Vault agent runs the command with `sh -c` in its own container; the Sidekey
/// agent image has no shell and no tools, so only what a notification can do itself
/// is translated: a signal to a process by name (`kill -HUP $(pidof nginx)`,
/// `pkill -HUP nginx`, `killall -HUP nginx`) and a POST to the pod's loopback
/// (`curl -X POST http://localhost:9090/-/reload`, `wget --post-data=... URL`).
fn command_to_notify(cmd: &str) -> Result<String, String> {
    let refuse = || {
        format!(
            "the Sidekey agent image has no shell or tools to run {cmd:?}; use \
             sidekey.dev/notify-<name> with signal:<SIGNAL>:<process> (with \
             shareProcessNamespace: true) or http://localhost:<port>/<path> (POST)"
        )
    };
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (&prog, args) = words.split_first().ok_or_else(refuse)?;
    let prog = prog.rsplit('/').next().unwrap_or(prog);
    let simple_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    match prog {
        "kill" => {
            // kill [-SIG | -s SIG] $(pidof NAME)   or   kill [-SIG] `pidof NAME`
            let (sig, rest) = match args {
                ["-s", s, rest @ ..] => (signal_name(s), rest),
                [s, rest @ ..] if s.starts_with('-') => (signal_name(s), rest),
                rest => (Some("TERM"), rest),
            };
            let sig = sig.ok_or_else(refuse)?;
            let target = rest.join(" ");
            let name = target
                .strip_prefix("$(pidof ")
                .and_then(|t| t.strip_suffix(')'))
                .or_else(|| {
                    target
                        .strip_prefix("`pidof ")
                        .and_then(|t| t.strip_suffix('`'))
                })
                .map(str::trim)
                .filter(|n| simple_name(n))
                .ok_or_else(refuse)?;
            Ok(format!("signal:SIG{sig}:{name}"))
        }
        "pkill" | "killall" => {
            let (sig, rest) = match args {
                ["--signal" | "-s", s, rest @ ..] => (signal_name(s), rest),
                [s, rest @ ..] if s.starts_with('-') => (signal_name(s), rest),
                rest => (Some("TERM"), rest),
            };
            match (sig, rest) {
                (Some(sig), [name]) if simple_name(name) => Ok(format!("signal:SIG{sig}:{name}")),
                _ => Err(refuse()),
            }
        }
        "curl" | "wget" => {
            let mut post = false;
            let mut url = None;
            let mut i = 0;
            while i < args.len() {
                let a = args[i];
                match a {
                    "-X" | "--request" => {
                        post = args
                            .get(i + 1)
                            .is_some_and(|m| m.eq_ignore_ascii_case("POST"));
                        i += 1;
                    }
                    "-XPOST" | "--request=POST" => post = true,
                    "-d" | "--data" => {
                        post = true;
                        i += 1;
                    }
                    "-s" | "-S" | "-sS" | "-f" | "-fsS" | "-sf" | "-q" | "-O-" | "-qO-"
                    | "--silent" | "--fail" | "--show-error" | "-o/dev/null" => {}
                    "-o" | "-O" => i += 1,
                    a if a.starts_with("--post-data") || a.starts_with("--data") => post = true,
                    a if a.starts_with("http://") => url = Some(a),
                    _ => return Err(refuse()),
                }
                i += 1;
            }
            let url = url.ok_or_else(refuse)?;
            let host = url["http://".len()..]
                .split(['/', ':'])
                .next()
                .unwrap_or("");
            if !post || !matches!(host, "localhost" | "127.0.0.1") {
                return Err(refuse());
            }
            Ok(url.to_owned())
        }
        _ => Err(refuse()),
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

    fn sk(out: &BTreeMap<String, String>, k: &str) -> Option<String> {
        out.get(&format!("{PREFIX}{k}")).cloned()
    }

    #[test]
    fn a_documented_kv_pod_translates_to_the_map_default_template() {
        let a = map(&[
            ("vault.hashicorp.com/agent-inject", "true"),
            ("vault.hashicorp.com/role", "internal-app"),
            (
                "vault.hashicorp.com/agent-inject-secret-database-config.txt",
                "internal/data/database/config",
            ),
        ]);
        let (out, warnings) = translate(&a).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(sk(&out, "role").as_deref(), Some("internal-app"));
        assert_eq!(
            sk(&out, "secret-database-config.txt").as_deref(),
            Some("internal/data/database/config")
        );
        assert_eq!(
            sk(&out, "template-database-config.txt").unwrap(),
            "{{ with secret \"internal/data/database/config\" }}{{ range $k, $v := .Data }}\
             {{ $k }}: {{ $v }}\n{{ end }}{{ end }}"
        );
    }

    #[test]
    fn names_are_lowercased_unless_preserved_and_options_follow_the_raw_name() {
        let a = map(&[
            (
                "vault.hashicorp.com/agent-inject-secret-DB",
                "database/creds/app",
            ),
            ("vault.hashicorp.com/agent-inject-file-DB", "/db/creds.txt"),
            ("vault.hashicorp.com/agent-inject-perms-DB", "0440"),
            ("vault.hashicorp.com/agent-inject-template-Cfg", "{{ 1 }}"),
            ("vault.hashicorp.com/preserve-secret-case-Cfg", "true"),
        ]);
        let (out, _) = translate(&a).unwrap();
        assert_eq!(sk(&out, "secret-db").as_deref(), Some("database/creds/app"));
        assert_eq!(sk(&out, "file-db").as_deref(), Some("db/creds.txt"));
        assert_eq!(sk(&out, "perms-db").as_deref(), Some("0440"));
        assert_eq!(sk(&out, "template-Cfg").as_deref(), Some("{{ 1 }}"));
        assert_eq!(
            sk(&out, "secret-Cfg"),
            None,
            "a template alone declares a secret"
        );
    }

    #[test]
    fn openbao_keys_win_and_sidekey_keys_win_over_both() {
        let a = map(&[
            ("vault.hashicorp.com/role", "old"),
            ("openbao.org/role", "new"),
            ("openbao.org/agent-inject-secret-app", "secret/data/app"),
            ("sidekey.dev/format-app", "dotenv"),
        ]);
        let (out, _) = translate(&a).unwrap();
        assert_eq!(sk(&out, "role").as_deref(), Some("new"));
        assert_eq!(sk(&out, "format-app").as_deref(), Some("dotenv"));
        assert_eq!(
            sk(&out, "template-app"),
            None,
            "own format replaces the default"
        );
    }

    #[test]
    fn json_default_template_and_connection_keys_map() {
        let a = map(&[
            ("vault.hashicorp.com/agent-inject-default-template", "json"),
            ("vault.hashicorp.com/agent-inject-secret-x", "kv/x"),
            ("vault.hashicorp.com/service", "https://vault.example:8200"),
            ("vault.hashicorp.com/namespace", "team-a"),
            ("vault.hashicorp.com/tls-secret", "vault-tls"),
            ("vault.hashicorp.com/ca-cert", "/vault/tls/ca.crt"),
            ("vault.hashicorp.com/tls-skip-verify", "1"),
            ("vault.hashicorp.com/agent-pre-populate-only", "true"),
            ("vault.hashicorp.com/agent-limits-mem", "128Mi"),
            (
                "vault.hashicorp.com/template-static-secret-render-interval",
                "30s",
            ),
            ("vault.hashicorp.com/agent-revoke-grace", "10"),
            ("vault.hashicorp.com/log-level", "debug"),
        ]);
        let (out, warnings) = translate(&a).unwrap();
        assert_eq!(
            sk(&out, "template-x").unwrap(),
            "{{ with secret \"kv/x\" }}{{ .Data | toJSON }}\n{{ end }}"
        );
        assert_eq!(
            sk(&out, "vault-addr").as_deref(),
            Some("https://vault.example:8200")
        );
        assert_eq!(sk(&out, "vault-namespace").as_deref(), Some("team-a"));
        assert_eq!(
            sk(&out, "ca-cert").as_deref(),
            Some("secret:vault-tls/ca.crt")
        );
        assert_eq!(sk(&out, "tls-skip-verify").as_deref(), Some("true"));
        assert_eq!(sk(&out, "agent-mode").as_deref(), Some("init-only"));
        assert_eq!(sk(&out, "agent-memory-limit").as_deref(), Some("128Mi"));
        assert_eq!(sk(&out, "refresh").as_deref(), Some("30s"));
        assert_eq!(sk(&out, "revoke-delay").as_deref(), Some("10s"));
        let log_level = warnings.iter().find(|w| w.contains("log-level"));
        let log_level = log_level.expect("log-level is warned about");
        // No setting that does not exist is advised.
        assert!(!log_level.contains("SIDEKEY_LOG"), "{log_level}");
        assert!(log_level.contains("logs at info"), "{log_level}");
        assert!(
            warnings.iter().any(|w| w.contains("tls-secret")),
            "{warnings:?}"
        );
    }

    #[test]
    fn commands_become_notifications_or_are_denied_with_the_reason() {
        for (cmd, want) in [
            ("kill -HUP $(pidof nginx)", "signal:SIGHUP:nginx"),
            ("kill -s USR1 `pidof app`", "signal:SIGUSR1:app"),
            ("pkill -HUP vault-app", "signal:SIGHUP:vault-app"),
            ("killall -SIGUSR2 java", "signal:SIGUSR2:java"),
            ("/usr/bin/pkill app", "signal:SIGTERM:app"),
            (
                "curl -s -X POST http://localhost:9090/-/reload",
                "http://localhost:9090/-/reload",
            ),
            (
                "wget --post-data= -qO- http://127.0.0.1:8080/reload",
                "http://127.0.0.1:8080/reload",
            ),
        ] {
            assert_eq!(command_to_notify(cmd).as_deref(), Ok(want), "{cmd}");
        }
        for cmd in [
            "sh -c 'kill -HUP 1'",
            "cat /vault/secrets/x | tee /tmp/y",
            "curl http://localhost:9090/-/reload",
            "curl -X POST http://other:9090/",
            "kill -HUP 1",
            "pkill -f 'java -jar'",
        ] {
            let e = command_to_notify(cmd).unwrap_err();
            assert!(e.contains("no shell"), "{cmd}: {e}");
        }
        let a = map(&[
            ("vault.hashicorp.com/agent-inject-secret-x", "kv/x"),
            (
                "vault.hashicorp.com/agent-inject-command-x",
                "sh -c reload.sh",
            ),
        ]);
        let e = translate(&a).unwrap_err();
        assert_eq!(e.key, "vault.hashicorp.com/agent-inject-command-x");
    }

    #[test]
    fn keys_that_change_semantics_are_denied_by_key() {
        for (k, v) in [
            ("vault.hashicorp.com/agent-configmap", "cfg"),
            ("vault.hashicorp.com/agent-inject-token", "true"),
            ("vault.hashicorp.com/proxy-address", "http://proxy:3128"),
            ("vault.hashicorp.com/auth-type", "approle"),
            ("vault.hashicorp.com/auth-config-token-path", "/t"),
            ("vault.hashicorp.com/agent-cache-enable", "true"),
            ("vault.hashicorp.com/ca-cert", "/etc/ssl/ca.pem"),
            (
                "vault.hashicorp.com/agent-inject-template-file-x",
                "/vault/custom/x.tmpl",
            ),
            ("vault.hashicorp.com/agent-inject-file-nosuch", "x"),
            ("vault.hashicorp.com/agent-template-left-delim-x", "[["),
            ("vault.hashicorp.com/secret-volume-path-x", "/other"),
            ("vault.hashicorp.com/agent-made-up", "1"),
            ("vault.hashicorp.com/agent-inject-default-template", "yaml"),
            ("vault.hashicorp.com/tls-skip-verify", "yes"),
        ] {
            let mut a = map(&[("vault.hashicorp.com/agent-inject-secret-x", "kv/x")]);
            a.insert(k.into(), v.into());
            let e = translate(&a).unwrap_err();
            assert_eq!(e.key, k, "{k}: {e}");
        }
    }

    #[test]
    fn status_and_opt_in_follow_the_incumbents() {
        let a = map(&[("vault.hashicorp.com/agent-inject-status", "injected")]);
        assert!(injected_by_incumbent(&a));
        let a = map(&[("openbao.org/agent-inject-status", "update")]);
        assert!(!injected_by_incumbent(&a));
        assert_eq!(
            foreign_opt_in(&map(&[("vault.hashicorp.com/agent-inject", "T")])).unwrap(),
            Some(true)
        );
        assert_eq!(foreign_opt_in(&map(&[])).unwrap(), None);
        assert!(foreign_opt_in(&map(&[("openbao.org/agent-inject", "yes")])).is_err());
    }

    #[test]
    fn every_key_of_the_migration_table_is_known() {
        let doc = include_str!("../../../docs/migrating.md");
        let mut keys = 0;
        for line in doc.lines().filter(|l| l.starts_with("| `v/")) {
            let cell = line.split('|').nth(1).unwrap_or("");
            for key in cell.split('`').filter(|k| k.starts_with("v/")) {
                let key = key
                    .trim_start_matches("v/")
                    .replace("<name>", "x")
                    .replace("<param>", "p")
                    .replace("<other>", "other");
                let mut a = map(&[("vault.hashicorp.com/agent-inject-secret-x", "kv/x")]);
                a.insert(format!("{VAULT_PREFIX}{key}"), "true".into());
                if let Err(e) = translate(&a) {
                    assert!(!e.problem.contains("unknown annotation"), "{key}: {e}");
                }
                keys += 1;
            }
        }
        assert!(keys > 70, "only {keys} keys found in docs/migrating.md");
    }
}
