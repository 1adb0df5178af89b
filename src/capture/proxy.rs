//! The CRI proxy: kubelet's `--container-runtime-endpoint` points at ckvault's unix socket;
//! each client connection is relayed frame by frame to a connection of its own to the real
//! runtime ([`super::relay`]: headers, bodies and trailers untouched, so unary,
//! server-streaming and unknown methods all pass as the runtime answers them), except
//! `/runtime.v1.RuntimeService/CheckpointContainer`, which is intercepted, decoded and
//! turned into a sealed record ([`super::checkpoint`]). Where the kubelet asked for the
//! archive, a receipt is left instead of the plaintext. With the node's own triggers
//! ([`super::node`]) and a rule that captures before a stop, `StopContainer` and
//! `StopPodSandbox` are intercepted too and issued again once the capture is done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Response;
use tokio::net::UnixListener;

use super::checkpoint::{CheckpointError, CheckpointRequest, Checkpointer};
use super::cri::{self, CheckpointContainerRequest, CheckpointContainerResponse, GrpcStatus};
use super::cri_metrics::{CriMetrics, count};
use super::receipt::Receipt;
use super::relay::{Answer, Intercepted};
use crate::manifest::SourceKind;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy's state.
pub struct Proxy {
    checkpointer: Checkpointer,
    /// Leave a receipt at the kubelet's requested location (else leave nothing there).
    pub receipts: bool,
    /// CheckpointContainer calls held at once in all (`[cri] max_intercepted`).
    pub max_intercepted: usize,
    /// CheckpointContainer requests arriving at once per connection
    /// (`[cri] max_pending_per_connection`).
    pub max_pending_per_connection: usize,
    /// The node's own triggers (captures before a stop), if it runs them.
    pub(crate) node: Option<Arc<super::node::NodeTriggers>>,
    /// Its counters (`/metrics` at `[cri] metrics_listen`).
    pub(crate) metrics: Arc<CriMetrics>,
}

impl Proxy {
    /// A proxy in front of the checkpointer's runtime, with the default limits.
    pub fn new(checkpointer: Checkpointer, receipts: bool) -> Self {
        let defaults = crate::config::CriConfig::default();
        Self {
            checkpointer,
            receipts,
            max_intercepted: defaults.max_intercepted,
            max_pending_per_connection: defaults.max_pending_per_connection,
            node: None,
            metrics: Arc::default(),
        }
    }

    /// Answers an intercepted call: a checkpoint, or a stop held for a capture before it.
    pub async fn answer(&self, call: Intercepted) -> Answer {
        match (call.call, &self.node) {
            (super::relay::Call::Checkpoint, _) => self.checkpoint(call).await,
            (super::relay::Call::Stop(_), Some(node)) => node.before_stop(call).await,
            (super::relay::Call::Stop(_), None) => Err(GrpcStatus::new(
                tonic::Code::Internal,
                "ckvault: a stop was intercepted without the node's triggers",
            )),
        }
    }

    /// Answers an intercepted CheckpointContainer: checkpoint, seal, receipt; counted as
    /// sealed or failed.
    pub async fn checkpoint(&self, call: Intercepted) -> Answer {
        let answer = self.checkpoint_uncounted(call).await;
        count(match answer {
            Ok(_) => &self.metrics.checkpoints_sealed,
            Err(_) => &self.metrics.checkpoints_failed,
        });
        answer
    }

    async fn checkpoint_uncounted(&self, call: Intercepted) -> Answer {
        let deadline = call
            .grpc_timeout
            .as_deref()
            .and_then(super::method::parse_grpc_timeout)
            .unwrap_or(Duration::from_secs(120));
        let request: CheckpointContainerRequest = cri::unframe(call.body, 1 << 20)?;
        let location = (!request.location.is_empty()).then_some(request.location.as_str());
        match self
            .checkpointer
            .checkpoint(CheckpointRequest {
                container_id: request.container_id.clone(),
                deadline,
                source: SourceKind::CriProxy,
                location: location.map(str::to_owned),
                actor: "cri-proxy".to_owned(),
                // The kubelet asked directly: no trigger, the record stays v1 byte for byte.
                trigger: None,
            })
            .await
        {
            Ok(manifest) => {
                if let Some(loc) = location
                    && self.receipts
                {
                    match receipt_target(Path::new(loc)) {
                        Ok(path) => {
                            if let Err(e) = Receipt::for_manifest(&manifest).write(path) {
                                tracing::warn!(
                                    record = %manifest.id,
                                    location = ?loc,
                                    error = %e,
                                    "sealed, but cannot leave a receipt"
                                );
                            }
                        }
                        Err(why) => tracing::info!(
                            record = %manifest.id,
                            location = ?loc,
                            why = %why,
                            "sealed; no receipt left"
                        ),
                    }
                }
                Ok(cri::frame(&CheckpointContainerResponse {}))
            }
            Err(CheckpointError::Runtime(status)) => Err(status),
            // Nothing was taken; the kubelet may retry later.
            Err(e @ CheckpointError::SpoolFull(_)) => Err(GrpcStatus::new(
                tonic::Code::ResourceExhausted,
                e.to_string(),
            )),
            Err(e) => Err(GrpcStatus::new(tonic::Code::Internal, e.to_string())),
        }
    }
}

