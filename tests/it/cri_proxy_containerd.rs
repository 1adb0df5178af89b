//! The CRI proxy and the trigger API in front of REAL containerd (Debian's 1.6, started by
//! the test harness, running a real pod labelled as the kubelet labels it). Proxied calls
//! must return exactly what direct calls return; containerd's own CheckpointContainer error
//! (it does not implement it) must pass back unchanged; the trigger API must resolve the
//! real pod's names through containerd and turn UNIMPLEMENTED into the kubelet's 500.

use crate::support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ckvault::internal::capture::cri::{self, RuntimeClient};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One raw gRPC exchange: (grpc-status, grpc-message, response body bytes).
async fn raw(socket: &Path, method: &str, body: Bytes) -> (String, String, Bytes) {
    let mut sender = RuntimeClient::new(socket).connect().await.unwrap();
    support::grpc::exchange(&mut sender, method, body, &[]).await
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn proxied_calls_to_real_containerd_match_direct_calls() {
    let Some(ctrd) = support::containerd::Containerd::start() else {
        return;
    };
    let (_sandbox, container_id) = ctrd.run_pod("forensics", "web-7d4", "app");
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let proxy_sock = tmp.path().join("ckvault.sock");
    let store = tmp.path().join("store");
    let _proxy = Kill(
        Command::new(support::ckvault_bin())
            .args([
                "proxy",
                "--listen",
                proxy_sock.to_str().unwrap(),
                "--runtime",
                ctrd.socket.to_str().unwrap(),
            ])
            .args(["--store", store.to_str().unwrap(), "-r", &recipient])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !proxy_sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let list_by_ns = cri::frame(&cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            label_selector: [(cri::LABEL_NAMESPACE.to_owned(), "forensics".to_owned())].into(),
            ..Default::default()
        }),
    });
    let calls: Vec<(&str, Bytes)> = vec![
        ("/runtime.v1.RuntimeService/Version", empty.clone()),
        ("/runtime.v1.RuntimeService/Status", empty.clone()),
        ("/runtime.v1.RuntimeService/ListContainers", list_by_ns),
        ("/runtime.v1.RuntimeService/ListPodSandbox", empty.clone()),
        ("/runtime.v1.ImageService/ImageFsInfo", empty.clone()),
        ("/runtime.v1.ImageService/ListImages", empty.clone()),
        // server-streaming in the CRI API (containerd 1.6 may not implement it: then the
        // UNIMPLEMENTED answer itself must match)
        (
            "/runtime.v1.RuntimeService/GetContainerEvents",
            empty.clone(),
        ),
        ("/runtime.v1.RuntimeService/NoSuchMethod", empty.clone()),
    ];
    for (method, body) in calls {
        let direct = block(raw(&ctrd.socket, method, body.clone()));
        let proxied = block(raw(&proxy_sock, method, body));
        assert_eq!(
            (&direct.0, &direct.1),
            (&proxied.0, &proxied.1),
            "{method}: status differs"
        );
        assert_eq!(
            direct.2.len(),
            proxied.2.len(),
            "{method}: body length differs"
        );
        // containerd (Go) serialises protobuf maps in random order, so answers holding
        // maps are compared decoded; everything else byte for byte.
        match method {
            "/runtime.v1.RuntimeService/ListContainers" => assert_eq!(
                cri::unframe::<cri::ListContainersResponse>(direct.2.clone(), 1 << 24).unwrap(),
                cri::unframe::<cri::ListContainersResponse>(proxied.2.clone(), 1 << 24).unwrap(),
                "{method}"
            ),
            "/runtime.v1.RuntimeService/ListPodSandbox" => assert_eq!(
                cri::unframe::<cri::ListPodSandboxResponse>(direct.2.clone(), 1 << 24).unwrap(),
                cri::unframe::<cri::ListPodSandboxResponse>(proxied.2.clone(), 1 << 24).unwrap(),
                "{method}"
            ),
            "/runtime.v1.ImageService/ListImages" | "/runtime.v1.ImageService/ImageFsInfo" => {}
            _ => assert_eq!(direct.2, proxied.2, "{method}: body differs"),
        }
        eprintln!(
            "{method}: status {:?} ({} body bytes), same through the proxy",
            direct.0,
            direct.2.len()
        );
    }
    // The listing through the proxy really shows the running container.
    let listed: cri::ListContainersResponse =
        block(RuntimeClient::new(&proxy_sock).list_containers(
            cri::ListContainersRequest::default(),
            Duration::from_secs(10),
        ))
        .unwrap();
    assert!(
        listed
            .containers
            .iter()
            .any(|c| c.id == container_id && c.state == cri::CONTAINER_RUNNING)
    );

    // CheckpointContainer: containerd's own error comes back unchanged; nothing is left.
    let location = tmp
        .path()
        .join("checkpoint-web-7d4_forensics-app-2026-11-28T10:00:00Z.tar");
    let req = cri::CheckpointContainerRequest {
        container_id: container_id.clone(),
        location: location.display().to_string(),
        timeout: 30,
    };
    let direct = block(
        RuntimeClient::new(&ctrd.socket).unary::<_, cri::CheckpointContainerResponse>(
            "CheckpointContainer",
            &req,
            Duration::from_secs(30),
        ),
    )
    .unwrap_err();
    let proxied = block(
        RuntimeClient::new(&proxy_sock).unary::<_, cri::CheckpointContainerResponse>(
            "CheckpointContainer",
            &req,
            Duration::from_secs(30),
        ),
    )
    .unwrap_err();
    assert_eq!(direct.code, tonic::Code::Unimplemented, "{direct}");
    assert_eq!(proxied, direct);
    assert!(!location.exists());
    assert_eq!(
        std::fs::read_dir(store.join("staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn the_trigger_api_resolves_real_pods_and_reports_unimplemented_as_500() {
    let Some(ctrd) = support::containerd::Containerd::start() else {
        return;
    };
    ctrd.run_pod("forensics", "web-7d4", "app");
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let config = tmp.path().join("ckvault.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"store\"\n[server]\nlisten = \"127.0.0.1:0\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nupstream = \"{}\"\n",
            ctrd.socket.display()
        ),
    )
    .unwrap();
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
    let tls = tmp.path().join("store/tls");
    let post = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                "-w",
                "\n%{http_code}",
                "--cacert",
                tls.join("ca.pem").to_str().unwrap(),
            ])
            .args([
                "--cert",
                tls.join("admin.pem").to_str().unwrap(),
                "--key",
                tls.join("admin.key").to_str().unwrap(),
            ])
            .arg(format!("https://{addr}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = post("/checkpoint/forensics/web-7d4/app?timeout=20");
    assert_eq!(code, "500", "{body}");
    assert!(
        body.contains("checkpointing of forensics/web-7d4/app failed")
            && body.contains("code = 12"),
        "{body}"
    );
    let (code, body) = post("/checkpoint/forensics/no-such-pod/app");
    assert_eq!(code, "404", "{body}");
    assert!(body.contains("pod does not exist"), "{body}");
    let (code, body) = post("/checkpoint/forensics/web-7d4/no-such-container");
    assert_eq!(code, "404", "{body}");
    assert!(
        body.contains("container no-such-container does not exist"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
