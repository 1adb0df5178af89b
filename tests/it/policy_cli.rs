//! Policy through the CLI on real stores: per-namespace recipients (opened with Debian's
//! age), legal holds (per record and by selector), retention plan == apply, every change
//! audited, line-precise policy errors, and a retention run killed midway leaving a
//! consistent store.

use crate::support;

use std::fs;
use std::path::Path;
use std::process::Command;

use std::time::Duration;
use support::{ckvault, ok};

use serde_json::Value;

/// A small tar holding one config.dump (enough to be inspected as a checkpoint).
fn tiny_tar(dir: &Path, name: &str, payload: &str) -> std::path::PathBuf {
    let mut h = [0u8; 512];
    h[..11].copy_from_slice(b"config.dump");
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", payload.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(payload.as_bytes());
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    let path = dir.join(name);
    fs::write(&path, out).unwrap();
    path
}

fn seal(store: &Path, archive: &Path, ns: &str, pod: &str, ctr: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "seal",
        archive.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    args.extend(["--namespace", ns, "--pod", pod, "--container", ctr]);
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&ckvault(&args))).unwrap()
}

fn ids(store: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok(&ckvault(&[
        "ls",
        "--store",
        store.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn recipients_follow_the_namespace_and_uncovered_namespaces_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::create_dir(d.join("a")).unwrap();
    fs::create_dir(d.join("b")).unwrap();
    let (id_a, key_a) = support::age_keypair(&d.join("a"));
    let (id_b, key_b) = support::age_keypair(&d.join("b"));
    let pol = d.join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(
        pol.join("recipients.toml"),
        format!("version = 1\n[[recipients]]\nnamespaces = [\"forensics\"]\nkeys = [\"{key_a}\"]\n[[recipients]]\nnamespaces = [\"team-*\"]\nkeys = [\"{key_b}\"]\n"),
    )
    .unwrap();
    let store = d.join("store");
    let archive = tiny_tar(d, "a.tar", "{}");
    let m = seal(
        &store,
        &archive,
        "forensics",
        "web",
        "app",
        &["--policies", pol.to_str().unwrap()],
    );
    let blob = store
        .join("records")
        .join(format!("{}.age", m["id"].as_str().unwrap()));
    let decrypt = |id: &Path| {
        Command::new("age")
            .args(["-d", "-i", id.to_str().unwrap(), blob.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert!(
        decrypt(&id_a).status.success(),
        "forensics key cannot open the forensics record"
    );
    assert!(
        !decrypt(&id_b).status.success(),
        "the team key opens a forensics record"
    );
    // a namespace nobody is configured for: refused loudly, nothing stored
    let before = ids(&store).len();
    let out = ckvault(&[
        "seal",
        archive.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--namespace",
        "kube-system",
        "--policies",
        pol.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no recipients are configured for namespace \"kube-system\""),
        "{err}"
    );
    assert_eq!(ids(&store).len(), before);
    assert!(fs::read_dir(store.join("tmp")).unwrap().next().is_none());
}

#[test]
fn holds_block_deletion_until_released_and_every_change_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_id, key) = support::age_keypair(d);
    let store = d.join("store");
    let s = store.to_str().unwrap();
    let archive = tiny_tar(d, "a.tar", "{}");
    let m = seal(&store, &archive, "forensics", "web", "app", &["-r", &key]);
    let id = m["id"].as_str().unwrap();
    ok(&ckvault(&[
        "hold",
        id,
        "--store",
        s,
        "--reason",
        "case 4711",
    ]));
    let out = ckvault(&["delete", id, "--store", s, "--reason", "cleanup"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    ok(&ckvault(&[
        "release",
        id,
        "--store",
        s,
        "--reason",
        "case closed",
    ]));
    // a selector hold in holds.toml blocks it too
    let pol = d.join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(pol.join("holds.toml"), "version = 1\n[[hold]]\nname = \"case-9\"\nreason = \"preserve forensics\"\nnamespaces = [\"forensics\"]\n").unwrap();
    let out = ckvault(&[
        "delete",
        id,
        "--store",
        s,
        "--reason",
        "cleanup",
        "--policies",
        pol.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("case-9"));
    ok(&ckvault(&[
        "delete", id, "--store", s, "--reason", "cleanup",
    ]));
    assert!(ids(&store).is_empty());
    let actions: Vec<(String, String)> = support::audit_events(&store)
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["purpose"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for want in [
        ("hold", "case 4711"),
        ("release", "case closed"),
        ("delete", "cleanup"),
    ] {
        assert!(
            actions.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{actions:?}"
        );
    }
    ok(&ckvault(&["audit", "verify", "--store", s]));
}

#[test]
fn retention_plan_equals_apply_and_holds_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_id, key) = support::age_keypair(d);
    let store = d.join("store");
    let s = store.to_str().unwrap();
    let archive = tiny_tar(d, "a.tar", "{}");
    let mut forensics = Vec::new();
    for _ in 0..6 {
        forensics.push(
            seal(&store, &archive, "forensics", "web", "app", &["-r", &key])["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut team = Vec::new();
    for _ in 0..3 {
        team.push(
            seal(&store, &archive, "team-a", "api", "srv", &["-r", &key])["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // one of the older forensics records (the second oldest) is on hold
    ok(&ckvault(&[
        "hold",
        &forensics[1],
        "--store",
        s,
        "--reason",
        "case 1",
    ]));
    let pol = d.join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(
        pol.join("retention.toml"),
        "version = 1\n[[rule]]\nname = \"forensics-short\"\nnamespaces = [\"forensics\"]\nkeep_last = 2\n[[rule]]\nname = \"default\"\nkeep_last = 10\n[[rule]]\nname = \"team-app\"\nnamespaces = [\"team-*\"]\ncontainers = [\"srv\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let plan: Value = serde_json::from_str(&ok(&ckvault(&[
        "retention",
        "plan",
        "--store",
        s,
        "--policies",
        pol.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    let mut planned: Vec<String> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    // keep_last 2 of 6 with an older one held: 3 forensics records go; team keeps 1 of 3
    let mut want: Vec<String> = [&forensics[0], &forensics[2], &forensics[3]]
        .into_iter()
        .chain(&team[..2])
        .cloned()
        .collect();
    planned.sort();
    want.sort();
    assert_eq!(planned, want);
    for d in plan.as_array().unwrap() {
        let expected_rule = if forensics.contains(&d["id"].as_str().unwrap().to_owned()) {
            "forensics-short"
        } else {
            "team-app"
        };
        assert_eq!(d["rule"], expected_rule);
        assert_eq!(d["reason"], "keep_last");
    }
    // planning deleted nothing
    assert_eq!(ids(&store).len(), 9);
    let applied: Value = serde_json::from_str(&ok(&ckvault(&[
        "retention",
        "apply",
        "--store",
        s,
        "--policies",
        pol.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    let mut applied: Vec<String> = applied
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    applied.sort();
    assert_eq!(applied, planned);
    let mut left = ids(&store);
    left.sort();
    let mut expect_left: Vec<String> = [
        forensics[1].clone(),
        forensics[4].clone(),
        forensics[5].clone(),
        team[2].clone(),
    ]
    .to_vec();
    expect_left.sort();
    assert_eq!(left, expect_left);
    let deletes: Vec<Value> = support::audit_events(&store)
        .into_iter()
        .filter(|e| e["action"] == "retention-delete")
        .collect();
    assert_eq!(deletes.len(), 5);
    let forensics_deletes = deletes
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .unwrap()
                .starts_with("rule forensics-short ")
        })
        .count();
    assert_eq!(forensics_deletes, 3, "{deletes:#?}");
    assert!(
        deletes
            .iter()
            .all(|e| e["detail"].as_str().unwrap().starts_with("rule "))
    );
    ok(&ckvault(&["audit", "verify", "--store", s]));
    ok(&ckvault(&["verify", "--all", "--store", s]));
}

#[test]
fn policy_errors_are_reported_with_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path();
    fs::write(pol.join("retention.toml"), "version = 1\n[[rule]]\nname = \"x\"\nmax_age = \"forever\"\n[[rule]]\nname = \"x\"\nkeep_last = 1\n").unwrap();
    fs::write(
        pol.join("recipients.toml"),
        "[[recipients]]\nnamespaces = [\"a\"]\nkeys = [\"age1nope\"]\n",
    )
    .unwrap();
    let out = ckvault(&["policy", "check", pol.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("retention.toml:4:11: \"forever\" is not a duration"),
        "{text}"
    );
    assert!(
        text.contains("retention.toml:6:8: rule name \"x\" is used twice"),
        "{text}"
    );
    assert!(text.contains("recipients.toml:3:9:"), "{text}");
}

#[test]
fn a_retention_run_killed_midway_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_id, key) = support::age_keypair(d);
    let store = d.join("store");
    let s = store.to_str().unwrap();
    let archive = tiny_tar(d, "a.tar", "{}");
    for _ in 0..60 {
        seal(&store, &archive, "team-a", "api", "srv", &["-r", &key]);
    }
    let pol = d.join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(
        pol.join("retention.toml"),
        "version = 1\n[[rule]]\nname = \"one\"\nkeep_last = 1\n",
    )
    .unwrap();
    for delay_ms in [5u64, 20, 60] {
        let mut child = Command::new(support::ckvault_bin())
            .args([
                "retention",
                "apply",
                "--store",
                s,
                "--policies",
                pol.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every listed record verifies (manifest signed, blob present and intact)...
        ok(&ckvault(&["verify", "--all", "--store", s]));
        // ... no blob without a manifest survives the next open ...
        let records = store.join("records");
        for e in fs::read_dir(&records).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".age") {
                assert!(
                    records.join(format!("{stem}.json")).exists(),
                    "orphan blob {name}"
                );
            }
        }
        // ... and the audit chain still verifies.
        ok(&ckvault(&["audit", "verify", "--store", s]));
    }
    ok(&ckvault(&[
        "retention",
        "apply",
        "--store",
        s,
        "--policies",
        pol.to_str().unwrap(),
    ]));
    assert_eq!(ids(&store).len(), 1);
}
