//! A REAL containerd (Debian 12's 1.6 + runc) as the upstream CRI runtime of a test, run
//! by `tests/harness/containerd.sh` in a fresh temporary directory of its own.
//!
//! ```ignore
//! let Some(ctrd) = support::containerd::Containerd::start() else { return };
//! let (sandbox_id, container_id) = ctrd.run_pod("shop", "api-0", "api");
//! let client = ckvault::internal::capture::cri::RuntimeClient::new(&ctrd.socket);
//! ```
//!
//! - Every [`Containerd::start`] is its own daemon: own root, state, sockets and runc root
//!   under its own tempdir, so tests in one binary (which cargo runs in parallel) each
//!   start their own and never see each other's pods. Nothing is shared on purpose:
//!   dropping a shared instance from a `static` would never happen, leaking the daemon.
//!   A start takes about 1.2-2 s, `run_pod` about 0.5 s, the drop 0.3-1 s (up to ~3 s
//!   when CRI is slow to reap the killed tasks). The first start on a machine also
//!   installs the packages (apt-get) and builds the images (~2 s, cached in
//!   `/var/tmp/ckvault-ctrd-images`).
//! - Dropping it stops containerd, kills its shims and containers, unmounts whatever is
//!   left under its dir and deletes the dir. Should the test process die without
//!   dropping it (killed, aborted), a detached watchdog does the same.
//! - Pods run on the host network (no CNI here) with kubelet-style labels; the container
//!   image is [`BUSYBOX_IMAGE`] (busybox-static applets in /bin).
//! - The CRI helpers here are blocking: each call runs on a scoped thread with its own
//!   current-thread tokio runtime, so they work from plain `#[test]`s and from inside
//!   `#[tokio::test]`s alike (they block the calling thread meanwhile).
//! - containerd 1.6 answers CheckpointContainer with gRPC status 12 (UNIMPLEMENTED).

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ckvault::internal::capture::cri::{
    self, ContainerFilter, ContainerMetadata, GrpcStatus, ImageSpec, ListContainersRequest,
    ListContainersResponse, PodSandboxMetadata, RuntimeClient,
};

use super::REQUIRE_ENV;

/// The container image every pod's container runs (imported by the harness).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:ckvault";
/// `NamespaceMode` values of runtime.v1.
pub const NS_POD: i32 = 0;
/// `NamespaceMode::CONTAINER`.
pub const NS_CONTAINER: i32 = 1;
/// `NamespaceMode::NODE`.
pub const NS_NODE: i32 = 2;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/containerd.sh");
/// Deadline of one CRI call made by these helpers.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a started container may take to show as CONTAINER_RUNNING.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the first start in this process could not run containerd here: later starts skip
/// at once instead of failing the same way again (each attempt may wait for timeouts).
static CANNOT: Mutex<Option<String>> = Mutex::new(None);

/// The CRI messages needed to run a pod that `ckvault::internal::capture::cri` does not define, with
/// the field numbers of k8s.io/cri-api runtime.v1 api.proto (only the fields used here).
#[allow(missing_docs)]
pub mod msg {
    use std::collections::HashMap;

    use ckvault::internal::capture::cri::{ContainerMetadata, ImageSpec, PodSandboxMetadata};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceOption {
        #[prost(int32, tag = "1")]
        pub network: i32,
        #[prost(int32, tag = "2")]
        pub pid: i32,
        #[prost(int32, tag = "3")]
        pub ipc: i32,
        #[prost(string, tag = "4")]
        pub target_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub namespace_options: Option<NamespaceOption>,
        #[prost(bool, tag = "4")]
        pub readonly_rootfs: bool,
        #[prost(bool, tag = "6")]
        pub privileged: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxSandboxSecurityContext>,
        #[prost(map = "string, string", tag = "3")]
        pub sysctls: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(string, tag = "2")]
        pub hostname: String,
        #[prost(string, tag = "3")]
        pub log_directory: String,
        #[prost(map = "string, string", tag = "6")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "7")]
        pub annotations: HashMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
        #[prost(string, tag = "2")]
        pub runtime_handler: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerSecurityContext {
        #[prost(bool, tag = "2")]
        pub privileged: bool,
        #[prost(message, optional, tag = "3")]
        pub namespace_options: Option<NamespaceOption>,
        #[prost(bool, tag = "7")]
        pub readonly_rootfs: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerResources {
        #[prost(int64, tag = "4")]
        pub memory_limit_in_bytes: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub resources: Option<LinuxContainerResources>,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxContainerSecurityContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "2")]
        pub image: Option<ImageSpec>,
        #[prost(string, repeated, tag = "3")]
        pub command: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub args: Vec<String>,
        #[prost(string, tag = "5")]
        pub working_dir: String,
        #[prost(message, repeated, tag = "6")]
        pub envs: Vec<KeyValue>,
        #[prost(map = "string, string", tag = "9")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "10")]
        pub annotations: HashMap<String, String>,
        #[prost(string, tag = "11")]
        pub log_path: String,
        #[prost(message, optional, tag = "15")]
        pub linux: Option<LinuxContainerConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "2")]
        pub config: Option<ContainerConfig>,
        #[prost(message, optional, tag = "3")]
        pub sandbox_config: Option<PodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerResponse {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartContainerRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartContainerResponse {}
    /// Also the shape of RemovePodSandboxRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    /// Also the shape of RemovePodSandboxResponse.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxResponse {}
}

