//! The process tree: `pstree.img` (`PstreeEntry { pid = 1; ppid = 2; pgid = 3; sid = 4;
//! repeated threads = 5 }`) and each task's command name from `core-<pid>.img`
//! (`CoreEntry { tc = 3 }`, `TaskCoreEntry { comm = 6 }`; thread core images carry no `tc`
//! and so no command name).

use std::collections::HashSet;

use super::proto::{CriuError, Pb, Value, bad, entries, u32_of};
use crate::inspect::model::Process;

/// Magic of `pstree.img`.
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
/// Magic of `core-<pid>.img`.
pub const CORE_MAGIC: u32 = 0x5505_3847;
/// Longest command name accepted (the kernel's is 16 bytes).
pub const MAX_COMM_BYTES: usize = 64;

/// Parses `pstree.img` into processes (in image order, without command names).
pub fn parse_pstree(img: &[u8], max_processes: usize) -> Result<Vec<Process>, CriuError> {
    let mut out = Vec::new();
    let mut pids = HashSet::new();
    for entry in entries(img, PSTREE_MAGIC)? {
        if out.len() >= max_processes {
            return Err(CriuError::TooManyProcesses(max_processes));
        }
        let mut pb = Pb { buf: entry };
        let (mut pid, mut ppid, mut threads) = (None, 0u32, 0u32);
        while let Some((field, value)) = pb.next()? {
            match (field, value) {
                (1, Value::Varint(v)) => pid = Some(u32_of(v, "pid")?),
                (2, Value::Varint(v)) => ppid = u32_of(v, "ppid")?,
                (3 | 4, Value::Varint(v)) => {
                    u32_of(v, "pgid/sid")?;
                }
                (5, Value::Varint(v)) => {
                    u32_of(v, "thread id")?;
                    threads = threads.saturating_add(1);
                }
                (5, Value::Bytes(packed)) => {
                    let mut inner = Pb { buf: packed };
                    while !inner.buf.is_empty() {
                        u32_of(inner.varint()?, "thread id")?;
                        threads = threads.saturating_add(1);
                    }
                }
                (1..=5, _) => {
                    return Err(bad(format!("pstree field {field} has the wrong wire type")));
                }
                _ => {}
            }
        }
        let pid = pid.ok_or_else(|| bad("pstree entry without a pid"))?;
        if !pids.insert(pid) {
            return Err(bad(format!("pid {pid} appears twice in the process tree")));
        }
        out.push(Process {
            pid,
            ppid,
            comm: None,
            threads,
        });
    }
    Ok(out)
}

/// Parses `core-<pid>.img` and returns the task's command name (`tc.comm`), if present.
pub fn parse_core_comm(img: &[u8]) -> Result<Option<String>, CriuError> {
    let mut comm = None;
    for entry in entries(img, CORE_MAGIC)? {
        let mut pb = Pb { buf: entry };
        while let Some((field, value)) = pb.next()? {
            match (field, value) {
                (3, Value::Bytes(tc)) => {
                    let mut inner = Pb { buf: tc };
                    while let Some((f, v)) = inner.next()? {
                        match (f, v) {
                            (6, Value::Bytes(name)) => {
                                if name.len() > MAX_COMM_BYTES {
                                    return Err(bad(format!(
                                        "command name of {} bytes (at most {MAX_COMM_BYTES})",
                                        name.len()
                                    )));
                                }
                                comm = Some(String::from_utf8_lossy(name).into_owned());
                            }
                            (6, _) => return Err(bad("comm has the wrong wire type")),
                            _ => {}
                        }
                    }
                }
                (3, _) => return Err(bad("core tc has the wrong wire type")),
                _ => {}
            }
        }
    }
    Ok(comm)
}
