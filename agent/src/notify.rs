//! Telling the app that a secret file changed.
//!
//! A secret may carry a [`Notify`] (annotation `sidekey.dev/notify-<name>`). After the
//! agent has atomically replaced that secret's file with different content, it tells the
//! app in one of three ways:
//!
//! - **HTTP** (`http://localhost:8080/-/reload`): a `POST` with an empty body and the
//!   header [`SECRET_HEADER`] naming the secret, to a URL on the pod's own loopback (the
//!   containers of a pod share one network namespace). Any 2xx status is success; the
//!   response body is ignored. Redirects are not followed and no proxy is used.
//! - **Signal** (`signal:HUP:nginx`): the signal goes to every process whose name is the
//!   given one, matched against the kernel's process name (`/proc/<pid>/comm`, which the
//!   kernel truncates to 15 bytes, so a longer name matches only the next way) or the
//!   last path component of the process's `argv[0]`. The agent sees the app's processes
//!   only when the pod sets `shareProcessNamespace: true`, and the kernel lets it signal
//!   only processes running as the agent's own user.
//! - **Command** (`exec:["/path/to/program", "arg"]`): the program is run directly from an
//!   argument vector, with no shell and no `PATH` lookup (the agent image has neither),
//!   stdin closed and the secret name in [`SECRET_NAME_ENV`]. It runs in the agent's
//!   container, so it must exist there (for example on a volume shared with the app). A
//!   non-zero exit is a failure; a run longer than the timeout is killed, with the
//!   process group it started.
//!
//! [`Notifier::notify`] makes one attempt. [`Dispatcher::spawn_notify`] runs attempts in
//! the background with capped, jittered exponential backoff ([`Backoff`]) so rendering
//! never waits for the app.
//!
//! # Once per change
//!
//! The app is told once for each change that is still current. When the secret changes
//! again while a notification for it is waiting (queued behind an attempt in flight, or
//! sleeping before a retry), the waiting one is dropped as superseded and only the newest
//! is delivered: the app reloads the newest content, and is not told about content that
//! is already gone. An attempt already in flight is never interrupted by a newer change
//! (a reload command is not killed half-way); the newer notification runs after it.
//! Attempts for one secret never overlap. If every attempt fails, the change is given up
//! on after [`Backoff::max_attempts`] with an error in the log; the next change starts
//! afresh.
//!
//! # Watching files
//!
//! Files are replaced by rename, so each version is a new inode. An app that watches for
//! changes itself (instead of being notified) must watch the directory, not the file: an
//! inotify watch on the file stays on the old inode and sees nothing after the first
//! replacement.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::contract::config::{Notify, redact_url};

/// Request header naming the secret whose file changed, on HTTP notifications.
pub const SECRET_HEADER: &str = "X-Sidekey-Secret";

/// Environment variable naming the secret whose file changed, for notify commands.
pub const SECRET_NAME_ENV: &str = "SIDEKEY_SECRET_NAME";

/// How long one HTTP notification may take, connection to status line.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a notify command may run before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a command's stdout and of its stderr kept for the debug log; the rest is read
/// and discarded so the command never blocks on a full pipe.
const OUTPUT_CAP: usize = 4096;

/// Bytes of an HTTP response body shown in the debug log.
const BODY_LOG_CAP: usize = 1024;

/// How long to keep reading a finished command's pipes. A background process it started
/// may hold them open forever; the command itself is done.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Signals a notification may send. The webhook accepts the same list.
const SIGNALS: &[(&str, Signal)] = &[
    ("SIGHUP", Signal::HUP),
    ("SIGUSR1", Signal::USR1),
    ("SIGUSR2", Signal::USR2),
    ("SIGINT", Signal::INT),
    ("SIGTERM", Signal::TERM),
    ("SIGQUIT", Signal::QUIT),
    ("SIGWINCH", Signal::WINCH),
];

