//! The agent's two modes.
//!
//! - [`init`] (the init container): log in, render every secret once, return. Transient
//!   failures (Vault unreachable, 5xx, 429) are retried with [`Backoff`] until the init
//!   deadline; permanent ones (login denied, secret not found, TLS not trusted, a file
//!   that cannot be written) fail at once, so the pod shows the reason quickly.
//! - [`sidecar`]: render everything, then re-read each secret every `refresh_secs`,
//!   rewriting a file only when its bytes change. On failure the last good file stays
//!   and the read is retried with backoff. The token is renewed at about two thirds of
//!   its TTL, and replaced by a new login when it cannot be renewed or is gone. After a
//!   file really changed, the app is told in the background if the secret has a
//!   `notify` ([`notify::Dispatcher`]). When the shutdown future completes (SIGTERM
//!   from the kubelet, see [`shutdown_signal`]), the sidecar waits `revoke_delay_secs`
//!   (so the app can drain while its credentials still work), revokes the token within
//!   [`REVOKE_TIMEOUT`] and returns.
//!
//! Log events carry `secret.name`, `secret.path`, `file` and `changed`; never a value,
//! a token or the JWT.

use std::{future::Future, path::PathBuf, time::Duration};

use secrecy::SecretString;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, error, info, warn};

use crate::{
    contract::config::{AgentConfig, AuthMethod, SecretSpec},
    files, kv, notify, render,
    vault::{self, Client},
};

/// How long the sidecar tries to revoke its token on shutdown. Well under the default
/// `terminationGracePeriodSeconds` of 30 s.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long notifications in flight at shutdown may take to end.
const NOTIFY_GRACE: Duration = Duration::from_secs(1);

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
    #[error("no answer from Vault at {addr} within the init deadline of {}s ({INIT_DEADLINE_ENV})", deadline.as_secs())]
    NoAnswer { addr: String, deadline: Duration },
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
            Error::Client(_) => 64,
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

/// Capped, jittered exponential backoff: 250 ms doubling to 10 s, each wait ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        // Jitter spreads the retries of many pods restarted together.
        base.mul_f64(rand::random_range(0.8..=1.2))
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The current token's schedule.
#[derive(Debug)]
struct TokenState {
    accessor: Option<String>,
    /// When to renew or replace the token.
    refresh_at: Instant,
    /// Whether a renewal is worth trying at `refresh_at` (or a new login is needed).
    renew: bool,
    /// The TTL the login granted, to notice renewals capped by the max TTL.
    login_ttl: Duration,
}

impl TokenState {
    fn new(token: &vault::Token, login_ttl: Option<Duration>) -> Self {
        let ttl = Duration::from_secs(token.lease_duration);
        let login_ttl = login_ttl.unwrap_or(ttl);
        let refresh_at = if ttl.is_zero() {
            // A token without expiry (possible with a periodic or root-like token)
            // never needs refreshing; check again in a day anyway.
            Instant::now() + Duration::from_secs(86_400)
        } else {
            Instant::now() + ttl.mul_f64(2.0 / 3.0)
        };
        // A renewal that grants under a third of the login's TTL is hitting the max
        // TTL; the next refresh logs in again instead.
        let renew = token.renewable && ttl >= login_ttl / 3;
        TokenState {
            accessor: token.accessor.clone(),
            refresh_at,
            renew,
            login_ttl,
        }
    }
}

/// One agent: its configuration, Vault client, mount knowledge and token.
struct Agent {
    config: AgentConfig,
    dir: PathBuf,
    client: Client,
    kv: kv::Resolver,
    token: Option<TokenState>,
}

