//! The bounded tar header reader. Parses 512-byte headers itself (ustar, GNU and PAX
//! `x`), verifies every checksum, applies PAX/GNU extensions to the member they precede,
//! and returns only regular files and directories, each with a normalised, validated,
//! unique path. Member data is never read here unless the caller asks
//! ([`TarReader::read_data`]); otherwise it is skipped (a seek for plain files).
//!
//! Decisions (all fail closed):
//! * The archive ends at two zero blocks, or at one zero block followed by the end of the
//!   stream (as GNU tar and Go accept). A lone zero block followed by a non-zero block is
//!   rejected; the end of the stream at a header boundary without any zero block is
//!   rejected (the archive may be cut short). Bytes after the end marker are ignored.
//! * Only ustar (`ustar\0`) and GNU (`ustar  \0`) headers are accepted; v7 headers are not.
//! * PAX global headers (`g`) are rejected: tar readers disagree on whether and how they
//!   apply.
//! * Extension headers: one PAX `x` alone, or GNU `L` and/or `K` (each at most once), then
//!   the member. Any other mix (`x` then `L`, `L` then `x`, `x x`, `L L`, `K K`) or an
//!   extension header followed by the end of the archive is rejected. Each extension's
//!   declared size is checked against the cap before any of its data is read.
//! * A PAX `size` must equal the ustar size, except a ustar size of 0 with a PAX size of
//!   8 GiB or more (too large for the 11-digit octal field, as Go's writer emits).
//! * Paths: `./` prefixes, `.` and empty components and a trailing `/` are normalised away;
//!   an empty, absolute, `..`-holding or non-UTF-8 path is rejected; a directory whose
//!   path normalises to nothing (`./`) is the archive root and is accepted. PAX `linkpath`
//!   and GNU `K` link names are only used for link members, which are rejected anyway.

use std::collections::HashSet;

use super::Limits;
use super::error::InspectError;
use super::input::Input;
use super::pax::{self, PaxError, PaxRecords};

/// Size of a tar block.
pub(crate) const BLOCK: u64 = 512;

/// Smallest size that does not fit the 11-digit octal size field (8 GiB).
const OCTAL_SIZE_OVERFLOW: u64 = 1 << 33;

/// What kind of member an [`Entry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file (typeflag `0`, NUL or `7`).
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only from a [`TarReader::listing`] reader).
    Symlink,
    /// A hard link to an earlier member (only from a listing reader).
    HardLink,
    /// A character device (only from a listing reader).
    CharDevice,
    /// A block device (only from a listing reader).
    BlockDevice,
    /// A FIFO (only from a listing reader).
    Fifo,
}

impl Kind {
    /// The name shown to users.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::HardLink => "hardlink",
            Self::CharDevice => "char-device",
            Self::BlockDevice => "block-device",
            Self::Fifo => "fifo",
        }
    }
}

/// One accepted member.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Normalised path (no `./`, no trailing `/`); empty only for the root directory.
    pub path: String,
    /// File or directory.
    pub kind: Kind,
    /// Data size in bytes.
    pub size: u64,
    /// Permission bits (and set-id/sticky) from the header, `mode & 0o7777`.
    pub mode: u32,
    /// A link's target (listing readers only), as the header gives it.
    pub link: Option<String>,
}

/// Extension headers seen since the last member.
#[derive(Default)]
struct Pending {
    pax: Option<PaxRecords>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// Kind of the first pending extension header, for messages.
    first: Option<&'static str>,
}

/// Reads members one at a time from an [`Input`].
pub(crate) struct TarReader<'l, I> {
    input: I,
    limits: &'l Limits,
    /// Data of the current member not yet read (skipped before the next header).
    data_left: u64,
    /// Padding after the current member's data.
    pad: u64,
    members: u64,
    path_bytes: u64,
    seen: HashSet<String>,
    done: bool,
    /// Links and special files are listed rather than refused (a nested tar whose
    /// members are reported, never extracted: `rootfs-diff.tar`).
    listing: bool,
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