/// Checks that a kubelet location may receive a receipt: an absolute path to a
/// `checkpoint-*` file in an existing directory, not already present (never overwritten,
/// never through a symlink: the write is exclusive).
pub fn receipt_target(path: &Path) -> Result<&Path, &'static str> {
    if !path.is_absolute() {
        return Err("not an absolute path");
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no file name")?;
    if !name.starts_with("checkpoint-")
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("not a kubelet checkpoint path");
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err("something already exists there; it is left alone");
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(path),
        _ => Err("its directory does not exist"),
    }
}

/// A trailers-only gRPC error answer (for HTTP/2 servers in the tests' runtime doubles).
/// `code` is a [`tonic::Code`], or its number.
pub fn grpc_error(code: impl Into<tonic::Code>, message: &str) -> Response<ProxyBody> {
    let code = code.into() as i32;
    let mut resp = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&code.to_string()) {
        h.insert("grpc-status", v);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&cri::percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// A successful unary answer carrying `msg`, with `grpc-status: 0` in the trailers.
pub fn grpc_ok(msg: &impl prost::Message) -> Response<ProxyBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let body = Full::new(cri::frame(msg))
        .map_err(|never| match never {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Binds the proxy socket (0600; a stale socket file is replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the proxy on `listener` until `shutdown` resolves: each connection relayed to
/// the runtime ([`super::relay`]).
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let upstream: Arc<Path> = proxy.checkpointer.runtime().socket().into();
    let intercepted = Arc::new(tokio::sync::Semaphore::new(proxy.max_intercepted.max(1)));
    let max_pending = proxy.max_pending_per_connection.max(1);
    let intercept_stops = proxy
        .node
        .as_ref()
        .is_some_and(|n| n.captures_before_stop());
    let handler: super::relay::Handler = {
        let proxy = proxy.clone();
        Arc::new(move |call| {
            let proxy = proxy.clone();
            Box::pin(async move { proxy.answer(call).await })
        })
    };
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let upstream = upstream.clone();
        let handler = handler.clone();
        let limits = super::relay::RelayLimits {
            max_pending_per_connection: max_pending,
            intercepted: intercepted.clone(),
            intercept_stops,
            metrics: proxy.metrics.clone(),
        };
        tokio::spawn(async move { super::relay::relay(stream, &upstream, handler, limits).await });
    }
}

/// Connections the `/metrics` listener serves at once; more are closed at once. A scraper
/// needs one; the bound keeps a local client from spending the proxy's descriptors, which
/// the kubelet's connections need.
const METRICS_CONNECTIONS: usize = 8;
/// Time a `/metrics` connection has for its request head, and for its whole life.
const METRICS_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the proxy's counters, and the node triggers' when it runs them, at
/// `GET /metrics` on `listener` until `shutdown` resolves: plain HTTP/1.1, counts only (no
/// names, IDs or paths), one request per connection, at most [`METRICS_CONNECTIONS`] at
/// once, each closed after [`METRICS_HEAD_TIMEOUT`] without a request head and
/// [`METRICS_CONNECTION_TIMEOUT`] in all. Bind it where only the node's Prometheus reaches.
pub async fn serve_metrics(
    proxy: Arc<Proxy>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(metrics_answer(&proxy, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// `GET /metrics`: the counters; anything else 404 or 405.
fn metrics_answer<B>(proxy: &Proxy, req: &hyper::Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let mut out = String::new();
            proxy.metrics.render(&mut out);
            if let Some(node) = &proxy.node {
                node.incidents().metrics().render(&mut out);
            }
            (hyper::StatusCode::OK, out)
        }
        (_, "/metrics") => (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".to_owned(),
        ),
        _ => (hyper::StatusCode::NOT_FOUND, "only /metrics\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Where the socket goes by default.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/ckvault/cri.sock")
}
