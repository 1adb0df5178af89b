//! `ckvault memsearch` on sealed records, against the truth of the raw pages and the
//! reference tool:
//! - REAL Podman checkpoints (none, gzip, zstd) sealed, then searched through the record
//!   (decrypted in memory): exactly the matches pid 1's memory holds, at their addresses,
//!   counted in the test from the archive's own `pagemap-1.img` and pages image (entries
//!   contiguous in virtual memory joined), including matches that straddle two pagemap
//!   entries; and for the needle the same addresses as `checkpointctl 1.3 memparse --pid 1
//!   --search S` on the plaintext archive (installed into the Debian 13 root the
//!   checkpoint harness keeps);
//! - a REAL containerd 2.1 checkpoint (CRIU 4.2, which records page counts in a field
//!   checkpointctl 1.3 does not read: it finds nothing there): exactly the matches its
//!   pages hold, counted the same way;
//! - under `strace -f -e trace=openat,creat`, no file is created outside the store (its
//!   audit log), and the search is in the audit log with its purpose; nor by `inspect --deep`;
//! - `inspect --deep` of those records: open files, sockets, mounts and dump statistics equal
//!   checkpointctl 1.3's `inspect --all` field by field, and the root filesystem changes
//!   list what the harness dropped and deleted.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{ckvault, ok, p};

const NEEDLE: &str = "Host: shop.internal";

fn ckpt_root() -> PathBuf {
    Path::new(
        &std::env::var("CKVAULT_CKPT_CACHE").unwrap_or_else(|_| "/var/tmp/ckvault-ckpt".into()),
    )
    .join("root")
}

/// checkpointctl in the harness's Debian 13 root (it needs that root's glibc).
fn checkpointctl() -> Option<PathBuf> {
    if support::outside_fast_tier("checkpointctl in the real-checkpoint root (root)") {
        return None;
    }
    let root = ckpt_root();
    if !root.join("usr/bin/checkpointctl").exists() {
        let out = Command::new("chroot")
            .arg(&root)
            .args(["sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q checkpointctl || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q checkpointctl)"])
            .output()
            .ok()?;
        if !out.status.success() {
            support::cannot_run(
                support::REQUIRE_ENV,
                &format!(
                    "cannot install checkpointctl in {}: {}",
                    root.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            return None;
        }
    }
    Some(root)
}

/// Runs checkpointctl in the harness's root on a copy of `archive` (each call its own
/// directory: tests run in parallel); `{}` in `args` stands for the copy's path there.
fn checkpointctl_on(root: &Path, archive: &Path, args: &[&str]) -> std::process::Output {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rel = format!("tmp/ckvault-cc-{}-{n}", std::process::id());
    let dir = root.join(&rel);
    std::fs::create_dir_all(&dir).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(archive, dir.join(&name)).unwrap();
    let inside = format!("/{rel}/{name}");
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{}" { inside.as_str() } else { a })
        .collect();
    let out = Command::new("chroot")
        .arg(root)
        .arg("checkpointctl")
        .args(&args)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// Addresses checkpointctl reports for `needle` in pid 1 of `archive`.
fn checkpointctl_addresses(root: &Path, archive: &Path, needle: &str) -> Vec<u64> {
    let out = checkpointctl_on(
        root,
        archive,
        &["memparse", "{}", "--pid", "1", "--search", needle],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut addrs: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let cell = l.strip_prefix("| ")?.split_whitespace().next()?;
            (cell.len() == 16).then(|| u64::from_str_radix(cell, 16).ok())?
        })
        .collect();
    addrs.sort();
    addrs
}

/// Seals `archive` into a store under `dir`; returns (store, identity file, record ID).
fn seal_record(dir: &Path, archive: &Path) -> (PathBuf, PathBuf, String) {
    let (identity, recipient) = support::age_keypair(dir);
    let store = dir.join("store");
    let m: Value = serde_json::from_str(&ok(&ckvault(&[
        "seal",
        p(archive),
        "--store",
        p(&store),
        "-r",
        &recipient,
    ])))
    .unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    (store, identity, id)
}

/// Searches pid 1 of a sealed record for `what` (`--string S` or `--regex R`); returns
/// (addresses, the JSON answer).
fn search_sealed(store: &Path, identity: &Path, id: &str, what: [&str; 2]) -> (Vec<u64>, Value) {
    let out = ok(&ckvault(&[
        "memsearch",
        id,
        "--store",
        p(store),
        "-i",
        p(identity),
        "--pid",
        "1",
        what[0],
        what[1],
        "--max-matches",
        "1000000",
        "--purpose",
        "incident 7",
        "--format",
        "json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut addrs: Vec<u64> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            u64::from_str_radix(m["address"].as_str().unwrap().trim_start_matches("0x"), 16)
                .unwrap()
        })
        .collect();
    addrs.sort();
    (addrs, v)
}

/// Pid 1's memory as its own images hold it, read here without ckvault: `pagemap-1.img`
/// parsed by this file's own protobuf reader, its present entries laid over the pages image
/// it names (members taken out with GNU tar, which reads .tar.gz and .tar.zst too), and
/// entries that are contiguous in virtual memory joined into one run.
struct Pid1Memory {
    /// Runs of contiguous memory: virtual address, bytes.
    runs: Vec<(u64, Vec<u8>)>,
    /// Virtual addresses where two pagemap entries of one run meet.
    seams: Vec<u64>,
}

fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("xOf")
        .arg(archive)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar xOf {} {name}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read_varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = b[*i];
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            break;
        }
    }
    v
}