impl Agent {
    fn new(config: AgentConfig) -> Result<Self> {
        let client = Client::new(&config.vault).map_err(Error::Client)?;
        let dir = PathBuf::from(&config.secrets_dir);
        let swept = files::remove_stale_temps(&dir);
        if swept > 0 {
            info!(removed = swept, dir = %dir.display(), "removed temporary files left by an earlier run");
        }
        Ok(Agent {
            config,
            dir,
            client,
            kv: kv::Resolver::default(),
            token: None,
        })
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

    async fn login(&mut self) -> Result<()> {
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
        info!(
            auth.role = %auth.role,
            auth.mount = %auth.mount_path,
            token.accessor = token.accessor.as_deref().unwrap_or(""),
            token.ttl_secs = token.lease_duration,
            token.renewable = token.renewable,
            "logged in to Vault"
        );
        self.token = Some(TokenState::new(&token, None));
        Ok(())
    }

    /// Renews or replaces the token if its refresh time has come.
    async fn refresh_token(&mut self) -> Result<()> {
        let Some(state) = &self.token else {
            return self.login().await;
        };
        if Instant::now() < state.refresh_at {
            return Ok(());
        }
        if state.renew {
            let login_ttl = state.login_ttl;
            match self.client.renew_self().await {
                Ok(token) => {
                    debug!(token.ttl_secs = token.lease_duration, "token renewed");
                    self.token = Some(TokenState::new(&token, Some(login_ttl)));
                    return Ok(());
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), "token renewal failed; logging in again");
                }
            }
        }
        self.token = None;
        self.client.clear_token();
        self.login().await
    }

    /// Reads, renders and writes one secret.
    async fn sync(&mut self, index: usize) -> Result<files::Outcome> {
        let spec: &SecretSpec = &self.config.secrets[index];
        let read = self.kv.read(&self.client, &spec.path).await;
        let resp = read.map_err(|source| {
            let (name, path) = (spec.name.clone(), spec.path.clone());
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
        })?;

        let bytes =
            render::render(&spec.format, resp.data.expose()).map_err(|source| Error::Render {
                name: spec.name.clone(),
                source,
            })?;
        let outcome = files::write(&self.dir, &spec.file, &bytes, spec.mode).map_err(|source| {
            Error::Write {
                name: spec.name.clone(),
                file: spec.file.clone(),
                source,
            }
        })?;

        let changed = outcome.changed();
        if changed {
            info!(secret.name = %spec.name, secret.path = %spec.path, file = %spec.file, changed, "secret rendered");
        } else {
            debug!(secret.name = %spec.name, secret.path = %spec.path, file = %spec.file, changed, "secret unchanged");
        }
        Ok(outcome)
    }

    /// After a 403 on a read: is the token itself gone? Then forget it, so the next
    /// round logs in again.
    async fn check_token_after_forbidden(&mut self) {
        if let Err(vault::Error::Forbidden { .. }) = self.client.lookup_self().await {
            warn!("the Vault token is no longer valid; logging in again");
            self.token = None;
            self.client.clear_token();
        }
    }

    /// Revokes the token, bounded by [`REVOKE_TIMEOUT`].
    async fn revoke(&mut self) {
        let Some(state) = self.token.take() else {
            info!("no token to revoke");
            return;
        };
        let accessor = state.accessor.unwrap_or_default();
        match timeout(REVOKE_TIMEOUT, self.client.revoke_self()).await {
            Ok(Ok(())) => info!(token.accessor = %accessor, "token revoked"),
            Ok(Err(e)) => warn!(
                token.accessor = %accessor,
                error = %error_chain(&e),
                "could not revoke the token; it stays valid until its TTL runs out"
            ),
            Err(_) => warn!(
                token.accessor = %accessor,
                timeout_secs = REVOKE_TIMEOUT.as_secs(),
                "revoking the token timed out; it stays valid until its TTL runs out"
            ),
        }
    }

    /// Logs in if needed and syncs every secret still in `pending`, removing each
    /// one that succeeds.
    async fn render_pending(&mut self, pending: &mut Vec<usize>) -> Result<()> {
        if self.token.is_none() {
            self.login().await?;
        }
        while let Some(&index) = pending.first() {
            self.sync(index).await?;
            pending.remove(0);
        }
        Ok(())
    }
}

/// Init mode: renders every secret once, retrying transient failures until `deadline`
/// has passed since the call.
pub async fn init(config: AgentConfig, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    let mut agent = Agent::new(config)?;
    info!(
        vault.addr = %agent.client.addr(),
        auth.role = %agent.config.auth.role,
        secrets = agent.config.secrets.len(),
        deadline_secs = deadline.as_secs(),
        "rendering secrets"
    );

    let mut pending: Vec<usize> = (0..agent.config.secrets.len()).collect();
    let mut backoff = Backoff::new();
    loop {
        let err = match timeout_at(until, agent.render_pending(&mut pending)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(Error::NoAnswer {
                    addr: agent.client.addr().to_owned(),
                    deadline,
                });
            }
        };
        let wait = backoff.next_wait();
        if Instant::now() + wait >= until {
            return Err(Error::Deadline {
                deadline,
                last: Box::new(err),
            });
        }
        warn!(error = %error_chain(&err), retry_in_ms = wait.as_millis() as u64, "will retry");
        sleep_until(Instant::now() + wait).await;
    }

    info!(secrets = agent.config.secrets.len(), "all secrets rendered");
    Ok(())
}

/// Per-secret refresh schedule in the sidecar.
#[derive(Debug)]
struct Due {
    at: Instant,
    backoff: Backoff,
    /// Whether this secret has failed since its last success (to log recovery once).
    failing: bool,
}

