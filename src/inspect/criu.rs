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
    let word = |at: usize| -> Option<u32> {
        let b = img.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([
            *b.first()?,
            *b.get(1)?,
            *b.get(2)?,
            *b.get(3)?,
        ]))
    };
    if word(0) != Some(IMG_COMMON_MAGIC) {
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
}
