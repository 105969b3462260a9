//! The webhook's review handler on arbitrary request bodies: parse, decide, respond.
//! Seeds: `webhook/tests/data`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sidekey_webhook::patch::{PatchSettings, SidecarMode};

fn settings() -> &'static PatchSettings {
    static SETTINGS: OnceLock<PatchSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| PatchSettings {
        agent_image: "registry.example/sidekey/agent:fuzz".into(),
        defaults: sidekey_agent::contract::annotations::Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
        },
        sidecar_mode: SidecarMode::Native,
        excluded_namespaces: ["kube-system".to_owned()].into(),
    })
}

fuzz_target!(|body: &[u8]| {
    sidekey_fuzz::handle(body, settings());
});
