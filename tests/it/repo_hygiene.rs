//! What the repository itself must not carry: no private key of any kind in a tracked file
//! (PEM private keys, age identities). Test keys are made by the tests that need them, in
//! temporary directories; a fixture that needs a signature made later rotates its copy's key
//! (src/compat_tests.rs).

use std::path::Path;
use std::process::Command;

#[test]
fn no_tracked_file_holds_a_private_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files (the test needs the repository's git checkout)");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Built from parts so this file does not match itself.
    let pem =
        regex::bytes::Regex::new(&format!("-----BEGIN [A-Z0-9 ]*{}-----", "PRIVATE KEY")).unwrap();
    let age = regex::bytes::Regex::new(&format!("{}[0-9A-Z]{{58}}", "AGE-SECRET-KEY-1")).unwrap();
    let mut found = Vec::new();
    let mut scanned = 0usize;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let path = root.join(String::from_utf8_lossy(name).as_ref());
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // deleted in the work tree, not yet committed
        };
        scanned += 1;
        if pem.is_match(&bytes) || age.is_match(&bytes) {
            found.push(path.display().to_string());
        }
    }
    assert!(scanned > 100, "only {scanned} tracked files read");
    assert!(found.is_empty(), "private key material tracked: {found:?}");
}
