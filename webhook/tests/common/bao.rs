//! A real `bao server -dev` on a loopback port, killed on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools;

/// A running dev server; plain HTTP, or TLS with its own CA (`-dev-tls`).
pub struct DevServer {
    child: Child,
    pub addr: String,
    pub port: u16,
    /// The dev server's CA certificate with `-dev-tls`.
    pub ca_path: Option<PathBuf>,
    pub root_token: String,
    pub dir: tempfile::TempDir,
}

impl DevServer {
    pub fn start(tls: bool) -> DevServer {
        let dir = tempfile::tempdir().expect("tempdir");
        // The dev server also binds the cluster port, listen port + 1.
        let port = (0..50)
            .find_map(|_| {
                let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .ok()?
                    .local_addr()
                    .ok()?
                    .port();
                TcpListener::bind((Ipv4Addr::LOCALHOST, port.checked_add(1)?)).ok()?;
                Some(port)
            })
            .expect("two free adjacent loopback ports");
        let root_token = "root-webhook-tests".to_owned();
        let mut cmd = Command::new(tools::bao());
        cmd.args(["server", "-dev"])
            // Dev mode writes its root token to $HOME/.vault-token through a fixed temp
            // name; servers started at once with one HOME race on it and exit.
            .env("HOME", dir.path())
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={root_token}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (scheme, ca_path) = if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
            ("https", Some(dir.path().join("vault-ca.pem")))
        } else {
            ("http", None)
        };
        let child = cmd.spawn().expect("bao starts");
        let server = DevServer {
            child,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            port,
            ca_path,
            root_token,
            dir,
        };
        server.wait_listening();
        server
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ca_ready = self.ca_path.as_ref().is_none_or(|p| p.exists());
            if ca_ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Listening comes before unsealing; give the dev server a moment.
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "bao server -dev did not listen on {} within 30 s",
            self.addr
        );
    }

    /// A `bao` CLI command aimed at this server as root.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(tools::bao());
        cmd.env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        if let Some(ca) = &self.ca_path {
            cmd.env("BAO_CACERT", ca);
        }
        cmd
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
