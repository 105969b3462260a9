//! Faults on real parts: OpenBao (TLS, audit log) unreachable, slow or changed under a
//! running agent, the TokenReview API down, a full tmpfs, SIGKILL at exact moments
//! (failpoints, compiled into debug builds only), change commands that hang or fail, and
//! the agent's opt-in metrics endpoint. See docs/faults.md.
//!
//! The network faults go through [`common::proxy::Proxy`], a loopback TCP proxy in front
//! of OpenBao; the agent's `vault.addr` points at the proxy.

mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    proxy::{Mode, Proxy},
    *,
};
use serde_json::Value;
use sidekey_agent::contract::config::{AgentConfig, Notify, SecretSpec};

/// The log filter of every agent here: debug for the agent itself, so repeated
/// failures (logged at warn once, then at debug) can be counted.
const LOG: &str = "sidekey_agent=debug,info";

/// A running agent whose stderr goes to a file, so the test can read it while the
/// agent runs (to see a failpoint reached).
struct Agent {
    child: std::process::Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(mode: &str, config: &AgentConfig, work: &Path, env: &[(&str, &str)]) -> Agent {
        let log = work.join(format!("{mode}-{}.log", rand_suffix()));
        let mut cmd = agent(mode, config);
        cmd.env("SIDEKEY_LOG", LOG)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Agent {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, limit: Duration, needle: &str) -> bool {
        wait_for(limit, || self.log().contains(needle))
    }

    /// SIGTERM, then waits up to `limit`. Returns (exit status if exited, elapsed, log).
    fn terminate(mut self, limit: Duration) -> (Option<i32>, Duration, String) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let started = Instant::now();
        let mut status = None;
        wait_for(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let took = started.elapsed();
        let _ = self.child.kill();
        let _ = self.child.wait();
        (status.map(|s| s.code().unwrap_or(-1)), took, self.log())
    }

    /// SIGKILL, as when the container is OOM-killed or its node dies.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Duration, String) {
        let started = Instant::now();
        let mut status = None;
        wait_for(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let took = started.elapsed();
        let _ = self.child.kill();
        let _ = self.child.wait();
        (status.map(|s| s.code().unwrap_or(-1)), took, self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::leak_log("agent.err", &self.log());
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// JSON log events whose message contains `needle`.
fn events<'a>(log: &'a str, needle: &'a str) -> impl Iterator<Item = Value> + 'a {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(move |v| {
            v["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(needle)
        })
}

fn level_count(log: &str, needle: &str, level: &str) -> usize {
    events(log, needle).filter(|v| v["level"] == level).count()
}

/// Secrets that must never appear in a log: every token OpenBao issued, the JWT, and
/// the given values.
fn assert_no_leaks(bao: &Bao, log: &str, values: &[&str]) {
    common::leak_values(values);
    for token in bao.issued_tokens() {
        assert!(!log.contains(&token), "a Vault token is in the log");
    }
    let jwt = service_account_jwt();
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the JWT is in the log");
    for v in values {
        assert!(
            !v.is_empty() && !log.contains(v),
            "a secret value is in the log"
        );
    }
}

/// The config of a test, with OpenBao reached through `proxy`.
fn proxied(bao: &Bao, proxy: &Proxy, work: &Path, secrets: Vec<SecretSpec>) -> AgentConfig {
    let mut config = bao.config(work, secrets);
    config.vault.addr = proxy.addr();
    config
}

/// Scrapes the agent's metrics endpoint; `None` when nothing answers.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the sample `name{labels}` (labels as printed, e.g. `secret="app"`;
/// every given label must be present).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let bare = series.split('{').next().unwrap_or("");
            bare == name && labels.iter().all(|want| series.contains(want))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// PostgreSQL (leased credentials)

fn database_role(bao: &Bao, db_role: &str, ttl: &str, max_ttl: &str) {
    if !bao.ok(&["secrets", "list"]).contains("database/") {
        bao.ok(&["secrets", "enable", "database"]);
        bao.ok(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            "connection_url=postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
            "username=postgres",
            "password=unused-with-trust",
            "allowed_roles=*",
        ]);
    }
    bao.ok(&[
        "write",
        &format!("database/roles/{db_role}"),
        "db_name=pg",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        &format!("default_ttl={ttl}"),
        &format!("max_ttl={max_ttl}"),
    ]);
    bao.ok_stdin(
        &["policy", "write", db_role, "-"],
        &format!(
            r#"path "database/creds/{db_role}" {{ capabilities = ["read"] }}
path "sys/leases/revoke/database/creds/{db_role}/*" {{ capabilities = ["update"] }}
path "secret/data/app" {{ capabilities = ["read"] }}"#
        ),
    );
    bao.ok(&[
        "write",
        &format!("auth/kubernetes/role/{db_role}"),
        &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        &format!("policies={db_role}"),
        "token_ttl=1h",
    ]);
}

fn pg_roles(db_role: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-Atc"])
        .arg(format!(
            "select rolname from pg_roles where rolname like 'v-%-{}-%'",
            &db_role[..db_role.len().min(8)]
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn drop_pg_roles(db_role: &str) {
    for role in pg_roles(db_role) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c"])
            .arg(format!("drop role \"{role}\""))
            .output();
    }
}

fn db_secret(db_role: &str) -> SecretSpec {
    SecretSpec::new("db", format!("database/creds/{db_role}"))
}

// ---------------------------------------------------------------------------------
// OpenBao unreachable

#[test]
fn openbao_unreachable_past_a_refresh_keeps_the_files_backs_off_and_recovers_within_one_step() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "v=first-Kq3"]);
    let proxy = Proxy::in_front_of(&bao.addr);
    let work = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let mut config = proxied(
        &bao,
        &proxy,
        work.path(),
        vec![SecretSpec::new("app", "secret/app")],
    );
    config.refresh_secs = 3;
    config.metrics_port = Some(metrics_port);
    let file = work.path().join("secrets/app");

    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || read(&file)
        .contains("first-Kq3")));
    let good = std::fs::read(&file).unwrap();

    // Unreachable for 10 s, more than three refresh intervals. The file is checked all
    // along: never missing, never emptied, never truncated.
    proxy.set(Mode::Drop);
    let down = Instant::now();
    let mut stale_seen = false;
    while down.elapsed() < Duration::from_secs(10) {
        assert_eq!(std::fs::read(&file).unwrap(), good, "the file changed");
        if !stale_seen && let Some(m) = scrape(metrics_port) {
            stale_seen =
                sample(&m, "sidekey_agent_secret_stale", &[r#"secret="app""#]) == Some(1.0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = sidecar.log();

    bao.ok(&["kv", "put", "secret/app", "v=second-Kq3"]);
    proxy.set(Mode::Forward);
    let back = Instant::now();
    let recovered = wait_for(Duration::from_secs(10), || {
        read(&file).contains("second-Kq3")
    });
    let took = back.elapsed();
    let after = scrape(metrics_port).unwrap_or_default();
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(recovered, "{log}");

    // Back-off: doubling from ~250 ms, capped at the refresh interval (3 s), jittered.
    let waits: Vec<u64> = events(&during, "refresh failed")
        .filter_map(|v| v["fields"]["retry_in_ms"].as_u64())
        .collect();
    assert!(waits.len() >= 4, "{waits:?}\n{during}");
    assert!(waits.iter().all(|w| *w <= 3000), "{waits:?}");
    assert!(waits[0] < 400 && waits[1] > waits[0], "{waits:?}");
    assert!(
        waits.windows(2).all(|w| w[1] >= w[0] || w[0] == 3000),
        "{waits:?}"
    );
    assert!(waits.contains(&3000), "never reached the cap: {waits:?}");
    // Jitter: the uncapped waits are not the bare powers of two.
    assert!(
        waits
            .iter()
            .filter(|w| **w < 3000)
            .any(|w| ![250, 500, 1000, 2000].contains(w)),
        "{waits:?}"
    );
    // Staleness: one warning when it starts, one info when it ends; a metric.
    assert_eq!(level_count(&log, "refresh failed", "WARN"), 1, "{log}");
    assert_eq!(
        level_count(&log, "secret readable again", "INFO"),
        1,
        "{log}"
    );
    assert!(stale_seen, "sidekey_agent_secret_stale never showed 1");
    assert_eq!(
        sample(&after, "sidekey_agent_secret_stale", &[r#"secret="app""#]),
        Some(0.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            "sidekey_agent_secret_errors_total",
            &[r#"secret="app""#]
        )
        .is_some_and(|n| n >= 4.0),
        "{after}"
    );
    // Recovery within one back-off step: the cap (3 s, -20 % jitter at most added
    // nothing since the cap is exact) plus the read itself.
    assert!(
        took < Duration::from_millis(3800),
        "recovered after {took:?}"
    );
    assert_no_leaks(&bao, &log, &["first-Kq3", "second-Kq3"]);
}

#[test]
fn init_with_openbao_unreachable_fails_within_its_deadline_saying_what_it_tried() {
    let bao = Bao::start();
    let proxy = Proxy::in_front_of(&bao.addr);
    let work = tempfile::tempdir().unwrap();
    let config = proxied(
        &bao,
        &proxy,
        work.path(),
        vec![SecretSpec::new("app", "secret/app")],
    );

    // Connections dropped: the last failure is named.
    proxy.set(Mode::Drop);
    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "3s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        err.contains("gave up after the init deadline of 3s (SIDEKEY_INIT_DEADLINE)"),
        "{err}"
    );
    assert!(
        err.contains(r#"login as role \"app\" at auth/kubernetes"#),
        "{err}"
    );
    assert!(err.contains(&proxy.addr()), "{err}");
    assert!(
        err.contains("cannot reach Vault") || err.contains("connection dropped"),
        "{err}"
    );

    // No answer at all: the deadline still holds, and the address and what was being
    // done are named.
    proxy.set(Mode::Hang);
    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "3s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(err.contains(&proxy.addr()), "{err}");
    assert!(err.contains("within the init deadline of 3s"), "{err}");
    assert!(err.contains("logging in as role"), "{err}");
    assert!(!work.path().join("secrets/app").exists());
}

#[test]
fn shutdown_while_openbao_is_slow_exits_within_the_deadline() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "v=slow-Hh2"]);
    let proxy = Proxy::in_front_of(&bao.addr);
    let work = tempfile::tempdir().unwrap();
    let mut config = proxied(
        &bao,
        &proxy,
        work.path(),
        vec![SecretSpec::new("app", "secret/app")],
    );
    config.refresh_secs = 1;
    let file = work.path().join("secrets/app");
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || file.exists()));

    // Every answer now takes a minute; a refresh is in flight when SIGTERM comes.
    proxy.set(Mode::Delay(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(1500));
    let (code, took, log) = sidecar.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    // Revocation is bounded by 5 s, notifications by 1 s.
    assert!(took < Duration::from_millis(6500), "took {took:?}\n{log}");
    // Whichever comes first at 5 s: the revocation's deadline or the connect timeout.
    assert!(
        log.contains("revoking the token timed out")
            || log.contains("could not revoke the token; it and its leases stay valid"),
        "{log}"
    );
    assert!(read(&file).contains("slow-Hh2"), "the file changed");
}

// ---------------------------------------------------------------------------------
// The Kubernetes API (TokenReview) down

#[test]
fn token_review_down_for_long_leaves_a_running_agent_working_on_its_token_and_leases() {
    let bao = Bao::start();
    let up = Arc::new(AtomicBool::new(true));
    bao.use_token_review(switchable_token_review(up.clone()));
    let db_role = "skfapi";
    // Token TTL 1 h (renewal not due during the test); lease TTL 4 s (renewed often).
    database_role(&bao, db_role, "4s", "1h");
    bao.ok(&["kv", "put", "secret/app", "v=one-Tr5"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(
        work.path(),
        vec![db_secret(db_role), SecretSpec::new("app", "secret/app")],
    );
    config.auth.role = db_role.into();
    config.refresh_secs = 1;
    let (db, app) = (
        work.path().join("secrets/db"),
        work.path().join("secrets/app"),
    );
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || {
        read(&app).contains("one-Tr5") && read(&db).contains("username")
    }));
    let creds = read(&db);

    up.store(false, Ordering::Relaxed);
    // A new login needs the API: it fails now.
    let denied = bao.cli(&[
        "write",
        "auth/kubernetes/login",
        &format!("role={db_role}"),
        &format!("jwt={}", service_account_jwt()),
    ]);
    assert!(
        !denied.status.success(),
        "a login worked without TokenReview"
    );
    let renewals_before = count_requests(&bao, "sys/leases/renew");
    // Two lease TTLs and many refreshes without the API.
    std::thread::sleep(Duration::from_secs(6));
    bao.ok(&["kv", "put", "secret/app", "v=two-Tr5"]);
    let updated = wait_for(Duration::from_secs(5), || read(&app).contains("two-Tr5"));
    let renewals = count_requests(&bao, "sys/leases/renew") - renewals_before;
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    up.store(true, Ordering::Relaxed);

    assert_eq!(code, Some(0), "{log}");
    assert!(
        updated,
        "a KV update did not arrive while the API was down:\n{log}"
    );
    assert!(
        renewals >= 2,
        "{renewals} lease renewals while the API was down:\n{log}"
    );
    assert_eq!(read(&db), creds, "the credential was replaced");
    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1, "{log}");
    assert!(!log.contains("cannot log in"), "{log}");
    assert!(log.contains("token revoked with every lease"), "{log}");
    assert!(pg_roles(db_role).is_empty());
}

// ---------------------------------------------------------------------------------
// Token revoked, policy changed

#[test]
fn a_revoked_token_leads_to_one_new_login_and_only_the_lost_credentials_are_fetched_again() {
    let bao = Bao::start();
    let db_role = "skfrevok";
    drop_pg_roles(db_role);
    database_role(&bao, db_role, "1h", "2h");
    bao.ok(&["kv", "put", "secret/app", "v=kv-Rv7"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(
        work.path(),
        vec![db_secret(db_role), SecretSpec::new("app", "secret/app")],
    );
    config.auth.role = db_role.into();
    config.refresh_secs = 2;
    let db = work.path().join("secrets/db");
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || {
        read(&db).contains("username") && work.path().join("secrets/app").exists()
    }));
    let first: Value = serde_json::from_str(&read(&db)).unwrap();
    let kv_inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(work.path().join("secrets/app")).unwrap(),
    );
    let accessor = field_values(&sidecar.log(), "token.accessor")[0].clone();

    // The operator revokes the token: its lease (and PostgreSQL role) goes with it.
    bao.ok(&["token", "revoke", "-accessor", &accessor]);
    // OpenBao revokes the token's leases in the background.
    assert!(wait_for(Duration::from_secs(10), || pg_roles(db_role).is_empty()));
    let replaced = wait_for(Duration::from_secs(10), || {
        serde_json::from_str::<Value>(&read(&db)).is_ok_and(|v| v["username"] != first["username"])
    });
    std::thread::sleep(Duration::from_secs(3));
    let roles = pg_roles(db_role);
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(replaced, "{log}");

    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 2, "{log}");
    assert_eq!(
        count_requests(&bao, &format!("database/creds/{db_role}")),
        2,
        "{log}"
    );
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(
        level_count(&log, "the Vault token is no longer valid", "WARN"),
        1,
        "{log}"
    );
    // The KV file did not change, so it was not rewritten.
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(work.path().join("secrets/app")).unwrap()
        ),
        kv_inode
    );
    let last: Value = serde_json::from_str(&read(&db)).unwrap();
    assert_no_leaks(
        &bao,
        &log,
        &[
            first["password"].as_str().unwrap(),
            last["password"].as_str().unwrap(),
        ],
    );
    assert!(pg_roles(db_role).is_empty(), "SIGTERM left a role");
}

