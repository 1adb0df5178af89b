//! Helpers shared by ckvault's integration tests (`use crate::support;` in a suite).
//!
//! - [`real_checkpoint`]: a REAL container checkpoint archive, made by CRIU through
//!   `tests/harness/real-checkpoint.sh` and cached under `<target dir>/real-checkpoints/`.
//!   Where this machine cannot checkpoint it prints a loud `*** SKIPPED ... ***` notice and
//!   returns `None`, unless `CKVAULT_REQUIRE_REAL_CHECKPOINT=1` (set by CI), which makes
//!   that a panic:
//!   ```ignore
//!   let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else { return };
//!   ```
//! - [`MARKER`]: a string that lives in the checkpointed process's memory, so in the
//!   archive's `checkpoint/pages-*.img` and in no other member: a sealed blob must not
//!   contain it, the opened plaintext must.
//! - [`ckvault_bin`]: the `ckvault` binary cargo built for these tests.
//! - [`age_keypair`]: a fresh age identity file and its recipient, from Debian's `age-keygen`.
//! - [`Kill`], [`wait_until`], [`wait_for`], [`sha256_hex`], [`Tmpfs`]: the small pieces
//!   many suites need (a child killed on drop, polling with a deadline, a digest, a small
//!   tmpfs mounted for a disk-full test).

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

macro_rules! marker_value {
    () => {
        "ckvault-harness-7c1f93d2"
    };
}

/// The value handed to the harness; memhog plants `CKVAULT-SECRET-MARKER-<value>`.
pub const MARKER_VALUE: &str = marker_value!();

/// The string planted in the checkpointed process's heap (about once per MiB). It occurs
/// only in `checkpoint/pages-*.img`: not in spec.dump, config.dump or the container log,
/// because memhog receives the value hex-encoded.
pub const MARKER: &str = concat!("CKVAULT-SECRET-MARKER-", marker_value!());

/// Env var that turns "cannot make a real checkpoint here" from a skip into a panic.
pub const REQUIRE_ENV: &str = "CKVAULT_REQUIRE_REAL_CHECKPOINT";

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/harness/real-checkpoint.sh"
);
const MEMHOG_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/memhog.c");

/// Serializes makers inside this process and remembers why the first attempt failed, so
/// a machine that cannot checkpoint is told so once per test binary, not once per test.
static STATE: Mutex<Option<String>> = Mutex::new(None);

/// A real CRIU checkpoint archive of a container whose process holds `mem_mib` MiB of
/// page-like heap (see `tests/harness/memhog.c`), with the Kubernetes identity `ns`/`pod`/
/// `ctr` in its spec.dump annotations, compressed as `compress` (`none`: a plain tar as the
/// kubelet writes; `gzip`; `zstd`). The archive carries [`MARKER`] in its pages.
///
/// Made once per parameter set (and harness version) and kept under
/// `<target dir>/real-checkpoints/`; treat the file as read-only (mode 0600), copy it
/// before changing it. The first archive on a machine builds a Debian 13 root with
/// Podman and CRIU (1-3 minutes, cached in `CKVAULT_CKPT_CACHE`, default
/// `/var/tmp/ckvault-ckpt`); later ones take about a second.
///
/// Returns `None` after a loud notice on stderr when this machine cannot checkpoint (not
/// root, no namespaces, CRIU refused), or panics if `CKVAULT_REQUIRE_REAL_CHECKPOINT=1`.
pub fn real_checkpoint(
    mem_mib: u32,
    ns: &str,
    pod: &str,
    ctr: &str,
    compress: &str,
) -> Option<PathBuf> {
    if outside_fast_tier("a real CRIU checkpoint (root)") {
        return None;
    }
    let ext = match compress {
        "none" => "tar",
        "gzip" => "tar.gz",
        "zstd" => "tar.zst",
        other => panic!("real_checkpoint: compress must be none, gzip or zstd, not {other:?}"),
    };
    for name in [ns, pod, ctr] {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        assert!(
            ok,
            "real_checkpoint: {name:?} is not a name the harness takes ([A-Za-z0-9][A-Za-z0-9_.-]{{0,62}})"
        );
    }

    let dir = target_dir().join("real-checkpoints");
    let path = dir.join(format!(
        "{mem_mib}m-{ns}-{pod}-{ctr}-{:016x}.{ext}",
        harness_version()
    ));

    let mut failed = STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if path.exists() {
        return Some(path);
    }
    if let Some(reason) = failed.as_ref() {
        return cannot(reason);
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // Other test binaries may be making the same archive: one makes it, the others reuse it.
    let lock = File::create(dir.join(".lock")).expect("create real-checkpoints/.lock");
    lock.lock().expect("lock real-checkpoints/.lock");
    if path.exists() {
        return Some(path);
    }

    eprintln!(
        "support: making real checkpoint {} (the first on a machine builds a Debian root: 1-3 min)",
        path.display()
    );
    let result = Command::new("bash")
        .arg(SCRIPT)
        .arg(&path)
        .arg(mem_mib.to_string())
        .args([ns, pod, ctr, compress, MARKER_VALUE])
        .output();
    let reason = match result {
        Ok(out) if out.status.success() && path.exists() => return Some(path),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!("support: real-checkpoint.sh said:\n{stderr}");
            if out.status.code() == Some(2) {
                panic!("real-checkpoint.sh rejected its arguments:\n{stderr}");
            }
            // The script's last line says why; the lines before it are its evidence.
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let last = last.unwrap_or("real-checkpoint.sh failed without a word");
            let last = last.strip_prefix("real-checkpoint: ").unwrap_or(last);
            let last = last
                .strip_prefix("cannot checkpoint here: ")
                .unwrap_or(last);
            format!("{last} ({})", out.status)
        }
        Err(e) => format!("could not run bash {SCRIPT}: {e}"),
    };
    *failed = Some(reason.clone());
    cannot(&reason)
}

