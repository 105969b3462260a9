//! Everything wired together: OpenBao configured for the demo app, the fake API server,
//! and the webhook pointed at OpenBao. The e2e tests share one per test binary; the
//! demo starts its own.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::container::PodRun;
use crate::openbao::OpenBao;
use crate::review::{self, Verdict};
use crate::setup::{self, Configured};
use crate::tokenreview::TokenReviewApi;
use crate::webhook::Webhook;
use crate::{Result, bins, failed};

/// The running servers.
#[derive(Debug)]
pub struct Stack {
    pub bao: OpenBao,
    pub api: TokenReviewApi,
    /// What the demo app's secret holds right now (updated by [`Stack::rotate`]).
    pub configured: std::sync::Mutex<Configured>,
    pub webhook: Webhook,
}

/// One admission round trip.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The AdmissionReview sent.
    pub review: Value,
    /// The AdmissionReview received.
    pub answer: Value,
    pub verdict: Verdict,
    /// The pod after the patch (the original if there was none).
    pub pod: Value,
}

impl Stack {
    /// Starts OpenBao, the fake API server and the webhook, and configures OpenBao.
    pub fn start() -> Result<Stack> {
        let bao = OpenBao::start()?;
        let api = TokenReviewApi::start()?;
        let configured = setup::configure(&bao, &api)
            .map_err(|e| failed(format!("configuring OpenBao: {e}\n{}", bao.logs())))?;
        setup::check_login(&bao, &api)?;
        let webhook = Webhook::start(bao.addr(), bao.ca_path())?;
        Ok(Stack {
            bao,
            api,
            configured: std::sync::Mutex::new(configured),
            webhook,
        })
    }

    /// The stack shared by every test of this binary, started on first use. A failed
    /// start is reported to every test that asks.
    pub fn shared() -> &'static Stack {
        static STACK: OnceLock<std::result::Result<Stack, String>> = OnceLock::new();
        match STACK.get_or_init(|| Stack::start().map_err(|e| e.to_string())) {
            Ok(s) => s,
            Err(e) => panic!("the test stack did not start: {e}"),
        }
    }

    /// The demo app's secret data as last stored.
    pub fn secret_data(&self) -> Value {
        self.configured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .data
            .clone()
    }

    /// Stores a new random version of the demo app's secret and returns it.
    pub fn rotate(&self) -> Result<Value> {
        let data = setup::random_app_secret();
        self.bao.kv_put(setup::KV_PATH, &data)?;
        self.configured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .data = data.clone();
        Ok(data)
    }

    /// Sends `pod` through the webhook as the API server would and applies the answer.
    pub fn admit(&self, pod: &Value) -> Result<Admitted> {
        let review = review::admission_review(pod);
        let answer = self.webhook.post_review(&review)?;
        let verdict = review::verdict(&review, &answer)?;
        let pod = review::apply_patch(pod, &verdict)?;
        Ok(Admitted {
            review,
            answer,
            verdict,
            pod,
        })
    }

    /// Prepares to run the containers of an admitted pod.
    pub fn pod_run(&self, pod: &Value) -> Result<PodRun> {
        PodRun::new(
            pod,
            self.api.minter(),
            setup::SERVICE_ACCOUNT_UID,
            self.api.ca_pem(),
            &bins::agent()?,
        )
    }

    /// Server logs for a failure report (they hold no secret).
    pub fn diagnostics(&self) -> String {
        let bao = self.bao.logs();
        // OpenBao's startup banner is long; its tail is what matters.
        let tail: Vec<&str> = bao.lines().rev().take(40).collect();
        format!(
            "{}\n----- openbao (last 40 lines) -----\n{}\nTokenReview requests: {} ({} authenticated)",
            self.webhook.logs(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.api.requests(),
            self.api.authenticated()
        )
    }
}

/// How long the init container may take (its own deadline is longer; a healthy run
/// takes well under a second).
pub const INIT_LIMIT: Duration = Duration::from_secs(30);
/// Grace period after SIGTERM (the pod default is 30 s; the agent should need ~1 s).
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// The token accessor an agent logged at login (`token.accessor=...` in its text log).
/// An accessor identifies a token without granting anything, so logging it is safe.
pub fn logged_accessor(logs: &str) -> Option<String> {
    let at = logs.find("token.accessor=")? + "token.accessor=".len();
    let rest = &logs[at..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let a = rest[..end].trim_matches('"');
    (!a.is_empty()).then(|| a.to_owned())
}
