//! Unit tests of the CRIU image decoders, on real and hand-made images.

use super::*;
use crate::inspect::model::Process;

#[test]
fn parses_real_pstree_bytes() {
    // checkpoint/pstree.img of a real Podman+CRIU checkpoint of one process.
    let img = [
        0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 0x0a, 0, 0, 0, 0x08, 0x01, 0x10, 0x00,
        0x18, 0x01, 0x20, 0x01, 0x28, 0x01,
    ];
    let p = parse_pstree(&img, 10).unwrap();
    assert_eq!(
        p,
        vec![Process {
            pid: 1,
            ppid: 0,
            comm: None,
            threads: 1
        }]
    );
    assert_eq!(parse_pstree(&img, 0), Err(CriuError::TooManyProcesses(0)));
}

#[test]
fn rejects_malformed() {
    let head = [0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50];
    for tail in [
        &[0x05, 0, 0, 0, 0x08][..],       // entry past the end
        &[0x02, 0, 0, 0, 0x08, 0x80][..], // varint past the end
        &[0x02, 0, 0, 0, 0x0b, 0x01][..], // group wire type
        &[0x02, 0, 0, 0, 0x00, 0x01][..], // field 0
        &[0x02, 0, 0, 0, 0x10, 0x01][..], // no pid
        &[0x01, 0][..],                   // short length
    ] {
        let mut img = head.to_vec();
        img.extend_from_slice(tail);
        assert!(parse_pstree(&img, 10).is_err(), "{tail:?}");
    }
    assert!(parse_pstree(&[1, 2, 3], 10).is_err());
    assert!(parse_core_comm(&head).is_err());
}

/// Protobuf helpers for hand-made images.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn vfield(n: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(n) << 3, out);
    varint(v, out);
}
fn bfield(n: u32, b: &[u8], out: &mut Vec<u8>) {
    varint((u64::from(n) << 3) | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
fn image(first: u32, magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut img = first.to_le_bytes().to_vec();
    img.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        img.extend_from_slice(&(e.len() as u32).to_le_bytes());
        img.extend_from_slice(e);
    }
    img
}
fn file_entry(kind: u64, id: u64, sub_field: u32, sub: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    vfield(1, kind, &mut e);
    vfield(2, id, &mut e);
    bfield(sub_field, sub, &mut e);
    e
}

#[test]
fn files_fdinfo_and_stats_parse() {
    let mut reg = Vec::new();
    bfield(6, b"/etc/hostname", &mut reg);
    let mut unix = Vec::new();
    vfield(2, 77, &mut unix);
    vfield(3, 1, &mut unix);
    vfield(4, 10, &mut unix);
    vfield(8, 0, &mut unix);
    bfield(11, b"\0sock", &mut unix);
    let mut opts = Vec::new();
    vfield(1, 4096, &mut opts);
    vfield(2, 8192, &mut opts);
    bfield(10, &opts, &mut unix);
    let mut inet = Vec::new();
    vfield(3, 2, &mut inet);
    vfield(4, 1, &mut inet);
    vfield(5, 6, &mut inet);
    vfield(6, 10, &mut inet);
    vfield(7, 8080, &mut inet);
    vfield(11, 0x0100_007f, &mut inet);
    let img = image(
        IMG_COMMON_MAGIC,
        FILES_MAGIC,
        &[
            file_entry(1, 3, 3, &reg),
            file_entry(5, 4, 16, &unix),
            file_entry(4, 5, 4, &inet),
        ],
    );
    let files = parse_files(&img, 10).unwrap();
    assert_eq!(files[0].detail, FileDetail::Reg(b"/etc/hostname".to_vec()));
    let FileDetail::Socket(u) = &files[1].detail else {
        panic!("{:?}", files[1]);
    };
    assert_eq!(
        (u.ino, u.state, u.name.as_slice()),
        (77, 10, &b"\0sock"[..])
    );
    assert_eq!((u.send_buffer, u.receive_buffer), (4096, 8192));
    let FileDetail::Socket(i) = &files[2].detail else {
        panic!("{:?}", files[2]);
    };
    assert_eq!(
        (i.family, i.src_port, i.src_addr.clone()),
        (2, 8080, vec![0x0100_007f])
    );
    assert!(parse_files(&img, 2).is_err(), "more files than allowed");

    let mut fd = Vec::new();
    vfield(1, 3, &mut fd);
    vfield(3, 1, &mut fd);
    vfield(4, 7, &mut fd);
    let fds = parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &[fd]), 4).unwrap();
    assert_eq!(
        fds,
        vec![FdInfo {
            fd: 7,
            id: 3,
            kind: 1
        }]
    );

    let mut dump = Vec::new();
    for (n, v) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (7, 70)] {
        vfield(n, v, &mut dump);
    }
    let mut entry = Vec::new();
    bfield(1, &dump, &mut entry);
    let stats = parse_stats(&image(IMG_SERVICE_MAGIC, STATS_MAGIC, &[entry]))
        .unwrap()
        .unwrap();
    assert_eq!((stats.frozen_time, stats.pages_written), (20, 70));
}