/// A running private containerd; dropped, it is stopped and its directory removed.
pub struct Containerd {
    /// Its directory: config.toml, containerd.log, root/, state/, pods/ (container logs).
    pub dir: PathBuf,
    /// Its CRI gRPC socket (`dir/containerd.sock`).
    pub socket: PathBuf,
    /// Owns `dir`; `None` once stopping failed to unmount (the dir is kept then).
    tmp: Option<tempfile::TempDir>,
}

impl Containerd {
    /// Starts a private containerd in a fresh temporary directory.
    ///
    /// Returns `None` after a loud `*** SKIPPED ... ***` notice on stderr when this machine
    /// cannot run it (not root, packages not installable, containerd or its CRI plugin
    /// would not start), or panics if `CKVAULT_REQUIRE_REAL_CHECKPOINT=1`.
    pub fn start() -> Option<Containerd> {
        if super::outside_fast_tier("containerd (root)") {
            return None;
        }
        if let Some(reason) = CANNOT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
        {
            return cannot(&reason);
        }
        let t0 = Instant::now();
        // Socket paths must stay short (108 bytes): the harness takes dirs of <= 80 chars.
        let mut builder = tempfile::Builder::new();
        builder.prefix("ckvault-ctrd-");
        let tmp = match builder.tempdir() {
            Ok(t) if t.path().as_os_str().len() <= 60 => t,
            _ => builder
                .tempdir_in("/tmp")
                .unwrap_or_else(|e| panic!("create a tempdir in /tmp: {e}")),
        };
        let dir = tmp.path().to_path_buf();
        let result = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .env("CKVAULT_CTRD_WATCH_PID", std::process::id().to_string())
            .env("CKVAULT_CTRD_WATCH_RMDIR", "1")
            .output();
        let reason = match result {
            Ok(out) if out.status.success() => {
                let started_in = t0.elapsed();
                eprintln!(
                    "support: containerd in {} ready in {:.2} s",
                    dir.display(),
                    started_in.as_secs_f64()
                );
                return Some(Containerd {
                    socket: dir.join("containerd.sock"),
                    dir,
                    tmp: Some(tmp),
                });
            }
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                eprintln!("support: containerd.sh start said:\n{stderr}");
                match out.status.code() {
                    Some(2) => panic!("containerd.sh rejected its arguments:\n{stderr}"),
                    Some(3) => {
                        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                        let last = last.unwrap_or("containerd.sh failed without a word");
                        let last = last.strip_prefix("containerd.sh: ").unwrap_or(last);
                        last.strip_prefix("cannot run containerd here: ")
                            .unwrap_or(last)
                            .to_owned()
                    }
                    // Not an environment problem: a broken harness must fail loudly.
                    _ => panic!(
                        "containerd.sh start {} failed ({}):\n{stderr}",
                        dir.display(),
                        out.status
                    ),
                }
            }
            Err(e) => format!("could not run bash {SCRIPT}: {e}"),
        };
        // The script stops what it started before it fails; the tempdir goes with `tmp`.
        *CANNOT.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        cannot(&reason)
    }

    /// A `RuntimeClient` for this containerd's socket (for use in async code).
    pub fn client(&self) -> RuntimeClient {
        RuntimeClient::new(&self.socket)
    }

    /// One unary CRI call (`method` as in `RuntimeClient::unary`, e.g. "Version"),
    /// blocking the calling thread; usable inside and outside a tokio runtime.
    pub fn cri<Req, Resp>(&self, method: &str, req: &Req) -> Result<Resp, GrpcStatus>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let client = self.client();
        block_on(|| async move { client.unary::<Req, Resp>(method, req, CALL_TIMEOUT).await })
    }

    /// Runs a pod as the kubelet would (RunPodSandbox, CreateContainer, StartContainer)
    /// and waits until its container is CONTAINER_RUNNING: pod `ns`/`pod` with one
    /// container `container` running `sleep 3600` in [`BUSYBOX_IMAGE`], on the host network
    /// (pid namespace per container, ipc per pod), labelled io.kubernetes.pod.name,
    /// .pod.namespace, .pod.uid and .container.name. Returns (sandbox id, container id).
    /// The container's log is under `dir/pods/`. Panics (with the end of containerd's
    /// log) when a call fails.
    pub fn run_pod(&self, ns: &str, pod: &str, container: &str) -> (String, String) {
        let t0 = Instant::now();
        let uid = random_uid();
        let log_dir = self.dir.join("pods").join(format!("{ns}_{pod}_{uid}"));
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_dir.display()));
        let namespaces = msg::NamespaceOption {
            network: NS_NODE,
            pid: NS_CONTAINER,
            ipc: NS_POD,
            target_id: String::new(),
        };
        let pod_labels = HashMap::from([
            (cri::LABEL_POD.to_owned(), pod.to_owned()),
            (cri::LABEL_NAMESPACE.to_owned(), ns.to_owned()),
            (cri::LABEL_POD_UID.to_owned(), uid.clone()),
        ]);
        let sandbox_config = msg::PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.to_owned(),
                uid: uid.clone(),
                namespace: ns.to_owned(),
                attempt: 0,
            }),
            // No hostname: with the host network there is no UTS namespace of its own.
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: pod_labels.clone(),
            annotations: HashMap::from([
                ("kubernetes.io/config.source".to_owned(), "api".to_owned()),
                (
                    "kubernetes.io/config.seen".to_owned(),
                    "ckvault-test".to_owned(),
                ),
            ]),
            linux: Some(msg::LinuxPodSandboxConfig {
                security_context: Some(msg::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let sandbox: msg::RunPodSandboxResponse = self.must(
            "RunPodSandbox",
            &msg::RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            },
        );
        let sandbox_id = sandbox.pod_sandbox_id;
        let sandbox_in = t0.elapsed();

        let mut labels = pod_labels;
        labels.insert(cri::LABEL_CONTAINER.to_owned(), container.to_owned());
        let config = msg::ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: container.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.to_owned(),
            }),
            command: vec!["sleep".to_owned(), "3600".to_owned()],
            labels,
            annotations: HashMap::from([
                (
                    "io.kubernetes.container.restartCount".to_owned(),
                    "0".to_owned(),
                ),
                (
                    "io.kubernetes.container.terminationMessagePath".to_owned(),
                    "/dev/termination-log".to_owned(),
                ),
            ]),
            log_path: format!("{container}/0.log"),
            linux: Some(msg::LinuxContainerConfig {
                resources: None,
                security_context: Some(msg::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let created: msg::CreateContainerResponse = self.must(
            "CreateContainer",
            &msg::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            },
        );
        let container_id = created.container_id;
        let _: msg::StartContainerResponse = self.must(
            "StartContainer",
            &msg::StartContainerRequest {
                container_id: container_id.clone(),
            },
        );

        let deadline = Instant::now() + RUNNING_TIMEOUT;
        loop {
            let list: ListContainersResponse = self.must(
                "ListContainers",
                &ListContainersRequest {
                    filter: Some(ContainerFilter {
                        id: container_id.clone(),
                        ..Default::default()
                    }),
                },
            );
            let state = list
                .containers
                .iter()
                .find(|c| c.id == container_id)
                .map(|c| c.state);
            if state == Some(cri::CONTAINER_RUNNING) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "container {ns}/{pod}/{container} ({container_id}) is not running after {RUNNING_TIMEOUT:?} (state {state:?}); end of {}:\n{}",
                    self.dir.join("containerd.log").display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "support: pod {ns}/{pod} running in {:.2} s (sandbox {:.2} s): sandbox {}, container {}",
            t0.elapsed().as_secs_f64(),
            sandbox_in.as_secs_f64(),
            short(&sandbox_id),
            short(&container_id)
        );
        (sandbox_id, container_id)
    }

    /// Stops and removes a pod sandbox and its containers (StopPodSandbox, RemovePodSandbox).
    pub fn remove_pod(&self, sandbox_id: &str) {
        let req = msg::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
        };
        let _: msg::StopPodSandboxResponse = self.must("StopPodSandbox", &req);
        let _: msg::StopPodSandboxResponse = self.must("RemovePodSandbox", &req);
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A CRI call that must succeed.
    fn must<Req, Resp>(&self, method: &str, req: &Req) -> Resp
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.cri(method, req).unwrap_or_else(|e| {
            panic!(
                "CRI {method} to containerd at {} failed: {e}; end of its log:\n{}",
                self.socket.display(),
                self.log_tail(30)
            )
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        eprintln!(
            "support: containerd in {} stopped in {:.2} s",
            self.dir.display(),
            t0.elapsed().as_secs_f64()
        );
        if !ok {
            // Never delete a tree that may still have mounts in it: keep it for a look.
            if let Some(tmp) = self.tmp.take() {
                let _ = tmp.keep();
            }
            let _ = writeln!(
                std::io::stderr(),
                "support: containerd.sh stop {} failed, the dir is kept: {out:?}",
                self.dir.display()
            );
        }
    }
}

/// Runs `make()`'s future to completion on a scoped thread with its own current-thread
/// tokio runtime, so it works whether or not the caller is inside a runtime.
fn block_on<T, F, Fut>(make: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime")
                .block_on(make())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A random pod UID in the UUID format the API server hands out.
fn random_uid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Skip loudly, or panic when the environment demands the real thing.
fn cannot(reason: &str) -> Option<Containerd> {
    super::cannot_run(
        REQUIRE_ENV,
        &format!("cannot run a real containerd here: {reason}"),
    );
    None
}
