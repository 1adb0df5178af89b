//! Fuzz target: the audit log verifier on arbitrary logs and head files. A log it accepts
//! must really be a chain: re-reading it event by event gives consecutive sequence numbers.
#![no_main]

use ckvault::internal::audit::verify::verify;
use ckvault::manifest::SigningKey;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static KEY: SigningKey = SigningKey::generate().expect("key");
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let log = dir.path().join("audit.log");
    // The input is the log, optionally followed by a head file after a 0xff separator.
    let (body, head) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if std::fs::write(&log, body).is_err() {
        return;
    }
    if let Some(h) = head {
        let _ = std::fs::write(dir.path().join("audit.log.head.json"), h);
    }
    KEY.with(|k| {
        if let Ok(v) = verify(&log, &k.verifying_key()) {
            let events = ckvault::internal::audit::read_events(&log, &|_| true, usize::MAX)
                .expect("a verified log reads");
            assert_eq!(events.len() as u64, v.events);
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.seq, i as u64 + 1);
            }
        }
    });
});
