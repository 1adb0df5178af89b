//! CRIU images: the process tree from `checkpoint/pstree.img` and each process's command
//! name from `checkpoint/core-<pid>.img`, read with a tiny bounded protobuf reader of our
//! own (no code generation, no allocation proportional to declared lengths).
//!
//! Image layout: a 4-byte little-endian `IMG_COMMON_MAGIC` (0x54564319), the image's own
//! 4-byte magic (pstree 0x50273030, core 0x55053847), then entries, each a u32 LE length
//! and a protobuf message. Field numbers (CRIU `images/pstree.proto`, `images/core.proto`,
//! checked against a real core image): `PstreeEntry { pid = 1; ppid = 2; pgid = 3;
//! sid = 4; repeated threads = 5 }`, `CoreEntry { tc = 3 }`, `TaskCoreEntry { comm = 6 }`.
//! Unknown fields are skipped; groups, invalid wire types, overlong varints and lengths
//! past the end are malformed. Thread core images carry no `tc` and so no command name.

use std::collections::HashSet;
use std::fmt;

use super::model::Process;

/// `IMG_COMMON_MAGIC`, the first word of every CRIU image but inventory.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Magic of `pstree.img`.
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
/// Magic of `core-<pid>.img`.
pub const CORE_MAGIC: u32 = 0x5505_3847;
/// Longest command name accepted (the kernel's is 16 bytes).
pub const MAX_COMM_BYTES: usize = 64;

/// Why a CRIU image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriuError {
    /// The image does not parse.
    Malformed(String),
    /// The process tree lists more processes than the limit.
    TooManyProcesses(usize),
}

impl fmt::Display for CriuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => f.write_str(why),
            Self::TooManyProcesses(limit) => write!(f, "more than {limit} processes"),
        }
    }
}

impl std::error::Error for CriuError {}

fn bad(why: impl Into<String>) -> CriuError {
    CriuError::Malformed(why.into())
}

/// A decoded protobuf field value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// A bounded protobuf reader over one message.
struct Pb<'a> {
    buf: &'a [u8],
}

