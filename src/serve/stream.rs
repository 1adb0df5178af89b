//! Streaming a sealed blob into a response body, in bounded chunks, each download checked
//! before its last chunk leaves (chain of custody: verify on every retrieval). If the bytes
//! no longer match the manifest the body fails before its end, so the client never
//! mistakes a damaged blob for a whole one.
//!
//! A local blob ([`file_body`]) is read on the blocking pool one chunk ahead of the
//! connection, so reading (and hashing, when the blob is hashed) runs on another thread
//! than TLS encryption. Its check is either the SHA-256 of every byte, or, for a blob
//! verified since it last changed ([`super::verified`]), that the open file still has the
//! identity it was verified with. A bucket's blob ([`blob_body`]) is always re-hashed.
//!
//! Memory per download: at most two chunks (the one being sent, the one being read).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::store::backend::{BlobReader, FileIdentity};
use tokio_util::io::ReaderStream;

/// Bytes per chunk read from a local blob (and so per body frame handed to the connection).
pub(crate) const FILE_CHUNK: usize = 256 << 10;
/// Bytes per chunk read from a bucket's blob.
const CHUNK: usize = 256 << 10;

pub(crate) use crate::vault::download::Mismatch;

/// Whom a checked body tells how its check ended.
pub(crate) struct Verify {
    /// Runs when the bytes passed (before the last chunk is released).
    pub on_verified: Box<dyn FnOnce() + Send>,
    /// Runs with the reason when they did not (the body then fails before its end).
    pub on_mismatch: Box<dyn FnOnce(&Mismatch) + Send>,
}

/// `body`, `count` bytes long, noting each chunk it hands the connection in `progress`
/// (the accept loop cuts off a download that stops moving), holding `slot` until it ends,
/// and calling `on_end` once with the bytes it handed over when it ends, whole or not
/// (the client went away, the connection was cut, the check failed).
pub(crate) fn watched_body(
    body: Body,
    count: u64,
    progress: Option<std::sync::Arc<super::limits::Progress>>,
    slot: super::limits::Slot<String>,
    on_end: impl FnOnce(u64) + Send + 'static,
) -> Body {
    Body::new(Watched {
        inner: body,
        sent: 0,
        count,
        progress,
        _slot: slot,
        on_end: Some(Box::new(on_end)),
    })
}

struct Watched {
    inner: Body,
    sent: u64,
    count: u64,
    progress: Option<std::sync::Arc<super::limits::Progress>>,
    _slot: super::limits::Slot<String>,
    on_end: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.sent = self.sent.saturating_add(data.len() as u64);
            if let Some(p) = &self.progress {
                p.moved();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.count.saturating_sub(self.sent))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent);
        }
    }
}

pub(crate) use crate::vault::download::Check as FileCheck;

/// A body streaming `count` bytes of a local blob from `start`, `identity` being the open
/// `file`'s identity when it was opened. The last chunk is held back until `check` passed
/// (and the file's identity is still `identity`); otherwise the body fails before its end,
/// so the client sees fewer bytes than `Content-Length` (HTTP/1.1, the connection is cut)
/// or a reset stream (HTTP/2), never a clean end.
pub(crate) fn file_body(
    file: File,
    identity: FileIdentity,
    start: u64,
    count: u64,
    check: FileCheck,
    verify: Verify,
) -> Body {
    let (hasher, expected) = match check {
        FileCheck::Digest(sha256) => (Some(Sha256::new()), Some(sha256)),
        FileCheck::Unchanged => (None, None),
    };
    let source = FileSource {
        file,
        identity,
        seek_to: Some(start),
        whole: start == 0 && count == identity.size,
        left: count,
        hasher,
        expected,
    };
    enum State {
        Start(Box<FileSource>, Verify),
        Reading(tokio::task::JoinHandle<(Box<FileSource>, Step)>, Verify),
        Done,
    }
    let read_next = |source: Box<FileSource>| {
        tokio::task::spawn_blocking(move || {
            let mut source = source;
            let step = source.next_chunk();
            (source, step)
        })
    };
    let stream = futures_util::stream::unfold(
        State::Start(Box::new(source), verify),
        move |state| async move {
            let (handle, verify) = match state {
                State::Start(source, verify) if source.left == 0 && source.hasher.is_none() => {
                    // An empty range: nothing to send, nothing to check.
                    (verify.on_verified)();
                    return None;
                }
                State::Start(source, verify) => (read_next(source), verify),
                State::Reading(handle, verify) => (handle, verify),
                State::Done => return None,
            };
            let (source, step) = match handle.await {
                Ok(done) => done,
                Err(e) => {
                    return Some((
                        Err(io::Error::other(format!("blob reader failed: {e}"))),
                        State::Done,
                    ));
                }
            };
            match step {
                // Read the next chunk while this one is encrypted and sent.
                Step::More(chunk) => Some((Ok(chunk), State::Reading(read_next(source), verify))),
                Step::Last(chunk) => {
                    (verify.on_verified)();
                    Some((Ok(chunk), State::Done))
                }
                Step::Failed(e) => Some((Err(e), State::Done)),
                Step::Mismatch(why) => {
                    (verify.on_mismatch)(&why);
                    Some((Err(io::Error::other(why)), State::Done))
                }
            }
        },
    );
    Body::from_stream(stream)
}

