//! Fuzz target: the CRI relay's HPACK decoder on arbitrary header blocks, several in a row
//! on one decoder (the dynamic table carries over; blocks split at 0xfe). It must never
//! panic, and never hand out more than the block plus the bounded tables could encode.
#![no_main]

use ckvault::internal::capture::hpack::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    for block in data.split(|&b| b == 0xfe) {
        let mut total = 0usize;
        let mut fields = 0usize;
        let r = d.decode(block, |n, v| {
            total += n.len() + v.len();
            fields += 1;
        });
        if r.is_err() {
            d = Decoder::new();
        }
        // A field takes at least one byte; Huffman codes are at least 5 bits (8/5 symbols
        // per byte); a field copied from a table is at most the 64 KiB table.
        assert!(fields <= block.len());
        assert!(total <= block.len() * 2 + fields * (64 << 10));
    }
});
