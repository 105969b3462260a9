//! The real server on a loopback socket, over TLS, as the API server talks to it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sidekey_webhook::server::{self, AppState, ServeOptions};
use sidekey_webhook::tls::Reloader;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use common::*;

struct Running {
    addr: SocketAddr,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Triggers shutdown and returns how long `serve` took to return.
    async fn shut_down(mut self) -> Duration {
        let started = std::time::Instant::now();
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("serve returns")
            .expect("serve does not panic");
        started.elapsed()
    }
}

async fn start(options: ServeOptions) -> Running {
    setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");

    let reloader = Reloader::load(&cert_path, &key_path).expect("certificate loads");
    let tls = reloader.server_config().expect("tls config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = server::router(AppState::new(settings()));
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = tokio::spawn(server::serve(listener, tls, app, shutdown, options));
    Running {
        addr,
        ca_pem: cert.cert.pem(),
        ca_der: cert.cert.der().clone(),
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn client(running: &Running) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(running.ca_pem.as_bytes()).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", running.addr)
        .build()
        .expect("client")
}

async fn tls_connect(
    running: &Running,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(running.ca_der.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(running.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake")
}

#[tokio::test]
async fn answers_a_review_over_tls_with_a_patch_that_applies() {
    let running = start(ServeOptions::default()).await;
    let url = format!("https://localhost:{}/mutate", running.addr.port());

    let response = client(&running)
        .post(&url)
        .header("content-type", "application/json")
        .body(POD_CREATE)
        .send()
        .await
        .expect("request over tls");
    assert_eq!(response.status(), 200);
    let response: Value = response.json().await.expect("JSON");

    let request = json(POD_CREATE);
    assert_eq!(response["response"]["uid"], request["request"]["uid"]);
    let pod = apply_response_patch(&response, &request["request"]["object"]);
    assert_eq!(container_names(&pod, "initContainers"), ["sidekey-agent"]);
    assert_eq!(container_names(&pod, "containers"), ["web"]);

    running.shut_down().await;
}

#[tokio::test]
async fn offers_http2_and_http1_by_alpn() {
    let running = start(ServeOptions::default()).await;
    for (offer, expected) in [
        (vec![&b"h2"[..], b"http/1.1"], &b"h2"[..]),
        (vec![&b"http/1.1"[..]], &b"http/1.1"[..]),
    ] {
        let tls = tls_connect(&running, &offer).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(expected));
    }
    running.shut_down().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_without_waiting_for_the_drain_timeout() {
    let options = ServeOptions {
        drain_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let running = start(options).await;
    let addr = running.addr;
    let client = client(&running);
    let url = format!("https://localhost:{}/healthz", addr.port());
    let status = client.get(&url).send().await.expect("healthz").status();
    assert_eq!(status, 200);

    // The client's pool still holds the keep-alive connection.
    let took = running.shut_down().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    let running = start(ServeOptions::default()).await;
    let mut tls = tls_connect(&running, &[b"http/1.1"]).await;

    // Send the headers and half the body, then ask the server to stop.
    let body = POD_CREATE.as_bytes();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(&body[..body.len() / 2]).await.expect("write");
    tls.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let Running {
        addr, stop, task, ..
    } = running;
    let _ = stop.expect("running").send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );

    tls.write_all(&body[body.len() / 2..]).await.expect("write");
    tls.flush().await.expect("flush");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .expect("the server answers and closes")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("705ab4f5-6393-11e8-b7cc-42010a800002"),
        "{response}"
    );

    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns")
        .expect("no panic");
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let running = start(options).await;
    let mut tcp = TcpStream::connect(running.addr).await.expect("connect");
    let mut buf = [0_u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    running.shut_down().await;
}

#[tokio::test]
async fn a_client_that_handshakes_and_then_says_nothing_is_closed() {
    let options = ServeOptions {
        idle_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let running = start(options).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tls = tls_connect(&running, &[alpn]).await;
        // HTTP/2 servers speak first (SETTINGS, then GOAWAY when closing); read
        // until the close, an end of stream or a reset both count.
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "the server keeps an idle {} connection open",
            String::from_utf8_lossy(alpn)
        );
    }

    // Requests on a kept-alive connection are still answered.
    let client = client(&running);
    let url = format!("https://localhost:{}/healthz", running.addr.port());
    for _ in 0..2 {
        let status = client.get(&url).send().await.expect("healthz").status();
        assert_eq!(status, 200);
    }
    running.shut_down().await;
}
