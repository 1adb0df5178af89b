//! The CRI proxy's wire: each client connection is relayed to a connection of its own to
//! the runtime as HTTP/2 *frames*, not terminated. Bytes from the runtime pass through
//! untouched (only frame boundaries are followed); frames from the client pass through
//! untouched too, except:
//!
//! - every client header block is decoded with the client's HPACK state (it must be, to
//!   know each stream's `:path` and to keep that state; [`super::hpack`] does it cheaply);
//! - a request whose `:path` is not in canonical form ([`super::method`]: exactly one,
//!   `/service/method`) is *refused*: answered UNIMPLEMENTED here and never forwarded, so
//!   no spelling the runtime might route otherwise than we read it gets past;
//! - a stream whose method is `CheckpointContainer` (and, when a rule captures before a
//!   stop, [`RelayLimits::intercept_stops`], `StopContainer` and `StopPodSandbox`) is
//!   *intercepted*: its HEADERS, DATA,
//!   WINDOW_UPDATE, PRIORITY and RST_STREAM frames never reach the runtime; the request is
//!   handed to `on_checkpoint` and its answer written to the client as frames of our own,
//!   header blocks as HPACK literals without indexing (the client's HPACK table stays as
//!   the runtime's encoder left it), inserted only between the runtime's frames and never
//!   inside one of its header blocks;
//! - since the runtime's HPACK decoder never saw the intercepted block, every later client
//!   header block is re-encoded as literals without indexing (leaning on no dynamic-table
//!   state the runtime lacks);
//! - connection flow control stays balanced: the client's DATA on an intercepted stream is
//!   returned to it at once with WINDOW_UPDATEs of our own, and the connection
//!   WINDOW_UPDATEs the client sends for DATA we wrote are not passed on to the runtime.
//!
//! So every request the runtime accepts is accepted (grpcio's socket-path `:authority`
//! included: the runtime sees it as sent), unary, streaming and unknown methods alike, and a
//! cheap call costs two socket hops and a frame-header walk, not an HTTP/2 termination.
//!
//! Bounded: a client frame over 1 MiB, a header block over 1 MiB, one that does not decode,
//! or an intercepted request body over 1 MiB closes the connection; intercepted requests
//! beyond [`RelayLimits`] (per connection arriving, in all held) are answered
//! RESOURCE_EXHAUSTED at once, so a client cannot make the relay buffer without bound, and
//! one that has not arrived whole within 30 s is answered DEADLINE_EXCEEDED and its place
//! given back. A stop beyond the limits is not refused: it is relayed untouched (the stop
//! goes on, without a capture before it).
//!
//! Both sockets are watched for readability only ([`Wire`]): writes go straight to the
//! socket and wait for room only when it is full. Watching for writability too (as tokio's
//! own streams do) wakes the relay each time a peer reads what it was sent, for nothing:
//! two wake-ups per call on top of the two the hop needs.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cri_metrics::count;

use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::Shutdown;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::Code;

use super::cri::GrpcStatus;
use tracing::Instrument;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest client frame payload, header block and intercepted body accepted.
const MAX: usize = 1 << 20;
/// Largest frame we emit (the HTTP/2 minimum of SETTINGS_MAX_FRAME_SIZE).
const OUT_FRAME: usize = 16_384;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY_FRAME: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
/// How long an intercepted request may take to arrive whole before it is answered
/// DEADLINE_EXCEEDED and its place given back.
const PENDING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Which call a stream intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `CheckpointContainer`.
    Checkpoint,
    /// `StopContainer` or `StopPodSandbox`, held for a capture before it.
    Stop(super::method::Stop),
}

impl Call {
    /// The method's name, for messages.
    fn method(self) -> &'static str {
        match self {
            Self::Checkpoint => "CheckpointContainer",
            Self::Stop(super::method::Stop::Container) => "StopContainer",
            Self::Stop(super::method::Stop::PodSandbox) => "StopPodSandbox",
        }
    }
}

/// An intercepted call: what the client asked (the gRPC body, its `grpc-timeout`).
#[derive(Debug, Clone)]
pub struct Intercepted {
    /// Which call.
    pub call: Call,
    /// The request body (gRPC length-prefixed message).
    pub body: Bytes,
    /// The client's `grpc-timeout` header, if any.
    pub grpc_timeout: Option<String>,
}

/// The answer to an intercepted call: `Ok(message bytes)` (a gRPC-framed response body)
/// or `Err(status)`.
pub(crate) type Answer = Result<Bytes, super::cri::GrpcStatus>;

