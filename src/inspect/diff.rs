//! Two deep views side by side ("what changed between two captures of one container"):
//! identity, processes (command line, environment names, memory size, open files,
//! sockets), mounts, root filesystem changes and dump statistics. Pure data in, JSON and an
//! escaped table out; loading the two sides (archives or sealed records) is the caller's.
//!
//! Environment values are never shown: a variable whose value differs is listed by name
//! under `env.changed`.
//!
//! Files and sockets are compared as each deep view lists them: a descriptor table shared
//! by several processes is compared once, under the process that lists it, and a change of
//! which process that is shows as `files_shared_with`; descriptors a view did not list
//! (its row cap) show as `files_omitted`. So the comparison is as bounded as the views.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::deep::{DeepProcess, DeepView};
use super::escape::escape_control;
use super::model::Identity;

/// One side of a comparison.
#[derive(Debug, Clone)]
pub struct Side {
    /// What it is (the archive's path or the record ID).
    pub source: String,
    /// Identity fields, in display order.
    pub identity: Vec<(&'static str, Option<String>)>,
    /// Its deep view.
    pub view: DeepView,
}

/// The identity fields of an inspection, in display order.
pub fn identity_fields(i: &Identity) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("namespace", i.namespace.clone()),
        ("pod", i.pod.clone()),
        ("container", i.container.clone()),
        ("container_id", i.container_id.clone()),
        ("image", i.image.clone()),
        ("engine", i.engine.map(|e| e.as_str().to_owned())),
        ("runtime", i.runtime.clone()),
        ("checkpointed_at", i.checkpointed_at.clone()),
    ]
}

fn set_diff<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        b.difference(a).cloned().collect(),
        a.difference(b).cloned().collect(),
    )
}

fn files_of(p: &DeepProcess) -> BTreeSet<(String, String, String)> {
    p.files
        .iter()
        .map(|f| {
            let fd = match f.fd {
                super::deep::Fd::Num(n) => n.to_string(),
                super::deep::Fd::Cwd => "cwd".into(),
                super::deep::Fd::Root => "root".into(),
            };
            (fd, f.kind.clone(), f.path.clone())
        })
        .collect()
}

fn sockets_of(p: &DeepProcess) -> BTreeSet<String> {
    p.sockets
        .iter()
        .map(|s| {
            if s.family == "UNIX" {
                format!(
                    "fd {} UNIX {} {} {:?} peer {}",
                    s.fd, s.kind, s.state, s.source, s.peer
                )
            } else {
                format!(
                    "fd {} {} {} {} {} {}:{} -> {}:{}",
                    s.fd,
                    s.family,
                    s.kind,
                    s.protocol,
                    s.state,
                    s.source,
                    s.source_port,
                    s.destination,
                    s.destination_port
                )
            }
        })
        .collect()
}

