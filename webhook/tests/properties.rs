//! Property tests: for generated pods of many shapes, the webhook either denies with a
//! message or returns a patch that applies cleanly, yields a pod the API server's rules
//! accept, keeps a "restricted" pod restricted, and is not applied twice.

mod common;

use common::pods::pod_and_settings;
use common::rules::{api_rules, restricted};
use proptest::prelude::*;
use serde_json::Value;
use sidekey_agent::contract::config::{AgentConfig, CONFIG_ENV};
use sidekey_webhook::patch::{Decision, SkipReason, mutate};

fn agent_configs(pod: &Value) -> Vec<AgentConfig> {
    common::rules::containers(pod)
        .into_iter()
        .filter_map(|(_, _, c)| {
            let env = c["env"].as_array()?;
            let value = env.iter().find(|e| e["name"] == CONFIG_ENV)?["value"].as_str()?;
            Some(AgentConfig::from_json(value).expect("the agent reads its config"))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_generated_pod_gets_a_clean_patch_or_a_clear_denial(
        (pod, settings) in pod_and_settings()
    ) {
        let before = api_rules(&pod);
        prop_assert!(before.is_empty(), "the generator made an invalid pod: {before:?}");
        let was_restricted = restricted(&pod).is_empty();

        match mutate(&pod, &settings) {
            Decision::Skip(reason) => prop_assert!(false, "an opted-in pod was skipped: {reason:?}"),
            Decision::Deny(message) => {
                prop_assert!(
                    message.contains("sidekey.dev/") || message.contains("Sidekey"),
                    "a denial that names neither an annotation nor Sidekey: {message}"
                );
            }
            Decision::Patch(patch) => {
                let mut out = pod.clone();
                let applied = json_patch::patch(&mut out, &patch);
                prop_assert!(applied.is_ok(), "the patch does not apply: {applied:?}\n{patch}");

                let after = api_rules(&out);
                prop_assert!(after.is_empty(), "the patched pod breaks {after:?}\n{out:#}");
                if was_restricted {
                    let broken = restricted(&out);
                    prop_assert!(broken.is_empty(), "restricted lost: {broken:?}\n{out:#}");
                }

                let configs = agent_configs(&out);
                prop_assert!(!configs.is_empty(), "no agent container carries a config");
                prop_assert!(configs.windows(2).all(|w| w[0] == w[1]), "agents disagree");

                // Every container that gets the secrets mounts them read-only at the
                // agent's secrets directory.
                let dir = &configs[0].secrets_dir;
                for (_, _, c) in common::rules::containers(&out) {
                    let mounts = c["volumeMounts"].as_array().map_or(&[][..], Vec::as_slice);
                    for m in mounts.iter().filter(|m| m["name"] == "sidekey-secrets") {
                        prop_assert_eq!(m["mountPath"].as_str(), Some(dir.as_str()));
                        let agent = c["name"].as_str().is_some_and(|n| n.starts_with("sidekey-"));
                        prop_assert_eq!(m.get("readOnly").is_none(), agent);
                    }
                }

                let again = mutate(&out, &settings);
                prop_assert!(
                    matches!(again, Decision::Skip(SkipReason::AlreadyInjected)),
                    "a second pass did not skip: {again:?}"
                );
            }
        }
    }
}

/// Guards against a vacuous property: most generated pods are patched, some denied,
/// and many start out "restricted", so every branch above runs.
#[test]
fn the_generator_reaches_patches_denials_and_restricted_pods() {
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::TestRunner;

    let strategy = pod_and_settings();
    let mut runner = TestRunner::deterministic();
    let (mut patched, mut denied, mut restricted_patched, mut native, mut classic) =
        (0, 0, 0, 0, 0);
    for _ in 0..256 {
        let (pod, settings) = strategy.new_tree(&mut runner).expect("a pod").current();
        match mutate(&pod, &settings) {
            Decision::Patch(_) => {
                patched += 1;
                restricted_patched += usize::from(restricted(&pod).is_empty());
                match settings.sidecar_mode {
                    sidekey_webhook::patch::SidecarMode::Native => native += 1,
                    sidekey_webhook::patch::SidecarMode::Classic => classic += 1,
                }
            }
            Decision::Deny(_) => denied += 1,
            Decision::Skip(_) => {}
        }
    }
    assert!(patched >= 128, "only {patched} of 256 patched");
    assert!(denied >= 5, "only {denied} of 256 denied");
    assert!(
        restricted_patched >= 40,
        "only {restricted_patched} restricted pods patched"
    );
    assert!(
        native >= 30 && classic >= 30,
        "native {native}, classic {classic}"
    );
}
