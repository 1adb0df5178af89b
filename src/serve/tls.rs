//! TLS termination with our own accept loop (tokio-rustls + hyper), so that the verified
//! client certificate of each connection reaches the handlers as a [`ConnInfo`] request
//! extension (identity = subject CN, groups = subject O, as Kubernetes does). The loop
//! also owns the connection limits: handshake, request-head and idle timeouts and a cap on
//! open connections ([`ConnectionLimits`]), counted in [`Metrics`].
//!
//! Connections are served by connection threads ([`Shards`]), one single-threaded runtime
//! each, as nginx's workers: a connection, with every task it spawns (HTTP/2 streams), lives
//! on one thread, so handing a frame from a stream to its connection is a plain wake-up,
//! not a lock contended across cores and a futex. Each new connection goes to the thread
//! with the fewest open.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::metrics::Metrics;
use crate::config::ConnectionLimits;
use crate::policy::Principal;

/// What the handlers learn about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// Identity from a verified client certificate, if one was presented.
    pub cert_identity: Option<Principal>,
}

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// Builds the rustls server configuration: TLS 1.3 only unless `allow_tls12`, client
/// certificates verified against `client_ca` when given (optional, so token users can
/// connect without one; a presented certificate must verify).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    allow_tls12: bool,
) -> Result<ServerConfig, TlsError> {
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let mut config = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, e.to_string()))? {
                roots
                    .add(c.map_err(|e| pem_err(ca, e.to_string()))?)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key_der)?
        }
        None => builder
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The principal named by a client certificate: CN is the user, each O a group.
pub fn principal_from_cert(der: &[u8]) -> Option<Principal> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Principal {
        user,
        groups,
        via: "mtls",
    })
}

/// Accepts TLS connections until `shutdown` resolves, serving `app` on each within
/// `limits`: at most `max_connections` open (more are closed at once), a handshake within
/// `handshake_timeout`, an HTTP/1.1 request head within `header_timeout`, and a connection
/// with no request in progress and no bytes moving closed after `idle_timeout`. Every
/// refusal is counted in `metrics` and logged (at most every few seconds per kind).
/// Fails only if the connection threads cannot be started.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let shards = Shards::start(limits.threads)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(RefusalLog::default());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("ckvault: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let n = metrics.connections_refused.fetch_add(1, Ordering::Relaxed) + 1;
            refusals.log(&REFUSED, || {
                format!(
                    "refused a connection from {peer}: max_connections ({}) are open ({n} refused so far)",
                    limits.max_connections
                )
            });
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // Handed to its thread as a plain socket, registered there with that thread's
        // reactor (a socket's readiness is reported by the runtime that registered it).
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ckvault: cannot hand over the connection from {peer}: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        let refusals = refusals.clone();
        shards.spawn(async move {
            let _slot = slot;
            let tcp = match tokio::net::TcpStream::from_std(tcp) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ckvault: cannot serve the connection from {peer}: {e}");
                    return;
                }
            };
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let _open = OnDrop(|| {
                metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            });
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    outcome => {
                        let n = metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed)
                            + 1;
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no handshake within {:?}", limits.handshake_timeout),
                        };
                        refusals.log(&HANDSHAKE, || {
                            format!("TLS handshake from {peer} failed: {why} ({n} so far)")
                        });
                        return;
                    }
                };
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| principal_from_cert(c.as_ref()));
            let info = ConnInfo {
                peer,
                cert_identity,
            };
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let mut app = app.clone();
                    let busy = activity.begin();
                    async move {
                        let resp = app.call(req).await;
                        drop(busy);
                        resp
                    }
                })
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new());
            // HTTP/2 frames reach TLS in whole records (super::coalesce).
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(super::coalesce::Coalesce::new(
                Tracked {
                    inner: tls,
                    activity: activity.clone(),
                },
                h2,
            ));
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let tick =
                (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let timed_out = loop {
                tokio::select! {
                    result = &mut conn => {
                        break result.err().and_then(|e| {
                            e.downcast_ref::<hyper::Error>()
                                .filter(|h| h.is_timeout())
                                .map(|_| "no request head within header_timeout")
                        });
                    }
                    _ = tokio::time::sleep(tick) => {
                        if activity.idle_for() >= limits.idle_timeout {
                            break Some("idle longer than idle_timeout");
                        }
                    }
                }
            };
            if let Some(why) = timed_out {
                let n = metrics
                    .connections_timed_out
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                refusals.log(&TIMED_OUT, || {
                    format!("closed the connection from {peer}: {why} ({n} so far)")
                });
            }
        });
    }
    Ok(())
}

