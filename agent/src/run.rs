//! The agent's two modes and the scheduler that keeps every credential valid.
//!
//! - [`init`] (the init container): adopt the state a previous agent process of this pod
//!   left (see [`state`]), or log in; fetch every source once; render; write the state
//!   for the sidecar; return *without* revoking the token (the sidecar adopts it).
//!   Transient failures (Vault unreachable, 5xx, 429) are retried with [`Backoff`] until
//!   the init deadline; permanent ones (login denied, secret not found, TLS not trusted,
//!   a file that cannot be written) fail at once. A failed init that logged in revokes
//!   its token, so no credential outlives it.
//! - [`sidecar`]: adopt the same state (one login and one credential per dynamic secret
//!   per pod), then run one scheduler loop over the token and every distinct source,
//!   sleeping until the earliest due action (rules in [`schedule`]); sources due
//!   together (every one at start) are fetched concurrently, up to
//!   [`FETCH_CONCURRENCY`] at a time. On SIGTERM it waits
//!   `revoke_delay_secs`, revokes its token (which revokes every lease the token
//!   created) and any token it replaced, within [`REVOKE_TIMEOUT`], and returns.
//!
//! Token lifecycle: renewed at about 2/3 of its TTL; when a renewal is capped by the max
//! TTL the agent logs in again a third of the TTL before expiry, re-issues every leased
//! credential under the new token (they would die with the old one), writes and notifies,
//! and revokes the old token after a grace period. Login failures back off (capped,
//! jittered, exponential) and never drop a token that is still valid. A 403 on a read is
//! classified with `lookup-self` first: only a token that is really gone leads to a new
//! login; a path the policy denies is reported by name.
//!
//! Log events carry `secret.name`, `secret.path`, `file`, `changed`, `lease.id`,
//! `lease.ttl_secs`, `token.accessor`; never a value, a token or the JWT.

use std::{collections::BTreeMap, future::Future, path::PathBuf, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use secrecy::SecretString;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, error, info, warn};

use crate::{
    contract::config::{AgentConfig, AuthMethod},
    failpoint, files, kv,
    metrics::{self, Metrics},
    notify, render,
    schedule::{self, Action},
    source::{self, Held, Source},
    state,
    template::{self, Template},
    vault::{self, Client},
};

pub use crate::schedule::Backoff;

/// How long the sidecar tries to revoke its token on shutdown. Well under the default
/// `terminationGracePeriodSeconds` of 30 s.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long notifications in flight at shutdown may take to end.
const NOTIFY_GRACE: Duration = Duration::from_secs(1);
/// Most requests for secrets in flight at once, when several sources are due together
/// (every one at start): start-up takes a few round trips instead of one per source,
/// without a pod with many secrets flooding Vault.
pub const FETCH_CONCURRENCY: usize = 8;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Vault part of the configuration is unusable (address, CA bundle).
    #[error("the Vault settings are unusable")]
    Client(#[source] vault::Error),
    /// The service-account token file could not be read.
    #[error("reading the service-account token {path} failed")]
    Jwt {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The service-account token file is empty.
    #[error("the service-account token file {path} is empty")]
    JwtEmpty { path: String },
    /// Vault refused the login (403, or 400 for an unknown role).
    #[error(
        "login as role {role:?} at {mount} was denied; check the role's bound service account names and namespaces"
    )]
    LoginDenied {
        role: String,
        mount: String,
        #[source]
        source: Box<vault::Error>,
    },
    /// The login failed for another reason.
    #[error("login as role {role:?} at {mount} failed")]
    Login {
        role: String,
        mount: String,
        #[source]
        source: Box<vault::Error>,
    },
    /// The secret does not exist.
    #[error("secret {name:?}: nothing at Vault path {path:?}")]
    NotFound {
        name: String,
        path: String,
        #[source]
        source: Box<vault::Error>,
    },
    /// The token's policies do not allow reading the secret.
    #[error(
        "secret {name:?}: role {role:?} may not read Vault path {path:?}; grant read in its policy"
    )]
    Forbidden {
        name: String,
        path: String,
        role: String,
        #[source]
        source: Box<vault::Error>,
    },
    /// Another failure reading the secret.
    #[error("secret {name:?}: reading Vault path {path:?} failed")]
    Read {
        name: String,
        path: String,
        #[source]
        source: Box<vault::Error>,
    },
    #[error("secret {name:?}: rendering failed")]
    Render {
        name: String,
        #[source]
        source: render::Error,
    },
    /// A `template-<name>` does not parse: the configuration is unusable.
    #[error("secret {name:?}: the template is not valid")]
    TemplateParse {
        name: String,
        #[source]
        source: template::Error,
    },
    /// A template failed to render (missing key, bad function argument, secrets
    /// nested too deep). The file keeps its last good content.
    #[error("secret {name:?}: rendering the template failed")]
    Template {
        name: String,
        #[source]
        source: template::Error,
    },
    #[error("secret {name:?}: writing file {file:?} failed")]
    Write {
        name: String,
        file: String,
        #[source]
        source: files::Error,
    },
    /// The notification machinery could not be set up.
    #[error("setting up change notifications failed")]
    Notify(#[source] notify::Error),
    /// Transient failures went on until the init deadline.
    #[error("gave up after the init deadline of {}s ({INIT_DEADLINE_ENV}); last failure", deadline.as_secs())]
    Deadline {
        deadline: Duration,
        #[source]
        last: Box<Error>,
    },
    /// The init deadline passed while a request was still waiting for Vault.
    #[error("no answer from Vault at {addr} within the init deadline of {}s ({INIT_DEADLINE_ENV}) while {doing}", deadline.as_secs())]
    NoAnswer {
        addr: String,
        deadline: Duration,
        /// What the agent was waiting for, e.g. `logging in as role "app" at auth/kubernetes`.
        doing: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Environment variable bounding the init container's run.
pub const INIT_DEADLINE_ENV: &str = "SIDEKEY_INIT_DEADLINE";
/// [`INIT_DEADLINE_ENV`] when unset or empty.
pub const DEFAULT_INIT_DEADLINE: Duration = Duration::from_secs(120);

impl Error {
    /// Worth retrying: the cause is Vault being unreachable or briefly unwell.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Login { source, .. } | Error::Read { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// The process exit code for this failure: 64 for an unusable configuration, 1 for
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Client(_) | Error::TemplateParse { .. } => 64,
            _ => 1,
        }
    }
}

