//! The duration parser (annotations, `SIDEKEY_INIT_DEADLINE`) and the quantity parser
//! (resource and size annotations), on the same text: no panic, and what is accepted
//! reads back the same once formatted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey_agent::contract::{duration, quantity};

fuzz_target!(|input: &str| {
    if let Ok(d) = duration::parse(input) {
        let text = duration::format(d);
        match duration::parse(&text) {
            Ok(again) => assert_eq!(again.as_secs(), d.as_secs(), "{input:?} -> {text:?}"),
            Err(e) => panic!("{input:?} was accepted, its formatted {text:?} is not: {e}"),
        }
    }
    if let Ok(q) = quantity::parse(input) {
        assert_eq!(q.text, input.trim());
        let again = quantity::parse(&q.text).expect("the text of a quantity parses");
        assert_eq!(again.milli, q.milli);
    }
});