impl<'l, I: Input> TarReader<'l, I> {
    /// Starts reading at the input's current position.
    pub(crate) fn new(input: I, limits: &'l Limits) -> Self {
        Self {
            input,
            limits,
            data_left: 0,
            pad: 0,
            members: 0,
            path_bytes: 0,
            seen: HashSet::new(),
            done: false,
            listing: false,
        }
    }

    /// A reader that lists links, devices and FIFOs (with their kind and target) instead
    /// of refusing them; every other rule is the same. For tars that are described,
    /// never extracted.
    pub(crate) fn listing(input: I, limits: &'l Limits) -> Self {
        Self {
            listing: true,
            ..Self::new(input, limits)
        }
    }

    /// Reads the whole data of the member last returned by [`Self::next_entry`]. The caller
    /// checks the size against its own cap first.
    pub(crate) fn read_data(&mut self, what: &str) -> Result<Vec<u8>, InspectError> {
        let size = self.data_left;
        let len = usize::try_from(size).map_err(|_| InspectError::Truncated {
            what: what.to_owned(),
            offset: self.input.offset(),
            needed: size,
        })?;
        let mut buf = vec![0u8; len];
        let start = self.input.offset();
        let got = self.input.read_full(&mut buf)?;
        self.data_left = 0;
        if got != len {
            return Err(InspectError::Truncated {
                what: what.to_owned(),
                offset: start,
                needed: size,
            });
        }
        Ok(buf)
    }

