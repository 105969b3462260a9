//! The real `sidekey-webhook` binary behind TLS, and a client that trusts only its
//! test CA.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{self, Process};
use crate::tls::ServingCert;
use crate::{Result, bins, failed};

/// How long the webhook may take to answer `/healthz`.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running webhook; killed on drop.
#[derive(Debug)]
pub struct Webhook {
    process: Process,
    base: String,
    ca_pem: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// An HTTP answer: status and body text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Webhook {
    /// Starts the webhook on a free loopback port with a fresh serving certificate for
    /// `127.0.0.1`/`localhost`, pointing injected agents at `vault_addr` trusting
    /// `vault_ca_file`, and waits for `/healthz` over TLS.
    pub fn start(vault_addr: &str, vault_ca_file: &Path) -> Result<Webhook> {
        Webhook::start_with(vault_addr, vault_ca_file, &[])
    }

    /// [`Webhook::start`] with extra command-line arguments (e.g. `--sidecar-mode
    /// classic`).
    pub fn start_with(vault_addr: &str, vault_ca_file: &Path, extra: &[&str]) -> Result<Webhook> {
        let binary = bins::webhook()?;
        let dir = crate::tempdir("webhook-")?;
        let cert = ServingCert::generate("sidekey-test-webhook-ca", &["127.0.0.1", "localhost"])?;
        let files = cert.write(dir.path())?;
        let port = process::free_port()?;

        let mut cmd = process::guarded(&binary);
        scrub_sidekey_env(&mut cmd);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .arg("--vault-addr")
            .arg(vault_addr)
            .arg("--vault-ca-file")
            .arg(vault_ca_file)
            .args(extra)
            .env("SIDEKEY_LOG", "info,sidekey_webhook=debug");
        let process = Process::spawn("webhook", cmd, dir.path())?;

        let mut webhook = Webhook {
            process,
            base: format!("https://127.0.0.1:{port}"),
            client: crate::tls::client_trusting(&cert.ca_pem)?,
            ca_pem: cert.ca_pem,
            _dir: dir,
        };
        webhook.wait_healthy()?;
        Ok(webhook)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let url = format!("{}/healthz", self.base);
        let result = process::wait_for("webhook /healthz answering over TLS", START_LIMIT, || {
            if !matches!(self.process.try_status(), Ok(None)) {
                return Some(Err(failed("the webhook exited during startup")));
            }
            let ok = crate::rt::block_on(async {
                matches!(self.client.get(&url).send().await, Ok(r) if r.status().is_success())
            });
            ok.then_some(Ok(()))
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(failed(format!("{e}\n{}", self.process.logs()))),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The CA that signed the serving certificate (a webhook configuration's caBundle).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The webhook's output so far, for failure reports (it must hold no secret).
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_status(), Ok(None))
    }

    /// POSTs `body` to `path` with `content_type`; any HTTP status is an answer.
    pub fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        crate::rt::block_on(async {
            let resp = self
                .client
                .post(&url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .map_err(|e| failed(format!("POST {url}: {e}")))?;
            let status = resp.status().as_u16();
            let body = resp
                .text()
                .await
                .map_err(|e| failed(format!("reading the answer of POST {url}: {e}")))?;
            Ok(Answer { status, body })
        })
    }

    /// POSTs an AdmissionReview to `/mutate` as the API server does and returns the
    /// AdmissionReview it answers; anything but HTTP 200 with JSON is an error.
    pub fn post_review(&self, review: &Value) -> Result<Value> {
        let answer = self.post_raw(
            "/mutate",
            "application/json",
            serde_json::to_vec(review).map_err(|e| failed(format!("encoding review: {e}")))?,
        )?;
        if answer.status != 200 {
            return Err(failed(format!(
                "webhook answered HTTP {} to an AdmissionReview: {}",
                answer.status, answer.body
            )));
        }
        serde_json::from_str(&answer.body)
            .map_err(|e| failed(format!("webhook answered non-JSON ({e}): {}", answer.body)))
    }
}

/// Removes inherited `SIDEKEY_*` variables (other than the harness's own locators) so a
/// developer's shell can't change what the test runs.
fn scrub_sidekey_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SIDEKEY_") {
            cmd.env_remove(k);
        }
    }
}
