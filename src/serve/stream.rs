//! Streaming a sealed blob into a response body, in bounded chunks. A full download is
//! re-hashed on the way out (chain of custody: verify on every retrieval); if the bytes no
//! longer match the manifest the stream ends with an error, which aborts the response so
//! the client never mistakes a damaged blob for a whole one.

use std::io;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::store::backend::BlobReader;
use tokio_util::io::ReaderStream;

const CHUNK: usize = 256 << 10;

/// A body streaming what `reader` yields (the requested bytes of a blob); with `verify`,
/// the SHA-256 of what was sent must equal it (hex) or the stream fails at its end.
pub async fn blob_body(reader: BlobReader, verify: Option<String>) -> io::Result<Body> {
    let reader = ReaderStream::with_capacity(reader, CHUNK);
    let Some(expected) = verify else {
        return Ok(Body::from_stream(reader));
    };
    struct State {
        inner: ReaderStream<BlobReader>,
        hasher: Option<Sha256>,
        expected: String,
    }
    let state = State {
        inner: reader,
        hasher: Some(Sha256::new()),
        expected,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        match st.inner.next().await {
            Some(Ok(chunk)) => {
                if let Some(h) = st.hasher.as_mut() {
                    h.update(&chunk);
                }
                Some((Ok::<Bytes, io::Error>(chunk), st))
            }
            Some(Err(e)) => {
                st.hasher = None;
                Some((Err(e), st))
            }
            None => {
                let hasher = st.hasher.take()?;
                let got = hex::encode(hasher.finalize());
                if got == st.expected {
                    None
                } else {
                    Some((
                        Err(io::Error::other(format!(
                            "sealed blob changed on disk: sha256 {got}, manifest says {}",
                            st.expected
                        ))),
                        st,
                    ))
                }
            }
        }
    });
    Ok(Body::from_stream(stream))
}
