//! The CRI proxy between a CRI client (the kubelet's role, played by ckvault's own gRPC
//! client) and a runtime. No runtime on this machine implements CheckpointContainer
//! (containerd 1.6 answers UNIMPLEMENTED; see tests/it/cri_proxy_containerd.rs for the proxy in
//! front of real containerd), so a test double plays the runtime here: it answers
//! CheckpointContainer by writing a REAL CRIU archive (from the project harness) at the
//! location it is given, opened the way runtimes open it (O_RDWR|O_CREAT, no O_TRUNC).

use crate::support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ckvault::internal::capture::cri::{self, *};
use ckvault::internal::capture::proxy::{grpc_error, grpc_ok};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// The test double: what it was asked, and the archive it writes.
struct FakeRuntime {
    archive: Vec<u8>,
    labels: HashMap<String, HashMap<String, String>>,
    asked_locations: Mutex<Vec<String>>,
    in_flight: std::sync::atomic::AtomicUsize,
}

fn labels(ns: &str, pod: &str, ctr: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NAMESPACE.to_owned(), ns.to_owned()),
        (LABEL_POD.to_owned(), pod.to_owned()),
        (LABEL_CONTAINER.to_owned(), ctr.to_owned()),
    ])
}

type Body = BoxBody<Bytes, hyper::Error>;

impl FakeRuntime {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        // Headers must arrive as the client sent them (a proxy that loses the client's HPACK
        // state hands the runtime other headers).
        if let Some(v) = req.headers().get("x-repeated")
            && v != "leans-on-the-hpack-table"
        {
            return Ok(grpc_error(3, &format!("x-repeated arrived as {v:?}")));
        }
        if req.headers().contains_key("x-call") {
            return Ok(grpc_error(3, "x-call belongs to an intercepted call"));
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(match path.strip_prefix(cri::RUNTIME).unwrap_or("") {
            "Version" => grpc_ok(&VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "ckvault-test-runtime".into(),
                runtime_version: "1.0.0".into(),
                runtime_api_version: "v1".into(),
            }),
            "ContainerStatus" => {
                let r: ContainerStatusRequest = cri::unframe(body, 1 << 20).unwrap();
                match self.labels.get(&r.container_id) {
                    Some(l) => grpc_ok(&ContainerStatusResponse {
                        status: Some(ContainerStatus {
                            id: r.container_id,
                            labels: l.clone(),
                            state: CONTAINER_RUNNING,
                            ..Default::default()
                        }),
                    }),
                    None => grpc_error(5, &format!("container {:?} not found", r.container_id)),
                }
            }
            "CheckpointContainer" => {
                let r: CheckpointContainerRequest = cri::unframe(body, 1 << 20).unwrap();
                self.asked_locations
                    .lock()
                    .unwrap()
                    .push(r.location.clone());
                if !self.labels.contains_key(&r.container_id) {
                    return Ok(grpc_error(5, "container not found: checkpointing failed"));
                }
                // A runtime that insists on a regular file (refuses a named pipe).
                if r.container_id == "picky"
                    && !std::fs::metadata(&r.location).is_ok_and(|m| m.is_file())
                {
                    return Ok(grpc_error(
                        2,
                        &format!(
                            "cannot write checkpoint to {}: not a regular file",
                            r.location
                        ),
                    ));
                }
                // Real runtimes fail a second concurrent checkpoint of one container.
                use std::sync::atomic::Ordering::SeqCst;
                if self.in_flight.fetch_add(1, SeqCst) > 0 {
                    self.in_flight.fetch_sub(1, SeqCst);
                    return Ok(grpc_error(2, "checkpoint already in progress"));
                }
                if r.container_id == "slow" {
                    // A runtime that keeps going after its caller gave up: finishes in 3 s,
                    // whatever happens to the call.
                    let me = self.clone();
                    let location = r.location.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .mode(0o600)
                            .open(&location)
                            .unwrap();
                        f.write_all(&me.archive).unwrap();
                        me.in_flight.fetch_sub(1, SeqCst);
                    });
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let written = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false) // as runtimes open it: no O_TRUNC
                    .mode(0o600)
                    .open(&r.location)
                    .and_then(|mut f| f.write_all(&self.archive));
                self.in_flight.fetch_sub(1, SeqCst);
                if let Err(e) = written {
                    return Ok(grpc_error(
                        13,
                        &format!("writing the checkpoint failed: {e}"),
                    ));
                }
                grpc_ok(&CheckpointContainerResponse {})
            }
            "ListPodSandbox" => {
                let r: ListPodSandboxRequest = cri::unframe(body, 1 << 20).unwrap();
                let sel = r.filter.unwrap_or_default().label_selector;
                let items = self
                    .labels
                    .values()
                    .filter(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
                    .map(|l| PodSandbox {
                        id: format!("sandbox-{}", l[LABEL_POD]),
                        labels: l.clone(),
                        ..Default::default()
                    })
                    .take(1)
                    .collect();
                grpc_ok(&ListPodSandboxResponse { items })
            }
            "ListContainers" => {
                let r: ListContainersRequest = cri::unframe(body, 1 << 20).unwrap();
                let sel = r.filter.unwrap_or_default().label_selector;
                let mut containers: Vec<Container> = self
                    .labels
                    .iter()
                    .filter(|(_, l)| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
                    .map(|(id, l)| Container {
                        id: id.clone(),
                        labels: l.clone(),
                        state: CONTAINER_RUNNING,
                        ..Default::default()
                    })
                    .collect();
                containers.sort_by(|a, b| a.id.cmp(&b.id));
                grpc_ok(&ListContainersResponse { containers })
            }
            "GetContainerEvents" => {
                // server streaming: three opaque messages, then OK trailers
                let mut frames: Vec<Result<Frame<Bytes>, hyper::Error>> = (0..3u8)
                    .map(|i| {
                        let mut m = vec![0u8, 0, 0, 0, 2];
                        m.extend_from_slice(&[0x0a, i]);
                        Ok(Frame::data(Bytes::from(m)))
                    })
                    .collect();
                let mut t = hyper::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                frames.push(Ok(Frame::trailers(t)));
                let mut resp =
                    Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
                resp.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                resp
            }
            _ => grpc_error(12, &format!("unknown method {path}")),
        })
    }
}