/// A local blob being read, and what its last chunk waits for.
struct FileSource {
    file: File,
    identity: FileIdentity,
    seek_to: Option<u64>,
    /// The bytes asked for are the whole file (so its size must be theirs).
    whole: bool,
    left: u64,
    hasher: Option<Sha256>,
    expected: Option<String>,
}

/// What one read on the blocking pool gave.
enum Step {
    /// A chunk; more follow.
    More(Bytes),
    /// The last chunk, checked.
    Last(Bytes),
    /// Reading failed (an I/O error, not a verdict on the bytes).
    Failed(io::Error),
    /// The bytes or the file failed the check: why.
    Mismatch(Mismatch),
}

impl FileSource {
    /// Reads (and hashes) the next chunk; before giving the last one, checks it.
    fn next_chunk(&mut self) -> Step {
        if let Some(start) = self.seek_to.take()
            && start > 0
            && let Err(e) = self.file.seek(SeekFrom::Start(start))
        {
            return Step::Failed(e);
        }
        let want = self.left.min(FILE_CHUNK as u64);
        // Read into spare capacity: no zeroing, one copy out of the page cache.
        let mut buf = Vec::with_capacity(want as usize);
        match (&self.file).take(want).read_to_end(&mut buf) {
            Ok(n) if n as u64 == want => {}
            Ok(_) => {
                return Step::Mismatch(Mismatch::Shorter);
            }
            Err(e) => return Step::Failed(e),
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf);
        }
        self.left -= want;
        if self.left > 0 {
            return Step::More(Bytes::from(buf));
        }
        match self.verdict() {
            Ok(Ok(())) => Step::Last(Bytes::from(buf)),
            Ok(Err(why)) => Step::Mismatch(why),
            Err(e) => Step::Failed(e),
        }
    }

    /// After the last byte: the file must still be the one opened, unchanged, and with a
    /// digest to check, hash to it and be exactly the bytes read.
    fn verdict(&mut self) -> io::Result<Result<(), Mismatch>> {
        let now = FileIdentity::of(&self.file)?;
        if now != self.identity {
            return Ok(Err(Mismatch::ChangedWhileServed));
        }
        if let (Some(h), Some(expected)) = (self.hasher.take(), &self.expected) {
            let got = hex::encode(h.finalize());
            if !self.whole {
                return Ok(Err(Mismatch::Size { size: now.size }));
            }
            if got != *expected {
                return Ok(Err(Mismatch::Digest {
                    got,
                    expected: expected.clone(),
                }));
            }
        }
        Ok(Ok(()))
    }
}