/// The varint fields of one protobuf message (other wire types skipped).
fn varints(m: &[u8]) -> Vec<(u64, u64)> {
    let (mut i, mut out) = (0, Vec::new());
    while i < m.len() {
        let key = read_varint(m, &mut i);
        match key & 7 {
            0 => out.push((key >> 3, read_varint(m, &mut i))),
            2 => i += read_varint(m, &mut i) as usize,
            5 => i += 4,
            1 => i += 8,
            t => panic!("wire type {t} in a pagemap entry"),
        }
    }
    out
}

fn pid1_memory(archive: &Path) -> Pid1Memory {
    let map = member(archive, "checkpoint/pagemap-1.img");
    // Two magics, then u32-LE-length-prefixed entries: PagemapHead, then PagemapEntry.
    let mut entries = Vec::new();
    let mut i = 8;
    while i < map.len() {
        let len = u32::from_le_bytes(map[i..i + 4].try_into().unwrap()) as usize;
        entries.push(varints(&map[i + 4..i + 4 + len]));
        i += 4 + len;
    }
    let field = |e: &[(u64, u64)], f: u64| e.iter().find(|(k, _)| *k == f).map(|(_, v)| *v);
    let pages_id = field(&entries[0], 1).unwrap();
    let pages = member(archive, &format!("checkpoint/pages-{pages_id}.img"));
    let (mut runs, mut seams): (Vec<(u64, Vec<u8>)>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut offset = 0usize;
    for e in &entries[1..] {
        // nr_pages: field 5 (CRIU 4.2) or 2; present: flag PE_PRESENT (4).
        let n = field(e, 5).unwrap_or_else(|| field(e, 2).unwrap_or(0)) as usize;
        if field(e, 4).unwrap_or(0) & 4 == 0 || n == 0 {
            continue;
        }
        let vaddr = field(e, 1).unwrap();
        let bytes = &pages[offset..offset + n * 4096];
        offset += n * 4096;
        match runs.last_mut() {
            Some((start, run)) if *start + run.len() as u64 == vaddr => {
                seams.push(vaddr);
                run.extend_from_slice(bytes);
            }
            _ => runs.push((vaddr, bytes.to_vec())),
        }
    }
    assert_eq!(
        offset,
        pages.len(),
        "the present pages fill the pages image"
    );
    Pid1Memory { runs, seams }
}

impl Pid1Memory {
    /// Every match of `re` (leftmost, not overlapping, as memsearch reports them), by
    /// address; and how many of them straddle a seam between two pagemap entries.
    fn matches(&self, re: &regex::bytes::Regex) -> (Vec<u64>, usize) {
        let (mut addrs, mut straddling) = (Vec::new(), 0);
        for (start, run) in &self.runs {
            for m in re.find_iter(run) {
                let (a, b) = (start + m.start() as u64, start + m.end() as u64);
                addrs.push(a);
                straddling += usize::from(self.seams.iter().any(|&s| a < s && s < b));
            }
        }
        addrs.sort();
        (addrs, straddling)
    }
}

/// Asserts `ours` (sorted) are exactly `truth`'s addresses, naming what is missing or extra.
fn same_addresses(what: &str, ours: &[u64], truth: &[u64]) {
    let missing: Vec<String> = truth
        .iter()
        .filter(|a| ours.binary_search(a).is_err())
        .map(|a| format!("{a:#x}"))
        .collect();
    let extra: Vec<String> = ours
        .iter()
        .filter(|a| truth.binary_search(a).is_err())
        .map(|a| format!("{a:#x}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && ours.len() == truth.len(),
        "{what}: {} matches, the pages hold {}; missed {missing:?}, not in memory {extra:?}",
        ours.len(),
        truth.len()
    );
}

/// Matches only where a page of memhog's text starts after a byte that is not a newline:
/// memhog cuts its lines at page ends (so NEEDLE itself never crosses a page), and the
/// next text page starts a fresh line. Inside a run, some of those page starts are
/// seams between CRIU's pagemap entries (it cuts every 1 MiB).
const ACROSS_PAGES: &str = r#"(?-u)[^\n](\{"id":|Host: shop\.internal|2026-11-28T)"#;

#[test]
fn memsearch_on_sealed_records_finds_every_match_the_pages_hold() {
    let checkpointctl = checkpointctl();
    let needle = regex::bytes::Regex::new(&regex::escape(NEEDLE)).unwrap();
    let across_pages = regex::bytes::Regex::new(ACROSS_PAGES).unwrap();
    for compress in ["none", "gzip", "zstd"] {
        let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", compress) else {
            return;
        };
        let memory = pid1_memory(&archive);
        let tmp = tempfile::tempdir().unwrap();
        let (store, identity, id) = seal_record(tmp.path(), &archive);
        // The needle: every occurrence, at its address.
        let (truth, _) = memory.matches(&needle);
        let (ours, v) = search_sealed(&store, &identity, &id, ["--string", NEEDLE]);
        assert!(
            truth.len() > 1000,
            "{compress}: {} occurrences",
            truth.len()
        );
        same_addresses(&format!("{compress}: {NEEDLE:?}"), &ours, &truth);
        assert!(
            v["matches"][0]["context"]
                .as_str()
                .unwrap()
                .contains(NEEDLE)
        );
        // Matches across the seams between pagemap entries (checkpointctl 1.3 searches
        // each entry alone and misses them).
        let (truth_x, straddling) = memory.matches(&across_pages);
        let (ours_x, _) = search_sealed(&store, &identity, &id, ["--regex", ACROSS_PAGES]);
        assert!(
            straddling > 0,
            "{compress}: no match straddles a seam: the test would prove nothing"
        );
        same_addresses(&format!("{compress}: {ACROSS_PAGES:?}"), &ours_x, &truth_x);
        // checkpointctl 1.3 finds the needle at the same addresses (none straddles a seam).
        if let Some(root) = &checkpointctl {
            let theirs = checkpointctl_addresses(root, &archive, NEEDLE);
            assert_eq!(
                ours, theirs,
                "{compress}: checkpointctl 1.3's addresses differ"
            );
        }
        eprintln!(
            "{compress}: {} matches of {NEEDLE:?} = the pages' {}; {} of {ACROSS_PAGES:?} = \
             the pages' {} ({straddling} across a seam between pagemap entries), {} seams",
            ours.len(),
            truth.len(),
            ours_x.len(),
            truth_x.len(),
            memory.seams.len()
        );
    }
}

#[test]
fn memsearch_reads_criu_4_2_pagemaps_of_containerd_archives() {
    let Some(rt) = support::realcri::RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let dir = rt.dir("memsearch");
    let archive = dir.join("ck.tar");
    rt.checkpoint_to(&archive);
    let memory = pid1_memory(&archive);
    let tmp = tempfile::tempdir().unwrap();
    let (store, identity, id) = seal_record(tmp.path(), &archive);
    let (ours, _) = search_sealed(&store, &identity, &id, ["--string", NEEDLE]);
    let (truth, straddling) =
        memory.matches(&regex::bytes::Regex::new(&regex::escape(NEEDLE)).unwrap());
    assert!(!truth.is_empty());
    same_addresses("containerd 2.1 / CRIU 4.2", &ours, &truth);
    std::fs::remove_file(&archive).unwrap();
    eprintln!(
        "containerd 2.1 / CRIU 4.2: {} matches = the pages' {} ({straddling} across a seam; \
         checkpointctl 1.3 finds none there)",
        ours.len(),
        truth.len()
    );
}

/// Runs ckvault under `strace -f -e trace=openat,creat`; returns its stdout and the files
/// it created outside `store`.
fn under_strace(store: &Path, log: &Path, args: &[&str]) -> (Vec<u8>, Vec<String>) {
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=openat,creat", "-o"])
        .arg(log)
        .arg(support::ckvault_bin())
        .args(args)
        .output()
        .unwrap();
    support::ok(&out);
    let trace = std::fs::read_to_string(log).unwrap();
    let created = trace
        .lines()
        .filter(|l| l.contains("O_CREAT") || l.contains("creat("))
        .filter(|l| !l.contains(p(store)))
        .map(str::to_owned)
        .collect();
    (out.stdout, created)
}

#[test]
fn memsearch_of_a_record_creates_no_file_and_is_audited() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(tmp.path());
    let store = tmp.path().join("store");
    let m: Value = serde_json::from_str(&ok(&ckvault(&[
        "seal",
        p(&archive),
        "--store",
        p(&store),
        "-r",
        &recipient,
    ])))
    .unwrap();
    let id = m["id"].as_str().unwrap();
    let log = tmp.path().join("strace.log");
    let (_, created) = under_strace(
        &store,
        &log,
        &[
            "memsearch",
            id,
            "--store",
            p(&store),
            "-i",
            p(&identity),
            "--string",
            NEEDLE,
            "--purpose",
            "case 12",
            "--format",
            "json",
        ],
    );
    assert!(
        created.is_empty(),
        "files created outside the store: {created:#?}"
    );
    // The deep view of the record, the same way.
    let (stdout, created) = under_strace(
        &store,
        &log,
        &[
            "inspect",
            id,
            "--deep",
            "--store",
            p(&store),
            "-i",
            p(&identity),
            "--purpose",
            "case 12",
            "--format",
            "json",
        ],
    );
    let deep: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(deep["processes"]["1"]["files"][3]["path"], "/etc/hostname");
    assert!(
        created.is_empty(),
        "inspect --deep created files outside the store: {created:#?}"
    );
    let audit: Vec<Value> = support::audit_events(&store);
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "memsearch" && e["purpose"] == "case 12" && e["record"] == id),
        "{audit:#?}"
    );
}

