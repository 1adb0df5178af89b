//! The few CRI messages ckvault decodes (mirroring `proto/cri-subset.proto`, field numbers
//! of k8s.io/cri-api runtime.v1), and a minimal unary gRPC client over a unix socket for
//! the calls ckvault itself makes to the runtime (ContainerStatus, ListPodSandbox,
//! ListContainers, CheckpointContainer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// gRPC path prefix of the runtime service.
pub const RUNTIME: &str = "/runtime.v1.RuntimeService/";
/// The method the proxy intercepts.
pub const CHECKPOINT_CONTAINER: &str = "/runtime.v1.RuntimeService/CheckpointContainer";

/// Kubelet label: pod namespace.
pub const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Kubelet label: pod name.
pub const LABEL_POD: &str = "io.kubernetes.pod.name";
/// Kubelet label: pod UID.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Kubelet label: container name.
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
/// CONTAINER_RUNNING.
pub const CONTAINER_RUNNING: i32 = 1;
/// SANDBOX_READY.
pub const SANDBOX_READY: i32 = 0;

#[allow(missing_docs)]
mod messages {
    use super::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStateValue {
        #[prost(int32, tag = "1")]
        pub state: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub state: Option<PodSandboxStateValue>,
        #[prost(map = "string, string", tag = "3")]
        pub label_selector: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<PodSandboxFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(int32, tag = "3")]
        pub state: i32,
        #[prost(int64, tag = "4")]
        pub created_at: i64,
        #[prost(map = "string, string", tag = "5")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "6")]
        pub annotations: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint32, tag = "2")]
        pub attempt: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStateValue {
        #[prost(int32, tag = "1")]
        pub state: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub state: Option<ContainerStateValue>,
        #[prost(string, tag = "3")]
        pub pod_sandbox_id: String,
        #[prost(map = "string, string", tag = "4")]
        pub label_selector: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ContainerFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "4")]
        pub image: Option<ImageSpec>,
        #[prost(string, tag = "5")]
        pub image_ref: String,
        #[prost(int32, tag = "6")]
        pub state: i32,
        #[prost(int64, tag = "7")]
        pub created_at: i64,
        #[prost(map = "string, string", tag = "8")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "9")]
        pub annotations: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatusRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(int32, tag = "3")]
        pub state: i32,
        #[prost(int64, tag = "4")]
        pub created_at: i64,
        #[prost(message, optional, tag = "8")]
        pub image: Option<ImageSpec>,
        #[prost(string, tag = "9")]
        pub image_ref: String,
        #[prost(map = "string, string", tag = "12")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "13")]
        pub annotations: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<ContainerStatus>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckpointContainerRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, tag = "2")]
        pub location: String,
        #[prost(int64, tag = "3")]
        pub timeout: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckpointContainerResponse {}
}
pub use messages::*;

/// A gRPC failure: the status code and message (from trailers or a trailers-only answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gRPC status {code}: {message}")]
pub struct GrpcStatus {
    /// The gRPC status code (12 = UNIMPLEMENTED, 5 = NOT_FOUND, ...).
    pub code: u32,
    /// The message.
    pub message: String,
}

impl GrpcStatus {
    /// A status with a code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Frames one protobuf message as a gRPC message (uncompressed).
pub fn frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Decodes a unary gRPC body (one uncompressed message, at most `max` bytes).
pub fn unframe<M: Message + Default>(mut body: Bytes, max: usize) -> Result<M, GrpcStatus> {
    if body.len() < 5 {
        return Err(GrpcStatus::new(13, "truncated gRPC message"));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(GrpcStatus::new(
            12,
            "compressed gRPC messages are not supported here",
        ));
    }
    if len > max || len != body.len() {
        return Err(GrpcStatus::new(
            3,
            "gRPC message length mismatch or over the limit",
        ));
    }
    M::decode(body).map_err(|e| GrpcStatus::new(3, format!("bad protobuf: {e}")))
}

/// A connection to a CRI runtime over its unix socket (HTTP/2).
#[derive(Clone, Debug)]
pub struct RuntimeClient {
    socket: PathBuf,
}

impl RuntimeClient {
    /// A client for the runtime at `socket` (connections are made per call).
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens an HTTP/2 connection to the runtime.
    pub async fn connect(
        &self,
    ) -> std::io::Result<
        hyper::client::conn::http2::SendRequest<
            http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
        >,
    > {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One unary call with a deadline.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, GrpcStatus> {
        let unavailable =
            |e: String| GrpcStatus::new(14, format!("runtime at {}: {e}", self.socket.display()));
        let mut sender = self
            .connect()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let body = Full::new(frame(req))
            .map_err(|never| match never {})
            .boxed();
        let request = hyper::Request::post(format!("http://localhost{RUNTIME}{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
            .body(body)
            .map_err(|e| unavailable(e.to_string()))?;
        let call = async {
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let headers = resp.headers().clone();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let trailers = collected.trailers().cloned();
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(2);
            if status != 0 {
                let message = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .or_else(|| headers.get("grpc-message"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                return Err(GrpcStatus::new(status, percent_decode(&message)));
            }
            unframe::<Resp>(collected.to_bytes(), 16 << 20)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(GrpcStatus::new(4, "deadline exceeded")))
    }
}

/// Decodes the percent-encoding of `grpc-message`.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) == Some(&b'%')
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        if let Some(&b) = bytes.get(i) {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a `grpc-message` value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let req = CheckpointContainerRequest {
            container_id: "abc".into(),
            location: "/tmp/x.tar".into(),
            timeout: 30,
        };
        let f = frame(&req);
        assert_eq!(
            unframe::<CheckpointContainerRequest>(f.clone(), 1024).unwrap(),
            req
        );
        assert!(unframe::<CheckpointContainerRequest>(f.slice(..3), 1024).is_err());
        assert!(unframe::<CheckpointContainerRequest>(f.slice(..f.len() - 1), 1024).is_err());
        assert!(unframe::<CheckpointContainerRequest>(f, 4).is_err());
        assert_eq!(percent_decode(&percent_encode("a%b\nc")), "a%b\nc");
    }
}
