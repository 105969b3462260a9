//! The template parser and renderer (`template-<name>` and the Vault Agent Injector's
//! `agent-inject-template-<name>`): arbitrary template text, rendered against fixed
//! secrets fetched as the template asks. No panic, bounded time and memory, and an
//! error never carries a secret value the template text does not itself contain.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sidekey_agent::source::Key;
use sidekey_agent::template::{self, Fetched};

/// Values that must not reach an error message.
const SECRETS: [&str; 3] = ["hunter2-s3cret", "MIIB-key-material", "app-user-pw"];

fn fetch(key: &Key) -> Result<Fetched, std::convert::Infallible> {
    let data = if key.params.is_empty() {
        json!({
            "data": { "password": SECRETS[0], "user": SECRETS[2], "n": 3, "list": [1, "b"],
                      "nested": { "k": SECRETS[0] }, "path": "secret/data/b" },
            "metadata": { "version": 2 },
        })
    } else {
        json!({
            "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "private_key": format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----", SECRETS[1]),
            "issuing_ca": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----",
            "ca_chain": ["-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----"],
        })
    };
    Ok(Fetched {
        data,
        lease_id: String::new(),
        lease_duration: 0,
        renewable: false,
    })
}

fuzz_target!(|text: &str| {
    let Ok(t) = template::parse("fuzz", text) else {
        return;
    };
    let mut have = BTreeMap::new();
    let Ok(rendered) = t.resolve(&mut have, fetch);
    if let Err(e) = rendered {
        let message = e.to_string();
        for s in SECRETS {
            assert!(
                !message.contains(s) || text.contains(s),
                "an error carries a secret value: {message}"
            );
        }
    }
});