    /// Reads the next bytes of the current member's data into `buf` (as many as fit and are
    /// left); 0 at the end of the member. A stream that ends early is truncated.
    pub(crate) fn read_chunk(&mut self, buf: &mut [u8], what: &str) -> Result<usize, InspectError> {
        let want = usize::try_from(self.data_left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(dst) = buf.get_mut(..want) else {
            return Ok(0);
        };
        if want == 0 {
            return Ok(0);
        }
        let start = self.input.offset();
        let got = self.input.read_full(dst)?;
        if got != want {
            return Err(InspectError::Truncated {
                what: what.to_owned(),
                offset: start,
                needed: self.data_left,
            });
        }
        self.data_left -= got as u64;
        self.input.check_deadline()?;
        Ok(got)
    }

    /// Skips the next `n` bytes of the current member's data (seeked over in a seekable
    /// input); more than is left is truncation.
    pub(crate) fn skip_data(&mut self, n: u64, what: &str) -> Result<(), InspectError> {
        if n > self.data_left {
            return Err(InspectError::Truncated {
                what: what.to_owned(),
                offset: self.input.offset(),
                needed: n,
            });
        }
        self.input.skip(n, what)?;
        self.data_left -= n;
        self.input.check_deadline()
    }

    /// Skips whatever is left of the current member.
    fn skip_rest(&mut self) -> Result<(), InspectError> {
        let n = self.data_left.saturating_add(self.pad);
        self.data_left = 0;
        self.pad = 0;
        self.input.skip(n, "member data")
    }

    /// Returns the next file or directory, or `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, InspectError> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            self.input.check_deadline()?;
            let offset = self.input.offset();
            let mut block = [0u8; BLOCK as usize];
            let got = self.input.read_full(&mut block)?;
            if got == 0 {
                if let Some(first) = pending.first {
                    return Err(dangling(first, "end of the stream", offset));
                }
                return Err(InspectError::MissingEndMarker { offset });
            }
            if got < block.len() {
                return Err(InspectError::Truncated {
                    what: "a header".into(),
                    offset,
                    needed: BLOCK,
                });
            }
            if block.iter().all(|&b| b == 0) {
                self.end_marker(offset)?;
                if let Some(first) = pending.first {
                    return Err(dangling(first, "end-of-archive marker", offset));
                }
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&block, offset)?;
            let gnu = match block.get(257..265) {
                Some(b"ustar\x0000") | Some(b"ustar\x00\x00\x00") => false,
                Some(m) if m.starts_with(b"ustar\x00") => false,
                Some(b"ustar  \x00") => true,
                _ => {
                    return Err(InspectError::BadHeader {
                        reason: "no ustar or GNU magic (old v7 headers are not accepted)".into(),
                        offset,
                    });
                }
            };
            let ustar_size = parse_size(field(&block, 124, 12), offset)?;
            let typeflag = block.get(156).copied().unwrap_or(0);
            match typeflag {
                b'x' => {
                    if pending.pax.is_some() {
                        return Err(seq("PAX x", "PAX x", offset));
                    }
                    if let Some(first) = pending.first {
                        return Err(seq(first, "PAX x", offset));
                    }
                    let data = self.read_extension("PAX", ustar_size, offset)?;
                    let records = pax::parse(&data).map_err(|e| match e {
                        PaxError::Malformed(reason) => {
                            InspectError::PaxMalformed { reason, offset }
                        }
                        PaxError::NulInPath(source_kind) => InspectError::NulInPath {
                            source_kind,
                            offset,
                        },
                    })?;
                    pending.pax = Some(records);
                    pending.first = Some("PAX x");
                }
                b'L' | b'K' => {
                    let (kind, slot_taken) = if typeflag == b'L' {
                        ("GNU L (long name)", pending.long_name.is_some())
                    } else {
                        ("GNU K (long link)", pending.long_link.is_some())
                    };
                    if pending.pax.is_some() {
                        return Err(seq("PAX x", kind, offset));
                    }
                    if slot_taken {
                        return Err(seq(kind, kind, offset));
                    }
                    let data = self.read_extension(kind, ustar_size, offset)?;
                    let name = gnu_long_name(data, offset)?;
                    if typeflag == b'L' {
                        pending.long_name = Some(name);
                    } else {
                        pending.long_link = Some(name);
                    }
                    pending.first.get_or_insert(kind);
                }
                b'g' => return Err(InspectError::PaxGlobalHeader { offset }),
                _ => {
                    return self
                        .member(&block, gnu, typeflag, ustar_size, pending, offset)
                        .map(Some);
                }
            }
        }
    }

    /// After a zero block: accepts a second zero block or the end of the stream.
    fn end_marker(&mut self, offset: u64) -> Result<(), InspectError> {
        let mut next = [0u8; BLOCK as usize];
        let got = self.input.read_full(&mut next)?;
        if next.get(..got).unwrap_or_default().iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err(InspectError::LoneZeroBlock { offset })
        }
    }

    /// Reads the data of an extension header after checking its declared size.
    fn read_extension(
        &mut self,
        kind: &'static str,
        size: u64,
        offset: u64,
    ) -> Result<Vec<u8>, InspectError> {
        let limit = self.limits.max_extension_bytes;
        if size > limit {
            return Err(InspectError::ExtensionHeaderTooLarge {
                kind,
                size,
                limit,
                offset,
            });
        }
        self.check_fits(size, offset, kind)?;
        self.data_left = size;
        let data = self.read_data(&format!("the {kind} header's data"))?;
        self.input.skip(padding(size), "extension header padding")?;
        Ok(data)
    }

    /// For seekable input: the data and its padding must lie inside the stream.
    fn check_fits(&self, size: u64, offset: u64, what: &str) -> Result<(), InspectError> {
        if let Some(remaining) = self.input.remaining() {
            let need = size.checked_add(padding(size));
            if need.is_none_or(|n| n > remaining) {
                return Err(InspectError::Truncated {
                    what: format!("the data of {what} (header at offset {offset})"),
                    offset: self.input.offset(),
                    needed: size,
                });
            }
        }
        Ok(())
    }

    /// Turns a non-extension header into a member, or rejects it.
    fn member(
        &mut self,
        block: &[u8],
        gnu: bool,
        typeflag: u8,
        ustar_size: u64,
        pending: Pending,
        offset: u64,
    ) -> Result<Entry, InspectError> {
        let pax = pending.pax.unwrap_or_default();
        let raw_path = match (pax.path, pending.long_name) {
            (Some(p), _) => p,
            (None, Some(long)) => {
                String::from_utf8(long).map_err(|_| InspectError::PathEncoding { offset })?
            }
            (None, None) => ustar_name(block, gnu, offset)?,
        };
        let path = normalise(&raw_path, offset)?;
        let kind = match typeflag {
            b'0' | b'7' => Kind::File,
            // Old-style: a NUL typeflag with a trailing slash is a directory.
            0 if raw_path.ends_with('/') => Kind::Dir,
            0 => Kind::File,
            b'5' => Kind::Dir,
            b'1' if self.listing => Kind::HardLink,
            b'2' if self.listing => Kind::Symlink,
            b'3' if self.listing => Kind::CharDevice,
            b'4' if self.listing => Kind::BlockDevice,
            b'6' if self.listing => Kind::Fifo,
            b'1' | b'2' => {
                let kind = if typeflag == b'1' {
                    "hard link"
                } else {
                    "symbolic link"
                };
                return Err(InspectError::LinkMember { path, kind, offset });
            }
            b'3' | b'4' | b'6' => {
                let kind = match typeflag {
                    b'3' => "character device",
                    b'4' => "block device",
                    _ => "FIFO",
                };
                return Err(InspectError::SpecialMember { path, kind, offset });
            }
            b'S' => return Err(InspectError::SparseMember { path, offset }),
            other => {
                return Err(InspectError::UnknownMemberType {
                    typeflag: char::from(other),
                    offset,
                });
            }
        };
        if pax.sparse {
            return Err(InspectError::SparseMember { path, offset });
        }
        if path.is_empty() && kind == Kind::File {
            return Err(InspectError::EmptyPath { offset });
        }
        let size = match pax.size {
            None => ustar_size,
            Some(p) if p == ustar_size => p,
            Some(p) if ustar_size == 0 && p >= OCTAL_SIZE_OVERFLOW => p,
            Some(pax_size) => {
                return Err(InspectError::SizeConflict {
                    path,
                    ustar_size,
                    pax_size,
                    offset,
                });
            }
        };
        if kind == Kind::Dir && size != 0 {
            return Err(InspectError::DirectoryWithData { path, size, offset });
        }
        self.members = self.members.saturating_add(1);
        if self.members > self.limits.max_entries {
            return Err(InspectError::TooManyEntries {
                limit: self.limits.max_entries,
                offset,
            });
        }
        self.path_bytes = self.path_bytes.saturating_add(path.len() as u64);
        if self.path_bytes > self.limits.max_path_bytes {
            return Err(InspectError::PathsTooLarge {
                limit: self.limits.max_path_bytes,
                offset,
            });
        }
        if !self.seen.insert(path.clone()) {
            return Err(InspectError::DuplicateMember { path, offset });
        }
        self.check_fits(size, offset, &format!("member {path:?}"))?;
        self.data_left = size;
        self.pad = padding(size);
        let mode = parse_octal(field(block, 100, 8)).map_or(0, |m| (m & 0o7777) as u32);
        let link = match kind {
            Kind::Symlink | Kind::HardLink => Some(match (pax.linkpath, pending.long_link) {
                (Some(l), _) => l,
                (None, Some(long)) => String::from_utf8_lossy(&long).into_owned(),
                (None, None) => String::from_utf8_lossy(cstr(field(block, 157, 100))).into_owned(),
            }),
            _ => None,
        };
        Ok(Entry {
            path,
            kind,
            size,
            mode,
            link,
        })
    }
}

