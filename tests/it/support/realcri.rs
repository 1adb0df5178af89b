//! A REAL CRI runtime that checkpoints: containerd 2.1 + runc + CRIU 4.2 (Debian's unstable
//! packages) in a root and namespaces of its own, through `tests/harness/real-cri-runtime.sh`
//! (the first start on a machine builds the root, seeded from the real-checkpoint root when
//! there is one). Its socket and every directory under [`BINDS`] are the same paths inside
//! and outside, so ckvault's staging must live under [`BINDS`].
//!
//! One runtime per machine, shared by the tests one at a time: [`RealCri::start`] takes an
//! exclusive lock for the life of the returned value and runs a fresh labelled pod. Where
//! the runtime cannot start it fails under `CKVAULT_REQUIRE_REAL_CHECKPOINT=1` (CI), or
//! skips loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the harness keeps its root and state.
pub const CACHE: &str = "/var/tmp/ckvault-real-cri/cache";
/// Directories bound into the runtime's mount namespace at the same path.
pub const BINDS: &str = "/var/tmp/ckvault-real-cri/binds";
const LOCK: &str = "/var/tmp/ckvault-real-cri/test.lock";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/harness/real-cri-runtime.sh"
);
const GRPC_CALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/grpc_call.py");

/// The running runtime with one labelled pod.
pub struct RealCri {
    /// containerd's CRI socket.
    pub socket: PathBuf,
    /// The pod's container.
    pub container_id: String,
    /// Host PID of the runtime namespace's init.
    pub ns_pid: u32,
    dirs: std::sync::Mutex<Vec<PathBuf>>,
    _lock: std::fs::File,
}

impl Drop for RealCri {
    fn drop(&mut self) {
        // The test's directories under BINDS go with it (the lock is released after).
        for d in self.dirs.lock().map(|d| d.clone()).unwrap_or_default() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn run_script(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT).args(args).env("CTD_BINDS", BINDS);
    let seed =
        std::env::var("CKVAULT_CKPT_CACHE").unwrap_or_else(|_| "/var/tmp/ckvault-ckpt".into());
    let seed = Path::new(&seed).join("root");
    if seed.join("usr/bin/apt-get").exists() {
        cmd.env("ROOT_SEED", seed);
    }
    cmd.output().expect("run real-cri-runtime.sh")
}

impl RealCri {
    /// Takes the runtime for this test and runs a fresh pod `ns`/`pod` with container
    /// `ctr` holding `mem_mib` MiB of heap (memhog, its pages full of known text).
    pub fn start(mem_mib: u32, ns: &str, pod: &str, ctr: &str) -> Option<RealCri> {
        if super::outside_fast_tier("the real CRI runtime (root)") {
            return None;
        }
        std::fs::create_dir_all(BINDS).unwrap();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap();
        lock.lock().unwrap();
        let out = run_script(&["start", CACHE, &mem_mib.to_string(), ns, pod, ctr]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('\'').to_owned())
        };
        match (
            out.status.success(),
            get("CRI_SOCKET"),
            get("CONTAINER_ID"),
            get("NS_PID"),
        ) {
            (true, Some(socket), Some(container_id), Some(pid)) => Some(RealCri {
                socket: socket.into(),
                container_id,
                ns_pid: pid.parse().unwrap_or(0),
                dirs: std::sync::Mutex::default(),
                _lock: lock,
            }),
            _ => {
                super::cannot_run(
                    "CKVAULT_REQUIRE_REAL_CHECKPOINT",
                    &format!(
                        "the real CRI runtime (containerd 2.1) did not start: {}\n{}",
                        text,
                        String::from_utf8_lossy(&out.stderr)
                    ),
                );
                None
            }
        }
    }

    /// A fresh, empty directory the runtime sees at the same path.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = Path::new(BINDS).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.push(d.clone());
        }
        d
    }

    /// Checkpoints the running pod's container into `archive` with the harness's own
    /// CRI call (straight to containerd); panics if that fails.
    pub fn checkpoint_to(&self, archive: &Path) {
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/harness/real-cri-runtime.sh"
            ))
            .args(["checkpoint", CACHE])
            .arg(archive)
            .output()
            .unwrap();
        super::ok(&out);
    }

    /// Runs the stock grpcio client (the harness's Python) on `socket` with `calls`
    /// (JSON, see tests/harness/grpc_call.py); one JSON value per call.
    pub fn grpcio(&self, socket: &Path, calls: &serde_json::Value) -> Vec<serde_json::Value> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), calls.to_string()).unwrap();
        let out = Command::new(Path::new(CACHE).join("venv/bin/python"))
            .arg(GRPC_CALL)
            .arg(socket)
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpc_call.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// SIGKILLs containerd (its namespace goes with it; the next [`RealCri::start`]
    /// starts it again).
    pub fn kill_containerd(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.ns_pid.to_string()])
            .status();
        let out = Command::new("pgrep")
            .args(["-f", "containerd --config /opt/ctd/config.toml"])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        // runc froze the container's cgroup for CRIU; with CRIU killed nobody thaws it,
        // and a frozen task cannot die: thaw what the runtime left frozen.
        thaw_frozen();
        // Wait for the namespace to be gone, so the next start does not take a dying
        // runtime for a live one.
        let run = Path::new(CACHE).join("run");
        if let Ok(u) = std::fs::read_to_string(run.join("unshare.pid")) {
            let proc_dir = Path::new("/proc").join(u.trim());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while proc_dir.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Thaws every frozen cgroup v1 freezer group under `k8s.io` (the runtime's containers).
pub fn thaw_frozen() {
    let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup/freezer/k8s.io") else {
        return;
    };
    for d in dirs.flatten() {
        let state = d.path().join("freezer.state");
        if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() != "THAWED") {
            let _ = std::fs::write(&state, "THAWED");
        }
    }
}
