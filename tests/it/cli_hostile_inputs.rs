//! The `ckvault` binary against hostile paths and files (issue 13): a `--store` that is
//! someone else's directory, a manifest edited on disk, FIFOs named as inputs, and tars
//! that are not checkpoints at all. Every command runs under a timeout, so a hang fails
//! the test instead of blocking it.

use crate::support;

use support::tar_with;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Runs ckvault with `args`, killing it (and failing the test) after `limit`.
fn ckvault_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(support::ckvault_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ckvault");
    let start = Instant::now();
    while child.try_wait().expect("wait for ckvault").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ckvault {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect ckvault output")
}

fn ckvault(args: &[&str]) -> Output {
    ckvault_within(args, Duration::from_secs(60))
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ckvault failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// A small archive that inspects as a checkpoint (config.dump only).
fn archive(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, tar_with(&[("config.dump", b'0', b"{}")])).unwrap();
    path
}

fn seal(archive: &Path, store: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["seal", s(archive), "--store", s(store)];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&ckvault(&args))).expect("seal prints manifest JSON")
}

/// Everything observable about a directory tree: each entry's mode, owner, size, mtime
/// and content (files) or target (symlinks), the root included.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else if m.is_symlink() {
            fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            (m.mode(), m.uid(), m.size(), m.modified().unwrap(), content),
        );
    }
    out
}

// ------------------------------------------------------------------ A: --store DIR

#[test]
fn a_store_is_made_only_in_a_new_or_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = support::age_keypair(dir.path());
    let input = archive(dir.path(), "in.tar");

    // (a) Somebody's directory: a file, and a tmp/ with files of its own.
    let victim = dir.path().join("home");
    fs::create_dir_all(victim.join("tmp")).unwrap();
    fs::write(victim.join("important.txt"), b"keep me\n").unwrap();
    fs::write(victim.join("tmp/notes.txt"), b"notes\n").unwrap();
    fs::write(victim.join("tmp/x.123.y"), b"not a ckvault file\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(victim.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let before = snapshot(&victim);
    for args in [
        vec!["seal", s(&input), "--store", s(&victim), "-r", &recipient],
        vec![
            "watch",
            "--once",
            "--dir",
            s(dir.path()),
            "--store",
            s(&victim),
            "-r",
            &recipient,
        ],
    ] {
        let out = ckvault(&args);
        assert!(!out.status.success(), "{args:?} accepted a foreign --store");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{} exists and is not a ckvault store (no store.json)",
                victim.display()
            )) && err.contains("new or empty directory"),
            "{args:?}: {err}"
        );
        assert_eq!(
            snapshot(&victim),
            before,
            "{args:?} changed the foreign directory"
        );
    }
    assert!(input.exists());

    // (b) An empty directory becomes a store.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
    let first = seal(&input, &empty, &["-r", &recipient]);
    assert!(empty.join("store.json").is_file());
    assert_eq!(fs::metadata(&empty).unwrap().mode() & 0o777, 0o700);
    for sub in ["keys", "records", "tmp"] {
        assert_eq!(
            fs::metadata(empty.join(sub)).unwrap().mode() & 0o777,
            0o700,
            "{sub}"
        );
    }

    // (c) An existing store opens (and an absent directory is created).
    let second = seal(&input, &empty, &["-r", &recipient]);
    let listed: Value = serde_json::from_str(&ok(&ckvault(&[
        "ls",
        "--store",
        s(&empty),
        "--format",
        "json",
    ])))
    .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            first["id"].as_str().unwrap(),
            second["id"].as_str().unwrap()
        ]
    );
    let absent = dir.path().join("new/store");
    seal(&input, &absent, &["-r", &recipient]);
    assert!(absent.join("store.json").is_file());
}

// ------------------------------------------------------------------ B: edited manifests

