//! Where the tar bytes come from: [`SeekInput`] (a plain tar in a seekable file: member
//! data it does not need is seeked over, never read) and [`StreamInput`] (pipes and
//! decompressors: skipping is reading and discarding, counted against the decompressed
//! limit). Both check the deadline in every read loop.

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::error::InspectError;

/// The inspection clock: started once per call, checked at every header and read loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    started: Instant,
    limit: Duration,
}

impl Deadline {
    /// Starts the clock now.
    pub(crate) fn start(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            limit,
        }
    }

    /// Fails with [`InspectError::Timeout`] once the deadline has passed (a zero deadline
    /// always fails).
    pub(crate) fn check(&self, offset: u64) -> Result<(), InspectError> {
        if self.started.elapsed() >= self.limit {
            return Err(InspectError::Timeout {
                limit: self.limit,
                offset,
            });
        }
        Ok(())
    }
}

/// A source of tar bytes with a position.
pub(crate) trait Input {
    /// Fills `buf` as far as the stream allows; returns the number of bytes read, which is
    /// less than `buf.len()` only at the end of the stream.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, InspectError>;
    /// Skips `n` bytes; `what` names them for the truncation message.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), InspectError>;
    /// Offset of the next byte in the (decompressed) tar stream.
    fn offset(&self) -> u64;
    /// Bytes left in the stream, when known (seekable input).
    fn remaining(&self) -> Option<u64>;
    /// Checks the clock.
    fn check_deadline(&self) -> Result<(), InspectError>;
}

impl<T: Input + ?Sized> Input for Box<T> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, InspectError> {
        (**self).read_full(buf)
    }
    fn skip(&mut self, n: u64, what: &str) -> Result<(), InspectError> {
        (**self).skip(n, what)
    }
    fn offset(&self) -> u64 {
        (**self).offset()
    }
    fn remaining(&self) -> Option<u64> {
        (**self).remaining()
    }
    fn check_deadline(&self) -> Result<(), InspectError> {
        (**self).check_deadline()
    }
}

/// A plain tar in a seekable reader, inspected from the reader's position at the call.
pub(crate) struct SeekInput<R> {
    inner: R,
    start: u64,
    len: u64,
    offset: u64,
    deadline: Deadline,
}

impl<R: Read + Seek> SeekInput<R> {
    /// `start` is the absolute position of the tar's first byte, `len` the bytes from there
    /// to the end of the stream; the reader must be positioned at `start`.
    pub(crate) fn new(inner: R, start: u64, len: u64, deadline: Deadline) -> Self {
        Self {
            inner,
            start,
            len,
            offset: 0,
            deadline,
        }
    }
}

impl<R: Read + Seek> Input for SeekInput<R> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, InspectError> {
        let mut got = 0usize;
        while let Some(rest) = buf.get_mut(got..) {
            if rest.is_empty() {
                break;
            }
            self.deadline.check(self.offset)?;
            match self.inner.read(rest) {
                Ok(0) => break,
                Ok(n) => {
                    got = got.saturating_add(n);
                    self.offset = self.offset.saturating_add(n as u64);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(InspectError::Io(e)),
            }
        }
        Ok(got)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), InspectError> {
        if n == 0 {
            return Ok(());
        }
        // Check against the stream length BEFORE seeking: a seek past the end succeeds.
        let end = self.offset.checked_add(n).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(InspectError::Truncated {
                what: what.to_owned(),
                offset: self.offset,
                needed: n,
            });
        };
        let abs = self.start.checked_add(end).ok_or(InspectError::Truncated {
            what: what.to_owned(),
            offset: self.offset,
            needed: n,
        })?;
        self.inner.seek(SeekFrom::Start(abs))?;
        self.offset = end;
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn remaining(&self) -> Option<u64> {
        Some(self.len.saturating_sub(self.offset))
    }

    fn check_deadline(&self) -> Result<(), InspectError> {
        self.deadline.check(self.offset)
    }
}

/// Which decompressor, if any, sits under a [`StreamInput`] (for error mapping and the
/// decompressed-bytes counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Plain tar bytes: no counter.
    Plain,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A non-seekable stream of tar bytes (a pipe, or the output of a decompressor).
