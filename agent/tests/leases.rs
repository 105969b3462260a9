//! Leases, rotation, hand-off and revocation against a real OpenBao and a real
//! PostgreSQL (127.0.0.1:5432, user postgres, trust).
//!
//! Every agent logs in with a role whose only policy is the minimal one of
//! `docs/vault-policy.md` (plus OpenBao's `default`), never root. Request counts come
//! from OpenBao's audit log. PostgreSQL roles are matched by the database role name,
//! which is unique per test, since other suites share the server.

mod common;

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use sidekey_agent::contract::config::{AgentConfig, SecretSpec};

/// Enables the database engine (once per server) and a PostgreSQL role `db_role`, and
/// a Kubernetes role `db_role` whose policy is the minimal one for it.
fn database_role(bao: &Bao, db_role: &str, ttl: &str, max_ttl: &str, token: (&str, &str)) {
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
    let policy = format!(
        r#"path "database/creds/{db_role}" {{ capabilities = ["read"] }}
path "sys/leases/revoke/database/creds/{db_role}/*" {{ capabilities = ["update"] }}
path "secret/data/app" {{ capabilities = ["read"] }}
path "kv1/app" {{ capabilities = ["read"] }}"#
    );
    bao.ok_stdin(&["policy", "write", db_role, "-"], &policy);
    bao.ok(&[
        "write",
        &format!("auth/kubernetes/role/{db_role}"),
        &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        &format!("policies={db_role}"),
        &format!("token_ttl={}", token.0),
        &format!("token_max_ttl={}", token.1),
    ]);
}

/// PostgreSQL roles the database engine made for `db_role`.
fn pg_roles(db_role: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-Atc"])
        .arg(format!(
            "select rolname from pg_roles where rolname like 'v-%-{}-%'",
            &db_role[..db_role.len().min(8)]
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Connects with the credentials currently in `file`.
fn connect_with(file: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let creds: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-d", "postgres", "-Atc", "select 1"])
        .arg("-U")
        .arg(creds["username"].as_str().unwrap_or(""))
        .env("PGPASSWORD", creds["password"].as_str().unwrap_or(""))
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A client that keeps reconnecting with the file's current credentials until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Client {
    fn start(file: std::path::PathBuf) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match connect_with(&file) {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            failures
        });
        Client { stop, ok, thread }
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().unwrap();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn db_config(bao: &Bao, work: &std::path::Path, db_role: &str) -> AgentConfig {
    let mut config = bao.config(
        work,
        vec![SecretSpec::new("db", format!("database/creds/{db_role}"))],
    );
    config.auth.role = db_role.into();
    config
}

fn wait_rendered(file: &std::path::Path) -> bool {
    wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains("username"))
    })
}

fn assert_no_secret_in(log: &str, file_values: &[String]) {
    for v in file_values {
        assert!(!log.contains(v.as_str()), "a secret value is in the log");
    }
}

#[test]
fn credentials_are_renewed_with_jitter_then_replaced_before_max_ttl_and_the_client_never_fails() {
    let bao = Bao::start();
    let db_role = "skrotate";
    database_role(&bao, db_role, "6s", "20s", ("1h", "2h"));
    let work = tempfile::tempdir().unwrap();
    let config = db_config(&bao, work.path(), db_role);
    let file = work.path().join("secrets/db");

    let sidecar = Running::spawn(agent("sidecar", &config));
    assert!(wait_rendered(&file), "the sidecar did not render");
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let first_user = first["username"].as_str().unwrap().to_owned();
    let client = Client::start(file.clone());

    // Max TTL 16 s: renewals at ~4 s and ~8 s, then a capped one and a replacement
    // before 16 s, then the old role is revoked after a grace period.
    std::thread::sleep(Duration::from_secs(25));
    let (connected, failures) = client.stop();
    let now: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let roles = pg_roles(db_role);
    let (exited, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited, "{log}");

    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {failures:?}\n{log}",
        failures.len(),
        connected + failures.len()
    );
    assert!(connected > 50, "only {connected} connections");
    assert_ne!(now["username"], first["username"], "not replaced:\n{log}");
    assert!(
        !roles.contains(&first_user),
        "the replaced role still exists: {roles:?}\n{log}"
    );
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert!(pg_roles(db_role).is_empty(), "roles left after SIGTERM");

    let renewals = count_requests(&bao, "sys/leases/renew");
    let issues = count_requests(&bao, &format!("database/creds/{db_role}"));
    assert!(renewals >= 2, "{renewals} renewals:\n{log}");
    assert!(
        (2..=3).contains(&issues),
        "{issues} credentials issued:\n{log}"
    );
    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1);
    // Jitter: the delays the agent chose after identical grants differ.
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("lease renewed") && l.contains("\"capped\":false"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"]["next_in_ms"].as_u64())
        .collect();
    assert!(delays.len() >= 2, "{log}");
    assert!(
        // The earlier of 2/3 of the grant and 3 s before its end (6 s, or 5 s: Vault may
        // grant a second less), minus up to 10 % (docs/leases.md).
        delays.iter().all(|d| (1800..=3000).contains(d)),
        "{delays:?}"
    );
    assert!(
        delays.windows(2).any(|w| w[0] != w[1]),
        "renewal delays are not jittered: {delays:?}"
    );
    assert_no_secret_in(
        &log,
        &[
            first["password"].as_str().unwrap().to_owned(),
            now["password"].as_str().unwrap().to_owned(),
        ],
    );
}