fn start_fake(socket: &Path, fake: Arc<FakeRuntime>) {
    let socket = socket.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            tx.send(()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let fake = fake.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| fake.clone().handle(req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap();
}

/// A runtime double on `dir/runtime.sock` knowing one container (`id`, its labels) and
/// writing `archive` when asked to checkpoint it.
fn fake_runtime_in(
    dir: &Path,
    archive: &Path,
    (id, labels): (&str, HashMap<String, String>),
) -> (Arc<FakeRuntime>, PathBuf) {
    let fake = Arc::new(FakeRuntime {
        archive: std::fs::read(archive).unwrap(),
        labels: HashMap::from([(id.to_owned(), labels)]),
        asked_locations: Mutex::default(),
        in_flight: Default::default(),
    });
    let socket = dir.join("runtime.sock");
    start_fake(&socket, fake.clone());
    (fake, socket)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(
    listen: &Path,
    runtime: &Path,
    store: &Path,
    recipient: &str,
    extra: &[&str],
) -> Kill {
    let child = Command::new(support::ckvault_bin())
        .args([
            "proxy",
            "--listen",
            listen.to_str().unwrap(),
            "--runtime",
            runtime.to_str().unwrap(),
        ])
        .args(["--store", store.to_str().unwrap(), "-r", recipient])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !listen.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "proxy socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Kill(child)
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn store_records(store: &Path) -> Vec<Value> {
    let out = Command::new(support::ckvault_bin())
        .args(["ls", "--store", store.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    identity: PathBuf,
    fake: Arc<FakeRuntime>,
    client: RuntimeClient,
    _proxy: Kill,
}

fn setup(archive: &Path) -> Setup {
    setup_with(archive, &[])
}

/// [`setup`], the proxy started with `extra` arguments.
fn setup_with(archive: &Path, extra: &[&str]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (identity, recipient) = support::age_keypair(&dir);
    let fake = Arc::new(FakeRuntime {
        archive: std::fs::read(archive).unwrap(),
        labels: HashMap::from([
            ("c1".to_owned(), labels("forensics", "web-7d4", "app")),
            ("c2".to_owned(), labels("payments", "web-7d4", "app")),
            ("slow".to_owned(), labels("forensics", "slow-pod", "app")),
            ("picky".to_owned(), labels("forensics", "picky-pod", "app")),
        ]),
        asked_locations: Mutex::default(),
        in_flight: Default::default(),
    });
    let runtime_sock = dir.join("runtime.sock");
    start_fake(&runtime_sock, fake.clone());
    let proxy_sock = dir.join("ckvault.sock");
    let store = dir.join("store");
    let proxy = start_proxy(&proxy_sock, &runtime_sock, &store, &recipient, extra);
    std::fs::create_dir(dir.join("kubelet")).unwrap();
    Setup {
        client: RuntimeClient::new(&proxy_sock),
        _tmp: tmp,
        dir,
        store,
        identity,
        fake,
        _proxy: proxy,
    }
}

const T: Duration = Duration::from_secs(60);

#[test]
fn calls_pass_through_untouched_including_streams_and_unknown_methods() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let v: VersionResponse = block(s.client.version(VersionRequest::default(), T)).unwrap();
    assert_eq!(v.runtime_name, "ckvault-test-runtime");
    // an unknown method, raw through the proxy: the runtime's UNIMPLEMENTED comes back
    let (status, message) = block(async {
        let mut sender = s.client.connect().await.unwrap();
        let req = Request::post("http://localhost/runtime.v1.RuntimeService/NoSuchMethod")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(
                Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let t = collected.trailers().cloned().unwrap_or_default();
        let get = |k: &str| {
            t.get(k)
                .or_else(|| headers.get(k))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (get("grpc-status"), get("grpc-message"))
    });
    assert_eq!(status, "12", "{message}");
    assert!(message.contains("NoSuchMethod"), "{message}");
    // server streaming, read raw through the proxy
    let frames = block(async {
        let mut sender = s.client.connect().await.unwrap();
        let req = Request::post("http://localhost/runtime.v1.RuntimeService/GetContainerEvents")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(
                Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        collected.to_bytes()
    });
    assert_eq!(
        &frames[..],
        &[
            0, 0, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 2, 0x0a, 1, 0, 0, 0, 0, 2, 0x0a, 2
        ]
    );
}

#[test]
fn checkpoints_are_sealed_from_staging_and_the_kubelet_gets_a_receipt() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let location = s
        .dir
        .join("kubelet/checkpoint-web-7d4_forensics-app-2026-11-28T10:00:00Z.tar");
    let _: CheckpointContainerResponse = block(s.client.checkpoint_container(
        CheckpointContainerRequest {
            container_id: "c1".into(),
            location: location.display().to_string(),
            timeout: 30,
        },
        T,
    ))
    .unwrap();
    // The runtime was told to write into ckvault's private staging, not the kubelet path.
    let asked = s.fake.asked_locations.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].starts_with(s.store.join("staging").to_str().unwrap()),
        "{asked:?}"
    );
    assert!(!Path::new(&asked[0]).exists(), "plaintext left in staging");
    // The kubelet's path holds a receipt, not the archive.
    let receipt: Value = serde_json::from_slice(&std::fs::read(&location).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&location).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let recs = store_records(&s.store);
    assert_eq!(recs.len(), 1);
    let m = &recs[0];
    assert_eq!(receipt["id"], m["id"]);
    assert_eq!(m["source"]["kind"], "cri-proxy");
    assert_eq!(m["namespace"], "forensics");
    assert_eq!(m["inspection"]["status"], "ok", "{m:#}");
    // The sealed record opens to the runtime's archive, byte for byte.
    let blob = s
        .store
        .join("records")
        .join(format!("{}.age", m["id"].as_str().unwrap()));
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d",
            s.identity.display(),
            blob.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.stdout == s.fake.archive,
        "opened bytes differ from the runtime's archive"
    );
}

#[test]
fn the_proxy_counts_what_it_relays_seals_fails_and_refuses_at_its_metrics_address() {
    // `ckvault proxy --metrics ADDR`, scraped with curl as Prometheus would: a relayed
    // call, a sealed checkpoint, one the runtime fails, and a non-canonical path.
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = setup_with(&archive, &["--metrics", &addr]);
    // One GET of /metrics with curl: the body, or why it failed.
    let try_scrape = || -> Result<String, String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5"])
            .arg(format!("http://{addr}/metrics"))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let scrape = || try_scrape().unwrap_or_else(|e| panic!("scraping /metrics: {e}"));
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let mut before = String::new();
    support::wait_until("the metrics address", Duration::from_secs(10), || {
        try_scrape().map(|t| before = t).is_ok()
    });
    assert_eq!(value(&before, "ckvault_cri_calls_total"), 0, "{before}");
    let location = s.dir.join("kubelet/checkpoint-metrics.tar");
    checkpoint_call(&s.client, "c1", &location, T).unwrap();
    let err = checkpoint_call(
        &s.client,
        "missing",
        &s.dir.join("kubelet/checkpoint-m2.tar"),
        T,
    )
    .unwrap_err();
    assert_eq!(err.code, tonic::Code::NotFound, "{err}");
    block(async {
        let mut sender = s.client.connect().await.unwrap();
        let (st, msg, _) = raw_call(&mut sender, "Version", Bytes::from_static(&[0; 5]), &[]).await;
        assert_eq!(st, "0", "{msg}");
        let (st, msg, _) = support::grpc::exchange(
            &mut sender,
            "/runtime.v1.RuntimeService//CheckpointContainer",
            Bytes::from_static(&[0; 5]),
            &[],
        )
        .await;
        assert_eq!(st, "12", "UNIMPLEMENTED: {msg}");
    });
    let text = scrape();
    assert_eq!(
        value(&text, "ckvault_cri_checkpoints_intercepted_total"),
        2,
        "{text}"
    );
    assert_eq!(
        value(&text, "ckvault_cri_checkpoints_sealed_total"),
        1,
        "{text}"
    );
    assert_eq!(
        value(&text, "ckvault_cri_checkpoints_failed_total"),
        1,
        "{text}"
    );
    assert_eq!(value(&text, "ckvault_cri_paths_refused_total"), 1, "{text}");
    assert_eq!(value(&text, "ckvault_cri_calls_total"), 4, "{text}");
    assert!(value(&text, "ckvault_cri_connections_total") >= 1, "{text}");
    assert_eq!(
        value(&text, "ckvault_cri_intercepts_refused_total"),
        0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE ckvault_cri_connections_open gauge"),
        "{text}"
    );
    // Counts only: nothing of the calls (IDs, namespaces, paths) is in the text.
    for secret in ["c1", "missing", "forensics", "web-7d4", "kubelet", "//"] {
        assert!(
            !text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.contains(secret)),
            "{secret} in:\n{text}"
        );
    }
    assert_eq!(store_records(&s.store).len(), 1);

    // A local client holding 40 idle connections to it takes 8 of the listener's slots
    // (the rest are closed at once) and none of the kubelet's calls; each idle one is closed
    // within the 2 s head timeout, and the next scrape is served.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    block(async {
        let mut sender = s.client.connect().await.unwrap();
        let (st, msg, _) = raw_call(&mut sender, "Version", Bytes::from_static(&[0; 5]), &[]).await;
        assert_eq!(st, "0", "a CRI call while /metrics is flooded: {msg}");
    });
    let t0 = Instant::now();
    for mut c in idle {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        // Closed by the proxy: end of stream (after whatever it answered) or a reset, never
        // the 10 s read timeout.
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(closed, "an idle /metrics connection stayed open");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let text = scrape();
    assert_eq!(value(&text, "ckvault_cri_calls_total"), 5, "{text}");
    for (args, code) in [(&["-X", "POST"][..], "405"), (&["-X", "GET"][..], "404")] {
        let url = if code == "404" {
            format!("http://{addr}/other")
        } else {
            format!("http://{addr}/metrics")
        };
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(args)
            .arg(url)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), code);
    }
}

