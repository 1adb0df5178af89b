//! The deep view of a checkpoint, read in one streaming pass with nothing written anywhere:
//! per process its command line and environment (from its memory, see [`memory`]), open
//! files (with cwd and root) and sockets (`ids-`, `fs-`, `fdinfo-<id>.img`, `files.img`, and
//! `sk-queues.img` for the bytes queued on them);
//! for the container its mounts and annotations (`spec.dump`), CRIU's dump statistics
//! (`stats-dump`) and the files it added, changed or deleted (the nested `rootfs-diff.tar`,
//! plain or gzip/zstd-compressed as containerd writes it, listed with the same hostile-input
//! tar reader and decompression caps, and `deleted.files`).
//!
//! Every image is read whole under [`Limits::max_criu_image_bytes`]; every name taken from
//! an image is at most [`criu::MAX_NAME_BYTES`]; lists are capped and what was left out is
//! counted: a descriptor table shared by several processes is listed once, and the rows of
//! all processes together are capped ([`MAX_FILE_ROWS`], [`MAX_FILE_ROW_BYTES`]). Rendering (JSON and the escaped table) lives here too, shared by `inspect
//! --deep` and `diff`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_json::{Value, json};

use super::criu::{self, DumpStatistics, FileDetail, FileImage, SocketImage};
use super::escape::escape_control;
use super::input::{Deadline, Input, decoded};
use super::json::{StrictMap, parse_guarded};
use super::memory::{Areas, ProcessMemory, digits};
use super::tar::{Entry, Kind, TarReader};
use super::{ArchiveFormat, InspectError, Limits};

/// Most `rootfs_changes` listed; the rest are counted in `rootfs_changes_omitted`.
pub const MAX_ROOTFS_CHANGES: usize = 10_000;
/// Most descriptors per process (and files in `files.img`).
const MAX_FDS: usize = 1 << 16;
/// Most descriptors of all `fdinfo` images held until the end of the pass (12 bytes
/// each); a table past it is only counted.
const MAX_HELD_FDS: usize = 1 << 20;
/// Most rows (open files, cwd and root) the deep view lists for all processes together,
/// and most bytes of their text (paths, socket names and addresses); descriptors past
/// either are counted in their process's `files_omitted`. A descriptor table shared by
/// several processes is listed once. These bound what `inspect --deep` and `diff` hold and
/// print whatever an archive holds.
pub const MAX_FILE_ROWS: usize = 1 << 16;
/// See [`MAX_FILE_ROWS`].
pub const MAX_FILE_ROW_BYTES: usize = 8 << 20;
/// Most members of the nested `rootfs-diff.tar`, and bytes of all their paths.
const NESTED_MAX_ENTRIES: u64 = 1 << 20;
const NESTED_MAX_PATH_BYTES: u64 = 128 << 20;
/// Most mounts taken from `spec.dump`.
const MAX_MOUNTS: usize = 4096;

/// One open file of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    /// The descriptor number, or `cwd` / `root`.
    pub fd: Fd,
    /// CRIU's type name (`REG`, `PIPE`, `UNIXSK`, ...).
    pub kind: String,
    /// The path, or a name for what has none (`pipe[ino]`, `unix[ino (peer) name]`).
    pub path: String,
}

/// A descriptor, or the working directory or root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fd {
    /// An open descriptor.
    Num(u32),
    /// The working directory.
    Cwd,
    /// The root directory.
    Root,
}

impl Fd {
    fn to_json(self) -> Value {
        match self {
            Self::Num(n) => n.into(),
            Self::Cwd => "cwd".into(),
            Self::Root => "root".into(),
        }
    }
    fn label(self) -> String {
        match self {
            Self::Num(n) => n.to_string(),
            Self::Cwd => "cwd".into(),
            Self::Root => "root".into(),
        }
    }
}

