//! A Vault response larger than the agent reads is refused by its size, on a real
//! OpenBao, before the agent buffers it (docs/limits.md).

#![cfg(feature = "runtime")]

mod common;

use common::Bao;
use secrecy::SecretString;
use sidekey_agent::contract::config::VaultConfig;
use sidekey_agent::vault::{Client, Error, MAX_RESPONSE_BYTES};

#[tokio::test]
async fn a_response_larger_than_the_agent_reads_is_refused_by_size() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bao = Bao::start();
    let value = "v".repeat(MAX_RESPONSE_BYTES + 1024);
    bao.ok_stdin(&["kv", "put", "-mount=secret", "big", "value=-"], &value);
    bao.ok(&["kv", "put", "-mount=secret", "small", "value=fits"]);

    let mut client = Client::new(&VaultConfig {
        addr: bao.addr.clone(),
        ca_file: Some(bao.ca_path().display().to_string()),
        ..VaultConfig::default()
    })
    .expect("a client");
    client.set_token(&SecretString::from("root"));

    let small = client
        .read("secret/data/small")
        .await
        .expect("a small secret");
    assert_eq!(small.data.expose()["data"]["value"], "fits");

    let err = client
        .read("secret/data/big")
        .await
        .expect_err("too large to read");
    assert!(
        matches!(&err, Error::Decode { what, bytes, .. } if what.contains("8 MiB") && *bytes > MAX_RESPONSE_BYTES),
        "{err}"
    );
    assert!(!err.to_string().contains("vvvv"), "{err}");
}
