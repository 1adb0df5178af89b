//! Streaming a sealed blob into a response body, in bounded chunks. A full download is
//! re-hashed on the way out (chain of custody: verify on every retrieval) and its last
//! chunk is held back until the digest matched: if the bytes no longer match the manifest
//! the body fails before its end, so the client never mistakes a damaged blob for a whole
//! one.

use std::io;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::store::backend::BlobReader;
use tokio_util::io::ReaderStream;

const CHUNK: usize = 256 << 10;

/// A body streaming what `reader` yields (the requested bytes of a blob).
///
/// With `verify` (the hex SHA-256 the bytes must have), the last chunk is held back until
/// the digest is known: on a match it is sent and `on_verified` runs; on a mismatch the
/// body fails before its end, so the client sees fewer bytes than `Content-Length` (HTTP/1.1,
/// the connection is cut) or a reset stream (HTTP/2), never a clean end, and
/// `on_mismatch` runs.
pub fn blob_body(reader: BlobReader, verify: Option<Verify>) -> Body {
    let reader = ReaderStream::with_capacity(reader, CHUNK);
    let Some(verify) = verify else {
        return Body::from_stream(reader);
    };
    struct State {
        inner: ReaderStream<BlobReader>,
        hasher: Sha256,
        held: Option<Bytes>,
        verify: Option<Verify>,
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
                    let verify = st.verify.take()?;
                    let got = hex::encode(st.hasher.clone().finalize());
                    if got == verify.sha256 {
                        (verify.on_verified)();
                        return st.held.take().map(|last| (Ok(last), st));
                    }
                    (verify.on_mismatch)();
                    st.held = None;
                    return Some((
                        Err(io::Error::other(format!(
                            "sealed blob changed: sha256 {got}, manifest says {}",
                            verify.sha256
                        ))),
                        st,
                    ));
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// What a verified body checks and whom it tells.
pub struct Verify {
    /// Expected SHA-256 (hex) of all the bytes.
    pub sha256: String,
    /// Runs when the bytes matched (before the last chunk is released).
    pub on_verified: Box<dyn FnOnce() + Send>,
    /// Runs when they did not.
    pub on_mismatch: Box<dyn FnOnce() + Send>,
}
