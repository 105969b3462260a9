//! Notifications against real parts: an HTTP server on a loopback socket, child
//! processes receiving real signals, real programs run as commands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sidekey_agent::contract::config::Notify;
use sidekey_agent::notify::{Backoff, Dispatcher, Error, Notifier, Outcome, SECRET_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn notifier() -> Notifier {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Notifier::new().unwrap()
}

/// Short delays and no jitter, so retry tests take milliseconds.
fn fast_backoff(max_attempts: u32) -> Backoff {
    Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(80),
        jitter: 0.0,
        max_attempts,
    }
}

/// A unique process name of at most 15 bytes, so the kernel keeps it whole.
fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "sk{tag}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15, "{name}");
    name
}

/// Waits up to 10 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one request per connection, answered then closed.

#[derive(Default)]
struct Server {
    /// Requests answered 500 before the server starts answering 204.
    failures_left: AtomicUsize,
    /// Delay before answering each request.
    delay_ms: AtomicUsize,
    /// Never answer at all.
    hang: bool,
    requests: AtomicUsize,
    successes: AtomicUsize,
    /// `X-Sidekey-Secret` of each request, in arrival order.
    secrets: Mutex<Vec<String>>,
}

impl Server {
    async fn start(self) -> (Arc<Server>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/-/reload", listener.local_addr().unwrap());
        let server = Arc::new(self);
        let state = Arc::clone(&server);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&state).answer(conn));
            }
        });
        (server, url)
    }

    async fn answer(self: Arc<Self>, mut conn: TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("POST /-/reload HTTP/1.1\r\n"), "{head}");
        let secret = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(SECRET_HEADER)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        self.secrets.lock().unwrap().push(secret);
        self.requests.fetch_add(1, Ordering::SeqCst);

        if self.hang {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        let delay = self.delay_ms.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let response: &[u8] = if fail {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
        } else {
            self.successes.fetch_add(1, Ordering::SeqCst);
            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
        };
        let _ = conn.write_all(response).await;
        let _ = conn.shutdown().await;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }
}

fn http(url: &str) -> Notify {
    Notify::Http {
        url: url.to_owned(),
    }
}

#[tokio::test]
async fn http_notification_posts_with_the_secret_name_header() {
    let (server, url) = Server::default().start().await;

    notifier().notify("db", &http(&url)).await.unwrap();

    assert_eq!(server.successes(), 1);
    assert_eq!(*server.secrets.lock().unwrap(), ["db"]);
}

#[tokio::test]
async fn http_error_status_is_an_error_naming_the_status() {
    let (server, url) = Server {
        failures_left: AtomicUsize::new(1),
        ..Server::default()
    }
    .start()
    .await;

    let err = notifier().notify("db", &http(&url)).await.unwrap_err();

    assert!(matches!(err, Error::HttpStatus { .. }), "{err:?}");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn http_to_a_closed_port_is_a_send_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/-/reload", listener.local_addr().unwrap());
    drop(listener);

    let err = notifier().notify("db", &http(&url)).await.unwrap_err();

    assert!(matches!(err, Error::HttpSend { .. }), "{err:?}");
}

