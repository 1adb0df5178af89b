//! SHA-256 while bytes flow: a writer and a reader that hash and count what passes.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Final digest and byte count of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Bytes hashed.
    pub size: u64,
}

/// Hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Flushes and returns the digest and the inner writer.
    pub fn finish(mut self) -> io::Result<(StreamDigest, W)> {
        self.inner.flush()?;
        Ok((
            StreamDigest {
                sha256: hex::encode(self.hasher.finalize()),
                size: self.size,
            },
            self.inner,
        ))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hasher.update(done);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of what was read so far.
    pub fn finish(self) -> StreamDigest {
        StreamDigest {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(done) = buf.get(..n) {
            self.hasher.update(done);
        }
        self.size += n as u64;
        Ok(n)
    }
}
