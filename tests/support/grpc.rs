//! One raw gRPC exchange over an HTTP/2 connection, as a stock client makes it: the
//! status and message from the trailers (or, trailers-only, the headers) and the body.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Request;

/// A client end of an HTTP/2 connection (`RuntimeClient::connect`).
pub type Sender = hyper::client::conn::http2::SendRequest<BoxBody<Bytes, hyper::Error>>;

/// Sends `body` to `path` (`/runtime.v1.RuntimeService/Version`) with `extra` headers:
/// (grpc-status, grpc-message, response body).
pub async fn exchange(
    sender: &mut Sender,
    path: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> (String, String, Bytes) {
    let mut req = Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        req = req.header(*name, value.as_str());
    }
    let req = req
        .body(Full::new(body).map_err(|n| match n {}).boxed())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| headers.get(k))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        get("grpc-status"),
        get("grpc-message"),
        collected.to_bytes(),
    )
}
