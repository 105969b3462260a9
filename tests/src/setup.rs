//! OpenBao configured for the demo app, as an operator would do it with the CLI.

use std::time::Duration;

use serde_json::{Value, json};

use crate::openbao::OpenBao;
use crate::tokenreview::TokenReviewApi;
use crate::{Result, failed};

/// Namespace of the demo app.
pub const NAMESPACE: &str = "demo";
/// Its service account.
pub const SERVICE_ACCOUNT: &str = "app-sa";
/// Vault role the pod logs in as.
pub const ROLE: &str = "app";
/// Policy granting read on the app's secret only.
pub const POLICY: &str = "sidekey-app";
/// KV v2 secret the app reads, as the CLI names it and as the API path.
pub const KV_PATH: &str = "secret/app";
pub const KV_API_PATH: &str = "secret/data/app";
/// Audience the role requires (the webhook's projected token audience).
pub const AUDIENCE: &str = "vault";
/// Token TTL of the role: short, so refresh paths are exercised.
pub const TOKEN_TTL: &str = "10m";
/// The service account's uid, as the API server would have assigned it.
pub const SERVICE_ACCOUNT_UID: &str = "5d2b3c9e-7f1a-4e62-9b0d-3a8c1f6e2d47";

/// What [`configure`] created, for display and assertions.
#[derive(Clone)]
pub struct Configured {
    /// The secret data stored at [`KV_PATH`].
    pub data: Value,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self
            .data
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        f.debug_struct("Configured")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// A fresh random secret for the demo app.
pub fn random_app_secret() -> Value {
    json!({
        "username": "app",
        "password": crate::random_id(32),
        "api-key": format!("ak-{}", crate::random_id(24)),
    })
}

/// Stores the app's secret, writes its policy, enables and configures kubernetes auth
/// against `api`, and creates the role bound to `demo/app-sa`.
pub fn configure(bao: &OpenBao, api: &TokenReviewApi) -> Result<Configured> {
    let data = random_app_secret();
    bao.kv_put(KV_PATH, &data)?;

    bao.policy_write(
        POLICY,
        &format!("path \"{KV_API_PATH}\" {{\n  capabilities = [\"read\"]\n}}\n"),
    )?;

    bao.cli(&["auth", "enable", "kubernetes"])?;
    bao.write_json(
        "auth/kubernetes/config",
        &json!({
            "kubernetes_host": api.host(),
            "kubernetes_ca_cert": api.ca_pem(),
            "disable_local_ca_jwt": true,
        }),
    )?;
    bao.write_json(
        &format!("auth/kubernetes/role/{ROLE}"),
        &json!({
            "bound_service_account_names": [SERVICE_ACCOUNT],
            "bound_service_account_namespaces": [NAMESPACE],
            "audience": AUDIENCE,
            "token_policies": [POLICY],
            "token_ttl": TOKEN_TTL,
            "token_max_ttl": "1h",
        }),
    )?;
    Ok(Configured { data })
}

/// Logs in once with a freshly minted token, to prove the auth chain before any
/// Sidekey part is involved (a failure here is a harness problem, not a product one).
pub fn check_login(bao: &OpenBao, api: &TokenReviewApi) -> Result<()> {
    let jwt = api.mint_jwt(
        NAMESPACE,
        SERVICE_ACCOUNT,
        SERVICE_ACCOUNT_UID,
        AUDIENCE,
        Duration::from_secs(600),
    )?;
    let out = bao
        .write_json(
            "auth/kubernetes/login",
            &json!({ "role": ROLE, "jwt": jwt }),
        )
        .map_err(|e| failed(format!("harness self-check login failed: {e}")))?;
    let doc: Value =
        serde_json::from_str(&out).map_err(|e| failed(format!("login printed non-JSON: {e}")))?;
    let policies = &doc["auth"]["token_policies"];
    if !policies
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x == POLICY))
    {
        return Err(failed(format!(
            "harness self-check login did not grant {POLICY}: {policies}"
        )));
    }
    // Revoke the check's token so it does not linger in later assertions on tokens.
    if let Some(accessor) = doc["auth"]["accessor"].as_str() {
        bao.cli(&["token", "revoke", "-accessor", accessor])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openbao_accepts_login_with_a_token_the_fake_api_server_vouches_for() {
        let bao = OpenBao::start().unwrap();
        let api = TokenReviewApi::start().unwrap();
        let configured = configure(&bao, &api).unwrap();
        assert_eq!(bao.kv_get(KV_PATH).unwrap(), configured.data);

        check_login(&bao, &api).unwrap();
        assert_eq!(
            api.authenticated(),
            1,
            "OpenBao must have asked the fake API server"
        );

        // A token for another service account is refused by OpenBao itself.
        let jwt = api
            .mint_jwt(
                NAMESPACE,
                "other-sa",
                "u",
                AUDIENCE,
                Duration::from_secs(600),
            )
            .unwrap();
        let err = bao
            .write_json("auth/kubernetes/login", &json!({"role": ROLE, "jwt": jwt}))
            .unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{err}");

        // The secret value is HMAC'd in the audit log, never written in clear.
        let audit = std::fs::read_to_string(bao.audit_log()).unwrap();
        let password = configured.data["password"].as_str().unwrap();
        assert!(!audit.is_empty());
        assert!(!audit.contains(password));
    }
}
