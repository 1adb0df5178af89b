//! Whole TLS records: a write buffer between hyper's connection (HTTP/1.1 and HTTP/2) and
//! the TLS stream.
//!
//! A client reading a download pays per TLS record (a read and a decryption set-up each),
//! so a body should go out in full 16 KiB records, as nginx's does. Two things break them
//! up on the way into rustls, and this layer undoes both:
//!
//! - rustls takes plaintext up to its buffer limit *less the ciphertext it still holds*:
//!   while the socket is full (the usual state of a download faster than its client), each
//!   write is cut at an arbitrary byte and its last record is a part-record. Here TLS is
//!   first made to send what it holds (a flush, which waits for the socket as OpenSSL's
//!   retried write does), then handed at most [`CAP`] bytes in whole records, all of which
//!   it takes. A large write (an HTTP/1.1 body chunk) goes straight from the caller's
//!   buffer this way, without a copy.
//!
//! - HTTP/2 sends a body as frames of at most 16 KiB (the client's SETTINGS_MAX_FRAME_SIZE,
//!   16,384 for curl and most clients), each a 9-byte head and its payload, and the `h2`
//!   crate flushes after each one. Straight into rustls, every frame becomes two TLS
//!   records, a full one and a 9-byte one, and the client pays a record (and a read) for
//!   those 9 bytes: curl makes half again as many reads from ckvault as from nginx for the
//!   same blob.
//!
//! So smaller writes are gathered here and handed to TLS in whole records (multiples of 16 KiB).
//! A flush with a part-record left over is *deferred once*: the task is woken and the flush
//! reported done, so the frames the connection writes in the same turn join the same
//! records. The bytes held back are written, whole, by whichever comes first: a second
//! flush with nothing written since, a read (the connection turns to its peer), a full
//! buffer, or shutdown. The connection task always does one of these when it is polled
//! again, and the wake-up makes sure it is; so nothing waits for more than one turn of the
//! task, and at most one part-record goes out per turn instead of one per frame.
//!
//! Memory per connection: at most [`CAP`] bytes held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest TLS record's plaintext.
const RECORD: usize = 16_384;
/// Plaintext held before whole records are written out, and the most handed to TLS at
/// once: three records' ciphertext (49,218 bytes) leaves in one write that loopback does
/// not split into two segments (it cuts at 64 KiB), so a client on the same machine never
/// reads one record in two pieces. (Four records, 65,624 bytes, were cut: curl made 1,250
/// more reads for a 347 MiB download than from nginx; with three, as many.) It also stays
/// under rustls's 64 KiB buffer limit, so TLS takes all of it.
pub(crate) const CAP: usize = 3 * RECORD;

/// A stream whose writes reach `inner` in whole TLS records (see the module doc); with
/// `enabled` false, a plain pass-through.
pub(crate) struct Coalesce<S> {
    inner: S,
    enabled: bool,
    buf: BytesMut,
    /// A flush was reported done while bytes were held back.
    owed: bool,
}