/// Why one notification attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No rustls crypto provider is installed; reqwest would panic building its client.
    #[error(
        "cannot build the HTTP client for notifications: no rustls crypto provider is installed (install it first, as main does)"
    )]
    NoCryptoProvider,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for notifications")]
    Client(#[source] reqwest::Error),
    /// The URL is not plain HTTP on the pod's loopback.
    #[error(
        "notify URL {url:?} is not http:// on the pod's loopback (localhost, 127.0.0.1 or [::1])"
    )]
    HttpUrl { url: String },
    /// The request could not be sent or its response not read.
    #[error("POST {url} failed")]
    HttpSend {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// No complete response within the timeout.
    #[error("POST {url} got no response within {timeout:?}")]
    HttpTimeout { url: String, timeout: Duration },
    /// The app answered with a status other than 2xx.
    #[error("POST {url} answered {status}; a 2xx status was expected")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    /// The signal name is not one the agent sends.
    #[error(
        "signal {signal:?} is not one of SIGHUP, SIGUSR1, SIGUSR2, SIGINT, SIGTERM, SIGQUIT, SIGWINCH"
    )]
    UnknownSignal { signal: String },
    /// `/proc` could not be listed.
    #[error("cannot list processes in /proc")]
    ListProcesses(#[source] io::Error),
    /// No process has the name.
    #[error("no process named {process:?} found (is shareProcessNamespace: true set on the pod?)")]
    NoProcess { process: String },
    /// The kernel refused to deliver the signal because the process runs as another user.
    #[error(
        "not permitted to send {signal} to {process:?} (pid {pid}): the agent runs as uid {uid} \
         and may signal only processes of the same user; run the app with the agent's \
         runAsUser, or notify over http"
    )]
    SignalDenied {
        signal: String,
        process: String,
        pid: i32,
        uid: u32,
    },
    /// Any other failure to deliver the signal.
    #[error("cannot send {signal} to {process:?} (pid {pid})")]
    Signal {
        signal: String,
        process: String,
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// The command's argument vector is empty.
    #[error("notify command is empty")]
    EmptyCommand,
    /// The program is not an absolute path.
    #[error(
        "notify command program {program:?} is not an absolute path (there is no shell or PATH lookup)"
    )]
    RelativeProgram { program: String },
    /// The program could not be started.
    #[error("cannot start notify command {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Waiting for the program failed.
    #[error("cannot wait for notify command {program:?}")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The program ran longer than the timeout and was killed.
    #[error("notify command {program:?} did not finish within {timeout:?} and was killed")]
    CommandTimeout { program: String, timeout: Duration },
    /// The program exited with a non-zero code.
    #[error(
        "notify command {program:?} exited with code {code} (its output is logged at debug level)"
    )]
    CommandFailed { program: String, code: i32 },
    /// The program was killed by a signal.
    #[error("notify command {program:?} was killed by signal {signal}")]
    CommandKilled { program: String, signal: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The short name of a notification's kind, for the `notify.kind` log field.
pub fn kind(spec: &Notify) -> &'static str {
    match spec {
        Notify::Http { .. } => "http",
        Notify::Signal { .. } => "signal",
        Notify::Command { .. } => "command",
    }
}

/// Makes single notification attempts.
#[derive(Debug, Clone)]
pub struct Notifier {
    http: reqwest::Client,
    http_timeout: Duration,
    command_timeout: Duration,
}

