//! The test harness itself: `support::real_checkpoint` yields a real CRIU checkpoint
//! archive of the shape the kubelet gets from CRI-O, carrying the secret marker in its
//! memory pages and nowhere else.

use crate::support;

use support::contains;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `tar tvf` of `archive`: (member name, size) pairs.
fn tar_list(archive: &Path) -> Vec<(String, u64)> {
    let out = Command::new("tar")
        .arg("tvf")
        .arg(archive)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar tvf failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 listing")
        .lines()
        .map(|line| {
            // "-rw-r--r-- 0/0   16846848 2026-11-28 08:31 checkpoint/pages-1.img"
            let f: Vec<&str> = line.split_whitespace().collect();
            let size = f[2].parse().unwrap_or_else(|_| panic!("size in {line:?}"));
            (f[5..].join(" "), size)
        })
        .collect()
}

#[test]
fn real_checkpoint_has_pages_identity_and_marker() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let mode = fs::metadata(&archive).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "archive mode {mode:o}");

    let members = tar_list(&archive);
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    for required in ["config.dump", "spec.dump", "checkpoint/inventory.img"] {
        assert!(
            names.contains(&required),
            "{required} missing from {names:?}"
        );
    }
    let is_pages = |n: &str| n.starts_with("checkpoint/pages-") && n.ends_with(".img");
    let pages: u64 = members
        .iter()
        .filter(|(n, _)| is_pages(n))
        .map(|(_, s)| s)
        .sum();
    assert!(pages >= 16 * MIB, "pages-*.img hold only {pages} bytes");

    // Unpack and look inside.
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());

    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("spec.dump")).unwrap()).unwrap();
    let ann = &spec["annotations"];
    assert_eq!(ann["io.kubernetes.pod.namespace"], "shop");
    assert_eq!(ann["io.kubernetes.pod.name"], "api-0");
    assert_eq!(ann["io.kubernetes.container.name"], "api");

    // The marker is in the process's memory pages, and in no other member (memhog's shared
    // mapping has a pages image of its own, without it).
    let marker = support::MARKER.as_bytes();
    let mut in_pages = 0;
    for name in &names {
        let p = dir.path().join(name);
        if !p.is_file() {
            continue;
        }
        let found = contains(&fs::read(&p).unwrap(), marker);
        assert!(!found || is_pages(name), "marker in {name}");
        in_pages += usize::from(found);
    }
    assert_eq!(in_pages, 1, "the marker in one pages image");

    // A second request is served from the cache.
    let again = support::real_checkpoint(16, "shop", "api-0", "api", "none").unwrap();
    assert_eq!(again, archive);
}

#[test]
fn real_checkpoint_zstd_is_a_zstd_stream() {
    let Some(archive) = support::real_checkpoint(1, "shop", "api-0", "api", "zstd") else {
        return;
    };
    let head = fs::read(&archive).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let names: Vec<String> = tar_list(&archive).into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n == "spec.dump"), "{names:?}");
}

#[test]
fn age_keypair_gives_identity_and_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (id1, r1) = support::age_keypair(dir.path());
    let (id2, r2) = support::age_keypair(dir.path());
    assert_ne!(id1, id2);
    assert_ne!(r1, r2);
    assert!(
        fs::read_to_string(&id1)
            .unwrap()
            .contains("AGE-SECRET-KEY-1")
    );
    assert!(support::ckvault_bin().is_file());
}
