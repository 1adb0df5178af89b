//! The deep view (`inspect --deep`) on hostile archives generated in code: the nested
//! `rootfs-diff.tar` (plain, gzip, zstd) breaking the tar rules or decompressing without
//! end, `deleted.files` that is not a list of paths, CRIU images (files, fdinfo, stats) with
//! lying sizes, too big, or with names past PATH_MAX. Each is refused with its reason
//! code from both the seekable and the streaming reader, within bounded time; and the
//! links, devices and FIFOs an attacker leaves in the root filesystem are listed, never
//! followed. Archives built to cost the responder's machine (pagemaps by the megabyte, a
//! descriptor table shared by hundreds of processes) are answered by the `ckvault` binary
//! with its peak RSS (`wait4`) and bytes written asserted under ceilings.

use std::io::Cursor;
use std::time::{Duration, Instant};

use crate::support::inspect::*;
use ckvault::inspect::deep::DeepView;
use ckvault::inspect::{InspectError, Limits, deep_reader, deep_seekable};

const FILES_MAGIC: u32 = 0x5630_3138;
const FDINFO_MAGIC: u32 = 0x5621_3732;

fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let id = Ident::new("shop", "api-0", "api");
    let mut t = Tar::new();
    t.file("spec.dump", &spec_dump(Layout::Containerd, &id));
    t.dir("checkpoint/");
    for (name, data) in members {
        t.file(name, data);
    }
    t.finish()
}

fn both(bytes: &[u8], limits: &Limits) -> Result<DeepView, String> {
    let started = Instant::now();
    let a = deep_seekable(Cursor::new(bytes), limits).map_err(|e| code_of(&e));
    let b = deep_reader(bytes, limits).map_err(|e| code_of(&e));
    assert_eq!(a, b, "seekable and streaming readers disagree");
    assert!(started.elapsed() < Duration::from_secs(10));
    a
}

fn code_of(e: &InspectError) -> String {
    let shown = e.to_string();
    assert!(!shown.is_empty());
    format!("{}: {shown}", e.code())
}

fn refused(bytes: &[u8], limits: &Limits, code: &str, says: &str) {
    match both(bytes, limits) {
        Ok(v) => panic!("accepted, expected {code}: {v:?}"),
        Err(e) => {
            assert!(e.starts_with(&format!("{code}:")), "{e}");
            assert!(e.contains(says), "{e} does not say {says:?}");
        }
    }
}

#[test]
fn nested_rootfs_diff_breaking_the_tar_rules_is_refused() {
    let limits = Limits::default();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "dot-dot-path",
            Tar::new().file("../../etc/cron.d/x", b"boom").finish(),
            "in rootfs-diff.tar",
        ),
        (
            "absolute-path",
            Tar::new().file("/etc/shadow", b"x").finish(),
            "in rootfs-diff.tar",
        ),
        (
            "duplicate-member",
            Tar::new().file("a", b"1").file("a", b"2").finish(),
            "in rootfs-diff.tar",
        ),
        (
            "missing-end-marker",
            {
                let mut t = Tar::new();
                t.file("a", b"1");
                t.finish()[..1024].to_vec()
            },
            "in rootfs-diff.tar",
        ),
    ];
    for (code, inner, says) in cases {
        for packed in [inner.clone(), gzip(&inner), zstd(&inner)] {
            refused(
                &archive(&[("rootfs-diff.tar", packed)]),
                &limits,
                code,
                says,
            );
        }
    }
    // A nested archive that claims more than its member holds.
    let mut t = Tar::new();
    t.header(Header::ustar(b"big", b'0', 1 << 20));
    let short = t.finish();
    refused(
        &archive(&[("rootfs-diff.tar", short)]),
        &limits,
        "truncated",
        "rootfs-diff.tar",
    );
}

