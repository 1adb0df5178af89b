//! The deep view (`inspect --deep`) on hostile archives generated in code: the nested
//! `rootfs-diff.tar` (plain, gzip, zstd) breaking the tar rules or decompressing without
//! end, `deleted.files` that is not a list of paths, CRIU images (files, fdinfo, stats) with
//! lying sizes, too big, or with names past PATH_MAX. Each is refused with its reason
//! code from both the seekable and the streaming reader, within bounded time; and the
//! links, devices and FIFOs an attacker leaves in the root filesystem are listed, never
//! followed.

mod inspect_support;

use std::io::Cursor;
use std::time::{Duration, Instant};

use ckvault::inspect::deep::DeepView;
use ckvault::inspect::{InspectError, Limits, deep_reader, deep_seekable};
use inspect_support::*;

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