/// A body streaming what `reader` yields (the requested bytes of a bucket's blob).
///
/// With `verify` (the hex SHA-256 the bytes must have, and whom to tell), the last chunk
/// is held back until the digest is known: on a match it is sent and `on_verified` runs;
/// on a mismatch the body fails before its end and `on_mismatch` runs.
pub(crate) fn blob_body(reader: BlobReader, verify: Option<(String, Verify)>) -> Body {
    let reader = ReaderStream::with_capacity(reader, CHUNK);
    let Some(verify) = verify else {
        return Body::from_stream(reader);
    };
    struct State {
        inner: ReaderStream<BlobReader>,
        hasher: Sha256,
        held: Option<Bytes>,
        verify: Option<(String, Verify)>,
    }
    let state = State {
        inner: reader,
        hasher: Sha256::new(),
        held: None,
        verify: Some(verify),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.hasher.update(&chunk);
                    if let Some(previous) = st.held.replace(chunk) {
                        return Some((Ok::<Bytes, io::Error>(previous), st));
                    }
                }
                Some(Err(e)) => {
                    st.verify = None;
                    st.held = None;
                    return Some((Err(e), st));
                }
                None => {
                    let (sha256, verify) = st.verify.take()?;
                    let got = hex::encode(st.hasher.clone().finalize());
                    if got == sha256 {
                        (verify.on_verified)();
                        return st.held.take().map(|last| (Ok(last), st));
                    }
                    let why = Mismatch::Digest {
                        got,
                        expected: sha256,
                    };
                    (verify.on_mismatch)(&why);
                    st.held = None;
                    return Some((Err(io::Error::other(why)), st));
                }
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A blob of three and a half chunks, and its digest.
    fn blob(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, String) {
        let bytes: Vec<u8> = (0..FILE_CHUNK * 7 / 2)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let path = dir.join("blob.age");
        std::fs::write(&path, &bytes).expect("write blob");
        let sha = hex::encode(Sha256::digest(&bytes));
        (path, bytes, sha)
    }

    /// Counts how the check ended: (verified, mismatched).
    fn verify() -> (Verify, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, b) = (ok.clone(), bad.clone());
        let v = Verify {
            on_verified: Box::new(move || {
                o.fetch_add(1, Ordering::SeqCst);
            }),
            on_mismatch: Box::new(move |_| {
                b.fetch_add(1, Ordering::SeqCst);
            }),
        };
        (v, ok, bad)
    }

    /// Every frame until the end or the first error: (bytes received, ended cleanly).
    async fn drain(body: Body, mut after_first: impl FnMut()) -> (Vec<u8>, bool) {
        let mut body = body;
        let mut got = Vec::new();
        let mut first = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        got.extend_from_slice(&data);
                    }
                    if std::mem::take(&mut first) {
                        after_first();
                    }
                }
                Err(_) => return (got, false),
            }
        }
        (got, true)
    }

    fn open(path: &std::path::Path) -> (File, FileIdentity) {
        let f = File::open(path).expect("open blob");
        let id = FileIdentity::of(&f).expect("fstat");
        (f, id)
    }

    #[tokio::test]
    async fn a_whole_blob_is_hashed_and_released_only_when_it_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes, sha) = blob(dir.path());
        let len = bytes.len() as u64;

        let (f, id) = open(&path);
        let (v, ok, bad) = verify();
        let body = file_body(f, id, 0, len, FileCheck::Digest(sha), v);
        let (got, clean) = drain(body, || {}).await;
        assert!(clean && got == bytes);
        assert_eq!(
            (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)),
            (1, 0)
        );

        // Another digest: everything but the last chunk, then an error.
        let (f, id) = open(&path);
        let (v, ok, bad) = verify();
        let body = file_body(f, id, 0, len, FileCheck::Digest("00".repeat(32)), v);
        let (got, clean) = drain(body, || {}).await;
        assert!(!clean);
        assert_eq!(got.len(), FILE_CHUNK * 3, "the last chunk is held back");
        assert_eq!(
            (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)),
            (0, 1)
        );
    }

    #[tokio::test]
    async fn a_blob_that_changes_while_it_streams_is_cut_off_before_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes, sha) = blob(dir.path());
        let len = bytes.len() as u64;
        // Later than the coarse clock's tick, so the change moves the change time.
        std::thread::sleep(std::time::Duration::from_millis(50));
        for check in [FileCheck::Unchanged, FileCheck::Digest(sha.clone())] {
            std::fs::write(&path, &bytes).expect("restore");
            std::thread::sleep(std::time::Duration::from_millis(50));
            let (f, id) = open(&path);
            let (v, ok, bad) = verify();
            let body = file_body(f, id, 0, len, check.clone(), v);
            // After the first chunk, rewrite one byte of the last one, same size, in place.
            let (got, clean) = drain(body, || {
                let mut w = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open for writing");
                w.seek(SeekFrom::Start(len - 1)).expect("seek");
                w.write_all(&[bytes[bytes.len() - 1] ^ 0xff])
                    .expect("write");
            })
            .await;
            assert!(!clean, "{check:?}: a changed blob must not end cleanly");
            assert!(got.len() < bytes.len(), "{check:?}");
            assert_eq!(
                (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)),
                (0, 1),
                "{check:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_range_of_an_unchanged_blob_streams_its_exact_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes, _) = blob(dir.path());
        let (f, id) = open(&path);
        let (v, ok, _) = verify();
        let (start, count) = (FILE_CHUNK as u64 - 10, FILE_CHUNK as u64 + 20);
        let body = file_body(f, id, start, count, FileCheck::Unchanged, v);
        let (got, clean) = drain(body, || {}).await;
        assert!(clean);
        assert_eq!(got, bytes[start as usize..(start + count) as usize]);
        assert_eq!(ok.load(Ordering::SeqCst), 1);
    }
}
