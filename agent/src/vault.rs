//! A small Vault/OpenBao HTTP client: exactly the calls the agent makes, with errors an
//! operator can act on.
//!
//! We keep our own client rather than a general-purpose crate because the agent needs
//! lease-bearing raw reads and Vault's `errors` array in every failure, and because every
//! failure must say *which* of these happened: the TLS certificate was not trusted or did
//! not match the name, nothing answered at the address, the request timed out, or Vault
//! answered with a status. See [`Error`].
//!
//! # Secrets
//!
//! The client token and every secret payload are held in types whose `Debug` prints no
//! value ([`Token`], [`SecretData`]). Error messages carry Vault's `errors` strings (which
//! name paths and roles, never values) and never the body of a successful read. A body
//! that cannot be decoded is reported by its size only, since decoder messages can quote
//! the offending value.
//!
//! # TLS
//!
//! Verification is on unless `tls_skip_verify` is set, which the agent announces with a
//! warning at every start. With `ca_pem` set, only those CAs are trusted; without it,
//! the system roots (reqwest's platform verifier, which reads the image's CA bundle).

use std::{fmt, time::Duration};

use reqwest::{Method, StatusCode, Url, header::HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::contract::config::VaultConfig;

/// Upper bound for one request, connection included. Vault answers in milliseconds; a
/// request this slow is better retried than waited for.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for the TCP and TLS connection alone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Vault call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `vault.ca_pem` or `vault.ca_file` holds no usable PEM certificate, or the file
    /// cannot be read. The message names which.
    #[error("the Vault CA bundle is not usable: {0}")]
    CaPem(String),
    /// `vault.addr` is not an `http(s)://host[:port]` URL.
    #[error("vault.addr {addr:?} is not a usable URL: {reason}")]
    Addr { addr: String, reason: String },
    /// The HTTP client could not be built (a TLS backend problem, not an input one).
    #[error("building the HTTP client failed: {0}")]
    Build(#[source] reqwest::Error),
    /// The TLS handshake failed: the certificate is not trusted, does not match the
    /// host name, or has expired.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    /// Nothing answered: connection refused, host unreachable, name not resolved, or the
    /// connection dropped mid-request.
    #[error("cannot reach Vault at {addr}: {reason}")]
    Transport { addr: String, reason: String },
    /// The request took longer than [`REQUEST_TIMEOUT`].
    #[error("request {method} {path} to {addr} timed out after {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        method: Method,
        path: String,
        addr: String,
    },
    /// The TCP connection and TLS handshake took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to Vault at {addr} (TCP and TLS) timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
    /// Vault answered 403: the token may not do this, or the token is gone.
    #[error("permission denied (403) on {path}{}", errors_suffix(errors))]
    Forbidden { path: String, errors: Vec<String> },
    /// Vault answered 404: no secret (or no mount) at this path.
    #[error("nothing found (404) at {path}{}", errors_suffix(errors))]
    NotFound { path: String, errors: Vec<String> },
    /// Any other non-success status.
    #[error("Vault answered {status} on {path}{}", errors_suffix(errors))]
    Server {
        status: u16,
        path: String,
        errors: Vec<String>,
    },
    /// A success status with a body that is not the expected JSON. Only the size is
    /// reported: the body may hold a secret.
    #[error("unexpected response from {path} ({bytes} bytes): {what}")]
    Decode {
        path: String,
        bytes: usize,
        what: &'static str,
    },
    /// A call that needs a token was made before logging in.
    #[error("no Vault token: not logged in")]
    NoToken,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn errors_suffix(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        // Vault's messages often end in newlines and tabs from Go's multierror.
        let joined: Vec<String> = errors
            .iter()
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        format!(": {}", joined.join("; "))
    }
}

impl Error {
    /// Worth retrying unchanged: Vault unreachable, slow, sealed, overloaded or rate
    /// limiting. Configuration, TLS and permission problems are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } | Error::ConnectTimeout { .. } => true,
            Error::Server { status, .. } => *status >= 500 || *status == 429 || *status == 412,
            _ => false,
        }
    }
}

