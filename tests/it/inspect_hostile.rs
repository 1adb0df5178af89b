//! Hostile archives, generated in code: one per rejection rule of `ckvault::inspect`,
//! each asserting the exact reason code from both `inspect_reader` and `inspect_seekable`,
//! plus positive synthetic archives in the CRI-O, containerd and Podman layouts as tar,
//! tar.gz and tar.zst.

use std::io::Cursor;
use std::time::{Duration, Instant};

use crate::support::inspect::*;
use ckvault::inspect::{
    ArchiveFormat, Engine, InspectError, Inspection, Limits, inspect_reader, inspect_seekable,
    render_table,
};

fn both(
    bytes: &[u8],
    limits: &Limits,
) -> (
    Result<Inspection, InspectError>,
    Result<Inspection, InspectError>,
) {
    (
        inspect_reader(bytes, limits),
        inspect_seekable(Cursor::new(bytes), limits),
    )
}

/// Asserts both APIs reject with `code`; returns the reader's error.
#[track_caller]
fn rejected_with(bytes: &[u8], limits: &Limits, code: &str) -> InspectError {
    let (a, b) = both(bytes, limits);
    let a = a.expect_err("inspect_reader accepted a hostile archive");
    let b = b.expect_err("inspect_seekable accepted a hostile archive");
    assert_eq!(a.code(), code, "inspect_reader: {a}");
    assert_eq!(b.code(), code, "inspect_seekable: {b}");
    assert!(!a.to_string().is_empty());
    a
}

#[track_caller]
fn rejected(bytes: &[u8], code: &str) -> InspectError {
    rejected_with(bytes, &Limits::default(), code)
}

#[track_caller]
fn accepted(bytes: &[u8], limits: &Limits) -> Inspection {
    let (a, b) = both(bytes, limits);
    let a = a.unwrap_or_else(|e| panic!("inspect_reader rejected ({}): {e}", e.code()));
    let b = b.unwrap_or_else(|e| panic!("inspect_seekable rejected ({}): {e}", e.code()));
    assert_eq!(a, b, "the two APIs disagree");
    a
}

fn id() -> Ident {
    Ident::new("forensics", "web-7d4", "app")
}

/// A checkpoint (CRI-O layout) with extra tar bytes inserted before its end marker.
fn ckpt_plus(extra: &Tar) -> Vec<u8> {
    let l = Layout::CriO;
    let mut t = checkpoint_with(l, &id(), &spec_dump(l, &id()), &config_dump(l, &id()));
    t.buf.extend_from_slice(&extra.buf);
    t.finish()
}

fn ckpt_bytes(l: Layout) -> Vec<u8> {
    checkpoint(l, &id())
}

// ---------------------------------------------------------------- positive layouts

fn check_layout(inspection: &Inspection, layout: Layout, format: ArchiveFormat) {
    let i = inspection;
    assert_eq!(i.format, format);
    assert_eq!(i.identity.namespace.as_deref(), Some("forensics"));
    assert_eq!(i.identity.pod.as_deref(), Some("web-7d4"));
    assert_eq!(i.identity.container.as_deref(), Some("app"));
    assert_eq!(i.identity.container_id.as_deref(), Some(CTR_ID));
    assert_eq!(
        i.identity.image.as_deref(),
        Some("registry.example/app:1.2")
    );
    let (engine, runtime) = match layout {
        Layout::CriO => (Engine::CriO, "runc"),
        Layout::Containerd => (Engine::Containerd, "io.containerd.runc.v2"),
        Layout::Podman => (Engine::Podman, "crun"),
    };
    assert_eq!(i.identity.engine, Some(engine));
    assert_eq!(i.identity.runtime.as_deref(), Some(runtime));
    assert!(
        i.identity
            .image_ref
            .as_deref()
            .unwrap()
            .contains("639594076718")
    );
    assert!(i.identity.created_at.is_some());
    assert_eq!(i.summary.memory_pages_bytes, PAGES_BYTES as u64);
    assert_eq!(i.summary.rootfs_diff_bytes, 1024);
    assert_eq!(i.summary.process_count, 2);
    assert_eq!(i.processes.len(), 2);
    assert_eq!(i.processes[0].pid, 1);
    assert_eq!(i.processes[0].ppid, 0);
    assert_eq!(i.processes[0].threads, 2);
    assert_eq!(i.processes[0].comm.as_deref(), Some("memhog"));
    assert_eq!(i.processes[1].pid, 7);
    assert_eq!(i.processes[1].ppid, 1);
    assert_eq!(i.processes[1].comm.as_deref(), Some("worker"));
    let names: Vec<&str> = i.criu_images.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "checkpoint/core-1.img",
            "checkpoint/core-2.img",
            "checkpoint/core-7.img",
            "checkpoint/inventory.img",
            "checkpoint/pages-1.img",
            "checkpoint/pstree.img"
        ]
    );
    let table = render_table(i);
    for want in [
        "forensics",
        "web-7d4",
        "memhog",
        "worker",
        engine.as_str(),
        "pages-1.img",
    ] {
        assert!(table.contains(want), "table lacks {want}:\n{table}");
    }
    // The child is indented under its parent.
    assert!(
        table.contains("\n  [1] memhog") && table.contains("\n    [7] worker"),
        "{table}"
    );
}