#[test]
fn a_policy_changed_to_deny_a_path_is_reported_once_by_name_without_a_new_login() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "v=pol-Pz4"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![SecretSpec::new("app", "secret/app")]);
    config.refresh_secs = 1;
    let file = work.path().join("secrets/app");
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || file.exists()));
    let good = std::fs::read(&file).unwrap();

    bao.ok_stdin(
        &["policy", "write", "agent", "-"],
        r#"path "secret/data/missing" { capabilities = ["read"] }"#,
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(std::fs::read(&file).unwrap(), good);
    bao.ok_stdin(
        &["policy", "write", "agent", "-"],
        r#"path "secret/data/app" { capabilities = ["read"] }"#,
    );
    bao.ok(&["kv", "put", "secret/app", "v=pol2-Pz4"]);
    let back = wait_for(Duration::from_secs(5), || read(&file).contains("pol2-Pz4"));
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(back, "{log}");

    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1, "{log}");
    let denied: Vec<Value> = events(&log, "the Vault policy denies this path")
        .filter(|v| v["level"] == "WARN")
        .collect();
    assert_eq!(denied.len(), 1, "{log}");
    assert_eq!(denied[0]["fields"]["secret.path"], "secret/app");
    let error = denied[0]["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains(r#"role "app" may not read Vault path "secret/app""#),
        "{error}"
    );
    assert!(
        level_count(&log, "secret readable again", "INFO") == 1,
        "{log}"
    );
}