pub(crate) struct StreamInput<R> {
    inner: R,
    offset: u64,
    codec: Codec,
    max_decompressed: u64,
    deadline: Deadline,
    scratch: Vec<u8>,
}

/// Size of the buffer used to read and discard skipped data.
const SKIP_CHUNK: usize = 64 * 1024;

impl<R: Read> StreamInput<R> {
    /// Wraps a stream; for a compressed codec, output beyond `max_decompressed` bytes is an
    /// error (counted here, so a bomb is cut off after at most one more buffer).
    pub(crate) fn new(inner: R, codec: Codec, max_decompressed: u64, deadline: Deadline) -> Self {
        Self {
            inner,
            offset: 0,
            codec,
            max_decompressed,
            deadline,
            scratch: Vec::new(),
        }
    }

    fn map_err(&self, e: std::io::Error) -> InspectError {
        let format = match self.codec {
            Codec::Plain => return InspectError::Io(e),
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        };
        let detail = e.to_string();
        if self.codec == Codec::Zstd && detail.contains("too much memory") {
            return InspectError::ZstdWindowTooLarge { detail };
        }
        match e.kind() {
            ErrorKind::UnexpectedEof => InspectError::Truncated {
                what: format!("the {format} stream"),
                offset: self.offset,
                needed: 1,
            },
            ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Other => {
                InspectError::Decompress { format, detail }
            }
            _ => InspectError::Io(e),
        }
    }

    /// One read, counted.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, InspectError> {
        loop {
            self.deadline.check(self.offset)?;
            match self.inner.read(buf) {
                Ok(n) => {
                    self.offset = self.offset.saturating_add(n as u64);
                    if self.codec != Codec::Plain && self.offset > self.max_decompressed {
                        return Err(InspectError::DecompressedTooLarge {
                            limit: self.max_decompressed,
                        });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.map_err(e)),
            }
        }
    }
}

impl<R: Read> Input for StreamInput<R> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, InspectError> {
        let mut got = 0usize;
        while let Some(rest) = buf.get_mut(got..) {
            if rest.is_empty() {
                break;
            }
            let n = self.read_some(rest)?;
            if n == 0 {
                break;
            }
            got = got.saturating_add(n);
        }
        Ok(got)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), InspectError> {
        let start = self.offset;
        let mut left = n;
        if left > 0 && self.scratch.is_empty() {
            self.scratch = vec![0u8; SKIP_CHUNK];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = (|| {
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(SKIP_CHUNK).min(SKIP_CHUNK);
                let buf = scratch.get_mut(..want).unwrap_or_default();
                let got = self.read_some(buf)?;
                if got == 0 {
                    return Err(InspectError::Truncated {
                        what: what.to_owned(),
                        offset: start,
                        needed: n,
                    });
                }
                left = left.saturating_sub(got as u64);
            }
            Ok(())
        })();
        self.scratch = scratch;
        result
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn remaining(&self) -> Option<u64> {
        None
    }

    fn check_deadline(&self) -> Result<(), InspectError> {
        self.deadline.check(self.offset)
    }
}

/// The tar bytes of `reader` as an [`Input`]: plain, or through the gzip or zstd
/// decompressor that `format` names (zstd windows capped at 128 MiB, the output counted
/// against `max_decompressed`).
pub(crate) fn decoded<'a, R: Read + 'a>(
    reader: R,
    format: super::model::ArchiveFormat,
    max_decompressed: u64,
    deadline: Deadline,
) -> Result<Box<dyn Input + 'a>, InspectError> {
    use super::model::ArchiveFormat;
    let max = max_decompressed;
    Ok(match format {
        ArchiveFormat::Tar => Box::new(StreamInput::new(reader, Codec::Plain, max, deadline)),
        ArchiveFormat::TarGzip => Box::new(StreamInput::new(
            flate2::read::MultiGzDecoder::new(reader),
            Codec::Gzip,
            max,
            deadline,
        )),
        ArchiveFormat::TarZstd => {
            let zstd_err = |e: std::io::Error| InspectError::Decompress {
                format: "zstd",
                detail: e.to_string(),
            };
            let mut dec = zstd::stream::read::Decoder::new(reader).map_err(zstd_err)?;
            dec.window_log_max(27).map_err(zstd_err)?;
            Box::new(StreamInput::new(dec, Codec::Zstd, max, deadline))
        }
    })
}