#[test]
fn layouts_in_every_format_are_accepted() {
    let limits = Limits::default();
    for layout in [Layout::CriO, Layout::Containerd, Layout::Podman] {
        let tar = ckpt_bytes(layout);
        check_layout(&accepted(&tar, &limits), layout, ArchiveFormat::Tar);
        check_layout(
            &accepted(&gzip(&tar), &limits),
            layout,
            ArchiveFormat::TarGzip,
        );
        check_layout(
            &accepted(&zstd(&tar), &limits),
            layout,
            ArchiveFormat::TarZstd,
        );
    }
}

#[test]
fn accepted_variants() {
    let limits = Limits::default();
    // ./ prefixes, a ./ root directory, one zero block then EOF, trailing garbage.
    let mut t = Tar::new();
    t.dir("./");
    t.file("./config.dump", &config_dump(Layout::Podman, &id()));
    t.dir("./checkpoint/");
    t.file("./checkpoint/pages-2.img", &[1u8; 100]);
    let mut one_zero = t.buf.clone();
    one_zero.extend_from_slice(&[0u8; 512]);
    let i = accepted(&one_zero, &limits);
    assert_eq!(i.summary.memory_pages_bytes, 100);
    assert_eq!(
        i.identity.engine, None,
        "no spec.dump, so no io.container.manager"
    );
    assert_eq!(i.identity.namespace.as_deref(), Some("forensics"));
    let mut garbage = t.finish();
    garbage.extend_from_slice(b"trailing garbage after the end marker");
    accepted(&garbage, &limits);

    // PAX path and an agreeing PAX size; GNU long name; ustar prefix; base-256 size.
    let long = format!("checkpoint/{}.img", "x".repeat(150));
    let mut t = Tar::new();
    t.file("spec.dump", &spec_dump(Layout::CriO, &id()));
    t.pax(&[
        ("path", long.as_bytes()),
        ("size", b"3"),
        ("mtime", b"1.25"),
    ]);
    t.header(Header::ustar(b"short", b'0', 3)).data(b"abc");
    t.long_name(&format!("checkpoint/{}.img", "y".repeat(150)));
    t.header(Header::gnu(b"trunc", b'0', 2)).data(b"ab");
    let mut h = Header::ustar(b"z.img", b'0', 1);
    h.set_prefix(b"checkpoint/sub");
    t.header(h).data(b"z");
    let mut h = Header::gnu(b"checkpoint/b256.img", b'0', 0);
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[11] = 4;
    h.put(124, &f);
    t.header(h).data(b"four");
    let i = accepted(&t.finish(), &limits);
    let names: Vec<_> = i
        .criu_images
        .iter()
        .map(|m| (m.name.clone(), m.size))
        .collect();
    assert_eq!(names[0], (long, 3));
    assert!(names[1].0.ends_with("yyy.img"));
    assert_eq!(names[2], ("checkpoint/sub/z.img".to_owned(), 1));
    assert_eq!(names[3], ("checkpoint/b256.img".to_owned(), 4));
}

// ---------------------------------------------------------------- paths

#[test]
fn absolute_paths() {
    let mut t = Tar::new();
    t.file("/etc/cron.d/x", b"x");
    rejected(&ckpt_plus(&t), "absolute-path");
    let mut t = Tar::new();
    t.pax(&[("path", b"/etc/passwd")]).file("innocent", b"x");
    rejected(&ckpt_plus(&t), "absolute-path");
    let mut t = Tar::new();
    t.long_name("/root/.ssh/authorized_keys")
        .file("innocent", b"x");
    rejected(&ckpt_plus(&t), "absolute-path");
}