impl<'a> Pb<'a> {
    fn varint(&mut self) -> Result<u64, CriuError> {
        let mut n: u64 = 0;
        for i in 0..10u32 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("varint runs past the end"))?;
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(bad("varint overflows 64 bits"));
            }
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CriuError> {
        let n = usize::try_from(n).map_err(|_| bad("length too large"))?;
        if n > self.buf.len() {
            return Err(bad("field length runs past the end of the message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or None at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, CriuError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| bad("field number too large"))?;
        if field == 0 {
            return Err(bad("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            w => return Err(bad(format!("unsupported wire type {w} in field {field}"))),
        };
        Ok(Some((field, value)))
    }
}

fn u32_of(v: u64, what: &str) -> Result<u32, CriuError> {
    u32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit 32 bits")))
}

/// Splits an image into its entries after checking both magics.
fn entries(img: &[u8], magic: u32) -> Result<Vec<&[u8]>, CriuError> {
    entries_after(img, IMG_COMMON_MAGIC, magic)
}

/// Splits an image whose first word is `first` (`IMG_COMMON_MAGIC`, or
/// `IMG_SERVICE_MAGIC` for CRIU's service images such as `stats-dump`).
fn entries_after(img: &[u8], first: u32, magic: u32) -> Result<Vec<&[u8]>, CriuError> {
    let word = |at: usize| -> Option<u32> {
        let b = img.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([
            *b.first()?,
            *b.get(1)?,
            *b.get(2)?,
            *b.get(3)?,
        ]))
    };
    if word(0) != Some(first) {
        return Err(bad("missing the CRIU image magic"));
    }
    if word(4) != Some(magic) {
        return Err(bad(format!("wrong image magic (expected {magic:#010x})")));
    }
    let mut rest = img.get(8..).unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len_bytes = rest
            .get(..4)
            .ok_or_else(|| bad("entry length runs past the end"))?;
        let len = u32::from_le_bytes([
            *len_bytes.first().unwrap_or(&0),
            *len_bytes.get(1).unwrap_or(&0),
            *len_bytes.get(2).unwrap_or(&0),
            *len_bytes.get(3).unwrap_or(&0),
        ]);
        let len = usize::try_from(len).map_err(|_| bad("entry too large"))?;
        let body = rest
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| bad(format!("entry of {len} bytes runs past the end")))?;
        out.push(body);
        rest = rest.get(4usize.saturating_add(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// The entries of an image with `magic` (both magics checked).
pub(crate) fn entries_of(img: &[u8], magic: u32) -> Result<Vec<&[u8]>, CriuError> {
    entries(img, magic)
}

/// The length-delimited fields numbered `n` of one message (embedded messages), in order.
pub(crate) fn submessages(msg: &[u8], n: u32) -> Result<Vec<&[u8]>, CriuError> {
    Ok(fields(msg)?
        .into_iter()
        .filter_map(|(f, v)| match v {
            Value::Bytes(b) if f == n => Some(b),
            _ => None,
        })
        .collect())
}

/// The varint fields of one message, in order (other wire types are skipped).
pub(crate) fn varint_fields(msg: &[u8]) -> Result<Vec<(u32, u64)>, CriuError> {
    let mut pb = Pb { buf: msg };
    let mut out = Vec::new();
    while let Some((field, value)) = pb.next()? {
        if let Value::Varint(v) = value {
            out.push((field, v));
        }
    }
    Ok(out)
}

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

/// Magic of `ids-<pid>.img` (`TaskKobjIdsEntry { files_id = 2 }`).
pub const IDS_MAGIC: u32 = 0x5443_2030;
/// Magic of `fdinfo-<files_id>.img` (`FdinfoEntry { id = 1; flags = 2; type = 3; fd = 4 }`).
pub const FDINFO_MAGIC: u32 = 0x5621_3732;
/// Magic of `files.img` (`FileEntry { type = 1; id = 2; reg = 3; isk = 4; psk = 6;
/// nlsk = 7; usk = 16; pipe = 18 }`).
pub const FILES_MAGIC: u32 = 0x5630_3138;
/// Magic of `fs-<pid>.img` (`FsEntry { cwd_id = 1; root_id = 2 }`).
pub const FS_MAGIC: u32 = 0x5140_3912;
/// First word of CRIU's service images (`stats-dump`, `inventory.img`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Magic of `stats-dump` (`StatsEntry { dump = 1 }`).
pub const STATS_MAGIC: u32 = 0x5709_3306;
/// Magic of `sk-queues.img` (`SkPacketEntry { id_for = 1; length = 2 }`, each entry followed
/// by `length` bytes of the queued data).
pub const SK_QUEUES_MAGIC: u32 = 0x5626_4026;
/// Longest path or socket name taken from an image (the kernel's PATH_MAX).
pub const MAX_NAME_BYTES: usize = 4096;

/// The name CRIU gives an fd type (`fd_types` in `images/fdinfo.proto`).
pub fn fd_type_name(t: u32) -> String {
    const NAMES: [&str; 20] = [
        "UND",
        "REG",
        "PIPE",
        "FIFO",
        "INETSK",
        "UNIXSK",
        "EVENTFD",
        "EVENTPOLL",
        "INOTIFY",
        "SIGNALFD",
        "PACKETSK",
        "TTY",
        "FANOTIFY",
        "NETLINKSK",
        "NS",
        "TUNF",
        "EXT",
        "TIMERFD",
        "MEMFD",
        "BPFMAP",
    ];
    match t {
        65534 => "CTL_TTY".into(),
        65535 => "AUTOFS_PIPE".into(),
        _ => NAMES
            .get(t as usize)
            .map_or_else(|| format!("TYPE{t}"), |n| (*n).to_owned()),
    }
}

/// The one entry of a single-entry image.
fn only_entry<'a>(
    img: &'a [u8],
    magic: u32,
    what: &str,
) -> Result<Vec<(u32, Value<'a>)>, CriuError> {
    let ents = entries(img, magic)?;
    let first = ents
        .first()
        .ok_or_else(|| bad(format!("empty {what} image")))?;
    fields(first)
}

/// Every field of one message, in order.
fn fields(msg: &[u8]) -> Result<Vec<(u32, Value<'_>)>, CriuError> {
    let mut pb = Pb { buf: msg };
    let mut out = Vec::new();
    while let Some(f) = pb.next()? {
        out.push(f);
    }
    Ok(out)
}

fn varint_of(fields: &[(u32, Value<'_>)], n: u32) -> Option<u64> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Value::Varint(x) if *f == n => Some(*x),
        _ => None,
    })
}

fn bytes_of<'a>(fields: &[(u32, Value<'a>)], n: u32) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Value::Bytes(b) if *f == n => Some(*b),
        _ => None,
    })
}