// ---------------------------------------------------------------------------------
// A full tmpfs

/// A real 64 KiB tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "sidekey-test"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_tmpfs_keeps_the_previous_file_reports_the_cause_and_other_secrets_render() {
    let bao = Bao::start();
    bao.ok_stdin(
        &["policy", "write", "agent", "-"],
        r#"path "secret/data/*" { capabilities = ["read"] }"#,
    );
    bao.ok(&["kv", "put", "secret/big", "v=small-at-first-Fb1"]);
    bao.ok(&["kv", "put", "secret/small", "v=one-Fs1"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(
        work.path(),
        vec![
            SecretSpec::new("big", "secret/big"),
            SecretSpec::new("small", "secret/small"),
        ],
    );
    let secrets = work.path().join("secrets");
    let _tmpfs = Tmpfs::mount(&secrets);
    config.refresh_secs = 1;
    let (big, small) = (secrets.join("big"), secrets.join("small"));
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || big.exists() && small.exists()));
    let good = std::fs::read(&big).unwrap();

    // 100 KiB cannot fit in 64 KiB.
    let huge = format!("v=huge-{}", "x".repeat(100 * 1024));
    bao.ok(&["kv", "put", "secret/big", &huge]);
    std::thread::sleep(Duration::from_secs(3));
    bao.ok(&["kv", "put", "secret/small", "v=two-Fs1"]);
    let small_ok = wait_for(Duration::from_secs(5), || read(&small).contains("two-Fs1"));
    let big_now = std::fs::read(&big).unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(&secrets)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();

    // Room again: the big secret renders at its next retry.
    bao.ok(&["kv", "put", "secret/big", "v=fits-again-Fb1"]);
    let big_back = wait_for(Duration::from_secs(12), || {
        read(&big).contains("fits-again-Fb1")
    });
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");

    assert_eq!(big_now, good, "the previous file was not kept intact");
    assert!(small_ok, "the other secret stopped rendering:\n{log}");
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(big_back, "{log}");
    let failed: Vec<Value> = events(&log, "keeping the last good file")
        .filter(|v| v["level"] == "WARN")
        .collect();
    assert!(!failed.is_empty(), "{log}");
    let error = failed[0]["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains(r#"writing file "big" failed"#) && error.contains("No space left on device"),
        "{error}"
    );
    // A write failure is retried by rendering again, not by reading again at once.
    assert_no_leaks(&bao, &log, &["small-at-first-Fb1", "one-Fs1", "two-Fs1"]);
}

