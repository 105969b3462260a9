//! The webhook's review handler on structurally valid Pod CREATE reviews carrying
//! generated pods: annotations from the real key table, containers, volumes and mounts
//! that may collide with Sidekey's, fields of the wrong type.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(pod), Ok(settings)) = (sidekey_fuzz::pod(&mut u), sidekey_fuzz::settings(&mut u))
    else {
        return;
    };
    let body = serde_json::to_vec(&sidekey_fuzz::review(&pod, "apps")).expect("serializes");
    sidekey_fuzz::handle(&body, &settings);
});