#[test]
fn a_token_max_ttl_shorter_than_the_lease_reissues_under_a_new_token_before_it_dies() {
    let bao = Bao::start();
    let db_role = "sktokmax";
    // The token dies at 12 s, taking its leases with it; the lease could live 60 s.
    database_role(&bao, db_role, "30s", "60s", ("6s", "12s"));
    let work = tempfile::tempdir().unwrap();
    let config = db_config(&bao, work.path(), db_role);
    let file = work.path().join("secrets/db");

    let sidecar = Running::spawn(agent("sidecar", &config));
    assert!(wait_rendered(&file));
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let client = Client::start(file.clone());
    std::thread::sleep(Duration::from_secs(17));
    let (connected, failures) = client.stop();
    let now: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let roles = pg_roles(db_role);
    let (exited, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited, "{log}");

    assert!(failures.is_empty(), "{failures:?}\n{log}");
    assert!(connected > 40);
    assert_ne!(now["username"], first["username"], "{log}");
    assert!(
        !roles
            .iter()
            .any(|r| r == first["username"].as_str().unwrap()),
        "the old token's role survives: {roles:?}"
    );
    assert!(count_requests(&bao, "auth/kubernetes/login") >= 2, "{log}");
    assert!(pg_roles(db_role).is_empty(), "roles left after SIGTERM");
}

#[test]
fn init_hands_off_to_the_sidecar_and_a_restarted_sidecar_adopts_the_same_state() {
    let bao = Bao::start();
    let db_role = "skhandof";
    database_role(&bao, db_role, "30s", "60s", ("1h", "2h"));
    bao.ok(&["kv", "put", "secret/app", "user=app"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = db_config(&bao, work.path(), db_role);
    // Two secrets from one path share one credential.
    config.secrets.push(SecretSpec {
        format: sidekey_agent::contract::config::Format::Key("username".into()),
        ..SecretSpec::new("db-user", format!("database/creds/{db_role}"))
    });
    config.secrets.push(SecretSpec::new("app", "secret/app"));

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "20s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let state = work.path().join("state/state.json");
    assert_eq!(mode_of(&state), 0o600);
    let file = work.path().join("secrets/db");
    let user = std::fs::read_to_string(work.path().join("secrets/db-user")).unwrap();
    assert!(std::fs::read_to_string(&file).unwrap().contains(&user));
    assert_eq!(pg_roles(db_role), std::slice::from_ref(&user));
    let after_init = agent_requests(&bao).len();

    let sidecar = Running::spawn(agent("sidecar", &config));
    std::thread::sleep(Duration::from_secs(2));
    let log1 = sidecar.kill();
    let sidecar = Running::spawn(agent("sidecar", &config));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pg_roles(db_role),
        std::slice::from_ref(&user),
        "a second credential was minted"
    );
    let (exited, took, log2) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited && took < Duration::from_secs(6), "{log2}");

    assert_eq!(
        count_requests(&bao, "auth/kubernetes/login"),
        1,
        "{log1}\n{log2}"
    );
    assert_eq!(
        count_requests(&bao, &format!("database/creds/{db_role}")),
        1
    );
    // Init: login, two mount lookups, two reads. Each sidecar start: one lookup-self.
    assert_eq!(after_init, 5, "{:?}", agent_requests(&bao));
    assert!(log1.contains("adopted the token") && log2.contains("adopted the token"));
    assert!(pg_roles(db_role).is_empty(), "SIGTERM left a role behind");
    let leases = bao.cli(&[
        "list",
        &format!("sys/leases/lookup/database/creds/{db_role}"),
    ]);
    assert!(
        !String::from_utf8_lossy(&leases.stdout).contains('-'),
        "SIGTERM left a lease behind: {}",
        String::from_utf8_lossy(&leases.stdout)
    );
    assert!(!state.exists(), "the state of a revoked token stays behind");
}

