//! The agent binary against a real OpenBao dev server with TLS.
//!
//! Each test starts its own `bao server -dev -dev-tls` on a free loopback port, with the
//! real Kubernetes auth method pointed at a tiny fake TokenReview endpoint (the only
//! stand-in: OpenBao asks the API server whether the service-account JWT is valid). A
//! file audit device with raw logging records the token OpenBao hands out, so the tests
//! can assert it never shows up in the agent's output.
//!
//! Needs the `bao` binary: `$SIDEKEY_BAO`, or `<workspace>/.venv/bin/bao`.

mod common;

use std::{
    io::Read,
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use sidekey_agent::contract::config::{AgentConfig, AuthConfig, AuthMethod, Notify, VaultConfig};

#[test]
fn init_renders_kv_v2_data_in_either_path_form_without_leaking_values() {
    let bao = Bao::start();
    bao.ok(&[
        "kv",
        "put",
        "secret/app",
        &format!("password={PASSWORD}"),
        "user=app",
    ]);
    let work = tempfile::tempdir().unwrap();
    let mut nested = secret("api", "secret/data/app", "nested/dir/app.json");
    nested.mode = 0o600;
    let config = bao.config(
        work.path(),
        vec![secret("app", "secret/app", "app.json"), nested],
    );

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "30s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(40));
    let log = stderr(&out);
    assert!(out.status.success(), "init failed:\n{log}");

    let expected = format!("{{\n  \"password\": \"{PASSWORD}\",\n  \"user\": \"app\"\n}}\n");
    let dir = work.path().join("secrets");
    assert_eq!(
        std::fs::read_to_string(dir.join("app.json")).unwrap(),
        expected
    );
    assert_eq!(mode_of(&dir.join("app.json")), 0o644);
    let nested_path = dir.join("nested/dir/app.json");
    assert_eq!(std::fs::read_to_string(&nested_path).unwrap(), expected);
    assert_eq!(mode_of(&nested_path), 0o600);
    assert_eq!(mode_of(&dir.join("nested")), 0o755);

    let tokens = bao.issued_tokens();
    assert_eq!(tokens.len(), 1, "expected one login in the audit log");
    assert!(
        !log.contains(PASSWORD),
        "the secret value is in the log:\n{log}"
    );
    assert!(
        !log.contains(&tokens[0]),
        "the Vault token is in the log:\n{log}"
    );
    assert!(
        !log.contains(&service_account_jwt()[..40]),
        "the JWT is in the log:\n{log}"
    );
    assert!(log.contains("\"secret.name\":\"app\""), "{log}");
    assert!(log.contains("\"pod.name\":\"app-0\""), "{log}");
}

#[test]
fn init_fails_at_once_when_the_ca_does_not_match() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![secret("app", "secret/app", "app.json")]);
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    config.vault.ca_pem = Some(other_ca.cert.pem());

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "60s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(70));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("not trusted (unknown issuer)"), "{log}");
    assert!(
        log.contains(&bao.addr),
        "the message should name the address:\n{log}"
    );
    assert!(
        took < Duration::from_secs(15),
        "a TLS trust failure is not retried: {took:?}"
    );
    assert!(!work.path().join("secrets/app.json").exists());
}

#[test]
fn init_names_the_secret_and_path_that_do_not_exist() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let config = bao.config(work.path(), vec![secret("db", "secret/missing", "db.json")]);

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "60s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(70));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(r#"secret \"db\": nothing at Vault path \"secret/missing\""#),
        "{log}"
    );
    assert!(
        took < Duration::from_secs(15),
        "not found is not retried: {took:?}"
    );
}

#[test]
fn init_reports_a_denied_role_by_name() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![secret("app", "secret/app", "app.json")]);
    config.auth.role = "elsewhere".into();

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "60s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(70));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(r#"login as role \"elsewhere\" at auth/kubernetes was denied"#),
        "{log}"
    );
    assert!(
        took < Duration::from_secs(15),
        "a denied login is not retried: {took:?}"
    );
}