fn seq(first: &'static str, second: &'static str, offset: u64) -> InspectError {
    InspectError::ExtensionSequence {
        first,
        second,
        offset,
    }
}

fn dangling(first: &'static str, what: &'static str, offset: u64) -> InspectError {
    seq(first, what, offset)
}

/// A header field; empty when out of range (never, for a 512-byte block).
fn field(block: &[u8], start: usize, len: usize) -> &[u8] {
    block
        .get(start..start.saturating_add(len))
        .unwrap_or_default()
}

/// Bytes of a NUL-terminated field up to the first NUL.
fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or_default()
}

/// The name from the header itself (ustar prefix + name, or the GNU name alone).
fn ustar_name(block: &[u8], gnu: bool, offset: u64) -> Result<String, InspectError> {
    let name = cstr(field(block, 0, 100));
    let prefix = if gnu {
        &[][..]
    } else {
        cstr(field(block, 345, 155))
    };
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    String::from_utf8(full).map_err(|_| InspectError::PathEncoding { offset })
}

/// A GNU long name/link: the data up to its trailing NULs; a NUL before the end is refused.
fn gnu_long_name(mut data: Vec<u8>, offset: u64) -> Result<Vec<u8>, InspectError> {
    while data.last() == Some(&0) {
        data.pop();
    }
    if data.contains(&0) {
        return Err(InspectError::NulInPath {
            source_kind: "GNU long",
            offset,
        });
    }
    Ok(data)
}

