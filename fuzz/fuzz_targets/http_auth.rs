//! Fuzz target: what the server parses from a request before it knows who is asking: the
//! Range header (against a blob length) and client certificates (DER). Range answers must
//! stay inside the blob; certificates must yield a principal or nothing, never a panic.
#![no_main]

use ckvault::internal::serve::range::{RangeDecision, decide};
use ckvault::internal::serve::tls::principal_from_cert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let (len, header) = data.split_at(8);
        let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8])) % (1 << 50);
        if let Ok(h) = std::str::from_utf8(header) {
            if let RangeDecision::Partial { start, end } = decide(Some(h), len) {
                assert!(start <= end && end < len, "{h:?} for {len}: {start}-{end}");
            }
        }
    }
    if let Some(p) = principal_from_cert(data) {
        // Names come from the certificate: never longer than it.
        assert!(p.user.len() <= data.len());
    }
});