fn req_u32(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<u32, CriuError> {
    let v = varint_of(fields, n).ok_or_else(|| bad(format!("{what} is missing")))?;
    u32_of(v, what)
}

fn opt_u32(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<u32, CriuError> {
    varint_of(fields, n).map_or(Ok(0), |v| u32_of(v, what))
}

fn name_of(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<Vec<u8>, CriuError> {
    let b = bytes_of(fields, n).unwrap_or_default();
    if b.len() > MAX_NAME_BYTES {
        return Err(bad(format!(
            "{what} of {} bytes (at most {MAX_NAME_BYTES})",
            b.len()
        )));
    }
    Ok(b.to_vec())
}

/// A process's `files_id` from `ids-<pid>.img`: which `fdinfo-<id>.img` holds its fds.
pub fn parse_files_id(img: &[u8]) -> Result<u32, CriuError> {
    req_u32(&only_entry(img, IDS_MAGIC, "ids")?, 2, "files_id")
}

/// A process's working directory and root: the file ids in `fs-<pid>.img`.
pub fn parse_fs(img: &[u8]) -> Result<(u32, u32), CriuError> {
    let f = only_entry(img, FS_MAGIC, "fs")?;
    Ok((req_u32(&f, 1, "cwd_id")?, req_u32(&f, 2, "root_id")?))
}

/// One open descriptor of `fdinfo-<id>.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The descriptor number.
    pub fd: u32,
    /// The file's id in `files.img`.
    pub id: u32,
    /// Its type (see [`fd_type_name`]).
    pub kind: u32,
}

/// The descriptors of `fdinfo-<id>.img`, in image order (at most `max`).
pub fn parse_fdinfo(img: &[u8], max: usize) -> Result<Vec<FdInfo>, CriuError> {
    let ents = entries(img, FDINFO_MAGIC)?;
    if ents.len() > max {
        return Err(bad(format!("more than {max} descriptors")));
    }
    ents.into_iter()
        .map(|e| {
            let f = fields(e)?;
            Ok(FdInfo {
                id: req_u32(&f, 1, "fdinfo id")?,
                kind: req_u32(&f, 3, "fdinfo type")?,
                fd: req_u32(&f, 4, "fd")?,
            })
        })
        .collect()
}

/// Socket options CRIU keeps (`SkOptsEntry { so_sndbuf = 1; so_rcvbuf = 2 }`).
fn buffers(opts: Option<&[u8]>) -> Result<(u32, u32), CriuError> {
    let Some(opts) = opts else {
        return Ok((0, 0));
    };
    let f = fields(opts)?;
    Ok((opt_u32(&f, 1, "so_sndbuf")?, opt_u32(&f, 2, "so_rcvbuf")?))
}

/// A socket as CRIU recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketImage {
    /// Inode number.
    pub ino: u32,
    /// Address family (`AF_*`), 0 when the image does not say.
    pub family: u32,
    /// Socket type (`SOCK_*`).
    pub sk_type: u32,
    /// Protocol (`IPPROTO_*`, or the netlink/packet protocol).
    pub protocol: u32,
    /// Kernel socket state (TCP states; unix sockets use the same numbers).
    pub state: u32,
    /// Local address: IPv4/IPv6 words as CRIU stores them, or a unix name's bytes.
    pub src_addr: Vec<u32>,
    /// Local port.
    pub src_port: u32,
    /// Peer address words.
    pub dst_addr: Vec<u32>,
    /// Peer port.
    pub dst_port: u32,
    /// A unix socket's name (abstract names start with a NUL byte).
    pub name: Vec<u8>,
    /// A unix socket's peer inode.
    pub peer: u32,
    /// SO_SNDBUF.
    pub send_buffer: u32,
    /// SO_RCVBUF.
    pub receive_buffer: u32,
}

/// What `files.img` says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDetail {
    /// A regular file or directory, by path.
    Reg(Vec<u8>),
    /// A pipe, by pipe id (the inode).
    Pipe(u32),
    /// A socket (`INETSK`, `UNIXSK`, `PACKETSK`, `NETLINKSK`).
    Socket(SocketImage),
    /// Anything else.
    Other,
}