/// The connection threads: each runs a single-threaded runtime serving the connections
/// handed to it. They stop (closing their connections) when this is dropped.
struct Shards {
    shards: Vec<Shard>,
    next: AtomicUsize,
}

struct Shard {
    handle: tokio::runtime::Handle,
    open: Arc<AtomicUsize>,
    /// Dropping it ends the thread's runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Shards {
    /// Starts `threads` connection threads (0: one per core).
    fn start(threads: usize) -> std::io::Result<Self> {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("ckvault-conn-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            shards.push(Shard {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Self {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `conn` on the thread with the fewest open connections (ties taken in turn).
    /// It is polled only there, so what it creates (sockets, timers, tasks) belongs to
    /// that thread's runtime.
    fn spawn(&self, conn: impl std::future::Future<Output = ()> + Send + 'static) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let len = self.shards.len();
        let Some(shard) = (0..len)
            .filter_map(|k| self.shards.get((start + k) % len))
            .min_by_key(|s| s.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let open = shard.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        shard.handle.spawn(async move {
            let _open = OnDrop(|| {
                open.fetch_sub(1, Ordering::Relaxed);
            });
            conn.await
        });
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// When a connection last moved bytes, and how many of its requests are being handled.
struct Activity {
    start: std::time::Instant,
    last_ms: AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing happened (zero while a request is being handled).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Marks a request in progress until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> impl Drop + Send + use<> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        OnDrop(move || {
            me.in_flight.fetch_sub(1, Ordering::Relaxed);
            me.touch();
        })
    }
}

/// A connection's stream, noting every byte moved in its [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Kinds of refusal, each logged at most once per [`RefusalLog::EVERY`].
static REFUSED: AtomicU64 = AtomicU64::new(0);
static HANDSHAKE: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

/// Logs refusals without letting a flood of them flood the log.
#[derive(Default)]
struct RefusalLog {
    start: std::sync::OnceLock<std::time::Instant>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(5);

    /// Logs `message()` unless this kind was logged less than [`Self::EVERY`] ago (the
    /// counters in /metrics keep the exact numbers).
    fn log(&self, last: &AtomicU64, message: impl FnOnce() -> String) {
        let start = self.start.get_or_init(std::time::Instant::now);
        let now = start.elapsed().as_millis() as u64 + 1;
        let prev = last.load(Ordering::Relaxed);
        if (prev == 0 || now.saturating_sub(prev) >= Self::EVERY.as_millis() as u64)
            && last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!("ckvault: {}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_thread_with_fewest_open_and_stay_there() {
        let shards = Shards::start(2).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut holds = Vec::new();
        for _ in 0..4 {
            let tx = tx.clone();
            let (hold, held) = tokio::sync::oneshot::channel::<()>();
            holds.push(hold);
            shards.spawn(async move {
                let before = std::thread::current().name().map(str::to_owned);
                // A task it spawns runs on the same thread.
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) });
                let after = inner.await.unwrap();
                tx.send((before, after)).unwrap();
                let _ = held.await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            let (before, after) = rx.recv().await.unwrap();
            assert_eq!(before, after);
            names.push(before.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "ckvault-conn-0",
                "ckvault-conn-0",
                "ckvault-conn-1",
                "ckvault-conn-1"
            ]
        );
        let open: Vec<usize> = shards
            .shards
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(open, [2, 2]);
        drop(holds);
        for _ in 0..100 {
            if shards
                .shards
                .iter()
                .all(|s| s.open.load(Ordering::Relaxed) == 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("closed connections are still counted open");
    }
}
