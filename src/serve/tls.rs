//! TLS termination with our own accept loop (tokio-rustls + hyper), so that the verified
//! client certificate of each connection reaches the handlers as a [`ConnInfo`] request
//! extension (identity = subject CN, groups = subject O, as Kubernetes does). The loop
//! also owns the connection limits ([`ConnectionLimits`]): handshake, first-request,
//! request-head, idle and stalled-download timeouts, a cap on open connections per client
//! address and in all (a full server closes its idlest connection for a newcomer), counted
//! in [`Metrics`], and each connection's socket options (no Nagle delay; at most
//! `tcp_notsent_lowat` bytes waiting unsent in the kernel).
//!
//! Connections are served by connection threads ([`Shards`]), one single-threaded runtime
//! each, as nginx's workers: a connection, with every task it spawns (HTTP/2 streams), lives
//! on one thread, so handing a frame from a stream to its connection is a plain wake-up,
//! not a lock contended across cores and a futex. Each new connection goes to the thread
//! with the fewest open.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::credentials::CertKey;
use super::limits::{Counter, Downloads};
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
    /// Issuer and serial of that certificate, checked against the current CRLs on every
    /// request (a connection outlives a CRL change).
    pub cert_key: Option<CertKey>,
    /// The downloads this connection carries (a stalled one closes it).
    pub downloads: Arc<Downloads>,
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
/// `limits`:
/// - at most `max_connections_per_address` open from one address (more closed at once);
/// - at most `max_connections` open in all: a newcomer beyond it takes the place of the
///   connection idle longest (no request in progress), as nginx reuses its keep-alive
///   connections, so a flood of idle connections cannot keep a real client out; only when
///   every connection is busy is the newcomer closed;
/// - a handshake within `handshake_timeout`, a first request (a complete HTTP/1.1 head,
///   or the HTTP/2 preface and a first HEADERS) within `header_timeout` of the handshake,
///   later HTTP/1.1 heads within `header_timeout` too, and a connection with no request in
///   progress and no bytes moving closed after `idle_timeout`;
/// - the protocol is the one ALPN chose (`h2`, else HTTP/1.1): nothing is read to guess it;
/// - a connection carrying a download that moved no byte for `stall_timeout` is closed,
///   whatever else (PINGs, WINDOW_UPDATEs) it sends.
///
/// Every refusal is counted in `metrics` and logged (at most every few seconds per kind).
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
    let per_address =
        Counter::<std::net::IpAddr>::new(limits.max_connections_per_address, usize::MAX);
    let open = Arc::new(OpenConnections::default());
    let refusals = Arc::new(RefusalLog::default());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(address_slot) = per_address.try_acquire(&peer.ip()) else {
            let n = metrics
                .connections_refused_per_address
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            refusals.log(&PER_ADDRESS, || {
                format!(
                    "refused a connection from {peer}: max_connections_per_address ({}) are open from it ({n} refused so far)",
                    limits.max_connections_per_address
                )
            });
            drop(tcp);
            continue;
        };
        // At the cap, the connection idle longest makes room; the newcomer waits for its
        // place (briefly) on its own task, not here.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if open.evict_idlest() => {
                let n = metrics.connections_evicted.fetch_add(1, Ordering::Relaxed) + 1;
                refusals.log(&EVICTED, || {
                    format!(
                        "max_connections ({}) are open: closed the connection idle longest for one from {peer} ({n} so far)",
                        limits.max_connections
                    )
                });
                None
            }
            Err(_) => {
                let n = metrics.connections_refused.fetch_add(1, Ordering::Relaxed) + 1;
                refusals.log(&REFUSED, || {
                    format!(
                        "refused a connection from {peer}: max_connections ({}) are open and busy ({n} refused so far)",
                        limits.max_connections
                    )
                });
                drop(tcp);
                continue;
            }
        };
        tune(&tcp, &limits);
        // Handed to its thread as a plain socket, registered there with that thread's
        // reactor (a socket's readiness is reported by the runtime that registered it).
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        let refusals = refusals.clone();
        let slots = slots.clone();
        let open = open.clone();
        shards.spawn(async move {
            let _address_slot = address_slot;
            let _slot = match slot {
                Some(slot) => slot,
                None => match tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
            };
            let tcp = match tokio::net::TcpStream::from_std(tcp) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot serve a connection");
                    return;
                }
            };
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let _open_count = OnDrop(|| {
                metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            });
            let activity = Arc::new(Activity::new());
            let close = Arc::new(tokio::sync::Notify::new());
            let _registered = open.register(activity.clone(), close.clone());
            let handshake = tokio::select! {
                tls = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => tls,
                _ = close.notified() => return,
            };
            let tls = match handshake {
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
            let handshake_done = std::time::Instant::now();
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let cert_identity = leaf.and_then(|c| principal_from_cert(c.as_ref()));
            let cert_key = leaf.and_then(|c| CertKey::of(c.as_ref()));
            let downloads = activity.downloads.clone();
            let info = ConnInfo {
                peer,
                cert_identity,
                cert_key,
                downloads: downloads.clone(),
            };
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
            // The protocol ALPN chose; either's bytes reach TLS in whole records
            // (super::coalesce).
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(super::coalesce::Coalesce::new(tls, true));
            let conn: Pin<Box<dyn std::future::Future<Output = Result<(), hyper::Error>> + Send>> =
                if h2 {
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(limits.http2_max_streams);
                    Box::pin(builder.serve_connection(io, service))
                } else {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout);
                    Box::pin(builder.serve_connection(io, service))
                };
            tokio::pin!(conn);
            let tick = (limits.idle_timeout / 4)
                .min(limits.header_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            // The first request's deadline, exact (not at the next tick).
            let first_request = tokio::time::sleep_until(
                tokio::time::Instant::from_std(handshake_done + limits.header_timeout),
            );
            tokio::pin!(first_request);
            let timed_out = loop {
                tokio::select! {
                    _ = &mut first_request, if activity.requests() == 0 => {
                        if activity.requests() == 0 {
                            break Some("no request within header_timeout of the handshake");
                        }
                    }
                    result = &mut conn => {
                        break result
                            .err()
                            .filter(hyper::Error::is_timeout)
                            .map(|_| "no request head within header_timeout");
                    }
                    _ = close.notified() => break Some("the server is full; closed as the connection idle longest"),
                    _ = tokio::time::sleep(tick) => {
                        if activity.idle_for() >= limits.idle_timeout {
                            break Some("idle longer than idle_timeout");
                        }
                        if downloads.stalled(limits.stall_timeout) {
                            metrics.downloads_stalled.fetch_add(1, Ordering::Relaxed);
                            break Some("a download moved no byte within stall_timeout");
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

/// How long a newcomer waits for the place of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// The open connections, for choosing the one to close when the server is full.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    all: std::sync::Mutex<std::collections::HashMap<u64, OpenConnection>>,
}

/// A connection's activity, and how to tell it to close.
type OpenConnection = (Arc<Activity>, Arc<tokio::sync::Notify>);

impl OpenConnections {
    /// Registers a connection until the returned guard is dropped.
    fn register(
        self: &Arc<Self>,
        activity: Arc<Activity>,
        close: Arc<tokio::sync::Notify>,
    ) -> impl Drop + Send + use<> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (activity, close));
        let me = self.clone();
        OnDrop(move || {
            me.all.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        })
    }

    /// Tells the connection idle longest (no request in progress; one that never made a
    /// request counts from its start) to close; false if every one is busy.
    fn evict_idlest(&self) -> bool {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let victim = all
            .iter()
            .filter_map(|(id, (activity, _))| activity.reusable_for().map(|d| (*id, d)))
            .max_by_key(|(_, d)| *d)
            .map(|(id, _)| id);
        match victim.and_then(|id| all.remove(&id)) {
            Some((_, close)) => {
                // notify_one keeps the wake-up for a connection not waiting on it yet.
                close.notify_one();
                true
            }
            None => false,
        }
    }
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

/// Socket options of an accepted connection: no Nagle delay (responses and frames leave
/// when written), and at most `tcp_notsent_lowat` bytes queued unsent, so a download's
/// socket is refilled as TCP sends rather than holding the whole send buffer unsent (see
/// `[server] tcp_notsent_lowat`). A kernel that refuses an option is logged once; the
/// connection is served either way.
fn tune(tcp: &tokio::net::TcpStream, limits: &ConnectionLimits) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let socket = socket2::SockRef::from(tcp);
    let mut result = socket.set_tcp_nodelay(true);
    if result.is_ok() && limits.tcp_notsent_lowat > 0 {
        result = socket.set_tcp_notsent_lowat(limits.tcp_notsent_lowat);
    }
    if let Err(e) = result {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY or TCP_NOTSENT_LOWAT on connections; serving them without");
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
///
/// Bytes alone do not count: a client sending PINGs or WINDOW_UPDATEs and no request is
/// idle. A connection is busy while a request's handler runs or a download it carries is
/// live (a stalled one is the accept loop's to cut off).
struct Activity {
    start: std::time::Instant,
    last_ms: AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    requests: AtomicU64,
    downloads: Arc<Downloads>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            downloads: Arc::default(),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been idle: zero while a request is being handled or a
    /// download is live, else the time since the last request or download ended.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self.start.elapsed().as_millis() as u64;
        let since_request =
            Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)));
        self.downloads
            .quiet_for()
            .map_or(since_request, |quiet| quiet.min(since_request))
    }

    /// Requests begun on the connection so far.
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How long the connection could have been closed without cutting a request: `None`
    /// while one is in progress; from its start if it never made one.
    fn reusable_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.requests() == 0 {
            return Some(self.start.elapsed());
        }
        Some(self.idle_for())
    }

    /// Marks a request in progress until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> impl Drop + Send + use<> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        OnDrop(move || {
            me.in_flight.fetch_sub(1, Ordering::Relaxed);
            me.touch();
        })
    }
}

/// Kinds of refusal, each logged at most once per [`RefusalLog::EVERY`].
static REFUSED: AtomicU64 = AtomicU64::new(0);
static HANDSHAKE: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
static PER_ADDRESS: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);

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
            tracing::warn!("{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_get_the_configured_unsent_bound_or_none() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (lowat, want) in [(64 << 10, 64 << 10), (16 << 10, 16 << 10), (0, 0)] {
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let limits = ConnectionLimits {
                tcp_notsent_lowat: lowat,
                ..ConnectionLimits::default()
            };
            tune(&tcp, &limits);
            let socket = socket2::SockRef::from(&tcp);
            assert_eq!(socket.tcp_notsent_lowat().unwrap(), want);
            assert!(socket.tcp_nodelay().unwrap());
        }
        assert_eq!(ConnectionLimits::default().tcp_notsent_lowat, 64 << 10);
    }

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
