//! The annotation parser: what it accepts the agent accepts unchanged, what it refuses
//! it refuses by naming the annotation.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sidekey_agent::contract::annotations::Defaults;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(annotations) = sidekey_fuzz::annotations(&mut u) else {
        return;
    };
    let defaults = Defaults {
        vault_addr: "https://vault.vault.svc:8200".into(),
        vault_ca_pem: None,
    };
    sidekey_fuzz::check_annotations(&annotations, &defaults);
});