/// Skip loudly, or panic when the environment demands real checkpoints.
fn cannot(reason: &str) -> Option<PathBuf> {
    cannot_run(
        REQUIRE_ENV,
        &format!("cannot make a real CRIU checkpoint here: {reason}"),
    );
    None
}

/// Says that a test cannot run on this machine, for `reason`. When the environment
/// requires it (`require_env` = 1, as `scripts/test.sh` sets unless `CKVAULT_ALLOW_SKIP=1`)
/// that is a failure (panic). Otherwise it is a loud notice on the real stderr and a line
/// in `$CKVAULT_SKIP_LOG`, which `scripts/test.sh` prints at the end: a test that ran
/// nothing is never silently counted as passed.
pub fn cannot_run(require_env: &str, reason: &str) {
    if std::env::var(require_env).as_deref() == Ok("1") {
        panic!("{require_env}=1 but {reason}");
    }
    skipped(reason);
}

/// Env var set by `scripts/test-fast.sh`: the fast tier, which runs nothing that needs
/// root or a service.
pub const FAST_TIER_ENV: &str = "CKVAULT_FAST_TIER";

/// True in the fast tier (`CKVAULT_FAST_TIER=1`), after saying that `what` (something that
/// needs root or a service) does not run there, as [`cannot_run`] says it (a notice and a
/// line in `$CKVAULT_SKIP_LOG`); the caller then returns as where `what` cannot run. The
/// helpers and tests that need root or a service ask this first, so a test missing from
/// the fast tier's list of tests that need them is named on every machine, root or not:
/// `scripts/test-fast.sh` fails on any line in the skip log.
pub fn outside_fast_tier(what: &str) -> bool {
    if std::env::var(FAST_TIER_ENV).as_deref() != Ok("1") {
        return false;
    }
    skipped(&format!("{what} is outside the fast tier"));
    true
}

/// The loud notice and the `$CKVAULT_SKIP_LOG` line of a test that did not run.
fn skipped(reason: &str) {
    // Straight to the stderr handle: the test harness captures eprintln!, not this.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {reason} ***\n");
    if let Some(log) = std::env::var_os("CKVAULT_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("(unnamed)")
            .to_owned();
        let bin = std::env::args().next().unwrap_or_default();
        let bin = Path::new(&bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "{bin} {test}: {reason}");
        }
    }
}

/// Cargo's target directory (honours CARGO_TARGET_DIR): the parent of CARGO_TARGET_TMPDIR.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// Changes when the harness changes, so cached archives from an older harness are not reused.
fn harness_version() -> u64 {
    let mut h = DefaultHasher::new();
    for file in [SCRIPT, MEMHOG_SRC] {
        h.write(&fs::read(file).unwrap_or_else(|e| panic!("read {file}: {e}")));
    }
    h.finish()
}

/// Runs the `ckvault` under test ([`ckvault_bin`]) with `args`.
pub fn ckvault(args: &[&str]) -> std::process::Output {
    Command::new(ckvault_bin())
        .args(args)
        .output()
        .expect("run ckvault")
}

/// The stdout of a run (of ckvault or any command) that must have succeeded; panics with
/// its status, stderr and stdout otherwise.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "the command failed ({}): {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The audit log of the local store `store`, as `ckvault audit show --format json` prints
/// it (every event).
pub fn audit_events(store: &Path) -> Vec<serde_json::Value> {
    let out = ok(&ckvault(&[
        "audit",
        "show",
        "--store",
        p(store),
        "--format",
        "json",
        "--limit",
        "1000000",
    ]));
    serde_json::from_str(&out).expect("audit show --format json")
}