#[tokio::test]
async fn http_without_an_answer_times_out() {
    let (_server, url) = Server {
        hang: true,
        ..Server::default()
    }
    .start()
    .await;
    let notifier = notifier().with_http_timeout(Duration::from_millis(300));

    let started = Instant::now();
    let err = notifier.notify("db", &http(&url)).await.unwrap_err();

    assert!(matches!(err, Error::HttpTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn http_url_off_the_loopback_is_refused() {
    let err = notifier()
        .notify("db", &http("http://192.0.2.1/reload"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HttpUrl { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Retries, supersession and shutdown.

#[tokio::test]
async fn failed_notifications_are_retried_until_delivered_once() {
    let (server, url) = Server {
        failures_left: AtomicUsize::new(2),
        ..Server::default()
    }
    .start()
    .await;
    let dispatcher = Dispatcher::new(notifier(), fast_backoff(5));

    let outcome = dispatcher.spawn_notify("db", &http(&url)).outcome().await;

    assert_eq!(outcome, Outcome::Delivered { attempts: 3 });
    assert_eq!((server.requests(), server.successes()), (3, 1));
    assert_eq!(*server.secrets.lock().unwrap(), ["db", "db", "db"]);
}

#[tokio::test]
async fn gives_up_after_the_last_attempt() {
    let (server, url) = Server {
        failures_left: AtomicUsize::new(usize::MAX),
        ..Server::default()
    }
    .start()
    .await;
    let dispatcher = Dispatcher::new(notifier(), fast_backoff(3));

    let outcome = dispatcher.spawn_notify("db", &http(&url)).outcome().await;

    assert_eq!(outcome, Outcome::GaveUp { attempts: 3 });
    assert_eq!((server.requests(), server.successes()), (3, 0));
}

#[tokio::test]
async fn a_newer_change_supersedes_a_pending_retry() {
    let (server, url) = Server {
        failures_left: AtomicUsize::new(1),
        ..Server::default()
    }
    .start()
    .await;
    // A retry delay far longer than the test: the first change must not wait it out.
    let slow_retry = Backoff {
        first: Duration::from_secs(60),
        ..fast_backoff(5)
    };
    let dispatcher = Dispatcher::new(notifier(), slow_retry);

    let started = Instant::now();
    let first = dispatcher.spawn_notify("db", &http(&url));
    eventually("the first attempt failed", || server.requests() == 1).await;
    let second = dispatcher.spawn_notify("db", &http(&url));

    assert_eq!(first.outcome().await, Outcome::Superseded);
    assert_eq!(second.outcome().await, Outcome::Delivered { attempts: 1 });
    assert_eq!((server.requests(), server.successes()), (2, 1));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn changes_during_an_attempt_are_coalesced_into_one_notification() {
    let (server, url) = Server {
        delay_ms: AtomicUsize::new(300),
        ..Server::default()
    }
    .start()
    .await;
    let dispatcher = Dispatcher::new(notifier(), fast_backoff(5));

    let in_flight = dispatcher.spawn_notify("db", &http(&url));
    eventually("the first request arrived", || server.requests() == 1).await;
    let stale: Vec<_> = (0..3)
        .map(|_| dispatcher.spawn_notify("db", &http(&url)))
        .collect();
    let newest = dispatcher.spawn_notify("db", &http(&url));

    // The attempt in flight completes; the stale changes are dropped; the newest is told.
    assert_eq!(
        in_flight.outcome().await,
        Outcome::Delivered { attempts: 1 }
    );
    for pending in stale {
        assert_eq!(pending.outcome().await, Outcome::Superseded);
    }
    assert_eq!(newest.outcome().await, Outcome::Delivered { attempts: 1 });
    assert_eq!((server.requests(), server.successes()), (2, 2));
}

#[tokio::test]
async fn changes_of_different_secrets_are_each_notified() {
    let (server, url) = Server::default().start().await;
    let dispatcher = Dispatcher::new(notifier(), fast_backoff(5));

    let db = dispatcher.spawn_notify("db", &http(&url));
    let api = dispatcher.spawn_notify("api", &http(&url));

    assert_eq!(db.outcome().await, Outcome::Delivered { attempts: 1 });
    assert_eq!(api.outcome().await, Outcome::Delivered { attempts: 1 });
    let mut secrets = server.secrets.lock().unwrap().clone();
    secrets.sort();
    assert_eq!(secrets, ["api", "db"]);
}

#[tokio::test]
async fn shutdown_cancels_a_pending_retry() {
    let (server, url) = Server {
        failures_left: AtomicUsize::new(usize::MAX),
        ..Server::default()
    }
    .start()
    .await;
    let slow_retry = Backoff {
        first: Duration::from_secs(60),
        ..fast_backoff(5)
    };
    let dispatcher = Dispatcher::new(notifier(), slow_retry);

    let pending = dispatcher.spawn_notify("db", &http(&url));
    eventually("the first attempt failed", || server.requests() == 1).await;

    assert!(dispatcher.shutdown(Duration::from_secs(5)).await);
    assert_eq!(pending.outcome().await, Outcome::Cancelled);
    let late = dispatcher.spawn_notify("db", &http(&url));
    assert_eq!(late.outcome().await, Outcome::Cancelled);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn shutdown_kills_a_command_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("finished");
    let dispatcher = Dispatcher::new(notifier(), fast_backoff(1));
    let script = format!("sleep 1; touch {}", marker.display());

    let pending = dispatcher.spawn_notify("db", &command(&["/bin/bash", "-c", &script]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dispatcher.shutdown(Duration::from_secs(5)).await);

    assert_eq!(pending.outcome().await, Outcome::Cancelled);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!marker.exists(), "the command ran to the end");
}

// ---------------------------------------------------------------------------------------
// Signals.

fn signal(signal: &str, process: &str) -> Notify {
    Notify::Signal {
        signal: signal.to_owned(),
        process: process.to_owned(),
    }
}

/// A bash process whose argv[0] is `name` (its kernel name stays `bash`) that appends a
/// line to `marker` on each SIGHUP, for at most 30 s.
async fn hup_recorder(name: &str, marker: &Path) -> tokio::process::Child {
    let script = r#"trap 'echo hup >> "$1"' HUP
: > "$1.ready"
for i in $(seq 1 300); do sleep 0.1; done"#;
    let child = tokio::process::Command::new("/bin/bash")
        .arg0(name)
        .args(["-c", script, name])
        .arg(marker)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = PathBuf::from(format!("{}.ready", marker.display()));
    eventually("the trap is set", || ready.exists()).await;
    child
}

#[tokio::test]
async fn signal_reaches_a_process_found_by_its_argv0() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hups");
    let name = unique_name("hup");
    let _app = hup_recorder(&name, &marker).await;

    notifier()
        .notify("db", &signal("SIGHUP", &name))
        .await
        .unwrap();

    eventually("the app received SIGHUP", || marker.exists()).await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hup\n");
}

#[tokio::test]
async fn signal_reaches_a_process_found_by_its_kernel_name() {
    // The kernel names a process after the file it executed, here a link to sleep,
    // while argv[0] says something else.
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("term");
    let link = dir.path().join(&name);
    std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
    let mut app = tokio::process::Command::new(&link)
        .arg0("sidekey-decoy")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = app.id().unwrap() as i32;
    eventually("the kernel name is set", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
    })
    .await;

    notifier()
        .notify("db", &signal("TERM", &name))
        .await
        .unwrap();

    let status = tokio::time::timeout(Duration::from_secs(10), app.wait())
        .await
        .expect("the app did not exit on SIGTERM")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
}

#[tokio::test]
async fn signal_to_a_missing_process_says_to_share_the_process_namespace() {
    let name = unique_name("none");

    let err = notifier()
        .notify("db", &signal("SIGHUP", &name))
        .await
        .unwrap_err();

    assert!(matches!(err, Error::NoProcess { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&name), "{message}");
    assert!(message.contains("shareProcessNamespace: true"), "{message}");
}

#[tokio::test]
async fn the_agent_never_signals_itself() {
    // SIGWINCH is ignored by default, so a wrong delivery would not kill the test.
    let own_name = std::fs::read_to_string("/proc/self/comm").unwrap();

    let err = notifier()
        .notify("db", &signal("SIGWINCH", own_name.trim()))
        .await
        .unwrap_err();

    assert!(matches!(err, Error::NoProcess { .. }), "{err:?}");
}

#[tokio::test]
async fn a_signal_outside_the_list_is_refused() {
    let err = notifier()
        .notify("db", &signal("SIGKILL", "anything"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownSignal { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Commands.

fn command(argv: &[&str]) -> Notify {
    Notify::Command {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test]
async fn a_command_that_succeeds_is_a_delivery() {
    notifier()
        .notify("db", &command(&["/bin/true"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_command_is_an_error_with_its_exit_code() {
    let err = notifier()
        .notify("db", &command(&["/bin/false"]))
        .await
        .unwrap_err();

    assert!(
        matches!(err, Error::CommandFailed { code: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("exited with code 1"), "{err}");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("finished");
    let script = format!("sleep 3; touch {}", marker.display());
    let notifier = notifier().with_command_timeout(Duration::from_millis(300));

    let started = Instant::now();
    let err = notifier
        .notify("db", &command(&["/bin/bash", "-c", &script]))
        .await
        .unwrap_err();

    assert!(matches!(err, Error::CommandTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("did not finish within"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the command was not killed");
}

#[tokio::test]
async fn a_command_is_run_without_a_shell_and_with_the_secret_name() {
    // With a shell, "$SIDEKEY_SECRET_NAME" in an argument would have been expanded.
    let argv = [
        "/bin/bash",
        "-c",
        r#"test "$SIDEKEY_SECRET_NAME" = db && test "$1" = '$SIDEKEY_SECRET_NAME'"#,
        "bash",
        "$SIDEKEY_SECRET_NAME",
    ];

    notifier().notify("db", &command(&argv)).await.unwrap();
    let err = notifier().notify("api", &command(&argv)).await.unwrap_err();
    assert!(
        matches!(err, Error::CommandFailed { code: 1, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_loud_command_does_not_block_on_its_output() {
    let script = "head -c 2000000 /dev/zero; head -c 2000000 /dev/zero >&2; exit 3";

    let err = notifier()
        .notify("db", &command(&["/bin/bash", "-c", script]))
        .await
        .unwrap_err();

    assert!(
        matches!(err, Error::CommandFailed { code: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_background_process_holding_the_output_does_not_stall_the_command() {
    let started = Instant::now();

    notifier()
        .notify("db", &command(&["/bin/bash", "-c", "sleep 3 & exit 0"]))
        .await
        .unwrap();

    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_missing_or_relative_program_is_a_clear_error() {
    let err = notifier()
        .notify("db", &command(&["/nonexistent/reload"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/reload"), "{err}");

    let err = notifier()
        .notify("db", &command(&["reload"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RelativeProgram { .. }), "{err:?}");

    let err = notifier().notify("db", &command(&[])).await.unwrap_err();
    assert!(matches!(err, Error::EmptyCommand), "{err:?}");
}
