//! Fuzz target: `capture::alert::alertmanager::parse`, the Alertmanager receiver's parser,
//! on arbitrary bodies. An accepted body must yield bounded, escaped alerts whose targets
//! are valid Kubernetes names; a refused one a bounded error; never a panic or a stack
//! overflow.
#![no_main]

mod common;

use ckvault::internal::capture::alert::alertmanager::{TargetLabels, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data, &TargetLabels::default(), 100) {
        Ok(batch) => {
            assert!(batch.alerts.len() <= 100);
            common::check_text(&batch.group_key, 256);
            for a in &batch.alerts {
                common::check_alert(a);
            }
        }
        Err(e) => common::check_error(&e.to_string()),
    }
});
