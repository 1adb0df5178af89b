//! The node's own triggers on a REAL runtime that checkpoints (containerd 2.1 + runc +
//! CRIU 4.2, tests/harness/real-cri-runtime.sh), through `ckvault proxy`:
//! - a kubelet-style `StopContainer` (tonic, a stock gRPC client, one connection) for a
//!   container an `on_stop` rule selects: the sealed record exists before the container
//!   stopped (its `sealed_at` before the runtime's `finished_at`), the stop completes, and
//!   `Version` / `ListContainers` on the same connection are answered while it is held; a
//!   stop of a container no rule selects captures nothing;
//! - a kubelet-style `StopPodSandbox` for a pod whose container an `on_stop` rule selects
//!   (the container still running, as when the kubelet ends a pod without stopping each
//!   container first): the record exists before the container stopped, the sandbox is
//!   stopped by ckvault's own call;
//! - with a budget shorter than the checkpoint (512 MiB), the stop still completes within
//!   its deadline and the miss is a `capture-missed` audit event;
//! - a schedule rule and a threshold rule (a container whose heap grows past it) on a real
//!   pod: one record each, whatever the number of polls (the gate deduplicates).
//! - a `memory_share` rule on a real container with a memory limit, past half of it: one
//!   record, its summary naming the limit.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckvault::internal::capture::cri::{
    self, ContainerFilter, ContainerMetadata, ContainerStatusRequest, ImageSpec,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxMetadata, RuntimeClient,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
    v1::runtime_service_client::RuntimeServiceClient,
};
use serde_json::Value;
use support::containerd::msg;
use support::realcri::RealCri;
use support::{ok, p};

type Client = RuntimeServiceClient<tonic::transport::Channel>;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node agent (`ckvault proxy`) in front of the runtime with `extra` configuration
/// (rules, `[capture]`), its store in `dir/store`, staging under the runtime's binds.
struct Node {
    dir: PathBuf,
    config: PathBuf,
    listen: PathBuf,
}

