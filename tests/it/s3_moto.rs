//! The S3 store against moto's S3 server, which follows AWS's rules where SeaweedFS is
//! lenient (tests/it/s3_conformance.rs runs the Object Lock suite on both): a blob already in
//! the bucket is not written again, legal holds on a bucket without Object Lock, and
//! credentials from the AWS SDK's default chain (web identity through moto's STS, static
//! keys, and the error naming every way when there are none).

use crate::support;

use std::fs;

use serde_json::Value;
use support::{ckvault, ok, p};

#[test]
fn a_blob_already_in_the_bucket_is_not_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let s3 = ckvault::internal::store::s3::S3Store::new(&moto.store_config("again", "k")).unwrap();
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
        let s3 = ckvault::internal::store::s3::S3Store::new(&cfg).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        // A create whose answer was lost (a server slow to start) leaves the bucket made:
        // a retry then hears that it exists, which is success too.
        loop {
            let err = match rt.block_on(s3.client().create_bucket().bucket("plain").send()) {
                Ok(_) => break,
                Err(e) => format!("{:?}", aws_sdk_s3::error::DisplayErrorContext(&e)),
            };
            if err.contains("BucketAlreadyOwnedByYou") || err.contains("BucketAlreadyExists") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no bucket: {err}"
            );
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

/// Runs ckvault with no AWS settings from this process's environment: only `env`.
fn ckvault_env(
    args: &[&str],
    home: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(support::ckvault_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn credentials_come_from_web_identity_as_in_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let rt = support::seaweed::runtime();
    let s3 = ckvault::internal::store::s3::S3Store::new(&moto.store_config("irsa", "k")).unwrap();
    rt.block_on(s3.client().create_bucket().bucket("irsa").send())
        .unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    // No credentials_file: the SDK's default chain decides.
    let store = moto
        .store_toml("irsa", "k", &tmp.path().join("spool"))
        .lines()
        .filter(|l| !l.starts_with("credentials_file"))
        .collect::<Vec<_>>()
        .join("\n");
    let config = tmp.path().join("node.toml");
    fs::write(
        &config,
        format!("{store}\n[node]\nname = \"node-w\"\n[seal]\nrecipients = [\"{recipient}\"]\n"),
    )
    .unwrap();
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let token = tmp.path().join("token");
    fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2t2YXVsdDpub2RlIn0.c2ln",
    )
    .unwrap();
    let endpoint = moto.endpoint();
    let web_identity = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", p(&token)),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/ckvault-node",
        ),
        ("AWS_ROLE_SESSION_NAME", "ckvault-test"),
        ("AWS_ENDPOINT_URL_STS", endpoint.as_str()),
    ];
    let statics = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    for (how, env) in [
        ("web identity", &web_identity[..]),
        ("static keys", &statics[..]),
    ] {
        let a = tmp.path().join(format!("{how}.tar"));
        fs::write(
            &a,
            support::tar_with(&[("notes.txt", b'0', how.as_bytes())]),
        )
        .unwrap();
        let out = ckvault_env(&["seal", p(&a), "--config", p(&config)], &home, env);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() && !err.contains("upload pending"),
            "{how}: {err}\nmoto:\n{}",
            moto.log_tail()
        );
        let m: Value = serde_json::from_str(&ok(&out)).unwrap();
        let key = format!("k/manifests/{}.json", m["id"].as_str().unwrap());
        assert!(
            rt.block_on(s3.head_size(&key)).unwrap().is_some(),
            "{how}: {key} not in the bucket"
        );
    }
    // The same web identity with STS away: no credentials (so STS was what gave them).
    let mut no_sts = web_identity;
    no_sts[3] = ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9");
    let out = ckvault_env(&["ls", "--config", p(&config)], &home, &no_sts);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no S3 credentials could be obtained"),
        "{err}"
    );
    // Nothing provided: the error names the ways to provide credentials.
    let out = ckvault_env(&["ls", "--config", p(&config)], &home, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for way in [
        "credentials_file",
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "EKS Pod Identity",
        "instance metadata",
    ] {
        assert!(err.contains(way), "{way} not named: {err}");
    }
}