#[test]
fn a_nested_decompression_bomb_is_cut_off() {
    // 64 MiB of zeros inside one member, compressed to a few KiB.
    let inner = Tar::new().file("zeros", &vec![0u8; 64 << 20]).finish();
    let limits = Limits {
        max_decompressed_bytes: 8 << 20,
        ..Limits::default()
    };
    for packed in [gzip(&inner), zstd(&inner)] {
        assert!(packed.len() < 1 << 20);
        refused(
            &archive(&[("rootfs-diff.tar", packed)]),
            &limits,
            "decompressed-too-large",
            "rootfs-diff.tar",
        );
    }
}

#[test]
fn links_devices_and_fifos_in_the_root_filesystem_are_listed_not_followed() {
    let inner = {
        let mut t = Tar::new();
        t.dir("etc/")
            .typed("etc/passwd", b'2', "/host/etc/shadow")
            .typed("etc/hard", b'1', "etc/passwd")
            .typed("dev-null", b'3', "")
            .typed("dev-sda", b'4', "")
            .typed("pipe", b'6', "")
            .file("tmp/.wh.gone", b"")
            .file("tmp/evil\x1b[2J.sh", b"#!/bin/sh\n");
        t.finish()
    };
    let deleted = serde_json::to_vec(&["/bin/cat", "/usr/bin/id"]).unwrap();
    let v = both(
        &archive(&[
            ("rootfs-diff.tar", gzip(&inner)),
            ("deleted.files", deleted),
        ]),
        &Limits::default(),
    )
    .unwrap();
    let got: Vec<(String, &str, &str, Option<String>)> = v
        .rootfs_changes
        .iter()
        .map(|c| (c.path.clone(), c.change, c.kind, c.link.clone()))
        .collect();
    let added = "added-or-changed";
    assert_eq!(
        got,
        vec![
            ("etc".into(), added, "dir", None),
            (
                "etc/passwd".into(),
                added,
                "symlink",
                Some("/host/etc/shadow".into())
            ),
            (
                "etc/hard".into(),
                added,
                "hardlink",
                Some("etc/passwd".into())
            ),
            ("dev-null".into(), added, "char-device", None),
            ("dev-sda".into(), added, "block-device", None),
            ("pipe".into(), added, "fifo", None),
            ("tmp/gone".into(), "deleted", "unknown", None),
            ("tmp/evil\x1b[2J.sh".into(), added, "file", None),
            ("bin/cat".into(), "deleted", "unknown", None),
            ("usr/bin/id".into(), "deleted", "unknown", None),
        ]
    );
    // The table escapes what a terminal would obey.
    let table = v.render_table(false);
    assert!(table.contains("/tmp/evil\\u{1b}[2J.sh"), "{table}");
    assert!(!table.contains('\x1b'));
}

#[test]
fn deleted_files_that_are_not_a_list_of_paths_are_refused() {
    let limits = Limits::default();
    for (data, code) in [
        (b"{\"a\": 1}".to_vec(), "json-invalid"),
        (b"[1, 2]".to_vec(), "json-invalid"),
        (
            serde_json::to_vec(&["a".repeat(5000)]).unwrap(),
            "list-malformed",
        ),
        (serde_json::to_vec(&["a\0b"]).unwrap(), "list-malformed"),
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            "json-too-deep",
        ),
    ] {
        refused(
            &archive(&[("deleted.files", data)]),
            &limits,
            code,
            "deleted.files",
        );
    }
}

fn files_entry(kind: u64, id: u64, sub_field: u32, sub: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    varint(1 << 3, &mut e);
    varint(kind, &mut e);
    varint(2 << 3, &mut e);
    varint(id, &mut e);
    varint((u64::from(sub_field) << 3) | 2, &mut e);
    varint(sub.len() as u64, &mut e);
    e.extend_from_slice(sub);
    e
}