fn process_diff(pid: u32, a: &DeepProcess, b: &DeepProcess) -> Value {
    let mut out = Map::new();
    out.insert("pid".into(), pid.into());
    let (ma, mb) = (a.memory.memory_bytes, b.memory.memory_bytes);
    out.insert(
        "memory".into(),
        json!({"a": ma, "b": mb, "delta": i128::from(mb) - i128::from(ma)}),
    );
    if a.memory.cmdline != b.memory.cmdline {
        out.insert(
            "cmdline".into(),
            json!({"a": a.memory.cmdline, "b": b.memory.cmdline}),
        );
    }
    let env =
        |p: &DeepProcess| -> BTreeMap<String, String> { p.memory.env.iter().cloned().collect() };
    let (ea, eb) = (env(a), env(b));
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<BTreeSet<_>>();
    let (added, removed) = set_diff(&names(&ea), &names(&eb));
    let changed: Vec<&String> = ea
        .iter()
        .filter(|(k, v)| eb.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    if !added.is_empty() || !removed.is_empty() || !changed.is_empty() {
        out.insert(
            "env".into(),
            json!({"added": added, "removed": removed, "changed": changed}),
        );
    }
    if a.files_shared_with != b.files_shared_with {
        out.insert(
            "files_shared_with".into(),
            json!({"a": a.files_shared_with, "b": b.files_shared_with}),
        );
    }
    if a.files_omitted != 0 || b.files_omitted != 0 {
        out.insert(
            "files_omitted".into(),
            json!({"a": a.files_omitted, "b": b.files_omitted}),
        );
    }
    let (added, removed) = set_diff(&files_of(a), &files_of(b));
    if !added.is_empty() || !removed.is_empty() {
        let f = |v: Vec<(String, String, String)>| -> Vec<Value> {
            v.into_iter()
                .map(|(fd, kind, path)| json!({"fd": fd, "type": kind, "path": path}))
                .collect()
        };
        out.insert(
            "files".into(),
            json!({"added": f(added), "removed": f(removed)}),
        );
    }
    let (added, removed) = set_diff(&sockets_of(a), &sockets_of(b));
    if !added.is_empty() || !removed.is_empty() {
        out.insert(
            "sockets".into(),
            json!({"added": added, "removed": removed}),
        );
    }
    out.into()
}

/// Compares two sides; see the module doc for what is compared.
pub fn compare(a: &Side, b: &Side) -> Value {
    let side = |s: &Side| {
        let mut m = Map::new();
        m.insert("source".into(), s.source.clone().into());
        for (k, v) in &s.identity {
            m.insert((*k).into(), v.clone().into());
        }
        Value::from(m)
    };
    let identity: Vec<Value> = a
        .identity
        .iter()
        .zip(&b.identity)
        .filter(|((_, va), (_, vb))| va != vb)
        .map(|((k, va), (_, vb))| json!({"field": k, "a": va, "b": vb}))
        .collect();
    let pa: BTreeSet<u32> = a.view.processes.keys().copied().collect();
    let pb: BTreeSet<u32> = b.view.processes.keys().copied().collect();
    let summary = |p: &DeepProcess, pid: u32| json!({"pid": pid, "cmdline": p.memory.cmdline, "memory": p.memory.memory_bytes});
    let only = |from: &DeepView, pids: Vec<u32>| -> Vec<Value> {
        pids.into_iter()
            .filter_map(|pid| from.processes.get(&pid).map(|p| summary(p, pid)))
            .collect()
    };
    let (new_pids, gone_pids) = set_diff(&pa, &pb);
    let both: Vec<Value> = pa
        .intersection(&pb)
        .filter_map(|pid| {
            let (x, y) = (a.view.processes.get(pid)?, b.view.processes.get(pid)?);
            Some(process_diff(*pid, x, y))
        })
        .collect();
    let mounts = |v: &DeepView| -> BTreeSet<(String, String, String)> {
        v.mounts
            .iter()
            .map(|m| (m.destination.clone(), m.kind.clone(), m.source.clone()))
            .collect()
    };
    let (m_added, m_removed) = set_diff(&mounts(&a.view), &mounts(&b.view));
    let m = |v: Vec<(String, String, String)>| -> Vec<Value> {
        v.into_iter()
            .map(|(d, t, s)| json!({"destination": d, "type": t, "source": s}))
            .collect()
    };
    let changes = |v: &DeepView| -> BTreeSet<(String, String, String, u64)> {
        v.rootfs_changes
            .iter()
            .map(|c| (c.path.clone(), c.change.into(), c.kind.into(), c.size))
            .collect()
    };
    let (r_added, r_removed) = set_diff(&changes(&a.view), &changes(&b.view));
    let r = |v: Vec<(String, String, String, u64)>| -> Vec<Value> {
        v.into_iter()
            .map(|(p, c, t, s)| json!({"path": p, "change": c, "type": t, "size": s}))
            .collect()
    };
    json!({
        "a": side(a),
        "b": side(b),
        "identity": identity,
        "processes": {
            "only_in_a": only(&a.view, gone_pids),
            "only_in_b": only(&b.view, new_pids),
            "in_both": both,
        },
        "mounts": {"added": m(m_added), "removed": m(m_removed)},
        "rootfs_changes": {"added": r(r_added), "removed": r(r_removed)},
        "statistics": {"a": a.view.statistics, "b": b.view.statistics},
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape_control(s).into_owned(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        other => escape_control(&other.to_string()).into_owned(),
    }
}

fn list(out: &mut String, label: &str, items: &Value) {
    for item in items.as_array().map(Vec::as_slice).unwrap_or_default() {
        let shown = match item {
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(" "),
            other => text(other),
        };
        let _ = writeln!(out, "  {label} {shown}");
    }
}

/// The table form of [`compare`]'s document, every string escaped.
pub fn render_table(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "a: {}", text(&doc["a"]["source"]));
    let _ = writeln!(out, "b: {}", text(&doc["b"]["source"]));
    let _ = writeln!(out, "identity:");
    let fields = doc["a"]
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    for k in fields.unwrap_or_default() {
        if k == "source" {
            continue;
        }
        let (x, y) = (&doc["a"][&k], &doc["b"][&k]);
        let mark = if x == y { " " } else { "*" };
        let _ = writeln!(out, " {mark} {k:<16} {:<40} {}", text(x), text(y));
    }
    let _ = writeln!(out, "processes:");
    list(&mut out, "only in a:", &doc["processes"]["only_in_a"]);
    list(&mut out, "only in b:", &doc["processes"]["only_in_b"]);
    for p in doc["processes"]["in_both"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let _ = writeln!(
            out,
            "  pid {}: memory {} -> {} bytes ({:+})",
            text(&p["pid"]),
            text(&p["memory"]["a"]),
            text(&p["memory"]["b"]),
            p["memory"]["delta"].as_i64().unwrap_or(0)
        );
        if let Some(shared) = p.get("files_shared_with") {
            let _ = writeln!(
                out,
                "    files shared with process: {}  ->  {}",
                text(&shared["a"]),
                text(&shared["b"])
            );
        }
        if let Some(omitted) = p.get("files_omitted") {
            let _ = writeln!(
                out,
                "    descriptors not listed: {}  ->  {}",
                text(&omitted["a"]),
                text(&omitted["b"])
            );
        }
        if p.get("cmdline").is_some() {
            let _ = writeln!(
                out,
                "    cmdline: {}  ->  {}",
                text(&p["cmdline"]["a"]),
                text(&p["cmdline"]["b"])
            );
        }
        for (what, key) in [("env", "env"), ("file", "files"), ("socket", "sockets")] {
            list(&mut out, &format!("  {what} +"), &p[key]["added"]);
            list(&mut out, &format!("  {what} -"), &p[key]["removed"]);
        }
        list(&mut out, "  env ~", &p["env"]["changed"]);
    }
    let _ = writeln!(out, "mounts:");
    list(&mut out, "+", &doc["mounts"]["added"]);
    list(&mut out, "-", &doc["mounts"]["removed"]);
    let _ = writeln!(out, "root filesystem changes:");
    list(&mut out, "+", &doc["rootfs_changes"]["added"]);
    list(&mut out, "-", &doc["rootfs_changes"]["removed"]);
    let _ = writeln!(out, "dump statistics:");
    let _ = writeln!(out, "  a: {}", text(&doc["statistics"]["a"]));
    let _ = writeln!(out, "  b: {}", text(&doc["statistics"]["b"]));
    out
}