#[test]
fn runtime_errors_pass_back_unchanged_and_mismatches_are_flagged() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let location = s
        .dir
        .join("kubelet/checkpoint-x_forensics-app-2026-11-28T10:00:01Z.tar");
    let err = block(s.client.unary::<_, CheckpointContainerResponse>(
        "CheckpointContainer",
        &CheckpointContainerRequest {
            container_id: "missing".into(),
            location: location.display().to_string(),
            timeout: 30,
        },
        T,
    ))
    .unwrap_err();
    assert_eq!(err.code, tonic::Code::NotFound, "{err}");
    assert!(err.message.contains("not found"), "{err}");
    assert!(!location.exists());
    assert_eq!(
        std::fs::read_dir(s.store.join("staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert!(store_records(&s.store).is_empty());

    // The runtime says c2 belongs to "payments"; the archive says "forensics".
    let _: CheckpointContainerResponse = block(s.client.checkpoint_container(
        CheckpointContainerRequest {
            container_id: "c2".into(),
            location: location.display().to_string(),
            timeout: 30,
        },
        T,
    ))
    .unwrap();
    let recs = store_records(&s.store);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["namespace"], "payments");
    assert_eq!(recs[0]["inspection"]["code"], "identity-mismatch");
}

/// The kubelet-compatible trigger API on the HTTPS server, in front of the same runtime.
#[test]
fn the_trigger_api_checkpoints_by_name_with_kubelet_status_codes() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    std::fs::create_dir(s.dir.join("k2")).unwrap();
    let (_id2, recipient) = support::age_keypair(&s.dir.join("k2"));
    let tokens = s.dir.join("tokens.toml");
    let out = Command::new(support::ckvault_bin())
        .args([
            "token",
            "add",
            "bob",
            "--group",
            "viewers",
            "--tokens",
            tokens.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bob_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::create_dir(s.dir.join("policies")).unwrap();
    std::fs::write(
        s.dir.join("policies/access.toml"),
        "version = 1\n[[grant]]\nsubjects = [\"group:ckvault:admins\"]\nnamespaces = [\"*\"]\nactions = [\"checkpoint\", \"read-manifest\", \"read-audit\"]\n[[grant]]\nsubjects = [\"group:viewers\"]\nnamespaces = [\"*\"]\nactions = [\"list\"]\n",
    )
    .unwrap();
    let config = s.dir.join("ckvault.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"serve-store\"\n[server]\nlisten = \"127.0.0.1:0\"\ntokens = \"tokens.toml\"\n[seal]\nrecipients = [\"{recipient}\"]\n[policy]\ndir = \"policies\"\n[cri]\nupstream = \"runtime.sock\"\n[audit]\npath = \"audit/ckvault.log\"\n"
        ),
    )
    .unwrap();
    // One log for the store, at [audit] path: the trigger's seals go there too.
    std::fs::create_dir(s.dir.join("audit")).unwrap();
    let mut child = Command::new(support::ckvault_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _server = Kill(child);
    let addr = line
        .split("https://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let tls = s.dir.join("serve-store/tls");
    let curl = |args: &[&str], path: &str| -> (String, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--cacert",
                tls.join("ca.pem").to_str().unwrap(),
            ])
            .args(args)
            .arg(format!("https://{addr}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let cert = tls.join("admin.pem");
    let key = tls.join("admin.key");
    let admin = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-X",
        "POST",
    ];
    let (code, body) = curl(
        &admin,
        "/checkpoint/forensics/web-7d4/app?timeout=abc&timeout=30",
    );
    assert_eq!(code, "200", "{body}");
    let items: Value = serde_json::from_str(&body).unwrap();
    let path = items["items"][0].as_str().unwrap().to_owned();
    let (code, body) = curl(&admin[..4], &path);
    assert_eq!(code, "200", "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["source"]["kind"], "trigger");
    assert_eq!(m["namespace"], "forensics");
    assert_eq!(m["inspection"]["status"], "ok");
    for (path, want) in [
        ("/checkpoint/forensics/nope/app", "pod does not exist"),
        (
            "/checkpoint/forensics/web-7d4/nope",
            "container nope does not exist",
        ),
        (
            "/checkpoint/forensics/web-7d4/app?timeout=30&timeout=soon",
            "cannot parse timeout",
        ),
        // A timeout no timer can hold: refused before the runtime is asked (it panicked a
        // task and left an intent and an empty tar in staging).
        (
            "/checkpoint/forensics/web-7d4/app?timeout=360000000000",
            "timeout must be at most 3600 seconds",
        ),
    ] {
        let (code, body) = curl(&admin, path);
        assert_eq!(code, "404", "{path}: {body}");
        assert!(body.contains(want), "{path}: {body}");
    }
    let bearer = format!("Authorization: Bearer {bob_token}");
    let (code, _) = curl(
        &["-H", &bearer, "-X", "POST"],
        "/checkpoint/forensics/web-7d4/app",
    );
    assert_eq!(code, "403");
    let (code, _) = curl(&["-X", "POST"], "/checkpoint/forensics/web-7d4/app");
    assert_eq!(code, "401");
    // every attempt, and the seal, is in the one audit log, which verifies
    let store = s.dir.join("serve-store");
    assert!(
        !store.join("audit.log").exists(),
        "a second log beside [audit] path"
    );
    let out = Command::new(support::ckvault_bin())
        .args([
            "audit",
            "show",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checkpoints: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "checkpoint")
        .collect();
    let outcomes: Vec<&str> = checkpoints
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "ok").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "denied").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "error").count(),
        4,
        "{outcomes:?}"
    );
    let seals = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "seal" && e["outcome"] == "ok")
        .count();
    assert_eq!(seals, 1, "the trigger's seal is in the configured log");
    let out = Command::new(support::ckvault_bin())
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn staging_files(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("staging"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn checkpoint_call(
    client: &RuntimeClient,
    id: &str,
    location: &Path,
    t: Duration,
) -> Result<CheckpointContainerResponse, GrpcStatus> {
    block(client.checkpoint_container(
        CheckpointContainerRequest {
            container_id: id.into(),
            location: location.display().to_string(),
            timeout: t.as_secs() as i64,
        },
        t,
    ))
}

#[test]
fn concurrent_checkpoints_of_one_container_are_serialized() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let client = s.client.clone();
                let loc = s.dir.join(format!(
                    "kubelet/checkpoint-web-7d4_forensics-app-2026-11-28T10:00:0{i}Z.tar"
                ));
                scope.spawn(move || checkpoint_call(&client, "c1", &loc, T))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(store_records(&s.store).len(), 2);
    assert!(staging_files(&s.store).is_empty());
}

#[test]
fn hostile_kubelet_locations_get_no_receipt_and_are_never_followed() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    // a symlink planted at the kubelet path
    let victim = s.dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let planted = s
        .dir
        .join("kubelet/checkpoint-web-7d4_forensics-app-2026-11-28T11:00:00Z.tar");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    checkpoint_call(&s.client, "c1", &planted, T).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // a location outside any checkpoint directory, and a relative one
    let outside = s.dir.join("elsewhere.txt");
    checkpoint_call(&s.client, "c1", &outside, T).unwrap();
    assert!(!outside.exists());
    checkpoint_call(&s.client, "c1", Path::new("../../checkpoint-rel.tar"), T).unwrap();
    assert!(!s.dir.join("checkpoint-rel.tar").exists());
    // every checkpoint was still sealed, nothing stayed in staging
    assert_eq!(store_records(&s.store).len(), 3);
    assert!(staging_files(&s.store).is_empty());
}

#[test]
fn a_runtime_past_its_deadline_gets_deadline_exceeded_and_its_late_archive_is_sealed() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let loc = s
        .dir
        .join("kubelet/checkpoint-slow-pod_forensics-app-2026-11-28T12:00:00Z.tar");
    let err = checkpoint_call(&s.client, "slow", &loc, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.code, tonic::Code::DeadlineExceeded, "{err}");
    assert!(!loc.exists());
    // The runtime writes its archive two seconds late: it is sealed, not left in staging.
    let t0 = Instant::now();
    while store_records(&s.store).is_empty() || !staging_files(&s.store).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "late archive not swept: {:?}",
            staging_files(&s.store)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let recs = store_records(&s.store);
    assert_eq!(recs[0]["source"]["kind"], "cri-late-write");
    assert_eq!(
        recs[0]["plaintext"]["size"].as_u64().unwrap(),
        s.fake.archive.len() as u64
    );
}

