//! The S3 store against moto's S3 server, which follows AWS's rules where SeaweedFS is
//! lenient: with `[store] object_lock`, every write must carry a checksum
//! (`x-amz-checksum-*` or `Content-MD5`). Records small enough for one PUT, records large
//! enough for a multipart upload, manifests and audit segments must all land, each object
//! version under the configured retention, one version per object.

mod support;

use std::fs;

use serde_json::Value;
use support::{ckvault, ok, p};

#[test]
fn object_lock_uploads_carry_checksums_and_land_retained_once() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let s3 = ckvault::store::s3::S3Store::new(&moto.store_config("locked", "k")).unwrap();
    let rt = support::seaweed::runtime();
    rt.block_on(
        s3.client()
            .create_bucket()
            .bucket("locked")
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let config = tmp.path().join("node.toml");
    fs::write(
        &config,
        format!(
            "{}object_lock = \"governance\"\nlock_days = 1\n[node]\nname = \"node-m\"\n[seal]\nrecipients = [\"{recipient}\"]\n",
            moto.store_toml("locked", "k", &tmp.path().join("spool"))
        ),
    )
    .unwrap();
    let small = tmp.path().join("small.tar");
    fs::write(
        &small,
        support::tar_with(&[("notes.txt", b'0', b"small\n")]),
    )
    .unwrap();
    // Incompressible, so the sealed blob is over one part (16 MiB): a multipart upload.
    let mut data = vec![0u8; 20 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = tmp.path().join("big.tar");
    fs::write(&big, support::tar_with(&[("rootfs-diff.tar", b'0', &data)])).unwrap();
    let mut ids = Vec::new();
    for archive in [&small, &big] {
        let out = ckvault(&["seal", p(archive), "--config", p(&config)]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("upload pending"),
            "the upload was refused: {stderr}\nmoto:\n{}",
            moto.log_tail()
        );
        let m: Value = serde_json::from_str(&ok(&out)).unwrap();
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let left: Vec<_> = fs::read_dir(tmp.path().join("spool/records"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "records left in the spool: {left:?}");

    // Every record object and audit segment: one version, GOVERNANCE retention ahead.
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "locked", "k/");
    let mut keys: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            [
                format!("k/blobs/{id}.age"),
                format!("k/manifests/{id}.json"),
            ]
        })
        .collect();
    keys.extend(
        per_key
            .keys()
            .filter(|k| k.starts_with("k/audit/") && !k.ends_with("/head.json"))
            .cloned(),
    );
    assert!(
        keys.iter().any(|k| k.ends_with(".jsonl")),
        "no audit segment shipped: {per_key:#?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for key in &keys {
        assert_eq!(per_key.get(key), Some(&1), "{key}: {per_key:#?}");
        // HEAD (moto's server answers GET ?retention with the object itself).
        let h = rt
            .block_on(s3.client().head_object().bucket("locked").key(key).send())
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        assert_eq!(
            h.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{key}: {h:?}"
        );
        let until = h.object_lock_retain_until_date().map_or(0, |d| d.secs());
        assert!(
            until > now + 3600,
            "{key}: retained until {until}, now {now}"
        );
    }
    let out = ok(&ckvault(&[
        "ls",
        "--config",
        p(&config),
        "--format",
        "json",
    ]));
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 2, "{out}");
    let out = ok(&ckvault(&["audit", "verify", "--config", p(&config)]));
    assert!(out.contains("OK 1 sources"), "{out}");
    eprintln!(
        "moto with object_lock = governance: {} records ({} objects checked), one version each, retention GOVERNANCE",
        ids.len(),
        keys.len()
    );
}

