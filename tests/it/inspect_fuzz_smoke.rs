//! A fuzzing smoke test that runs in `cargo test`: every seed of
//! `fuzz/corpus/inspect_archive/`, every regression input of
//! `tests/fixtures/inspect_regressions/` (crashes the fuzzer found, now fixed), and a few
//! thousand deterministic mutations of the seeds (xorshift: byte flips, interesting
//! values, header edits with the checksum fixed up so they get past it, truncation,
//! duplicated and deleted slices) go through both `inspect_reader` and `inspect_seekable`,
//! and through both readers of the deep view; none may panic, and each pair must agree.
//!
//! `cargo test --test it -- --ignored inspect_fuzz_smoke::regenerate_seed_corpus` rewrites the
//! synthetic seeds (the real-archive seed comes from `fuzz/tools/shrink_checkpoint.py`).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::inspect::*;
use ckvault::inspect::criu::{parse_core_comm, parse_pstree};
use ckvault::inspect::{
    Limits, deep_reader, deep_seekable, inspect_reader, inspect_seekable, render_table,
};

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/inspect_archive");
const CRIU_SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/criu_image");
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/inspect_regressions"
);
/// Total mutations over all seeds.
const MUTATIONS: usize = 3000;

fn limits() -> Limits {
    Limits {
        max_decompressed_bytes: 4 << 20,
        deadline: Duration::from_secs(30),
        ..Limits::default()
    }
}