#[test]
fn dot_dot_paths() {
    for p in ["../x", "checkpoint/../../x", "a/..", "./.."] {
        let mut t = Tar::new();
        t.file(p, b"x");
        rejected(&ckpt_plus(&t), "dot-dot-path");
    }
    let mut h = Header::ustar(b"x", b'0', 0);
    h.set_prefix(b"..");
    let mut t = Tar::new();
    t.header(h);
    rejected(&ckpt_plus(&t), "dot-dot-path");
}

#[test]
fn empty_nul_and_non_utf8_paths() {
    let mut t = Tar::new();
    t.file("", b"x");
    rejected(&ckpt_plus(&t), "empty-path");
    let mut t = Tar::new();
    t.file("./", b"x");
    rejected(&ckpt_plus(&t), "empty-path");
    let mut t = Tar::new();
    t.pax(&[("path", b"config.dump\0.evil")]).file("x", b"x");
    rejected(&ckpt_plus(&t), "nul-in-path");
    let mut t = Tar::new();
    let data = b"config.dump\0evil\0";
    t.header(Header::gnu(b"././@LongLink", b'L', data.len() as u64))
        .data(data)
        .file("x", b"x");
    rejected(&ckpt_plus(&t), "nul-in-path");
    let mut t = Tar::new();
    t.header(Header::ustar(b"caf\xe9", b'0', 0));
    rejected(&ckpt_plus(&t), "path-not-utf8");
}

#[test]
fn duplicate_members() {
    let spec = spec_dump(Layout::CriO, &id());
    let mut t = Tar::new();
    t.file(
        "config.dump",
        &config_dump(Layout::CriO, &Ident::new("x", "y", "z")),
    );
    rejected(&ckpt_plus(&t), "duplicate-member");
    let mut t = Tar::new();
    t.file("./spec.dump", &spec);
    rejected(&ckpt_plus(&t), "duplicate-member");
    let mut t = Tar::new();
    t.dir("checkpoint");
    rejected(&ckpt_plus(&t), "duplicate-member");
    let mut t = Tar::new();
    t.file("checkpoint//pstree.img", b"");
    rejected(&ckpt_plus(&t), "duplicate-member");
}

// ---------------------------------------------------------------- member types

#[test]
fn links_are_rejected() {
    let mut t = Tar::new();
    t.typed("etc", b'2', "/etc").dir("etc");
    let e = rejected(&ckpt_plus(&t), "link-member");
    assert!(e.to_string().contains("symbolic link"));
    // A path through an earlier `..` symlink.
    let mut t = Tar::new();
    t.typed("up", b'2', "..").file("up/escaped", b"x");
    rejected(&ckpt_plus(&t), "link-member");
    let mut t = Tar::new();
    t.typed("hl", b'1', "config.dump");
    let e = rejected(&ckpt_plus(&t), "link-member");
    assert!(e.to_string().contains("hard link"));
}