/// A path as `&str` (the tests make only UTF-8 paths).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The `ckvault` binary built for this test run, or `CKVAULT_TEST_BIN` when set (to show
/// that a test fails against an older build: `CKVAULT_TEST_BIN=/old/ckvault cargo test`).
pub fn ckvault_bin() -> PathBuf {
    std::env::var_os("CKVAULT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ckvault")))
}

/// A fresh age X25519 identity written by `age-keygen -o` into `dir` (as `identity.txt`,
/// or `identity-N.txt` when taken; mode 0600), and its recipient string (`age1...`).
/// Panics with what to install when Debian's `age` package is missing.
pub fn age_keypair(dir: &Path) -> (PathBuf, String) {
    let identity = (0..)
        .map(|n| match n {
            0 => dir.join("identity.txt"),
            n => dir.join(format!("identity-{n}.txt")),
        })
        .find(|p| !p.exists())
        .expect("a free file name");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap_or_else(|e| panic!("run age-keygen ({e}): install it with apt-get install age"));
    assert!(
        out.status.success(),
        "age-keygen -o {} failed: {}",
        identity.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // age-keygen prints "Public key: age1..." on stderr when writing to a file.
    let from_stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: ").map(|k| k.trim().to_owned()));
    let recipient = match from_stderr {
        Some(r) => r,
        None => {
            let y = Command::new("age-keygen")
                .arg("-y")
                .arg(&identity)
                .output()
                .expect("run age-keygen -y");
            assert!(y.status.success(), "age-keygen -y failed");
            String::from_utf8_lossy(&y.stdout).trim().to_owned()
        }
    };
    assert!(
        recipient.starts_with("age1"),
        "unexpected recipient {recipient:?}"
    );
    (identity, recipient)
}

/// Whether `needle` occurs in `hay` (memmem: fast enough for whole sealed blobs).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A minimal ustar archive with the given (name, typeflag, data) members, for hostile input.
pub fn tar_with(members: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, flag, data) in members {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let size = format!("{:011o}", data.len());
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A child process killed and reaped when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, timeout, || f().then_some(()));
}

/// Polls `f` every 100 ms until it gives something; panics naming `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// True if this machine can make a PID namespace (root, `unshare` present); says so where
/// not (as [`cannot_run`] says it), and in the fast tier.
pub fn can_unshare() -> bool {
    if outside_fast_tier("a PID namespace (root)") {
        return false;
    }
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        cannot_run(
            REQUIRE_ENV,
            "cannot make a PID namespace here (unshare --pid --fork --mount-proc; needs root)",
        );
    }
    ok
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tmpfs of `size` (`mount -o size=`) mounted on a directory of the test's own, for the
/// disk-full tests; unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it on `dir` (made here). `None` in the fast tier, or where mounting is not
    /// allowed (after [`cannot_run`] said so, naming `test`).
    pub fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        fs::create_dir(dir).unwrap();
        if outside_fast_tier("a tmpfs mount (root)") {
            return None;
        }
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                p(dir),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            cannot_run(
                REQUIRE_ENV,
                &format!("{test}: cannot mount a {size} tmpfs here (needs root)"),
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub mod containerd;
pub mod crash;
pub mod grpc;
pub mod inspect;
pub mod moto;
pub mod pki;
pub mod realcri;
pub mod s3server;
pub mod seaweed;
pub mod serve;
pub mod watch;

/// What a finished child did: its output and the bytes it passed to write(2) and friends
/// (`wchar` of /proc/PID/io, read after it exited and before it was reaped: every byte it
/// wrote to files, pipes and sockets, the file systems' caches included).
pub struct Measured {
    /// Status, stdout, stderr.
    pub output: std::process::Output,
    /// Bytes written.
    pub wchar: u64,
}

/// Runs `cmd` (stdout and stderr captured) to its end, killing it and failing the test after
/// `limit`, and counts the bytes it wrote. `each` is called every few milliseconds while it
/// runs, with its PID and the bytes written so far (to watch or stop it mid-way).
pub fn run_measured(
    mut cmd: Command,
    limit: std::time::Duration,
    mut each: impl FnMut(u32, u64),
) -> Measured {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let pid = child.id();
    // Drain the pipes on threads so a chatty child never blocks on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let wchar = || -> u64 {
        fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    let mut last = 0;
    loop {
        // WNOWAIT: learn that it exited without reaping it, so /proc/PID/io still answers.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
        last = wchar().max(last);
        if unsafe { info.si_pid() } != 0 {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        each(pid, last);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let status = child.wait().expect("reap the child");
    Measured {
        output: std::process::Output {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        },
        wchar: last,
    }
}

/// The names in `dir` that do not start with a dot (a store's or staging's own hidden
/// files left out); none if it cannot be read.
pub fn visible_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}