fn files(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .map(|p| {
                    let data = std::fs::read(&p).unwrap();
                    (p, data)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs both APIs; panics (with the input saved to /tmp) when they disagree.
fn check(data: &[u8], what: &str) -> bool {
    let l = limits();
    let a = inspect_reader(data, &l);
    let b = inspect_seekable(Cursor::new(data), &l);
    let agree = match (&a, &b) {
        (Ok(x), Ok(y)) => {
            let table = render_table(x);
            assert!(!table.contains('\u{1b}'));
            x == y
        }
        (Err(_), Err(_)) => true,
        _ => false,
    };
    // The deep view walks the same bytes further (CRIU file images, the nested
    // rootfs-diff.tar): it must not panic, the two readers must agree, and what it
    // accepts must render without a raw escape character.
    let da = deep_reader(data, &l);
    let db = deep_seekable(Cursor::new(data), &l);
    match (&da, &db) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y, "{what}: deep views differ");
            assert!(!x.render_table(true).contains('\u{1b}'));
            let _ = x.to_json(true);
        }
        // (The seekable reader knows where the input ends and may report a truncation
        // before the streaming one reaches the member that breaks another rule.)
        (Err(x), Err(y)) => {
            let _ = (x.to_string(), y.to_string());
        }
        _ => panic!(
            "{what}: deep readers disagree: {:?} vs {:?}",
            da.as_ref().map(|_| ()).map_err(|e| e.code()),
            db.as_ref().map(|_| ()).map_err(|e| e.code())
        ),
    }
    if !agree {
        let path = format!("/tmp/inspect-disagree-{}.bin", data.len());
        let _ = std::fs::write(&path, data);
        panic!(
            "{what}: APIs disagree (input saved to {path}): reader {:?} seekable {:?}",
            a.map(|_| ()).map_err(|e| e.code()),
            b.map(|_| ()).map_err(|e| e.code())
        );
    }
    a.is_ok()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fix_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

const INTERESTING: &[u8] = b"\x00\xff\x80\x7f0127 /.xgLKS5\n=";

fn mutate(seed: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut d = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        if d.is_empty() {
            d.push(0);
        }
        match rng.below(8) {
            0 => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(d.len());
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 | 3 => {
                // Edit a header field and fix the checksum, so the edit is seen.
                let blocks = d.len() / 512;
                if blocks > 0 {
                    let b = rng.below(blocks) * 512;
                    let field = [0usize, 100, 124, 156, 157, 257, 345][rng.below(7)];
                    let at = b + field + rng.below(12);
                    if at < b + 512 {
                        d[at] = INTERESTING[rng.below(INTERESTING.len())];
                        fix_checksum(&mut d[b..b + 512]);
                    }
                }
            }
            4 => {
                let n = rng.below(d.len());
                d.truncate(n);
            }
            5 => {
                // Duplicate a slice somewhere else (block aligned half of the time).
                let align = if rng.below(2) == 0 { 512 } else { 1 };
                let start = rng.below(d.len()) / align * align;
                let len = (1 + rng.below(2048)).min(d.len() - start);
                let slice = d[start..start + len].to_vec();
                let at = rng.below(d.len()) / align * align;
                d.splice(at..at, slice);
            }
            6 => {
                let start = rng.below(d.len());
                let len = rng.below(1024).min(d.len() - start);
                d.drain(start..start + len);
            }
            _ => {
                let i = rng.below(d.len());
                let n = rng.below(8).min(d.len() - i);
                for b in &mut d[i..i + n] {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    d
}

#[test]
fn seeds_regressions_and_mutations() {
    let seeds = files(SEEDS);
    assert!(seeds.len() >= 9, "seed corpus missing in {SEEDS}");
    let t = Instant::now();
    let mut accepted = 0;
    for (path, data) in &seeds {
        assert!(data.len() < 64 * 1024, "{} is over 64 KiB", path.display());
        let ok = check(data, &path.display().to_string());
        assert!(ok, "seed {} is rejected", path.display());
    }
    for (path, data) in files(REGRESSIONS) {
        check(&data, &path.display().to_string());
    }
    // Mutate plain tar seeds mostly (compressed ones mostly fail at the decoder).
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let plain: Vec<_> = seeds
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    for n in 0..MUTATIONS {
        let (path, seed) = if n % 10 == 0 {
            &seeds[rng.below(seeds.len())]
        } else {
            plain[rng.below(plain.len())]
        };
        let m = mutate(seed, &mut rng);
        if check(&m, &format!("mutation {n} of {}", path.display())) {
            accepted += 1;
        }
    }
    eprintln!(
        "{} seeds + {MUTATIONS} mutations ({accepted} accepted) in {:?}",
        seeds.len(),
        t.elapsed()
    );
}

#[test]
fn criu_seeds_and_mutations() {
    let seeds = files(CRIU_SEEDS);
    assert!(seeds.len() >= 2);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for (_, seed) in &seeds {
        for _ in 0..500 {
            let m = mutate(seed, &mut rng);
            let _ = parse_pstree(&m, 1000);
            let _ = parse_core_comm(&m);
        }
    }
    assert!(
        parse_core_comm(
            &seeds
                .iter()
                .find(|(p, _)| p.ends_with("real-core-1.img"))
                .unwrap()
                .1
        )
        .unwrap()
        .is_some_and(|c| c == "memhog")
    );
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

/// Rewrites the synthetic seeds (run by hand after changing the generators).
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    let dir = Path::new(SEEDS);
    let id = Ident::new("forensics", "web-7d4", "app");
    for (layout, name) in [
        (Layout::CriO, "crio"),
        (Layout::Containerd, "containerd"),
        (Layout::Podman, "podman"),
    ] {
        let tar = checkpoint(layout, &id);
        write(dir, &format!("synthetic-{name}.tar"), &tar);
        write(dir, &format!("synthetic-{name}.tar.gz"), &gzip(&tar));
        write(dir, &format!("synthetic-{name}.tar.zst"), &zstd(&tar));
    }
    // Extension headers of every accepted kind, so the fuzzer starts from them.
    let mut t = Tar::new();
    t.file("spec.dump", &spec_dump(Layout::CriO, &id));
    t.pax(&[("path", b"checkpoint/pages-1.img"), ("size", b"5")]);
    t.header(Header::ustar(b"p", b'0', 5)).data(b"pages");
    t.long_name(&format!("checkpoint/{}.img", "n".repeat(120)));
    t.header(Header::gnu(b"l", b'0', 1)).data(b"l");
    let core = core_img("memhog");
    let mut h = Header::ustar(b"core-1.img", b'0', core.len() as u64);
    h.set_prefix(b"checkpoint");
    t.header(h).data(&core);
    write(dir, "synthetic-extensions.tar", &t.finish());
    let criu = Path::new(CRIU_SEEDS);
    write(
        criu,
        "synthetic-pstree.img",
        &pstree_img(&[(1, 0, &[1, 2]), (7, 1, &[7]), (8, 1, &[8, 9, 10])]),
    );
    write(criu, "synthetic-core.img", &core_img("memhog"));
}
