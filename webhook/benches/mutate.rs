//! Micro-benchmarks of the admission logic without any network: the pure pod → patch
//! function ([`patch::mutate`]) and the whole body → response path the `/mutate` route
//! runs (parse, decide, respond, serialize), on a realistic pod (four containers, fifteen
//! annotations, three secrets). `make bench` runs them; see docs/benchmarks.md.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sidekey_agent::contract::annotations::Defaults;
use sidekey_webhook::admission;
use sidekey_webhook::patch::{self, Decision, PatchSettings, SidecarMode};

/// The pod the load test posts too (`bench/` reads the same file).
const POD: &str = include_str!("realistic-pod.json");

fn settings() -> PatchSettings {
    PatchSettings {
        agent_image: "ghcr.io/sidekey/agent:0.1.0".into(),
        defaults: Defaults {
            vault_addr: "https://vault.vault.svc:8200".into(),
            vault_ca_pem: None,
        },
        sidecar_mode: SidecarMode::Native,
        excluded_namespaces: BTreeSet::from(["kube-system".to_owned()]),
    }
}

fn review_body(pod: &Value) -> Vec<u8> {
    let kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let resource = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5b0f6c8e-1d2a-4c3b-9e7f-0a1b2c3d4e5f",
            "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    })
    .to_string()
    .into_bytes()
}

fn benches(c: &mut Criterion) {
    let pod: Value = serde_json::from_str(POD).expect("realistic-pod.json is JSON");
    let settings = settings();
    assert!(
        matches!(patch::mutate(&pod, &settings), Decision::Patch(_)),
        "the benchmark pod must be mutated, not skipped or denied"
    );

    c.bench_function("mutate: pod -> patch", |b| {
        b.iter(|| patch::mutate(black_box(&pod), black_box(&settings)))
    });

    let body = review_body(&pod);
    let mut group = c.benchmark_group("review");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("body -> response bytes", |b| {
        b.iter(|| {
            let review = admission::parse(black_box(&body)).expect("parses");
            let decision = admission::decide(&review.request, &settings);
            let response = admission::respond(&review, &decision).expect("encodes");
            serde_json::to_vec(&response).expect("serializes")
        })
    });
    group.finish();
}

criterion_group!(mutate, benches);
criterion_main!(mutate);
