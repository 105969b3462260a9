//! One OpenBao for the whole run, set up as a cluster operator would: Kubernetes auth
//! against the harness's TokenReview endpoint, KV v2 secrets under `secret/bench/`, and
//! per measured run its own auth role, policy and PostgreSQL database role, so the audit
//! log and the leftovers of each run are told apart by name.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use sidekey_tests::audit::{Entry, Trail};
use sidekey_tests::database::{DbRole, Ttls};
use sidekey_tests::openbao::OpenBao;
use sidekey_tests::tokenreview::TokenReviewApi;
use sidekey_tests::{random_id, setup};

/// Mount of the Kubernetes auth method.
pub const AUTH_MOUNT: &str = "auth/kubernetes";
/// Audience every minted service-account token carries (the webhook's).
pub const AUDIENCE: &str = setup::AUDIENCE;

/// The OpenBao server, the fake API server and a client for writes.
pub struct Env {
    pub bao: OpenBao,
    pub api: TokenReviewApi,
    pub ca_pem: String,
    client: reqwest::Client,
    /// OpenBao's own process, for its CPU time.
    pub bao_pid: Option<u32>,
}

/// KV v2 path (API form) of the `i`-th benchmark secret.
pub fn kv_api_path(i: usize) -> String {
    format!("secret/data/bench/kv-{i}")
}

impl Env {
    /// Starts OpenBao and the TokenReview endpoint, configures Kubernetes auth and
    /// writes `kv_secrets` KV secrets.
    pub fn start(kv_secrets: usize) -> Result<Env> {
        sidekey_tests::postgres::check_available()
            .context("PostgreSQL must answer on 127.0.0.1:5432 (run `make setup`)")?;
        let bao = OpenBao::start().context("starting OpenBao")?;
        let api = TokenReviewApi::start().context("starting the TokenReview endpoint")?;
        setup::configure(&bao, &api).context("configuring Kubernetes auth")?;
        let ca_pem = bao.ca_pem()?;
        let client = sidekey_tests::tls::client_trusting(&ca_pem)?;
        let port = bao.addr().rsplit(':').next().unwrap_or_default().to_owned();
        let bao_pid =
            crate::sys::find_process(&["server", &format!("-dev-listen-address=127.0.0.1:{port}")]);
        let env = Env {
            bao,
            api,
            ca_pem,
            client,
            bao_pid,
        };
        for i in 0..kv_secrets {
            env.bao.kv_put(
                &format!("secret/bench/kv-{i}"),
                &json!({
                    "username": format!("svc-{i}"),
                    "password": random_id(32),
                    "url": format!("https://api-{i}.example.com/v2"),
                }),
            )?;
        }
        Ok(env)
    }

    /// Creates a run's auth role `name` (bound to `namespace`, any service account in
    /// it), its policy (read `secret/data/bench/*` and, with `db`, the credentials) and,
    /// with `db`, its database role with those TTLs.
    pub fn run_role(
        &self,
        name: &str,
        namespace: &str,
        db: Option<Ttls>,
    ) -> Result<Option<DbRole<'_>>> {
        let db = match db {
            Some(ttls) => Some(DbRole::create(&self.bao, name, ttls)?),
            None => None,
        };
        let mut policy =
            "path \"secret/data/bench/*\" {\n  capabilities = [\"read\"]\n}\n".to_owned();
        if let Some(db) = &db {
            policy.push_str(&format!(
                "path \"{creds}\" {{\n  capabilities = [\"read\"]\n}}\n\
                 path \"sys/leases/revoke/{creds}/*\" {{\n  capabilities = [\"update\"]\n}}\n",
                creds = db.creds_path()
            ));
        }
        self.bao.policy_write(name, &policy)?;
        self.bao.write_json(
            &format!("{AUTH_MOUNT}/role/{name}"),
            &json!({
                "bound_service_account_names": ["*"],
                "bound_service_account_namespaces": [namespace],
                "audience": AUDIENCE,
                "token_policies": [name],
                "token_ttl": "1h",
                "token_max_ttl": "4h",
            }),
        )?;
        Ok(db)
    }

    /// A projected-token-shaped JWT for `namespace/sa`, valid for an hour.
    pub fn jwt(&self, namespace: &str, sa: &str) -> Result<String> {
        Ok(self.api.mint_jwt(
            namespace,
            sa,
            &sidekey_tests::random_uuid(),
            AUDIENCE,
            Duration::from_secs(3600),
        )?)
    }

    /// Writes new data to KV secret `i` over HTTP (no CLI start-up in the timing) and
    /// returns once OpenBao acknowledged it; the returned marker is in the new data.
    pub fn update_kv(&self, i: usize) -> Result<String> {
        let marker = random_id(24);
        let url = format!("{}/v1/{}", self.bao.addr(), kv_api_path(i));
        let body = json!({"data": {
            "username": format!("svc-{i}"),
            "password": marker,
            "url": format!("https://api-{i}.example.com/v2"),
        }});
        let status = sidekey_tests::rt::block_on(async {
            self.client
                .post(&url)
                .header("X-Vault-Token", self.bao.root_token())
                .json(&body)
                .send()
                .await
                .map(|r| r.status())
        })
        .context("writing a KV secret")?;
        anyhow::ensure!(status.is_success(), "KV write answered {status}");
        Ok(marker)
    }

    /// The audit log now.
    pub fn trail(&self) -> Result<Trail> {
        Ok(Trail::read(self.bao.audit_log())?)
    }

    /// OpenBao's CPU ticks so far.
    pub fn bao_ticks(&self) -> Option<u64> {
        self.bao_pid.and_then(crate::sys::cpu_ticks)
    }

    /// Revokes a token by accessor (cleanup of what an agent left).
    pub fn revoke_accessor(&self, accessor: &str) -> Result<()> {
        self.bao.cli(&["token", "revoke", "-accessor", accessor])?;
        Ok(())
    }
}

/// Everything role `role` asked of OpenBao: its logins (which carry no token) and
/// every request made with a token those logins issued, in time order.
pub fn role_requests<'a>(trail: &'a Trail, role: &str) -> Vec<&'a Entry> {
    let login_path = format!("{AUTH_MOUNT}/login");
    let accessors = trail.login_accessors(AUTH_MOUNT, role);
    let mut out: Vec<&Entry> = trail.requests_by(&accessors);
    // A login request has no accessor yet; its response names the role.
    out.extend(trail.logins(AUTH_MOUNT, role));
    out.retain(|e| e.kind == sidekey_tests::audit::Kind::Request || e.path == login_path);
    out.sort_by(|a, b| a.time.total_cmp(&b.time));
    out
}

/// Seconds since the Unix epoch, as audit entries are timed.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
