//! A real OpenBao dev server over TLS, one per harness, and `bao` CLI helpers.
//!
//! `bao server -dev -dev-tls` generates its own CA into `-dev-tls-cert-dir` and keeps
//! everything in memory. The extra `-config` file adds a file audit device, so a test
//! can search the audit log (OpenBao HMACs secret values there by default). Token
//! accessors are kept in clear (`hmac_accessor`), so [`crate::audit`] can tell which
//! agent made which request; an accessor grants nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::process::{self, Process};
use crate::{IoContext, Result, bins, failed};

/// How long the dev server may take to answer `sys/health`.
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long one CLI command may take.
const CLI_LIMIT: Duration = Duration::from_secs(20);

/// Records for the suite-wide leak scan the values of credential keys in `v` (a body
/// written or an answer read): by exact key name, so `token_policies` and the like stay
/// out.
fn suite_credentials(v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Array(a) => a.iter().for_each(suite_credentials),
        Value::Object(m) => m.iter().for_each(|(k, x)| match (k.as_str(), x) {
            (
                "password" | "jwt" | "client_token" | "private_key" | "secret_id",
                Value::String(s),
            ) => crate::leak::suite_value(s),
            _ => suite_credentials(x),
        }),
        _ => {}
    }
}

/// A running `bao server -dev -dev-tls`; killed on drop.
#[derive(Debug)]
pub struct OpenBao {
    process: Process,
    bao: PathBuf,
    addr: String,
    ca_path: PathBuf,
    audit_log: PathBuf,
    root_token: SecretString,
    // Last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts a dev server on a free loopback port and waits until it is unsealed and
    /// answering (bounded by 30 s).
    pub fn start() -> Result<OpenBao> {
        let bao = bins::bao()?;
        let dir = crate::tempdir("openbao-")?;
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).ctx(|| "creating OpenBao cert directory".into())?;
        let audit_log = dir.path().join("audit.log");
        let config = dir.path().join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n    hmac_accessor = \"false\"\n  }}\n}}\n",
                audit_log.display().to_string()
            ),
        )
        .ctx(|| "writing OpenBao config".into())?;

        // The dev server also binds the cluster port (listen port + 1).
        let port = process::wait_for("two free adjacent ports", Duration::from_secs(5), || {
            let p = process::free_port().ok()?;
            std::net::TcpListener::bind(("127.0.0.1", p + 1)).ok()?;
            Some(p)
        })?;
        let root_token = format!("root-{}", crate::random_id(24));
        // Kept out of the suite-wide leak scan: `bao server -dev` prints the root token
        // it was given in its own startup banner, by design of dev mode.
        crate::leak::suite_exempt(&root_token);
        let mut cmd = process::guarded(&bao);
        cmd.arg("server")
            .arg("-dev")
            .arg("-dev-tls")
            .arg(format!("-dev-tls-cert-dir={}", certs.display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-config={}", config.display()))
            .env("BAO_LOG_LEVEL", "info")
            // Dev mode writes its root token to $HOME/.vault-token through a fixed temp
            // name; servers started at once with one HOME race on it and exit.
            .env("HOME", dir.path());
        let process = Process::spawn("openbao", cmd, dir.path())?;

        let mut bao_server = OpenBao {
            process,
            bao,
            addr: format!("https://127.0.0.1:{port}"),
            ca_path: certs.join("vault-ca.pem"),
            audit_log,
            root_token: SecretString::from(root_token),
            _dir: dir,
        };
        bao_server.wait_healthy()?;
        Ok(bao_server)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let url = format!("{}/v1/sys/health", self.addr);
        let ca_path = self.ca_path.clone();
        let result = process::wait_for("OpenBao sys/health answering", START_LIMIT, || {
            if !matches!(self.process.try_status(), Ok(None)) {
                return Some(Err(failed("OpenBao exited during startup")));
            }
            let ca = std::fs::read_to_string(&ca_path).ok()?;
            let client = crate::tls::client_trusting(&ca).ok()?;
            let ok = crate::rt::block_on(async {
                match client.get(&url).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                }
            });
            ok.then_some(Ok(()))
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(failed(format!("{e}\n{}", self.process.logs()))),
        }
    }

    /// Base address, `https://127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The dev server's CA certificate file (`vault-ca.pem`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> Result<String> {
        std::fs::read_to_string(&self.ca_path).ctx(|| format!("reading {}", self.ca_path.display()))
    }

    /// The root token. Test-only; never print it.
    pub fn root_token(&self) -> &str {
        self.root_token.expose_secret()
    }

    /// The file audit log.
    pub fn audit_log(&self) -> &Path {
        &self.audit_log
    }

    /// Kills the server (SIGKILL) as a crash or an outage would; its address then
    /// refuses connections.
    /// Takes `&self` so a test can stop a server that tenants still borrow.
    pub fn kill(&self) -> Result<()> {
        process::send_signal(self.process.pid(), "KILL")?;
        let addr = self.addr.trim_start_matches("https://").to_owned();
        process::wait_for("the killed OpenBao to stop listening", START_LIMIT, || {
            std::net::TcpStream::connect(&addr).is_err().then_some(())
        })
    }

    /// The server's own output, for failure reports.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// A `bao` command with the address, CA and root token set.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bao);
        cmd.env("BAO_ADDR", &self.addr)
            .env("BAO_CACERT", &self.ca_path)
            .env("BAO_TOKEN", self.root_token.expose_secret())
            .env("BAO_FORMAT", "json");
        cmd
    }

    /// Runs `bao <args>` as root and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        self.cli_with_stdin(args, None)
    }

    /// Runs `bao <args>` with `stdin` (for `-` arguments: policies, JSON bodies).
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let what = format!("bao {}", args.first().copied().unwrap_or(""));
        let out = process::run_with_stdin(&what, cmd, stdin.map(str::as_bytes), CLI_LIMIT)
            .map_err(|e| failed(format!("`bao {}`: {e}", args.join(" "))))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `bao write <path> -` with a JSON body.
    pub fn write_json(&self, path: &str, body: &serde_json::Value) -> Result<String> {
        // Passwords and JWTs sent, tokens received: secrets for the suite-wide leak scan.
        suite_credentials(body);
        let out = self.cli_with_stdin(&["write", path, "-"], Some(&body.to_string()))?;
        if let Ok(answer) = serde_json::from_str(&out) {
            suite_credentials(&answer);
        }
        Ok(out)
    }

    /// `bao kv put <path>` with `data` as the secret's keys (sent on stdin, so values
    /// never appear in a process list).
    pub fn kv_put(&self, path: &str, data: &serde_json::Value) -> Result<()> {
        crate::leak::Secrets::new().add_all_values("a KV value", data);
        self.cli_with_stdin(&["kv", "put", path, "-"], Some(&data.to_string()))
            .map(|_| ())
    }

    /// `bao kv get <path>`: the secret's current data.
    pub fn kv_get(&self, path: &str) -> Result<serde_json::Value> {
        let out = self.cli(&["kv", "get", path])?;
        let doc: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| failed(format!("`bao kv get {path}` printed non-JSON: {e}")))?;
        Ok(doc["data"]["data"].clone())
    }

    /// `bao policy write <name> -` with HCL on stdin.
    pub fn policy_write(&self, name: &str, hcl: &str) -> Result<()> {
        self.cli_with_stdin(&["policy", "write", name, "-"], Some(hcl))
            .map(|_| ())
    }

    /// Looks up a token's accessor as root: `Ok(true)` if the token is still valid.
    pub fn accessor_valid(&self, accessor: &str) -> Result<bool> {
        let mut cmd = self.command();
        cmd.args(["token", "lookup", "-accessor", accessor]);
        match process::run("bao token lookup", cmd, CLI_LIMIT) {
            Ok(_) => Ok(true),
            Err(crate::Error::Failed(msg)) if msg.contains("invalid accessor") => Ok(false),
            Err(e) => Err(e),
        }
    }
}