/// One socket of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// The descriptor.
    pub fd: u32,
    /// `UNIX`, `IPV4`, `IPV6`, `NETLINK`, `PACKET` (or `AF<n>`).
    pub family: String,
    /// `STREAM`, `DGRAM`, `SEQPACKET`, `RAW`, `RDM`, `PACKET` (or `TYPE<n>`).
    pub kind: String,
    /// `TCP`, `UDP` or the protocol number (empty for unix sockets).
    pub protocol: String,
    /// The kernel's state name (`LISTEN`, `ESTABLISHED`, `CLOSE`, ...).
    pub state: String,
    /// Local address (IP, or a unix socket's name; abstract names start with NUL).
    pub source: String,
    /// Local port (inet).
    pub source_port: u32,
    /// Peer address (inet).
    pub destination: String,
    /// Peer port (inet).
    pub destination_port: u32,
    /// A unix socket's peer inode (0: none).
    pub peer: u32,
    /// SO_SNDBUF.
    pub send_buffer: u32,
    /// SO_RCVBUF.
    pub receive_buffer: u32,
    /// Bytes waiting in its receive queue (`sk-queues.img`; unix sockets).
    pub queued_bytes: u64,
}

/// What the deep view knows of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeepProcess {
    /// Command line, environment and memory size, from its memory.
    pub memory: ProcessMemory,
    /// Open descriptors in image order, then `cwd` and `root`. A process sharing its
    /// descriptor table with a process of a lower pid lists only its `cwd` and `root`.
    pub files: Vec<OpenFile>,
    /// Its sockets (none listed for a process sharing its descriptor table).
    pub sockets: Vec<Socket>,
    /// The process (lowest pid) whose `files` and `sockets` list this process's
    /// descriptors: they share one descriptor table (CRIU's `files_id`, as CLONE_FILES
    /// makes).
    pub files_shared_with: Option<u32>,
    /// Descriptors (and `cwd`, `root`) not listed because the view's rows or their text
    /// reached [`MAX_FILE_ROWS`] or [`MAX_FILE_ROW_BYTES`].
    pub files_omitted: u64,
}

/// One mount of the container's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted in the container.
    pub destination: String,
    /// Filesystem type.
    pub kind: String,
    /// What is mounted.
    pub source: String,
}

/// One file the container added, changed or deleted on its root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsChange {
    /// Path inside the container (no leading `/`).
    pub path: String,
    /// `added-or-changed` or `deleted`.
    pub change: &'static str,
    /// `file`, `dir`, `symlink`, `hardlink`, `char-device`, `block-device`, `fifo`
    /// (`unknown` for a deletion).
    pub kind: &'static str,
    /// Bytes (regular files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// A link's target.
    pub link: Option<String>,
}

/// Everything the deep view found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeepView {
    /// By pid (as in the checkpoint).
    pub processes: BTreeMap<u32, DeepProcess>,
    /// The spec's mounts, in the spec's order.
    pub mounts: Vec<Mount>,
    /// CRIU's dump statistics, when the archive has them.
    pub statistics: Option<DumpStatistics>,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Files added, changed or deleted (at most [`MAX_ROOTFS_CHANGES`]).
    pub rootfs_changes: Vec<RootfsChange>,
    /// Changes not listed because of the cap.
    pub rootfs_changes_omitted: u64,
}

#[derive(Deserialize)]
struct SpecMount {
    destination: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
}

#[derive(Deserialize)]
struct SpecDeep {
    annotations: Option<StrictMap>,
    mounts: Option<Vec<SpecMount>>,
}

#[derive(Deserialize)]
struct ConfigDeep {
    spec: Option<SpecDeep>,
}

/// A descriptor table (`fdinfo-<id>.img`): held, or only counted once
/// [`MAX_HELD_FDS`] are held.
enum Table {
    Held(Vec<criu::FdInfo>),
    Counted(u64),
}

