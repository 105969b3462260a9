//! Certificate rotation under load: client tasks post reviews continuously, each over a
//! fresh TLS connection, while the serving certificate's files are swapped the way the
//! kubelet updates a Secret volume. No request may fail, both certificates must be
//! seen, and `/metrics` must follow the swaps.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use sidekey_webhook::metrics::Metrics;
use sidekey_webhook::server::{self, AppState, ServeOptions};
use sidekey_webhook::tls::Reloader;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use common::*;

const CLIENTS: usize = 4;
const SWAPS: usize = 6;
const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
    not_after: i64,
}

/// Two serving certificates for `localhost` from one CA, with different expiry dates.
fn pki() -> (CertificateDer<'static>, Leaf, Leaf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |year| {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
            not_after: params.not_after.unix_timestamp(),
        }
    };
    (ca.der().clone(), leaf(2040), leaf(2041))
}

/// Lays out `dir` as the kubelet does a Secret volume and swaps `..data` atomically.
fn publish(dir: &Path, generation: usize, leaf: &Leaf) {
    let name = format!("..gen{generation}");
    let gen_dir = dir.join(&name);
    std::fs::create_dir(&gen_dir).expect("mkdir");
    std::fs::write(gen_dir.join("tls.crt"), &leaf.cert).expect("write");
    std::fs::write(gen_dir.join("tls.key"), &leaf.key).expect("write");
    let tmp = dir.join("..data_tmp");
    symlink(&name, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap");
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{file}"), link).expect("symlink");
        }
    }
}

/// One request over a fresh connection: (served certificate, HTTP response text).
async fn request(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    method_path: &str,
    body: &str,
) -> Result<(CertificateDer<'static>, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?[0]
        .clone();
    let head = format!(
        "{method_path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.write_all(body.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok((served, String::from_utf8_lossy(&response).into_owned()))
}

fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_files_under_load_fails_no_request_and_serves_both_certificates() {
    setup();
    let (ca, a, b) = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    publish(dir.path(), 0, &a);

    let metrics = Arc::new(Metrics::new());
    let reloader = Reloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
        .expect("loads")
        .with_metrics(Arc::clone(&metrics));
    let tls = reloader.server_config().expect("tls config");
    let watcher = tokio::spawn(reloader.watch(Duration::from_millis(20)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut state = AppState::new(settings());
    state.metrics = Arc::clone(&metrics);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        tls,
        server::router(state),
        async {
            let _ = stopped.await;
        },
        ServeOptions::default(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Full handshakes only: a resumed TLS 1.3 session reports the certificate of the
    // session it resumed, not what the server would present now.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let (saw_a, saw_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (connector, stop, ok) = (connector.clone(), Arc::clone(&stop), Arc::clone(&ok));
        let (saw_a, saw_b) = (Arc::clone(&saw_a), Arc::clone(&saw_b));
        let (a_der, b_der) = (a.der.clone(), b.der.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: the swaps take about 2 s; 20 000 requests per client is far more.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match request(&connector, addr, "POST /mutate", POD_CREATE).await {
                    Ok((served, response))
                        if response.starts_with("HTTP/1.1 200") && response.contains(UID) =>
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if served == a_der {
                            saw_a.fetch_add(1, Ordering::Relaxed);
                        } else if served == b_der {
                            saw_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((_, response)) => {
                        failures.push(response.lines().next().unwrap_or("").to_owned())
                    }
                    Err(error) => failures.push(error),
                }
            }
            failures
        }));
    }

    let mut last = &a;
    for generation in 1..=SWAPS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        last = if generation % 2 == 1 { &b } else { &a };
        publish(dir.path(), generation, last);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }

    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (saw_a, saw_b) = (saw_a.load(Ordering::Relaxed), saw_b.load(Ordering::Relaxed));
    assert!(
        saw_a > 0 && saw_b > 0,
        "served A {saw_a} times, B {saw_b} times"
    );
    assert_eq!(saw_a + saw_b, ok);
    eprintln!("{ok} reviews over fresh connections, none failed; A served {saw_a}, B {saw_b}");

    // The metrics saw the same: every review counted, the expiry of the certificate in
    // use, and the reloads.
    let (_, scraped) = request(&connector, addr, "GET /metrics", "")
        .await
        .expect("scrape");
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    let mutated = sample(
        &scraped,
        "sidekey_webhook_admissions_total{outcome=\"mutated\"}",
    );
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let ok_f = ok as f64;
    assert_eq!(mutated, ok_f);
    assert_eq!(
        sample(&scraped, "sidekey_webhook_admission_duration_seconds_count"),
        ok_f
    );
    #[allow(clippy::cast_precision_loss, reason = "exact timestamps")]
    let want_expiry = last.not_after as f64;
    assert_eq!(
        sample(
            &scraped,
            "sidekey_webhook_tls_certificate_expiry_timestamp_seconds"
        ),
        want_expiry
    );
    let reloads = sample(&scraped, "sidekey_webhook_tls_certificate_reloads_total");
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let swaps = SWAPS as f64;
    assert!((1.0..=swaps).contains(&reloads), "{reloads} reloads");

    let _ = stop_server.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("serve returns")
        .expect("no panic");
    watcher.abort();
}