// ---------------------------------------------------------------------------------
// SIGKILL at exact moments (failpoints: debug builds only)

const FAILPOINT: &str = "SIDEKEY_FAILPOINT";

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".sidekey-")
        })
        .collect()
}

#[test]
fn sigkill_between_fetch_and_render_in_init_adopts_the_lease_on_restart_without_a_second_one() {
    let bao = Bao::start();
    let db_role = "skfkill1";
    drop_pg_roles(db_role);
    database_role(&bao, db_role, "1h", "2h");
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![db_secret(db_role)]);
    config.auth.role = db_role.into();
    let db = work.path().join("secrets/db");

    let init = Agent::spawn(
        "init",
        &config,
        work.path(),
        &[(FAILPOINT, "after-fetch@db")],
    );
    assert!(
        init.wait_log(Duration::from_secs(20), "failpoint after-fetch reached"),
        "{}",
        init.log()
    );
    let log1 = init.kill();
    assert!(!db.exists(), "rendered before the failpoint");
    let state = work.path().join("state/state.json");
    assert_eq!(mode_of(&state), 0o600, "the state file is not agent-only");

    let (code, _, log2) =
        Agent::spawn("init", &config, work.path(), &[]).wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log2}");
    let creds: Value = serde_json::from_str(&read(&db)).unwrap();
    assert_eq!(pg_roles(db_role), [creds["username"].as_str().unwrap()]);
    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1, "{log2}");
    assert_eq!(
        count_requests(&bao, &format!("database/creds/{db_role}")),
        1
    );
    assert!(log2.contains("adopted the token"), "{log2}");
    assert_no_leaks(
        &bao,
        &format!("{log1}{log2}"),
        &[creds["password"].as_str().unwrap()],
    );

    // Let a sidecar take over and revoke, so nothing outlives the test.
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(sidecar.wait_log(Duration::from_secs(10), "adopted the token"));
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(pg_roles(db_role).is_empty(), "{log}");
}

