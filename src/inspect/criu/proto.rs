//! The two layers every CRIU image shares: the framing (two magic words, then entries of a
//! u32 LE length and a protobuf message) and a tiny bounded protobuf reader of our own
//! (no code generation, no allocation proportional to declared lengths), with the field
//! accessors the per-image decoders use. Groups, invalid wire types, overlong varints and
//! lengths past the end are malformed; unknown fields are skipped by the callers.

use std::fmt;

/// `IMG_COMMON_MAGIC`, the first word of every CRIU image but inventory.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First word of CRIU's service images (`stats-dump`, `inventory.img`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Longest path or socket name taken from an image (the kernel's PATH_MAX).
pub const MAX_NAME_BYTES: usize = 4096;

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

pub(super) fn bad(why: impl Into<String>) -> CriuError {
    CriuError::Malformed(why.into())
}

/// A decoded protobuf field value.
pub(super) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// A bounded protobuf reader over one message.
pub(super) struct Pb<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Pb<'a> {
    pub(super) fn varint(&mut self) -> Result<u64, CriuError> {
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
    pub(super) fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, CriuError> {
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

pub(super) fn u32_of(v: u64, what: &str) -> Result<u32, CriuError> {
    u32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit 32 bits")))
}

/// Splits an image into its entries after checking both magics.
pub(super) fn entries(img: &[u8], magic: u32) -> Result<Vec<&[u8]>, CriuError> {
    entries_after(img, IMG_COMMON_MAGIC, magic)
}

/// Splits an image whose first word is `first` (`IMG_COMMON_MAGIC`, or
/// `IMG_SERVICE_MAGIC` for CRIU's service images such as `stats-dump`).
pub(super) fn entries_after(img: &[u8], first: u32, magic: u32) -> Result<Vec<&[u8]>, CriuError> {
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

/// The one entry of a single-entry image.
pub(super) fn only_entry<'a>(
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
pub(super) fn fields(msg: &[u8]) -> Result<Vec<(u32, Value<'_>)>, CriuError> {
    let mut pb = Pb { buf: msg };
    let mut out = Vec::new();
    while let Some(f) = pb.next()? {
        out.push(f);
    }
    Ok(out)
}

pub(super) fn varint_of(fields: &[(u32, Value<'_>)], n: u32) -> Option<u64> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Value::Varint(x) if *f == n => Some(*x),
        _ => None,
    })
}

pub(super) fn bytes_of<'a>(fields: &[(u32, Value<'a>)], n: u32) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Value::Bytes(b) if *f == n => Some(*b),
        _ => None,
    })
}

pub(super) fn req_u32(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<u32, CriuError> {
    let v = varint_of(fields, n).ok_or_else(|| bad(format!("{what} is missing")))?;
    u32_of(v, what)
}

pub(super) fn opt_u32(fields: &[(u32, Value<'_>)], n: u32, what: &str) -> Result<u32, CriuError> {
    varint_of(fields, n).map_or(Ok(0), |v| u32_of(v, what))
}

pub(super) fn name_of(
    fields: &[(u32, Value<'_>)],
    n: u32,
    what: &str,
) -> Result<Vec<u8>, CriuError> {
    let b = bytes_of(fields, n).unwrap_or_default();
    if b.len() > MAX_NAME_BYTES {
        return Err(bad(format!(
            "{what} of {} bytes (at most {MAX_NAME_BYTES})",
            b.len()
        )));
    }
    Ok(b.to_vec())
}

/// Repeated uint32 words (packed or not).
pub(super) fn words(
    fields: &[(u32, Value<'_>)],
    n: u32,
    what: &str,
) -> Result<Vec<u32>, CriuError> {
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