/// How much intercepted work the relay holds: CheckpointContainer requests still arriving
/// on one connection, and calls held (arriving or being answered) over all connections,
/// each a permit of `intercepted`. A request beyond either is answered RESOURCE_EXHAUSTED
/// at once and never buffered.
#[derive(Clone)]
pub(crate) struct RelayLimits {
    /// Requests arriving at once on one connection.
    pub max_pending_per_connection: usize,
    /// Calls held at once over all connections.
    pub intercepted: Arc<tokio::sync::Semaphore>,
    /// Intercept `StopContainer` and `StopPodSandbox` too (a rule captures before a stop);
    /// without it they are relayed untouched, at no cost.
    pub intercept_stops: bool,
    /// The proxy's counters.
    pub metrics: Arc<super::cri_metrics::CriMetrics>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        let cri = crate::config::CriConfig::default();
        Self {
            max_pending_per_connection: cri.max_pending_per_connection,
            intercepted: Arc::new(tokio::sync::Semaphore::new(cri.max_intercepted)),
            intercept_stops: false,
            metrics: Arc::default(),
        }
    }
}

/// What the relay calls for an intercepted stream.
pub(crate) type Handler =
    Arc<dyn Fn(Intercepted) -> futures_util::future::BoxFuture<'static, Answer> + Send + Sync>;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
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

/// A header block as literals without indexing, as HEADERS + CONTINUATION frames.
fn header_frames(out: &mut BytesMut, stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
    let mut enc = Vec::new();
    for (name, value) in fields {
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
        if first && end_stream {
            flags |= END_STREAM;
        }
        frame_header(
            out,
            chunk.len(),
            if first { HEADERS } else { CONTINUATION },
            flags,
            stream,
        );
        out.extend_from_slice(chunk);
        first = false;
        if last {
            return;
        }
    }
}

/// The frames answering an intercepted stream.
fn answer_frames(stream: u32, answer: &Answer) -> (BytesMut, u64) {
    let mut out = BytesMut::new();
    let mut data = 0u64;
    match answer {
        Ok(body) => {
            header_frames(
                &mut out,
                stream,
                &[(b":status", b"200"), (b"content-type", b"application/grpc")],
                false,
            );
            for chunk in body.chunks(OUT_FRAME) {
                frame_header(&mut out, chunk.len(), DATA, 0, stream);
                out.extend_from_slice(chunk);
                data += chunk.len() as u64;
            }
            header_frames(&mut out, stream, &[(b"grpc-status", b"0")], true);
        }
        Err(status) => {
            let code = (status.code as i32).to_string();
            let mut message = super::cri::percent_encode(&status.message);
            message.truncate(1024);
            header_frames(
                &mut out,
                stream,
                &[
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", code.as_bytes()),
                    (b"grpc-message", message.as_bytes()),
                ],
                true,
            );
        }
    }
    (out, data)
}

