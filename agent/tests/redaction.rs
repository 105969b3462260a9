//! Every agent type that holds a token, a JWT or secret data prints none of it through
//! `Debug` (`{:?}` in a log line, a panic message, a test failure). One place that
//! lists them all, so a type that gains such a field shows up here.

#![cfg(feature = "runtime")]

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use sidekey_agent::schedule::{Action, Backoff};
use sidekey_agent::source::{Held, Key, Kind, Source};
use sidekey_agent::state::{SourceRecord, State, TokenRecord};
use sidekey_agent::template::{self, Fetched};
use sidekey_agent::vault::{SecretData, SecretResponse, Token};
use tokio::time::Instant;

const TOKEN: &str = "s.token-value-7f3a";
const PASSWORD: &str = "pw-value-91c2";
const NESTED: &str = "nested-value-d4e8";
const PRIVATE_KEY: &str = "MIIEkey-value-55aa";

fn data() -> SecretData {
    SecretData(json!({
        "password": PASSWORD,
        "nested": { "inner": NESTED },
        "private_key": PRIVATE_KEY,
        "list": [PASSWORD],
    }))
}

#[track_caller]
fn assert_redacted(what: &str, debug: &str) {
    for value in [TOKEN, PASSWORD, NESTED, PRIVATE_KEY] {
        // As text, or as the numbers of a `Vec<u8>`'s derived Debug.
        let bytes = format!("{:?}", value.as_bytes());
        let bytes = bytes.trim_matches(['[', ']']);
        assert!(
            !debug.contains(value) && !debug.contains(bytes),
            "{what}'s Debug prints a secret value: {debug}"
        );
    }
    assert!(!debug.is_empty());
}

#[test]
fn vault_token_and_secret_responses_print_no_value() {
    let token = Token {
        client_token: SecretString::from(TOKEN),
        lease_duration: 3600,
        renewable: true,
        accessor: Some("accessor-1".into()),
    };
    let debug = format!("{token:?} {token:#?}");
    assert_redacted("Token", &debug);
    assert!(
        debug.contains("accessor-1"),
        "the accessor may be shown: {debug}"
    );

    let response = SecretResponse {
        data: data(),
        lease_id: "database/creds/ro/abc".into(),
        lease_duration: 60,
        renewable: true,
    };
    let debug = format!("{response:?} {response:#?}");
    assert_redacted("SecretResponse", &debug);
    assert!(debug.contains("password"), "keys may be shown: {debug}");
    assert_redacted(
        "SecretData of a string",
        &format!("{:?}", SecretData(json!(PASSWORD))),
    );
}

#[test]
fn held_sources_print_no_value() {
    let held = Held {
        data: data(),
        kind: Kind::Lease,
        lease_id: "database/creds/ro/abc".into(),
        ttl: Duration::from_secs(60),
        renewable: true,
        expires: Instant::now(),
        token_accessor: Some("accessor-1".into()),
        kv_v2: false,
    };
    assert_redacted("Held", &format!("{held:?} {held:#?}"));
    let source = Source {
        key: Key {
            path: "database/creds/ro".into(),
            params: BTreeMap::new(),
        },
        secrets: vec![0],
        refresh: Duration::from_secs(300),
        held: Some(held),
        action: Action::Renew,
        due: Instant::now(),
        backoff: Backoff::default(),
        failing: false,
    };
    assert_redacted("Source", &format!("{source:?} {source:#?}"));
}

#[test]
fn the_state_file_prints_no_token_or_data() {
    let state = State {
        version: 1,
        vault_addr: "https://vault:8200".into(),
        namespace: None,
        auth_mount: "auth/kubernetes".into(),
        role: "app".into(),
        token: TokenRecord {
            token: SecretString::from(TOKEN),
            accessor: Some("accessor-1".into()),
            ttl_secs: 3600,
            renewable: true,
            expires_ms: 0,
            next_ms: 0,
            action: Action::Renew,
        },
        mounts: BTreeMap::new(),
        sources: vec![SourceRecord {
            path: "database/creds/ro".into(),
            params: BTreeMap::new(),
            kind: Kind::Lease,
            lease_id: "database/creds/ro/abc".into(),
            ttl_secs: 60,
            renewable: true,
            expires_ms: 0,
            next_ms: 0,
            action: Action::Renew,
            token_accessor: None,
            kv_v2: false,
            data: data(),
        }],
    };
    assert_redacted("State", &format!("{state:?} {state:#?}"));
}

#[test]
fn templates_and_their_executions_print_no_value() {
    let fetched = Fetched {
        data: data().0,
        lease_id: String::new(),
        lease_duration: 0,
        renewable: false,
    };
    assert_redacted("Fetched", &format!("{fetched:?} {fetched:#?}"));

    let t = template::parse(
        "db",
        "{{ with secret \"secret/db\" }}{{ .Data.password }} {{ .Data.nested.inner }}{{ end }}",
    )
    .expect("a template");
    let key = Key {
        path: "secret/db".into(),
        params: BTreeMap::new(),
    };
    let have = BTreeMap::from([(key, fetched)]);
    let execution = t.execute(&have);
    let rendered = execution.output.as_ref().expect("rendered");
    assert!(
        String::from_utf8_lossy(rendered).contains(PASSWORD),
        "the test renders the secret, so the check below can fail"
    );
    assert_redacted("Execution", &format!("{execution:?} {execution:#?}"));
    assert_redacted("Template", &format!("{t:?}"));

    // A failing render names the key, not the value beside it.
    let missing = template::parse(
        "db",
        "{{ with secret \"secret/db\" }}{{ .Data.nope }}{{ end }}",
    )
    .expect("a template");
    let error = missing.render(&have).expect_err("a missing key");
    assert_redacted("template::Error", &format!("{error} {error:?}"));
}