impl<S> Coalesce<S> {
    /// Wraps `inner`, gathering writes only if `enabled` (a pass-through otherwise).
    pub(crate) fn new(inner: S, enabled: bool) -> Self {
        Self {
            inner,
            enabled,
            buf: BytesMut::new(),
            owed: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes the held bytes to `inner`: all of them, or only whole records.
    fn drain(&mut self, cx: &mut Context<'_>, all: bool) -> Poll<io::Result<()>> {
        loop {
            let want = if all {
                self.buf.len()
            } else {
                self.buf.len() / RECORD * RECORD
            };
            if want == 0 {
                return Poll::Ready(Ok(()));
            }
            let want = want.min(CAP);
            // TLS first sends what it holds, so it takes all of `want` in whole records.
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[..want]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
        }
    }

    /// Makes room for a write: at [`CAP`], whole records go out first.
    fn room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.len() >= CAP {
            ready!(self.drain(cx, false))?;
        }
        self.owed = false;
        Poll::Ready(Ok(CAP.saturating_sub(self.buf.len())))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.owed {
            // The connection turned to its peer: what it wrote goes out now. If the socket
            // is full, its readiness wakes the task and the next read or flush goes on.
            match this.drain(cx, true) {
                Poll::Ready(Ok(())) => {
                    this.owed = false;
                    if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.is_empty() && data.len() >= RECORD {
            // Whole records straight from the caller's buffer: no copy.
            let whole = data.len().min(CAP) / RECORD * RECORD;
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.owed = false;
            return Pin::new(&mut this.inner).poll_write(cx, data.get(..whole).unwrap_or_default());
        }
        let room = ready!(this.room(cx))?;
        let n = room.min(data.len());
        this.buf
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && this.buf.is_empty()
            && first.len() >= RECORD
        {
            return Pin::new(this).poll_write(cx, first);
        }
        let mut room = ready!(this.room(cx))?;
        let mut n = 0;
        for b in bufs {
            let take = room.min(b.len());
            this.buf
                .extend_from_slice(b.get(..take).unwrap_or_default());
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.enabled || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() {
            if !this.owed {
                // Deferred once: whole records out now, the rest after this turn.
                match this.drain(cx, false) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
                this.owed = true;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(this.drain(cx, true))?;
        }
        this.owed = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx, true))?;
        this.owed = false;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records each write's size; reads see nothing.
    #[derive(Clone, Default)]
    struct Sink {
        writes: Arc<Mutex<Vec<usize>>>,
        flushes: Arc<Mutex<usize>>,
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(data.len());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.flushes.lock().unwrap() += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One HTTP/2 DATA frame as `h2` writes it: head and payload in one vectored write,
    /// then a flush.
    async fn frame(s: &mut Coalesce<Sink>) {
        let head = [0u8; 9];
        let payload = vec![1u8; RECORD];
        let mut slices = [io::IoSlice::new(&head), io::IoSlice::new(&payload)];
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = s.write_vectored(bufs).await.unwrap();
            io::IoSlice::advance_slices(&mut bufs, n);
        }
        s.flush().await.unwrap();
    }

    #[tokio::test]
    async fn frames_in_one_turn_reach_tls_as_whole_records() {
        let sink = Sink::default();
        let mut s = Coalesce::new(sink.clone(), true);
        for _ in 0..10 {
            frame(&mut s).await;
        }
        // Everything written so far went out in whole records only.
        let written: Vec<usize> = sink.writes.lock().unwrap().clone();
        assert!(!written.is_empty());
        assert!(written.iter().all(|n| n % RECORD == 0), "{written:?}");
        // The next turn's flush (nothing written since) sends the rest.
        s.flush().await.unwrap();
        let total: usize = sink.writes.lock().unwrap().iter().sum();
        assert_eq!(total, 10 * (RECORD + 9));
        assert!(*sink.flushes.lock().unwrap() >= 1);
    }

    #[tokio::test]
    async fn a_read_or_shutdown_sends_what_is_held() {
        let sink = Sink::default();
        let mut s = Coalesce::new(sink.clone(), true);
        frame(&mut s).await;
        let mut b = [0u8; 4];
        let _ = s.read(&mut b).await.unwrap();
        assert_eq!(
            sink.writes.lock().unwrap().iter().sum::<usize>(),
            RECORD + 9
        );

        let sink = Sink::default();
        let mut s = Coalesce::new(sink.clone(), true);
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(*sink.writes.lock().unwrap(), [5]);
    }

    #[tokio::test]
    async fn a_deferred_flush_wakes_its_task() {
        let sink = Sink::default();
        let mut s = Coalesce::new(sink.clone(), true);
        s.write_all(b"x").await.unwrap();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct W(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for W {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = std::task::Waker::from(Arc::new(W(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut s).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
        assert!(sink.writes.lock().unwrap().is_empty(), "held for one turn");
        assert!(matches!(
            Pin::new(&mut s).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(*sink.writes.lock().unwrap(), [1]);
    }

    /// rustls as this layer sees it: each write takes at most its buffer limit less what it
    /// still holds, and sends only part of what it holds (a socket that is always full);
    /// a flush sends everything. Records the plaintext each write took.
    #[derive(Default)]
    struct FullSocketTls {
        held: usize,
        took: Vec<usize>,
    }

    impl AsyncWrite for FullSocketTls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            // rustls's default buffer limit.
            let n = data.len().min((64 << 10) - self.held);
            self.held += n;
            self.held -= self.held / 3; // part of it reached the socket
            self.took.push(n);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.held = 0;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_body_reaches_tls_in_whole_records_while_the_socket_is_full() {
        // An HTTP/1.1 response: a head, then body chunks of 256 KiB, the last one short.
        let mut s = Coalesce::new(FullSocketTls::default(), true);
        s.write_all(&[b'h'; 300]).await.unwrap();
        for _ in 0..8 {
            s.write_all(&vec![0u8; 256 << 10]).await.unwrap();
        }
        s.write_all(&[1u8; 5000]).await.unwrap();
        s.flush().await.unwrap();
        s.flush().await.unwrap();
        let took = &s.inner.took;
        let (last, whole) = took.split_last().unwrap();
        assert!(
            whole.iter().all(|n| n % RECORD == 0 && *n > 0),
            "every write but the last took whole records: {took:?}"
        );
        assert_eq!(
            whole.iter().sum::<usize>() + last,
            300 + 8 * (256 << 10) + 5000
        );
        // Without the flush before each write, this TLS would cut the records.
        let mut raw = FullSocketTls::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let data = vec![0u8; CAP];
        for _ in 0..4 {
            let _ = Pin::new(&mut raw).poll_write(&mut cx, &data);
        }
        assert!(raw.took.iter().any(|n| n % RECORD != 0), "{:?}", raw.took);
    }

    #[tokio::test]
    async fn disabled_it_passes_writes_through() {
        let sink = Sink::default();
        let mut s = Coalesce::new(sink.clone(), false);
        s.write_all(b"abc").await.unwrap();
        assert_eq!(*sink.writes.lock().unwrap(), [3]);
    }
}
