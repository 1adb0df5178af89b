//! Crash consistency of the S3 upload: `ckvault upload` draining a spool of REAL sealed
//! checkpoints (64 MiB of heap, about 22 MiB sealed: a two-part multipart upload) into real
//! SeaweedFS is SIGKILLed at points spread over its run, then the next run goes on. After
//! every kill:
//!
//! - no partial record is visible: every manifest in the bucket verifies and its blob has
//!   the sealed size (the blob goes up and is checked before its manifest);
//! - nothing is lost: every sealed record is in the spool (and verifies there) or in the
//!   bucket, never neither;
//! - no plaintext: the memory marker is in no spool file outside staging.
//!
//! At the end one clean run drains the spool: every record is in the bucket exactly once,
//! every blob's SHA-256 matches its manifest, no multipart upload is left open (a killed
//! run's upload is aborted by the next), and the audit chain verifies in the spool and,
//! shipped segment by segment, in the bucket.

use crate::support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};
use support::contains;
use support::crash::{assert_ok, ck, kill_after, p, spawn, timed};
use support::seaweed::{self, Seaweed};
use tokio::io::AsyncReadExt;

const BUCKET: &str = "crash";
const PREFIX: &str = "k/";
const ROUNDS: u32 = 16;

/// Records in the spool, each verified there.
fn spool_ids(spool: &Path) -> BTreeSet<String> {
    let out = ck(&["ls", "--store", p(spool), "--format", "json"]);
    assert_ok(&out, "ls spool");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    if !listed.is_empty() {
        assert_ok(
            &ck(&["verify", "--all", "--store", p(spool)]),
            "a spooled record verifies",
        );
    }
    listed
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Records visible in the bucket, each checked: the manifest verifies with the node's
/// published key and the blob is there at its sealed size.
fn bucket_ids(
    s3: &ckvault::internal::store::s3::S3Store,
    rt: &tokio::runtime::Runtime,
) -> BTreeSet<String> {
    rt.block_on(async {
        let mut seen = BTreeSet::new();
        for id in s3.ids().await.unwrap() {
            let m = s3.manifest(&id).await.unwrap();
            s3.verify_manifest(&m)
                .await
                .unwrap_or_else(|e| panic!("{id}: visible manifest does not verify: {e}"));
            let size = s3.head_size(&s3.blob_key(&id)).await.unwrap();
            assert_eq!(
                size,
                Some(m.sealed.size),
                "{id}: a manifest is visible before its whole blob"
            );
            seen.insert(id.to_string());
        }
        seen
    })
}

#[test]
fn sigkill_during_s3_upload_shows_no_partial_record_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sw) = Seaweed::start(&dir.path().join("seaweed")) else {
        return;
    };
    let Some(archive) = support::real_checkpoint(64, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    sw.create_bucket(BUCKET);
    let (_identity, recipient) = support::age_keypair(dir.path());
    let spool = dir.path().join("spool");
    // The node seals into its spool (a local store) and uploads it under the same name.
    let node = "[node]\nname = \"node-k\"\n";
    let seal_cfg = dir.path().join("seal.toml");
    fs::write(
        &seal_cfg,
        format!(
            "[store]\nkind = \"local\"\npath = \"{}\"\n[seal]\nrecipients = [\"{recipient}\"]\n{node}",
            spool.display()
        ),
    )
    .unwrap();
    let upload_cfg = dir.path().join("upload.toml");
    fs::write(
        &upload_cfg,
        format!("{}{node}", sw.store_toml(BUCKET, PREFIX, &spool)),
    )
    .unwrap();
    let seal = ["seal", p(&archive), "--config", p(&seal_cfg)];
    let upload = ["upload", "--config", p(&upload_cfg)];
    let s3 = ckvault::internal::store::s3::S3Store::new(&sw.store_config(BUCKET, PREFIX)).unwrap();
    let rt = seaweed::runtime();

    // Uninterrupted uploads of one record set the time scale of the kill points: the
    // faster of two (the first also pays for publishing the node key, and a loaded
    // machine can slow either), so the kill points do not all land after the end.
    assert_ok(&ck(&seal), "seal");
    let first = timed(&upload);
    assert_ok(&ck(&seal), "seal");
    let full = first.min(timed(&upload));
    println!(
        "crash upload: one record ({} MiB sealed) uploads in {full:?}",
        {
            let s = rt.block_on(s3.ids()).unwrap();
            let m = rt.block_on(s3.manifest(&s[0])).unwrap();
            m.sealed.size >> 20
        }
    );
    let mut sealed: BTreeSet<String> = bucket_ids(&s3, &rt);
    assert_eq!(sealed.len(), 2, "the first records went up");

    let mut killed = 0;
    let t0 = std::time::Instant::now();
    let mut left_open = 0;
    // A loaded machine may let a run finish before its kill point: runs go on (the kill
    // points cycling again) until half of the planned number were killed mid-way.
    let mut runs = 0;
    while runs < ROUNDS || (killed < ROUNDS / 2 && runs < 3 * ROUNDS) {
        let i = runs % ROUNDS;
        runs += 1;
        // A new record per round, so a run always has something to send.
        assert_ok(&ck(&seal), "seal");
        let spooled = spool_ids(&spool);
        sealed.extend(spooled.iter().cloned());
        // Kill points from just after the start to two and a half records' upload time:
        // in the blob's parts, its check, the manifest, the audit append, the spool
        // removal and the shipping of the audit segments.
        let delay = full.mul_f64(0.05 + 2.6 * f64::from(i) / f64::from(ROUNDS - 1));
        killed += u32::from(kill_after(spawn(&upload), delay));
        let what = format!("upload run {i} (kill at {delay:?})");
        // A run killed inside a multipart upload leaves it open; the next run aborts it
        // before it starts again, so at most one is ever open.
        let open = rt.block_on(s3.open_uploads("blobs/")).unwrap();
        assert!(open.len() <= 1, "{what}: stale multipart uploads {open:?}");
        left_open += open.len();
        println!(
            "{what}: {} multipart upload(s) open, {:?} since start",
            open.len(),
            t0.elapsed()
        );
        let up = bucket_ids(&s3, &rt);
        let left = spool_ids(&spool);
        let lost: Vec<_> = sealed
            .iter()
            .filter(|id| !up.contains(*id) && !left.contains(*id))
            .collect();
        assert!(lost.is_empty(), "{what}: lost {lost:?}");
        // The uploader never touches plaintext; what it writes (status, audit, shipping
        // state) must not hold any either. Sealed blobs are checked in the bucket below.
        for f in walkdir::WalkDir::new(&spool).into_iter().flatten() {
            let blob = f.path().extension().is_some_and(|e| e == "age");
            if f.file_type().is_file() && !blob && !f.path().starts_with(spool.join("staging")) {
                let bytes = fs::read(f.path()).unwrap_or_default();
                assert!(
                    !contains(&bytes, support::MARKER.as_bytes()),
                    "{what}: plaintext in {}",
                    f.path().display()
                );
            }
        }
    }

    // A clean run finishes the job.
    let out = ck(&upload);
    assert_ok(&out, "final upload");
    assert!(spool_ids(&spool).is_empty(), "the spool drains");
    let up = bucket_ids(&s3, &rt);
    assert_eq!(up, sealed, "every sealed record is in the bucket, once");
    rt.block_on(async {
        for id in s3.ids().await.unwrap() {
            let m = s3.manifest(&id).await.unwrap();
            let mut r = s3.blob_reader(&id, 0, m.sealed.size).await.unwrap();
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = r.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
                assert!(
                    !contains(&buf[..k], support::MARKER.as_bytes()),
                    "{id}: plaintext in the bucket"
                );
                hash.update(&buf[..k]);
            }
            assert_eq!(n, m.sealed.size, "{id}: blob size");
            assert_eq!(
                hex::encode(hash.finalize()),
                m.sealed.sha256,
                "{id}: blob hash"
            );
        }
    });
    let open = rt.block_on(s3.open_uploads("blobs/")).unwrap();
    assert!(open.is_empty(), "multipart uploads left open: {open:?}");
    // A run killed between a blob and its manifest must not make the next run write the
    // blob again: one version of every blob and manifest (a versioned, Object Lock bucket
    // keeps every version, undeletable under COMPLIANCE).
    let per_key = seaweed::versions_per_key(&s3, &rt, BUCKET, PREFIX);
    let doubled: Vec<_> = per_key
        .iter()
        .filter(|(k, n)| (k.contains("/blobs/") || k.contains("/manifests/")) && **n > 1)
        .collect();
    assert!(
        per_key.keys().any(|k| k.contains("/blobs/")),
        "no blob versions listed: {per_key:?}"
    );
    assert!(doubled.is_empty(), "objects written twice: {doubled:?}");
    assert_ok(
        &ck(&["audit", "verify", "--store", p(&spool)]),
        "spool audit chain",
    );
    assert_ok(
        &ck(&["audit", "verify", "--config", p(&upload_cfg)]),
        "audit shipped to the bucket",
    );
    println!(
        "crash upload: {runs} runs, {killed} killed mid-way ({left_open} inside a multipart upload), {} records in the bucket, invariants held after each",
        up.len()
    );
    assert!(
        killed >= ROUNDS / 2,
        "only {killed} of {runs} runs were killed"
    );
}