/// The whole cause chain of `err` on one line (`a: b: c`), for logs and the final
/// message.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    // Bounded for the same reason as any walk over foreign data.
    for _ in 0..16 {
        let Some(e) = next else { break };
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The agent's token and its schedule.
struct TokenState {
    token: SecretString,
    accessor: Option<String>,
    /// TTL granted at login; renewals ask for it again.
    ttl: Duration,
    renewable: bool,
    expires: Instant,
    action: Action,
    due: Instant,
}

impl TokenState {
    fn from_login(token: &vault::Token, now: Instant) -> Self {
        let ttl = Duration::from_secs(token.lease_duration);
        let mut state = TokenState {
            token: token.client_token.clone(),
            accessor: token.accessor.clone(),
            ttl,
            renewable: token.renewable,
            expires: now,
            action: Action::Renew,
            due: now,
        };
        state.granted(now, ttl, token.renewable);
        state
    }

    /// Reschedules after Vault granted `granted` at `now`.
    fn granted(&mut self, now: Instant, granted: Duration, renewable: bool) {
        if self.ttl.is_zero() {
            // A token without expiry (periodic or root-like) never needs a renewal;
            // look again in a day anyway.
            self.expires = now + Duration::from_secs(10 * 365 * 86_400);
            self.action = Action::Renew;
            self.due = now + Duration::from_secs(86_400);
            return;
        }
        self.expires = now + granted;
        self.renewable = renewable;
        (self.action, self.due) =
            schedule::after_grant(now, self.ttl, granted, renewable, schedule::jitter());
    }

    fn accessor(&self) -> &str {
        self.accessor.as_deref().unwrap_or("")
    }
}

/// A replaced token, revoked (with its leases) once the app has switched over.
struct Retiring {
    token: SecretString,
    accessor: String,
    revoke_at: Instant,
}

/// A replaced lease of the current token, revoked after a grace period.
struct LeaseRevocation {
    lease_id: String,
    path: String,
    at: Instant,
}

/// One agent: configuration, Vault client, token, sources and pending revocations.
struct Agent {
    config: AgentConfig,
    dir: PathBuf,
    state_dir: PathBuf,
    client: Client,
    kv: kv::Resolver,
    token: Option<TokenState>,
    retiring: Vec<Retiring>,
    revocations: Vec<LeaseRevocation>,
    sources: Vec<Source>,
    login_backoff: Backoff,
    login_retry_at: Option<Instant>,
    notifier: Option<notify::Dispatcher>,
    /// The policy refused `sys/leases/revoke` once: replaced leases are left to expire.
    lease_revoke_denied: bool,
    /// Per secret of the configuration: its parsed template, if it has one.
    templates: Vec<Option<Template>>,
    /// Per secret: template state (rounds of discovery, last outcome).
    template_state: Vec<TemplateState>,
    metrics: Arc<Metrics>,
    /// Sources fetched but whose files could not all be written (a full volume, say),
    /// with when to try again: retried by rendering the held data again, never by
    /// fetching, which would mint a new credential for a lease.
    unrendered: BTreeMap<usize, (Instant, Backoff)>,
    /// What the agent is waiting on Vault for, for the init deadline's message.
    doing: String,
    /// Logins have been failing (to warn once per outage, not per attempt).
    login_failing: bool,
}

/// Where a template stands.
#[derive(Default)]
struct TemplateState {
    /// Executed at least once (so its first sources are known).
    discovered: bool,
    /// Consecutive executions that found secrets not read before (paths computed from
    /// data); bounded by [`template::MAX_ROUNDS`].
    rounds: usize,
    /// Written at least once from complete data.
    rendered: bool,
    /// The last failure, kept for the init container's verdict.
    error: Option<template::Error>,
}

impl Agent {
    fn new(config: AgentConfig, notifications: bool) -> Result<Self> {
        let mut client = Client::new(&config.vault).map_err(Error::Client)?;
        let metrics = Metrics::new();
        client.set_metrics(metrics.clone());
        for spec in &config.secrets {
            metrics.declare(&spec.name, &spec.path);
        }
        if config.vault.tls_skip_verify {
            warn!(
                vault.addr = %client.addr(),
                "TLS verification of Vault's certificate is OFF (tls-skip-verify): anyone on \
                 the network path can read the token and every secret"
            );
        }
        let dir = PathBuf::from(&config.secrets_dir);
        let state_dir = PathBuf::from(&config.state_dir);
        let swept = files::remove_stale_temps(&dir) + files::remove_stale_temps(&state_dir);
        if swept > 0 {
            info!(
                removed = swept,
                "removed temporary files left by an earlier run"
            );
        }
        let now = Instant::now();
        let default_refresh = config.refresh_secs;
        let mut templates = Vec::with_capacity(config.secrets.len());
        for s in &config.secrets {
            templates.push(match &s.template {
                Some(text) => {
                    Some(
                        template::parse(&s.name, text).map_err(|source| Error::TemplateParse {
                            name: s.name.clone(),
                            source,
                        })?,
                    )
                }
                None => None,
            });
        }
        // Secrets with a format read their path; a template's sources are found by
        // executing it (see `render_template`).
        let plain: Vec<usize> = (0..config.secrets.len())
            .filter(|&i| templates[i].is_none())
            .collect();
        let mut sources = source::group(
            plain.iter().map(|&i| {
                let s = &config.secrets[i];
                let secs = s.refresh_secs.unwrap_or(default_refresh).max(1);
                (s.path.as_str(), &s.params, Duration::from_secs(secs))
            }),
            now,
        );
        for s in &mut sources {
            for i in &mut s.secrets {
                *i = plain[*i];
            }
        }
        let template_state = config
            .secrets
            .iter()
            .map(|_| TemplateState::default())
            .collect();
        // Only secrets with a `notify` need the dispatcher (and its HTTP client).
        let notifier = if notifications && config.secrets.iter().any(|s| s.notify.is_some()) {
            let notifier = notify::Notifier::new().map_err(Error::Notify)?;
            Some(notify::Dispatcher::new(
                notifier,
                notify::Backoff::default(),
            ))
        } else {
            None
        };
        Ok(Agent {
            config,
            dir,
            state_dir,
            client,
            kv: kv::Resolver::default(),
            token: None,
            retiring: Vec::new(),
            revocations: Vec::new(),
            sources,
            login_backoff: Backoff::new(),
            login_retry_at: None,
            notifier,
            lease_revoke_denied: false,
            templates,
            template_state,
            metrics,
            unrendered: BTreeMap::new(),
            doing: String::from("starting"),
            login_failing: false,
        })
    }

    /// Calls `f` with the name and path of every secret of source `index`.
    fn each_secret(&self, index: usize, f: impl Fn(&Metrics, &str, &str)) {
        for &i in &self.sources[index].secrets {
            let spec = &self.config.secrets[i];
            f(&self.metrics, &spec.name, &spec.path);
        }
    }

    /// Publishes when the credential held by source `index` expires (leases and
    /// certificates only).
    fn note_expiry(&self, index: usize) {
        if let Some(h) = &self.sources[index].held
            && h.kind.is_dynamic()
        {
            let at = schedule::to_wall(h.expires) as f64 / 1000.0;
            self.each_secret(index, |m, name, path| m.expires(name, path, at));
        }
    }

    /// Renders again the sources whose files could not be written, when due.
    fn retry_unrendered(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .unrendered
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(i, _)| *i)
            .collect();
        for index in due {
            match self.render(index) {
                Ok(()) => {
                    self.unrendered.remove(&index);
                    self.sources[index].failing = false;
                    self.each_secret(index, Metrics::fresh);
                    info!(secret.path = %self.sources[index].key.path, "files written again");
                }
                Err(e) => {
                    self.each_secret(index, Metrics::failed);
                    if let Some((at, backoff)) = self.unrendered.get_mut(&index) {
                        let wait = backoff.next_wait();
                        *at = now + wait;
                        debug!(secret.path = %self.sources[index].key.path, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "writing failed again; keeping the last good file");
                    }
                }
            }
        }
    }

    /// The refresh interval of secret `i`.
    fn refresh_of(&self, i: usize) -> Duration {
        let secs = self.config.secrets[i]
            .refresh_secs
            .unwrap_or(self.config.refresh_secs)
            .max(1);
        Duration::from_secs(secs)
    }

    /// Makes secret `i` render from the source `key`, adding the source (due now)
    /// when no secret used it yet. Returns whether the source is new.
    fn link(&mut self, key: &source::Key, i: usize) -> bool {
        let refresh = self.refresh_of(i);
        if let Some(s) = self.sources.iter_mut().find(|s| s.key == *key) {
            if !s.secrets.contains(&i) {
                s.secrets.push(i);
            }
            s.refresh = s.refresh.min(refresh);
            return false;
        }
        let mut added = source::group([(key.path.as_str(), &key.params, refresh)], Instant::now());
        for mut s in added.drain(..) {
            s.secrets = vec![i];
            self.sources.push(s);
        }
        true
    }

    /// What every source holds, as templates see it.
    fn fetched(&self) -> BTreeMap<source::Key, template::Fetched> {
        self.sources
            .iter()
            .filter_map(|s| {
                let h = s.held.as_ref()?;
                Some((
                    s.key.clone(),
                    template::Fetched {
                        data: h.data.expose().clone(),
                        lease_id: h.lease_id.clone(),
                        lease_duration: h.ttl.as_secs(),
                        renewable: h.renewable,
                    },
                ))
            })
            .collect()
    }

    /// Executes every template not executed yet, so its first sources are known.
    fn discover(&mut self) -> Result<()> {
        for i in 0..self.templates.len() {
            if self.templates[i].is_some() && !self.template_state[i].discovered {
                self.render_template(i)?;
            }
        }
        Ok(())
    }

    /// Renders template `i` from what is held. Sources it reads that are not held
    /// yet are added (due now) and the file is left as it is; so is it when the
    /// template fails, which is logged and kept for [`Agent::template_verdict`].
    /// Only writing the file is an error here.
    fn render_template(&mut self, i: usize) -> Result<()> {
        let Some(t) = self.templates[i].clone() else {
            return Ok(());
        };
        let run = t.execute(&self.fetched());
        self.template_state[i].discovered = true;
        let linked: Vec<bool> = run
            .used
            .iter()
            .map(|k| {
                self.sources
                    .iter()
                    .any(|s| s.key == *k && s.secrets.contains(&i))
            })
            .collect();
        if linked.contains(&false) {
            let state = &mut self.template_state[i];
            state.rounds += 1;
            if state.rounds > template::MAX_ROUNDS {
                let err = t.unresolved(&run.missing);
                warn!(secret.name = %self.config.secrets[i].name, error = %err, "template failed; keeping the last good file");
                state.error = Some(err);
                return Ok(());
            }
            for key in &run.used {
                self.link(key, i);
            }
        }
        if !run.missing.is_empty() {
            return Ok(());
        }
        self.template_state[i].rounds = 0;
        match run.output {
            Ok(bytes) => {
                self.write_file(i, &bytes)?;
                let state = &mut self.template_state[i];
                state.rendered = true;
                state.error = None;
            }
            Err(err) => {
                let spec = &self.config.secrets[i];
                warn!(secret.name = %spec.name, file = %spec.file, error = %err, "template failed; keeping the last good file");
                self.template_state[i].error = Some(err);
            }
        }
        Ok(())
    }

    /// For the init container: every template rendered, or the first failure.
    fn template_verdict(&mut self) -> Result<()> {
        for i in 0..self.templates.len() {
            let Some(t) = &self.templates[i] else {
                continue;
            };
            let name = self.config.secrets[i].name.clone();
            let state = &mut self.template_state[i];
            if let Some(source) = state.error.take() {
                return Err(Error::Template { name, source });
            }
            if !state.rendered {
                let run = t.execute(&self.fetched());
                return Err(Error::Template {
                    name,
                    source: t.unresolved(&run.missing),
                });
            }
        }
        Ok(())
    }

    /// Whether every secret has been rendered at least once: every source fetched and
    /// every template rendered. The readiness marker waits for it.
    fn all_rendered(&self) -> bool {
        self.sources.iter().all(|s| s.held.is_some())
            && self
                .templates
                .iter()
                .zip(&self.template_state)
                .all(|(t, state)| t.is_none() || state.rendered)
    }

    /// Writes the bytes of secret `i` and notifies the app if they changed.
    fn write_file(&mut self, i: usize, bytes: &[u8]) -> Result<()> {
        let spec = &self.config.secrets[i];
        let outcome = files::write(&self.dir, &spec.file, bytes, spec.mode).map_err(|source| {
            Error::Write {
                name: spec.name.clone(),
                file: spec.file.clone(),
                source,
            }
        })?;
        self.metrics.rendered(&spec.name, &spec.path);
        let changed = outcome.changed();
        if changed {
            info!(secret.name = %spec.name, secret.path = %spec.path, file = %spec.file, changed, "secret rendered");
            if let (Some(n), Some(dispatcher)) = (&spec.notify, &self.notifier) {
                dispatcher.spawn_notify(&spec.name, n);
            }
        } else {
            debug!(secret.name = %spec.name, secret.path = %spec.path, file = %spec.file, changed, "secret unchanged");
        }
        Ok(())
    }

    fn read_jwt(&self) -> Result<SecretString> {
        let path = &self.config.auth.jwt_path;
        let text = std::fs::read_to_string(path).map_err(|source| Error::Jwt {
            path: path.clone(),
            source,
        })?;
        let jwt = text.trim();
        if jwt.is_empty() {
            return Err(Error::JwtEmpty { path: path.clone() });
        }
        Ok(SecretString::from(jwt))
    }

    /// Logs in. A token held so far is kept until the new one is there; then it is
    /// retired (revoked after a grace period) and every leased credential is re-issued
    /// under the new token, since Vault revokes leases with the token that made them.
    async fn login(&mut self) -> Result<()> {
        let auth = &self.config.auth;
        self.doing = format!("logging in as role {:?} at {}", auth.role, auth.mount_path);
        let result = self.try_login().await;
        match &result {
            Ok(()) => {
                self.login_failing = false;
                if let Some(t) = &self.token {
                    self.metrics
                        .token_expires(schedule::to_wall(t.expires) as f64 / 1000.0);
                }
                // Saved before anything is fetched with it: an agent killed from here
                // on leaves its token to the next process, not behind.
                self.save_state();
            }
            Err(_) => self.metrics.login_failed(),
        }
        result
    }

    async fn try_login(&mut self) -> Result<()> {
        // Re-read at every login: the kubelet rotates the projected token.
        let jwt = self.read_jwt()?;
        let auth = &self.config.auth;
        // Both methods take `{role, jwt}` at `<mount>/login`.
        match auth.method {
            AuthMethod::Kubernetes | AuthMethod::Jwt => {}
        }
        let result = self
            .client
            .login_kubernetes(&auth.mount_path, &auth.role, &jwt)
            .await;
        let token = result.map_err(|source| {
            let (role, mount) = (auth.role.clone(), auth.mount_path.clone());
            match source {
                vault::Error::Forbidden { .. } | vault::Error::Server { status: 400, .. } => {
                    Error::LoginDenied {
                        role,
                        mount,
                        source: source.into(),
                    }
                }
                source => Error::Login {
                    role,
                    mount,
                    source: source.into(),
                },
            }
        })?;
        let now = Instant::now();
        let new = TokenState::from_login(&token, now);
        info!(
            auth.role = %auth.role,
            auth.mount = %auth.mount_path,
            token.accessor = new.accessor(),
            token.ttl_secs = token.lease_duration,
            token.renewable = token.renewable,
            "logged in to Vault"
        );

        if let Some(old) = self.token.replace(new) {
            let old_accessor = old.accessor.clone();
            match schedule::replaced_grace(old.expires.saturating_duration_since(now)) {
                Some(grace) => self.retiring.push(Retiring {
                    token: old.token,
                    accessor: old_accessor.clone().unwrap_or_default(),
                    revoke_at: now + grace,
                }),
                None => debug!(
                    token.accessor = old.accessor(),
                    "old token expires on its own"
                ),
            }
            for s in &mut self.sources {
                let from_old = s.held.as_ref().is_some_and(|h| {
                    h.kind.is_dynamic()
                        && !h.lease_id.is_empty()
                        && h.token_accessor == old_accessor
                });
                if from_old {
                    s.action = Action::Reissue;
                    s.due = now;
                }
            }
        }
        self.login_backoff.reset();
        self.login_retry_at = None;
        Ok(())
    }

    /// Takes over the token and credentials a previous agent process of this pod left
    /// in the state file, if they are still good. Returns whether a token was adopted.
    async fn adopt(&mut self) -> bool {
        let loaded = match state::load(&self.state_dir) {
            Ok(Some(s)) => s,
            Ok(None) => {
                debug!("no state to adopt");
                return false;
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "the state file is unusable; starting fresh");
                return false;
            }
        };
        let vault = &self.config.vault;
        let auth = &self.config.auth;
        if loaded.vault_addr != vault.addr
            || loaded.namespace != vault.namespace
            || loaded.auth_mount != auth.mount_path
            || loaded.role != auth.role
        {
            warn!("the state file is for another Vault address, namespace or role; starting fresh");
            return false;
        }
        let now = Instant::now();
        let record = &loaded.token;
        let expires = schedule::from_wall(record.expires_ms);
        if expires <= now + schedule::MIN_LEAD {
            info!(
                token.accessor = record.accessor.as_deref().unwrap_or(""),
                "the handed-over token has expired; starting fresh"
            );
            return false;
        }

        self.client.set_token(&record.token);
        self.doing = String::from("confirming the handed-over token (lookup-self)");
        match self.client.lookup_self().await {
            Ok(info) if info.ttl > 0 || expires > now + Duration::from_secs(86_400) => {}
            // A TLS or configuration problem: the fresh start reports it properly.
            Err(e) if !e.is_transient() && !matches!(e, vault::Error::Forbidden { .. }) => {
                self.client.clear_token();
                debug!(error = %error_chain(&e), "cannot check the handed-over token");
                return false;
            }
            Ok(_) | Err(vault::Error::Forbidden { .. }) => {
                warn!(
                    token.accessor = record.accessor.as_deref().unwrap_or(""),
                    "the handed-over token is no longer valid; starting fresh"
                );
                self.client.clear_token();
                return false;
            }
            // Vault unreachable: the token was valid when written and is within its TTL;
            // keep it rather than fail (a login would not work either).
            Err(e) => {
                warn!(error = %error_chain(&e), "could not confirm the handed-over token; adopting it")
            }
        }
        self.token = Some(TokenState {
            token: record.token.clone(),
            accessor: record.accessor.clone(),
            ttl: Duration::from_secs(record.ttl_secs),
            renewable: record.renewable,
            expires,
            action: record.action,
            due: schedule::from_wall(record.next_ms),
        });
        self.kv.remember(loaded.mounts);

        // Templates find their sources by executing: against the handed-over data they
        // read what the previous process fetched for them.
        let have: BTreeMap<source::Key, template::Fetched> = loaded
            .sources
            .iter()
            .map(|r| {
                (
                    source::Key {
                        path: r.path.clone(),
                        params: r.params.clone(),
                    },
                    template::Fetched {
                        data: r.data.expose().clone(),
                        lease_id: r.lease_id.clone(),
                        lease_duration: r.ttl_secs,
                        renewable: r.renewable,
                    },
                )
            })
            .collect();
        for i in 0..self.templates.len() {
            if let Some(t) = self.templates[i].clone() {
                for key in t.execute(&have).used {
                    self.link(&key, i);
                }
            }
        }

        let mut adopted = 0;
        for record in loaded.sources {
            let key = source::Key {
                path: record.path,
                params: record.params,
            };
            let Some(index) = self.sources.iter().position(|s| s.key == key) else {
                continue;
            };
            let expires = schedule::from_wall(record.expires_ms);
            if record.kind.is_dynamic() && expires <= now + schedule::MIN_LEAD {
                continue;
            }
            let s = &mut self.sources[index];
            s.held = Some(Held {
                data: record.data,
                kind: record.kind,
                lease_id: record.lease_id,
                ttl: Duration::from_secs(record.ttl_secs),
                renewable: record.renewable,
                expires,
                token_accessor: record.token_accessor,
                kv_v2: record.kv_v2,
            });
            s.action = record.action;
            s.due = schedule::from_wall(record.next_ms);
            adopted += 1;
            self.note_expiry(index);
        }
        info!(
            token.accessor = self.token.as_ref().map_or("", TokenState::accessor),
            sources = adopted,
            "adopted the token and credentials handed over in the state file"
        );
        for index in 0..self.sources.len() {
            if self.sources[index].held.is_some()
                && let Err(e) = self.render(index)
            {
                warn!(error = %error_chain(&e), "rendering an adopted secret failed");
            }
        }
        true
    }

    /// Writes the state file for the next agent process of this pod.
    fn save_state(&self) {
        let Some(token) = &self.token else {
            return;
        };
        let vault = &self.config.vault;
        let record = state::State {
            version: state::VERSION,
            vault_addr: vault.addr.clone(),
            namespace: vault.namespace.clone(),
            auth_mount: self.config.auth.mount_path.clone(),
            role: self.config.auth.role.clone(),
            token: state::TokenRecord {
                token: token.token.clone(),
                accessor: token.accessor.clone(),
                ttl_secs: token.ttl.as_secs(),
                renewable: token.renewable,
                expires_ms: schedule::to_wall(token.expires),
                next_ms: schedule::to_wall(token.due),
                action: token.action,
            },
            mounts: self.kv.mounts(),
            sources: self
                .sources
                .iter()
                .filter_map(|s| {
                    let h = s.held.as_ref()?;
                    Some(state::SourceRecord {
                        path: s.key.path.clone(),
                        params: s.key.params.clone(),
                        kind: h.kind,
                        lease_id: h.lease_id.clone(),
                        ttl_secs: h.ttl.as_secs(),
                        renewable: h.renewable,
                        expires_ms: schedule::to_wall(h.expires),
                        next_ms: schedule::to_wall(s.due),
                        action: s.action,
                        token_accessor: h.token_accessor.clone(),
                        kv_v2: h.kv_v2,
                        data: h.data.clone(),
                    })
                })
                .collect(),
        };
        if let Err(e) = state::save(&self.state_dir, &record) {
            // The files are what the app needs; without the state a restarted agent
            // only logs in again.
            warn!(error = %error_chain(&e), "could not write the state file");
        }
    }

    /// Fetches the sources `indices` afresh (read, or write with parameters), with at
    /// most [`FETCH_CONCURRENCY`] requests in flight, keeps what came back, saves the
    /// state, renders, and schedules the revocation of replaced credentials. Returns
    /// the outcome of each source, in the order of `indices`; one failing does not keep
    /// the others from being fetched and written.
    async fn fetch_all(&mut self, indices: &[usize]) -> Vec<(usize, Result<()>)> {
        let mut outcomes = Vec::with_capacity(indices.len());
        let Some(&first) = indices.first() else {
            return outcomes;
        };
        let spec = &self.config.secrets[self.sources[first].secrets[0]];
        self.doing = match indices.len() {
            1 => format!(
                "reading secret {:?} at {}",
                spec.name, self.sources[first].key.path
            ),
            n => format!(
                "reading {n} Vault paths, among them secret {:?} at {}",
                spec.name, self.sources[first].key.path
            ),
        };

        // Mounts first, one after the other: the resolver asks Vault once per mount,
        // so the reads that follow know their API path without asking again.
        let mut requests = Vec::with_capacity(indices.len());
        for &index in indices {
            let key = self.sources[index].key.clone();
            if !key.params.is_empty() {
                requests.push((index, key, None));
                continue;
            }
            match self.kv.plan(&self.client, &key.path).await {
                Ok(plan) => requests.push((index, key, Some(plan))),
                Err(e) => outcomes.push((index, Err(self.fetch_error(index, e)))),
            }
        }

        let client = &self.client;
        let responses: Vec<_> = stream::iter(requests)
            .map(|(index, key, plan)| async move {
                let result = match plan {
                    Some(plan) => kv::read_planned(client, &key.path, plan).await,
                    None => client
                        .write(&key.path, &key.params)
                        .await
                        .map(|r| (r, false)),
                };
                (index, result)
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;

        let mut fetched = Vec::with_capacity(responses.len());
        for (index, result) in responses {
            match result {
                Ok((resp, kv_v2)) => {
                    self.keep(index, resp, kv_v2);
                    fetched.push(index);
                }
                Err(e) => outcomes.push((index, Err(self.fetch_error(index, e)))),
            }
        }
        // The new credentials go into the state before any file: an agent killed
        // while writing leaves them to the next process to adopt, not to mint again.
        if !fetched.is_empty() {
            self.save_state();
        }
        fetched.sort_unstable();
        for index in fetched {
            let first = self.sources[index].secrets[0];
            failpoint::hit("after-fetch", &self.config.secrets[first].file);
            outcomes.push((index, self.render(index)));
        }
        outcomes.sort_by_key(|(index, _)| indices.iter().position(|i| i == index));
        outcomes
    }

    /// What a failed fetch of source `index` means, named after its first secret.
    fn fetch_error(&self, index: usize, source: vault::Error) -> Error {
        let first = self.sources[index].secrets[0];
        let (name, path) = (
            self.config.secrets[first].name.clone(),
            self.sources[index].key.path.clone(),
        );
        match source {
            vault::Error::NotFound { .. } => Error::NotFound {
                name,
                path,
                source: source.into(),
            },
            vault::Error::Forbidden { .. } => Error::Forbidden {
                name,
                path,
                role: self.config.auth.role.clone(),
                source: source.into(),
            },
            source => Error::Read {
                name,
                path,
                source: source.into(),
            },
        }
    }

    /// Makes `resp`, just fetched for source `index`, what the source holds and
    /// schedules its next action; a replaced lease of the current token is revoked once
    /// the app has switched, one of an older token goes with that token.
    fn keep(&mut self, index: usize, resp: vault::SecretResponse, kv_v2: bool) {
        let now = Instant::now();
        let accessor = self.token.as_ref().and_then(|t| t.accessor.clone());
        let s = &mut self.sources[index];
        let (mut held, mut action, mut due) =
            Held::from_response(resp, now, s.refresh, accessor.clone(), schedule::jitter());
        held.kv_v2 = kv_v2;
        if s.held.is_none() && held.kind == source::Kind::Static {
            // Spread over the whole interval: see `schedule::first_refresh`.
            (action, due) = schedule::first_refresh(now, s.refresh, schedule::spread());
        }
        if held.kind.is_dynamic() {
            info!(
                secret.path = %s.key.path,
                lease.id = %held.lease_id,
                lease.ttl_secs = held.ttl.as_secs(),
                lease.renewable = held.renewable,
                kind = ?held.kind,
                next_in_ms = due.saturating_duration_since(now).as_millis() as u64,
                "credential issued"
            );
        }
        let old = s.held.replace(held);
        s.action = action;
        s.due = due;
        let path = s.key.path.clone();
        if old.as_ref().is_some_and(|h| h.kind.is_dynamic()) {
            self.each_secret(index, Metrics::reissued);
        }
        self.note_expiry(index);
        if let Some(old) = old
            && old.kind.is_dynamic()
            && !old.lease_id.is_empty()
            && old.token_accessor == accessor
            && let Some(grace) =
                schedule::replaced_grace(old.expires.saturating_duration_since(now))
        {
            self.revocations.push(LeaseRevocation {
                lease_id: old.lease_id,
                path,
                at: now + grace,
            });
        }
    }

    /// Renders every secret of source `index` from the data held, notifying the app of
    /// each file that really changed.
    fn render(&mut self, index: usize) -> Result<()> {
        let s = &self.sources[index];
        let Some(held) = &s.held else {
            return Ok(());
        };
        let secrets = s.secrets.clone();
        let data = held.format_data().into_owned();
        // One file failing (a full volume, a missing key) does not keep the others of
        // the source from being written; the first failure is returned.
        let mut first_error = None;
        for i in secrets {
            let result = if self.templates[i].is_some() {
                // A failing template keeps its file and never causes a re-fetch.
                self.render_template(i)
            } else {
                let spec = &self.config.secrets[i];
                render::render(&spec.format, &data)
                    .map_err(|source| Error::Render {
                        name: spec.name.clone(),
                        source,
                    })
                    .and_then(|bytes| self.write_file(i, &bytes))
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Renews the lease of source `index` in place.
    async fn renew_lease(&mut self, index: usize) {
        let Some(held) = &self.sources[index].held else {
            return;
        };
        let (lease_id, ttl, expires) = (held.lease_id.clone(), held.ttl, held.expires);
        let path = self.sources[index].key.path.clone();
        let result = self.client.renew_lease(&lease_id, ttl.as_secs()).await;
        let now = Instant::now();
        let s = &mut self.sources[index];
        match result {
            Ok(grant) => {
                let granted = Duration::from_secs(grant.lease_duration);
                let (action, due) =
                    schedule::after_grant(now, ttl, granted, grant.renewable, schedule::jitter());
                info!(
                    secret.path = %path,
                    lease.id = %lease_id,
                    lease.ttl_secs = grant.lease_duration,
                    capped = action == Action::Reissue,
                    next_in_ms = due.saturating_duration_since(now).as_millis() as u64,
                    "lease renewed"
                );
                if let Some(h) = &mut s.held {
                    h.expires = now + granted;
                    h.renewable = grant.renewable;
                }
                s.action = action;
                s.due = due;
                s.backoff.reset();
                self.each_secret(index, Metrics::renewed);
                self.note_expiry(index);
            }
            Err(e) if e.is_transient() => {
                let wait = s.backoff.next_wait();
                // Too close to expiry for another try: replace it instead.
                if now + wait + schedule::MIN_LEAD >= expires {
                    s.action = Action::Reissue;
                }
                warn!(secret.path = %path, lease.id = %lease_id, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "lease renewal failed");
                s.due = now + wait;
            }
            Err(e) => {
                // Revoked or unknown lease (or a token gone, checked by the fetch that
                // follows): replace the credential now.
                warn!(secret.path = %path, lease.id = %lease_id, error = %error_chain(&e), "lease cannot be renewed; issuing a new credential");
                s.action = Action::Reissue;
                s.due = now;
            }
        }
    }

    /// Renews the token, or marks it for a new login.
    async fn renew_token(&mut self) {
        let Some(token) = &self.token else {
            return;
        };
        let asked = token.ttl.as_secs();
        let result = self.client.renew_self(asked).await;
        let now = Instant::now();
        match result {
            Ok(grant) => {
                if let Some(t) = &mut self.token {
                    t.granted(
                        now,
                        Duration::from_secs(grant.lease_duration),
                        grant.renewable,
                    );
                    info!(
                        token.ttl_secs = grant.lease_duration,
                        capped = t.action == Action::Reissue,
                        next_in_ms = t.due.saturating_duration_since(now).as_millis() as u64,
                        "token renewed"
                    );
                }
            }
            Err(e) if e.is_transient() => {
                let wait = self.login_backoff.next_wait();
                warn!(error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "token renewal failed; the token stays in use");
                if let Some(t) = &mut self.token {
                    t.due = now + wait;
                }
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "token renewal refused; logging in again");
                if let Some(t) = &mut self.token {
                    t.action = Action::Reissue;
                    t.due = now;
                }
            }
        }
    }

    /// Forgets a token that is gone (revoked or expired). Vault revoked the leases it
    /// created with it, so those credentials are re-issued as soon as a new login
    /// succeeds; nothing else is fetched again.
    fn token_lost(&mut self) {
        let Some(lost) = self.token.take() else {
            return;
        };
        self.client.clear_token();
        let now = Instant::now();
        for s in &mut self.sources {
            let dead = s.held.as_ref().is_some_and(|h| {
                h.kind.is_dynamic() && !h.lease_id.is_empty() && h.token_accessor == lost.accessor
            });
            if dead {
                s.action = Action::Reissue;
                s.due = now;
            }
        }
    }

    /// After a 403: is the token itself gone? Then forget it, so the next step logs in
    /// again. Returns whether it was gone.
    async fn token_gone_after_forbidden(&mut self) -> bool {
        match self.client.lookup_self().await {
            Err(vault::Error::Forbidden { .. }) => {
                warn!("the Vault token is no longer valid; logging in again");
                self.token_lost();
                true
            }
            _ => false,
        }
    }

    /// Does everything due by now and returns when the next thing is due.
    async fn step(&mut self) -> Instant {
        let now = Instant::now();

        // The token first: every other call needs it.
        if let Some(t) = &self.token
            && t.expires <= now
        {
            warn!(token.accessor = t.accessor(), "the Vault token expired");
            self.token_lost();
        }
        let token_due = self.token.as_ref().is_none_or(|t| t.due <= now);
        let may_login = self.login_retry_at.is_none_or(|at| at <= now);
        if token_due && may_login {
            let relogin = self
                .token
                .as_ref()
                .is_none_or(|t| t.action == Action::Reissue);
            if relogin {
                if let Err(e) = self.login().await {
                    let wait = self.login_backoff.next_wait();
                    let level_error = self.token.is_none();
                    // Once per outage at warn/error; every retry at debug.
                    if std::mem::replace(&mut self.login_failing, true) {
                        debug!(error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "cannot log in to Vault (still)");
                    } else if level_error {
                        error!(error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "cannot log in to Vault");
                    } else {
                        warn!(error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "cannot log in to Vault; the current token stays in use");
                    }
                    self.login_retry_at = Some(Instant::now() + wait);
                }
            } else {
                self.renew_token().await;
            }
        }
        if self.token.is_none() {
            self.save_state();
            return self.login_retry_at.unwrap_or_else(Instant::now);
        }
        if let Err(e) = self.discover() {
            warn!(error = %error_chain(&e), "rendering a template failed");
        }
        self.retry_unrendered();

        // Renewals one by one; what must be fetched afresh (a refresh, a replacement, a
        // renewal that failed for good) is fetched together.
        let mut to_fetch = Vec::new();
        for index in 0..self.sources.len() {
            if self.sources[index].due > Instant::now() {
                continue;
            }
            if !self.sources[index].needs_fetch() {
                self.renew_lease(index).await;
                if !self.sources[index].needs_fetch() {
                    continue;
                }
            }
            to_fetch.push(index);
        }
        let mut token_gone = false;
        for (index, outcome) in self.fetch_all(&to_fetch).await {
            match outcome {
                Ok(()) => {
                    self.unrendered.remove(&index);
                    self.each_secret(index, Metrics::fresh);
                    let s = &mut self.sources[index];
                    if s.failing {
                        info!(secret.path = %s.key.path, "secret readable again");
                    }
                    s.failing = false;
                    s.backoff.reset();
                }
                Err(e @ (Error::Write { .. } | Error::Render { .. })) => {
                    // Fetched, but a file could not be written: keep the credential and
                    // its schedule, and retry the writing alone.
                    self.each_secret(index, Metrics::failed);
                    let mut backoff = Backoff::new();
                    let wait = backoff.next_wait();
                    self.unrendered
                        .insert(index, (Instant::now() + wait, backoff));
                    let s = &mut self.sources[index];
                    if s.failing {
                        debug!(secret.path = %s.key.path, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "writing failed again; keeping the last good file");
                    } else {
                        warn!(secret.path = %s.key.path, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "writing failed; keeping the last good file");
                    }
                    s.failing = true;
                }
                Err(e) => {
                    self.each_secret(index, Metrics::failed);
                    let forbidden = matches!(e, Error::Forbidden { .. });
                    // One `lookup-self` tells for every 403 of the batch.
                    if forbidden && (token_gone || self.token_gone_after_forbidden().await) {
                        token_gone = true;
                        self.sources[index].due = Instant::now();
                        continue;
                    }
                    let s = &mut self.sources[index];
                    // Retry sooner than the refresh interval, but never busier than it
                    // when the interval is short.
                    let mut wait = s.backoff.next_wait();
                    if !s.held.as_ref().is_some_and(|h| h.kind.is_dynamic()) {
                        wait = wait.min(s.refresh.max(Backoff::FIRST));
                    }
                    let message = if forbidden {
                        "the Vault policy denies this path; keeping the last good file"
                    } else {
                        "refresh failed; keeping the last good file"
                    };
                    // Once per state change at warn (recovery is logged at info); every
                    // retry at debug, with the same fields.
                    if s.failing {
                        debug!(secret.path = %s.key.path, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, still = true, "{message}");
                    } else {
                        warn!(secret.path = %s.key.path, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "{message}");
                    }
                    s.failing = true;
                    s.due = Instant::now() + wait;
                }
            }
        }
        if token_gone {
            // Log in again at once; what the old token failed to read goes with it.
            self.save_state();
            return Instant::now();
        }

        self.revoke_due().await;
        self.save_state();

        [
            self.token.as_ref().map(|t| t.due),
            self.login_retry_at,
            self.sources.iter().map(|s| s.due).min(),
            self.unrendered.values().map(|(at, _)| *at).min(),
            self.retiring.iter().map(|r| r.revoke_at).min(),
            self.revocations.iter().map(|r| r.at).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Revokes replaced tokens and leases whose grace period is over. Best effort: what
    /// fails expires at its TTL.
    async fn revoke_due(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|r| r.revoke_at <= now);
        self.retiring = keep;
        for old in due {
            match self.client.revoke_other(&old.token).await {
                Ok(()) => {
                    info!(token.accessor = %old.accessor, "replaced token revoked with its leases")
                }
                Err(e) => {
                    warn!(token.accessor = %old.accessor, error = %error_chain(&e), "could not revoke the replaced token; it expires at its TTL")
                }
            }
        }

        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.revocations)
            .into_iter()
            .partition(|r| r.at <= now);
        self.revocations = keep;
        for old in due {
            if self.lease_revoke_denied {
                continue;
            }
            match self.client.revoke_lease(&old.lease_id).await {
                Ok(()) => {
                    info!(secret.path = %old.path, lease.id = %old.lease_id, "replaced lease revoked")
                }
                Err(vault::Error::Forbidden { .. }) => {
                    self.lease_revoke_denied = true;
                    warn!(
                        secret.path = %old.path,
                        lease.id = %old.lease_id,
                        "the Vault policy does not allow revoking replaced leases (sys/leases/revoke); they expire at their TTL"
                    );
                }
                Err(e) => {
                    warn!(secret.path = %old.path, lease.id = %old.lease_id, error = %error_chain(&e), "could not revoke the replaced lease; it expires at its TTL")
                }
            }
        }
    }

    /// Revokes the current token and every replaced one, together within
    /// [`REVOKE_TIMEOUT`]. Revoking a token revokes every lease it created. Returns
    /// whether everything was revoked.
    async fn revoke_all(&mut self) -> bool {
        let leases: Vec<String> = self
            .sources
            .iter()
            .filter_map(|s| s.held.as_ref())
            .filter(|h| !h.lease_id.is_empty())
            .map(|h| h.lease_id.clone())
            .collect();
        let Some(current) = self.token.take() else {
            info!("no token to revoke");
            return self.retiring.is_empty();
        };
        let mut tokens = vec![(current.accessor().to_owned(), current.token.clone())];
        tokens.extend(
            std::mem::take(&mut self.retiring)
                .into_iter()
                .map(|r| (r.accessor, r.token)),
        );

        // One deadline for the whole step: when Vault is unreachable the pod still
        // stops in time.
        let mut revoked = 0;
        let client = &self.client;
        let attempt = async {
            for (accessor, token) in &tokens {
                match client.revoke_other(token).await {
                    Ok(()) => {
                        info!(token.accessor = %accessor, "token revoked with every lease it created");
                        revoked += 1;
                    }
                    Err(e) => {
                        warn!(
                            token.accessor = %accessor,
                            leases = ?leases,
                            error = %error_chain(&e),
                            "could not revoke the token; it and its leases stay valid until their TTL runs out"
                        );
                        return false;
                    }
                }
            }
            true
        };
        let ok = match timeout(REVOKE_TIMEOUT, attempt).await {
            Ok(ok) => ok,
            Err(_) => {
                for (accessor, _) in &tokens[revoked..] {
                    warn!(
                        token.accessor = %accessor,
                        leases = ?leases,
                        timeout_secs = REVOKE_TIMEOUT.as_secs(),
                        "revoking the token timed out; it and its leases stay valid until their TTL runs out"
                    );
                }
                false
            }
        };
        self.client.clear_token();
        ok
    }
}

/// Init mode: renders every secret once, retrying transient failures until `deadline`
/// has passed since the call, writes the state for the sidecar and returns without
/// revoking the token.
pub async fn init(config: AgentConfig, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    let mut agent = Agent::new(config, false)?;
    info!(
        vault.addr = %agent.client.addr(),
        auth.role = %agent.config.auth.role,
        secrets = agent.config.secrets.len(),
        sources = agent.sources.len(),
        deadline_secs = deadline.as_secs(),
        "rendering secrets"
    );
    let adopted = timeout_at(until, agent.adopt()).await.unwrap_or(false);

    let mut backoff = Backoff::new();
    let result = loop {
        let err = match timeout_at(until, init_round(&mut agent)).await {
            Ok(Ok(())) => break Ok(()),
            Ok(Err(e)) if !e.is_transient() => break Err(e),
            Ok(Err(e)) => e,
            Err(_) => {
                break Err(Error::NoAnswer {
                    addr: agent.client.addr().to_owned(),
                    deadline,
                    doing: agent.doing.clone(),
                });
            }
        };
        let wait = backoff.next_wait();
        if Instant::now() + wait >= until {
            break Err(Error::Deadline {
                deadline,
                last: Box::new(err),
            });
        }
        warn!(error = %error_chain(&err), retry_in_ms = wait.as_millis() as u64, "will retry");
        sleep_until(Instant::now() + wait).await;
    };

    match result {
        Ok(()) => {
            agent.save_state();
            mark_ready(&agent.state_dir);
            info!(
                secrets = agent.config.secrets.len(),
                token.accessor = agent.token.as_ref().map_or("", TokenState::accessor),
                "all secrets rendered; token and leases handed to the sidecar"
            );
            Ok(())
        }
        Err(e) => {
            // Nobody will adopt what this run created: take it back.
            if !adopted
                && agent.token.is_some()
                && agent.revoke_all().await
                && let Err(e) = state::remove(&agent.state_dir)
            {
                warn!(error = %e, "could not remove the state file");
            }
            Err(e)
        }
    }
}

/// Logs in if needed and fetches every source not held yet.
async fn init_round(agent: &mut Agent) -> Result<()> {
    if agent.token.is_none() {
        agent.login().await?;
    }
    agent.discover()?;
    // Templates add sources as they render, so each pass fetches what is not held yet
    // until nothing is left. Every pass either fails or leaves its sources held, and
    // each template finds new ones at most `template::MAX_ROUNDS` times, so this ends.
    loop {
        let missing: Vec<usize> = (0..agent.sources.len())
            .filter(|&i| agent.sources[i].held.is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        for (_, outcome) in agent.fetch_all(&missing).await {
            outcome?;
        }
    }
    agent.template_verdict()
}

/// Sidecar mode: keeps every secret fresh until `shutdown` completes, then revokes the
/// token. Returns `Ok` on shutdown; failures while running are logged and retried,
/// never fatal, so the app keeps its last good files.
pub async fn sidecar(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let agent = Agent::new(config, true)?;
    info!(
        vault.addr = %agent.client.addr(),
        auth.role = %agent.config.auth.role,
        secrets = agent.config.secrets.len(),
        sources = agent.sources.len(),
        "keeping secrets fresh"
    );
    // Opt-in; a port that cannot be bound costs the metrics, never the secrets.
    let metrics_server = match agent.config.metrics_port {
        Some(port) => match metrics::bind(port).await {
            Ok(listener) => Some(tokio::spawn(metrics::serve(
                listener,
                agent.metrics.clone(),
            ))),
            Err(e) => {
                warn!(metrics.port = port, error = %e, "cannot serve metrics; carrying on without them");
                None
            }
        },
        None => None,
    };
    let result = keep_fresh(agent, shutdown).await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    result
}

async fn keep_fresh(mut agent: Agent, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return finish(agent).await,
        _ = agent.adopt() => {}
    }
    let mut ready = false;
    loop {
        let wake = tokio::select! {
            () = &mut shutdown => break,
            wake = agent.step() => wake,
        };
        if !ready && agent.all_rendered() {
            ready = mark_ready(&agent.state_dir);
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until(wake) => {}
        }
    }
    finish(agent).await
}

/// Creates the empty marker `<state_dir>/ready` that the native sidecar's startup
/// probe (`sidekey-agent probe`) waits for; `true` once it exists. Creating an empty
/// file is atomic: the probe sees it or not, never half of it.
fn mark_ready(state_dir: &std::path::Path) -> bool {
    let path = state_dir.join(crate::contract::layout::READY_FILE);
    match std::fs::File::create(&path) {
        Ok(_) => {
            info!("every secret rendered once; ready");
            true
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot write the readiness marker; the startup probe will not pass yet");
            false
        }
    }
}

/// The shutdown sequence: let notifications end, wait the revoke delay, revoke.
async fn finish(mut agent: Agent) -> Result<()> {
    let delay = Duration::from_secs(agent.config.revoke_delay_secs);
    info!(revoke_delay_secs = delay.as_secs(), "shutting down");
    if let Some(dispatcher) = &agent.notifier
        && !dispatcher.shutdown(NOTIFY_GRACE).await
    {
        warn!("notifications still running at shutdown were abandoned");
    }
    if !delay.is_zero() {
        // The webhook checks that the pod's grace period covers this delay plus the
        // revocation; the kubelet's SIGKILL bounds it in any case.
        tokio::time::sleep(delay).await;
    }
    if agent.revoke_all().await
        && let Err(e) = state::remove(&agent.state_dir)
    {
        warn!(error = %e, "could not remove the state file");
    }
    Ok(())
}

/// Completes on SIGTERM (what the kubelet sends to stop a container) or SIGINT (Ctrl-C
/// when run by hand). The handlers are installed by this call, before the returned
/// future is first polled, so a signal arriving early is not lost.
///
/// # Errors
/// Installing a handler fails only if the runtime has no signal driver.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => info!(signal = "SIGINT", "signal received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_chain_reads_on_one_line() {
        let err = Error::Deadline {
            deadline: Duration::from_secs(3),
            last: Box::new(Error::JwtEmpty { path: "/t".into() }),
        };
        assert_eq!(
            error_chain(&err),
            "gave up after the init deadline of 3s (SIDEKEY_INIT_DEADLINE); last failure: \
             the service-account token file /t is empty"
        );
    }

    #[test]
    fn a_renewal_capped_by_the_max_ttl_leads_to_a_new_login_before_expiry() {
        let token = vault::Token {
            client_token: SecretString::from("x"),
            lease_duration: 30,
            renewable: true,
            accessor: None,
        };
        let now = Instant::now();
        let mut t = TokenState::from_login(&token, now);
        assert_eq!(t.action, Action::Renew);
        assert!(t.due >= now + Duration::from_secs(18) && t.due <= now + Duration::from_secs(20));
        t.granted(now, Duration::from_secs(12), true);
        assert_eq!(t.action, Action::Reissue);
        assert!(
            t.due <= now + Duration::from_secs(2),
            "relogin a third of 30 s before expiry"
        );
    }
}
