//! The CRI proxy: kubelet's `--container-runtime-endpoint` points at ckvault's unix socket;
//! every call is forwarded to the real runtime as an opaque HTTP/2 stream (headers, body
//! frames and trailers untouched, so unary, server-streaming and unknown methods all
//! pass), except `/runtime.v1.RuntimeService/CheckpointContainer`, which is decoded and
//! turned into a sealed record ([`super::checkpoint`]). Each client connection goes
//! through [`super::h2fix`] first, so clients that send the socket path as `:authority`
//! (grpcio) are served as the runtime serves them. Where the kubelet asked for the
//! archive, a receipt is left instead of the plaintext.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;

use super::checkpoint::{CheckpointError, Checkpointer};
use super::cri::{
    self, CHECKPOINT_CONTAINER, CheckpointContainerRequest, CheckpointContainerResponse,
};
use super::h2fix::AuthorityFix;
use super::receipt::Receipt;

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type Sender = hyper::client::conn::http2::SendRequest<ProxyBody>;

/// The proxy's state.
pub struct Proxy {
    checkpointer: Checkpointer,
    upstream: tokio::sync::Mutex<Option<Sender>>,
    /// Leave a receipt at the kubelet's requested location (else leave nothing there).
    pub receipts: bool,
}

impl Proxy {
    /// A proxy in front of the checkpointer's runtime.
    pub fn new(checkpointer: Checkpointer, receipts: bool) -> Self {
        Self {
            checkpointer,
            upstream: tokio::sync::Mutex::new(None),
            receipts,
        }
    }

    async fn sender(&self) -> std::io::Result<Sender> {
        let mut guard = self.upstream.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = self.checkpointer.runtime().connect().await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if req.uri().path() == CHECKPOINT_CONTAINER {
            return Ok(self.checkpoint(req).await);
        }
        Ok(self.forward(req).await)
    }

    /// Forwards a call untouched.
    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match format!("http://localhost{path}").parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return grpc_error(3, "bad request path"),
        }
        let req = Request::from_parts(parts, body.boxed());
        let mut sender = match self.sender().await {
            Ok(s) => s,
            Err(e) => return grpc_error(14, &format!("ckvault cannot reach the runtime: {e}")),
        };
        match sender.send_request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => grpc_error(14, &format!("runtime connection failed: {e}")),
        }
    }

    /// Intercepts CheckpointContainer.
    async fn checkpoint(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(Duration::from_secs(120));
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return grpc_error(3, &format!("cannot read the request: {e}")),
        };
        let request: CheckpointContainerRequest = match cri::unframe(body, 1 << 20) {
            Ok(r) => r,
            Err(s) => return grpc_error(s.code, &s.message),
        };
        let location = (!request.location.is_empty()).then_some(request.location.as_str());
        match self
            .checkpointer
            .checkpoint(
                &request.container_id,
                deadline,
                "cri-proxy",
                location,
                "cri-proxy",
            )
            .await
        {
            Ok(manifest) => {
                if let Some(loc) = location
                    && self.receipts
                {
                    match receipt_target(Path::new(loc)) {
                        Ok(path) => {
                            if let Err(e) = Receipt::for_manifest(&manifest).write(path) {
                                eprintln!(
                                    "ckvault: sealed {} but cannot leave a receipt at {loc}: {e}",
                                    manifest.id
                                );
                            }
                        }
                        Err(why) => eprintln!(
                            "ckvault: sealed {}; no receipt at {loc:?}: {why}",
                            manifest.id
                        ),
                    }
                }
                grpc_ok(&CheckpointContainerResponse {})
            }
            Err(CheckpointError::Runtime(status)) => grpc_error(status.code, &status.message),
            Err(e @ CheckpointError::Seal(_)) => grpc_error(13, &e.to_string()),
            // RESOURCE_EXHAUSTED: nothing was taken; the kubelet may retry later.
            Err(e @ CheckpointError::SpoolFull(_)) => grpc_error(8, &e.to_string()),
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

/// Parses a gRPC timeout header (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A trailers-only gRPC error answer.
pub fn grpc_error(code: u32, message: &str) -> Response<ProxyBody> {
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

/// Serves the proxy on `listener` until `shutdown` resolves.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| proxy.clone().handle(req));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(AuthorityFix::new(stream)), service)
                .await;
        });
    }
}

/// Where the socket goes by default.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/ckvault/cri.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12X"), None);
        assert_eq!(parse_grpc_timeout("999999999H"), None);
    }
}