/// Largest response body read from Vault: eight times integrated storage's default
/// entry size limit, half the default secrets volume, and well inside the agent's
/// default memory limit once decoded.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// A Vault token from a login or renewal.
#[derive(Clone)]
pub struct Token {
    pub client_token: SecretString,
    /// Seconds the token lives from now; 0 means it does not expire.
    pub lease_duration: u64,
    pub renewable: bool,
    /// The token's accessor: identifies the token (for lookup and revocation by an
    /// operator) without granting its use, so it may be logged.
    pub accessor: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("client_token", &"[REDACTED]")
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("accessor", &self.accessor)
            .finish()
    }
}

/// What `lookup-self` says about the current token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Seconds left; 0 for a token that does not expire.
    pub ttl: u64,
    pub renewable: bool,
    pub accessor: Option<String>,
}

/// The `data` of a secret read. `Debug` shows the keys of an object, never values.
#[derive(Clone, PartialEq)]
pub struct SecretData(pub Value);

impl SecretData {
    pub fn expose(&self) -> &Value {
        &self.0
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Value::Object(map) => {
                let keys: Vec<&String> = map.keys().collect();
                write!(f, "SecretData {{ keys: {keys:?}, values: [REDACTED] }}")
            }
            _ => f.write_str("SecretData([REDACTED])"),
        }
    }
}

/// A secret read: its data and lease.
#[derive(Debug, Clone)]
pub struct SecretResponse {
    pub data: SecretData,
    /// Empty for KV secrets, which have no lease.
    pub lease_id: String,
    /// Seconds; for KV this is only a suggested refresh interval (often 0).
    pub lease_duration: u64,
    pub renewable: bool,
}

/// What a lease renewal granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Seconds the lease now lives from the renewal.
    pub lease_duration: u64,
    pub renewable: bool,
}

/// What `sys/internal/ui/mounts/<path>` says about the mount holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's path with a trailing slash, e.g. `secret/`.
    pub path: String,
    /// The engine type, e.g. `kv`.
    pub kind: String,
    /// `options.version` (`"2"` for KV v2), if any.
    pub version: Option<String>,
}