#[test]
fn a_full_staging_directory_fails_the_call_and_leaves_no_plaintext() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let staging = s.store.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    if support::outside_fast_tier("a tmpfs mount (root)") {
        return;
    }
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m,mode=0700",
            "tmpfs",
            staging.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        support::cannot_run(
            support::REQUIRE_ENV,
            "staging-full test: cannot mount a tmpfs here (needs root)",
        );
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(staging.clone());
    let loc = s
        .dir
        .join("kubelet/checkpoint-web-7d4_forensics-app-2026-11-28T13:00:00Z.tar");
    let err = checkpoint_call(&s.client, "c1", &loc, T).unwrap_err();
    assert_eq!(err.code, tonic::Code::Internal, "{err}");
    assert!(err.message.contains("No space left"), "{err}");
    assert!(!loc.exists());
    let t0 = Instant::now();
    while !staging_files(&s.store).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "plaintext left in staging: {:?}",
            staging_files(&s.store)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the runtime managed to write before the disk filled is memory too: it is
    // sealed (flagged as a late, truncated write), never left in plaintext.
    for r in store_records(&s.store) {
        assert_eq!(r["source"]["kind"], "cri-late-write", "{r:#}");
        assert_eq!(r["inspection"]["status"], "rejected", "{r:#}");
    }
}