/// The small images collected during the pass, joined at the end.
#[derive(Default)]
struct Collected {
    files_id: BTreeMap<u32, u32>,
    fs: BTreeMap<u32, (u32, u32)>,
    fdinfo: BTreeMap<u32, Table>,
    /// Descriptors held in `fdinfo`, in all.
    held_fds: usize,
    files: Vec<FileImage>,
    queued: BTreeMap<u32, u64>,
    spec: Option<SpecDeep>,
    config_spec: Option<SpecDeep>,
}

/// Reads the deep view from a tar reader positioned at the archive's start.
pub(crate) fn read<I: Input>(
    tar: &mut TarReader<'_, I>,
    limits: &Limits,
) -> Result<DeepView, InspectError> {
    let mut areas = Areas::default();
    let mut got = Collected::default();
    let mut view = DeepView::default();
    let cap = limits.max_criu_image_bytes;
    while let Some(entry) = tar.next_entry()? {
        if entry.kind != Kind::File {
            continue;
        }
        if areas.offer(tar, &entry, limits)? {
            continue;
        }
        let path = entry.path.clone();
        let malformed = |e: criu::CriuError| InspectError::CriuMalformed {
            member: path.clone(),
            reason: e.to_string(),
        };
        let image = |tar: &mut TarReader<'_, I>| -> Result<Vec<u8>, InspectError> {
            if entry.size > cap {
                return Err(InspectError::CriuImageTooLarge {
                    member: entry.path.clone(),
                    size: entry.size,
                    limit: cap,
                });
            }
            tar.read_data(&entry.path)
        };
        let json = |tar: &mut TarReader<'_, I>| -> Result<Vec<u8>, InspectError> {
            if entry.size > limits.max_json_bytes {
                return Err(InspectError::JsonTooLarge {
                    member: entry.path.clone(),
                    size: entry.size,
                    limit: limits.max_json_bytes,
                });
            }
            tar.read_data(&entry.path)
        };
        match path.as_str() {
            "spec.dump" | "config.dump" => {
                let data = json(tar)?;
                if path == "spec.dump" {
                    got.spec = Some(parse_guarded(&path, &data, limits)?);
                } else {
                    let c: ConfigDeep = parse_guarded(&path, &data, limits)?;
                    got.config_spec = c.spec;
                }
            }
            "rootfs-diff.tar" => nested_changes(tar, &entry, limits, &mut view)?,
            "deleted.files" => {
                let data = json(tar)?;
                deleted_files(&path, &data, limits, &mut view)?;
            }
            "checkpoint/files.img" => {
                got.files = criu::parse_files(&image(tar)?, MAX_FDS).map_err(malformed)?;
            }
            "checkpoint/sk-queues.img" => {
                for (id, bytes) in
                    criu::parse_sk_queues(&image(tar)?, MAX_FDS).map_err(malformed)?
                {
                    let q = got.queued.entry(id).or_default();
                    *q = q.saturating_add(u64::from(bytes));
                }
            }
            "stats-dump" | "checkpoint/stats-dump" => {
                view.statistics = criu::parse_stats(&image(tar)?).map_err(malformed)?;
            }
            _ => {
                let Some(name) = path.strip_prefix("checkpoint/") else {
                    continue;
                };
                let pid = |n: u64| {
                    u32::try_from(n).map_err(|_| InspectError::CriuMalformed {
                        member: path.clone(),
                        reason: "id does not fit 32 bits".into(),
                    })
                };
                if let Some(n) = digits(name, "ids-") {
                    let id = criu::parse_files_id(&image(tar)?).map_err(malformed)?;
                    got.files_id.insert(pid(n)?, id);
                } else if let Some(n) = digits(name, "fs-") {
                    let ids = criu::parse_fs(&image(tar)?).map_err(malformed)?;
                    got.fs.insert(pid(n)?, ids);
                } else if let Some(n) = digits(name, "fdinfo-") {
                    let fds = criu::parse_fdinfo(&image(tar)?, MAX_FDS).map_err(malformed)?;
                    let table = if got.held_fds.saturating_add(fds.len()) > MAX_HELD_FDS {
                        Table::Counted(fds.len() as u64)
                    } else {
                        got.held_fds += fds.len();
                        Table::Held(fds)
                    };
                    if let Some(Table::Held(old)) = got.fdinfo.insert(pid(n)?, table) {
                        got.held_fds -= old.len();
                    }
                }
            }
        }
        if got.files_id.len() > limits.max_processes || got.fs.len() > limits.max_processes {
            return Err(InspectError::TooManyProcesses {
                limit: limits.max_processes,
            });
        }
    }
    let memory = areas.finish();
    join(&mut view, got, memory);
    Ok(view)
}