#[test]
fn sigterm_with_openbao_stopped_exits_within_the_deadline_naming_what_was_not_revoked() {
    let mut bao = Bao::start();
    let db_role = "skdown";
    database_role(&bao, db_role, "30s", "60s", ("1h", "2h"));
    let work = tempfile::tempdir().unwrap();
    let config = db_config(&bao, work.path(), db_role);
    let sidecar = Running::spawn(agent("sidecar", &config));
    assert!(wait_rendered(&work.path().join("secrets/db")));
    // Stop OpenBao (its leases die with the dev server's memory); the agent cannot
    // revoke anything now.
    let _ = bao.child.kill();
    let _ = bao.child.wait();
    let (exited, took, log) = sidecar.terminate(Duration::from_secs(10));
    assert!(exited, "{log}");
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(
        log.contains("could not revoke the token") || log.contains("timed out"),
        "{log}"
    );
    assert!(
        log.contains(&format!("database/creds/{db_role}/")),
        "the lease is not named:\n{log}"
    );
    // Clean up the role the dead server left behind.
    for role in pg_roles(db_role) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c"])
            .arg(format!("drop role \"{role}\""))
            .output();
    }
}

#[test]
fn kv_updates_appear_at_the_next_refresh_and_static_refreshes_issue_no_credential() {
    let bao = Bao::start();
    let db_role = "skstatic";
    database_role(&bao, db_role, "30s", "60s", ("1h", "2h"));
    bao.ok(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao.ok(&["kv", "put", "kv1/app", "v=one-kv1"]);
    bao.ok(&["kv", "put", "secret/app", "v=one-kv2"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = db_config(&bao, work.path(), db_role);
    config.secrets.push(SecretSpec::new("v1", "kv1/app"));
    config
        .secrets
        .push(SecretSpec::new("v2", "secret/data/app"));
    config.refresh_secs = 1;

    let sidecar = Running::spawn(agent("sidecar", &config));
    let v1 = work.path().join("secrets/v1");
    let v2 = work.path().join("secrets/v2");
    assert!(wait_for(Duration::from_secs(15), || v1.exists() && v2.exists()));
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let (i1, i2) = (inode(&v1), inode(&v2));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        (inode(&v1), inode(&v2)),
        (i1, i2),
        "an unchanged secret was rewritten"
    );

    bao.ok(&["kv", "put", "kv1/app", "v=two-kv1"]);
    bao.ok(&["kv", "put", "secret/app", "v=two-kv2"]);
    let seen = wait_for(Duration::from_secs(3), || {
        std::fs::read_to_string(&v1).unwrap().contains("two-kv1")
            && std::fs::read_to_string(&v2).unwrap().contains("two-kv2")
    });
    let (exited, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited);
    assert!(
        seen,
        "the KV updates did not appear within a refresh:\n{log}"
    );
    assert_eq!(
        count_requests(&bao, &format!("database/creds/{db_role}")),
        1,
        "{log}"
    );
    assert!(count_requests(&bao, "kv1/app") >= 4);
    // One mount lookup per mount, not per read.
    assert_eq!(
        count_requests(&bao, "sys/internal/ui/mounts/*"),
        3,
        "{:?}",
        agent_requests(&bao)
    );
    assert!(!log.contains("one-kv") && !log.contains("two-kv"));
}

#[test]
fn a_denied_path_is_named_without_a_storm_of_logins() {
    let bao = Bao::start();
    let db_role = "skdenied";
    database_role(&bao, db_role, "30s", "60s", ("1h", "2h"));
    bao.ok(&["kv", "put", "secret/other", "v=x"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = db_config(&bao, work.path(), db_role);
    config.secrets = vec![SecretSpec::new("other", "secret/other")];
    config.refresh_secs = 1;
    let sidecar = Running::spawn(agent("sidecar", &config));
    std::thread::sleep(Duration::from_secs(4));
    let (exited, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited);
    assert_eq!(count_requests(&bao, "auth/kubernetes/login"), 1, "{log}");
    assert!(log.contains("the Vault policy denies this path"), "{log}");
    assert!(log.contains("secret/other"), "{log}");
}

#[test]
fn pki_certificates_are_issued_by_a_write_and_reissued_at_two_thirds_of_their_life() {
    let bao = Bao::start();
    bao.ok(&["secrets", "enable", "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=1h", "pki"]);
    bao.ok(&[
        "write",
        "pki/root/generate/internal",
        "common_name=Test Root",
        "ttl=1h",
    ]);
    bao.ok(&[
        "write",
        "pki/roles/web",
        "allowed_domains=demo.svc",
        "allow_subdomains=true",
        "max_ttl=1h",
    ]);
    bao.ok_stdin(
        &["policy", "write", "pki-web", "-"],
        r#"path "pki/issue/web" { capabilities = ["update"] }"#,
    );
    bao.ok(&[
        "write",
        "auth/kubernetes/role/pki",
        &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        "policies=pki-web",
    ]);
    let work = tempfile::tempdir().unwrap();
    let mut spec = SecretSpec::new("tls", "pki/issue/web");
    spec.params
        .insert("common_name".into(), "app.demo.svc".into());
    spec.params.insert("ttl".into(), "9s".into());
    let mut config = bao.config(work.path(), vec![spec]);
    config.auth.role = "pki".into();
    let file = work.path().join("secrets/tls");

    let sidecar = Running::spawn(agent("sidecar", &config));
    assert!(wait_for(Duration::from_secs(15), || file.exists()));
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        first["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let started = Instant::now();
    let reissued = wait_for(Duration::from_secs(9), || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["serial_number"] != first["serial_number"])
    });
    let took = started.elapsed();
    let (_, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(reissued, "{log}");
    // 2/3 of 9 s is 6 s, pulled earlier by up to 10 %.
    assert!(
        took > Duration::from_secs(4) && took < Duration::from_secs(7),
        "{took:?}"
    );
    assert_eq!(count_requests(&bao, "pki/issue/web"), 2);
    let key = first["private_key"].as_str().unwrap();
    assert!(!log.contains(&key[40..80]), "the private key is in the log");
}

#[test]
fn a_vault_namespace_carries_login_reads_renewals_and_revocation() {
    let bao = Bao::start();
    bao.ok(&["namespace", "create", "team1"]);
    // Every CLI call below acts inside team1.
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(&bao.bin)
            .args(args)
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_CACERT", bao.ca_path())
            .env("BAO_TOKEN", "root")
            .env("BAO_NAMESPACE", "team1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} in team1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["auth", "enable", "kubernetes"], "");
    let review = bao.ok(&["read", "-field=kubernetes_host", "auth/kubernetes/config"]);
    run(
        &[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host={}", review.trim()),
            &format!("kubernetes_ca_cert=@{}", bao.ca_path().display()),
        ],
        "",
    );
    run(
        &["secrets", "enable", "-path=secret", "-version=2", "kv"],
        "",
    );
    run(&["kv", "put", "secret/app", "v=in-team1"], "");
    run(
        &["policy", "write", "app", "-"],
        r#"path "secret/data/app" { capabilities = ["read"] }"#,
    );
    run(
        &[
            "write",
            "auth/kubernetes/role/app",
            &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
            &format!("bound_service_account_namespaces={NAMESPACE}"),
            "policies=app",
            "token_ttl=4s",
            "token_max_ttl=1h",
        ],
        "",
    );
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![SecretSpec::new("app", "secret/app")]);
    config.vault.namespace = Some("team1".into());
    let file = work.path().join("secrets/app");
    let sidecar = Running::spawn(agent("sidecar", &config));
    assert!(wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("in-team1"))
    }));
    std::thread::sleep(Duration::from_secs(4));
    let (exited, _, log) = sidecar.terminate(Duration::from_secs(8));
    assert!(exited, "{log}");
    assert!(log.contains("token renewed"), "{log}");
    assert!(log.contains("token revoked with every lease"), "{log}");
    let accessor = field_values(&log, "token.accessor")[0].clone();
    let lookup = Command::new(&bao.bin)
        .args(["token", "lookup", "-accessor", &accessor])
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_CACERT", bao.ca_path())
        .env("BAO_TOKEN", "root")
        .env("BAO_NAMESPACE", "team1")
        .output()
        .unwrap();
    assert!(!lookup.status.success(), "the namespaced token survived");
    for path in [
        "auth/kubernetes/login",
        "auth/token/renew-self",
        "auth/token/revoke-self",
    ] {
        assert!(
            count_requests(&bao, path) >= 1,
            "no {path} in team1: {:?}",
            agent_requests(&bao)
        );
    }
}