#[test]
fn criu_file_images_with_lying_sizes_or_names_are_refused() {
    let limits = Limits::default();
    // An entry whose length prefix runs past the image.
    let mut lying = criu_image(FILES_MAGIC, &[files_entry(1, 1, 3, b"")]);
    lying.splice(8..12, 4096u32.to_le_bytes());
    refused(
        &archive(&[("checkpoint/files.img", lying)]),
        &limits,
        "criu-malformed",
        "runs past the end",
    );
    // A path past PATH_MAX.
    let mut reg = Vec::new();
    varint((6 << 3) | 2, &mut reg);
    varint(5000, &mut reg);
    reg.extend(vec![b'a'; 5000]);
    refused(
        &archive(&[(
            "checkpoint/files.img",
            criu_image(FILES_MAGIC, &[files_entry(1, 1, 3, &reg)]),
        )]),
        &limits,
        "criu-malformed",
        "at most 4096",
    );
    // More descriptors than any process may hold.
    let mut fd = Vec::new();
    for (f, v) in [(1u64, 1u64), (3, 1), (4, 0)] {
        varint(f << 3, &mut fd);
        varint(v, &mut fd);
    }
    let many = vec![fd; 70_000];
    refused(
        &archive(&[("checkpoint/fdinfo-2.img", criu_image(FDINFO_MAGIC, &many))]),
        &limits,
        "criu-malformed",
        "descriptors",
    );
    // An image over the size cap is refused before it is read.
    let small = Limits {
        max_criu_image_bytes: 1024,
        ..Limits::default()
    };
    refused(
        &archive(&[("checkpoint/fdinfo-2.img", vec![0u8; 4096])]),
        &small,
        "criu-image-too-large",
        "fdinfo-2.img",
    );
    // stats-dump without CRIU's service magic.
    refused(
        &archive(&[("stats-dump", b"{}".to_vec())]),
        &limits,
        "criu-malformed",
        "stats-dump",
    );
}

const PAGEMAP_MAGIC: u32 = 0x5608_4025;
const MM_MAGIC: u32 = 0x5749_2820;

/// Writes a tar member straight into `w` (the hostile archives below are too big to hold).
fn put(w: &mut impl std::io::Write, name: &str, data: &[&[u8]]) {
    let size: usize = data.iter().map(|d| d.len()).sum();
    w.write_all(&Header::ustar(name.as_bytes(), b'0', size as u64).finish())
        .unwrap();
    for d in data {
        w.write_all(d).unwrap();
    }
    w.write_all(&vec![0u8; (512 - size % 512) % 512]).unwrap();
}

/// `mm-<pid>.img` with its argument and environment areas (fields 8-11 of MmEntry).
fn mm_img(args: (u64, u64), env: (u64, u64)) -> Vec<u8> {
    let mut e = Vec::new();
    for (f, v) in [(8u64, args.0), (9, args.1), (10, env.0), (11, env.1)] {
        varint(f << 3, &mut e);
        varint(v, &mut e);
    }
    criu_image(MM_MAGIC, &[e])
}

/// The body of a pagemap of `n` one-page entries, all at virtual address 0 (CRIU 4.1
/// layout, 8 bytes each: the most ranges per byte a pagemap can hold).
fn pagemap_body(n: usize) -> Vec<u8> {
    [4u8, 0, 0, 0, 0x08, 0x00, 0x10, 0x01].repeat(n)
}

/// The magics and head (`pages_id`) of a pagemap.
fn pagemap_head(pages_id: u64) -> Vec<u8> {
    let mut head = Vec::new();
    varint(1 << 3, &mut head);
    varint(pages_id, &mut head);
    criu_image(PAGEMAP_MAGIC, &[head])
}