/// What is left of the rows the view may list (see [`MAX_FILE_ROWS`]). Once a row does
/// not fit, none is listed after it.
struct Budget {
    rows: usize,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, bytes: usize) -> bool {
        if self.rows == 0 || bytes > self.bytes {
            self.rows = 0;
            return false;
        }
        self.rows -= 1;
        self.bytes -= bytes;
        true
    }
}

/// Joins what was collected into per-process files and sockets, mounts and annotations.
/// A descriptor table is listed once, under the lowest pid that holds it; the others
/// point at that pid. Every row counts against one [`Budget`] for the whole view.
fn join(view: &mut DeepView, got: Collected, memory: BTreeMap<u32, ProcessMemory>) {
    let by_id: BTreeMap<u32, &FileImage> = got.files.iter().map(|f| (f.id, f)).collect();
    let mut pids: Vec<u32> = got.files_id.keys().chain(memory.keys()).copied().collect();
    pids.extend(got.fs.keys());
    pids.sort_unstable();
    pids.dedup();
    let mut memory = memory;
    let mut listed_by: BTreeMap<u32, u32> = BTreeMap::new();
    let mut budget = Budget {
        rows: MAX_FILE_ROWS,
        bytes: MAX_FILE_ROW_BYTES,
    };
    for pid in pids {
        let mut p = DeepProcess {
            memory: memory.remove(&pid).unwrap_or_default(),
            ..DeepProcess::default()
        };
        let table = got.files_id.get(&pid).copied();
        let holder = table.and_then(|t| listed_by.get(&t).copied());
        if let (Some(t), None) = (table, holder) {
            listed_by.insert(t, pid);
        }
        p.files_shared_with = holder;
        let fds = match (holder, table.and_then(|t| got.fdinfo.get(&t))) {
            (None, Some(Table::Held(fds))) => fds.as_slice(),
            (None, Some(Table::Counted(n))) => {
                p.files_omitted = *n;
                &[]
            }
            _ => &[],
        };
        for fd in fds {
            let file = by_id.get(&fd.id).copied();
            let row = OpenFile {
                fd: Fd::Num(fd.fd),
                kind: criu::fd_type_name(fd.kind),
                path: file.map_or_else(
                    || format!("{}.{}", criu::fd_type_name(fd.kind), fd.id),
                    file_name,
                ),
            };
            let sock = match file {
                Some(FileImage {
                    detail: FileDetail::Socket(s),
                    ..
                }) => {
                    let mut s = socket(fd.fd, s);
                    s.queued_bytes = got.queued.get(&fd.id).copied().unwrap_or(0);
                    Some(s)
                }
                _ => None,
            };
            let text = row.kind.len()
                + row.path.len()
                + sock
                    .as_ref()
                    .map_or(0, |s| s.source.len() + s.destination.len());
            if !budget.take(text) {
                p.files_omitted += 1;
                continue;
            }
            p.files.push(row);
            p.sockets.extend(sock);
        }
        if let Some(&(cwd, root)) = got.fs.get(&pid) {
            for (which, id) in [(Fd::Cwd, cwd), (Fd::Root, root)] {
                let file = by_id.get(&id).copied();
                let row = OpenFile {
                    fd: which,
                    kind: file.map_or_else(|| "REG".into(), |f| criu::fd_type_name(f.kind)),
                    path: file.map_or_else(|| format!("REG.{id}"), file_name),
                };
                if budget.take(row.kind.len() + row.path.len()) {
                    p.files.push(row);
                } else {
                    p.files_omitted += 1;
                }
            }
        }
        view.processes.insert(pid, p);
    }
    if let Some(spec) = got.spec.or(got.config_spec) {
        view.annotations = spec.annotations.map(|a| a.0).unwrap_or_default();
        view.mounts = spec
            .mounts
            .unwrap_or_default()
            .into_iter()
            .take(MAX_MOUNTS)
            .map(|m| Mount {
                destination: m.destination.unwrap_or_default(),
                kind: m.kind.unwrap_or_default(),
                source: m.source.unwrap_or_default(),
            })
            .collect();
    }
}

