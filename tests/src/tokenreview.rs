//! A stand-in Kubernetes API server that serves only
//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, over HTTPS, and the signing key
//! for projected service-account tokens it accepts.
//!
//! Unlike a mock that says yes, it does what the real API server does for a bound
//! token: verifies the ES256 signature against the key that minted it, checks `exp` and
//! `nbf`, intersects the requested audiences with the token's, and answers with the
//! service account's username and uid. OpenBao then compares those with the JWT's
//! claims, so a token for another account or audience fails as it would in a cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::tls::ServingCert;
use crate::{Result, failed};

/// Path OpenBao calls.
pub const TOKENREVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Issuer written into minted tokens (a cluster's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A service account as the token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The pod a bound token is bound to (optional claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

/// The ES256 (P-256) key that signs and verifies test service-account tokens.
pub struct JwtKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl JwtKey {
    /// A fresh random key.
    pub fn generate() -> Result<JwtKey> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| failed("generating the token signing key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|_| failed("loading the token signing key"))?;
        Ok(JwtKey {
            pair,
            kid: crate::random_id(16),
        })
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as a JWT auth
    /// method's `jwt_validation_pubkeys` takes it.
    pub fn public_pem(&self) -> String {
        // SPKI header of an uncompressed P-256 point (id-ecPublicKey, prime256v1).
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Mints a projected-service-account-token-shaped JWT for `sa`, valid for `ttl`.
    pub fn mint(
        &self,
        sa: &ServiceAccount,
        pod: Option<&BoundPod>,
        audience: &str,
        ttl: Duration,
    ) -> Result<String> {
        let iat = now_secs();
        let mut k8s = json!({
            "namespace": sa.namespace,
            "serviceaccount": { "name": sa.name, "uid": sa.uid },
        });
        if let Some(pod) = pod {
            k8s["pod"] = json!({ "name": pod.name, "uid": pod.uid });
        }
        let claims = json!({
            "aud": [audience],
            "exp": iat + ttl.as_secs() as i64,
            "iat": iat,
            "nbf": iat,
            "iss": ISSUER,
            "jti": crate::random_uuid(),
            "sub": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
            "kubernetes.io": k8s,
        });
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use this to mint malformed or foreign tokens).
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| failed("signing a token"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Verifies signature, `exp` and `nbf`; returns the claims. The error says why,
    /// without echoing the token.
    pub fn verify(&self, token: &str) -> std::result::Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("token is not a three-part JWS".into());
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("token header is not base64url JSON")?;
        if header["alg"] != "ES256" {
            return Err(format!("unexpected alg {}", header["alg"]));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "signature is not base64url")?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        public
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        let claims: Value = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("token payload is not base64url JSON")?;
        let now = now_secs();
        match claims["exp"].as_i64() {
            Some(exp) if exp > now => {}
            Some(_) => return Err("token has expired".into()),
            None => return Err("token has no exp".into()),
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60) {
            return Err("token is not valid yet".into());
        }
        Ok(claims)
    }
}

struct Shared {
    key: JwtKey,
    requests: AtomicUsize,
    authenticated: AtomicUsize,
    reject_all: AtomicBool,
}

/// The running fake API server; stopped on drop.
#[derive(Debug)]
pub struct TokenReviewApi {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<SharedDebug>,
    task: tokio::task::JoinHandle<()>,
}

/// Newtype so `TokenReviewApi` can derive `Debug` without showing the key.
struct SharedDebug(Shared);
impl std::fmt::Debug for SharedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared { .. }")
    }
}

impl TokenReviewApi {
    /// Starts the server on a free loopback port of the harness runtime.
    pub fn start() -> Result<TokenReviewApi> {
        let cert = ServingCert::generate("sidekey-test-kube-ca", &["127.0.0.1", "localhost"])?;
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config()?);
        let shared = Arc::new(SharedDebug(Shared {
            key: JwtKey::generate()?,
            requests: AtomicUsize::new(0),
            authenticated: AtomicUsize::new(0),
            reject_all: AtomicBool::new(false),
        }));
        let router = Router::new()
            .route(TOKENREVIEW_PATH, post(review))
            .with_state(shared.clone());

        let rt = crate::rt::runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| failed(format!("binding the fake API server: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| failed(format!("reading the fake API server address: {e}")))?;
        let task = rt.spawn(serve(listener, acceptor, router));
        Ok(TokenReviewApi {
            addr,
            ca_pem: cert.ca_pem,
            shared,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`: OpenBao's `kubernetes_host`.
    pub fn host(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// CA of the serving certificate: OpenBao's `kubernetes_ca_cert`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// TokenReview requests served so far.
    pub fn requests(&self) -> usize {
        self.shared.0.requests.load(Ordering::SeqCst)
    }

    /// Of those, how many were answered `authenticated: true`.
    pub fn authenticated(&self) -> usize {
        self.shared.0.authenticated.load(Ordering::SeqCst)
    }

    /// When on, every review answers unauthenticated (as for a deleted service account).
    pub fn set_reject_all(&self, on: bool) {
        self.shared.0.reject_all.store(on, Ordering::SeqCst);
    }

    /// The signing key (to mint odd tokens in tests).
    pub fn key(&self) -> &JwtKey {
        &self.shared.0.key
    }

    /// A handle for minting tokens, independent of this value's lifetime.
    pub fn minter(&self) -> Minter {
        Minter(self.shared.clone())
    }

    /// Mints a token for `sa` with `audience`, valid for `ttl`.
    pub fn mint_jwt(
        &self,
        namespace: &str,
        sa_name: &str,
        sa_uid: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<String> {
        let sa = ServiceAccount {
            namespace: namespace.into(),
            name: sa_name.into(),
            uid: sa_uid.into(),
        };
        self.key().mint(&sa, None, audience, ttl)
    }
}

/// A cheap handle that mints tokens the fake API server accepts; what a kubelet
/// would use to fill projected token volumes.
#[derive(Debug, Clone)]
pub struct Minter(Arc<SharedDebug>);

impl Minter {
    /// See [`JwtKey::mint`].
    pub fn mint(
        &self,
        sa: &ServiceAccount,
        pod: Option<&BoundPod>,
        audience: &str,
        ttl: Duration,
    ) -> Result<String> {
        self.0.0.key.mint(sa, pod, audience, ttl)
    }
}

impl Drop for TokenReviewApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    // Bounded by the harness: the task is aborted when the server is dropped.
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn review(State(shared): State<Arc<SharedDebug>>, Json(req): Json<Value>) -> Json<Value> {
    let shared = &shared.0;
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let requested: Vec<String> = req["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let outcome = if shared.reject_all.load(Ordering::SeqCst) {
        Err("service account has been deleted".to_owned())
    } else {
        shared
            .key
            .verify(token)
            .and_then(|claims| authenticate(&claims, &requested))
    };
    let status = match outcome {
        Ok(status) => {
            shared.authenticated.fetch_add(1, Ordering::SeqCst);
            status
        }
        Err(why) => json!({ "user": {}, "error": format!("[invalid bearer token, {why}]") }),
    };
    Json(json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": { "audiences": requested },
        "status": status,
    }))
}

/// The `status` of a successful review, or why the token is refused.
fn authenticate(claims: &Value, requested: &[String]) -> std::result::Result<Value, String> {
    let k8s = &claims["kubernetes.io"];
    let (Some(ns), Some(name), Some(uid)) = (
        k8s["namespace"].as_str(),
        k8s["serviceaccount"]["name"].as_str(),
        k8s["serviceaccount"]["uid"].as_str(),
    ) else {
        return Err("token has no service-account claims".into());
    };
    let token_aud: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    // As the API server: with requested audiences, the answer is their intersection
    // with the token's, and an empty intersection is a failure.
    let audiences: Vec<String> = if requested.is_empty() {
        token_aud
    } else {
        requested
            .iter()
            .filter(|a| token_aud.contains(a))
            .cloned()
            .collect()
    };
    if audiences.is_empty() {
        return Err("token audiences are invalid".into());
    }

    let mut extra = serde_json::Map::new();
    if let (Some(pod), Some(pod_uid)) = (k8s["pod"]["name"].as_str(), k8s["pod"]["uid"].as_str()) {
        extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            json!([pod_uid]),
        );
    }
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{ns}:{name}"),
            "uid": uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": extra,
        },
        "audiences": audiences,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> ServiceAccount {
        ServiceAccount {
            namespace: "demo".into(),
            name: "app-sa".into(),
            uid: "11111111-2222-4333-8444-555555555555".into(),
        }
    }

    #[test]
    fn minted_token_verifies_and_carries_projected_claims() {
        let key = JwtKey::generate().unwrap();
        let t = key
            .mint(&sa(), None, "vault", Duration::from_secs(600))
            .unwrap();
        let claims = key.verify(&t).unwrap();
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "app-sa");
        assert_eq!(claims["aud"], json!(["vault"]));
        assert_eq!(claims["sub"], "system:serviceaccount:demo:app-sa");
    }

    #[test]
    fn token_signed_by_another_key_is_refused() {
        let key = JwtKey::generate().unwrap();
        let other = JwtKey::generate().unwrap();
        let t = other
            .mint(&sa(), None, "vault", Duration::from_secs(600))
            .unwrap();
        assert_eq!(key.verify(&t).unwrap_err(), "invalid signature");
    }

    #[test]
    fn expired_token_is_refused() {
        let key = JwtKey::generate().unwrap();
        let mut claims: Value = json!({"exp": now_secs() - 5, "kubernetes.io": {}});
        let t = key.sign(&claims).unwrap();
        assert_eq!(key.verify(&t).unwrap_err(), "token has expired");
        claims["exp"] = json!(now_secs() + 60);
        assert!(key.verify(&key.sign(&claims).unwrap()).is_ok());
    }

    #[test]
    fn tampered_payload_is_refused() {
        let key = JwtKey::generate().unwrap();
        let t = key
            .mint(&sa(), None, "vault", Duration::from_secs(600))
            .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims = key.verify(&t).unwrap();
        claims["kubernetes.io"]["namespace"] = json!("kube-system");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(key.verify(&forged).unwrap_err(), "invalid signature");
    }

    #[test]
    fn review_answers_username_uid_and_audience_intersection() {
        let key = JwtKey::generate().unwrap();
        let claims = key
            .verify(
                &key.mint(&sa(), None, "vault", Duration::from_secs(600))
                    .unwrap(),
            )
            .unwrap();
        let status = authenticate(&claims, &["vault".into(), "other".into()]).unwrap();
        assert_eq!(
            status["user"]["username"],
            "system:serviceaccount:demo:app-sa"
        );
        assert_eq!(status["user"]["uid"], sa().uid);
        assert_eq!(status["audiences"], json!(["vault"]));
        assert!(authenticate(&claims, &["other".into()]).is_err());
    }

    #[test]
    fn server_answers_over_tls_and_counts_requests() {
        let api = TokenReviewApi::start().unwrap();
        let good = api
            .mint_jwt(
                "demo",
                "app-sa",
                &sa().uid,
                "vault",
                Duration::from_secs(600),
            )
            .unwrap();
        let client = crate::tls::client_trusting(api.ca_pem()).unwrap();
        let url = format!("{}{TOKENREVIEW_PATH}", api.host());
        let ask = |token: &str| -> Value {
            let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                              "spec": {"token": token, "audiences": ["vault"]}});
            crate::rt::block_on(async {
                client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            })
        };
        assert_eq!(ask(&good)["status"]["authenticated"], true);
        let bad = ask("a.b.c");
        assert_ne!(bad["status"]["authenticated"], true);
        assert_eq!(api.requests(), 2);
        assert_eq!(api.authenticated(), 1);
    }
}