/// One entry of `files.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileImage {
    /// Its type (see [`fd_type_name`]).
    pub kind: u32,
    /// Its id, as fdinfo and fs images name it.
    pub id: u32,
    /// What is known of it.
    pub detail: FileDetail,
}

/// Repeated uint32 words (packed or not).
fn words(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<Vec<u32>, CriuError> {
    let mut out = Vec::new();
    for (f, v) in fields {
        if *f != n {
            continue;
        }
        match v {
            Value::Varint(x) => out.push(u32_of(*x, what)?),
            Value::Bytes(packed) => {
                let mut inner = Pb { buf: packed };
                while !inner.buf.is_empty() {
                    out.push(u32_of(inner.varint()?, what)?);
                }
            }
            Value::Fixed => return Err(bad(format!("{what} has the wrong wire type"))),
        }
        if out.len() > 4 {
            return Err(bad(format!("{what} has more than 4 words")));
        }
    }
    Ok(out)
}

fn socket_of(kind: u32, body: &[u8]) -> Result<SocketImage, CriuError> {
    let f = fields(body)?;
    let mut s = SocketImage::default();
    match kind {
        // InetSkEntry
        4 => {
            s.ino = opt_u32(&f, 2, "ino")?;
            s.family = opt_u32(&f, 3, "family")?;
            s.sk_type = opt_u32(&f, 4, "type")?;
            s.protocol = opt_u32(&f, 5, "proto")?;
            s.state = opt_u32(&f, 6, "state")?;
            s.src_port = opt_u32(&f, 7, "src_port")?;
            s.dst_port = opt_u32(&f, 8, "dst_port")?;
            s.src_addr = words(&f, 11, "src_addr")?;
            s.dst_addr = words(&f, 12, "dst_addr")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 14))?;
        }
        // UnixSkEntry
        5 => {
            s.family = 1;
            s.ino = opt_u32(&f, 2, "ino")?;
            s.sk_type = opt_u32(&f, 3, "type")?;
            s.state = opt_u32(&f, 4, "state")?;
            s.peer = opt_u32(&f, 8, "peer")?;
            s.name = name_of(&f, 11, "unix socket name")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 10))?;
        }
        // PacketSockEntry
        10 => {
            s.family = 17;
            s.sk_type = opt_u32(&f, 2, "type")?;
            s.protocol = opt_u32(&f, 3, "protocol")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 7))?;
        }
        // NetlinkSkEntry
        _ => {
            s.family = 16;
            s.ino = opt_u32(&f, 2, "ino")?;
            s.protocol = opt_u32(&f, 3, "protocol")?;
            s.state = opt_u32(&f, 4, "state")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 12))?;
        }
    }
    Ok(s)
}

