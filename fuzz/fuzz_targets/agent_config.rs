//! The agent's configuration decoder (`SIDEKEY_AGENT_CONFIG`): no panic, and what is
//! accepted survives a round trip through `to_json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey_agent::contract::config::AgentConfig;

fuzz_target!(|text: &str| {
    if let Ok(config) = AgentConfig::from_json(text) {
        let json = config.to_json();
        match AgentConfig::from_json(&json) {
            Ok(again) => assert_eq!(again, config),
            Err(e) => panic!("a config read back from its own JSON is refused: {e}\n{json}"),
        }
    }
});
