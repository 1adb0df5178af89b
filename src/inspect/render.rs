//! Human output of an [`Inspection`], in the spirit of `checkpointctl show`: an identity
//! table, sizes, the CRIU image list and the process tree indented by parent. Every string
//! that came from the archive passes through [`escape_control`] before it is laid out.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use super::escape::escape_control;
use super::model::{Inspection, Process};

/// Indentation stops growing past this depth (a hostile chain of 65,536 processes must
/// not make the output quadratic).
const MAX_INDENT_DEPTH: usize = 32;

/// `67174400 bytes (64.1 MiB)`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{bytes} bytes ({v:.1} {unit})")
}

fn opt(v: &Option<String>) -> String {
    match v {
        Some(s) => escape_control(s).into_owned(),
        None => "-".to_owned(),
    }
}

/// Draws a two-column ASCII table.
fn table(rows: &[(&str, String)]) -> String {
    let kw = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let vw = rows
        .iter()
        .map(|(_, v)| v.chars().count())
        .max()
        .unwrap_or(0);
    let line = format!("+-{}-+-{}-+\n", "-".repeat(kw), "-".repeat(vw));
    let mut out = line.clone();
    for (k, v) in rows {
        let kp = kw.saturating_sub(k.chars().count());
        let vp = vw.saturating_sub(v.chars().count());
        let _ = writeln!(out, "| {k}{} | {v}{} |", " ".repeat(kp), " ".repeat(vp));
    }
    out.push_str(&line);
    out
}

/// Renders an inspection for a terminal. Archive strings are escaped.
pub fn render_table(i: &Inspection) -> String {
    let id = &i.identity;
    let mut out = String::new();
    let rows = [
        ("Namespace", opt(&id.namespace)),
        ("Pod", opt(&id.pod)),
        ("Container", opt(&id.container)),
        ("Container ID", opt(&id.container_id)),
        ("Image", opt(&id.image)),
        ("Image ref", opt(&id.image_ref)),
        ("Engine", id.engine.map_or("-", |e| e.as_str()).to_owned()),
        ("Runtime", opt(&id.runtime)),
        ("Created", opt(&id.created_at)),
        ("Checkpointed", opt(&id.checkpointed_at)),
        ("Archive format", i.format.as_str().to_owned()),
    ];
    out.push_str(&table(&rows));

    let s = &i.summary;
    let _ = writeln!(out, "\nMembers:       {}", s.member_count);
    let _ = writeln!(out, "Content:       {}", human(s.content_bytes));
    let _ = writeln!(out, "Memory pages:  {}", human(s.memory_pages_bytes));
    let _ = writeln!(out, "Rootfs diff:   {}", human(s.rootfs_diff_bytes));
    let _ = writeln!(out, "Processes:     {}", s.process_count);

    let _ = writeln!(out, "\nCRIU images ({}):", i.criu_images.len());
    for m in &i.criu_images {
        let _ = writeln!(out, "  {:<40} {}", escape_control(&m.name), human(m.size));
    }

    let _ = writeln!(out, "\nProcess tree:");
    if i.processes.is_empty() {
        out.push_str("  (none recorded)\n");
    }
    render_tree(&mut out, &i.processes);
    out
}

/// Writes the process tree: roots are processes whose parent is not in the tree; a
/// process not reached from a root (a hostile cycle) is shown as a root of its own.
fn render_tree(out: &mut String, procs: &[Process]) {
    let pids: HashSet<u32> = procs.iter().map(|p| p.pid).collect();
    let mut children: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (idx, p) in procs.iter().enumerate() {
        children.entry(p.ppid).or_default().push(idx);
    }
    let mut shown = vec![false; procs.len()];
    let roots = procs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.ppid == p.pid || !pids.contains(&p.ppid))
        .map(|(idx, _)| idx);
    let all = (0..procs.len()).collect::<Vec<_>>();
    for start in roots.collect::<Vec<_>>().into_iter().chain(all) {
        if shown.get(start).copied().unwrap_or(true) {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        while let Some((idx, depth)) = stack.pop() {
            let Some(p) = procs.get(idx) else { continue };
            match shown.get_mut(idx) {
                Some(seen) if !*seen => *seen = true,
                _ => continue,
            }
            let comm = p.comm.as_deref().map_or_else(|| "?".into(), escape_control);
            let plural = if p.threads == 1 { "" } else { "s" };
            let _ = writeln!(
                out,
                "  {}[{}] {} ({} thread{plural})",
                "  ".repeat(depth.min(MAX_INDENT_DEPTH)),
                p.pid,
                comm,
                p.threads
            );
            if let Some(kids) = children.get(&p.pid) {
                for &k in kids.iter().rev() {
                    stack.push((k, depth.saturating_add(1)));
                }
            }
        }
    }
}