/// A zstd-compressed archive where each of `procs` processes has an mm image (its areas
/// far from its pages, as in a real process) and a pagemap of 1 Mi entries (8 MiB, the
/// most one pagemap may hold), the mm images first (as every writer orders them) or,
/// with `mm_last`, after all the pagemaps.
fn many_pagemaps(path: &std::path::Path, procs: u64, mm_last: bool) -> u64 {
    let file = std::fs::File::create(path).unwrap();
    let mut w = zstd::stream::write::Encoder::new(file, 3).unwrap();
    let id = Ident::new("shop", "api-0", "api");
    put(&mut w, "spec.dump", &[&spec_dump(Layout::Containerd, &id)]);
    w.write_all(&Header::ustar(b"checkpoint/", b'5', 0).finish())
        .unwrap();
    let body = pagemap_body(1 << 20);
    let mm = mm_img(
        (0x7ffe_0000_0000, 0x7ffe_0000_0100),
        (0x7ffe_0000_0100, 0x7ffe_0000_0200),
    );
    for pid in 1..=procs {
        if !mm_last {
            put(&mut w, &format!("checkpoint/mm-{pid}.img"), &[&mm]);
        }
        put(
            &mut w,
            &format!("checkpoint/pagemap-{pid}.img"),
            &[&pagemap_head(pid), &body],
        );
    }
    if mm_last {
        for pid in 1..=procs {
            put(&mut w, &format!("checkpoint/mm-{pid}.img"), &[&mm]);
        }
    }
    w.write_all(&[0u8; 1024]).unwrap();
    w.finish().unwrap();
    std::fs::metadata(path).unwrap().len()
}

use std::io::Write as _;

/// Peak RSS allowed to `inspect --deep` of the hostile archives below: the debug binary
/// takes about 10 MiB, parsing one 8 MiB pagemap about 60 MiB more (measured: 67 MiB for 16
/// pagemaps in order, 108 MiB when one whole pagemap is held; 312 MiB for 16 before the
/// fix, growing by 16 MiB a pagemap).
const DEEP_RSS_CEILING: u64 = 128 << 20;

#[test]
fn deep_inspection_keeps_no_more_than_one_pagemap_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = |procs: u64| {
        let archive = tmp.path().join(format!("pagemaps-{procs}.tar.zst"));
        let size = many_pagemaps(&archive, procs, false);
        let m = measured(
            &[
                "inspect",
                archive.to_str().unwrap(),
                "--deep",
                "--format",
                "json",
            ],
            2 << 30,
        );
        (size, m)
    };
    let (_, few) = deep(2);
    let procs = 16;
    let (size, m) = deep(procs);
    eprintln!(
        "{procs} pagemaps of 8 MiB in a {size}-byte archive: exit {:?}, peak RSS {} MiB \
         (2 pagemaps: {} MiB), {} bytes of JSON; {}",
        m.status.code(),
        m.peak_rss >> 20,
        few.peak_rss >> 20,
        m.stdout_bytes,
        m.stderr.trim()
    );
    assert!(m.status.success(), "{}", m.stderr);
    assert!(
        m.peak_rss < DEEP_RSS_CEILING,
        "peak RSS {} MiB, ceiling {} MiB",
        m.peak_rss >> 20,
        DEEP_RSS_CEILING >> 20
    );
    // Flat: eight times the pagemaps, not more memory (a pagemap is let go once cut down).
    assert!(
        m.peak_rss < few.peak_rss + (16 << 20),
        "peak RSS {} MiB with {procs} pagemaps, {} MiB with 2",
        m.peak_rss >> 20,
        few.peak_rss >> 20
    );
    let v: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(v["processes"].as_object().unwrap().len(), procs as usize);
    assert!(m.stdout_bytes < 1 << 20);
}

#[test]
fn pagemaps_before_their_mm_images_are_held_under_a_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("pagemaps-first.tar.zst");
    let size = many_pagemaps(&archive, 16, true);
    let m = measured(
        &[
            "inspect",
            archive.to_str().unwrap(),
            "--deep",
            "--format",
            "json",
        ],
        2 << 30,
    );
    eprintln!(
        "16 pagemaps of 8 MiB before their mm images in a {size}-byte archive: exit {:?}, \
         peak RSS {} MiB; {}",
        m.status.code(),
        m.peak_rss >> 20,
        String::from_utf8_lossy(&m.stdout[..m.stdout.len().min(400)])
    );
    assert!(
        m.peak_rss < DEEP_RSS_CEILING,
        "peak RSS {} MiB, ceiling {} MiB",
        m.peak_rss >> 20,
        DEEP_RSS_CEILING >> 20
    );
    let v: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(v["code"], "criu-malformed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("pagemap entries held at once"),
        "{v}"
    );
}

