//! The webhook under load: wrk posts a real AdmissionReview of a realistic pod over TLS
//! with keep-alive to the real `sidekey-webhook` binary, and then the same way to a
//! baseline server that runs the webhook's own TLS configuration and accept loop
//! (`sidekey_webhook::tls` and `server::serve`) but answers every POST with an empty
//! 200. The ratio of the two is what the admission logic itself costs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use sidekey_tests::process::{self, Process, guarded};
use sidekey_tests::tls::ServingCert;

/// The pod the Criterion benchmark also uses.
const POD: &str = include_str!("../../webhook/benches/realistic-pod.json");

/// One wrk run.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub label: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx answers plus socket errors.
    pub errors: u64,
}

/// Both servers at one concurrency.
#[derive(Debug, Clone)]
pub struct Pair {
    pub connections: u32,
    pub baseline: LoadResult,
    pub webhook: LoadResult,
}

#[derive(Debug, Clone)]
pub struct WebhookResult {
    pub threads: u32,
    pub duration_secs: u64,
    pub body_bytes: usize,
    /// One connection (latency without queueing), then several (throughput).
    pub pairs: Vec<Pair>,
}

/// Runs the load test on both servers.
pub fn run(bins: &Path, smoke: bool) -> Result<WebhookResult> {
    which("wrk")
        .context("wrk is not installed: `apt-get install -y wrk` (`make bench` does it)")?;
    let dir = tempfile::Builder::new()
        .prefix("sidekey-bench-webhook-")
        .tempdir()?;
    let cert = ServingCert::generate("sidekey-bench-ca", &["127.0.0.1", "localhost"])?;
    let files = cert.write(dir.path())?;

    let pod: serde_json::Value = serde_json::from_str(POD)?;
    let body = sidekey_tests::review::admission_review(&pod).to_string();
    let body_path = dir.path().join("review.json");
    std::fs::write(&body_path, &body)?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             local f = assert(io.open(\"{}\", \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body_path.display()
        ),
    )?;

    let client = sidekey_tests::tls::client_trusting(&cert.ca_pem)?;
    let (threads, duration) = if smoke { (1, 2) } else { (1, 15) };
    let concurrency = [1u32, 8];

    // Baseline first, then the webhook; each gets a short warm-up run first.
    let port = process::free_port()?;
    let mut cmd = guarded(std::env::current_exe()?);
    cmd.arg("baseline-server")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key);
    let baseline_proc = Process::spawn("baseline", cmd, dir.path())?;
    let url = format!("https://127.0.0.1:{port}/mutate");
    wait_answering(&client, &url, &body, false)?;
    let mut baselines = Vec::new();
    for &c in &concurrency {
        baselines.push(load(
            "baseline: same TLS server, empty 200",
            &url,
            &script,
            threads,
            c,
            duration,
        )?);
    }
    drop(baseline_proc);

    let port = process::free_port()?;
    let mut cmd = guarded(bins.join("sidekey-webhook"));
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .arg("--vault-addr")
        .arg("https://vault.vault.svc:8200")
        .arg("--vault-ca-file")
        .arg(&files.ca)
        .arg("--vault-check-interval")
        .arg("0s")
        .arg("--shutdown-delay")
        .arg("0s");
    let webhook_proc = Process::spawn("webhook", cmd, dir.path())?;
    let url = format!("https://127.0.0.1:{port}/mutate");
    wait_answering(&client, &url, &body, true)?;
    let mut pairs = Vec::new();
    for (&connections, baseline) in concurrency.iter().zip(baselines) {
        let webhook = load(
            "sidekey-webhook POST /mutate (pod mutated)",
            &url,
            &script,
            threads,
            connections,
            duration,
        )?;
        pairs.push(Pair {
            connections,
            baseline,
            webhook,
        });
    }
    drop(webhook_proc);

    Ok(WebhookResult {
        threads,
        duration_secs: duration,
        body_bytes: body.len(),
        pairs,
    })
}

/// Waits until `url` answers the review (and, for the webhook, with a patch).
fn wait_answering(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    expect_patch: bool,
) -> Result<()> {
    let answered = process::wait_for(
        "the server answering over TLS",
        Duration::from_secs(20),
        || {
            let text = sidekey_tests::rt::block_on(async {
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())?;
                r.text().await.ok()
            })?;
            Some(text)
        },
    )?;
    if expect_patch && !answered.contains("\"patch\"") {
        bail!("the webhook answered without a patch: {answered}");
    }
    Ok(())
}

fn load(
    label: &str,
    url: &str,
    script: &Path,
    threads: u32,
    connections: u32,
    secs: u64,
) -> Result<LoadResult> {
    let wrk = |secs: u64| -> Result<String> {
        let out = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .arg("-s")
            .arg(script)
            .arg(url)
            .output()
            .context("running wrk")?;
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    eprintln!("bench: wrk against {label} ...");
    wrk(1)?;
    let text = wrk(secs)?;
    parse_wrk(label, &text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Reads requests/s, the 50 % and 99 % latencies and the error counts from wrk's
/// `--latency` output.
fn parse_wrk(label: &str, text: &str) -> Result<LoadResult> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec line")?
        .trim()
        .parse()?;
    let percentile = |p: &str| -> Result<f64> {
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .with_context(|| format!("no {p} latency line"))?
            .trim();
        duration_ms(value).with_context(|| format!("unreadable latency {value:?}"))
    };
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(LoadResult {
        label: label.to_owned(),
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        errors,
    })
}

/// `812.00us`, `1.23ms`, `2.01s` → milliseconds.
fn duration_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    anyhow::ensure!(found, "{program} not found in PATH");
    Ok(())
}

/// The baseline: the webhook's TLS configuration and accept loop, answering an empty
/// 200 to every `POST /mutate` after reading the body. Runs until killed.
pub fn baseline_server(listen: SocketAddr, cert: &Path, key: &Path) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = sidekey_webhook::tls::Reloader::load(cert, key)?.server_config()?;
    let app = Router::new()
        .route("/mutate", post(|_body: Bytes| async { StatusCode::OK }))
        .route("/healthz", get(|| async { "ok\n" }));
    // Same runtime shape as the webhook's `#[tokio::main]`: one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        sidekey_webhook::server::serve(
            listener,
            tls,
            app,
            std::future::pending::<()>(),
            sidekey_webhook::server::ServeOptions::default(),
        )
        .await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_output() {
        let text = "Running 2s test @ https://127.0.0.1:1/mutate\n  1 threads and 4 connections\n\
            \x20 Latency Distribution\n     50%  812.00us\n     75%    1.01ms\n     90%    1.50ms\n     99%    3.20ms\n\
            \x20 12000 requests in 2.00s, 3.00MB read\n  Non-2xx or 3xx responses: 3\n\
            \x20 Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:   6000.50\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk("x", text).unwrap();
        assert_eq!(r.rps, 6000.5);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.p99_ms, 3.2);
        assert_eq!(r.errors, 6);
    }
}