#[test]
fn fifo_staging_falls_back_to_files_loudly_when_the_runtime_refuses_a_pipe() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "picky-pod", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_identity, recipient) = support::age_keypair(dir);
    let (fake, _runtime_sock) = fake_runtime_in(
        dir,
        &archive,
        ("picky", labels("forensics", "picky-pod", "app")),
    );
    let config = dir.join("ckvault.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{d}/store\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nupstream = \"{d}/runtime.sock\"\nlisten = \"{d}/ckvault.sock\"\nstaging_mode = \"fifo\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let child = Command::new(support::ckvault_bin())
        .args(["proxy", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _proxy = Kill(child);
    let sock = dir.join("ckvault.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no proxy socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = RuntimeClient::new(&sock);
    for _ in 0..2 {
        let r: Result<CheckpointContainerResponse, _> = block(client.checkpoint_container(
            CheckpointContainerRequest {
                container_id: "picky".into(),
                location: String::new(),
                timeout: 30,
            },
            T,
        ));
        assert!(r.is_ok(), "{r:?}");
    }
    let asked = fake.asked_locations.lock().unwrap().clone();
    let kinds: Vec<&str> = asked
        .iter()
        .map(|l| l.rsplit('.').next().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["fifo", "tar", "tar"], "{asked:?}");
    let records = store_records(&dir.join("store"));
    assert_eq!(records.len(), 2, "{records:?}");
    let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap();
    assert_eq!(log.matches("WARNING").count(), 1, "{log}");
    assert!(log.contains("falling back to staging files"), "{log}");
    assert!(staging_files(&dir.join("store")).is_empty());
}

/// One gRPC call on an existing HTTP/2 connection, with `extra` headers after one the
/// client's HPACK encoder indexes: (grpc-status, grpc-message, body).
async fn raw_call(
    sender: &mut support::grpc::Sender,
    method: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> (String, String, Bytes) {
    let mut headers = vec![("x-repeated", "leans-on-the-hpack-table".to_owned())];
    headers.extend(extra.iter().cloned());
    support::grpc::exchange(
        sender,
        &format!("/runtime.v1.RuntimeService/{method}"),
        body,
        &headers,
    )
    .await
}

#[test]
fn one_connection_carries_calls_around_intercepted_checkpoints() {
    // The proxy relays frames: intercepted CheckpointContainer streams are answered by
    // ckvault on the client's connection, between the runtime's frames. On ONE connection:
    // a stream open across a checkpoint, more intercepted request bytes than the HTTP/2
    // connection window (65,535) so the credit must be given back, and calls after the
    // interception whose headers the client's HPACK encoder indexes (re-encoded for the
    // runtime, whose table missed the intercepted block).
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let loc = s.dir.join("kubelet/checkpoint-one-conn.tar");
    block(async {
        let mut sender = s.client.connect().await.unwrap();
        let (st, msg, body) =
            raw_call(&mut sender, "Version", Bytes::from_static(&[0; 5]), &[]).await;
        assert_eq!(st, "0", "{msg}");
        let v: VersionResponse = cri::unframe(body, 1 << 20).unwrap();
        assert_eq!(v.runtime_name, "ckvault-test-runtime");
        // A server stream left open across what follows.
        let mut events_sender = sender.clone();
        let events = tokio::spawn(async move {
            raw_call(
                &mut events_sender,
                "GetContainerEvents",
                Bytes::from_static(&[0; 5]),
                &[],
            )
            .await
        });
        // 7 x 900 KiB of intercepted request bytes (more than hyper's 5 MiB connection
        // window, and grpc-go's 64 KiB): refused ("not found"), never stalled. Each carries
        // a header of its own, which the client's HPACK encoder adds to its table.
        for i in 0..7 {
            let req = CheckpointContainerRequest {
                container_id: format!("{i}{}", "x".repeat(900 << 10)),
                location: String::new(),
                timeout: 10,
            };
            let (st, msg, _) = tokio::time::timeout(
                Duration::from_secs(30),
                raw_call(
                    &mut sender,
                    "CheckpointContainer",
                    cri::frame(&req),
                    &[("x-call", format!("intercepted-{i}"))],
                ),
            )
            .await
            .expect("an intercepted call stalled: flow-control credit not returned");
            assert_ne!(st, "0", "call {i}: {msg}");
            assert!(!st.is_empty(), "call {i}: no grpc-status");
        }
        // A real one, sealed, with a receipt.
        let req = CheckpointContainerRequest {
            container_id: "c1".into(),
            location: loc.display().to_string(),
            timeout: 60,
        };
        let (st, msg, body) =
            raw_call(&mut sender, "CheckpointContainer", cri::frame(&req), &[]).await;
        assert_eq!(st, "0", "{msg}");
        let _: CheckpointContainerResponse = cri::unframe(body, 1 << 20).unwrap();
        // Calls after the interception, whose headers hyper now sends as table indexes.
        for _ in 0..3 {
            let (st, msg, body) =
                raw_call(&mut sender, "Version", Bytes::from_static(&[0; 5]), &[]).await;
            assert_eq!(st, "0", "{msg}");
            let v: VersionResponse = cri::unframe(body, 1 << 20).unwrap();
            assert_eq!(v.runtime_name, "ckvault-test-runtime");
            let (st, msg, _) = raw_call(
                &mut sender,
                "ListContainers",
                cri::frame(&ListContainersRequest::default()),
                &[],
            )
            .await;
            assert_eq!(st, "0", "{msg}");
        }
        let (st, msg, frames) = events.await.unwrap();
        assert_eq!(st, "0", "{msg}");
        assert_eq!(frames.len(), 21);
    });
    assert!(loc.exists(), "no receipt");
    assert_eq!(store_records(&s.store).len(), 1);
}

#[test]
fn relative_store_and_config_paths_reach_the_runtime_absolute() {
    // `--store pst` and a relative `--config` whose `[cri] staging` is relative: the
    // runtime (another process, another working directory) must be handed absolute paths.
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_identity, recipient) = support::age_keypair(dir);
    let (fake, runtime_sock) =
        fake_runtime_in(dir, &archive, ("c1", labels("forensics", "web-7d4", "app")));
    std::fs::create_dir(dir.join("conf")).unwrap();
    std::fs::write(
        dir.join("conf/ckvault.toml"),
        format!(
            "[store]\npath = \"cfgstore\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nstaging = \"stg\"\n"
        ),
    )
    .unwrap();
    let runs: [(&str, Vec<&str>, PathBuf, PathBuf); 2] = [
        (
            "store",
            vec!["--store", "pst", "-r", &recipient],
            dir.join("pst/staging"),
            dir.join("pst"),
        ),
        (
            "config",
            vec!["--config", "conf/ckvault.toml"],
            dir.join("conf/stg"),
            dir.join("conf/cfgstore"),
        ),
    ];
    for (i, (what, args, staging, store)) in runs.iter().enumerate() {
        let listen = dir.join(format!("ckvault-{what}.sock"));
        let child = Command::new(support::ckvault_bin())
            .current_dir(dir)
            .args(["proxy", "--listen", support::p(&listen)])
            .args(["--runtime", support::p(&runtime_sock)])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let _proxy = Kill(child);
        let t0 = Instant::now();
        while !listen.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "proxy socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = RuntimeClient::new(&listen);
        std::fs::create_dir_all(dir.join("kubelet")).unwrap();
        let location = dir.join(format!("kubelet/checkpoint-{what}.tar"));
        let r = checkpoint_call(&client, "c1", &location, T);
        assert!(r.is_ok(), "{what}: {r:?}");
        let asked = fake.asked_locations.lock().unwrap().clone();
        let loc = Path::new(&asked[i]);
        assert!(loc.is_absolute(), "{what}: the runtime was handed {loc:?}");
        assert!(
            loc.starts_with(staging),
            "{what}: {loc:?} not under {staging:?}"
        );
        assert_eq!(store_records(store).len(), 1, "{what}");
    }
}

/// A process's resident and peak resident memory, in KiB (`VmRSS`, `VmHWM`).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (get("VmRSS:"), get("VmHWM:"))
}

#[test]
fn unfinished_checkpoint_requests_beyond_the_limits_are_refused_in_bounded_memory() {
    // One connection opens 1,500 CheckpointContainer streams with 1 MiB of body each and
    // never ends one: 8 are held ([cri] max_pending_per_connection), the rest answered
    // RESOURCE_EXHAUSTED at once; the proxy's memory stays flat.
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let s = setup(&archive);
    let pid = s._proxy.0.id();
    let (before, _) = rss_kib(pid);
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/harness/pending_checkpoints.py"
        ))
        .arg(s.dir.join("ckvault.sock"))
        .args(["1500", &(1 << 20).to_string(), "120"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, peak) = rss_kib(pid);
    eprintln!(
        "proxy RSS {} MiB before, peak {} MiB; client: {report}",
        before >> 10,
        peak >> 10
    );
    assert_eq!(report["opened"], 1500, "{report}");
    assert_eq!(report["unanswered"], 8, "{report}");
    assert_eq!(report["answered"]["8"], 1492, "{report}");
    assert!(
        peak.saturating_sub(before) < 48 << 10,
        "the proxy grew from {} to {} MiB",
        before >> 10,
        peak >> 10
    );
    // Nothing of it reached the runtime.
    assert!(s.fake.asked_locations.lock().unwrap().is_empty());
}