/// A pagemap image declaring `pages` present pages at 0x400000 (CRIU 4.1 layout).
fn pagemap(pages: u64) -> Vec<u8> {
    let mut img = 0x5456_4319u32.to_le_bytes().to_vec();
    img.extend(0x5608_4025u32.to_le_bytes());
    img.extend([2, 0, 0, 0, 0x08, 0x01]); // head: pages_id = 1
    let mut e = vec![0x08, 0x80, 0x80, 0x80, 0x02, 0x10]; // vaddr 0x400000, nr_pages:
    let mut v = pages;
    while v >= 0x80 {
        e.push((v as u8) | 0x80);
        v >>= 7;
    }
    e.push(v as u8);
    e.extend([0x20, 0x04]); // flags PE_PRESENT
    img.extend((e.len() as u32).to_le_bytes());
    img.extend(e);
    img
}

#[test]
fn hostile_pagemaps_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let page = vec![b'x'; 4096];
    for (what, map, pages, want) in [
        (
            "pages past the image",
            pagemap(3),
            page.clone(),
            "declares 12288 bytes",
        ),
        (
            "a lying huge count",
            pagemap(u64::MAX / 8192),
            page.clone(),
            "declares",
        ),
        (
            "an overflowing range",
            pagemap(u64::MAX / 4096),
            page.clone(),
            "not a valid range",
        ),
        (
            "garbage",
            b"\x19CVT%@\x08V\xff\xff\xff\xff".to_vec(),
            page.clone(),
            "runs past the end",
        ),
    ] {
        let archive = tmp.path().join("hostile.tar");
        std::fs::write(
            &archive,
            support::tar_with(&[
                ("checkpoint/pagemap-1.img", b'0', &map),
                ("checkpoint/pages-1.img", b'0', &pages),
            ]),
        )
        .unwrap();
        let out = ckvault(&["memsearch", p(&archive), "--string", "xx"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(want), "{what}: {err}");
    }
    // A well-formed one is searched: 4095 overlapping-free matches of "x" in one page.
    let archive = tmp.path().join("ok.tar");
    std::fs::write(
        &archive,
        support::tar_with(&[
            ("checkpoint/pagemap-1.img", b'0', &pagemap(1)),
            ("checkpoint/pages-1.img", b'0', &page),
        ]),
    )
    .unwrap();
    let out = ok(&ckvault(&[
        "memsearch",
        p(&archive),
        "--string",
        "xx",
        "--format",
        "json",
        "--max-matches",
        "10000",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["matches"].as_array().unwrap().len(), 2048);
    assert_eq!(v["matches"][0]["address"], "0x400000");
}

/// checkpointctl's `inspect --all` of `archive`, as JSON.
fn checkpointctl_all(root: &Path, archive: &Path) -> Value {
    let out = checkpointctl_on(
        root,
        archive,
        &["inspect", "{}", "--all", "--format", "json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkpointctl: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v[0].clone()
}

/// Open files, sockets, mounts and dump statistics of pid 1: ours against checkpointctl's
/// `inspect --all`, field by field; and the root filesystem changes the harness made.
fn same_as_checkpointctl(what: &str, ours: &Value, all: &Value, podman_scene: bool) {
    let files: Vec<(String, String, String)> = ours["processes"]["1"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let (fd, kind) = match &f["fd"] {
                Value::Number(n) => (
                    format!("{} {n}", f["type"].as_str().unwrap()),
                    f["type"].as_str().unwrap().to_owned(),
                ),
                // checkpointctl leaves the type of cwd and root blank.
                other => (other.as_str().unwrap().to_owned(), String::new()),
            };
            (fd, kind, f["path"].as_str().unwrap().to_owned())
        })
        .collect();
    let theirs: Vec<(String, String, String)> = all["file_descriptors"][0]["open_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_owned();
            (s("fd"), s("type"), s("path"))
        })
        .collect();
    assert_eq!(files, theirs, "{what}: open files");
    assert_eq!(ours["mounts"], all["mounts"], "{what}: mounts");
    assert_eq!(
        ours["statistics"], all["statistics"],
        "{what}: dump statistics"
    );
    assert!(ours["statistics"]["pages_written"].as_u64().unwrap() > 0);
    if !podman_scene {
        return;
    }
    assert!(
        files.iter().any(|f| f.2 == "/etc/hostname") && files.len() >= 7,
        "{what}: memhog's scene (fd 3 /etc/hostname, fd 4 a unix socket, cwd, root): {files:?}"
    );
    let sockets: Vec<(String, String)> = ours["processes"]["1"]["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["family"].as_str().unwrap().to_owned(),
                s["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let theirs: Vec<(String, String)> = all["sockets"][0]["open_sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["data"]["type"].as_str().unwrap().to_owned(),
                // (checkpointctl leaves the address out for an unnamed socket.)
                s["data"]["address"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(sockets, theirs, "{what}: sockets");
    let unix = |name: &str| ("UNIX".to_owned(), name.to_owned());
    assert_eq!(sockets, [unix("\0ckvault-memhog"), unix(""), unix("")]);
    let ours_sk = &ours["processes"]["1"]["sockets"];
    assert_eq!(ours_sk[0]["state"], "LISTEN");
    // memhog's unread datagram waits on the pair's second socket.
    assert_eq!(
        (&ours_sk[1]["queued_bytes"], &ours_sk[2]["queued_bytes"]),
        (&Value::from(0), &Value::from(24)),
        "{what}: {ours_sk:#}"
    );
    assert_eq!(ours_sk[2]["type"], "DGRAM");
    let changes = ours["rootfs_changes"].as_array().unwrap();
    let dropped = changes
        .iter()
        .find(|c| c["path"] == "tmp/dropped.sh")
        .unwrap_or_else(|| panic!("{what}: no tmp/dropped.sh in {changes:#?}"));
    assert_eq!(
        (
            &dropped["change"],
            &dropped["type"],
            &dropped["size"],
            &dropped["mode"]
        ),
        (
            &Value::from("added-or-changed"),
            &Value::from("file"),
            &Value::from(24),
            &Value::from("0755")
        ),
        "{what}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c["path"] == "bin/cat" && c["change"] == "deleted"),
        "{what}: the deleted /bin/cat: {changes:#?}"
    );
}

/// Sizes as checkpointctl prints them (`8.1 MiB`, `0 B`).
fn human(b: u64) -> String {
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    for unit in ["KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// The memory size and shared memory size `checkpointctl memparse` shows for pid 1.
fn checkpointctl_memparse_row(root: &Path, archive: &Path) -> [String; 2] {
    let out = checkpointctl_on(root, archive, &["memparse", "{}"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<String> = text
        .lines()
        .find(|l| l.trim_start().starts_with("|   1 |"))
        .unwrap_or_else(|| panic!("no pid 1 row in checkpointctl memparse: {text}"))
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    [row[3].clone(), row[4].clone()]
}

/// Seals `archive` and deep-inspects its record.
fn deep_record(dir: &Path, archive: &Path, show_values: bool) -> (String, Value, PathBuf) {
    let (identity, recipient) = support::age_keypair(dir);
    let store = dir.join("store");
    let m: Value = serde_json::from_str(&ok(&ckvault(&[
        "seal",
        p(archive),
        "--store",
        p(&store),
        "-r",
        &recipient,
    ])))
    .unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let mut args = vec![
        "inspect",
        &id,
        "--deep",
        "--store",
        p(&store),
        "-i",
        p(&identity),
        "--format",
        "json",
    ];
    if show_values {
        args.push("--show-env-values");
    }
    let v: Value = serde_json::from_str(&ok(&ckvault(&args))).unwrap();
    (id.clone(), v, store)
}

#[test]
fn deep_inspection_of_records_agrees_with_checkpointctl_and_keeps_secrets_out_of_manifests() {
    let Some(root) = checkpointctl() else {
        return;
    };
    for compress in ["none", "gzip", "zstd"] {
        let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", compress) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let (id, v, store) = deep_record(tmp.path(), &archive, true);
        let all = checkpointctl_all(&root, &archive);
        let theirs = &all["process_tree"];
        let ours = &v["processes"]["1"];
        let cmdline: Vec<&str> = ours["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            format!("{} ", cmdline.join(" ")),
            theirs["cmdline"].as_str().unwrap(),
            "{compress}: command line"
        );
        assert_eq!(
            ours["env"], theirs["environment_variables"],
            "{compress}: environment"
        );
        assert!(ours["memory"]["bytes"].as_u64().unwrap() >= 16 << 20);
        same_as_checkpointctl(compress, &v, &all, true);
        // Memory and shared memory sizes as `checkpointctl memparse` prints them.
        let sizes = checkpointctl_memparse_row(&root, &archive);
        let mem = &ours["memory"];
        assert_eq!(
            sizes,
            [
                human(mem["bytes"].as_u64().unwrap()),
                human(mem["shared_bytes"].as_u64().unwrap())
            ],
            "{compress}: memory sizes"
        );
        // memhog's 1 MiB shared mapping.
        assert_eq!(mem["shared_bytes"], 1 << 20);
        // The manifest (readable by any read-manifest holder) has neither arguments nor
        // environment values.
        let manifest = ok(&ckvault(&["show", &id, "--store", p(&store)]));
        for secret in [cmdline[2], "/usr/local/sbin:/usr/local/bin"] {
            assert!(
                !manifest.contains(secret),
                "{compress}: {secret} in the manifest"
            );
        }
        // Without --show-env-values, values are redacted.
        let tmp2 = tempfile::tempdir().unwrap();
        let (_, v2, _) = deep_record(tmp2.path(), &archive, false);
        assert_eq!(v2["processes"]["1"]["env"]["PATH"], "<redacted>");
        eprintln!("{compress}: cmdline and environment equal checkpointctl 1.3's");
    }
}

#[test]
fn deep_inspection_reads_the_command_line_of_containerd_archives() {
    let Some(rt) = support::realcri::RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let dir = rt.dir("deep");
    let archive = dir.join("ck.tar");
    rt.checkpoint_to(&archive);
    let tmp = tempfile::tempdir().unwrap();
    let (_, v, _) = deep_record(tmp.path(), &archive, true);
    // The command the harness started (checkpointctl 1.3 prints blanks here).
    assert_eq!(
        v["processes"]["1"]["cmdline"],
        serde_json::json!(["/bin/memhog", "16"])
    );
    assert_eq!(v["processes"]["1"]["env"]["PATH"], "/bin");
    // containerd's layout (gzipped rootfs-diff.tar): files, mounts and statistics equal
    // checkpointctl's.
    if let Some(root) = checkpointctl() {
        same_as_checkpointctl("containerd", &v, &checkpointctl_all(&root, &archive), false);
    }
    assert!(
        v["rootfs_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "etc/resolv.conf"),
        "{:#?}",
        v["rootfs_changes"]
    );
    let files = v["processes"]["1"]["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f["fd"] == "cwd") && files.iter().any(|f| f["fd"] == "root"),
        "{files:#?}"
    );
    assert!(
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/proc"),
        "{:#?}",
        v["mounts"]
    );
    eprintln!(
        "containerd 2.1 deep view: {} files, {} mounts, statistics {}, {} rootfs changes",
        files.len(),
        v["mounts"].as_array().unwrap().len(),
        v["statistics"],
        v["rootfs_changes"].as_array().unwrap().len()
    );
}