#[test]
fn init_gives_up_on_an_address_where_nothing_listens_within_its_deadline() {
    let work = tempfile::tempdir().unwrap();
    let jwt_path = work.path().join("token");
    std::fs::write(&jwt_path, service_account_jwt()).unwrap();
    let port = free_port();
    let mut config = AgentConfig::new(
        VaultConfig {
            addr: format!("https://127.0.0.1:{port}"),
            ca_pem: None,
            namespace: None,
            ..Default::default()
        },
        AuthConfig {
            method: AuthMethod::Kubernetes,
            mount_path: "auth/kubernetes".into(),
            role: "app".into(),
            jwt_path: jwt_path.display().to_string(),
        },
    );
    config.secrets_dir = work.path().display().to_string();
    config.secrets = vec![secret("app", "secret/app", "app.json")];

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "2s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(20));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("connection refused"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    assert!(log.contains("SIDEKEY_INIT_DEADLINE"), "{log}");
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} for a 2s deadline"
    );
}

#[test]
fn a_missing_or_broken_configuration_exits_64_naming_the_variable() {
    let (out, _) = run_bounded(
        {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey-agent"));
            cmd.arg("init")
                .env_clear()
                .stderr(Stdio::piped())
                .stdout(Stdio::piped());
            cmd
        },
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("SIDEKEY_AGENT_CONFIG is not set"),
        "{}",
        stderr(&out)
    );

    let mut config = AgentConfig::new(
        VaultConfig {
            addr: "https://127.0.0.1:1".into(),
            ca_pem: Some(
                "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
                    .into(),
            ),
            namespace: None,
            ..Default::default()
        },
        AuthConfig {
            method: AuthMethod::Kubernetes,
            mount_path: "auth/kubernetes".into(),
            role: "app".into(),
            jwt_path: "/nonexistent".into(),
        },
    );
    config.secrets_dir = std::env::temp_dir().display().to_string();
    let (out, _) = run_bounded(agent("init", &config), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("vault.ca_pem"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("not base64 at all"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sidecar_follows_changes_only_when_they_happen_and_revokes_its_token_on_sigterm() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "password=value-one-x7"]);
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("notified");
    let mut spec = secret("app", "secret/app", "app.json");
    spec.notify = Some(Notify::Command {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo \"$SIDEKEY_SECRET_NAME\" >> {}", marker.display()),
        ],
    });
    let mut config = bao.config(work.path(), vec![spec]);
    config.refresh_secs = 1;
    config.revoke_delay_secs = 1;
    let file = work.path().join("secrets/app.json");
    let notifications = || std::fs::read_to_string(&marker).unwrap_or_default();

    let mut child = agent("sidecar", &config).spawn().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let kill = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };

    let rendered = wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("value-one-x7"))
    });
    if !rendered {
        kill(&mut child);
        panic!(
            "the sidecar did not render; log:\n{}",
            log_reader.join().unwrap()
        );
    }

    let live_accessors = bao.ok(&["list", "-format=json", "auth/token/accessors"]);
    assert!(
        wait_for(Duration::from_secs(5), || notifications() == "app\n"),
        "the first render should notify once, got {:?}",
        notifications()
    );

    // Two refreshes of an unchanged secret leave the file alone.
    let inode = std::fs::metadata(&file).unwrap().ino();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        inode,
        "an unchanged secret was rewritten"
    );

    bao.ok(&["kv", "put", "secret/app", "password=value-two-x7"]);
    let changed = wait_for(Duration::from_secs(3), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("value-two-x7"))
    });
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()));
    eprintln!("sidecar VmRSS: {rss_kib:?}");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let started = Instant::now();
    let exited = wait_for(Duration::from_secs(8), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        kill(&mut child);
    }
    let status = child.wait().unwrap();
    let log = log_reader.join().unwrap();
    assert!(
        changed,
        "the new value did not reach the file within 3s; log:\n{log}"
    );
    assert!(
        exited,
        "the sidecar did not exit within 8s of SIGTERM; log:\n{log}"
    );
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(7),
        "shutdown took {took:?} with a 1s revoke delay"
    );
    assert_eq!(
        notifications(),
        "app\napp\n",
        "one notification per change; log:\n{log}"
    );

    let accessors = field_values(&log, "token.accessor");
    assert_eq!(
        accessors.len(),
        2,
        "one login and one revocation should name the accessor:\n{log}"
    );
    assert_eq!(accessors[0], accessors[1]);
    assert!(
        live_accessors.contains(&accessors[0]),
        "the logged accessor was not live"
    );
    let lookup = bao.cli(&["token", "lookup", "-accessor", &accessors[0]]);
    assert!(
        !lookup.status.success(),
        "the token still exists after shutdown"
    );
    assert!(
        String::from_utf8_lossy(&lookup.stderr).contains("invalid accessor"),
        "{}",
        String::from_utf8_lossy(&lookup.stderr)
    );

    let tokens = bao.issued_tokens();
    assert_eq!(tokens.len(), 1, "the sidecar should have logged in once");
    assert!(!log.contains(&tokens[0]), "the Vault token is in the log");
    assert!(
        !log.contains("value-one-x7") && !log.contains("value-two-x7"),
        "a secret value is in the log"
    );
}

