//! Fuzz target: audit appends of events built from arbitrary request fields, with torn
//! tails (an interrupted append) thrown in between. Whatever the fields hold, every line
//! written stays under the event bound, the log verifies, reads back event by event, and
//! the next append works.
#![no_main]

use ckvault::audit::verify::verify;
use ckvault::audit::{AuditLog, EventInput, MAX_EVENT_BYTES};
use ckvault::manifest::SigningKey;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static PEM: String = SigningKey::generate().expect("key").to_pem().expect("pem");
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("audit.log");
    let key = PEM.with(|pem| SigningKey::from_pem(pem, std::path::Path::new("k")).expect("key"));
    let vk = key.verifying_key();
    let Ok(log) = AuditLog::open(&path, key) else {
        return;
    };
    // Events are separated by 0xfe; fields within an event by 0xff. A field starting with
    // 0xfd instead tears the log: its bytes are appended raw, with no newline.
    for chunk in data.split(|b| *b == 0xfe).take(8) {
        let fields: Vec<String> = chunk
            .split(|b| *b == 0xff)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        if chunk.first() == Some(&0xfd) {
            use std::io::Write;
            let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) else {
                return;
            };
            let torn: Vec<u8> = chunk
                .iter()
                .skip(1)
                .copied()
                .filter(|b| *b != b'\n')
                .collect();
            let _ = f.write_all(&torn);
            continue;
        }
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        let input = EventInput {
            actor: field(0),
            groups: field(1).split(',').map(str::to_owned).collect(),
            action: field(2),
            outcome: field(3),
            record: Some(field(4)),
            namespace: Some(field(5)),
            purpose: Some(field(6)),
            remote: Some(field(7)),
            detail: Some(field(8)),
            ..Default::default()
        };
        log.append(input).expect("an append of any fields succeeds");
    }
    log.append(EventInput {
        actor: "system".into(),
        action: "last".into(),
        outcome: "ok".into(),
        ..Default::default()
    })
    .expect("the next append works");
    let text = std::fs::read(&path).expect("log");
    for line in text.split(|b| *b == b'\n') {
        assert!(
            line.len() < MAX_EVENT_BYTES,
            "a line of {} bytes",
            line.len()
        );
    }
    let v = verify(&path, &vk).expect("the log verifies");
    let events = ckvault::audit::read_events(&path, &|_| true, usize::MAX).expect("reads");
    assert_eq!(events.len() as u64, v.events);
    assert_eq!(v.torn_bytes, 0);
});
