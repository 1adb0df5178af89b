//! Fuzz target: the archive inspector on arbitrary bytes, differentially. The streaming
//! and the seekable API must agree on whether an archive is accepted (and, when both
//! accept, on everything they found); an accepted archive must render. The memory search
//! and the deep view run on the same bytes (the deep view's two readers must agree too).
#![no_main]

use std::io::Cursor;
use std::time::Duration;

use ckvault::inspect::memory::{Pattern, Search};
use ckvault::inspect::{
    Limits, deep_reader, deep_seekable, inspect_reader, inspect_seekable, memsearch_reader,
    render_table,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        // Keep each execution cheap: a bomb is cut off after 16 MiB.
        max_decompressed_bytes: 16 << 20,
        deadline: Duration::from_secs(20),
        ..Limits::default()
    };
    // The memory search walks the same archive and parses pagemaps: it must never panic
    // and never report more than it was asked for.
    let search = Search {
        pattern: Pattern::Literal(b"ab".to_vec()),
        pid: None,
        context: 4,
        max_matches: 8,
    };
    if let Ok(found) = memsearch_reader(data, &limits, &search) {
        assert!(found.matches.len() <= 8);
    }
    match (
        deep_reader(data, &limits),
        deep_seekable(Cursor::new(data), &limits),
    ) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the deep view's readers found different things");
            assert!(!a.render_table(true).contains('\u{1b}'));
        }
        // The seekable reader may see a truncation first: both refuse, perhaps for
        // different reasons.
        (Err(a), Err(b)) => {
            let _ = (a.to_string(), b.to_string());
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) if e.code() == "timeout" => {}
        (a, b) => panic!(
            "differential deep view: {:?} vs {:?}",
            a.map(|_| ()).map_err(|e| e.code()),
            b.map(|_| ()).map_err(|e| e.code())
        ),
    }
    let streamed = inspect_reader(data, &limits);
    let seeked = inspect_seekable(Cursor::new(data), &limits);
    match (&streamed, &seeked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a, b,
                "inspect_reader and inspect_seekable found different things"
            );
            let table = render_table(a);
            assert!(
                !table.contains('\u{1b}'),
                "an escape character reached the table"
            );
        }
        (Err(a), Err(b)) => {
            let _ = (a.code(), a.to_string(), b.code(), b.to_string());
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) if e.code() == "timeout" => {}
        _ => panic!(
            "differential: inspect_reader {:?} vs inspect_seekable {:?}",
            streamed.as_ref().map(|_| ()).map_err(|e| e.code()),
            seeked.as_ref().map(|_| ()).map_err(|e| e.code()),
        ),
    }
});
