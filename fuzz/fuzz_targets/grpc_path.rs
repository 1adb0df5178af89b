//! Fuzz target: the CRI proxy's method classifier (`capture::method::route`) held against
//! how gRPC servers route a request: grpc-go before and after the fix for CVE-2026-33186
//! (`capture::method::grpc_go`, itself checked against a real pre-fix grpc-go server by
//! tests/it/cri_proxy_paths.rs), servers that take the first `:path` instead of the last, and
//! servers that look methods up in any letter case. Input: up to 4 `:path` values split at
//! 0xfe. Whatever the proxy relays must reach no CheckpointContainer handler on any of
//! them; whatever it intercepts or relays has exactly one canonical `:path`.
#![no_main]

use ckvault::internal::capture::method::{CHECKPOINT_METHOD, Route, grpc_go, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let paths: Vec<&[u8]> = data.split(|&b| b == 0xfe).take(4).collect();
    let r = route(&paths);
    if r == Route::Forward {
        for fixed in [false, true] {
            assert!(
                !grpc_go::reaches_checkpoint(&paths, fixed),
                "relayed a call grpc-go (fixed: {fixed}) routes to CheckpointContainer: {paths:?}"
            );
        }
        // A server matching methods in any letter case.
        for p in &paths {
            if let Some((_, method)) = grpc_go::route(p, false) {
                assert!(
                    !method.eq_ignore_ascii_case(CHECKPOINT_METHOD.as_bytes()),
                    "relayed a CheckpointContainer in another letter case: {paths:?}"
                );
            }
        }
    }
    if matches!(r, Route::Forward | Route::Checkpoint | Route::Stop(_)) {
        assert_eq!(paths.len(), 1);
        let p = paths.first().copied().unwrap_or_default();
        assert!(p.starts_with(b"/") && p.iter().filter(|&&b| b == b'/').count() == 2);
    }
});