#[test]
fn a_blob_already_in_the_bucket_is_not_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let s3 = ckvault::store::s3::S3Store::new(&moto.store_config("again", "k")).unwrap();
    let rt = support::seaweed::runtime();
    rt.block_on(
        s3.client()
            .create_bucket()
            .bucket("again")
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let spool = tmp.path().join("spool");
    let tail = format!(
        "object_lock = \"governance\"\nlock_days = 1\n[node]\nname = \"node-m\"\n[seal]\nrecipients = [\"{recipient}\"]\n"
    );
    let good = tmp.path().join("node.toml");
    fs::write(
        &good,
        format!("{}{tail}", moto.store_toml("again", "k", &spool)),
    )
    .unwrap();
    // The same spool, the store away: the record waits there.
    let away = tmp.path().join("away.toml");
    fs::write(
        &away,
        format!("{}{tail}", moto.store_toml("again", "k", &spool))
            .replace(&moto.endpoint(), "http://127.0.0.1:9"),
    )
    .unwrap();
    let tar = tmp.path().join("a.tar");
    fs::write(&tar, support::tar_with(&[("notes.txt", b'0', b"again\n")])).unwrap();
    let m: Value =
        serde_json::from_str(&ok(&ckvault(&["seal", p(&tar), "--config", p(&away)]))).unwrap();
    let id = m["id"].as_str().unwrap();
    // Before any uploader ran here, the status says so and what waits (it used to fail).
    let status: Value =
        serde_json::from_str(&ok(&ckvault(&["upload", "--status", "--config", p(&away)]))).unwrap();
    assert_eq!(status["state"], "not-started", "{status}");
    assert_eq!(status["pending"], 1, "{status}");
    // Nothing of this node is in the bucket yet: verification must not say "OK".
    let out = ckvault(&["audit", "verify", "--config", p(&good)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success() && text.contains("PENDING"), "{text}");
    // A run that died after the blob and before the manifest: the blob is there.
    let blob = spool.join("records").join(format!("{id}.age"));
    rt.block_on(s3.put_file(
        &format!("k/blobs/{id}.age"),
        &blob,
        m["sealed"]["size"].as_u64().unwrap(),
        m["sealed"]["sha256"].as_str().unwrap(),
    ))
    .unwrap();
    ok(&ckvault(&["upload", "--config", p(&good)]));
    let out = ok(&ckvault(&["audit", "verify", "--config", p(&good)]));
    assert!(out.contains("OK 1 sources"), "{out}");
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "again", "k/");
    let count = |key: &str| per_key.get(key).copied().unwrap_or(0);
    assert_eq!(count(&format!("k/manifests/{id}.json")), 1);
    assert_eq!(
        count(&format!("k/blobs/{id}.age")),
        1,
        "the blob was written a second time"
    );
    // A long-running uploader's first drain is not a "resumption".
    let watch_dir = tmp.path().join("checkpoints");
    fs::create_dir(&watch_dir).unwrap();
    let watch_cfg = tmp.path().join("watch.toml");
    fs::write(
        &watch_cfg,
        format!(
            "{}{tail}[watch]\ndir = \"{}\"\n",
            moto.store_toml("again", "k", &spool),
            p(&watch_dir)
        ),
    )
    .unwrap();
    let log = tmp.path().join("watch.log");
    let mut child = std::process::Command::new(support::ckvault_bin())
        .args(["watch", "--config", p(&watch_cfg)])
        .stderr(fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = spool.join("upload-status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !status_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the uploader never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("resumed"), "{text}");
    let status: Value =
        serde_json::from_str(&ok(&ckvault(&["upload", "--status", "--config", p(&good)]))).unwrap();
    assert_eq!(status["state"], "ok", "{status}");
}

/// A bucket without Object Lock: a hold still binds ckvault, and the answer says the store
/// does not enforce it, on both servers (each names the missing configuration its way).
#[test]
fn a_hold_on_a_bucket_without_object_lock_says_so_on_both_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let Some(weed) = support::seaweed::Seaweed::start(&tmp.path().join("weed")) else {
        return;
    };
    let rt = support::seaweed::runtime();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let stores = [
        (
            "moto",
            moto.store_config("plain", "k"),
            moto.store_toml("plain", "k", &tmp.path().join("spool-moto")),
        ),
        (
            "seaweedfs",
            weed.store_config("plain", "k"),
            weed.store_toml("plain", "k", &tmp.path().join("spool-weed")),
        ),
    ];
    for (name, cfg, toml) in stores {
        let s3 = ckvault::store::s3::S3Store::new(&cfg).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while rt
            .block_on(s3.client().create_bucket().bucket("plain").send())
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "{name}: no bucket");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let config = tmp.path().join(format!("{name}.toml"));
        fs::write(
            &config,
            format!("{toml}[node]\nname = \"node-h\"\n[seal]\nrecipients = [\"{recipient}\"]\n"),
        )
        .unwrap();
        let tar = tmp.path().join(format!("{name}.tar"));
        fs::write(&tar, support::tar_with(&[("notes.txt", b'0', b"hold\n")])).unwrap();
        let m: Value =
            serde_json::from_str(&ok(&ckvault(&["seal", p(&tar), "--config", p(&config)])))
                .unwrap();
        let id = m["id"].as_str().unwrap();
        let out = ckvault(&["hold", id, "--config", p(&config), "--reason", "case 9"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{name}: {stderr}");
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("no Object Lock"), "{name}: {stderr}");
    }
}
