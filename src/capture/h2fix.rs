//! Accepting every request the runtime accepts: several stock gRPC clients (grpcio, the
//! C-core gRPC behind Python, C++ and Ruby) send the unix socket's path as the HTTP/2
//! `:authority` (`/run/ckvault/cri.sock`). containerd and CRI-O ignore it; the `h2` server
//! under the proxy rejects the stream (RST_STREAM PROTOCOL_ERROR) before any of ckvault's
//! code runs. [`AuthorityFix`] sits between the client's socket and the HTTP/2 server:
//!
//! - it follows the frames the client sends and decodes every header block with the
//!   client's HPACK state (it must, to keep that state);
//! - until a block carries an `:authority` that is not a URI authority, every byte passes
//!   through unchanged (the kubelet's Go client never needs more);
//! - from that block on, each header block of the connection is re-encoded as literal
//!   fields without indexing (so it leans on no table state the server lacks), the bad
//!   authority replaced by `localhost`, and sent as one HEADERS frame plus CONTINUATIONs.
//!
//! Bounded: a frame over 1 MiB, a header block over 1 MiB, or one that does not decode
//! closes the connection with an I/O error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest frame payload and header block accepted.
const MAX: usize = 1 << 20;
/// Largest frame we emit (the HTTP/2 default SETTINGS_MAX_FRAME_SIZE).
const OUT_FRAME: usize = 16_384;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A header block being gathered (HEADERS, then CONTINUATION frames).
struct Block {
    stream: u32,
    end_stream: bool,
    raw: BytesMut,
    fragment: BytesMut,
}

/// A client connection whose header blocks are repaired where their `:authority` is not
/// a URI authority; see the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    inbuf: BytesMut,
    out: BytesMut,
    preface_left: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    rewriting: bool,
    eof: bool,
    scratch: Box<[u8]>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted client connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(64 << 10);
        Self {
            inner,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            preface_left: PREFACE.len(),
            block: None,
            decoder,
            rewriting: false,
            eof: false,
            scratch: vec![0u8; 64 << 10].into_boxed_slice(),
        }
    }

    /// Whether a block of this connection has been re-encoded.
    pub fn rewriting(&self) -> bool {
        self.rewriting
    }

    /// Moves every complete unit (preface, frame) from `inbuf` to `out`; `Ok(true)` if it
    /// produced anything.
    fn process(&mut self) -> io::Result<bool> {
        let before = self.out.len();
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.inbuf.len());
            let done = PREFACE.len() - self.preface_left;
            if self.inbuf.get(..n) != PREFACE.get(done..done + n) {
                return Err(bad("not an HTTP/2 connection preface"));
            }
            self.out.extend_from_slice(&self.inbuf.split_to(n));
            self.preface_left -= n;
        }
        while self.preface_left == 0 && self.inbuf.len() >= 9 {
            let h = &self.inbuf[..9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if len > MAX {
                return Err(bad(format!("HTTP/2 frame of {len} bytes")));
            }
            if self.inbuf.len() < 9 + len {
                break;
            }
            let frame = self.inbuf.split_to(9 + len);
            self.frame(frame)?;
        }
        Ok(self.out.len() > before)
    }

    fn frame(&mut self, frame: BytesMut) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[9..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut p = payload;
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    pad = usize::from(*p.first().ok_or_else(|| bad("empty padded HEADERS"))?);
                    p = &p[1..];
                }
                if flags & PRIORITY != 0 {
                    p = p.get(5..).ok_or_else(|| bad("short HEADERS priority"))?;
                }
                let fragment = p
                    .get(
                        ..p.len()
                            .checked_sub(pad)
                            .ok_or_else(|| bad("HEADERS padding"))?,
                    )
                    .ok_or_else(|| bad("HEADERS padding"))?;
                let block = Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: BytesMut::from(fragment),
                    raw: frame.clone(),
                };
                if flags & END_HEADERS != 0 {
                    self.finish(block)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                if block.fragment.len() + payload.len() > MAX {
                    return Err(bad("HTTP/2 header block over 1 MiB"));
                }
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                if flags & END_HEADERS != 0
                    && let Some(block) = self.block.take()
                {
                    return self.finish(block);
                }
                Ok(())
            }
            (_, Some(_)) => Err(bad("HTTP/2 frame inside a header block")),
            (CONTINUATION, None) => Err(bad("HTTP/2 CONTINUATION without HEADERS")),
            _ => {
                self.out.extend_from_slice(&frame);
                Ok(())
            }
        }
    }

    /// Decodes a complete header block (keeping the client's HPACK state) and passes it on
    /// as it came or re-encoded.
    fn finish(&mut self, block: Block) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if size <= MAX {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| bad(format!("HPACK: {e:?}")))?;
        if size > MAX {
            return Err(bad("HTTP/2 header list over 1 MiB"));
        }
        let invalid = |v: &[u8]| hyper::http::uri::Authority::try_from(v).is_err();
        if !self.rewriting
            && fields
                .iter()
                .any(|(n, v)| n.as_slice() == b":authority" && invalid(v))
        {
            self.rewriting = true;
        }
        if !self.rewriting {
            self.out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let mut enc = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &fields {
            let value: &[u8] = if name.as_slice() == b":authority" && invalid(value) {
                b"localhost"
            } else {
                value
            };
            enc.push(0x00); // literal header field without indexing, new name
            put_string(&mut enc, name);
            put_string(&mut enc, value);
        }
        let mut chunks = enc.chunks(OUT_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let mut flags = if last { END_HEADERS } else { 0 };
            if first && block.end_stream {
                flags |= END_STREAM;
            }
            let kind = if first { HEADERS } else { CONTINUATION };
            let len = chunk.len();
            self.out.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.out.extend_from_slice(&block.stream.to_be_bytes());
            self.out.extend_from_slice(chunk);
            first = false;
            if last {
                return Ok(());
            }
        }
    }
}

