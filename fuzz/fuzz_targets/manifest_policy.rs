//! Fuzz target: everything ckvault parses from files an operator or an attacker may write:
//! manifests (parse, then signature check: must reject, never panic), the four policy
//! files, sizes, durations and the service config. Nothing may panic; an accepted manifest
//! must round-trip through its own serialization.
#![no_main]

use std::path::Path;

use ckvault::manifest::{Manifest, SigningKey};
use ckvault::internal::policy::{
    access::AccessPolicy, holds::HoldsPolicy, recipients::RecipientsPolicy,
    retention::RetentionPolicy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json(data) {
        let json = m.to_json_pretty().expect("an accepted manifest serializes");
        let again = Manifest::from_json(&json).expect("and parses again");
        assert_eq!(again.id, m.id);
        if let Ok(key) = SigningKey::generate() {
            // A random key never verifies a fuzzed signature.
            assert!(key.verifying_key().verify(&m).is_err());
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = Path::new("fuzz.toml");
    let _ = AccessPolicy::parse(p, text);
    let _ = HoldsPolicy::parse(p, text);
    let _ = RecipientsPolicy::parse(p, text);
    let _ = RetentionPolicy::parse(p, text);
    let _ = ckvault::units::parse_size(text);
    let _ = ckvault::config::parse_duration(text);
    let _ = toml::from_str::<ckvault::config::Config>(text);
});
