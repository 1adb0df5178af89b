//! Crash consistency: `ckvault` processes are killed with SIGKILL at many points while they
//! seal, capture from the watched directory, and apply retention (each writes audit events
//! as it goes), then restarted; after every kill the invariants must hold:
//!
//! - no plaintext outside staging: the memory marker of the real checkpoint is in no file
//!   of the store outside `staging/`;
//! - staging is recovered at start (sealed, not dropped): an archive being captured is
//!   afterwards either a record or still where it was, never gone;
//! - no partial blob or manifest is visible: every listed record verifies (signature and
//!   re-hashed blob) and `tmp/` is empty once the store is reopened;
//! - the audit chain verifies.
//!
//! Kill points are spread evenly over the duration of an uninterrupted run (measured first),
//! so they land in inspection, streaming, publication and audit alike.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::contains;
use support::crash::{ck, kill_after, p, spawn, timed};

/// Files of the store outside staging/ (blobs, manifests, tmp, audit, holds, keys).
fn store_files(store: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(store)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| !e.path().starts_with(store.join("staging")))
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// The invariants, checked after reopening the store. `seen` holds files already scanned
/// for the marker (blobs never change once published).
fn check(store: &Path, seen: &mut std::collections::HashSet<PathBuf>, what: &str) -> usize {
    let out = ck(&["ls", "--store", p(store), "--format", "json"]);
    assert!(
        out.status.success(),
        "{what}: ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let tmp: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().flatten().collect();
    assert!(tmp.is_empty(), "{what}: tmp/ not recovered: {tmp:?}");
    if !listed.is_empty() {
        let out = ck(&["verify", "--all", "--store", p(store)]);
        assert!(
            out.status.success(),
            "{what}: a visible record does not verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if store.join("audit.log").exists() {
        let out = ck(&["audit", "verify", "--store", p(store)]);
        assert!(
            out.status.success(),
            "{what}: audit chain: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for f in store_files(store) {
        if f.extension().is_some_and(|e| e == "age") && seen.contains(&f) {
            continue;
        }
        let bytes = fs::read(&f).unwrap_or_default();
        assert!(
            !contains(&bytes, support::MARKER.as_bytes()),
            "{what}: plaintext outside staging in {}",
            f.display()
        );
        seen.insert(f);
    }
    listed.len()
}

#[test]
fn sigkill_during_seal_capture_and_retention_loses_nothing_and_leaks_nothing() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(dir.path());
    let store = dir.path().join("store");
    let mut seen = std::collections::HashSet::new();
    let mut runs = 0;
    let mut killed = 0;

    // 1. ckvault seal, killed at 25 points across its run.
    let seal = ["seal", p(&archive), "--store", p(&store), "-r", &recipient];
    let full = timed(&seal);
    for i in 0..25u32 {
        let delay = full.mul_f64(f64::from(i) / 24.0);
        killed += u32::from(kill_after(spawn(&seal), delay));
        runs += 1;
        check(
            &store,
            &mut seen,
            &format!("seal run {i} (kill at {delay:?})"),
        );
    }

    // 2. ckvault watch capturing a dropped archive, killed at 15 points; a restart with
    //    --once must finish the job: the archive is a record or still in place, never gone.
    let watched = dir.path().join("checkpoints");
    fs::create_dir_all(&watched).unwrap();
    let watch = [
        "watch",
        "--dir",
        p(&watched),
        "--store",
        p(&store),
        "-r",
        &recipient,
        "--settle",
        "0",
        "--once",
    ];
    let drop_one = |n: u32| {
        let tmp = dir.path().join("incoming.tar");
        fs::copy(&archive, &tmp).unwrap();
        let name = format!("checkpoint-api-0_shop-api-2026-11-28T00:00:{n:02}Z.tar");
        fs::rename(&tmp, watched.join(&name)).unwrap();
        name
    };
    let before = check(&store, &mut seen, "before watch");
    drop_one(99);
    let full = timed(&watch);
    let mut expected = before + 1;
    for i in 0..15u32 {
        let name = drop_one(i);
        let delay = full.mul_f64(f64::from(i) / 14.0);
        killed += u32::from(kill_after(spawn(&watch), delay));
        runs += 1;
        let out = ck(&watch);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !watched.join(&name).exists(),
            "watch run {i}: archive left behind"
        );
        let n = check(
            &store,
            &mut seen,
            &format!("watch run {i} (kill at {delay:?})"),
        );
        // Sealed at least once; a kill between publishing the record and removing the
        // plaintext seals it again at the restart (a duplicate, never a loss).
        assert!(
            n > expected,
            "watch run {i}: the archive was lost ({n} records)"
        );
        expected = n;
    }
    let staging: Vec<_> = fs::read_dir(store.join("staging"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging recovered: {staging:?}");

    // 3. retention apply (one audited deletion after another), killed at 12 points.
    let policies = dir.path().join("policies");
    fs::create_dir_all(&policies).unwrap();
    fs::write(
        policies.join("retention.toml"),
        "version = 1\n[[rule]]\nname = \"tight\"\nkeep_last = 1\nmin_keep = 1\n",
    )
    .unwrap();
    let apply = [
        "retention",
        "apply",
        "--store",
        p(&store),
        "--policies",
        p(&policies),
    ];
    let mut remaining = check(&store, &mut seen, "before retention");
    assert!(remaining > 10, "enough records to delete ({remaining})");
    for i in 0..12u32 {
        killed += u32::from(kill_after(
            spawn(&apply),
            Duration::from_millis(20 + 25 * u64::from(i)),
        ));
        runs += 1;
        let n = check(&store, &mut seen, &format!("retention run {i}"));
        assert!(n <= remaining && n >= 1, "retention run {i}: {n} records");
        remaining = n;
    }
    let out = ck(&apply);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(check(&store, &mut seen, "after retention"), 1);

    println!("crash consistency: {runs} runs, {killed} killed mid-way, invariants held after each");
    assert!(runs >= 50 && killed >= 30, "{runs} runs, {killed} kills");
}