/// The entries of `files.img` (at most `max`).
pub fn parse_files(img: &[u8], max: usize) -> Result<Vec<FileImage>, CriuError> {
    let ents = entries(img, FILES_MAGIC)?;
    if ents.len() > max {
        return Err(bad(format!("more than {max} files")));
    }
    ents.into_iter()
        .map(|e| {
            let f = fields(e)?;
            let kind = req_u32(&f, 1, "file type")?;
            let id = req_u32(&f, 2, "file id")?;
            let sub = |n: u32| bytes_of(&f, n);
            let detail = match kind {
                1 => match sub(3) {
                    Some(reg) => FileDetail::Reg(name_of(&fields(reg)?, 6, "file name")?),
                    None => FileDetail::Other,
                },
                2 => match sub(18) {
                    Some(p) => FileDetail::Pipe(opt_u32(&fields(p)?, 2, "pipe_id")?),
                    None => FileDetail::Other,
                },
                4 | 5 | 10 | 13 => {
                    let field = match kind {
                        4 => 4,
                        5 => 16,
                        10 => 6,
                        _ => 7,
                    };
                    match sub(field) {
                        Some(body) => FileDetail::Socket(socket_of(kind, body)?),
                        None => FileDetail::Other,
                    }
                }
                _ => FileDetail::Other,
            };
            Ok(FileImage { kind, id, detail })
        })
        .collect()
}

/// The queued packets of `sk-queues.img`: (the socket's file id, bytes), at most `max`
/// packets. The data itself is skipped, never kept.
pub fn parse_sk_queues(img: &[u8], max: usize) -> Result<Vec<(u32, u32)>, CriuError> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        let w = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([
            *w.first()?,
            *w.get(1)?,
            *w.get(2)?,
            *w.get(3)?,
        ]))
    };
    if word(img, 0) != Some(IMG_COMMON_MAGIC) || word(img, 4) != Some(SK_QUEUES_MAGIC) {
        return Err(bad("not an sk-queues image (magic)"));
    }
    let mut rest = img.get(8..).unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        if out.len() >= max {
            return Err(bad(format!("more than {max} queued packets")));
        }
        let len = word(rest, 0).ok_or_else(|| bad("entry length runs past the end"))? as usize;
        let body = rest
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| bad(format!("entry of {len} bytes runs past the end")))?;
        let f = fields(body)?;
        let id = req_u32(&f, 1, "id_for")?;
        let length = req_u32(&f, 2, "length")?;
        let next = 4usize.saturating_add(len).saturating_add(length as usize);
        rest = rest
            .get(next..)
            .ok_or_else(|| bad(format!("a packet of {length} bytes runs past the end")))?;
        out.push((id, length));
    }
    Ok(out)
}

/// CRIU's dump statistics (`DumpStatsEntry`): times in microseconds, page counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DumpStatistics {
    /// Time to freeze the tasks.
    pub freezing_time: u64,
    /// Time the tasks stayed frozen.
    pub frozen_time: u64,
    /// Time to dump memory.
    pub memdump_time: u64,
    /// Time to write memory out.
    pub memwrite_time: u64,
    /// Pages scanned.
    pub pages_scanned: u64,
    /// Pages written.
    pub pages_written: u64,
}