/// Normalises and validates a member path; returns "" for the archive root directory.
pub(crate) fn normalise(raw: &str, offset: u64) -> Result<String, InspectError> {
    if raw.is_empty() {
        return Err(InspectError::EmptyPath { offset });
    }
    if raw.starts_with('/') {
        return Err(InspectError::AbsolutePath {
            path: raw.to_owned(),
            offset,
        });
    }
    let mut out = String::with_capacity(raw.len());
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(InspectError::DotDotPath {
                    path: raw.to_owned(),
                    offset,
                });
            }
            c => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

/// Verifies the header checksum (unsigned sum, or the historic signed sum).
fn verify_checksum(block: &[u8], offset: u64) -> Result<(), InspectError> {
    let mut unsigned: u32 = 0;
    let mut signed: i32 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned = unsigned.wrapping_add(u32::from(b));
        signed = signed.wrapping_add(i32::from(b as i8));
    }
    let raw = field(block, 148, 8);
    let recorded = parse_octal(raw);
    let ok = match recorded {
        Some(r) => r == u64::from(unsigned) || i64::try_from(r).ok() == Some(i64::from(signed)),
        None => false,
    };
    if ok {
        return Ok(());
    }
    Err(InspectError::BadChecksum {
        offset,
        recorded: match recorded {
            Some(r) => r.to_string(),
            None => format!("unparseable {:?}", String::from_utf8_lossy(raw)),
        },
        computed: unsigned,
    })
}

/// An octal field: optional leading spaces, digits, then NULs/spaces to the end.
fn parse_octal(raw: &[u8]) -> Option<u64> {
    let start = raw.iter().position(|&b| b != b' ').unwrap_or(raw.len());
    let body = raw.get(start..).unwrap_or_default();
    let digits = body
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(b))
        .count();
    let tail = body.get(digits..).unwrap_or_default();
    if !tail.iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    let mut n: u64 = 0;
    for &b in body.get(..digits).unwrap_or_default() {
        n = n.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The size field: octal, or GNU base-256 (high bit set; negative values refused).
fn parse_size(raw: &[u8], offset: u64) -> Result<u64, InspectError> {
    let bad = |reason: &str| InspectError::BadHeader {
        reason: reason.to_owned(),
        offset,
    };
    let n = match raw.first() {
        Some(&0x80) => {
            let mut n: u64 = 0;
            for &b in raw.get(1..).unwrap_or_default() {
                n = n
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| bad("base-256 size overflows"))?;
            }
            n
        }
        Some(&b) if b & 0x80 != 0 => return Err(bad("negative or malformed base-256 size")),
        _ => parse_octal(raw).ok_or_else(|| bad("size field is not octal"))?,
    };
    if n > i64::MAX as u64 {
        return Err(bad("size is too large"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise("./a//b/./c/", 0).unwrap(), "a/b/c");
        assert_eq!(normalise("./", 0).unwrap(), "");
        assert_eq!(normalise("a/../b", 0).unwrap_err().code(), "dot-dot-path");
        assert_eq!(normalise("/etc", 0).unwrap_err().code(), "absolute-path");
        assert_eq!(normalise("", 0).unwrap_err().code(), "empty-path");
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"64x4"), None);
        assert_eq!(parse_octal(b"64 4"), None);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(parse_size(&b256, 0).unwrap(), 261);
        b256[0] = 0xff;
        assert!(parse_size(&b256, 0).is_err());
    }
}