fn window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    frame_header(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

/// A client header block being gathered (HEADERS, then CONTINUATION frames).
struct Block {
    stream: u32,
    end_stream: bool,
    raw: BytesMut,
    fragment: BytesMut,
}

/// An intercepted stream still receiving its request.
struct Pending {
    call: Call,
    body: BytesMut,
    grpc_timeout: Option<String>,
    /// Its place among the calls held (kept until it is answered).
    permit: tokio::sync::OwnedSemaphorePermit,
    /// When its headers arrived.
    since: std::time::Instant,
}

/// The client-to-runtime direction.
struct Up {
    preface_left: usize,
    block: Option<Block>,
    decoder: super::hpack::Decoder,
    rewriting: bool,
    /// The highest stream the client has opened: a header block on a higher one opens a
    /// request, on a lower or equal one it is a trailer block.
    last_stream: u32,
    pending: HashMap<u32, Pending>,
    /// Intercepted streams (answered by us): their stray frames are dropped.
    ours: std::collections::HashSet<u32>,
    /// DATA bytes we wrote to the client whose connection WINDOW_UPDATEs are not the
    /// runtime's to receive.
    owed: Arc<AtomicU64>,
    inject: mpsc::UnboundedSender<Bytes>,
    handler: Handler,
    limits: RelayLimits,
}

impl Up {
    /// A connection's client side before its preface: answers of ours go to `inject`.
    fn new(inject: mpsc::UnboundedSender<Bytes>, handler: Handler, limits: RelayLimits) -> Self {
        Self {
            preface_left: PREFACE.len(),
            block: None,
            decoder: super::hpack::Decoder::new(),
            rewriting: false,
            last_stream: 0,
            pending: HashMap::new(),
            ours: std::collections::HashSet::new(),
            owed: Arc::new(AtomicU64::new(0)),
            inject,
            handler,
            limits,
        }
    }

    /// Walks the complete units of `inbuf`, appending what goes to the runtime to `out`.
    fn process(&mut self, inbuf: &mut BytesMut, out: &mut BytesMut) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(inbuf.len());
            let done = PREFACE.len() - self.preface_left;
            if inbuf.get(..n) != PREFACE.get(done..done + n) {
                return Err(bad("not an HTTP/2 connection preface"));
            }
            out.extend_from_slice(&inbuf.split_to(n));
            self.preface_left -= n;
        }
        while self.preface_left == 0 && inbuf.len() >= 9 {
            let len = (usize::from(inbuf[0]) << 16)
                | (usize::from(inbuf[1]) << 8)
                | usize::from(inbuf[2]);
            if len > MAX {
                return Err(bad(format!("HTTP/2 frame of {len} bytes")));
            }
            if inbuf.len() < 9 + len {
                break;
            }
            let frame = inbuf.split_to(9 + len);
            self.frame(frame, out)?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: BytesMut, out: &mut BytesMut) -> io::Result<()> {
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
                    self.finish(block, out)
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
                    return self.finish(block, out);
                }
                Ok(())
            }
            (_, Some(_)) => Err(bad("HTTP/2 frame inside a header block")),
            (CONTINUATION, None) => Err(bad("HTTP/2 CONTINUATION without HEADERS")),
            (DATA, None) if self.ours.contains(&stream) => {
                // Return the client's flow-control credit at once: the runtime never sees
                // these bytes, so it would never return it.
                let mut credit = BytesMut::new();
                if !payload.is_empty() {
                    window_update(&mut credit, 0, payload.len() as u32);
                    window_update(&mut credit, stream, payload.len() as u32);
                    let _ = self.inject.send(credit.freeze());
                }
                let mut p = payload;
                if flags & PADDED != 0 {
                    let pad = usize::from(*p.first().ok_or_else(|| bad("empty padded DATA"))?);
                    p = p
                        .get(
                            1..p.len()
                                .checked_sub(pad)
                                .ok_or_else(|| bad("DATA padding"))?,
                        )
                        .ok_or_else(|| bad("DATA padding"))?;
                }
                if let Some(pending) = self.pending.get_mut(&stream) {
                    if pending.body.len() + p.len() > MAX {
                        return Err(bad("an intercepted request over 1 MiB"));
                    }
                    pending.body.extend_from_slice(p);
                }
                if flags & END_STREAM != 0 {
                    self.dispatch(stream);
                }
                Ok(())
            }
            (WINDOW_UPDATE, None) if stream == 0 => {
                let inc = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
                    .ok_or_else(|| bad("short WINDOW_UPDATE"))?;
                let owed = self.owed.load(Ordering::Relaxed);
                if owed == 0 {
                    out.extend_from_slice(&frame);
                    return Ok(());
                }
                let take = owed.min(u64::from(inc));
                self.owed.fetch_sub(take, Ordering::Relaxed);
                let left = u64::from(inc) - take;
                if left > 0 {
                    window_update(out, 0, left as u32);
                }
                Ok(())
            }
            (WINDOW_UPDATE | PRIORITY_FRAME | RST_STREAM, None) if self.ours.contains(&stream) => {
                if kind == RST_STREAM {
                    // The client gave up on it; the capture itself goes on.
                    self.pending.remove(&stream);
                }
                Ok(())
            }
            _ => {
                out.extend_from_slice(&frame);
                Ok(())
            }
        }
    }

    /// Decodes a complete header block (keeping the client's HPACK state); intercepts it,
    /// or passes it on as it came or re-encoded.
    fn finish(&mut self, block: Block, out: &mut BytesMut) -> io::Result<()> {
        // Only the fields of a block that will be re-encoded are kept; of the others, the
        // two the relay needs (`:path`, `grpc-timeout`).
        let keep = self.rewriting;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        // Every `:path` of the block, in order (bounded by the block's own 1 MiB).
        let mut paths: Vec<Vec<u8>> = Vec::new();
        let mut grpc_timeout = None;
        self.decoder
            .decode(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if name == b":path" {
                    if size <= MAX {
                        paths.push(value.to_vec());
                    }
                } else if name == b"grpc-timeout" {
                    grpc_timeout = Some(String::from_utf8_lossy(value).into_owned());
                }
                if keep && size <= MAX {
                    fields.push((name.to_vec(), value.to_vec()));
                }
            })
            .map_err(|e| bad(format!("HPACK: {e}")))?;
        if size > MAX {
            return Err(bad("HTTP/2 header list over 1 MiB"));
        }
        if self.ours.contains(&block.stream) {
            // Trailers of an intercepted request (gRPC clients send none): dropped.
            if block.end_stream {
                self.dispatch(block.stream);
            }
            return Ok(());
        }
        let opens = block.stream > self.last_stream;
        if !opens {
            // Trailers of a relayed request: they must not name a method of their own.
            if !paths.is_empty() {
                return Err(bad("a :path in a request's trailers"));
            }
        } else {
            self.last_stream = block.stream;
            count(&self.limits.metrics.calls);
        }
        let route = if opens {
            let refs: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
            super::method::route(&refs)
        } else {
            super::method::Route::Forward
        };
        if let super::method::Route::Refuse(why) = route {
            self.refuse(block.stream, why, paths.first().map(Vec::as_slice));
            return Ok(());
        }
        let call = match route {
            super::method::Route::Checkpoint => Some(Call::Checkpoint),
            super::method::Route::Stop(stop) if self.limits.intercept_stops => {
                Some(Call::Stop(stop))
            }
            _ => None,
        };
        if let Some(call) = call {
            let permit = if self.pending.len() >= self.limits.max_pending_per_connection {
                Err(
                    "intercepted requests arriving on this connection at once ([cri] max_pending_per_connection)",
                )
            } else {
                self.limits
                    .intercepted
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| "intercepted calls in progress ([cri] max_intercepted)")
            };
            let permit = match (permit, call) {
                (Ok(p), _) => p,
                (Err(limit), Call::Stop(_)) => {
                    // A stop is never refused: past the limits it goes on, uncaptured.
                    count(&self.limits.metrics.stops_past_limits);
                    tracing::warn!(
                        stream = block.stream,
                        method = call.method(),
                        "proxy: too many {limit}; this stop is relayed without a capture before it"
                    );
                    return self.forward(block, fields, out);
                }
                (Err(limit), Call::Checkpoint) => {
                    count(&self.limits.metrics.intercepts_refused);
                    self.rewriting = true;
                    self.ours.insert(block.stream);
                    let answer: Answer = Err(GrpcStatus::new(
                        Code::ResourceExhausted,
                        format!("ckvault: too many {limit}; retry later"),
                    ));
                    let (frames, _) = answer_frames(block.stream, &answer);
                    let _ = self.inject.send(frames.freeze());
                    return Ok(());
                }
            };
            count(match call {
                Call::Checkpoint => &self.limits.metrics.checkpoints_intercepted,
                Call::Stop(_) => &self.limits.metrics.stops_held,
            });
            self.rewriting = true;
            self.ours.insert(block.stream);
            self.pending.insert(
                block.stream,
                Pending {
                    call,
                    body: BytesMut::new(),
                    grpc_timeout,
                    permit,
                    since: std::time::Instant::now(),
                },
            );
            if block.end_stream {
                self.dispatch(block.stream);
            }
            return Ok(());
        }
        self.forward(block, fields, out)
    }

    /// Passes a relayed block on: as it came, or re-encoded once the runtime's HPACK
    /// decoder has missed a block of ours.
    fn forward(
        &mut self,
        block: Block,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        out: &mut BytesMut,
    ) -> io::Result<()> {
        if !self.rewriting {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let refs: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        header_frames(out, block.stream, &refs, block.end_stream);
        Ok(())
    }

    /// Answers a request whose method path the runtime might route otherwise than the
    /// relay reads it: a gRPC error of our own, nothing forwarded (the runtime never sees
    /// the stream; later frames of it are dropped).
    fn refuse(&mut self, stream: u32, why: super::method::Refusal, path: Option<&[u8]>) {
        // The runtime's HPACK decoder never saw this block.
        count(&self.limits.metrics.paths_refused);
        self.rewriting = true;
        self.ours.insert(stream);
        let shown = path.map(|p| {
            let head = String::from_utf8_lossy(p.get(..128).unwrap_or(p)).into_owned();
            crate::inspect::escape_control(&head).into_owned()
        });
        tracing::warn!(
            stream,
            path = shown.as_deref().unwrap_or("(none)"),
            why = %why,
            "proxy: refused a CRI call; not forwarded to the runtime"
        );
        let answer: Answer = Err(GrpcStatus::new(
            Code::Unimplemented,
            format!("ckvault: {why}; refused, not forwarded to the runtime"),
        ));
        let (frames, _) = answer_frames(stream, &answer);
        let _ = self.inject.send(frames.freeze());
    }

    /// Answers DEADLINE_EXCEEDED the intercepted requests still arriving after `limit`
    /// (a kubelet sends its small request whole at once) and gives their places back.
    fn expire(&mut self, limit: std::time::Duration) {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= limit)
            .map(|(stream, _)| *stream)
            .collect();
        for stream in late {
            let Some(p) = self.pending.remove(&stream) else {
                continue;
            };
            count(&self.limits.metrics.intercepts_expired);
            let answer: Answer = Err(GrpcStatus::new(
                Code::DeadlineExceeded,
                format!(
                    "ckvault: the {} request did not arrive whole within {}s",
                    p.call.method(),
                    limit.as_secs()
                ),
            ));
            let (frames, _) = answer_frames(stream, &answer);
            let _ = self.inject.send(frames.freeze());
        }
    }

    /// The request of an intercepted stream is complete: answer it on a task of its own.
    fn dispatch(&mut self, stream: u32) {
        let Some(p) = self.pending.remove(&stream) else {
            return;
        };
        let handler = self.handler.clone();
        let inject = self.inject.clone();
        let owed = self.owed.clone();
        let span = tracing::info_span!("stream", stream);
        tokio::spawn(
            async move {
                let _permit = p.permit;
                let answer = handler(Intercepted {
                    call: p.call,
                    body: p.body.freeze(),
                    grpc_timeout: p.grpc_timeout,
                })
                .await;
                let (frames, data) = answer_frames(stream, &answer);
                owed.fetch_add(data, Ordering::Relaxed);
                let _ = inject.send(frames.freeze());
            }
            .instrument(span),
        );
    }
}