#[test]
fn sigkill_during_a_write_leaves_no_partial_file_and_the_restart_adopts_the_lease() {
    let bao = Bao::start();
    let db_role = "skfkill2";
    drop_pg_roles(db_role);
    database_role(&bao, db_role, "1h", "2h");
    let work = tempfile::tempdir().unwrap();
    let mut spec = db_secret(db_role);
    spec.mode = 0o640;
    let mut config = bao.config(work.path(), vec![spec]);
    config.auth.role = db_role.into();
    let secrets = work.path().join("secrets");
    let db = secrets.join("db");
    // A umask that would narrow the mode: the file must still have 0640 exactly.
    let sidecar = Agent::spawn(
        "sidecar",
        &config,
        work.path(),
        &[(FAILPOINT, "after-temp-write@db")],
    );
    assert!(
        sidecar.wait_log(
            Duration::from_secs(20),
            "failpoint after-temp-write reached"
        ),
        "{}",
        sidecar.log()
    );
    // The temp file is complete and already has the configured mode; the target does
    // not exist yet: nobody can read a partial file.
    let temps = temp_files(&secrets);
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert_eq!(mode_of(&temps[0]), 0o640);
    let written: Value = serde_json::from_str(&read(&temps[0])).unwrap();
    assert!(!db.exists());
    assert_eq!(mode_of(&work.path().join("state/state.json")), 0o600);
    let log1 = sidecar.kill();

    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(wait_for(Duration::from_secs(15), || db.exists()));
    std::thread::sleep(Duration::from_secs(1));
    let creds: Value = serde_json::from_str(&read(&db)).unwrap();
    assert_eq!(creds, written, "the restart did not adopt the lease");
    assert_eq!(mode_of(&db), 0o640);
    assert!(temp_files(&secrets).is_empty(), "the stale temp file stays");
    assert_eq!(pg_roles(db_role), [creds["username"].as_str().unwrap()]);
    let (code, _, log2) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log2}");
    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1, "{log2}");
    assert_eq!(
        count_requests(&bao, &format!("database/creds/{db_role}")),
        1
    );
    assert!(pg_roles(db_role).is_empty());
    assert_no_leaks(
        &bao,
        &format!("{log1}{log2}"),
        &[creds["password"].as_str().unwrap()],
    );
    drop_pg_roles(db_role);
}

