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

/// Sends one request per case on a fresh raw HTTP/2 connection to `socket`, each with
/// exactly the `:path` fields it names (any bytes, none, several) and `body`, through the
/// `h2` library with its header checks off (`tests/harness/raw_paths.py`): one JSON object
/// per case (`status`, `grpc_status`, `grpc_message`, `body` hex, `error`).
pub fn raw_paths(
    socket: &std::path::Path,
    cases: &[(Vec<Vec<u8>>, Vec<u8>)],
) -> Vec<serde_json::Value> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|(paths, body)| {
            serde_json::json!({
                "paths": paths.iter().map(|p| hex(p)).collect::<Vec<_>>(),
                "body": hex(body),
            })
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        serde_json::Value::from(cases.clone()).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/harness/raw_paths.py"
        ))
        .arg(socket)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "raw_paths.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    answers
}