/// The dump statistics of `stats-dump`, if it has a dump entry.
pub fn parse_stats(img: &[u8]) -> Result<Option<DumpStatistics>, CriuError> {
    let ents = entries_after(img, IMG_SERVICE_MAGIC, STATS_MAGIC)?;
    let Some(first) = ents.first() else {
        return Ok(None);
    };
    let Some(dump) = bytes_of(&fields(first)?, 1) else {
        return Ok(None);
    };
    let f = fields(dump)?;
    let v = |n: u32| varint_of(&f, n).unwrap_or(0);
    Ok(Some(DumpStatistics {
        freezing_time: v(1),
        frozen_time: v(2),
        memdump_time: v(3),
        memwrite_time: v(4),
        pages_scanned: v(5),
        pages_written: v(7),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_pstree_bytes() {
        // checkpoint/pstree.img of a real Podman+CRIU checkpoint of one process.
        let img = [
            0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 0x0a, 0, 0, 0, 0x08, 0x01, 0x10, 0x00,
            0x18, 0x01, 0x20, 0x01, 0x28, 0x01,
        ];
        let p = parse_pstree(&img, 10).unwrap();
        assert_eq!(
            p,
            vec![Process {
                pid: 1,
                ppid: 0,
                comm: None,
                threads: 1
            }]
        );
        assert_eq!(parse_pstree(&img, 0), Err(CriuError::TooManyProcesses(0)));
    }

    #[test]
    fn rejects_malformed() {
        let head = [0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50];
        for tail in [
            &[0x05, 0, 0, 0, 0x08][..],       // entry past the end
            &[0x02, 0, 0, 0, 0x08, 0x80][..], // varint past the end
            &[0x02, 0, 0, 0, 0x0b, 0x01][..], // group wire type
            &[0x02, 0, 0, 0, 0x00, 0x01][..], // field 0
            &[0x02, 0, 0, 0, 0x10, 0x01][..], // no pid
            &[0x01, 0][..],                   // short length
        ] {
            let mut img = head.to_vec();
            img.extend_from_slice(tail);
            assert!(parse_pstree(&img, 10).is_err(), "{tail:?}");
        }
        assert!(parse_pstree(&[1, 2, 3], 10).is_err());
        assert!(parse_core_comm(&head).is_err());
    }

    /// Protobuf helpers for hand-made images.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn vfield(n: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(n) << 3, out);
        varint(v, out);
    }
    fn bfield(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint((u64::from(n) << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn image(first: u32, magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut img = first.to_le_bytes().to_vec();
        img.extend_from_slice(&magic.to_le_bytes());
        for e in entries {
            img.extend_from_slice(&(e.len() as u32).to_le_bytes());
            img.extend_from_slice(e);
        }
        img
    }
    fn file_entry(kind: u64, id: u64, sub_field: u32, sub: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        vfield(1, kind, &mut e);
        vfield(2, id, &mut e);
        bfield(sub_field, sub, &mut e);
        e
    }

    #[test]
    fn files_fdinfo_and_stats_parse() {
        let mut reg = Vec::new();
        bfield(6, b"/etc/hostname", &mut reg);
        let mut unix = Vec::new();
        vfield(2, 77, &mut unix);
        vfield(3, 1, &mut unix);
        vfield(4, 10, &mut unix);
        vfield(8, 0, &mut unix);
        bfield(11, b"\0sock", &mut unix);
        let mut opts = Vec::new();
        vfield(1, 4096, &mut opts);
        vfield(2, 8192, &mut opts);
        bfield(10, &opts, &mut unix);
        let mut inet = Vec::new();
        vfield(3, 2, &mut inet);
        vfield(4, 1, &mut inet);
        vfield(5, 6, &mut inet);
        vfield(6, 10, &mut inet);
        vfield(7, 8080, &mut inet);
        vfield(11, 0x0100_007f, &mut inet);
        let img = image(
            IMG_COMMON_MAGIC,
            FILES_MAGIC,
            &[
                file_entry(1, 3, 3, &reg),
                file_entry(5, 4, 16, &unix),
                file_entry(4, 5, 4, &inet),
            ],
        );
        let files = parse_files(&img, 10).unwrap();
        assert_eq!(files[0].detail, FileDetail::Reg(b"/etc/hostname".to_vec()));
        let FileDetail::Socket(u) = &files[1].detail else {
            panic!("{:?}", files[1]);
        };
        assert_eq!(
            (u.ino, u.state, u.name.as_slice()),
            (77, 10, &b"\0sock"[..])
        );
        assert_eq!((u.send_buffer, u.receive_buffer), (4096, 8192));
        let FileDetail::Socket(i) = &files[2].detail else {
            panic!("{:?}", files[2]);
        };
        assert_eq!(
            (i.family, i.src_port, i.src_addr.clone()),
            (2, 8080, vec![0x0100_007f])
        );
        assert!(parse_files(&img, 2).is_err(), "more files than allowed");

        let mut fd = Vec::new();
        vfield(1, 3, &mut fd);
        vfield(3, 1, &mut fd);
        vfield(4, 7, &mut fd);
        let fds = parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &[fd]), 4).unwrap();
        assert_eq!(
            fds,
            vec![FdInfo {
                fd: 7,
                id: 3,
                kind: 1
            }]
        );

        let mut dump = Vec::new();
        for (n, v) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (7, 70)] {
            vfield(n, v, &mut dump);
        }
        let mut entry = Vec::new();
        bfield(1, &dump, &mut entry);
        let stats = parse_stats(&image(IMG_SERVICE_MAGIC, STATS_MAGIC, &[entry]))
            .unwrap()
            .unwrap();
        assert_eq!((stats.frozen_time, stats.pages_written), (20, 70));
    }

    #[test]
    fn hostile_files_and_fdinfo_are_refused() {
        // A path longer than PATH_MAX.
        let mut reg = Vec::new();
        bfield(6, &vec![b'a'; MAX_NAME_BYTES + 1], &mut reg);
        let img = image(IMG_COMMON_MAGIC, FILES_MAGIC, &[file_entry(1, 1, 3, &reg)]);
        assert!(parse_files(&img, 10).is_err());
        // An address of five words.
        let mut inet = Vec::new();
        for _ in 0..5 {
            vfield(11, 1, &mut inet);
        }
        let img = image(IMG_COMMON_MAGIC, FILES_MAGIC, &[file_entry(4, 1, 4, &inet)]);
        assert!(parse_files(&img, 10).is_err());
        // A sub-message whose length runs past its entry.
        let mut e = Vec::new();
        vfield(1, 1, &mut e);
        vfield(2, 1, &mut e);
        e.extend_from_slice(&[(3 << 3) | 2, 0x7f, 0x32]);
        assert!(parse_files(&image(IMG_COMMON_MAGIC, FILES_MAGIC, &[e]), 10).is_err());
        // A file id over 32 bits.
        let mut e = Vec::new();
        vfield(1, 1, &mut e);
        vfield(2, 1 << 40, &mut e);
        assert!(parse_files(&image(IMG_COMMON_MAGIC, FILES_MAGIC, &[e]), 10).is_err());
        // fdinfo without an fd number, and more fds than allowed.
        let mut fd = Vec::new();
        vfield(1, 3, &mut fd);
        vfield(3, 1, &mut fd);
        assert!(parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &[fd.clone()]), 4).is_err());
        vfield(4, 1, &mut fd);
        let many = vec![fd; 5];
        assert!(parse_fdinfo(&image(IMG_COMMON_MAGIC, FDINFO_MAGIC, &many), 4).is_err());
        // Queued packets whose data runs past the image, too many, or no socket id.
        let mut pkt = Vec::new();
        vfield(1, 9, &mut pkt);
        vfield(2, 100, &mut pkt);
        let mut q = image(IMG_COMMON_MAGIC, SK_QUEUES_MAGIC, &[pkt.clone()]);
        q.extend_from_slice(&[0u8; 99]);
        assert!(parse_sk_queues(&q, 10).is_err());
        q.push(0);
        assert_eq!(parse_sk_queues(&q, 10).unwrap(), vec![(9, 100)]);
        assert!(parse_sk_queues(&q, 0).is_err());
        let mut no_id = Vec::new();
        vfield(2, 0, &mut no_id);
        assert!(parse_sk_queues(&image(IMG_COMMON_MAGIC, SK_QUEUES_MAGIC, &[no_id]), 10).is_err());
        // Stats with the common magic in place of the service magic; an empty fs image.
        assert!(parse_stats(&image(IMG_COMMON_MAGIC, STATS_MAGIC, &[])).is_err());
        assert!(parse_fs(&image(IMG_COMMON_MAGIC, FS_MAGIC, &[])).is_err());
    }
}