impl Notifier {
    /// A notifier with [`DEFAULT_HTTP_TIMEOUT`] and [`DEFAULT_COMMAND_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`Error::NoCryptoProvider`] unless the rustls crypto provider was installed first,
    /// as `main` does (the client is built with TLS support even though only plain HTTP is
    /// used); [`Error::Client`] if the HTTP client cannot be built.
    pub fn new() -> Result<Self> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(Error::NoCryptoProvider);
        }
        let http = reqwest::Client::builder()
            // A loopback URL must never go through a proxy from the environment, and a
            // redirect could lead off the loopback the webhook checked.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::Client)?;
        Ok(Notifier {
            http,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        })
    }

    /// Sets how long one HTTP notification may take.
    pub fn with_http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Sets how long a notify command may run before it is killed.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Makes one attempt to tell the app that `secret_name`'s file changed.
    ///
    /// Bounded by the HTTP or command timeout; a signal is immediate. Dropping the future
    /// abandons the request or kills the command.
    pub async fn notify(&self, secret_name: &str, spec: &Notify) -> Result<()> {
        match spec {
            Notify::Http { url } => self.post(secret_name, url).await,
            Notify::Signal { signal, process } => signal_processes(signal, process),
            Notify::Command { argv } => self.run_command(secret_name, argv).await,
        }
    }

    async fn post(&self, secret_name: &str, url: &str) -> Result<()> {
        check_loopback_url(url)?;
        // Errors and logs quote the URL without its query or fragment, which could
        // carry a token the app expects.
        let shown = redact_url(url);
        let send_error = |source: reqwest::Error| {
            if source.is_timeout() {
                Error::HttpTimeout {
                    url: shown.clone(),
                    timeout: self.http_timeout,
                }
            } else {
                Error::HttpSend {
                    url: shown.clone(),
                    source: source.without_url(),
                }
            }
        };

        let mut response = self
            .http
            .post(url)
            .header(SECRET_HEADER, secret_name)
            .timeout(self.http_timeout)
            .send()
            .await
            .map_err(send_error)?;
        let status = response.status();

        // The body is the app's business and could say anything; read a prefix only when
        // someone is debugging.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut body = Vec::new();
            while body.len() < BODY_LOG_CAP {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            body.truncate(BODY_LOG_CAP);
            tracing::debug!(
                secret.name = secret_name,
                url = %shown,
                %status,
                body = %String::from_utf8_lossy(&body),
                "notify response"
            );
        }

        if status.is_success() {
            Ok(())
        } else {
            Err(Error::HttpStatus { url: shown, status })
        }
    }

    async fn run_command(&self, secret_name: &str, argv: &[String]) -> Result<()> {
        let (program, args) = argv.split_first().ok_or(Error::EmptyCommand)?;
        if !program.starts_with('/') {
            return Err(Error::RelativeProgram {
                program: program.clone(),
            });
        }
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env(SECRET_NAME_ENV, secret_name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;

        let deadline = Instant::now() + self.command_timeout;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let status = {
            let drain = async {
                tokio::join!(
                    drain_capped(out_pipe, &mut stdout),
                    drain_capped(err_pipe, &mut stderr),
                )
            };
            tokio::pin!(drain);
            let mut drained = false;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = &mut drain, if !drained => drained = true,
                    () = tokio::time::sleep_until(deadline) => break None,
                }
            };
            if status.is_some() && !drained {
                let _ = tokio::time::timeout(PIPE_GRACE, &mut drain).await;
            }
            status
        };

        if !stdout.is_empty() || !stderr.is_empty() {
            tracing::debug!(
                secret.name = secret_name,
                program = %program,
                stdout = %String::from_utf8_lossy(&stdout),
                stderr = %String::from_utf8_lossy(&stderr),
                "notify command output"
            );
        }

        let Some(status) = status else {
            kill_command(&mut child).await;
            return Err(Error::CommandTimeout {
                program: program.clone(),
                timeout: self.command_timeout,
            });
        };
        let status = status.map_err(|source| Error::Wait {
            program: program.clone(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else if let Some(code) = status.code() {
            Err(Error::CommandFailed {
                program: program.clone(),
                code,
            })
        } else {
            Err(Error::CommandKilled {
                program: program.clone(),
                signal: status.signal().unwrap_or(0),
            })
        }
    }
}

/// Kills a timed-out command and its process group, and reaps it.
async fn kill_command(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
        // The group may already be gone; the direct kill below still reaps the child.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads `reader` to its end, keeping at most [`OUTPUT_CAP`] bytes in `kept`.
async fn drain_capped<R: AsyncRead + Unpin>(reader: Option<R>, kept: &mut Vec<u8>) {
    let Some(mut reader) = reader else { return };
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Checks again what the webhook checked: the configuration may have been edited by hand.
fn check_loopback_url(url: &str) -> Result<()> {
    let refuse = || Error::HttpUrl {
        url: redact_url(url),
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| refuse())?;
    if parsed.scheme() != "http" || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse());
    }
    let host = parsed.host_str().ok_or_else(refuse)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback { Ok(()) } else { Err(refuse()) }
}

/// Parses `SIGHUP`, `HUP` or `hup` into one of the signals a notification may send.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|(n, _)| *n == full)
        .map(|(_, signal)| *signal)
}

