//! The containerd harness itself: `support::containerd::Containerd` starts a REAL private
//! containerd (Debian 12's 1.6 + runc), runs kubelet-style pods in it through CRI, and
//! cleans up after itself. containerd 1.6 does not implement CheckpointContainer.

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ckvault::internal::capture::cri::{
    self, CheckpointContainerRequest, CheckpointContainerResponse, ContainerFilter,
    ListContainersRequest, ListContainersResponse, ListPodSandboxRequest, ListPodSandboxResponse,
    PodSandboxFilter, VersionRequest, VersionResponse,
};
use support::containerd::{BUSYBOX_IMAGE, Containerd};

const T: Duration = Duration::from_secs(30);

fn by_namespace(ns: &str) -> ListContainersRequest {
    ListContainersRequest {
        filter: Some(ContainerFilter {
            label_selector: HashMap::from([(cri::LABEL_NAMESPACE.to_owned(), ns.to_owned())]),
            ..Default::default()
        }),
    }
}

/// Mount points strictly under `dir` (as /proc/self/mountinfo spells them).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Pids whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

// Inside a tokio runtime, as proxy tests are: the blocking helpers must still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_containerd_runs_a_labelled_pod_and_refuses_checkpoint() {
    let Some(ctrd) = Containerd::start() else {
        return;
    };
    let (sandbox_id, container_id) = ctrd.run_pod("ckv-harness", "web-0", "app");
    let client = cri::RuntimeClient::new(&ctrd.socket);

    let version: VersionResponse = client
        .version(
            VersionRequest {
                version: "v1".into(),
            },
            T,
        )
        .await
        .expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    eprintln!(
        "runtime {} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );

    let list: ListContainersResponse = client
        .list_containers(by_namespace("ckv-harness"), T)
        .await
        .expect("ListContainers");
    assert_eq!(list.containers.len(), 1, "{list:?}");
    let c = &list.containers[0];
    assert_eq!(c.id, container_id);
    assert_eq!(c.pod_sandbox_id, sandbox_id);
    assert_eq!(c.state, cri::CONTAINER_RUNNING);
    assert_eq!(c.metadata.as_ref().map(|m| m.name.as_str()), Some("app"));
    assert_eq!(
        c.labels.get(cri::LABEL_POD).map(String::as_str),
        Some("web-0")
    );
    assert_eq!(
        c.labels.get(cri::LABEL_CONTAINER).map(String::as_str),
        Some("app")
    );
    assert!(c.labels.contains_key(cri::LABEL_POD_UID), "{:?}", c.labels);
    assert_eq!(
        c.image.as_ref().map(|i| i.image.as_str()),
        Some(BUSYBOX_IMAGE)
    );

    // Another namespace's selector finds nothing.
    let none: ListContainersResponse = client
        .list_containers(by_namespace("elsewhere"), T)
        .await
        .expect("ListContainers elsewhere");
    assert!(none.containers.is_empty(), "{none:?}");

    // The sandbox is READY and carries the pod labels too.
    let pods: ListPodSandboxResponse = client
        .list_pod_sandbox(
            ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    id: sandbox_id.clone(),
                    ..Default::default()
                }),
            },
            T,
        )
        .await
        .expect("ListPodSandbox");
    assert_eq!(pods.items.len(), 1, "{pods:?}");
    assert_eq!(pods.items[0].state, cri::SANDBOX_READY);
    let meta = pods.items[0].metadata.as_ref().expect("sandbox metadata");
    assert_eq!(
        (meta.namespace.as_str(), meta.name.as_str()),
        ("ckv-harness", "web-0")
    );

    let refused = client
        .unary::<_, CheckpointContainerResponse>(
            "CheckpointContainer",
            &CheckpointContainerRequest {
                container_id: container_id.clone(),
                location: ctrd.dir.join("ckpt.tar").to_string_lossy().into_owned(),
                timeout: 10,
            },
            T,
        )
        .await
        .expect_err("containerd 1.6 has no CheckpointContainer");
    assert_eq!(refused.code, tonic::Code::Unimplemented, "{refused}");
}

// Tests in one binary each start their own containerd; they never see each other's pods.
// Dropping one leaves no mounts, no daemon, no shims and no directory behind.
#[test]
fn two_containerds_side_by_side_and_clean_teardown() {
    let Some(a) = Containerd::start() else {
        return;
    };
    let Some(b) = Containerd::start() else {
        return;
    };
    assert_ne!(a.socket, b.socket);
    let (sa, ca) = a.run_pod("team-a", "api-0", "api");
    let (_sb, cb) = b.run_pod("team-b", "api-0", "api");

    let seen_by_a: ListContainersResponse = a
        .cri("ListContainers", &ListContainersRequest::default())
        .expect("ListContainers on a");
    let ids: Vec<&str> = seen_by_a.containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [ca.as_str()]);
    let seen_by_b: ListContainersResponse = b
        .cri("ListContainers", &by_namespace("team-a"))
        .expect("ListContainers on b");
    assert!(seen_by_b.containers.is_empty(), "{seen_by_b:?}");
    assert!(
        !mounts_under(&b.dir).is_empty(),
        "b's container rootfs is mounted"
    );

    // A pod can be removed again through CRI.
    a.remove_pod(&sa);
    let after: ListContainersResponse = a
        .cri("ListContainers", &by_namespace("team-a"))
        .expect("ListContainers after remove");
    assert!(after.containers.is_empty(), "{after:?}");

    // b still has a running pod: dropping it must take everything down.
    let dir = b.dir.clone();
    let sock = b.socket.to_string_lossy().into_owned();
    assert!(
        !processes_naming(&sock).is_empty(),
        "containerd and shims of b"
    );
    drop(b);
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(processes_naming(&sock), Vec::<u32>::new());
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        processes_naming(&cb).is_empty(),
        "b's container process lives on"
    );
}
