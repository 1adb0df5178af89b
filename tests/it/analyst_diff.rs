//! `ckvault diff` on REAL checkpoints: two Podman captures of one pod's container (8 and 16
//! MiB of memory, so the container id, command line, memory size and pipes differ), each
//! sealed, compared record to record (decrypted in memory, two audited reads with their
//! purpose) and archive to record; environment values never shown.

use crate::support;

use serde_json::Value;
use support::{ckvault, ok, p};

#[test]
fn two_captures_of_one_container_side_by_side() {
    let (Some(small), Some(big)) = (
        support::real_checkpoint(8, "shop", "api-0", "api", "none"),
        support::real_checkpoint(16, "shop", "api-0", "api", "zstd"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(tmp.path());
    let store = tmp.path().join("store");
    let seal = |a: &std::path::Path| -> String {
        let m: Value = serde_json::from_str(&ok(&ckvault(&[
            "seal",
            p(a),
            "--store",
            p(&store),
            "-r",
            &recipient,
        ])))
        .unwrap();
        m["id"].as_str().unwrap().to_owned()
    };
    let (a, b) = (seal(&small), seal(&big));
    let out = ok(&ckvault(&[
        "diff",
        &a,
        &b,
        "--store",
        p(&store),
        "-i",
        p(&identity),
        "--purpose",
        "case 7",
        "--format",
        "json",
    ]));
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&d["a"]["source"], &d["b"]["source"]),
        (&Value::from(a.clone()), &Value::from(b.clone()))
    );
    assert_eq!(d["a"]["pod"], "api-0");
    let changed: Vec<&str> = d["identity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"container_id"), "{changed:?}");
    assert!(!changed.contains(&"pod") && !changed.contains(&"namespace"));
    let p1 = &d["processes"]["in_both"][0];
    assert_eq!(p1["pid"], 1);
    let (ma, mb) = (
        p1["memory"]["a"].as_u64().unwrap(),
        p1["memory"]["b"].as_u64().unwrap(),
    );
    assert!(ma >= 8 << 20 && mb >= 16 << 20 && mb > ma, "{p1:#}");
    assert_eq!(
        p1["memory"]["delta"].as_i64().unwrap(),
        mb as i64 - ma as i64
    );
    // memhog's arguments: the MiB to hold, then the harness's marker.
    assert_eq!(
        p1["cmdline"]["a"].as_array().unwrap()[..2],
        ["/bin/memhog", "8"]
    );
    assert_eq!(
        p1["cmdline"]["b"].as_array().unwrap()[..2],
        ["/bin/memhog", "16"]
    );
    // Each container has its own host name: the variable is named, its values are not shown.
    assert_eq!(p1["env"]["changed"], serde_json::json!(["HOSTNAME"]));
    let deep: Value = serde_json::from_str(&ok(&ckvault(&[
        "inspect",
        &b,
        "--deep",
        "--show-env-values",
        "--store",
        p(&store),
        "-i",
        p(&identity),
        "--format",
        "json",
    ])))
    .unwrap();
    let hostname = deep["processes"]["1"]["env"]["HOSTNAME"].as_str().unwrap();
    // (It is a prefix of the container id, which is shown: no value equals it.)
    assert!(hostname.len() >= 8);
    assert!(!strings(&d).contains(&hostname), "{d:#}");
    // New pipes: the added and removed files are pipes, the rest (/etc/hostname, the
    // socket's name) is the same.
    let files = &p1["files"];
    assert!(
        files["added"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["type"] == "PIPE" || f["type"] == "UNIXSK"),
        "{files:#}"
    );
    assert!(!files["added"].as_array().unwrap().is_empty());
    assert_eq!(
        d["mounts"]["added"].as_array().unwrap().len(),
        d["mounts"]["removed"].as_array().unwrap().len()
    );
    assert!(
        d["statistics"]["a"]["pages_written"].as_u64().unwrap()
            < d["statistics"]["b"]["pages_written"].as_u64().unwrap()
    );
    // Both reads are in the audit log with the purpose.
    let audit: Vec<Value> = support::audit_events(&store);
    for id in [&a, &b] {
        assert!(
            audit.iter().any(|e| e["action"] == "inspect-deep"
                && e["purpose"] == "case 7"
                && &e["record"] == id),
            "{id}: {audit:#?}"
        );
    }
    // An archive against a record, as a table.
    let table = ok(&ckvault(&[
        "diff",
        p(&small),
        &b,
        "--store",
        p(&store),
        "-i",
        p(&identity),
    ]));
    assert!(table.contains("pid 1: memory"), "{table}");
    assert!(table.contains("* container_id"), "{table}");
    assert!(!table.split_whitespace().any(|w| w == hostname), "{table}");
    // Without a key, a record cannot be read: a clear error, nothing else.
    let out = ckvault(&["diff", &a, &b, "--store", p(&store)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-i KEYFILE"));
}

/// Every string in a JSON document.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => vec![],
    }
}