/// An HPACK string literal (no Huffman coding).
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix under `first`'s high bits.
fn put_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.process()? {
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // The client closed: hand on what is left (an incomplete frame, which the
                // server reports as such).
                this.eof = true;
                let rest = this.inbuf.split();
                this.out.extend_from_slice(&rest);
                if let Some(b) = this.block.take() {
                    this.out.extend_from_slice(&b.raw);
                }
                continue;
            }
            this.inbuf.extend_from_slice(rb.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn literal_indexed(name: &[u8], value: &[u8]) -> Vec<u8> {
        // literal with incremental indexing, new name
        let mut v = vec![0x40];
        put_string(&mut v, name);
        put_string(&mut v, value);
        v
    }

    async fn run(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut fix = AuthorityFix::new(&input[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Decodes what the server would see: every header block of `bytes` (after the
    /// preface) with a fresh decoder.
    fn server_view(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        let mut frag = Vec::new();
        while rest.len() >= 9 {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut p = &rest[9..9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                if kind == HEADERS && flags & PADDED != 0 {
                    let pad = usize::from(p[0]);
                    p = &p[1..p.len() - pad];
                }
                if kind == HEADERS && flags & PRIORITY != 0 {
                    p = &p[5..];
                }
                frag.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    let mut fields = Vec::new();
                    d.decode_with_cb(&frag, |n, v| {
                        fields.push((
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        ))
                    })
                    .unwrap();
                    blocks.push(fields);
                    frag.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_good_authority_passes_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(literal_indexed(b":authority", b"localhost"));
        block.extend(literal_indexed(
            b":path",
            b"/runtime.v1.RuntimeService/Version",
        ));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        assert_eq!(run(input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn a_socket_path_authority_is_replaced_and_later_blocks_are_self_contained() {
        let mut input = PREFACE.to_vec();
        let mut b1 = vec![0x83, 0x86];
        b1.extend(literal_indexed(b":authority", b"/run/ckvault/cri.sock"));
        b1.extend(literal_indexed(
            b":path",
            b"/runtime.v1.RuntimeService/Version",
        ));
        b1.extend(literal_indexed(b"x-secret", b"kept"));
        // Split over HEADERS (padded, with priority) + CONTINUATION.
        let (a, b) = b1.split_at(7);
        let mut p = vec![3u8]; // pad length
        p.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        // A second request leaning on the client's dynamic table (indices 62..64).
        let b2 = vec![0x83, 0x86, 0xbe, 0xbf, 0xc0];
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
        let out = run(input).await.unwrap();
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            assert!(
                b.contains(&(":authority".into(), "localhost".into())),
                "{b:?}"
            );
            assert!(b.contains(&("x-secret".into(), "kept".into())), "{b:?}");
            assert!(
                b.contains(&(":path".into(), "/runtime.v1.RuntimeService/Version".into())),
                "{b:?}"
            );
        }
    }

    #[tokio::test]
    async fn hostile_frames_close_the_connection() {
        for input in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            [
                PREFACE,
                &frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f])[..],
            ]
            .concat(),
            [PREFACE, &frame(CONTINUATION, END_HEADERS, 1, &[0x83])[..]].concat(),
            [
                PREFACE,
                &frame(HEADERS, 0, 1, &[0x83])[..],
                &frame(0, 0, 1, b"x")[..],
            ]
            .concat(),
            [
                PREFACE,
                &frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x83])[..],
            ]
            .concat(),
            [PREFACE, &[0x20, 0, 0, 0, 0, 0, 0, 0, 1][..]].concat(),
        ] {
            assert!(run(input).await.is_err());
        }
    }
}