/// A client for one Vault server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `vault.addr` as configured, for messages.
    addr: String,
    namespace: Option<HeaderValue>,
    token: Option<HeaderValue>,
    /// Counts every request by outcome, when set.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("namespace", &self.namespace)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl Client {
    /// Builds a client from the agent configuration. Needs a process-wide rustls
    /// crypto provider to be installed.
    pub fn new(config: &VaultConfig) -> Result<Self> {
        let addr = config.addr.trim_end_matches('/').to_owned();
        let mut base = parse_addr(&addr)?;

        // reqwest is built without a default crypto provider and panics without one.
        // `main` installs ring first; this makes the library safe to use on its own
        // (tests, other binaries) and is a no-op once a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The agent talks to one server; redirects (to a standby's address, say)
            // would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .user_agent(concat!("sidekey-agent/", env!("CARGO_PKG_VERSION")));
        // Both sources are trusted together; the system roots only without either.
        let mut roots = Vec::new();
        if let Some(pem) = &config.ca_pem {
            roots.extend(parse_ca_pem(pem, "vault.ca_pem")?);
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Error::CaPem(format!("vault.ca_file {path}: cannot be read: {e}")))?;
            roots.extend(parse_ca_pem(&pem, &format!("vault.ca_file {path}"))?);
        }
        if !roots.is_empty() {
            builder = builder.tls_certs_only(roots);
        }
        if let Some(name) = config.tls_server_name.as_deref().filter(|n| !n.is_empty()) {
            // Verify the certificate against `name` (and send it as SNI) while still
            // connecting to the configured host: the URL carries `name`, and the
            // resolver maps it back to the real host at every connection.
            let real_host = base
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            base.set_host(Some(name)).map_err(|e| Error::Addr {
                addr: addr.clone(),
                reason: format!("vault.tls_server_name {name:?} is not a host name: {e}"),
            })?;
            builder = builder.dns_resolver(std::sync::Arc::new(ServerNameResolver {
                server_name: name.to_ascii_lowercase(),
                real_host,
            }));
        }
        if config.tls_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(Error::Build)?;

        let namespace = match &config.namespace {
            Some(ns) if !ns.is_empty() => {
                Some(HeaderValue::from_str(ns).map_err(|_| Error::Addr {
                    addr: addr.clone(),
                    reason: format!("vault.namespace {ns:?} is not a valid header value"),
                })?)
            }
            _ => None,
        };

        Ok(Client {
            http,
            base,
            addr,
            namespace,
            token: None,
            metrics: None,
        })
    }

    /// Counts every following request in `metrics`.
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// The configured address, for log fields.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Uses `token` for every following call.
    pub fn set_token(&mut self, token: &SecretString) {
        // A token is ASCII; anything else cannot be sent and is treated as no token.
        self.token = HeaderValue::from_str(token.expose_secret())
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
    }

    /// Forgets the token (after revocation, or when Vault says it is gone).
    pub fn clear_token(&mut self) {
        self.token = None;
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Logs in with the Kubernetes auth method mounted at `mount_path` (e.g.
    /// `auth/kubernetes`) and keeps the token for later calls.
    pub async fn login_kubernetes(
        &mut self,
        mount_path: &str,
        role: &str,
        jwt: &SecretString,
    ) -> Result<Token> {
        let path = format!("{}/login", mount_path.trim_matches('/'));
        let body = json!({ "role": role, "jwt": jwt.expose_secret() });
        let token = self
            .auth_call(Method::POST, &path, Some(body), false)
            .await?;
        self.set_token(&token.client_token);
        Ok(token)
    }

    /// Reads a secret at `path` (a logical path such as `secret/data/app`).
    pub async fn read(&self, path: &str) -> Result<SecretResponse> {
        self.fetch(path, None).await
    }

    /// Writes `params` to `path` and returns the response as a secret, for endpoints
    /// that issue something on a write (`pki/issue/<role>`).
    pub async fn write(
        &self,
        path: &str,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<SecretResponse> {
        self.fetch(path, Some(json!(params))).await
    }

    async fn fetch(&self, path: &str, body: Option<Value>) -> Result<SecretResponse> {
        let method = if body.is_some() {
            Method::PUT
        } else {
            Method::GET
        };
        let (body, bytes) = self.call(method, path, body, true).await?;
        let decode = |what| Error::Decode {
            path: path.to_owned(),
            bytes,
            what,
        };
        let mut body = body.ok_or_else(|| decode("empty body"))?;
        let data = match body.get_mut("data").map(Value::take) {
            Some(d @ Value::Object(_)) => d,
            _ => return Err(decode("no \"data\" object")),
        };
        Ok(SecretResponse {
            data: SecretData(data),
            lease_id: body
                .get("lease_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            lease_duration: body
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            renewable: body
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// Which mount holds `path`, and its type. Vault answers for tokens that have any
    /// capability under the path, which the default policy plus a read grant gives.
    pub async fn mount_info(&self, path: &str) -> Result<MountInfo> {
        let ui_path = format!("sys/internal/ui/mounts/{}", path.trim_matches('/'));
        let (body, bytes) = self.call(Method::GET, &ui_path, None, true).await?;
        let data = body.as_ref().and_then(|b| b.get("data"));
        let field = |name: &str| data.and_then(|d| d.get(name)).and_then(Value::as_str);
        let (Some(mount), Some(kind)) = (field("path"), field("type")) else {
            return Err(Error::Decode {
                path: ui_path,
                bytes,
                what: "no mount path or type",
            });
        };
        let version = data
            .and_then(|d| d.get("options"))
            .and_then(|o| o.get("version"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(MountInfo {
            path: mount.to_owned(),
            kind: kind.to_owned(),
            version,
        })
    }

    /// Facts about the current token. A 403 means the token is gone (revoked or expired).
    pub async fn lookup_self(&self) -> Result<TokenInfo> {
        let path = "auth/token/lookup-self";
        let (body, bytes) = self.call(Method::GET, path, None, true).await?;
        let data = body
            .as_ref()
            .and_then(|b| b.get("data"))
            .ok_or(Error::Decode {
                path: path.into(),
                bytes,
                what: "no \"data\" object",
            })?;
        Ok(TokenInfo {
            ttl: data.get("ttl").and_then(Value::as_u64).unwrap_or(0),
            renewable: data
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            accessor: data
                .get("accessor")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Extends the current token's lease by `increment` seconds; Vault may grant less
    /// (the token's max TTL).
    pub async fn renew_self(&mut self, increment: u64) -> Result<Token> {
        let body = json!({ "increment": increment });
        let token = self
            .auth_call(Method::POST, "auth/token/renew-self", Some(body), true)
            .await?;
        self.set_token(&token.client_token);
        Ok(token)
    }

    /// Revokes the current token (and every lease it created) and forgets it.
    pub async fn revoke_self(&mut self) -> Result<()> {
        self.call(Method::POST, "auth/token/revoke-self", None, true)
            .await?;
        self.clear_token();
        Ok(())
    }

    /// Revokes `token`, which is not the current one (a token replaced by a new login),
    /// with every lease it created. Needs nothing beyond the default policy.
    pub async fn revoke_other(&self, token: &SecretString) -> Result<()> {
        let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| Error::NoToken)?;
        value.set_sensitive(true);
        self.call_as(Method::POST, "auth/token/revoke-self", None, Some(value))
            .await?;
        Ok(())
    }

    /// Extends a lease by `increment` seconds (`sys/leases/renew`, in the default
    /// policy). Returns the seconds granted, which may be less (the lease's max TTL).
    pub async fn renew_lease(&self, lease_id: &str, increment: u64) -> Result<LeaseGrant> {
        let path = "sys/leases/renew";
        let body = json!({ "lease_id": lease_id, "increment": increment });
        let (body, bytes) = self.call(Method::PUT, path, Some(body), true).await?;
        let body = body.ok_or(Error::Decode {
            path: path.into(),
            bytes,
            what: "empty body",
        })?;
        Ok(LeaseGrant {
            lease_duration: body
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            renewable: body
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// Revokes one lease through `sys/leases/revoke/<lease_id>`: the path form lets a
    /// policy grant it per secrets path (`sys/leases/revoke/database/creds/app/*`).
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<()> {
        let path = format!("sys/leases/revoke/{}", lease_id.trim_matches('/'));
        self.call(Method::PUT, &path, None, true).await?;
        Ok(())
    }

    async fn auth_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        with_token: bool,
    ) -> Result<Token> {
        let (body, bytes) = self.call(method, path, body, with_token).await?;
        let decode = |what| Error::Decode {
            path: path.to_owned(),
            bytes,
            what,
        };
        let auth = body
            .as_ref()
            .and_then(|b| b.get("auth"))
            .filter(|a| a.is_object())
            .ok_or_else(|| decode("no \"auth\" object"))?;
        let client_token = auth
            .get("client_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| decode("no client_token"))?;
        Ok(Token {
            client_token: SecretString::from(client_token),
            lease_duration: auth
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            renewable: auth
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            accessor: auth
                .get("accessor")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        })
    }

    /// One request. Returns the decoded JSON body of a success (`None` for 204) and its
    /// size, or a classified [`Error`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        with_token: bool,
    ) -> Result<(Option<Value>, usize)> {
        let token = if with_token {
            Some(self.token.clone().ok_or(Error::NoToken)?)
        } else {
            None
        };
        let result = self.call_as(method, path, body, token).await;
        if let Some(m) = &self.metrics {
            m.request(&result);
        }
        result
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<HeaderValue>,
    ) -> Result<(Option<Value>, usize)> {
        let url = self.url(path);
        let mut req = self.http.request(method.clone(), url);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns.clone());
        }
        if let Some(token) = token {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(body) = &body {
            req = req.json(body);
        }

        let resp = req
            .send()
            .await
            .map_err(|e| self.classify(&e, &method, path))?;
        let status = resp.status();
        // Read in chunks up to a bound: a server (`vault-addr` may name any) must not
        // make the agent buffer more than it can hold.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.classify(&e, &method, path))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Error::Decode {
                    path: path.to_owned(),
                    bytes: bytes.len() + chunk.len(),
                    what: "larger than the 8 MiB the agent reads",
                });
            }
            bytes.extend_from_slice(&chunk);
        }

        if status.is_success() {
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok((None, bytes.len()));
            }
            // Decoding into `Value` fails only on syntax; its message gives a line and
            // column, never content. Still, report size only.
            let value: Value = serde_json::from_slice(&bytes).map_err(|_| Error::Decode {
                path: path.to_owned(),
                bytes: bytes.len(),
                what: "not JSON",
            })?;
            return Ok((Some(value), bytes.len()));
        }

        // Error bodies are `{"errors": [...]}` with messages naming paths and roles.
        let errors: Vec<String> = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("errors").cloned())
            .and_then(|e| serde_json::from_value(e).ok())
            .unwrap_or_default();
        let path = path.to_owned();
        Err(match status {
            StatusCode::FORBIDDEN => Error::Forbidden { path, errors },
            StatusCode::NOT_FOUND => Error::NotFound { path, errors },
            s => Error::Server {
                status: s.as_u16(),
                path,
                errors,
            },
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        {
            // `base` was checked to be a base URL in `parse_addr`, so this is `Ok`.
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push("v1");
                // Each segment is percent-encoded, so `?` or `#` in a path stay in it.
                segments.extend(path.split('/').filter(|s| !s.is_empty()));
            }
        }
        url
    }

    fn classify(&self, err: &reqwest::Error, method: &Method, path: &str) -> Error {
        let addr = self.addr.clone();
        if let Some(reason) = tls_reason(err) {
            return Error::Tls { addr, reason };
        }
        if err.is_timeout() && err.is_connect() {
            return Error::ConnectTimeout { addr };
        }
        if err.is_timeout() {
            return Error::Timeout {
                method: method.clone(),
                path: path.to_owned(),
                addr,
            };
        }
        Error::Transport {
            addr,
            reason: transport_reason(err),
        }
    }
}

/// The CA certificates in a PEM bundle, each checked to be a usable trust anchor, so a
/// broken bundle is reported as such (exit 64) and not as a TLS failure later.
fn parse_ca_pem(pem: &str, source: &str) -> Result<Vec<reqwest::Certificate>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut certs = Vec::new();
    for (n, der) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let der = der.map_err(|e| {
            Error::CaPem(format!(
                "{source}: PEM certificate #{} cannot be decoded: {e}",
                n + 1
            ))
        })?;
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| {
                Error::CaPem(format!(
                    "{source}: certificate #{} is not a usable CA certificate: {e}",
                    n + 1
                ))
            })?;
        certs.push(reqwest::Certificate::from_der(&der).map_err(Error::Build)?);
    }
    if certs.is_empty() {
        return Err(Error::CaPem(format!(
            "{source} contains no PEM certificate"
        )));
    }
    Ok(certs)
}

/// Resolves `vault.tls_server_name` to the address of the host in `vault.addr`, and
/// every other name normally.
struct ServerNameResolver {
    server_name: String,
    real_host: String,
}

impl reqwest::dns::Resolve for ServerNameResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.server_name) {
            self.real_host.clone()
        } else {
            name.as_str().to_owned()
        };
        Box::pin(async move {
            // Port 0: the connector fills in the URL's port.
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn parse_addr(addr: &str) -> Result<Url> {
    let bad = |reason: &str| Error::Addr {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(addr).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be https:// (or http://)"));
    }
    if url.host_str().is_none() || url.cannot_be_a_base() {
        return Err(bad("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(url)
}

/// Visits `err` and everything inside it: its `source()` chain and, for `io::Error`s,
/// the error they wrap (whose own `source()` skips it: hyper-rustls nests the rustls
/// error two `io::Error`s deep). Depth-bounded: a cycle would be a bug in a dependency
/// that must not hang the agent.
fn visit(
    err: &(dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    fn go(
        e: &(dyn std::error::Error + 'static),
        f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
        depth: usize,
    ) {
        if depth > 16 {
            return;
        }
        f(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            go(inner, f, depth + 1);
        } else if let Some(source) = e.source() {
            go(source, f, depth + 1);
        }
    }
    go(err, f, 0);
}

fn tls_reason(err: &reqwest::Error) -> Option<String> {
    let mut found = None;
    visit(err, &mut |e| {
        if found.is_none()
            && let Some(r) = e.downcast_ref::<rustls::Error>()
        {
            found = Some(describe_rustls(r));
        }
    });
    found
}

fn describe_rustls(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "Vault's certificate is not trusted (unknown issuer): \
                 vault.ca_pem and vault.ca_file (or the system roots, if both are unset) \
                 do not contain the CA that signed it"
                .into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "Vault's certificate does not match the expected name: \
                 vault.tls_server_name if set, else the host in vault.addr (name mismatch)"
                    .into()
            }
            C::Expired | C::ExpiredContext { .. } => "Vault's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "Vault's certificate is not valid yet (check the clock)".into()
            }
            // Seen when a trusted CA has the issuer's name but not its key: another CA
            // of the same name, or the CA from before a rotation.
            C::BadSignature => "Vault's certificate is not trusted (bad signature): it was \
                 not signed by the CA of that name in vault.ca_pem or vault.ca_file, which \
                 may be another CA with the same name, or the CA from before a rotation"
                .into(),
            other => format!("Vault's certificate was rejected: {other:?}"),
        },
        other => other.to_string(),
    }
}

fn transport_reason(err: &reqwest::Error) -> String {
    use std::io::ErrorKind as K;
    // The innermost message is the most specific (a DNS failure, say); reqwest's own
    // top-level text adds only the URL, which the error already names.
    let mut kind = None;
    let mut innermost = err.to_string();
    visit(err, &mut |e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() != K::Other
        {
            kind = Some(io.kind());
        }
        innermost = e.to_string();
    });
    match kind {
        Some(K::ConnectionRefused) => "connection refused (is Vault listening there?)".into(),
        Some(K::HostUnreachable | K::NetworkUnreachable) => format!("unreachable: {innermost}"),
        Some(K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe) => {
            format!("connection dropped: {innermost}")
        }
        _ => innermost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_does_not_print_the_token() {
        let token = Token {
            client_token: SecretString::from("s.verysecrettoken"),
            lease_duration: 60,
            renewable: true,
            accessor: Some("acc123".into()),
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("verysecret"), "{shown}");
        assert!(shown.contains("acc123"), "{shown}");
    }

    #[test]
    fn secret_data_debug_shows_keys_not_values() {
        let data = SecretData(json!({"password": "hunter2", "nested": {"k": "inner-secret"}}));
        let resp = SecretResponse {
            data,
            lease_id: String::new(),
            lease_duration: 0,
            renewable: false,
        };
        let shown = format!("{resp:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("inner-secret"), "{shown}");
        assert!(shown.contains("password"), "{shown}");
    }

    #[test]
    fn client_debug_does_not_print_the_token() {
        let mut client = Client::new(&VaultConfig {
            addr: "http://127.0.0.1:1".into(),
            ca_pem: None,
            namespace: Some("team-a".into()),
            ..Default::default()
        })
        .unwrap();
        client.set_token(&SecretString::from("s.anothersecret"));
        let shown = format!("{client:?}");
        assert!(!shown.contains("anothersecret"), "{shown}");
    }

    #[test]
    fn urls_are_built_under_v1_with_segments_escaped() {
        let client = Client::new(&VaultConfig {
            addr: "https://vault.example:8200/".into(),
            ca_pem: None,
            namespace: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            client.url("secret/data/app").as_str(),
            "https://vault.example:8200/v1/secret/data/app"
        );
        assert_eq!(
            client.url("/secret/odd?name#x/").as_str(),
            "https://vault.example:8200/v1/secret/odd%3Fname%23x"
        );
    }

    #[test]
    fn refuses_unusable_addresses_and_ca_bundles() {
        for addr in ["vault:8200", "ftp://vault", "https://vault?x=1", ""] {
            let err = Client::new(&VaultConfig {
                addr: addr.into(),
                ca_pem: None,
                namespace: None,
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(err, Error::Addr { .. }), "{addr:?}: {err}");
        }
        let err = Client::new(&VaultConfig {
            addr: "https://vault:8200".into(),
            ca_pem: Some("not a certificate".into()),
            namespace: None,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::CaPem(_)), "{err}");
    }

    #[test]
    fn vault_error_strings_are_flattened_into_the_message() {
        let err = Error::Forbidden {
            path: "secret/data/app".into(),
            errors: vec!["1 error occurred:\n\t* permission denied\n\n".into()],
        };
        assert_eq!(
            err.to_string(),
            "permission denied (403) on secret/data/app: 1 error occurred: * permission denied"
        );
    }
}