impl Node {
    fn new(rt: &RealCri, name: &str, extra: &str) -> Node {
        let dir = rt.dir(name);
        let (_identity, recipient) = support::age_keypair(&dir);
        let config = dir.join("ckvault.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{d}/store\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nupstream = \"{s}\"\nstaging = \"{d}/staging\"\nlisten = \"{d}/cri.sock\"\n{extra}",
                d = dir.display(),
                s = rt.socket.display()
            ),
        )
        .unwrap();
        Node {
            listen: dir.join("cri.sock"),
            dir,
            config,
        }
    }

    fn proxy(&self) -> Proc {
        let _ = std::fs::remove_file(&self.listen);
        let log = std::fs::File::create(self.dir.join("proxy.log")).unwrap();
        let child = Command::new(support::ckvault_bin())
            .args(["proxy", "--config", p(&self.config)])
            .env("RUST_LOG", "ckvault=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.listen.exists() {
            assert!(Instant::now() < deadline, "the proxy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Proc(child)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// Every record's manifest.
    fn manifests(&self) -> Vec<Value> {
        let store = self.dir.join("store");
        let ls: Value = serde_json::from_str(&ok(&support::ckvault(&[
            "ls",
            "--store",
            p(&store),
            "--format",
            "json",
        ])))
        .unwrap();
        ls.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap();
                serde_json::from_str(&ok(&support::ckvault(&["show", id, "--store", p(&store)])))
                    .unwrap()
            })
            .collect()
    }

    fn audit(&self) -> Vec<Value> {
        support::audit_events(&self.dir.join("store"))
    }

    fn staging(&self) -> Vec<String> {
        support::visible_entries(&self.dir.join("staging"))
    }
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One HTTP/2 connection to `socket`, as a stock tonic client makes it.
async fn connect(socket: &Path) -> Client {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// A kubelet-style StopContainer: grace period `grace` s, gRPC deadline `deadline`.
async fn stop(
    mut c: Client,
    id: String,
    grace: i64,
    deadline: Duration,
) -> (Result<(), tonic::Status>, Duration) {
    let mut req = tonic::Request::new(StopContainerRequest {
        container_id: id,
        timeout: grace,
    });
    req.set_timeout(deadline);
    let t = Instant::now();
    let r = c.stop_container(req).await.map(|_| ());
    (r, t.elapsed())
}

/// (state, finished_at in ns) of container `id`, straight from the runtime.
async fn state(rt: &RealCri, id: &str) -> (i32, i64) {
    let s = RuntimeClient::new(&rt.socket)
        .container_status(
            ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .status
        .unwrap();
    (s.state, s.finished_at)
}

/// RFC 3339 to ns since the epoch.
fn ns(t: &str) -> i64 {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp_nanos() as i64
}

/// The harness pod's sandbox ID.
async fn sandbox_of(rt: &RealCri) -> String {
    RuntimeClient::new(&rt.socket)
        .list_containers(
            ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: rt.container_id.clone(),
                    ..Default::default()
                }),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .containers
        .first()
        .unwrap()
        .pod_sandbox_id
        .clone()
}

/// Starts one more container `name` running `command` in the harness pod `ns`/`pod`
/// (the same sandbox configuration the harness gave it), with a memory limit of
/// `memory_limit` bytes when it is not 0; its ID.
async fn run_container(
    rt: &RealCri,
    sandbox: &str,
    (ns, pod): (&str, &str),
    name: &str,
    command: &[&str],
    memory_limit: i64,
) -> String {
    let client = RuntimeClient::new(&rt.socket);
    let namespaces = msg::NamespaceOption {
        network: support::containerd::NS_NODE,
        pid: support::containerd::NS_CONTAINER,
        ipc: support::containerd::NS_POD,
        target_id: String::new(),
    };
    let labels = HashMap::from([
        (cri::LABEL_POD.to_owned(), pod.to_owned()),
        (cri::LABEL_NAMESPACE.to_owned(), ns.to_owned()),
        (cri::LABEL_POD_UID.to_owned(), format!("uid-{pod}")),
    ]);
    let sandbox_config = msg::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.to_owned(),
            uid: format!("uid-{pod}"),
            namespace: ns.to_owned(),
            attempt: 0,
        }),
        log_directory: Path::new(support::realcri::CACHE)
            .join("share/logs")
            .display()
            .to_string(),
        labels: labels.clone(),
        linux: Some(msg::LinuxPodSandboxConfig {
            security_context: Some(msg::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut labels = labels;
    labels.insert(cri::LABEL_CONTAINER.to_owned(), name.to_owned());
    let config = msg::ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "localhost/memhog:1".to_owned(),
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        labels,
        log_path: format!("{name}.log"),
        linux: Some(msg::LinuxContainerConfig {
            resources: (memory_limit > 0).then_some(msg::LinuxContainerResources {
                memory_limit_in_bytes: memory_limit,
            }),
            security_context: Some(msg::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let t = Duration::from_secs(60);
    let created: msg::CreateContainerResponse = client
        .unary(
            "CreateContainer",
            &msg::CreateContainerRequest {
                pod_sandbox_id: sandbox.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            },
            t,
        )
        .await
        .unwrap();
    let _: msg::StartContainerResponse = client
        .unary(
            "StartContainer",
            &msg::StartContainerRequest {
                container_id: created.container_id.clone(),
            },
            t,
        )
        .await
        .unwrap();
    created.container_id
}

const EXITED: i32 = 2;

#[test]
fn a_stop_through_the_proxy_is_held_until_the_container_is_sealed_and_other_calls_flow() {
    let Some(rt) = RealCri::start(64, "shop", "api-0", "api") else {
        return;
    };
    let node = Node::new(
        &rt,
        "node-stop",
        "[[trigger]]\nname = \"drain\"\non_stop = true\nnamespaces = [\"shop\"]\ncontainers = [\"api\"]\npod_labels = { \"io.kubernetes.pod.name\" = \"api-0\" }\n",
    );
    let _proxy = node.proxy();
    let rtk = tokio();
    rtk.block_on(async {
        let sandbox = sandbox_of(&rt).await;
        // A sidecar in the same pod that no rule selects.
        let side = run_container(
            &rt,
            &sandbox,
            ("shop", "api-0"),
            "sidecar",
            &["/bin/memhog", "8"],
            0,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(&rt, &side).await.0 != cri::CONTAINER_RUNNING {
            assert!(Instant::now() < deadline, "the sidecar did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = connect(&node.listen).await;

        // The sidecar's stop goes on at once, and captures nothing.
        let (r, took) = stop(client.clone(), side.clone(), 2, Duration::from_secs(60)).await;
        r.expect("the sidecar's stop");
        assert_eq!(state(&rt, &side).await.0, EXITED);
        assert!(node.manifests().is_empty(), "no rule selects the sidecar");
        eprintln!("stop of a container no rule selects: {:.0} ms", took.as_secs_f64() * 1e3);

        // The selected container's stop is held while it is captured; the connection
        // carries other calls meanwhile.
        let held = tokio::spawn(stop(
            client.clone(),
            rt.container_id.clone(),
            10,
            Duration::from_secs(60),
        ));
        let (mut during, mut slowest) = (0u32, Duration::ZERO);
        while !held.is_finished() {
            let t = Instant::now();
            let mut c = client.clone();
            let v = c
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await
                .expect("Version while the stop is held");
            assert_eq!(v.into_inner().runtime_name, "containerd");
            let listed = c
                .list_containers(ListContainersRequest::default())
                .await
                .expect("ListContainers while the stop is held")
                .into_inner();
            let ours = listed
                .containers
                .iter()
                .find(|c| c.id == rt.container_id)
                .unwrap();
            if !held.is_finished() {
                during += 1;
                slowest = slowest.max(t.elapsed());
                assert_eq!(
                    ours.state,
                    cri::CONTAINER_RUNNING,
                    "the container runs while its stop is held"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (r, took) = held.await.unwrap();
        r.expect("the held stop completes");
        let (st, finished_at) = state(&rt, &rt.container_id).await;
        assert_eq!(st, EXITED, "the container is stopped");
        eprintln!(
            "stop with a capture before it: {:.2} s; {during} Version+ListContainers pairs answered meanwhile on the same connection, slowest {:.0} ms",
            took.as_secs_f64(),
            slowest.as_secs_f64() * 1e3
        );
        assert!(during >= 3, "calls flowed while the stop was held: {during}");
        assert!(slowest < Duration::from_secs(2), "{slowest:?}");

        let manifests = node.manifests();
        assert_eq!(manifests.len(), 1, "{manifests:#?}");
        let m = &manifests[0];
        assert_eq!(m["trigger"]["kind"], "before-stop", "{m:#}");
        assert_eq!(m["trigger"]["rule"], "drain");
        assert_eq!(m["container"], "api");
        assert_eq!(m["namespace"], "shop");
        assert_eq!(m["container_id"], rt.container_id.as_str());
        let sealed = ns(m["sealed_at"].as_str().unwrap());
        assert!(
            sealed < finished_at,
            "sealed at {} before the container finished at {finished_at}",
            sealed
        );
    });
    assert!(node.staging().is_empty(), "{:?}", node.staging());
    let events = node.audit();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "capture" && e["outcome"] == "ok"),
        "{events:#?}"
    );
    assert!(!events.iter().any(|e| e["action"] == "capture-missed"));
}

#[test]
fn a_pod_stop_through_the_proxy_captures_its_selected_running_container_first() {
    let Some(rt) = RealCri::start(16, "shop", "web-0", "web") else {
        return;
    };
    let node = Node::new(
        &rt,
        "node-pod-stop",
        "[[trigger]]\nname = \"pod-end\"\non_stop = true\nnamespaces = [\"shop\"]\ncontainers = [\"web\"]\n",
    );
    let _proxy = node.proxy();
    let rtk = tokio();
    rtk.block_on(async {
        let sandbox = sandbox_of(&rt).await;
        let mut client = connect(&node.listen).await;
        let mut req = tonic::Request::new(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        });
        req.set_timeout(Duration::from_secs(60));
        let t = Instant::now();
        client
            .stop_pod_sandbox(req)
            .await
            .expect("the held StopPodSandbox completes");
        eprintln!(
            "StopPodSandbox with a capture before it: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let (st, finished_at) = state(&rt, &rt.container_id).await;
        assert_eq!(st, EXITED, "the pod's container is stopped");
        let sandboxes = RuntimeClient::new(&rt.socket)
            .list_pod_sandbox(ListPodSandboxRequest::default(), Duration::from_secs(10))
            .await
            .unwrap();
        let ours = sandboxes
            .items
            .iter()
            .find(|s| s.id == sandbox)
            .expect("the sandbox is still listed");
        assert_ne!(
            ours.state,
            cri::SANDBOX_READY,
            "the sandbox is stopped: {ours:?}"
        );

        let manifests = node.manifests();
        assert_eq!(manifests.len(), 1, "{manifests:#?}");
        let m = &manifests[0];
        assert_eq!(m["trigger"]["kind"], "before-stop", "{m:#}");
        assert_eq!(m["trigger"]["rule"], "pod-end");
        assert!(
            m["trigger"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("StopPodSandbox"),
            "{m:#}"
        );
        assert_eq!(m["container_id"], rt.container_id.as_str());
        let sealed = ns(m["sealed_at"].as_str().unwrap());
        assert!(
            sealed < finished_at,
            "sealed at {sealed} before the container finished at {finished_at}"
        );
    });
    assert!(node.staging().is_empty(), "{:?}", node.staging());
}

#[test]
fn a_capture_longer_than_the_stop_budget_lets_the_stop_go_on_within_its_deadline_and_is_audited() {
    let Some(rt) = RealCri::start(512, "shop", "big-0", "big") else {
        return;
    };
    // Grace 2 s, deadline 4.5 s, margin 2 s: 0.5 s to capture 512 MiB (3.5-6.5 s here).
    let node = Node::new(
        &rt,
        "node-miss",
        "[capture]\nstop_margin = \"2s\"\n[[trigger]]\nname = \"drain\"\non_stop = true\n",
    );
    let _proxy = node.proxy();
    let deadline = Duration::from_millis(4500);
    let rtk = tokio();
    rtk.block_on(async {
        let client = connect(&node.listen).await;
        let (r, took) = stop(client, rt.container_id.clone(), 2, deadline).await;
        eprintln!(
            "stop with a 0.5 s budget for a 512 MiB capture: {:.2} s ({r:?}); proxy log:\n{}",
            took.as_secs_f64(),
            node.log()
        );
        r.expect("the stop completes within its deadline");
        assert!(took < deadline, "{took:?}");
        assert_eq!(state(&rt, &rt.container_id).await.0, EXITED);
    });
    let events = node.audit();
    let missed: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "capture-missed")
        .collect();
    assert_eq!(missed.len(), 1, "{events:#?}");
    let detail = missed[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("shop/big-0/big")
            && detail.contains("rule drain")
            && detail.contains("budget"),
        "{detail}"
    );
    // The capture itself ends (sealed, or failed as the container stopped under it), and
    // leaves no plaintext.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let done = node.audit().iter().any(|e| {
            e["action"] == "capture"
                || (e["action"] == "capture-abandoned" && e["outcome"] == "error")
        });
        if done && node.staging().is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "the missed capture never ended: {:?}\n{}",
            node.staging(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn schedule_and_threshold_rules_capture_a_real_pod_once_each_through_the_gate() {
    let Some(rt) = RealCri::start(64, "batch", "job-0", "hog") else {
        return;
    };
    let node = Node::new(
        &rt,
        "node-poll",
        "[capture]\npoll_interval = \"1s\"\nmax_concurrent = 2\n\
         [[trigger]]\nname = \"hourly\"\nevery = \"2s\"\ncooldown = \"1h\"\ncontainers = [\"hog\"]\n\
         [[trigger]]\nname = \"heap\"\nmemory_above = \"48MiB\"\nsustained = \"2s\"\ncooldown = \"1h\"\ncontainers = [\"grower\"]\n",
    );
    let _proxy = node.proxy();
    let rtk = tokio();
    let grower = rtk.block_on(async {
        let sandbox = sandbox_of(&rt).await;
        // Small for 6 s, then 96 MiB of heap.
        run_container(
            &rt,
            &sandbox,
            ("batch", "job-0"),
            "grower",
            &["/bin/sh", "-c", "sleep 6; exec /bin/memhog 96"],
            0,
        )
        .await
    });
    let started = Instant::now();
    // Twenty polls: the schedule is due ten times, the threshold crossed for more than ten
    // polls; the gate lets one capture of each container through.
    let end = started + Duration::from_secs(20);
    let mut threshold_seen_at = None;
    while Instant::now() < end {
        if threshold_seen_at.is_none()
            && node
                .manifests()
                .iter()
                .any(|m| m["trigger"]["kind"] == "threshold")
        {
            threshold_seen_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let manifests = node.manifests();
    let of = |kind: &str| -> Vec<&Value> {
        manifests
            .iter()
            .filter(|m| m["trigger"]["kind"] == kind)
            .collect()
    };
    let (schedule, threshold) = (of("schedule"), of("threshold"));
    assert_eq!(schedule.len(), 1, "{manifests:#?}\n{}", node.log());
    assert_eq!(threshold.len(), 1, "{manifests:#?}\n{}", node.log());
    assert_eq!(manifests.len(), 2, "{manifests:#?}");
    assert_eq!(schedule[0]["trigger"]["rule"], "hourly");
    assert_eq!(schedule[0]["container"], "hog");
    assert_eq!(schedule[0]["trigger"]["requested_by"], "system");
    let t = threshold[0];
    assert_eq!(t["trigger"]["rule"], "heap");
    assert_eq!(t["container"], "grower");
    assert_eq!(t["container_id"], grower.as_str());
    let summary = t["trigger"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("above 48 MiB") || summary.contains("above 48MiB"),
        "{summary}"
    );
    // Not before the heap grew (6 s) and held (2 s).
    let seen = threshold_seen_at.unwrap();
    assert!(
        seen >= Duration::from_secs(8),
        "captured at {seen:?}, before it grew"
    );
    eprintln!(
        "threshold capture sealed {:.1} s after the container started",
        seen.as_secs_f64()
    );
    // Refused duplicates are counted, not audited: the audit log holds the two captures.
    let events = node.audit();
    let captures: Vec<&Value> = events.iter().filter(|e| e["action"] == "capture").collect();
    assert_eq!(captures.len(), 2, "{captures:#?}");
    assert!(captures.iter().all(|e| e["outcome"] == "ok"));
    assert!(
        node.log().contains("deduplicated"),
        "the gate refused the repeats"
    );
    assert!(node.staging().is_empty());
}

#[test]
fn a_memory_share_rule_captures_a_real_container_past_its_share_of_the_limit() {
    let Some(rt) = RealCri::start(16, "batch", "share-0", "idle") else {
        return;
    };
    // Half of a 160 MiB limit: 80 MiB. The container holds a few KiB for 6 s, then 112 MiB.
    let node = Node::new(
        &rt,
        "node-share",
        "[capture]\npoll_interval = \"1s\"\n\
         [[trigger]]\nname = \"half\"\nmemory_share = 0.5\nsustained = \"2s\"\ncooldown = \"1h\"\ncontainers = [\"limited\"]\n",
    );
    let _proxy = node.proxy();
    let rtk = tokio();
    let limited = rtk.block_on(async {
        let sandbox = sandbox_of(&rt).await;
        run_container(
            &rt,
            &sandbox,
            ("batch", "share-0"),
            "limited",
            &["/bin/sh", "-c", "sleep 6; exec /bin/memhog 112"],
            160 << 20,
        )
        .await
    });
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(25) && seen.is_none() {
        if node
            .manifests()
            .iter()
            .any(|m| m["trigger"]["kind"] == "threshold")
        {
            seen = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let seen = seen.unwrap_or_else(|| panic!("no threshold capture\n{}", node.log()));
    assert!(
        seen >= Duration::from_secs(8),
        "captured at {seen:?}, before it grew and held"
    );
    let manifests = node.manifests();
    assert_eq!(manifests.len(), 1, "{manifests:#?}");
    let m = &manifests[0];
    assert_eq!(m["trigger"]["rule"], "half");
    assert_eq!(m["container_id"], limited.as_str());
    let summary = m["trigger"]["summary"].as_str().unwrap();
    assert!(summary.contains("limit"), "{summary}");
    eprintln!(
        "memory_share capture sealed {:.1} s after the container started: {summary}",
        seen.as_secs_f64()
    );
    assert!(node.staging().is_empty());
}