/// The name checkpointctl gives a file: its path, `pipe[ino]`, `unix[ino (peer) name]`.
fn file_name(f: &FileImage) -> String {
    match &f.detail {
        FileDetail::Reg(name) => String::from_utf8_lossy(name).into_owned(),
        FileDetail::Pipe(ino) => format!("pipe[{ino}]"),
        FileDetail::Socket(s) if f.kind == 5 => format!(
            "unix[{} ({}) {}]",
            s.ino,
            s.peer,
            String::from_utf8_lossy(&s.name)
        ),
        FileDetail::Socket(s) if f.kind == 4 => {
            let (src, dst) = (ip(s.family, &s.src_addr), ip(s.family, &s.dst_addr));
            format!(
                "{}[{src}:{} -> {dst}:{}]",
                protocol_name(s.protocol).to_lowercase(),
                s.src_port,
                s.dst_port
            )
        }
        _ => format!("{}.{}", criu::fd_type_name(f.kind), f.id),
    }
}

/// An address as CRIU stores it: 32-bit words holding the bytes in network order.
fn ip(family: u32, words: &[u32]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match (family, bytes.len()) {
        (2, 4) => {
            let b: [u8; 4] = [0, 1, 2, 3].map(|i| bytes.get(i).copied().unwrap_or(0));
            Ipv4Addr::from(b).to_string()
        }
        (10, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            Ipv6Addr::from(b).to_string()
        }
        (_, 0) => String::new(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn protocol_name(p: u32) -> String {
    match p {
        0 => String::new(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPV6".into(),
        n => n.to_string(),
    }
}

fn socket(fd: u32, s: &SocketImage) -> Socket {
    let family = match s.family {
        1 => "UNIX".into(),
        2 => "IPV4".into(),
        10 => "IPV6".into(),
        16 => "NETLINK".into(),
        17 => "PACKET".into(),
        n => format!("AF{n}"),
    };
    let kind = match s.sk_type {
        1 => "STREAM".into(),
        2 => "DGRAM".into(),
        3 => "RAW".into(),
        4 => "RDM".into(),
        5 => "SEQPACKET".into(),
        10 => "PACKET".into(),
        n => format!("TYPE{n}"),
    };
    const STATES: [&str; 12] = [
        "",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
    ];
    let state = STATES
        .get(s.state as usize)
        .map_or_else(|| format!("STATE{}", s.state), |n| (*n).to_owned());
    let unix = s.family == 1;
    Socket {
        fd,
        family,
        kind,
        protocol: if unix {
            String::new()
        } else {
            protocol_name(s.protocol)
        },
        state,
        source: if unix {
            String::from_utf8_lossy(&s.name).into_owned()
        } else {
            ip(s.family, &s.src_addr)
        },
        source_port: s.src_port,
        destination: ip(s.family, &s.dst_addr),
        destination_port: s.dst_port,
        peer: s.peer,
        send_buffer: s.send_buffer,
        receive_buffer: s.receive_buffer,
        queued_bytes: 0,
    }
}

/// The outer member's data as a byte stream, for the inner tar reader (and its
/// decompressor: containerd gzips `rootfs-diff.tar`, Podman does not). The outer reader's
/// own error is kept in `failed`, so it is reported as it was, not as an I/O error.
struct MemberRead<'a, 'l, I> {
    outer: &'a mut TarReader<'l, I>,
    member: &'a str,
    failed: &'a RefCell<Option<InspectError>>,
}

impl<I: Input> Read for MemberRead<'_, '_, I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.outer.read_chunk(buf, self.member).map_err(|e| {
            let shown = e.to_string();
            *self.failed.borrow_mut() = Some(e);
            std::io::Error::other(shown)
        })
    }
}

/// Lists the members of the nested `rootfs-diff.tar` as added-or-changed files.
fn nested_changes<I: Input>(
    tar: &mut TarReader<'_, I>,
    entry: &Entry,
    limits: &Limits,
    view: &mut DeepView,
) -> Result<(), InspectError> {
    if entry.size == 0 {
        return Ok(());
    }
    let inner_limits = Limits {
        max_entries: NESTED_MAX_ENTRIES,
        max_path_bytes: NESTED_MAX_PATH_BYTES,
        ..limits.clone()
    };
    let failed = RefCell::new(None);
    let wrap = |e: InspectError| {
        let e = failed.borrow_mut().take().unwrap_or(e);
        InspectError::Nested {
            member: entry.path.clone(),
            source: Box::new(e),
        }
    };
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        let Some(rest) = head.get_mut(got..) else {
            break;
        };
        let n = tar.read_chunk(rest, &entry.path)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = head.get(..got).unwrap_or_default();
    let format = ArchiveFormat::sniff(head);
    let bytes = Cursor::new(head.to_vec()).chain(MemberRead {
        outer: tar,
        member: &entry.path,
        failed: &failed,
    });
    let deadline = Deadline::start(limits.deadline);
    let input = decoded(bytes, format, limits.max_decompressed_bytes, deadline)?;
    let mut inner = TarReader::listing(input, &inner_limits);
    while let Some(e) = inner.next_entry().map_err(wrap)? {
        if e.path.is_empty() {
            continue;
        }
        let (dir, base) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
        let change = match base.strip_prefix(".wh.") {
            Some(".wh..opq") => continue,
            Some(gone) => RootfsChange {
                path: if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                },
                change: "deleted",
                kind: "unknown",
                size: 0,
                mode: 0,
                link: None,
            },
            None => RootfsChange {
                path: e.path.clone(),
                change: "added-or-changed",
                kind: e.kind.as_str(),
                size: if e.kind == Kind::File { e.size } else { 0 },
                mode: e.mode,
                link: e.link.clone(),
            },
        };
        push_change(view, change);
    }
    Ok(())
}

fn push_change(view: &mut DeepView, change: RootfsChange) {
    if view.rootfs_changes.len() < MAX_ROOTFS_CHANGES {
        view.rootfs_changes.push(change);
    } else {
        view.rootfs_changes_omitted += 1;
    }
}

/// `deleted.files`: a JSON array of the paths the container deleted.
fn deleted_files(
    member: &str,
    data: &[u8],
    limits: &Limits,
    view: &mut DeepView,
) -> Result<(), InspectError> {
    let list: Vec<String> = parse_guarded(member, data, limits)?;
    for path in list {
        if path.len() > criu::MAX_NAME_BYTES || path.contains('\0') {
            return Err(InspectError::ListMalformed {
                member: member.to_owned(),
                reason: format!(
                    "a path of {} bytes, or with a NUL byte (at most {} bytes)",
                    path.len(),
                    criu::MAX_NAME_BYTES
                ),
            });
        }
        push_change(
            view,
            RootfsChange {
                path: path.trim_start_matches('/').to_owned(),
                change: "deleted",
                kind: "unknown",
                size: 0,
                mode: 0,
                link: None,
            },
        );
    }
    Ok(())
}

impl DeepView {
    /// The JSON form: `processes` (by pid: cmdline, env with values `<redacted>` unless
    /// `show_env_values`, files, `files_shared_with`, `files_omitted`, sockets, memory),
    /// `mounts`, `statistics`, `annotations`, `rootfs_changes` (and
    /// `rootfs_changes_omitted`).
    pub fn to_json(&self, show_env_values: bool) -> Value {
        let processes: serde_json::Map<String, Value> = self
            .processes
            .iter()
            .map(|(pid, p)| (pid.to_string(), process_json(p, show_env_values)))
            .collect();
        json!({
            "processes": processes,
            "mounts": self.mounts.iter().map(|m| json!({
                "destination": m.destination, "type": m.kind, "source": m.source,
            })).collect::<Vec<_>>(),
            "statistics": self.statistics,
            "annotations": self.annotations,
            "rootfs_changes": self.rootfs_changes.iter().map(|c| {
                let mut v = json!({
                    "path": c.path, "change": c.change, "type": c.kind,
                    "size": c.size, "mode": format!("{:04o}", c.mode),
                });
                if let (Some(l), Some(o)) = (&c.link, v.as_object_mut()) {
                    o.insert("link".into(), l.clone().into());
                }
                v
            }).collect::<Vec<_>>(),
            "rootfs_changes_omitted": self.rootfs_changes_omitted,
        })
    }

    /// The table form, every string from the archive with control characters escaped.
    pub fn render_table(&self, show_env_values: bool) -> String {
        let esc = |s: &str| escape_control(s).into_owned();
        let mut out = String::new();
        for (pid, p) in &self.processes {
            let m = &p.memory;
            let _ = writeln!(
                out,
                "process {pid}: {} bytes of memory, {} shared{}",
                m.memory_bytes,
                m.shared_bytes,
                if m.truncated {
                    " (areas cut at 1 MiB)"
                } else {
                    ""
                }
            );
            let argv: Vec<String> = m.cmdline.iter().map(|a| esc(a)).collect();
            let _ = writeln!(out, "  cmdline: {}", argv.join(" "));
            for (k, v) in &m.env {
                let v = if show_env_values {
                    esc(v)
                } else {
                    "<redacted>".into()
                };
                let _ = writeln!(out, "  env {}={v}", esc(k));
            }
            if let Some(holder) = p.files_shared_with {
                let _ = writeln!(
                    out,
                    "  files: the descriptor table of process {holder} (shared)"
                );
            }
            for f in &p.files {
                let _ = writeln!(
                    out,
                    "  file {:>5} {:<8} {}",
                    f.fd.label(),
                    esc(&f.kind),
                    esc(&f.path)
                );
            }
            if p.files_omitted > 0 {
                let _ = writeln!(
                    out,
                    "  file ... and {} more not listed (at most {MAX_FILE_ROWS} rows, \
                     {MAX_FILE_ROW_BYTES} bytes of names in all)",
                    p.files_omitted
                );
            }
            for s in &p.sockets {
                let ends = if s.family == "UNIX" {
                    format!("name {} peer {}", esc(&s.source), s.peer)
                } else {
                    format!(
                        "{}:{} -> {}:{}",
                        esc(&s.source),
                        s.source_port,
                        esc(&s.destination),
                        s.destination_port
                    )
                };
                let _ = writeln!(
                    out,
                    "  socket fd {} {} {} {} {} {ends} sndbuf {} rcvbuf {} queued {}",
                    s.fd,
                    s.family,
                    s.kind,
                    s.protocol,
                    s.state,
                    s.send_buffer,
                    s.receive_buffer,
                    s.queued_bytes
                );
            }
        }
        for m in &self.mounts {
            let _ = writeln!(
                out,
                "mount {} type {} from {}",
                esc(&m.destination),
                esc(&m.kind),
                esc(&m.source)
            );
        }
        if let Some(s) = &self.statistics {
            let _ = writeln!(
                out,
                "dump statistics: freezing {} us, frozen {} us, memdump {} us, memwrite {} us, pages scanned {}, written {}",
                s.freezing_time,
                s.frozen_time,
                s.memdump_time,
                s.memwrite_time,
                s.pages_scanned,
                s.pages_written
            );
        }
        for (k, v) in &self.annotations {
            let _ = writeln!(out, "annotation {}={}", esc(k), esc(v));
        }
        for c in &self.rootfs_changes {
            let link = c
                .link
                .as_deref()
                .map(|l| format!(" -> {}", esc(l)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "rootfs {:<16} {:<12} {:04o} {:>10} /{}{link}",
                c.change,
                c.kind,
                c.mode,
                c.size,
                esc(&c.path)
            );
        }
        if self.rootfs_changes_omitted > 0 {
            let _ = writeln!(
                out,
                "rootfs ... and {} more changes not listed",
                self.rootfs_changes_omitted
            );
        }
        out
    }
}

fn process_json(p: &DeepProcess, show_env_values: bool) -> Value {
    let env: serde_json::Map<String, Value> = p
        .memory
        .env
        .iter()
        .map(|(k, v)| {
            let v = if show_env_values {
                v.as_str()
            } else {
                "<redacted>"
            };
            (k.clone(), Value::from(v))
        })
        .collect();
    json!({
        "cmdline": p.memory.cmdline,
        "env": env,
        "memory": {"bytes": p.memory.memory_bytes, "shared_bytes": p.memory.shared_bytes},
        "truncated": p.memory.truncated,
        "files": p.files.iter().map(|f| json!({
            "fd": f.fd.to_json(), "type": f.kind, "path": f.path,
        })).collect::<Vec<_>>(),
        "files_shared_with": p.files_shared_with,
        "files_omitted": p.files_omitted,
        "sockets": p.sockets.iter().map(|s| json!({
            "fd": s.fd, "family": s.family, "type": s.kind, "protocol": s.protocol,
            "state": s.state, "source": s.source, "source_port": s.source_port,
            "destination": s.destination, "destination_port": s.destination_port,
            "peer": s.peer, "send_buffer": s.send_buffer, "receive_buffer": s.receive_buffer,
            "queued_bytes": s.queued_bytes,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_in_network_order() {
        // 127.0.0.1 as CRIU stores it on a little-endian host.
        assert_eq!(ip(2, &[0x0100_007f]), "127.0.0.1");
        // ::1
        assert_eq!(ip(10, &[0, 0, 0, 0x0100_0000]), "::1");
        assert_eq!(ip(2, &[]), "");
        // A word count that does not fit the family is shown as hex, not guessed.
        assert_eq!(ip(2, &[1, 2]), "0100000002000000");
    }

    #[test]
    fn socket_names_and_states() {
        let s = socket(
            4,
            &SocketImage {
                family: 2,
                sk_type: 1,
                protocol: 6,
                state: 10,
                src_addr: vec![0],
                src_port: 8080,
                ..SocketImage::default()
            },
        );
        assert_eq!(
            (s.family.as_str(), s.kind.as_str(), s.protocol.as_str()),
            ("IPV4", "STREAM", "TCP")
        );
        assert_eq!((s.state.as_str(), s.source.as_str()), ("LISTEN", "0.0.0.0"));
        let odd = socket(
            1,
            &SocketImage {
                family: 99,
                sk_type: 77,
                state: 200,
                ..SocketImage::default()
            },
        );
        assert_eq!(
            (odd.family.as_str(), odd.kind.as_str(), odd.state.as_str()),
            ("AF99", "TYPE77", "STATE200")
        );
    }
}
