//! Fuzz target: the CRIU image parsers (pstree, core, mm, pagemap, ids, fs, fdinfo, files,
//! sk-queues and stats) on arbitrary bytes. They must never panic, and what they accept must respect their
//! own bounds.
#![no_main]

use ckvault::inspect::criu::{
    FileDetail, MAX_COMM_BYTES, MAX_NAME_BYTES, parse_core_comm, parse_fdinfo, parse_files,
    parse_files_id, parse_fs, parse_pstree, parse_sk_queues, parse_stats,
};
use ckvault::inspect::memory::{MAX_AREA, parse_mm, parse_mm_shared, parse_pagemap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(procs) = parse_pstree(data, 4096) {
        assert!(procs.len() <= 4096);
        let mut pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), procs.len(), "duplicate pid accepted");
    }
    if let Ok(Some(comm)) = parse_core_comm(data) {
        // Lossy UTF-8 may grow each invalid byte to 3 bytes.
        assert!(comm.len() <= MAX_COMM_BYTES * 3);
    }
    if let Ok((areas, _)) = parse_mm(data) {
        for (s, e) in areas {
            assert!(s <= e && e - s <= MAX_AREA, "an unbounded area accepted");
        }
    }
    if let Ok((_, ranges)) = parse_pagemap(data) {
        for r in ranges {
            assert_eq!(r.vaddr % 4096, 0, "unaligned range accepted");
            assert!(r.pages > 0);
            assert!(
                r.pages
                    .checked_mul(4096)
                    .and_then(|b| b.checked_add(r.vaddr))
                    .is_some()
            );
        }
    }
    let _ = parse_mm_shared(data);
    let _ = parse_files_id(data);
    let _ = parse_fs(data);
    let _ = parse_stats(data);
    if let Ok(q) = parse_sk_queues(data, 64) {
        assert!(q.len() <= 64);
    }
    if let Ok(fds) = parse_fdinfo(data, 64) {
        assert!(fds.len() <= 64);
    }
    if let Ok(files) = parse_files(data, 64) {
        assert!(files.len() <= 64);
        for f in files {
            match f.detail {
                FileDetail::Reg(name) => assert!(name.len() <= MAX_NAME_BYTES),
                FileDetail::Socket(s) => {
                    assert!(s.name.len() <= MAX_NAME_BYTES);
                    assert!(s.src_addr.len() <= 4 && s.dst_addr.len() <= 4);
                }
                _ => {}
            }
        }
    }
});