#[test]
fn hostile_files_and_fdinfo_are_refused() {
    // A path longer than PATH_MAX.
    let mut reg = Vec::new();
    bfield(6, &vec![b'a'; MAX_NAME_BYTES + 1], &mut reg);
    let img = image(IMG_COMMON_MAGIC, FILES_MAGIC, &[file_entry(1, 1, 3, &reg)]);
    assert!(parse_files(&img, 10).is_err());
    // An address of five words.
    let mut inet = Vec::new();
    for _ in 0..5 {
        vfield(11, 1, &mut inet);
    }
    let img = image(IMG_COMMON_MAGIC, FILES_MAGIC, &[file_entry(4, 1, 4, &inet)]);
    assert!(parse_files(&img, 10).is_err());
    // A sub-message whose length runs past its entry.
    let mut e = Vec::new();
    vfield(1, 1, &mut e);
    vfield(2, 1, &mut e);
    e.extend_from_slice(&[(3 << 3) | 2, 0x7f, 0x32]);
    assert!(parse_files(&image(IMG_COMMON_MAGIC, FILES_MAGIC, &[e]), 10).is_err());
    // A file id over 32 bits.
    let mut e = Vec::new();
    vfield(1, 1, &mut e);
    vfield(2, 1 << 40, &mut e);
    assert!(parse_files(&image(IMG_COMMON_MAGIC, FILES_MAGIC, &[e]), 10).is_err());
    // fdinfo without an fd number, and more fds than allowed.
    let mut fd = Vec::new();
    vfield(1, 3, &mut fd);
    vfield(3, 1, &mut fd);
    assert!(parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &[fd.clone()]), 4).is_err());
    vfield(4, 1, &mut fd);
    let many = vec![fd; 5];
    assert!(parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &many), 4).is_err());
    // Queued packets whose data runs past the image, too many, or no socket id.
    let mut pkt = Vec::new();
    vfield(1, 9, &mut pkt);
    vfield(2, 100, &mut pkt);
    let mut q = image(IMG_COMMON_MAGIC, SK_QUEUES_MAGIC, &[pkt.clone()]);
    q.extend_from_slice(&[0u8; 99]);
    assert!(parse_sk_queues(&q, 10).is_err());
    q.push(0);
    assert_eq!(parse_sk_queues(&q, 10).unwrap(), vec![(9, 100)]);
    assert!(parse_sk_queues(&q, 0).is_err());
    let mut no_id = Vec::new();
    vfield(2, 0, &mut no_id);
    assert!(parse_sk_queues(&image(IMG_COMMON_MAGIC, SK_QUEUES_MAGIC, &[no_id]), 10).is_err());
    // Stats with the common magic in place of the service magic; an empty fs image.
    assert!(parse_stats(&image(IMG_COMMON_MAGIC, STATS_MAGIC, &[])).is_err());
    assert!(parse_fs(&image(IMG_COMMON_MAGIC, FS_MAGIC, &[])).is_err());
}
