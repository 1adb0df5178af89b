//! `ckvault memsearch` on sealed records, against the reference tool and the raw pages:
//! - REAL Podman checkpoints (none, gzip, zstd) sealed, then searched through the record
//!   (decrypted in memory): the same matches at the same addresses as `checkpointctl 1.3
//!   memparse --pid 1 --search S` on the plaintext archive (installed into the Debian 13
//!   root the checkpoint harness keeps);
//! - a REAL containerd 2.1 checkpoint (CRIU 4.2, which records page counts in a field
//!   checkpointctl 1.3 does not read: it finds nothing there): as many matches as the raw
//!   pages image holds, each address holding the needle;
//! - under `strace -f -e trace=openat,creat`, no file is created outside the store (its
//!   audit log), and the search is in the audit log with its purpose; nor by `inspect --deep`;
//! - `inspect --deep` of those records: open files, sockets, mounts and dump statistics equal
//!   checkpointctl 1.3's `inspect --all` field by field, and the root filesystem changes
//!   list what the harness dropped and deleted.

mod support;

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

/// Seals `archive` and searches its record; returns (addresses, the JSON answer).
fn search_record(dir: &Path, archive: &Path, needle: &str) -> (Vec<u64>, Value) {
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
    let out = ok(&ckvault(&[
        "memsearch",
        &id,
        "--store",
        p(&store),
        "-i",
        p(&identity),
        "--pid",
        "1",
        "--string",
        needle,
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

#[test]
fn memsearch_on_sealed_records_matches_checkpointctl_on_the_plaintext() {
    let Some(root) = checkpointctl() else {
        return;
    };
    for compress in ["none", "gzip", "zstd"] {
        let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", compress) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let (ours, v) = search_record(tmp.path(), &archive, NEEDLE);
        let theirs = checkpointctl_addresses(&root, &archive, NEEDLE);
        assert!(
            !theirs.is_empty(),
            "{compress}: checkpointctl found nothing"
        );
        assert_eq!(ours, theirs, "{compress}: addresses differ");
        assert!(
            v["matches"][0]["context"]
                .as_str()
                .unwrap()
                .contains(NEEDLE)
        );
        eprintln!(
            "{compress}: {} matches, same addresses as checkpointctl 1.3",
            ours.len()
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
    let tmp = tempfile::tempdir().unwrap();
    let (ours, _) = search_record(tmp.path(), &archive, NEEDLE);
    // The raw pages image: as many occurrences as matches reported.
    let pages = Command::new("tar")
        .arg("xOf")
        .arg(&archive)
        .arg("checkpoint/pages-1.img")
        .output()
        .unwrap()
        .stdout;
    let raw = memchr::memmem::find_iter(&pages, NEEDLE.as_bytes()).count();
    assert!(raw > 0);
    // A raw occurrence may straddle two runs of pages that are not contiguous in memory:
    // not a match in the process's memory. At most one per run boundary.
    assert!(
        ours.len() <= raw && raw - ours.len() <= 64,
        "{} matches vs {raw} occurrences in pages-1.img",
        ours.len()
    );
    std::fs::remove_file(&archive).unwrap();
    eprintln!("containerd 2.1 / CRIU 4.2: {raw} matches (checkpointctl 1.3 finds none there)");
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