/// Sidecar mode: keeps every secret fresh until `shutdown` completes, then revokes the
/// token. Returns `Ok` on shutdown; failures while running are logged and retried,
/// never fatal, so the app keeps its last good files.
pub async fn sidecar(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut agent = Agent::new(config)?;
    info!(
        vault.addr = %agent.client.addr(),
        auth.role = %agent.config.auth.role,
        secrets = agent.config.secrets.len(),
        "keeping secrets fresh"
    );

    let now = Instant::now();
    let mut due: Vec<Due> = agent
        .config
        .secrets
        .iter()
        .map(|_| Due {
            at: now,
            backoff: Backoff::new(),
            failing: false,
        })
        .collect();
    let mut login_backoff = Backoff::new();
    let mut login_retry_at: Option<Instant> = None;
    // Only secrets with a `notify` need the dispatcher (and its HTTP client).
    let notifier = if agent.config.secrets.iter().any(|s| s.notify.is_some()) {
        let notifier = notify::Notifier::new().map_err(Error::Notify)?;
        Some(notify::Dispatcher::new(
            notifier,
            notify::Backoff::default(),
        ))
    } else {
        None
    };

    tokio::pin!(shutdown);
    loop {
        let round = sidecar_round(
            &mut agent,
            &mut due,
            &mut login_backoff,
            &mut login_retry_at,
            notifier.as_ref(),
        );
        let wake = tokio::select! {
            () = &mut shutdown => break,
            wake = round => wake,
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until(wake) => {}
        }
    }

    let delay = Duration::from_secs(agent.config.revoke_delay_secs);
    info!(revoke_delay_secs = delay.as_secs(), "shutting down");
    if let Some(dispatcher) = &notifier
        && !dispatcher.shutdown(NOTIFY_GRACE).await
    {
        warn!("notifications still running at shutdown were abandoned");
    }
    if !delay.is_zero() {
        // The webhook checks that the pod's grace period covers this delay plus the
        // revocation; the kubelet's SIGKILL bounds it in any case.
        tokio::time::sleep(delay).await;
    }
    agent.revoke().await;
    Ok(())
}

/// One pass of the sidecar: refresh the token if due, then sync each due secret.
/// Returns when the next pass is needed.
async fn sidecar_round(
    agent: &mut Agent,
    due: &mut [Due],
    login_backoff: &mut Backoff,
    login_retry_at: &mut Option<Instant>,
    notifier: Option<&notify::Dispatcher>,
) -> Instant {
    let now = Instant::now();
    if let Some(at) = *login_retry_at
        && now < at
    {
        return at;
    }
    match agent.refresh_token().await {
        Ok(()) => {
            login_backoff.reset();
            *login_retry_at = None;
        }
        Err(e) => {
            let wait = login_backoff.next_wait();
            error!(error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "cannot log in to Vault");
            let at = Instant::now() + wait;
            *login_retry_at = Some(at);
            return at;
        }
    }

    for (index, slot) in due.iter_mut().enumerate() {
        if Instant::now() < slot.at {
            continue;
        }
        let spec = &agent.config.secrets[index];
        let refresh = Duration::from_secs(
            spec.refresh_secs
                .unwrap_or(agent.config.refresh_secs)
                .max(1),
        );
        match agent.sync(index).await {
            Ok(outcome) => {
                let spec = &agent.config.secrets[index];
                if let (true, Some(spec_notify), Some(dispatcher)) =
                    (outcome.changed(), &spec.notify, notifier)
                {
                    dispatcher.spawn_notify(&spec.name, spec_notify);
                }
                if slot.failing {
                    info!(secret.name = %agent.config.secrets[index].name, "secret readable again");
                }
                slot.failing = false;
                slot.backoff.reset();
                slot.at = Instant::now() + refresh;
            }
            Err(e) => {
                let forbidden = matches!(e, Error::Forbidden { .. });
                // Retry sooner than the refresh interval, but never busier than it
                // when the interval is short.
                let wait = slot.backoff.next_wait().min(refresh.max(Backoff::FIRST));
                let spec = &agent.config.secrets[index];
                warn!(
                    secret.name = %spec.name,
                    secret.path = %spec.path,
                    file = %spec.file,
                    error = %error_chain(&e),
                    retry_in_ms = wait.as_millis() as u64,
                    "refresh failed; keeping the last good file"
                );
                slot.failing = true;
                slot.at = Instant::now() + wait;
                if forbidden {
                    agent.check_token_after_forbidden().await;
                    if agent.token.is_none() {
                        // Log in again in the next pass and retry this secret then.
                        return Instant::now();
                    }
                }
            }
        }
    }

    let next_secret = due.iter().map(|d| d.at).min();
    let next_token = agent.token.as_ref().map(|t| t.refresh_at);
    [next_secret, next_token]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(60))
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
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new();
        let mut base = Backoff::FIRST;
        for _ in 0..12 {
            let wait = b.next_wait();
            assert!(
                wait >= base.mul_f64(0.8) && wait <= base.mul_f64(1.2),
                "{wait:?} vs {base:?}"
            );
            base = (base * 2).min(Backoff::MAX);
        }
        b.reset();
        assert!(b.next_wait() <= Backoff::FIRST.mul_f64(1.2));
    }

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
    fn a_renewal_capped_far_below_the_login_ttl_leads_to_a_new_login() {
        let token = |ttl| vault::Token {
            client_token: SecretString::from("x"),
            lease_duration: ttl,
            renewable: true,
            accessor: None,
        };
        assert!(TokenState::new(&token(3600), None).renew);
        assert!(TokenState::new(&token(3000), Some(Duration::from_secs(3600))).renew);
        assert!(!TokenState::new(&token(600), Some(Duration::from_secs(3600))).renew);
    }
}
