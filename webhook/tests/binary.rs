//! The `sidekey-webhook` binary as the Deployment runs it: Vault health check against a
//! real OpenBao and a closed port, JSON log lines, and shutdown on SIGTERM.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::bao::DevServer;
use common::*;

struct Webhook {
    child: Child,
    port: u16,
    client: reqwest::Client,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start(vault_addr: &str, extra: &[&str]) -> Webhook {
        setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())
            .expect("write");
        let port = free_port();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sidekey-webhook"))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!(
                "--tls-cert={}",
                dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                dir.path().join("tls.key").display()
            ))
            .arg(format!("--vault-addr={vault_addr}"))
            .args(extra)
            .env_remove("SIDEKEY_LOG")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("the webhook starts");
        let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("ca");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", (Ipv4Addr::LOCALHOST, port).into())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Webhook {
            child,
            port,
            client,
            stderr,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                self.child.try_wait().expect("wait").is_none(),
                "the webhook exited:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the webhook did not get ready:\n{}", self.logs());
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    /// Waits until `name` satisfies `ok`, for at most `limit`.
    async fn wait_metric(&self, name: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.metric(name).await;
            if ok(value) || Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn review(&self, body: &str) -> Value {
        let response = self
            .client
            .post(self.url("/mutate"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("review");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the webhook did not exit within {limit:?}:\n{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        leak_log("webhook.err", &self.logs());
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

const UP: &str = "sidekey_webhook_vault_up";
const CHECKED: &str = "sidekey_webhook_vault_last_check_timestamp_seconds";

#[tokio::test]
async fn vault_up_follows_a_real_openbao_and_admissions_never_wait_on_it() {
    let bao = DevServer::start(true);
    let ca = bao.ca_path.as_ref().expect("dev-tls CA");
    let mut webhook = Webhook::start(
        &bao.addr,
        &[
            &format!("--vault-ca-file={}", ca.display()),
            "--vault-check-interval=1s",
        ],
    );
    webhook.wait_ready().await;
    let checked = webhook
        .wait_metric(CHECKED, Duration::from_secs(10), |v| v > 0.0)
        .await;
    assert!(checked > 0.0, "no check within 10 s:\n{}", webhook.logs());
    assert_eq!(webhook.metric(UP).await, 1.0, "{}", webhook.logs());
    assert!(
        webhook.logs().contains("vault answers"),
        "{}",
        webhook.logs()
    );

    // Vault goes away: seen within a few checks, and reviews are still answered at once.
    drop(bao);
    let up = webhook
        .wait_metric(UP, Duration::from_secs(15), |v| v == 0.0)
        .await;
    assert_eq!(up, 0.0, "{}", webhook.logs());
    let started = Instant::now();
    let response = webhook.review(POD_CREATE).await;
    assert_eq!(response["response"]["allowed"], true);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        webhook.logs().contains("vault does not answer"),
        "{}",
        webhook.logs()
    );
}

#[tokio::test]
async fn a_closed_vault_port_is_reported_at_start() {
    let closed = free_port();
    let addr = format!("http://127.0.0.1:{closed}");
    let mut webhook = Webhook::start(&addr, &["--vault-check-interval=30s"]);
    webhook.wait_ready().await;
    let checked = webhook
        .wait_metric(CHECKED, Duration::from_secs(10), |v| v > 0.0)
        .await;
    assert!(
        checked > 0.0,
        "the first check runs at start:\n{}",
        webhook.logs()
    );
    assert_eq!(webhook.metric(UP).await, 0.0);
    let logs = webhook.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("vault does not answer"))
        .unwrap_or_else(|| panic!("no warning in\n{logs}"));
    assert!(line.contains(&addr), "{line}");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("cannot connect"), "{line}");
}

#[tokio::test]
async fn json_logs_carry_the_pods_namespace_and_name_on_every_admission_line() {
    let mut webhook = Webhook::start(
        "http://127.0.0.1:9",
        &[
            "--log-format=json",
            "--vault-check-interval=0s",
            "--shutdown-delay=0s",
        ],
    );
    webhook.wait_ready().await;
    webhook.review(POD_CREATE).await;
    webhook.review(POD_BAD_ANNOTATION).await;
    webhook.signal("TERM");
    let (status, _) = webhook.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");

    let logs = webhook.logs();
    let mut admission_lines = 0;
    for line in logs.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
        if value["span"]["name"] == "review" {
            admission_lines += 1;
            let span = &value["span"];
            assert_eq!(span["namespace"], "demo", "{line}");
            assert_eq!(span["pod"], "web-7d9c8b5f4-", "{line}");
            assert!(span["uid"].is_string(), "{line}");
        }
    }
    assert!(admission_lines >= 2, "{logs}");
    assert!(logs.contains("\"outcome\":\"mutated\""), "{logs}");
    assert!(logs.contains("\"outcome\":\"denied\""), "{logs}");
    assert!(
        !logs.contains("env-value-that-must-never-be-logged"),
        "{logs}"
    );
    assert!(!logs.contains("SIDEKEY_AGENT_CONFIG"), "{logs}");
}

#[tokio::test]
async fn sigterm_keeps_serving_for_the_delay_then_exits_cleanly() {
    let mut webhook = Webhook::start(
        "http://127.0.0.1:9",
        &["--vault-check-interval=0s", "--shutdown-delay=2s"],
    );
    webhook.wait_ready().await;
    webhook.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Within the delay, a new connection is still answered.
    let response = webhook.review(POD_CREATE).await;
    assert_eq!(response["response"]["allowed"], true);
    let (status, took) = webhook.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", webhook.logs());
    assert!(
        took >= Duration::from_millis(1200),
        "exited after {took:?}: no delay"
    );
    assert!(
        webhook.logs().contains("stopped serving"),
        "{}",
        webhook.logs()
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_status_1() {
    let mut webhook = Webhook::start(
        "http://127.0.0.1:9",
        &["--vault-check-interval=0s", "--shutdown-delay=60s"],
    );
    webhook.wait_ready().await;
    webhook.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    webhook.signal("INT");
    let (status, _) = webhook.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", webhook.logs());
}