/// Registers `socket` with the reactor for `interest` only.
///
/// tokio deprecates the safe `with_interest` for an `AsRawFd` whose descriptor could
/// change or close under it, and offers an `unsafe` one instead (this crate forbids unsafe
/// code). A `UnixStream` owns its descriptor until it is dropped, and the `AsyncFd` owns
/// the stream: the condition the unsafe one asks its caller to keep holds here.
#[allow(deprecated)]
fn watch(
    socket: std::os::unix::net::UnixStream,
    interest: Interest,
) -> io::Result<AsyncFd<std::os::unix::net::UnixStream>> {
    AsyncFd::with_interest(socket, interest)
}

/// One side's unix socket, watched for readability only (see the module doc).
struct Wire(AsyncFd<std::os::unix::net::UnixStream>);

/// Bytes read from a socket at a time.
const READ: usize = 64 << 10;

impl Wire {
    fn new(stream: UnixStream) -> io::Result<Arc<Self>> {
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        Ok(Arc::new(Self(watch(std, Interest::READABLE)?)))
    }

    /// Reads what the socket has into `scratch`: the byte count, 0 at its end.
    async fn read(&self, scratch: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|s| s.get_ref().read(scratch)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket (as tokio's streams assume): the
                    // next read waits for new bytes instead of trying once more for none.
                    if n > 0 && n < scratch.len() {
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, waiting for room only when the socket is full.
    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.0.get_ref().write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = data.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the socket has room: a duplicate descriptor is watched for writability
    /// for as long as that takes (its own epoll entry, removed when it is dropped).
    async fn writable(&self) -> io::Result<()> {
        let dup = self.0.get_ref().try_clone()?;
        let watched = watch(dup, Interest::WRITABLE)?;
        let _ready = watched.writable().await?;
        Ok(())
    }

    fn shutdown(&self) -> io::Result<()> {
        match self.0.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }
}

async fn client_to_runtime(client: Arc<Wire>, runtime: Arc<Wire>, mut up: Up) -> io::Result<()> {
    let mut scratch = vec![0u8; READ];
    let mut inbuf = BytesMut::with_capacity(READ);
    let mut out = BytesMut::with_capacity(READ);
    loop {
        // While requests are arriving, wake once a second to expire the late ones
        // (`Wire::read` loses nothing when it is dropped waiting).
        let n = tokio::select! {
            n = client.read(&mut scratch) => n?,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)), if !up.pending.is_empty() => {
                up.expire(PENDING_TIMEOUT);
                continue;
            }
        };
        if n == 0 {
            if !inbuf.is_empty() {
                // An incomplete frame: the runtime reports it as such.
                runtime.write_all(&inbuf).await?;
            }
            return runtime.shutdown();
        }
        inbuf.extend_from_slice(scratch.get(..n).unwrap_or_default());
        up.process(&mut inbuf, &mut out)?;
        if !out.is_empty() {
            runtime.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Follows the runtime's frame boundaries to know where frames of our own may go.
#[derive(Default)]
struct Boundaries {
    /// Bytes of the current frame's header seen so far (0..9).
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// Inside a header block (HEADERS or PUSH_PROMISE without END_HEADERS, until the
    /// CONTINUATION that ends it).
    in_block: bool,
}

impl Boundaries {
    fn walk(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len == 9 {
                let h = self.head;
                self.payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.head_len = 0;
                match h[3] {
                    HEADERS | PUSH_PROMISE => self.in_block = h[4] & END_HEADERS == 0,
                    CONTINUATION if h[4] & END_HEADERS != 0 => self.in_block = false,
                    _ => {}
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && !self.in_block
    }
}

async fn runtime_to_client(
    runtime: Arc<Wire>,
    client: Arc<Wire>,
    mut inject: mpsc::UnboundedReceiver<Bytes>,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ];
    let mut b = Boundaries::default();
    let mut injecting = true;
    loop {
        tokio::select! {
            biased;
            frames = inject.recv(), if injecting && b.at_boundary() => match frames {
                Some(f) => client.write_all(&f).await?,
                // Nobody left to answer (the client's side is gone).
                None => injecting = false,
            },
            n = runtime.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    // Answers still being made are lost with the connection; write what
                    // is queued, then close.
                    if b.at_boundary() {
                        while let Ok(f) = inject.try_recv() {
                            client.write_all(&f).await?;
                        }
                    }
                    return client.shutdown();
                }
                let got = buf.get(..n).unwrap_or_default();
                b.walk(got);
                client.write_all(got).await?;
                if b.at_boundary() {
                    while let Ok(f) = inject.try_recv() {
                        client.write_all(&f).await?;
                    }
                }
            }
        }
    }
}

/// Relays one client connection to a fresh connection to the runtime at `upstream`,
/// answering intercepted `CheckpointContainer` streams with `handler`.
pub(crate) async fn relay(
    client: UnixStream,
    upstream: &std::path::Path,
    handler: Handler,
    limits: RelayLimits,
) {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let span = tracing::info_span!(
        "connection",
        connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1
    );
    relay_connection(client, upstream, handler, limits)
        .instrument(span)
        .await
}

async fn relay_connection(
    client: UnixStream,
    upstream: &std::path::Path,
    handler: Handler,
    limits: RelayLimits,
) {
    let metrics = limits.metrics.clone();
    let _open = super::cri_metrics::OpenConnection::new(&metrics);
    let runtime = match UnixStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            count(&metrics.runtime_unreachable);
            tracing::warn!(
                upstream = %upstream.display(),
                error = %e,
                "proxy: cannot reach the runtime"
            );
            return;
        }
    };
    let (client, runtime) = match (Wire::new(client), Wire::new(runtime)) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "proxy: cannot watch a connection");
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Up::new(tx, handler, limits);
    let upward = tokio::spawn(
        client_to_runtime(client.clone(), runtime.clone(), up).instrument(tracing::Span::current()),
    );
    let down = runtime_to_client(runtime, client, rx);
    // The connection ends when the runtime's side does (the client closing its side
    // makes the runtime close).
    let _ = down.await;
    upward.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> (Up, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Handler =
            Arc::new(|_| Box::pin(async { Err(GrpcStatus::new(Code::Internal, "test")) }));
        (Up::new(tx, handler, RelayLimits::default()), rx)
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = BytesMut::new();
        frame_header(&mut f, payload.len(), kind, flags, stream);
        f.extend_from_slice(payload);
        f.to_vec()
    }