#[test]
fn an_edited_manifest_is_neither_listed_nor_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(dir.path());
    let input = archive(dir.path(), "in.tar");
    let store = dir.path().join("store");
    let edited = seal(&input, &store, &["-r", &recipient, "--namespace", "team-a"]);
    let kept = seal(&input, &store, &["-r", &recipient, "--namespace", "team-b"]);
    let (edited, kept) = (edited["id"].as_str().unwrap(), kept["id"].as_str().unwrap());
    let path = store.join("records").join(format!("{edited}.json"));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"namespace\": \"team-a\""), "{text}");
    fs::write(
        &path,
        text.replace("\"namespace\": \"team-a\"", "\"namespace\": \"team-b\""),
    )
    .unwrap();

    // ls: only the intact record, a warning naming the other, a failing exit status.
    let out = ckvault(&["ls", "--store", s(&store), "--format", "json"]);
    assert!(!out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("record {edited} is not trusted"))
            && err.contains(&format!("ckvault verify {edited}")),
        "{err}"
    );
    let table = ckvault(&["ls", "--store", s(&store)]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains(edited));

    // show, export and open refuse it with the same message.
    let out_file = dir.path().join("out");
    for args in [
        vec!["show", edited, "--store", s(&store)],
        vec!["export", edited, "--store", s(&store), "-o", s(&out_file)],
        vec![
            "open",
            edited,
            "--store",
            s(&store),
            "-i",
            s(&identity),
            "-o",
            s(&out_file),
        ],
    ] {
        let out = ckvault(&args);
        assert!(
            !out.status.success(),
            "{args:?} accepted an edited manifest"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed something");
        let err = stderr(&out);
        assert!(
            err.contains("signature does not verify")
                && err.contains(&format!("ckvault verify {edited}")),
            "{args:?}: {err}"
        );
        assert!(!out_file.exists());
    }
    // verify still says which check failed.
    let out = ckvault(&["verify", edited, "--store", s(&store)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature"));

    // The original bytes verify again.
    fs::write(&path, &text).unwrap();
    ok(&ckvault(&["show", edited, "--store", s(&store)]));
    ok(&ckvault(&["ls", "--store", s(&store)]));
}

// ------------------------------------------------------------------ C: FIFOs as inputs

fn mkfifo(path: &Path) {
    let out = Command::new("mkfifo")
        .arg(path)
        .output()
        .expect("run mkfifo");
    assert!(out.status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_named_as_input_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = support::age_keypair(dir.path());
    let input = archive(dir.path(), "in.tar");
    let store = dir.path().join("store");
    let id = seal(&input, &store, &["-r", &recipient])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    mkfifo(&policies.join("retention.toml"));
    let out_file = dir.path().join("out.tar");

    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", s(&fifo)],
        vec!["seal", s(&fifo), "--store", s(&store), "-r", &recipient],
        vec![
            "seal",
            s(&input),
            "--store",
            s(&store),
            "--recipients-file",
            s(&fifo),
        ],
        vec![
            "open",
            &id,
            "--store",
            s(&store),
            "-i",
            s(&fifo),
            "-o",
            s(&out_file),
        ],
        vec![
            "seal",
            s(&input),
            "--store",
            s(&store),
            "-r",
            &recipient,
            "--policies",
            s(&policies),
        ],
    ];
    for args in cases {
        let out = ckvault_within(&args, Duration::from_secs(5));
        assert!(!out.status.success(), "{args:?} succeeded on a FIFO");
        let err = stderr(&out);
        assert!(
            err.contains("not a regular file (a FIFO)"),
            "{args:?}: {err}"
        );
    }
    assert!(!out_file.exists());
    // Nothing was sealed from the failed runs.
    let listed: Value = serde_json::from_str(&ok(&ckvault(&[
        "ls",
        "--store",
        s(&store),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

// ------------------------------------------------------------------ D: not a checkpoint

#[test]
fn a_tar_that_is_not_a_checkpoint_is_rejected_and_still_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = support::age_keypair(dir.path());
    let store = dir.path().join("store");
    let cases = [
        (
            "pages-only",
            tar_with(&[
                ("checkpoint/", b'5', b""),
                ("checkpoint/pages-1.img", b'0', &[7u8; 4096]),
            ]),
        ),
        (
            "text-files",
            tar_with(&[("README", b'0', b"hello\n"), ("notes.txt", b'0', b"x\n")]),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.tar"));
        fs::write(&path, &bytes).unwrap();
        let out = ckvault(&["inspect", s(&path)]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("not-a-checkpoint"), "{name}");
        let out = ckvault(&["inspect", s(&path), "--format", "json"]);
        assert_eq!(out.status.code(), Some(3), "{name}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], "not-a-checkpoint", "{name}");

        let m = seal(
            &path,
            &store,
            &["-r", &recipient, "--namespace", "forensics"],
        );
        assert_eq!(m["inspection"]["status"], "rejected", "{name}");
        assert_eq!(m["inspection"]["code"], "not-a-checkpoint", "{name}");
        assert_eq!(m["namespace"], "forensics");
    }
}

// ------------------------------------------------------------------ F: swapped blobs (issue 27)

/// `ckvault ARGS`, to its end, with the bytes it wrote.
fn measured(args: &[&str]) -> support::Measured {
    let mut cmd = Command::new(support::ckvault_bin());
    cmd.args(args);
    support::run_measured(cmd, Duration::from_secs(120), |_, _| {})
}

/// `size` bytes from /dev/urandom.
fn random_bytes(size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// An age file for `recipient` (Debian's `age`) holding `frames` concatenated zstd frames of
/// 128 MiB of zeros each (Debian's `zstd`): a few KiB per frame, 128 MiB each once opened.
fn zstd_bomb(dir: &Path, recipient: &str, frames: usize) -> Vec<u8> {
    use std::io::Write;
    let frame = Command::new("bash")
        .arg("-c")
        .arg("head -c 128M /dev/zero | zstd -1 -q -c")
        .output()
        .expect("zstd");
    assert!(frame.status.success() && !frame.stdout.is_empty());
    let bomb = dir.join("bomb.age");
    let mut age = Command::new("age")
        .args(["-r", recipient, "-o", s(&bomb)])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run age (apt-get install age)");
    let mut stdin = age.stdin.take().unwrap();
    for _ in 0..frames {
        stdin.write_all(&frame.stdout).unwrap();
    }
    drop(stdin);
    assert!(age.wait().unwrap().success());
    fs::read(&bomb).unwrap()
}

/// Names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A record of `size` random bytes in a tar (zstd cannot shrink it), sealed into
/// `DIR/store` to a fresh recipient: (identity, recipient, the input, the store, manifest).
fn random_record(dir: &Path, size: usize) -> (PathBuf, String, PathBuf, PathBuf, Value) {
    let (identity, recipient) = support::age_keypair(dir);
    let input = dir.join("in.tar");
    fs::write(
        &input,
        tar_with(&[("rootfs-diff.tar", b'0', &random_bytes(size))]),
    )
    .unwrap();
    let store = dir.join("store");
    let m = seal(&input, &store, &["-r", &recipient]);
    (identity, recipient, input, store, m)
}

/// Runs ckvault with `args` (measured), which must fail saying each of `says`, having
/// written less than 64 KiB and left nothing in `out_dir`.
fn refused_writing_nothing(args: &[&str], says: &[&str], out_dir: &Path) {
    let run = measured(args);
    eprintln!("{}: wrote {} bytes", args[0], run.wchar);
    assert!(!run.output.status.success(), "{args:?}");
    let err = stderr(&run.output);
    assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    assert!(run.wchar < 64 << 10, "{args:?}: wrote {} bytes", run.wchar);
    assert!(names(out_dir).is_empty(), "{:?}", names(out_dir));
}

#[test]
fn open_stops_at_the_signed_size_of_a_swapped_blob() {
    let dir = tempfile::tempdir().unwrap();
    // An honest record: 1 MiB of random bytes.
    let (identity, recipient, input, store, m) = random_record(dir.path(), 1 << 20);
    assert_eq!(m["sealed"]["compression"], "zstd");
    let id = m["id"].as_str().unwrap();
    let plain_size = m["plaintext"]["size"].as_u64().unwrap();
    let sealed_size = m["sealed"]["size"].as_u64().unwrap() as usize;
    let blob = store.join("records").join(format!("{id}.age"));
    let honest = fs::read(&blob).unwrap();

    // 8 GiB of zeros in about 270 KB, encrypted to the record's (public) recipient.
    let bomb = zstd_bomb(dir.path(), &recipient, 64);
    assert!(bomb.len() < sealed_size, "bomb {} bytes", bomb.len());
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("out.tar");
    let open = |what: &str| {
        let run = measured(&[
            "open",
            id,
            "--store",
            s(&store),
            "-i",
            s(&identity),
            "-o",
            s(&out),
        ]);
        assert!(!run.output.status.success(), "{what}: opened");
        assert!(
            names(&out_dir).is_empty(),
            "{what}: left {:?}",
            names(&out_dir)
        );
        eprintln!("{what}: wrote {} bytes", run.wchar);
        (stderr(&run.output), run.wchar)
    };

    // As it is: its length is not the signed one; nothing is read or written.
    fs::write(&blob, &bomb).unwrap();
    let (err, wrote) = open("swapped");
    assert!(err.contains("nothing was read"), "{err}");
    assert!(wrote < 64 << 10, "wrote {wrote} bytes");

    // Padded to the signed length: decryption starts and stops at the signed plaintext size.
    let mut padded = bomb.clone();
    padded.resize(sealed_size, 0xa5);
    fs::write(&blob, &padded).unwrap();
    let (err, wrote) = open("padded");
    assert!(err.contains("passed the manifest's"), "{err}");
    assert!(
        wrote <= plain_size + (1 << 20),
        "wrote {wrote} bytes for a record of {plain_size}"
    );

    // The honest blob still opens.
    fs::write(&blob, &honest).unwrap();
    ok(&ckvault(&[
        "open",
        id,
        "--store",
        s(&store),
        "-i",
        s(&identity),
        "-o",
        s(&out),
    ]));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&input).unwrap());
}

#[test]
fn export_refuses_a_blob_longer_than_signed_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = support::age_keypair(dir.path());
    let input = archive(dir.path(), "in.tar");
    let store = dir.path().join("store");
    let m = seal(&input, &store, &["-r", &recipient]);
    let id = m["id"].as_str().unwrap();
    let blob = store.join("records").join(format!("{id}.age"));
    // The record's blob grown into a 2 GiB sparse file (its first bytes unchanged).
    fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("x.age");
    refused_writing_nothing(
        &["export", id, "--store", s(&store), "-o", s(&out)],
        &["does not match its manifest", "nothing was read"],
        &out_dir,
    );
}

#[test]
fn open_and_export_check_free_space_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_tmpfs) = support::Tmpfs::mount(&mnt, "2m", "free-space test") else {
        return;
    };
    let (identity, _, _, store, m) = random_record(dir.path(), 4 << 20);
    let id = m["id"].as_str().unwrap();
    for args in [
        vec!["export", id, "--store", s(&store)],
        vec!["open", id, "--store", s(&store), "-i", s(&identity)],
    ] {
        let out = mnt.join("out");
        let mut all = args.clone();
        all.extend(["-o", s(&out)]);
        refused_writing_nothing(
            &all,
            &["bytes are needed and only", "nothing was written"],
            &mnt,
        );
    }
}

#[test]
fn a_killed_open_or_export_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(dir.path());
    // 256 MiB of random bytes behind zstd's magic: sealed as it came (no compression pass),
    // flagged as not a checkpoint, and slow enough to open that it can be killed mid-way.
    let input = dir.path().join("in.tar.zst");
    let mut bytes = vec![0x28, 0xb5, 0x2f, 0xfd];
    bytes.extend(random_bytes(256 << 20));
    fs::write(&input, &bytes).unwrap();
    drop(bytes);
    let store = dir.path().join("store");
    let m = seal(&input, &store, &["-r", &recipient]);
    assert_eq!(m["sealed"]["compression"], "none");
    let id = m["id"].as_str().unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("out");
    for args in [
        vec!["export", id, "--store", s(&store), "-o", s(&out)],
        vec![
            "open",
            id,
            "--store",
            s(&store),
            "-i",
            s(&identity),
            "-o",
            s(&out),
        ],
    ] {
        let mut seen = std::collections::BTreeSet::new();
        let mut killed_at = None;
        let mut cmd = Command::new(support::ckvault_bin());
        cmd.args(&args);
        let run = support::run_measured(cmd, Duration::from_secs(120), |pid, wrote| {
            seen.extend(names(&out_dir));
            if wrote > 32 << 20 && killed_at.is_none() {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed_at = Some(wrote);
            }
        });
        eprintln!("{}: killed after {killed_at:?} bytes", args[0]);
        assert!(
            killed_at.is_some(),
            "{args:?} ended before it could be killed"
        );
        assert!(!run.output.status.success());
        assert!(seen.is_empty(), "{args:?}: the output had a name: {seen:?}");
        assert!(
            names(&out_dir).is_empty(),
            "{args:?}: left {:?}",
            names(&out_dir)
        );
    }
}

// ------------------------------------------------------------------ G: a hostile server (issue 27)

/// `tests/harness/hostile_vault.py` serving `manifest` and `key_pem` in `mode` (HTTPS with a
/// certificate of its own CA, plus a plain HTTP port); killed on drop.
struct HostileVault {
    child: std::process::Child,
    ca: PathBuf,
    tls: u16,
    plain: u16,
    log: PathBuf,
}

impl HostileVault {
    fn start(dir: &Path, mode: &str, manifest: &Path, key_pem: &Path) -> Self {
        let pki = dir.join(format!("pki-{mode}"));
        fs::create_dir_all(&pki).unwrap();
        let (ca, cert, key) = support::pki::loopback_server(&pki);
        let ports = pki.join("ports");
        let log = pki.join("requests.log");
        fs::write(&log, b"").unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/harness/hostile_vault.py"
        );
        let child = Command::new("python3")
            .args([script, mode, s(&cert), s(&key), s(manifest), s(key_pem)])
            .args([s(&ports), s(&log)])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3");
        let start = Instant::now();
        let text = loop {
            if let Ok(t) = fs::read_to_string(&ports) {
                break t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "hostile vault did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut it = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
        let (tls, plain) = (it.next().unwrap(), it.next().unwrap());
        Self {
            child,
            ca,
            tls,
            plain,
            log,
        }
    }

    fn requests(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for HostileVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store with one honest record of 1 MiB of random bytes; its id, manifest path, key path.
fn one_record(dir: &Path) -> (String, PathBuf, PathBuf) {
    let (_, recipient) = support::age_keypair(dir);
    let input = dir.join("in.tar");
    fs::write(
        &input,
        tar_with(&[("rootfs-diff.tar", b'0', &random_bytes(1 << 20))]),
    )
    .unwrap();
    let store = dir.join("store");
    let m = seal(&input, &store, &["-r", &recipient]);
    let id = m["id"].as_str().unwrap().to_owned();
    let manifest = store.join("records").join(format!("{id}.json"));
    (id, manifest, store.join("keys/signing.pub"))
}

#[test]
fn fetch_stops_at_the_signed_size_whatever_the_server_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (id, manifest, key) = one_record(dir.path());
    let sealed: Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    let sealed_size = sealed["sealed"]["size"].as_u64().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "a-token\n").unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let pins = dir.path().join("pins");
    for (mode, trust, says) in [
        // 2 GiB announced: refused before a byte of the body is written.
        (
            "huge-length",
            vec!["--public-key", s(&key)],
            "the server announced",
        ),
        // No length, 4 GiB sent: cut off at the signed size. The key is pinned on first use.
        ("no-length", vec![], "sent more than"),
    ] {
        let vault = HostileVault::start(dir.path(), mode, &manifest, &key);
        let server = format!("https://127.0.0.1:{}", vault.tls);
        let out = out_dir.join(format!("{mode}.age"));
        let mut args = vec![
            "fetch",
            &id,
            "--server",
            &server,
            "--cacert",
            s(&vault.ca),
            "--token-file",
            s(&token),
            "--pinned-keys",
            s(&pins),
            "-o",
            s(&out),
        ];
        args.extend(trust);
        let run = measured(&args);
        eprintln!(
            "{mode}: wrote {} bytes for a record of {sealed_size}",
            run.wchar
        );
        assert!(!run.output.status.success(), "{mode}: fetched");
        let err = stderr(&run.output);
        assert!(err.contains(says), "{mode}: {err}");
        let bound = match mode {
            "huge-length" => 64 << 10,
            _ => sealed_size + (1 << 20),
        };
        assert!(run.wchar <= bound, "{mode}: wrote {} bytes", run.wchar);
        assert!(
            names(&out_dir).is_empty(),
            "{mode}: left {:?}",
            names(&out_dir)
        );
        assert!(
            vault.requests().contains("/archive"),
            "{}",
            vault.requests()
        );
    }
}

#[test]
fn fetch_refuses_a_redirect_to_http_and_credentials_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (id, manifest, key) = one_record(dir.path());
    let token = dir.path().join("token");
    fs::write(&token, "a-secret-token\n").unwrap();
    let vault = HostileVault::start(dir.path(), "redirect", &manifest, &key);
    let out = dir.path().join("got.age");
    let fetch = |server: &str| {
        ckvault(&[
            "fetch",
            &id,
            "--server",
            server,
            "--cacert",
            s(&vault.ca),
            "--token-file",
            s(&token),
            "--public-key",
            s(&key),
            "-o",
            s(&out),
        ])
    };
    // https -> http redirect: not followed.
    let r = fetch(&format!("https://127.0.0.1:{}", vault.tls));
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(err.contains("not https://"), "{err}");
    let log = vault.requests();
    assert!(log.contains("tls /v1/checkpoints/"), "{log}");
    assert!(!log.contains("plain "), "the redirect was followed: {log}");
    // A token for an http:// server: refused before connecting.
    let r = fetch(&format!("http://127.0.0.1:{}", vault.plain));
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(err.contains("in clear"), "{err}");
    let log = vault.requests();
    assert!(
        !log.contains("plain "),
        "a request went out in clear: {log}"
    );
    assert!(!out.exists());
}

#[test]
fn durations_from_the_command_line_and_configuration_are_bounded() {
    // `watch --settle 1e300` panicked converting it to a Duration; a duration in the
    // configuration past a year is refused with the key named.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kubelet");
    std::fs::create_dir(&dir).unwrap();
    for settle in ["1e300", "inf", "NaN", "3601"] {
        let out = support::ckvault(&[
            "watch",
            "--once",
            "--settle",
            settle,
            "--dir",
            support::p(&dir),
            "--store",
            support::p(&tmp.path().join("store")),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{settle}: {err}");
        assert!(err.contains("--settle must be"), "{settle}: {err}");
        assert!(!err.contains("panicked"), "{settle}: {err}");
    }
    let config = tmp.path().join("ckvault.toml");
    std::fs::write(&config, "[server]\nidle_timeout = \"99999999999d\"\n").unwrap();
    let out = support::ckvault(&["serve", "--config", support::p(&config)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("longer than a year"), "{err}");
}