const IDS_MAGIC: u32 = 0x5443_2030;

/// A plain archive of `procs` processes sharing one descriptor table (the same
/// `files_id`, as CLONE_FILES makes) of 65,536 descriptors (the most one table may hold),
/// every one open on one file whose name is 4,096 bytes of `fill`.
fn shared_table(procs: u32, fill: u8) -> Vec<u8> {
    let mut name = vec![b'/'];
    name.extend(vec![fill; 4095]);
    let mut reg = Vec::new();
    varint((6 << 3) | 2, &mut reg);
    varint(name.len() as u64, &mut reg);
    reg.extend(&name);
    let files = criu_image(FILES_MAGIC, &[files_entry(1, 1, 3, &reg)]);
    let fds: Vec<Vec<u8>> = (0..1u64 << 16)
        .map(|fd| {
            let mut e = Vec::new();
            for (f, v) in [(1u64, 1u64), (3, 1), (4, fd)] {
                varint(f << 3, &mut e);
                varint(v, &mut e);
            }
            e
        })
        .collect();
    let mut ids = Vec::new();
    varint(2 << 3, &mut ids);
    varint(1, &mut ids);
    let ids = criu_image(IDS_MAGIC, &[ids]);
    let mut members = vec![
        (
            "checkpoint/fdinfo-1.img".to_owned(),
            criu_image(FDINFO_MAGIC, &fds),
        ),
        ("checkpoint/files.img".to_owned(), files),
    ];
    for pid in 1..=procs {
        members.push((format!("checkpoint/ids-{pid}.img"), ids.clone()));
    }
    let refs: Vec<(&str, Vec<u8>)> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    archive(&refs)
}

/// Peak RSS and output allowed to `inspect --deep` and `diff` of the shared tables.
const SHARED_RSS_CEILING: u64 = 128 << 20;
const SHARED_OUTPUT_CEILING: u64 = 32 << 20;

#[test]
fn a_descriptor_table_shared_by_many_processes_is_listed_once_and_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
    let procs = 400;
    std::fs::write(&a, shared_table(procs, b'a')).unwrap();
    std::fs::write(&b, shared_table(procs, b'b')).unwrap();
    let size = std::fs::metadata(&a).unwrap().len();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let inspect = measured(
        &["inspect", &path(&a), "--deep", "--format", "json"],
        4 << 30,
    );
    eprintln!(
        "inspect --deep, {procs} processes sharing 65,536 descriptors, {size}-byte archive: \
         exit {:?}, peak RSS {} MiB, {} bytes of JSON; {}",
        inspect.status.code(),
        inspect.peak_rss >> 20,
        inspect.stdout_bytes,
        inspect.stderr.trim()
    );
    let diff = measured(&["diff", &path(&a), &path(&b), "--format", "json"], 4 << 30);
    eprintln!(
        "diff of two such archives: exit {:?}, peak RSS {} MiB, {} bytes of JSON; {}",
        diff.status.code(),
        diff.peak_rss >> 20,
        diff.stdout_bytes,
        diff.stderr.trim()
    );
    for (what, m) in [("inspect --deep", &inspect), ("diff", &diff)] {
        assert!(m.status.success(), "{what}: {}", m.stderr);
        assert!(
            m.peak_rss < SHARED_RSS_CEILING,
            "{what}: peak RSS {} MiB, ceiling {} MiB",
            m.peak_rss >> 20,
            SHARED_RSS_CEILING >> 20
        );
        assert!(
            m.stdout_bytes < SHARED_OUTPUT_CEILING,
            "{what}: {} bytes written, ceiling {SHARED_OUTPUT_CEILING}",
            m.stdout_bytes
        );
    }
    // The table is listed once, under the first process, as far as the budget goes; the
    // rest is counted; the other processes point at it.
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let ps = v["processes"].as_object().unwrap();
    assert_eq!(ps.len(), procs as usize);
    let first = &ps["1"];
    let listed = first["files"].as_array().unwrap().len() as u64;
    assert!(listed > 1000, "{listed} rows listed");
    assert_eq!(listed + first["files_omitted"].as_u64().unwrap(), 1 << 16);
    assert_eq!(first["files_shared_with"], serde_json::Value::Null);
    for (pid, p) in ps.iter().filter(|(pid, _)| *pid != "1") {
        assert_eq!(p["files_shared_with"], 1, "{pid}");
        assert_eq!(p["files"].as_array().unwrap().len(), 0, "{pid}");
        assert_eq!(p["files_omitted"], 0, "{pid}");
    }
    // The table form says so too.
    let small = both(&shared_table(3, b'a'), &Limits::default()).unwrap();
    let table = small.render_table(false);
    assert!(
        table.contains("process 3: ")
            && table.contains("  files: the descriptor table of process 1 (shared)"),
        "{}",
        &table[table.len().saturating_sub(2000)..]
    );
    // The diff sees the table's rows change once.
    let d: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    let both = d["processes"]["in_both"].as_array().unwrap();
    assert_eq!(both.len(), procs as usize);
    assert_eq!(
        both[0]["files"]["added"].as_array().unwrap().len() as u64,
        listed
    );
    assert!(both[1..].iter().all(|p| p.get("files").is_none()));
}

