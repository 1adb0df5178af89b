//! The one-pass sealing stream: bytes in -> SHA-256 -> zstd (multithreaded) -> age ->
//! SHA-256 -> out. Memory is bounded by a fixed number of fixed-size buffers, whatever
//! the input size.
//!
//! Three stages run at once: a reader thread reads and hashes the input; the calling
//! thread feeds zstd (whose own worker threads compress); a writer thread encrypts the
//! compressed bytes, hashes and writes them. Hashing and encryption thus overlap with
//! compression instead of queueing behind it (docs/performance.md).

use std::io::{self, BufWriter, Read, Write};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::digest::{HashingWriter, StreamDigest};
use crate::recipient::Recipient;

/// Size of one read buffer.
const CHUNK: usize = 1 << 20;
/// Buffers in flight between the reader and the compressor.
const IN_FLIGHT: usize = 4;

/// The largest zstd window (log2 bytes) sealing ever uses: level 19, the highest `seal
/// --level` takes, compresses with an 8 MiB window (2^23) when the input size is unknown,
/// and a known size or a lower level only makes it smaller. Opening refuses a frame that
/// asks for more: a blob that does is not one ckvault sealed.
pub const MAX_WINDOW_LOG: u32 = 23;

/// How the stream is compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at this level with this many worker threads (0: single-threaded).
    Zstd {
        /// zstd level (1 is fast and, on memory pages, close to the best ratio per second).
        level: i32,
        /// zstd worker threads.
        threads: u32,
    },
    /// Keep the bytes as they came (the input is already gzip or zstd).
    None,
}

impl Compression {
    /// The manifest's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd { .. } => "zstd",
            Self::None => "none",
        }
    }
}

/// Digests of both ends of a sealing stream.
#[derive(Debug, Clone)]
pub struct SealDigests {
    /// The input as received.
    pub plaintext: StreamDigest,
    /// The bytes written out.
    pub sealed: StreamDigest,
}

/// Errors of the sealing stream, by the side that failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the input failed.
    #[error("reading the archive failed: {0}")]
    Read(io::Error),
    /// Writing the sealed output failed (disk full, I/O error).
    #[error("writing the sealed blob failed: {0}")]
    Write(io::Error),
    /// The recipients cannot be combined (age refuses mixing some types).
    #[error("cannot encrypt to these recipients: {0}")]
    Encrypt(#[source] age::EncryptError),
    /// The reader thread died.
    #[error("internal error: the input reader stopped unexpectedly")]
    ReaderPanicked,
}

/// Seals `input` into `output` in one pass. `progress` is called with the input bytes
/// consumed so far. The output is flushed but not fsynced (the store does that).
pub fn seal_stream<R: Read + Send, W: Write + Send>(
    input: R,
    output: W,
    recipients: &[Recipient],
    compression: Compression,
    size_hint: Option<u64>,
    progress: &dyn Fn(u64),
) -> Result<(SealDigests, W), StreamError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_age()))
        .map_err(StreamError::Encrypt)?;
    let hashed_out = HashingWriter::new(BufWriter::with_capacity(CHUNK, output));
    let encrypted = encryptor
        .wrap_output(hashed_out)
        .map_err(StreamError::Write)?;

    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
    for _ in 0..IN_FLIGHT {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_and_hash(input, full_tx, empty_rx));
        let (out_tx, out_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let writer = scope.spawn(move || -> io::Result<_> {
            let mut encrypted = encrypted;
            for chunk in out_rx.iter() {
                encrypted.write_all(&chunk)?;
            }
            let hashed_out = encrypted.finish()?;
            let (sealed, buffered) = hashed_out.finish()?;
            let out = buffered.into_inner().map_err(|e| e.into_error())?;
            Ok((sealed, out))
        });
        let fed = (|| -> Result<(), StreamError> {
            let sink = ChannelWriter::new(out_tx);
            let sink = match compression {
                Compression::Zstd { level, threads } => {
                    let mut z =
                        zstd::stream::Encoder::new(sink, level).map_err(StreamError::Write)?;
                    if threads > 0 {
                        z.multithread(threads).map_err(StreamError::Write)?;
                    }
                    z.include_checksum(true).map_err(StreamError::Write)?;
                    if let Some(n) = size_hint {
                        let _ = z.set_pledged_src_size(Some(n));
                    }
                    pump(&full_rx, &empty_tx, &mut z, progress)?;
                    z.finish().map_err(StreamError::Write)?
                }
                Compression::None => {
                    let mut sink = sink;
                    pump(&full_rx, &empty_tx, &mut sink, progress)?;
                    sink
                }
            };
            sink.close().map_err(StreamError::Write)
        })();
        // Unblock the reader if we stopped early, then collect both ends' results. A
        // writer failure (disk full) is the cause of a broken channel: report it first.
        drop(full_rx);
        drop(empty_tx);
        let plaintext = reader.join().map_err(|_| StreamError::ReaderPanicked)?;
        let written = writer.join().map_err(|_| StreamError::ReaderPanicked)?;
        let (sealed, out) = written.map_err(StreamError::Write)?;
        fed?;
        let plaintext = plaintext.map_err(StreamError::Read)?;
        Ok((SealDigests { plaintext, sealed }, out))
    })
}

/// Collects written bytes into 1 MiB chunks for the writer thread.
struct ChannelWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::SyncSender<Vec<u8>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the writer stopped"))
    }

    /// Sends what is buffered; dropping the sender then ends the writer's input.
    fn close(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pump<W: Write>(
    full_rx: &mpsc::Receiver<io::Result<Vec<u8>>>,
    empty_tx: &mpsc::SyncSender<Vec<u8>>,
    out: &mut W,
    progress: &dyn Fn(u64),
) -> Result<(), StreamError> {
    let mut done = 0u64;
    for chunk in full_rx.iter() {
        let chunk = chunk.map_err(StreamError::Read)?;
        out.write_all(&chunk).map_err(StreamError::Write)?;
        done += chunk.len() as u64;
        progress(done);
        let _ = empty_tx.send(chunk);
    }
    Ok(())
}

/// Reader thread: fill recycled buffers, hash them, pass them on. Ends with EOF (dropping
/// the sender) or an error (sent down the channel).
fn read_and_hash<R: Read>(
    mut input: R,
    full_tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    empty_rx: mpsc::Receiver<Vec<u8>>,
) -> io::Result<StreamDigest> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Ok(mut buf) = empty_rx.recv() {
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            let Some(space) = buf.get_mut(filled..) else {
                break;
            };
            match input.read(space) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = full_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            }
        }
        buf.truncate(filled);
        hasher.update(&buf);
        size += filled as u64;
        if filled == 0 {
            break;
        }
        if full_tx.send(Ok(buf)).is_err() {
            // The writer side stopped; its error is what the caller reports.
            break;
        }
        if filled < CHUNK {
            break;
        }
    }
    Ok(StreamDigest {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}