#[test]
fn a_ca_file_and_tls_server_name_are_honoured_and_a_name_mismatch_is_named() {
    let bao = Bao::start();
    bao.ok(&["kv", "put", "secret/app", "user=app"]);
    let work = tempfile::tempdir().unwrap();
    let mut config = bao.config(work.path(), vec![secret("app", "secret/app", "app.json")]);
    config.vault.ca_pem = None;
    config.vault.ca_file = Some(bao.ca_path().display().to_string());
    // The dev certificate is issued for localhost; the address stays an IP.
    config.vault.tls_server_name = Some("localhost".into());

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "30s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(40));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(work.path().join("secrets/app.json").is_file());

    config.vault.tls_server_name = Some("vault.wrong.example".into());
    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "60s");
    let (out, took) = run_bounded(cmd, Duration::from_secs(70));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("(name mismatch)"), "{log}");
    assert!(
        took < Duration::from_secs(15),
        "a name mismatch is not retried: {took:?}"
    );
}

/// Seconds since midnight (UTC) of an audit entry's RFC 3339 `time`.
fn audit_seconds(time: &str) -> f64 {
    let clock = time.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn init_has_the_reads_of_several_secrets_in_flight_at_once() {
    // Every answer from OpenBao is held for one `hold` by a proxy. Read one after the
    // other, each read reaches OpenBao at least one `hold` after the one before; read
    // together, they arrive within one `hold` of each other.
    let hold = Duration::from_millis(200);
    let bao = Bao::start();
    let paths: Vec<String> = (0..8).map(|i| format!("secret/many{i}")).collect();
    for path in &paths {
        bao.ok(&["kv", "put", path, "k=v"]);
    }
    bao.ok_stdin(
        &["policy", "write", "agent", "-"],
        r#"path "secret/data/many*" { capabilities = ["read"] }"#,
    );
    let proxy = proxy::Proxy::in_front_of(&bao.addr);
    proxy.set(proxy::Mode::Delay(hold));
    let work = tempfile::tempdir().unwrap();
    let secrets = paths
        .iter()
        .enumerate()
        .map(|(i, p)| secret(&format!("s{i}"), p, &format!("s{i}.json")))
        .collect();
    let mut config = bao.config(work.path(), secrets);
    config.vault.addr = proxy.addr();

    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "60s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(90));
    let log = stderr(&out);
    assert!(out.status.success(), "init failed:\n{log}");
    for i in 0..8 {
        let file = work.path().join(format!("secrets/s{i}.json"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\n  \"k\": \"v\"\n}\n"
        );
    }

    // When each read reached OpenBao, relative to the first (wrapping at midnight).
    let text = std::fs::read_to_string(bao.audit_path()).unwrap();
    let mut arrivals: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["type"] == "request"
                && v["request"]["operation"] == "read"
                && v["request"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("secret/data/many"))
        })
        .map(|v| audit_seconds(v["time"].as_str().unwrap()))
        .collect();
    assert_eq!(arrivals.len(), 8, "one read per secret:\n{log}");
    let first = arrivals[0];
    for t in &mut arrivals {
        *t = (*t - first + 43_200.0).rem_euclid(86_400.0) - 43_200.0;
    }
    arrivals.sort_by(f64::total_cmp);
    // Reads that reached OpenBao within one `hold` of each other were in flight
    // together: read in turn, no two could.
    let together = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| **t - arrivals[i] < hold.as_secs_f64())
                .count()
        })
        .max()
        .unwrap();
    assert!(
        together >= 4,
        "at most {together} reads in flight together; arrivals (s): {arrivals:?}"
    );
    // And none waited for the others: all eight came within a few holds (new
    // connections take a TLS handshake through the proxy), not one hold each.
    let span = arrivals[7] - arrivals[0];
    assert!(
        span < 3.0 * hold.as_secs_f64(),
        "the reads took {span:.3}s to arrive: {arrivals:?}"
    );
}