#[test]
fn many_full_descriptor_tables_are_held_and_listed_under_caps() {
    // 20 processes, each its own table of 65,536 descriptors on a 4,096-byte name: more
    // descriptors than are held (1 Mi), more rows than are listed.
    let one = shared_table(1, b'a');
    let v = both(&one, &Limits::default()).unwrap();
    let listed = v.processes[&1].files.len();
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let fds: Vec<Vec<u8>> = (0..1u64 << 16)
        .map(|fd| {
            let mut e = Vec::new();
            for (f, v) in [(1u64, 1u64), (3, 1), (4, fd)] {
                varint(f << 3, &mut e);
                varint(v, &mut e);
            }
            e
        })
        .collect();
    let fdinfo = criu_image(FDINFO_MAGIC, &fds);
    let mut name = vec![b'/'];
    name.extend(vec![b'x'; 4095]);
    let mut reg = Vec::new();
    varint((6 << 3) | 2, &mut reg);
    varint(name.len() as u64, &mut reg);
    reg.extend(&name);
    members.push((
        "checkpoint/files.img".into(),
        criu_image(FILES_MAGIC, &[files_entry(1, 1, 3, &reg)]),
    ));
    for pid in 1..=20u64 {
        let mut ids = Vec::new();
        varint(2 << 3, &mut ids);
        varint(pid, &mut ids);
        members.push((format!("checkpoint/fdinfo-{pid}.img"), fdinfo.clone()));
        members.push((
            format!("checkpoint/ids-{pid}.img"),
            criu_image(IDS_MAGIC, &[ids]),
        ));
    }
    let refs: Vec<(&str, Vec<u8>)> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    // (One reader: both parse the same way, and 1.3 Mi descriptors take a while in a
    // debug build.)
    let v = deep_seekable(Cursor::new(archive(&refs)), &Limits::default()).unwrap();
    let rows: usize = v.processes.values().map(|p| p.files.len()).sum();
    let omitted: u64 = v.processes.values().map(|p| p.files_omitted).sum();
    assert_eq!(rows, listed, "the same row budget for the whole view");
    assert_eq!(
        rows as u64 + omitted,
        20 << 16,
        "every descriptor listed or counted"
    );
    assert!(v.processes.values().all(|p| p.files_shared_with.is_none()));
    assert_eq!(v.processes[&20].files_omitted, 1 << 16);
    // The table says what it left out.
    let table = v.render_table(false);
    assert!(
        table.contains("file ... and 65536 more not listed"),
        "{}",
        &table[table.len().saturating_sub(2000)..]
    );
}