// ---------------------------------------------------------------------------------
// Change commands that hang or fail

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_hanging_or_failing_change_command_blocks_neither_rendering_nor_shutdown() {
    let bao = Bao::start();
    bao.ok_stdin(
        &["policy", "write", "agent", "-"],
        r#"path "secret/data/*" { capabilities = ["read"] }"#,
    );
    bao.ok(&["kv", "put", "secret/hang", "v=h1"]);
    bao.ok(&["kv", "put", "secret/fail", "v=f1"]);
    let work = tempfile::tempdir().unwrap();
    let calls = work.path().join("calls");
    let hang = script(
        work.path(),
        "hang.sh",
        &format!("echo hang >> {}; exec sleep 600", calls.display()),
    );
    let fail = script(
        work.path(),
        "fail.sh",
        &format!("date +%s.%N >> {}.fail; exit 3", calls.display()),
    );
    let mut config = bao.config(
        work.path(),
        vec![
            SecretSpec {
                notify: Some(Notify::Command { argv: vec![hang] }),
                ..SecretSpec::new("hang", "secret/hang")
            },
            SecretSpec {
                notify: Some(Notify::Command { argv: vec![fail] }),
                ..SecretSpec::new("fail", "secret/fail")
            },
        ],
    );
    config.refresh_secs = 1;
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    let (h, f) = (
        work.path().join("secrets/hang"),
        work.path().join("secrets/fail"),
    );
    assert!(wait_for(Duration::from_secs(15), || h.exists() && f.exists()));

    // First renders do not notify (nothing changed for the app yet); changes do.
    bao.ok(&["kv", "put", "secret/hang", "v=h2"]);
    bao.ok(&["kv", "put", "secret/fail", "v=f2"]);
    assert!(wait_for(Duration::from_secs(5), || read(&calls).contains("hang")));
    // The hanging command does not hold rendering up.
    bao.ok(&["kv", "put", "secret/hang", "v=h3"]);
    bao.ok(&["kv", "put", "secret/fail", "v=f3"]);
    let rendered = wait_for(Duration::from_secs(5), || {
        read(&h).contains("h3") && read(&f).contains("f3")
    });
    std::thread::sleep(Duration::from_secs(4));
    let (code, took, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(rendered, "{log}");
    // Shutdown stops the hanging command (it is killed with its process group).
    assert!(took < Duration::from_secs(4), "took {took:?}\n{log}");

    // The failing command was retried with growing gaps.
    let times: Vec<f64> = read(&PathBuf::from(format!("{}.fail", calls.display())))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(times.len() >= 3, "{times:?}\n{log}");
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] > 0.5, "{gaps:?}");
    assert!(
        gaps.iter().skip(1).any(|g| *g > gaps[0] * 1.3),
        "no backoff: {gaps:?}"
    );
    assert!(log.contains("exited with code 3"), "{log}");
    // The hanging command does not outlive the agent.
    let hang_path = work.path().join("hang.sh").display().to_string();
    let gone = wait_for(Duration::from_secs(3), || {
        let ps = Command::new("pgrep")
            .args(["-f", &hang_path])
            .output()
            .unwrap();
        ps.stdout.is_empty()
    });
    assert!(gone, "the hanging command survived the agent");
}

