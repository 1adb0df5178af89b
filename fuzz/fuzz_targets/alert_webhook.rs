//! Fuzz target: the webhook receiver: `capture::alert::webhook::parse` on the whole input
//! and on its body, and `verify_signature` and a `ReplayGuard` on arbitrary headers. The
//! input is `SIGNATURE\nTIMESTAMP\nBODY`. A signature made by `sign` for the body always
//! verifies and is admitted once; arbitrary headers never verify under another secret.
#![no_main]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ckvault::internal::capture::alert::webhook::{
    ReplayGuard, SignatureError, parse, sign, verify_signature,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";
const NOW: u64 = 1_796_608_771;

fn check_parse(body: &[u8]) {
    match parse(body) {
        Ok(a) => {
            assert!(a.firing && a.target.namespace.is_some() && a.target.pod.is_some());
            common::check_alert(&a);
        }
        Err(e) => common::check_error(&e.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(sig), Some(ts), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    check_parse(body);
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let max = Duration::from_secs(300);
    let guard = ReplayGuard::new(max, 4);
    if let (Ok(sig), Ok(ts)) = (std::str::from_utf8(sig), std::str::from_utf8(ts)) {
        let verdict = verify_signature(SECRET, sig, ts, body, now, max);
        if verdict.is_ok() {
            assert_eq!(guard.admit(sig, ts, now), Ok(()));
            assert_eq!(guard.admit(sig, ts, now), Err(SignatureError::Replayed));
        }
        // Under another secret, whatever was sent does not verify (or is malformed).
        assert!(verify_signature(b"another-secret-0123456789", sig, ts, body, now, max).is_err());
        let _ = verify_signature(SECRET, sig, ts, body, SystemTime::now(), max);
    }
    // What `sign` makes always verifies, once.
    let good = sign(SECRET, NOW, body);
    assert_eq!(
        verify_signature(SECRET, &good, &NOW.to_string(), body, now, max),
        Ok(())
    );
    let fresh = ReplayGuard::new(max, 4);
    assert_eq!(fresh.admit(&good, &NOW.to_string(), now), Ok(()));
    assert_eq!(
        fresh.admit(&good, &NOW.to_string(), now),
        Err(SignatureError::Replayed)
    );
});