/// Process ids of every process named `name` (see the module docs), except the agent.
///
/// Processes that exit while `/proc` is read are skipped.
pub fn find_processes(name: &str) -> Result<Vec<i32>> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(Error::ListProcesses)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && process_is_named(&entry.path(), name) {
            found.push(pid as i32);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn process_is_named(dir: &Path, name: &str) -> bool {
    if let Ok(comm) = std::fs::read(dir.join("comm")) {
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if comm == name.as_bytes() {
            return true;
        }
    }
    let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or(argv0);
    !base.is_empty() && base == name.as_bytes()
}

/// Sends `signal` to every process named `process`. Success if at least one received it;
/// the others' failures are logged.
fn signal_processes(signal: &str, process: &str) -> Result<()> {
    let sig = parse_signal(signal).ok_or_else(|| Error::UnknownSignal {
        signal: signal.to_owned(),
    })?;
    let signal = format!("{sig:?}");
    let pids = find_processes(process)?;

    let mut delivered = 0;
    let mut first_error = None;
    for pid in pids {
        let Some(target) = Pid::from_raw(pid) else {
            continue;
        };
        match rustix::process::kill_process(target, sig) {
            Ok(()) => delivered += 1,
            // It exited after the scan: nothing left to tell.
            Err(rustix::io::Errno::SRCH) => {}
            Err(errno) => {
                let error = if errno == rustix::io::Errno::PERM {
                    Error::SignalDenied {
                        signal: signal.clone(),
                        process: process.to_owned(),
                        pid,
                        uid: rustix::process::getuid().as_raw(),
                    }
                } else {
                    Error::Signal {
                        signal: signal.clone(),
                        process: process.to_owned(),
                        pid,
                        source: errno.into(),
                    }
                };
                tracing::warn!(pid, error = %error, "cannot signal one process of the app");
                first_error.get_or_insert(error);
            }
        }
    }

    match (delivered, first_error) {
        (0, Some(error)) => Err(error),
        (0, None) => Err(Error::NoProcess {
            process: process.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Capped exponential backoff with jitter between notification attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub first: Duration,
    /// Upper bound of the delay before jitter; each failure doubles it up to this.
    pub max: Duration,
    /// Relative jitter applied to every delay, from 0.0 (none) to 1.0; 0.2 means ±20 %.
    pub jitter: f64,
    /// Attempts per change, the first included, before giving up (at least 1).
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s, ±20 %, 10 attempts: about four and a half minutes in all.
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.2,
            max_attempts: 10,
        }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failed attempt (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self.first.saturating_mul(1 << doublings).min(self.max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 {
            return base;
        }
        let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// How a background notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app was told, after this many attempts.
    Delivered { attempts: u32 },
    /// A newer change of the same secret took over before this one was delivered.
    Superseded,
    /// Every attempt failed.
    GaveUp { attempts: u32 },
    /// [`Dispatcher::shutdown`] stopped it.
    Cancelled,
}

/// A notification running in the background. Dropping it does not stop it.
#[derive(Debug)]
pub struct Pending(tokio::task::JoinHandle<Outcome>);

impl Pending {
    /// Waits for the notification to end.
    pub async fn outcome(self) -> Outcome {
        // The task does not panic; an aborted one was cancelled.
        self.0.await.unwrap_or(Outcome::Cancelled)
    }
}

/// Runs notifications in the background, with retries, superseding and cancellation.
/// Cheap to clone; clones share their state.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    notifier: Notifier,
    backoff: Backoff,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    cancelled: watch::Sender<bool>,
    running: watch::Sender<usize>,
}

/// Per-secret state.
#[derive(Debug)]
struct Slot {
    /// Counts the secret's changes; a notification whose number is no longer the latest
    /// is superseded.
    generation: watch::Sender<u64>,
    /// Held during an attempt, so attempts for one secret never overlap.
    turn: tokio::sync::Mutex<()>,
}

/// Decrements the running count when a task ends, also when it is aborted.
struct RunningGuard(Arc<Inner>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Dispatcher {
    pub fn new(notifier: Notifier, backoff: Backoff) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                notifier,
                backoff,
                slots: Mutex::new(HashMap::new()),
                cancelled: watch::Sender::new(false),
                running: watch::Sender::new(0),
            }),
        }
    }

    /// Tells the app, in the background, that `secret_name`'s file changed. Call it after
    /// the file was replaced; it returns at once and must be called within a Tokio runtime.
    ///
    /// Supersedes a notification of the same secret that is still waiting (see the module
    /// docs). Failures are logged at warn with `secret.name`, `notify.kind` and `error`;
    /// giving up is logged at error. The returned [`Pending`] may be dropped.
    pub fn spawn_notify(&self, secret_name: &str, spec: &Notify) -> Pending {
        let slot = {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(secret_name.to_owned()).or_insert_with(|| {
                Arc::new(Slot {
                    generation: watch::Sender::new(0),
                    turn: tokio::sync::Mutex::new(()),
                })
            }))
        };
        let mut generation = 0;
        slot.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });

        self.inner.running.send_modify(|n| *n += 1);
        let guard = RunningGuard(Arc::clone(&self.inner));
        let inner = Arc::clone(&self.inner);
        let name = secret_name.to_owned();
        let spec = spec.clone();
        Pending(tokio::spawn(async move {
            let _guard = guard;
            inner.deliver(&name, &spec, &slot, generation).await
        }))
    }

    /// Waits until no notification is running or waiting.
    pub async fn idle(&self) {
        let mut running = self.inner.running.subscribe();
        // The sender lives in `inner`, which `self` holds.
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// Stops every notification: waiting ones end, attempts in flight are abandoned (a
    /// command is killed), and later [`spawn_notify`](Self::spawn_notify) calls end at
    /// once. Waits up to `grace` for the tasks to end; returns whether they all did.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.cancelled.send_replace(true);
        tokio::time::timeout(grace, self.idle()).await.is_ok()
    }
}