// ---------------------------------------------------------------------------------
// Metrics

#[test]
fn the_metrics_endpoint_serves_values_that_move_with_the_work() {
    let bao = Bao::start();
    let db_role = "skfmetri";
    database_role(&bao, db_role, "6s", "1h");
    bao.ok(&["kv", "put", "secret/app", "v=met-Mx1"]);
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = bao.config(
        work.path(),
        vec![db_secret(db_role), SecretSpec::new("app", "secret/app")],
    );
    config.auth.role = db_role.into();
    config.refresh_secs = 1;
    config.metrics_port = Some(port);
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    let db_labels = [
        r#"secret="db""#,
        &*format!(r#"path="database/creds/{db_role}""#),
    ];
    let db_labels: Vec<&str> = db_labels.iter().map(|s| &**s).collect();
    let mut first = String::new();
    assert!(wait_for(Duration::from_secs(15), || {
        first = scrape(port).unwrap_or_default();
        sample(
            &first,
            "sidekey_agent_secret_last_render_timestamp_seconds",
            &db_labels,
        )
        .is_some()
            && first.contains(r#"sidekey_agent_secret_last_render_timestamp_seconds{secret="app""#)
    }));
    std::thread::sleep(Duration::from_secs(6));
    let later = scrape(port).unwrap();
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let app = [r#"secret="app""#, r#"path="secret/app""#];
    let render = |m: &str| {
        sample(
            m,
            "sidekey_agent_secret_last_render_timestamp_seconds",
            &app,
        )
        .unwrap()
    };
    assert!((now - render(&later)).abs() < 3.0, "{later}");
    assert!(
        render(&later) > render(&first),
        "render time did not move:\n{later}"
    );
    let expiry = sample(
        &later,
        "sidekey_agent_secret_expiry_timestamp_seconds",
        &db_labels,
    )
    .unwrap();
    assert!(expiry > now && expiry < now + 7.0, "{expiry} vs {now}");
    assert!(
        sample(&later, "sidekey_agent_secret_renewals_total", &db_labels).unwrap() >= 1.0,
        "{later}"
    );
    assert_eq!(
        sample(&later, "sidekey_agent_secret_reissues_total", &db_labels),
        Some(0.0)
    );
    assert_eq!(
        sample(&later, "sidekey_agent_secret_stale", &app),
        Some(0.0)
    );
    assert_eq!(
        sample(&later, "sidekey_agent_login_failures_total", &[]),
        Some(0.0)
    );
    let ok = |m: &str| {
        sample(
            m,
            "sidekey_agent_vault_requests_total",
            &[r#"outcome="ok""#],
        )
        .unwrap()
    };
    assert!(ok(&later) >= ok(&first) + 4.0, "{first}\n{later}");
    // No secret in the endpoint: paths and names only.
    let creds: Value = serde_json::from_str(&read(&work.path().join("secrets/db"))).unwrap();
    assert!(!later.contains(creds["password"].as_str().unwrap()));
    assert!(!later.contains("met-Mx1"));
    assert!(
        later.contains("# TYPE sidekey_agent_vault_requests_total counter"),
        "{later}"
    );
    assert_no_leaks(&bao, &log, &["met-Mx1"]);
}

#[test]
fn without_a_metrics_port_nothing_listens_and_a_taken_port_does_not_stop_the_agent() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "v=x"]);
    let work = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut config = bao.config(work.path(), vec![SecretSpec::new("app", "secret/app")]);
    config.metrics_port = Some(taken.local_addr().unwrap().port());
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    let file = work.path().join("secrets/app");
    assert!(wait_for(Duration::from_secs(15), || file.exists()));
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("cannot serve metrics"), "{log}");

    config.metrics_port = None;
    let sidecar = Agent::spawn("sidecar", &config, work.path(), &[]);
    assert!(sidecar.wait_log(Duration::from_secs(10), "logged in to Vault"));
    assert!(!sidecar.log().contains("serving metrics"));
    let (code, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
}
