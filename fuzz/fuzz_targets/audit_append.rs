//! Fuzz target: audit appends of events built from arbitrary request fields, with torn
//! tails (an interrupted append) thrown in between. Whatever the fields hold, every line
//! written stays under the event bound, the log verifies, reads back event by event, and
//! the next append works.
#![no_main]

use ckvault::internal::audit::verify::verify;
use ckvault::internal::audit::{Action, Actor, AuditLog, EventInput, MAX_EVENT_BYTES, Outcome};
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
        // The action and the outcome as a log read back would give them: a known word, or
        // any other (a newer version's), which is bounded too.
        let word = |i: usize| serde_json::Value::from(field(i));
        let (Ok(action), Ok(outcome)) = (
            serde_json::from_value::<Action>(word(2)),
            serde_json::from_value::<Outcome>(word(3)),
        ) else {
            return;
        };
        let by = Actor {
            name: field(0),
            groups: field(1).split(',').map(str::to_owned).collect(),
            remote: Some(field(7)),
        };
        let input = EventInput::new(&by, action, outcome)
            .with_record(field(4))
            .with_namespace(Some(field(5)))
            .with_purpose(field(6))
            .with_detail(field(8));
        log.append(input).expect("an append of any fields succeeds");
    }
    log.append(EventInput::system(Action::List, Outcome::Ok).with_detail("last"))
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
    let events = ckvault::internal::audit::read_events(&path, &|_| true, usize::MAX).expect("reads");
    assert_eq!(events.len() as u64, v.events);
    assert_eq!(v.torn_bytes, 0);
});
