//! Fuzz target: `capture::alert::falco::parse`, the Falco receiver's parser, on arbitrary
//! bodies: bounded, escaped alerts with valid targets, or a bounded error; never a panic.
#![no_main]

mod common;

use ckvault::internal::capture::alert::falco::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(a) => {
            assert!(a.firing && a.fingerprint.is_none());
            assert!(a.priority_level().is_some());
            common::check_alert(&a);
        }
        Err(e) => common::check_error(&e.to_string()),
    }
});