impl Inner {
    async fn deliver(&self, name: &str, spec: &Notify, slot: &Slot, generation: u64) -> Outcome {
        let kind = kind(spec);
        let mut cancelled = self.cancelled.subscribe();
        let mut latest = slot.generation.subscribe();
        let max_attempts = self.backoff.max_attempts.max(1);
        let mut attempts = 0;

        loop {
            let turn = tokio::select! {
                biased;
                _ = cancelled.wait_for(|c| *c) => return Outcome::Cancelled,
                _ = latest.wait_for(|g| *g != generation) => return superseded(name, kind),
                turn = slot.turn.lock() => turn,
            };
            // A newer change may have come while the previous attempt held the turn.
            if *slot.generation.borrow() != generation {
                return superseded(name, kind);
            }

            attempts += 1;
            let result = tokio::select! {
                biased;
                _ = cancelled.wait_for(|c| *c) => return Outcome::Cancelled,
                result = self.notifier.notify(name, spec) => result,
            };
            drop(turn);

            let error = match result {
                Ok(()) => {
                    tracing::info!(
                        secret.name = name,
                        notify.kind = kind,
                        attempts,
                        "app notified of the change"
                    );
                    return Outcome::Delivered { attempts };
                }
                Err(error) => error,
            };
            tracing::warn!(
                secret.name = name,
                notify.kind = kind,
                attempt = attempts,
                error = %ErrorChain(&error),
                "notifying the app failed"
            );
            if attempts >= max_attempts {
                tracing::error!(
                    secret.name = name,
                    notify.kind = kind,
                    attempts,
                    "giving up notifying the app of this change; the next change is notified again"
                );
                return Outcome::GaveUp { attempts };
            }

            let delay = self.backoff.delay(attempts);
            tokio::select! {
                biased;
                _ = cancelled.wait_for(|c| *c) => return Outcome::Cancelled,
                _ = latest.wait_for(|g| *g != generation) => return superseded(name, kind),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn superseded(name: &str, kind: &'static str) -> Outcome {
    tracing::debug!(
        secret.name = name,
        notify.kind = kind,
        "notification superseded by a newer change"
    );
    Outcome::Superseded
}

/// Displays an error with its sources, `outer: inner: innermost`, for one log field.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names_with_or_without_prefix() {
        assert_eq!(parse_signal("SIGHUP"), Some(Signal::HUP));
        assert_eq!(parse_signal("hup"), Some(Signal::HUP));
        assert_eq!(parse_signal(" usr2 "), Some(Signal::USR2));
        assert_eq!(parse_signal("SIGKILL"), None);
        assert_eq!(parse_signal("9"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn accepts_only_plain_http_on_loopback() {
        for ok in [
            "http://localhost:8080/-/reload",
            "http://127.0.0.1/reload",
            "http://[::1]:9000/",
        ] {
            assert!(check_loopback_url(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "https://localhost/reload",
            "http://example.com/reload",
            "http://10.0.0.1/reload",
            "http://localhost.example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://admin:hunter2@localhost:8080/reload",
            "http://example.com/reload?token=hunter2",
        ] {
            let err = check_loopback_url(bad).unwrap_err();
            assert!(matches!(err, Error::HttpUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_within_jitter() {
        let exact = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.0,
            max_attempts: 10,
        };
        let delays: Vec<u64> = (1..=9).map(|n| exact.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(exact.delay(u32::MAX), Duration::from_secs(60));

        let jittered = Backoff::default();
        for n in 1..=12 {
            let base = exact.delay(n).as_secs_f64();
            for _ in 0..20 {
                let d = jittered.delay(n).as_secs_f64();
                assert!(
                    (base * 0.8 - 1e-9..=base * 1.2 + 1e-9).contains(&d),
                    "{d} not within 20 % of {base}"
                );
            }
        }
    }

    #[test]
    fn error_chain_shows_every_cause() {
        let err = Error::Spawn {
            program: "/nope".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(
            ErrorChain(&err).to_string(),
            "cannot start notify command \"/nope\": no such file"
        );
    }
}