    #[tokio::test]
    async fn hostile_client_frames_close_the_connection() {
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
                &frame(DATA, 0, 1, b"x")[..],
            ]
            .concat(),
            [
                PREFACE,
                &frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x83])[..],
            ]
            .concat(),
            [PREFACE, &[0x20, 0, 0, 0, 0, 0, 0, 0, 1][..]].concat(),
            [PREFACE, &frame(WINDOW_UPDATE, 0, 0, &[0, 1])[..]].concat(),
        ] {
            let (mut up, _rx) = up();
            let mut inbuf = BytesMut::from(&input[..]);
            let mut out = BytesMut::new();
            let r = up.process(&mut inbuf, &mut out);
            // A short WINDOW_UPDATE is passed on while nothing is owed (the runtime
            // refuses it); everything else is refused here.
            if input.ends_with(&[0, 1]) {
                continue;
            }
            assert!(r.is_err(), "{input:?}");
        }
    }

    #[tokio::test]
    async fn an_intercepted_stream_is_answered_and_its_credit_returned() {
        let (mut up, mut rx) = up();
        let block = request_block(super::super::cri::CHECKPOINT_CONTAINER.as_bytes());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 2, 0x0a, 0]));
        let mut inbuf = BytesMut::from(&input[..]);
        let mut out = BytesMut::new();
        up.process(&mut inbuf, &mut out).unwrap();
        // Only the preface reached the runtime.
        assert_eq!(&out[..], PREFACE);
        let credit = rx.recv().await.unwrap();
        assert_eq!(credit.len(), 26, "two WINDOW_UPDATEs");
        let answer = rx.recv().await.unwrap();
        assert_eq!(answer[3], HEADERS);
        assert_eq!(answer[4], END_HEADERS | END_STREAM);
        // Later blocks are re-encoded (no reliance on the runtime's table).
        let mut inbuf = BytesMut::from(
            &frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                3,
                &request_block(b"/runtime.v1.RuntimeService/Version"),
            )[..],
        );
        out.clear();
        up.process(&mut inbuf, &mut out).unwrap();
        assert_eq!(out[3], HEADERS);
        assert_eq!(out[9], 0x00, "a literal without indexing");
    }

    /// A request header block (:method POST, :scheme http) with `paths` as its `:path`s.
    fn request_block_paths(paths: &[&[u8]]) -> Vec<u8> {
        let mut block = vec![0x83, 0x86];
        for path in paths {
            block.push(0x00);
            put_string(&mut block, b":path");
            put_string(&mut block, path);
        }
        block
    }

    fn request_block(path: &[u8]) -> Vec<u8> {
        request_block_paths(&[path])
    }

    #[tokio::test]
    async fn non_canonical_method_paths_are_answered_here_and_never_forwarded() {
        for paths in [
            vec![&b"runtime.v1.RuntimeService/CheckpointContainer"[..]],
            vec![b"//runtime.v1.RuntimeService/CheckpointContainer"],
            vec![
                b"/runtime.v1.RuntimeService/Version",
                b"/runtime.v1.RuntimeService/CheckpointContainer",
            ],
            vec![],
        ] {
            let (mut up, mut rx) = up();
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, END_HEADERS, 1, &request_block_paths(&paths)));
            input.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 2, 0x0a, 0]));
            let mut inbuf = BytesMut::from(&input[..]);
            let mut out = BytesMut::new();
            up.process(&mut inbuf, &mut out).unwrap();
            assert_eq!(
                &out[..],
                PREFACE,
                "{paths:?}: only the preface reaches the runtime"
            );
            let answer = rx.recv().await.unwrap();
            assert_eq!(answer[3], HEADERS);
            assert_eq!(answer[4], END_HEADERS | END_STREAM);
            let text = String::from_utf8_lossy(&answer);
            assert!(
                answer.windows(14).any(|w| w == b"grpc-status\x0212"),
                "UNIMPLEMENTED: {text}"
            );
            assert!(text.contains("not forwarded"), "{text}");
        }
    }

    #[tokio::test]
    async fn intercepted_requests_beyond_the_limits_are_refused_not_buffered() {
        // 8 arriving per connection, 12 held in all: on connection A, 10 unfinished
        // CheckpointContainer requests (1 KiB of body each) keep 8 and refuse 2; on B, 6
        // more keep 4 (the overall 12) and refuse 2.
        let limits = RelayLimits {
            max_pending_per_connection: 8,
            intercepted: Arc::new(tokio::sync::Semaphore::new(12)),
            intercept_stops: false,
            metrics: Arc::default(),
        };
        let handler: Handler =
            Arc::new(|_| Box::pin(async { Err(GrpcStatus::new(Code::Internal, "test")) }));
        let path = super::super::cri::CHECKPOINT_CONTAINER.as_bytes();
        let mut refused_total = 0;
        for (requests, kept) in [(10u32, 8usize), (6, 4)] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut up = Up::new(tx, handler.clone(), limits.clone());
            let mut input = PREFACE.to_vec();
            for i in 0..requests {
                let stream = 1 + 2 * i;
                input.extend(frame(HEADERS, END_HEADERS, stream, &request_block(path)));
                input.extend(frame(DATA, 0, stream, &[0u8; 1024]));
            }
            let mut inbuf = BytesMut::from(&input[..]);
            let mut out = BytesMut::new();
            up.process(&mut inbuf, &mut out).unwrap();
            assert_eq!(&out[..], PREFACE, "nothing reaches the runtime");
            assert_eq!(up.pending.len(), kept);
            let mut refused = 0;
            while let Ok(frames) = rx.try_recv() {
                if frames.windows(12).any(|w| w == b"grpc-status\x01") {
                    assert!(frames.windows(13).any(|w| w == b"grpc-status\x018"));
                    refused += 1;
                }
            }
            assert_eq!(refused, requests as usize - kept);
            refused_total += refused;
            // The connection keeps its requests (and permits) while it lives.
            std::mem::forget(up);
        }
        assert_eq!(refused_total, 4);
        assert_eq!(limits.intercepted.available_permits(), 0);
        let m = &limits.metrics;
        assert_eq!(m.intercepts_refused.load(Ordering::Relaxed), 4);
        assert_eq!(m.checkpoints_intercepted.load(Ordering::Relaxed), 12);
        assert_eq!(m.calls.load(Ordering::Relaxed), 16);
    }

    #[tokio::test]
    async fn stops_are_intercepted_only_when_asked_and_forwarded_past_the_limits() {
        let handler: Handler =
            Arc::new(|_| Box::pin(async { Err(GrpcStatus::new(Code::Internal, "test")) }));
        let stop = request_block(super::super::cri::STOP_CONTAINER.as_bytes());
        let sandbox = request_block(super::super::cri::STOP_POD_SANDBOX.as_bytes());
        for (intercept_stops, permits, intercepted) in
            [(false, 4, false), (true, 4, true), (true, 0, false)]
        {
            let limits = RelayLimits {
                max_pending_per_connection: 8,
                intercepted: Arc::new(tokio::sync::Semaphore::new(permits)),
                intercept_stops,
                metrics: Arc::default(),
            };
            let (tx, _rx) = mpsc::unbounded_channel();
            let mut up = Up::new(tx, handler.clone(), limits);
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, END_HEADERS, 1, &stop));
            input.extend(frame(HEADERS, END_HEADERS, 3, &sandbox));
            let mut inbuf = BytesMut::from(&input[..]);
            let mut out = BytesMut::new();
            up.process(&mut inbuf, &mut out).unwrap();
            let case = format!("intercept_stops {intercept_stops}, {permits} permits");
            if intercepted {
                assert_eq!(&out[..], PREFACE, "{case}");
                assert_eq!(up.pending.len(), 2, "{case}");
                assert!(matches!(
                    up.pending.get(&1).map(|p| p.call),
                    Some(Call::Stop(super::super::method::Stop::Container))
                ));
            } else {
                // Both blocks reach the runtime as they came: the stop goes on.
                let mut want = PREFACE.to_vec();
                want.extend(frame(HEADERS, END_HEADERS, 1, &stop));
                want.extend(frame(HEADERS, END_HEADERS, 3, &sandbox));
                assert_eq!(&out[..], &want[..], "{case}");
                assert!(up.pending.is_empty(), "{case}");
            }
        }
    }

    #[tokio::test]
    async fn requests_that_do_not_arrive_whole_in_time_are_answered_and_let_go() {
        let limits = RelayLimits {
            max_pending_per_connection: 8,
            intercepted: Arc::new(tokio::sync::Semaphore::new(2)),
            intercept_stops: false,
            metrics: Arc::default(),
        };
        let handler: Handler =
            Arc::new(|_| Box::pin(async { Err(GrpcStatus::new(Code::Internal, "test")) }));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut up = Up::new(tx, handler, limits.clone());
        let mut input = PREFACE.to_vec();
        for stream in [1, 3] {
            let block = request_block(super::super::cri::CHECKPOINT_CONTAINER.as_bytes());
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        }
        let mut inbuf = BytesMut::from(&input[..]);
        let mut out = BytesMut::new();
        up.process(&mut inbuf, &mut out).unwrap();
        assert_eq!(up.pending.len(), 2);
        assert_eq!(limits.intercepted.available_permits(), 0);
        up.expire(std::time::Duration::from_secs(3600));
        assert_eq!(up.pending.len(), 2, "not late yet");
        up.expire(std::time::Duration::ZERO);
        assert!(up.pending.is_empty());
        assert_eq!(
            limits.intercepted.available_permits(),
            2,
            "places given back"
        );
        for _ in 0..2 {
            let frames = rx.recv().await.unwrap();
            assert!(frames.windows(13).any(|w| w == b"grpc-status\x014"));
        }
        assert_eq!(limits.metrics.intercepts_expired.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_path_in_trailers_closes_the_connection() {
        let (mut up, _rx) = up();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &request_block(b"/runtime.v1.RuntimeService/Version"),
        ));
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &request_block(b"/runtime.v1.RuntimeService/CheckpointContainer"),
        ));
        let mut inbuf = BytesMut::from(&input[..]);
        let mut out = BytesMut::new();
        assert!(up.process(&mut inbuf, &mut out).is_err());
    }

    #[tokio::test]
    async fn a_full_socket_is_waited_for_and_nothing_is_lost() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Wire::new(a).unwrap(), Wire::new(b).unwrap());
        // Far more than a unix socket holds: the writer must wait for the reader.
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "the socket should have filled up");
        let mut got = Vec::new();
        let mut scratch = vec![0u8; READ];
        loop {
            let n = b.read(&mut scratch).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&scratch[..n]);
        }
        writer.await.unwrap();
        assert!(got == expect, "{} bytes of {}", got.len(), expect.len());
    }

    #[test]
    fn boundaries_follow_frames_split_anywhere() {
        let mut stream = BytesMut::new();
        frame_header(&mut stream, 3, HEADERS, 0, 1); // a block left open
        stream.extend_from_slice(b"abc");
        frame_header(&mut stream, 2, CONTINUATION, END_HEADERS, 1);
        stream.extend_from_slice(b"de");
        frame_header(&mut stream, 4, DATA, 0, 1);
        stream.extend_from_slice(b"wxyz");
        for split in 0..stream.len() {
            let mut b = Boundaries::default();
            b.walk(&stream[..split]);
            let mid = !b.at_boundary();
            b.walk(&stream[split..]);
            assert!(b.at_boundary(), "split at {split}");
            // Between HEADERS and its CONTINUATION is not a boundary.
            if split == 12 {
                assert!(mid);
            }
        }
    }

    #[test]
    fn answers_are_literal_header_blocks() {
        let (frames, data) = answer_frames(3, &Ok(Bytes::from_static(b"\0\0\0\0\0")));
        assert_eq!(data, 5);
        let mut d = loona_hpack::Decoder::new();
        let mut rest = &frames[..];
        let mut seen = Vec::new();
        while rest.len() >= 9 {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            if rest[3] == HEADERS {
                d.decode_with_cb(&rest[9..9 + len], |n, v| {
                    seen.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(&n),
                        String::from_utf8_lossy(&v)
                    ))
                })
                .unwrap();
            }
            rest = &rest[9 + len..];
        }
        assert_eq!(
            seen,
            [
                ":status=200",
                "content-type=application/grpc",
                "grpc-status=0"
            ]
        );
        // Literals without indexing leave the client's dynamic table empty: index 62 (the
        // first dynamic entry) does not resolve.
        assert!(d.decode(&[0xbe]).is_err());
    }
}
