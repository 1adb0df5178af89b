//! Helpers of the crash-consistency tests: run `ckvault` and SIGKILL it at a chosen moment
//! (`support::contains` looks for plaintext in what it left).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `path` as &str (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// Runs `ckvault ARGS` to completion.
pub fn ck(args: &[&str]) -> Output {
    Command::new(super::ckvault_bin())
        .args(args)
        .output()
        .expect("run ckvault")
}

/// Starts `ckvault ARGS` with no terminal attached.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(super::ckvault_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ckvault")
}

/// SIGKILLs `child` after `delay` unless it finished first; true when it was killed.
pub fn kill_after(mut child: Child, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // finished before the kill point
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    true
}

/// Time of one uninterrupted, successful run of `ckvault ARGS`.
pub fn timed(args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = ck(args);
    assert!(
        out.status.success(),
        "ckvault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Asserts that `out` succeeded, showing its output otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