#[test]
fn special_members_are_rejected() {
    for (flag, what) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "FIFO"),
    ] {
        let mut t = Tar::new();
        t.typed("dev", flag, "");
        let e = rejected(&ckpt_plus(&t), "special-member");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn sparse_unknown_and_global_headers() {
    let mut t = Tar::new();
    t.header(Header::gnu(b"sparse", b'S', 0));
    rejected(&ckpt_plus(&t), "sparse-member");
    let mut t = Tar::new();
    t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("s", b"");
    rejected(&ckpt_plus(&t), "sparse-member");
    for flag in [b'D', b'M', b'V', b'N', b'X', b'A', b'9'] {
        let mut t = Tar::new();
        t.typed("odd", flag, "");
        rejected(&ckpt_plus(&t), "unknown-member-type");
    }
    let mut t = Tar::new();
    let rec = pax_record("path", b"config.dump");
    t.header(Header::ustar(b"global", b'g', rec.len() as u64))
        .data(&rec);
    rejected(&ckpt_plus(&t), "pax-global-header");
}

#[test]
fn directory_with_data() {
    let mut t = Tar::new();
    t.header(Header::ustar(b"d/", b'5', 512)).data(&[0u8; 512]);
    rejected(&ckpt_plus(&t), "directory-with-data");
}

// ---------------------------------------------------------------- extension headers

#[test]
fn extension_header_too_large() {
    // PAX and GNU headers declaring more than 1 MiB are refused before their data is read.
    let mut t = Tar::new();
    t.header(Header::ustar(b"PaxHeaders/x", b'x', (1 << 20) + 1));
    rejected(&ckpt_plus(&t), "extension-header-too-large");
    let mut t = Tar::new();
    t.header(Header::gnu(b"././@LongLink", b'K', 1 << 21));
    rejected(&ckpt_plus(&t), "extension-header-too-large");
}

#[test]
fn gnu_long_name_of_256_mib_is_not_buffered() {
    const CLAIM: u64 = 256 << 20;
    let head = Header::gnu(b"././@LongLink", b'L', CLAIM).finish().to_vec();
    // Stream: the header, then 256 MiB of zeros served on demand and counted.
    let served = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = ZeroTail {
        head: head.clone(),
        zeros: CLAIM,
        served: served.clone(),
    };
    let t = Instant::now();
    let e = inspect_reader(reader, &Limits::default()).unwrap_err();
    assert_eq!(e.code(), "extension-header-too-large", "{e}");
    assert!(
        served.get() <= 4096,
        "read {} bytes past the header",
        served.get()
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Seekable: the header and no data at all; the size check comes first.
    let e = inspect_seekable(Cursor::new(&head), &Limits::default()).unwrap_err();
    assert_eq!(e.code(), "extension-header-too-large");
    // The same 256 MiB long name as a zstd stream of under 10 KiB (RLE blocks).
    let mut blocks = vec![ZBlock::Raw(head)];
    blocks.extend((0..2048).map(|_| ZBlock::Rle(b'a', 128 * 1024)));
    let bomb = zstd_frame(17, &blocks);
    assert!(bomb.len() < 10 * 1024, "{}", bomb.len());
    let t = Instant::now();
    rejected(&bomb, "extension-header-too-large");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn ambiguous_extension_sequences() {
    // GHSA-3pv8-6f4r-ffg2: PAX x, then GNU L, then the file.
    let mut t = Tar::new();
    t.pax(&[("path", b"config.dump")])
        .long_name("other")
        .file("f", b"x");
    rejected(&ckpt_plus(&t), "extension-sequence");
    let mut t = Tar::new();
    t.long_name("other")
        .pax(&[("path", b"config.dump")])
        .file("f", b"x");
    rejected(&ckpt_plus(&t), "extension-sequence");
    let mut t = Tar::new();
    t.pax(&[("path", b"a")])
        .pax(&[("path", b"b")])
        .file("f", b"x");
    rejected(&ckpt_plus(&t), "extension-sequence");
    let mut t = Tar::new();
    t.long_name("a").long_name("b").file("f", b"x");
    rejected(&ckpt_plus(&t), "extension-sequence");
    // An extension header followed by the end of the archive.
    let mut t = Tar::new();
    t.pax(&[("path", b"a")]);
    rejected(&ckpt_plus(&t), "extension-sequence");
}

#[test]
fn malformed_pax_records() {
    for data in [
        &b"99 path=a\n"[..],
        b"8 path=a",
        b"7 pathaa\n",
        b"009 path=a\n",
        b"10 size=1x\n",
        b"12 size=-10\n",
        b"5 size=\n",
    ] {
        let mut t = Tar::new();
        t.header(Header::ustar(b"PaxHeaders/x", b'x', data.len() as u64))
            .data(data)
            .file("f", b"x");
        rejected(&ckpt_plus(&t), "pax-malformed");
    }
    let mut t = Tar::new();
    t.pax(&[("path", b"a"), ("path", b"b")]).file("f", b"x");
    rejected(&ckpt_plus(&t), "pax-malformed");
}

// ---------------------------------------------------------------- sizes

#[test]
fn pax_size_with_ustar_zero_is_a_conflict() {
    // CVE-2025-62518: ustar size 0, PAX size non-zero; the "data" hides a header that a
    // reader honouring the ustar size would see as the next member.
    let smuggled = Header::ustar(b"config.dump", b'0', 0).finish();
    let mut t = Tar::new();
    t.pax(&[("size", b"512")])
        .header(Header::ustar(b"innocent", b'0', 0))
        .data(&smuggled);
    let e = rejected(&ckpt_plus(&t), "size-conflict");
    assert!(e.to_string().contains("512"));
}

#[test]
fn pax_size_disagreeing_with_nonzero_ustar_is_a_conflict() {
    // CVE-2026-33055: a PAX size ignored when the ustar size is non-zero.
    let mut t = Tar::new();
    t.pax(&[("size", b"512")])
        .header(Header::ustar(b"innocent", b'0', 1024))
        .data(&[0u8; 1024]);
    rejected(&ckpt_plus(&t), "size-conflict");
    let mut t = Tar::new();
    t.pax(&[("size", b"1")])
        .header(Header::ustar(b"innocent", b'0', 0));
    rejected(&ckpt_plus(&t), "size-conflict");
}

#[test]
fn huge_pax_size_with_ustar_zero_is_allowed_but_must_exist() {
    // The one allowed disagreement: ustar 0 with a PAX size >= 8 GiB. The size is then
    // honoured, so the member runs past the end of this small archive.
    let mut t = Tar::new();
    t.pax(&[("size", b"8589934592")])
        .header(Header::ustar(b"checkpoint/pages-9.img", b'0', 0))
        .data(&[0u8; 512]);
    rejected(&ckpt_plus(&t), "truncated");
    let mut t = Tar::new();
    t.pax(&[("size", b"8589934591")])
        .header(Header::ustar(b"checkpoint/pages-9.img", b'0', 0));
    rejected(&ckpt_plus(&t), "size-conflict");
}

#[test]
fn truncated_archives() {
    let full = ckpt_bytes(Layout::Podman);
    // Cut inside the pages data: the header promises more than the stream has.
    let pages_at = full
        .windows(22)
        .position(|w| w == b"checkpoint/pages-1.img")
        .unwrap();
    rejected(&full[..pages_at + 512 + 100], "truncated");
    // Cut inside a header.
    rejected(&full[..pages_at + 200], "truncated");
    // Cut inside config.dump (read, not skipped).
    let cfg_at = full.windows(11).position(|w| w == b"config.dump").unwrap();
    rejected(&full[..cfg_at + 512 + 10], "truncated");
    // Cut at a header boundary: no end-of-archive marker.
    rejected(&full[..pages_at], "missing-end-marker");
    // A member claiming 1 TiB in a small file.
    let mut t = Tar::new();
    t.header(Header::ustar(b"checkpoint/pages-3.img", b'0', 1 << 40));
    rejected(&ckpt_plus(&t), "truncated");
}

#[test]
fn end_marker_rules() {
    let mut t = Tar::new();
    t.file("config.dump", &config_dump(Layout::Podman, &id()));
    let mut lone = t.buf.clone();
    lone.extend_from_slice(&[0u8; 512]);
    lone.extend_from_slice(&Header::ustar(b"hidden", b'0', 0).finish());
    lone.extend_from_slice(&[0u8; 1024]);
    rejected(&lone, "lone-zero-block");
}

// ---------------------------------------------------------------- header integrity

#[test]
fn bad_checksum() {
    let mut full = ckpt_bytes(Layout::CriO);
    let at = full.windows(9).position(|w| w == b"spec.dump").unwrap();
    full[at] = b'S';
    let e = rejected(&full, "bad-checksum");
    assert!(e.to_string().contains("offset"));
    // Not a tar at all.
    rejected(&[b'A'; 4096], "bad-checksum");
}

#[test]
fn bad_headers() {
    // v7 header (no magic).
    let mut h = Header::ustar(b"x", b'0', 0);
    h.put(257, &[0u8; 8]);
    let mut t = Tar::new();
    t.header(h);
    rejected(&ckpt_plus(&t), "bad-header");
    // Size field that is not octal.
    let mut h = Header::ustar(b"x", b'0', 0);
    h.put(124, b"00000009999\0");
    let mut t = Tar::new();
    t.header(h);
    rejected(&ckpt_plus(&t), "bad-header");
    // Negative base-256 size.
    let mut h = Header::gnu(b"x", b'0', 0);
    h.put(124, &[0xff; 12]);
    let mut t = Tar::new();
    t.header(h);
    rejected(&ckpt_plus(&t), "bad-header");
}

// ---------------------------------------------------------------- counts and caps

#[test]
fn too_many_entries() {
    let limits = Limits {
        max_entries: 5,
        ..Limits::default()
    };
    rejected_with(&ckpt_bytes(Layout::Podman), &limits, "too-many-entries");
}

#[test]
fn paths_too_large() {
    let limits = Limits {
        max_path_bytes: 100,
        ..Limits::default()
    };
    rejected_with(&ckpt_bytes(Layout::Podman), &limits, "paths-too-large");
}

#[test]
fn timeout() {
    let limits = Limits {
        deadline: Duration::ZERO,
        ..Limits::default()
    };
    rejected_with(&ckpt_bytes(Layout::Podman), &limits, "timeout");
}

// ---------------------------------------------------------------- JSON

#[test]
fn over_deep_json() {
    let deep = format!(
        "{{\"annotations\":{{}},\"x\":{}1{}}}",
        "[".repeat(70),
        "]".repeat(70)
    );
    let l = Layout::CriO;
    let tar = checkpoint_with(l, &id(), deep.as_bytes(), &config_dump(l, &id())).finish();
    rejected(&tar, "json-too-deep");
    // serde_json's own limit (128) is never reached: 10,000 levels are refused by the scan.
    let deeper = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let tar = checkpoint_with(l, &id(), &spec_dump(l, &id()), deeper.as_bytes()).finish();
    rejected(&tar, "json-too-deep");
    // Deep nesting inside the CRI-O Labels JSON string is refused too.
    let labels = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let spec = serde_json::json!({"annotations": {"io.kubernetes.cri-o.Labels": labels}});
    let tar = checkpoint_with(
        l,
        &id(),
        spec.to_string().as_bytes(),
        &config_dump(l, &id()),
    )
    .finish();
    rejected(&tar, "json-too-deep");
}

#[test]
fn oversized_json() {
    let l = Layout::Podman;
    let limits = Limits {
        max_json_bytes: 1024,
        ..Limits::default()
    };
    let mut big = config_dump(l, &id());
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"pad\":\"{}\"}}", "p".repeat(2000)).as_bytes());
    let tar = checkpoint_with(l, &id(), &spec_dump(l, &id()), &big).finish();
    let e = rejected_with(&tar, &limits, "json-too-large");
    assert!(e.to_string().contains("config.dump"));
    // Default limit: a 5 MiB config.dump.
    let huge = format!("{{\"pad\":\"{}\"}}", "p".repeat(5 << 20));
    let tar = checkpoint_with(l, &id(), &spec_dump(l, &id()), huge.as_bytes()).finish();
    rejected(&tar, "json-too-large");
}

#[test]
fn invalid_json() {
    let l = Layout::CriO;
    let cfg = config_dump(l, &id());
    for spec in [
        &b"not json"[..],
        br#"{"annotations":{"io.kubernetes.pod.name":"a","io.kubernetes.pod.name":"b"}}"#,
        br#"{"annotations":{"io.kubernetes.pod.name":7}}"#,
        br#"{"annotations":{},"annotations":{}}"#,
        br#"{"annotations":{"io.kubernetes.cri-o.Labels":"{not json"}}"#,
    ] {
        let tar = checkpoint_with(l, &id(), spec, &cfg).finish();
        rejected(&tar, "json-invalid");
    }
    let tar = checkpoint_with(l, &id(), &spec_dump(l, &id()), br#"{"id":42}"#).finish();
    rejected(&tar, "json-invalid");
}

// ---------------------------------------------------------------- compression

#[test]
fn zstd_window_over_128_mib() {
    let tar = ckpt_bytes(Layout::CriO);
    // 2^27 (128 MiB) is accepted; 2^28 is refused by the decoder.
    accepted(&zstd_frame(27, &raw_blocks(&tar)), &Limits::default());
    rejected(&zstd_frame(28, &raw_blocks(&tar)), "zstd-window-too-large");
    rejected(&zstd_frame(31, &raw_blocks(&tar)), "zstd-window-too-large");
    // The same from the zstd encoder itself, asked for a 256 MiB window with long
    // distance matching and no content size (as a streaming compressor of a big file).
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(28).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.include_contentsize(false).unwrap();
    for chunk in tar.chunks(1000) {
        std::io::Write::write_all(&mut enc, chunk).unwrap();
        std::io::Write::flush(&mut enc).unwrap();
    }
    rejected(&enc.finish().unwrap(), "zstd-window-too-large");
}

fn bomb_tar(bytes: usize) -> Vec<u8> {
    let mut t = Tar::new();
    t.file("config.dump", &config_dump(Layout::Podman, &id()));
    t.file("checkpoint/pages-1.img", &vec![0u8; bytes]);
    t.finish()
}

#[test]
fn gzip_bomb_is_cut_off() {
    let limits = Limits {
        max_decompressed_bytes: 1 << 20,
        ..Limits::default()
    };
    let gz = gzip(&bomb_tar(8 << 20));
    assert!(gz.len() < 64 * 1024);
    let e = rejected_with(&gz, &limits, "decompressed-too-large");
    assert!(e.to_string().contains("1048576"));
    // With the default limit the same archive is fine.
    accepted(&gz, &Limits::default());
}

#[test]
fn zstd_bomb_is_cut_off() {
    let limits = Limits {
        max_decompressed_bytes: 1 << 20,
        ..Limits::default()
    };
    rejected_with(&zstd(&bomb_tar(8 << 20)), &limits, "decompressed-too-large");
    // 64 GiB of zeros in RLE blocks: about 2 MiB of zstd; cut off after the limit.
    let mut head = Tar::new();
    head.header(Header::ustar(b"checkpoint/pages-1.img", b'0', 64 << 30));
    let mut blocks = vec![ZBlock::Raw(head.buf)];
    blocks.extend((0..(8 * 1024)).map(|_| ZBlock::Rle(0, 128 * 1024)));
    let t = Instant::now();
    rejected_with(&zstd_frame(17, &blocks), &limits, "decompressed-too-large");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn corrupt_compressed_streams() {
    let mut gz = gzip(&ckpt_bytes(Layout::CriO));
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    gz[mid + 1] ^= 0xff;
    let e = inspect_reader(&gz[..], &Limits::default()).unwrap_err();
    assert!(
        ["decompress-failed", "bad-checksum", "truncated"].contains(&e.code()),
        "{} {e}",
        e.code()
    );
    let gz = gzip(&ckpt_bytes(Layout::CriO));
    rejected(&gz[..gz.len() / 2], "truncated");
    // A zstd block of the reserved type 3.
    let mut z = zstd_frame(17, &[ZBlock::Raw(vec![0; 10])]);
    z[6] |= 0b110;
    rejected(&z, "decompress-failed");
    // A zstd frame header cut short.
    rejected(&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff], "truncated");
}

// ---------------------------------------------------------------- identity

#[test]
fn crio_annotation_and_labels_disagree() {
    let l = Layout::CriO;
    let mut spec: serde_json::Value = serde_json::from_slice(&spec_dump(l, &id())).unwrap();
    let labels = serde_json::json!({
        "io.kubernetes.pod.namespace": "kube-system",
        "io.kubernetes.pod.name": "web-7d4",
        "io.kubernetes.container.name": "app",
    });
    spec["annotations"]["io.kubernetes.cri-o.Labels"] = labels.to_string().into();
    let tar = checkpoint_with(
        l,
        &id(),
        spec.to_string().as_bytes(),
        &config_dump(l, &id()),
    )
    .finish();
    let e = rejected(&tar, "identity-conflict");
    let msg = e.to_string();
    assert!(
        msg.contains("kube-system") && msg.contains("forensics"),
        "{msg}"
    );
}

#[test]
fn crio_and_containerd_annotations_disagree() {
    let l = Layout::CriO;
    let mut spec: serde_json::Value = serde_json::from_slice(&spec_dump(l, &id())).unwrap();
    spec["annotations"]["io.kubernetes.cri.sandbox-name"] = "db-0".into();
    let tar = checkpoint_with(
        l,
        &id(),
        spec.to_string().as_bytes(),
        &config_dump(l, &id()),
    )
    .finish();
    let e = rejected(&tar, "identity-conflict");
    assert!(e.to_string().contains("db-0"));
}

#[test]
fn podman_spec_and_config_disagree() {
    let l = Layout::Podman;
    let other = Ident::new("forensics", "web-7d4", "sidecar");
    let tar = checkpoint_with(l, &id(), &spec_dump(l, &id()), &config_dump(l, &other)).finish();
    rejected(&tar, "identity-conflict");
}

#[test]
fn not_a_checkpoint() {
    let mut t = Tar::new();
    t.file("hello.txt", b"hello").dir("etc/");
    rejected(&t.finish(), "not-a-checkpoint");
    rejected(&[0u8; 1024], "not-a-checkpoint");
    rejected(&[], "missing-end-marker");
}

#[test]
fn criu_pages_without_a_description_or_index_are_not_a_checkpoint() {
    // Memory pages alone, in checkpoint/ or not: nothing says what this is.
    let mut t = Tar::new();
    t.dir("checkpoint/")
        .file("checkpoint/pages-1.img", &[7u8; 4096]);
    let e = rejected(&t.finish(), "not-a-checkpoint");
    assert!(e.to_string().contains("inventory.img"), "{e}");
    let mut t = Tar::new();
    t.file("pages-1.img", &[7u8; 4096]);
    rejected(&t.finish(), "not-a-checkpoint");
    // Other CRIU images without inventory.img or pstree.img, a rootfs diff, text files.
    let mut t = Tar::new();
    t.file("checkpoint/pagemap-1.img", b"x")
        .file("checkpoint/core-1.img", &core_img("sh"))
        .file("rootfs-diff.tar", b"")
        .file("notes.txt", b"not a checkpoint\n");
    rejected(&t.finish(), "not-a-checkpoint");
    // CRIU's index alone is a checkpoint (a raw CRIU dump, no engine metadata).
    let mut t = Tar::new();
    t.file("checkpoint/inventory.img", b"")
        .file("checkpoint/pages-1.img", &[7u8; 4096]);
    let i = accepted(&t.finish(), &Limits::default());
    assert_eq!(i.summary.memory_pages_bytes, 4096);
}

// ---------------------------------------------------------------- CRIU images

#[test]
fn criu_image_rules() {
    let l = Layout::CriO;
    let limits = Limits {
        max_criu_image_bytes: 16,
        ..Limits::default()
    };
    rejected_with(&ckpt_bytes(l), &limits, "criu-image-too-large");
    let limits = Limits {
        max_processes: 1,
        ..Limits::default()
    };
    rejected_with(&ckpt_bytes(l), &limits, "too-many-processes");
    let mut t = Tar::new();
    t.file(
        "checkpoint/pstree.img",
        b"\x19\x43\x56\x54\x30\x30\x27\x50\x09\x00\x00\x00\x08",
    );
    let bad = {
        let mut b = checkpoint_with(l, &id(), &spec_dump(l, &id()), &config_dump(l, &id()));
        // Replace by building a fresh archive with only the broken pstree.
        b.buf.clear();
        b.file("spec.dump", &spec_dump(l, &id()));
        b.buf.extend_from_slice(&t.buf);
        b.finish()
    };
    rejected(&bad, "criu-malformed");
    let mut t = Tar::new();
    t.file("spec.dump", &spec_dump(l, &id())).file(
        "checkpoint/pstree.img",
        &pstree_img(&[(1, 0, &[1]), (1, 0, &[1])]),
    );
    rejected(&t.finish(), "criu-malformed");
    let mut t = Tar::new();
    t.file("checkpoint/core-1.img", &core_img(&"c".repeat(65)));
    rejected(&t.finish(), "criu-malformed");
}

#[test]
fn process_tree_cycles_render() {
    // pid 2's parent is 3 and 3's parent is 2: no root. Both are still listed.
    let mut t = Tar::new();
    t.file(
        "checkpoint/pstree.img",
        &pstree_img(&[(2, 3, &[2]), (3, 2, &[3])]),
    );
    let i = accepted(&t.finish(), &Limits::default());
    let table = render_table(&i);
    assert!(table.contains("[2]") && table.contains("[3]"), "{table}");
}

// ---------------------------------------------------------------- rendering

#[test]
fn control_characters_are_escaped_in_the_table() {
    let evil = Ident::new(
        "forensics\u{202e}txt.exe",
        "web\u{9b}31m",
        "app\u{1b}]0;owned\u{7}\u{1b}[2J\r",
    );
    let l = Layout::CriO;
    let mut t = checkpoint_with(l, &evil, &spec_dump(l, &evil), &config_dump(l, &evil));
    t.file("checkpoint/core-9.img", &core_img("x\u{1b}[31m"));
    t.file("checkpoint/\u{1b}[H.img", b"");
    let i = accepted(&t.finish(), &Limits::default());
    assert_eq!(i.identity.container.as_deref(), Some(evil.ctr.as_str()));
    let table = render_table(&i);
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
        assert!(!table.contains(bad), "{bad:?} reached the table:\n{table}");
    }
    assert!(
        table.contains("app\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{d}"),
        "{table}"
    );
    assert!(table.contains("forensics\\u{202e}txt.exe"));
    assert!(table.contains("checkpoint/\\u{1b}[H.img"));
}

// ---------------------------------------------------------------- input errors

struct Failing;

impl std::io::Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied",
        ))
    }
}

#[test]
fn io_errors() {
    let e = inspect_reader(Failing, &Limits::default()).unwrap_err();
    assert_eq!(e.code(), "io");
}

#[test]
fn every_code_is_kebab_case_and_distinct_messages_name_limits() {
    let e = rejected_with(
        &ckpt_bytes(Layout::CriO),
        &Limits {
            max_entries: 3,
            ..Limits::default()
        },
        "too-many-entries",
    );
    assert!(e.to_string().contains('3'));
    assert!(e.code().chars().all(|c| c.is_ascii_lowercase() || c == '-'));
}
