//! The CRI proxy decides on the method the runtime will route to, not on one spelling of
//! it (issue: a CheckpointContainer passed the proxy unsealed as
//! `runtime.v1.RuntimeService/CheckpointContainer`, without its leading slash).
//!
//! The runtime here is a REAL grpc-go server built before the fix for CVE-2026-33186
//! (Debian 12's golang-google-grpc-dev 1.33, `tests/harness/grpcgo_double`), which routes a
//! `:path` without its leading slash, as every runtime built on an earlier grpc-go still
//! does. A hostile client on raw HTTP/2 (`h2`, header checks off) sends each spelling.
//!
//! 1. The model of grpc-go's routing (`capture::method::grpc_go`, the fuzz target's oracle)
//!    agrees with the real server on every path of a generated corpus.
//! 2. Through `ckvault proxy`, no spelling of CheckpointContainer reaches the runtime's
//!    handler: canonical ones (any letter case) are intercepted, the rest refused with
//!    UNIMPLEMENTED; every other canonical call is relayed and answered as directly.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckvault::internal::capture::method::{self, Route, grpc_go};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds the grpc-go double offline (GOPATH mode, Debian's packaged grpc-go), or says
/// why it cannot.
fn build_double(dir: &Path) -> Option<PathBuf> {
    if support::outside_fast_tier("a grpc-go server built with Debian's grpc-go") {
        return None;
    }
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/harness/grpcgo_double/main.go"
    );
    let gopath = Path::new("/usr/share/gocode");
    if !gopath.join("src/google.golang.org/grpc/server.go").exists() {
        support::cannot_run(
            support::REQUIRE_ENV,
            "no grpc-go sources (Debian: apt-get install golang-go golang-google-grpc-dev)",
        );
        return None;
    }
    let bin = dir.join("grpcgo_double");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(src)
        .env("GOPATH", gopath)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", "/var/tmp/ckvault-gocache")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => panic!("go build: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            support::cannot_run(support::REQUIRE_ENV, &format!("cannot run go: {e}"));
            None
        }
    }
}

/// The double on `dir/runtime.sock`, logging the calls its handlers ran to `dir/calls.log`.
fn start_double(bin: &Path, dir: &Path) -> (Proc, PathBuf, PathBuf) {
    let socket = dir.join("runtime.sock");
    let log = dir.join("calls.log");
    let child = Command::new(bin)
        .arg(&socket)
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&socket);
    (Proc(child), socket, log)
}

/// The handler (`SERVICE/METHOD`) a direct answer came from, if one ran.
fn handler_of(answer: &serde_json::Value) -> Option<String> {
    if answer["grpc_status"] != "0" {
        return None;
    }
    let body = hex::decode(answer["body"].as_str()?).ok()?;
    Some(String::from_utf8_lossy(body.get(5..)?).into_owned())
}

const SERVICES: [&str; 2] = [
    "runtime.v1.RuntimeService",
    "runtime.v1alpha2.RuntimeService",
];
const METHODS: [&str; 4] = [
    "Version",
    "CheckpointContainer",
    "ListContainers",
    "ContainerStatus",
];

/// The handler the model says grpc-go (before the fix) runs for `path`.
fn model(path: &[u8]) -> Option<String> {
    let (service, method) = grpc_go::route(path, false)?;
    let (service, method) = (
        std::str::from_utf8(service).ok()?,
        std::str::from_utf8(method).ok()?,
    );
    (SERVICES.contains(&service) && METHODS.contains(&method))
        .then(|| format!("{service}/{method}"))
}

/// A deterministic corpus of method paths: the spellings that matter, and pieces of them
/// strung together at random (slashes, dots, case, encodings, bytes no path should hold).
fn corpus() -> Vec<Vec<u8>> {
    let mut paths: Vec<Vec<u8>> = [
        "/runtime.v1.RuntimeService/CheckpointContainer",
        "runtime.v1.RuntimeService/CheckpointContainer",
        "//runtime.v1.RuntimeService/CheckpointContainer",
        "/runtime.v1.RuntimeService//CheckpointContainer",
        "/runtime.v1.RuntimeService/checkpointcontainer",
        "/RUNTIME.V1.RUNTIMESERVICE/CHECKPOINTCONTAINER",
        "/runtime.v1alpha2.RuntimeService/CheckpointContainer",
        "runtime.v1alpha2.RuntimeService/CheckpointContainer",
        "/runtime.v1.RuntimeService/CheckpointContainer/",
        "/runtime.v1.RuntimeService/CheckpointContainer?x=1",
        "/runtime.v1.RuntimeService/Checkpoint%43ontainer",
        "/x/runtime.v1.RuntimeService/CheckpointContainer",
        "/runtime.v1.RuntimeService/Version",
        "runtime.v1.RuntimeService/Version",
        "/runtime.v1.RuntimeService/NoSuchMethod",
        "/",
        "",
        "*",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Random spellings built as prefix, service, separator, method, suffix.
    // (Repeated entries make the spellings a server routes common enough to matter.)
    let parts: [&[&str]; 5] = [
        &["/", "/", "", "//", "x/", " /"],
        &[
            "runtime.v1.RuntimeService",
            "runtime.v1.RuntimeService",
            "runtime.v1alpha2.RuntimeService",
            "RUNTIME.v1.RuntimeService",
            "runtime.v1.RuntimeService.",
            "",
        ],
        &["/", "/", "/", "//", "%2F", "", "\\"],
        &[
            "CheckpointContainer",
            "CheckpointContainer",
            "Version",
            "checkpointContainer",
            "ListContainers",
            "",
        ],
        &["", "", "", "/", "?x", " ", "\t", ".", "%00"],
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..500 {
        let mut p = String::new();
        for choices in parts {
            p.push_str(choices[(next() % choices.len() as u64) as usize]);
        }
        paths.push(p.into_bytes());
    }
    paths
}

/// A CheckpointContainerRequest naming a container and location no honest call would:
/// if its bytes ever reach the runtime's CheckpointContainer handler, the seal was bypassed.
fn marker_request() -> Vec<u8> {
    let mut msg = vec![0x0a, 11];
    msg.extend_from_slice(b"leak-marker");
    msg.extend_from_slice(&[0x12, 14]);
    msg.extend_from_slice(b"/nonexistent/x");
    let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
    framed.extend(msg);
    framed
}

#[test]
fn the_grpc_go_model_routes_every_path_as_a_real_pre_fix_grpc_go_server() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(bin) = build_double(tmp.path()) else {
        return;
    };
    let (_double, socket, _log) = start_double(&bin, tmp.path());
    let paths = corpus();
    let cases: Vec<_> = paths
        .iter()
        .map(|p| (vec![p.clone()], vec![0u8; 5]))
        .collect();
    let answers = support::grpc::raw_paths(&socket, &cases);
    let mut reached = 0;
    for (path, answer) in paths.iter().zip(&answers) {
        let real = handler_of(answer);
        let shown = String::from_utf8_lossy(path);
        // The server's HTTP/2 layer may refuse a path before routing (bytes a header
        // value cannot hold): the model over-approximates, never under.
        if real.is_some() || path.iter().all(|b| b.is_ascii_graphic()) {
            assert_eq!(real, model(path), "{shown:?}: {answer}");
        }
        reached += usize::from(real.is_some());
    }
    // The corpus really exercises routing, the leak included.
    eprintln!(
        "{} paths: {reached} reached a handler of the real pre-fix grpc-go server, each the one the model names",
        paths.len()
    );
    assert!(reached >= 10, "only {reached} paths reached a handler");
    let leak = b"runtime.v1.RuntimeService/CheckpointContainer";
    let i = paths.iter().position(|p| p == leak).unwrap();
    assert_eq!(
        handler_of(&answers[i]).as_deref(),
        Some("runtime.v1.RuntimeService/CheckpointContainer"),
        "the pre-fix server routes a path without its leading slash"
    );
}

#[test]
fn no_spelling_of_checkpoint_container_passes_the_proxy_to_a_pre_fix_grpc_go_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(bin) = build_double(dir) else {
        return;
    };
    let (_double, runtime, calls_log) = start_double(&bin, dir);
    let (_identity, recipient) = support::age_keypair(dir);
    let listen = dir.join("ckvault.sock");
    let proxy_log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let _proxy = Proc(
        Command::new(support::ckvault_bin())
            .args(["proxy", "--listen", support::p(&listen)])
            .args(["--runtime", support::p(&runtime)])
            .args(["--store", support::p(&dir.join("store")), "-r", &recipient])
            .stdout(Stdio::null())
            .stderr(proxy_log)
            .spawn()
            .unwrap(),
    );
    wait_for(&listen);

    let body = marker_request();
    let checkpoint = b"/runtime.v1.RuntimeService/CheckpointContainer".to_vec();
    let version = b"/runtime.v1.RuntimeService/Version".to_vec();
    let mut cases: Vec<(Vec<Vec<u8>>, Vec<u8>)> = corpus()
        .into_iter()
        .map(|p| (vec![p], body.clone()))
        .collect();
    // Several :path fields (grpc-go keeps the last, other servers the first), and none.
    cases.push((vec![version.clone(), checkpoint.clone()], body.clone()));
    cases.push((vec![checkpoint.clone(), version.clone()], body.clone()));
    cases.push((
        vec![
            b"runtime.v1.RuntimeService/CheckpointContainer".to_vec(),
            version.clone(),
        ],
        body.clone(),
    ));
    cases.push((vec![], body.clone()));
    let direct = support::grpc::raw_paths(&runtime, &cases);
    let proxied = support::grpc::raw_paths(&listen, &cases);

    let (mut refused, mut intercepted, mut relayed) = (0, 0, 0);
    for (((paths, _), d), p) in cases.iter().zip(&direct).zip(&proxied) {
        let refs: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
        let shown: Vec<_> = paths.iter().map(|p| String::from_utf8_lossy(p)).collect();
        match method::route(&refs) {
            Route::Refuse(_) => {
                refused += 1;
                assert_eq!(p["grpc_status"], "12", "{shown:?}: {p}");
                assert!(
                    p["grpc_message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("not forwarded"),
                    "{shown:?}: {p}"
                );
            }
            Route::Checkpoint => {
                intercepted += 1;
                // ckvault answered it (the runtime's handler would answer OK with its name).
                assert_ne!(p["grpc_status"], "0", "{shown:?}: {p}");
                assert!(handler_of(p).is_none(), "{shown:?}: {p}");
            }
            // Stops are relayed too when no rule captures before them (none here).
            Route::Forward | Route::Stop(_) => {
                relayed += 1;
                assert_eq!(
                    (&p["grpc_status"], &p["body"]),
                    (&d["grpc_status"], &d["body"]),
                    "{shown:?}: relayed calls are answered as directly"
                );
            }
        }
    }
    eprintln!(
        "{} cases: {refused} refused, {intercepted} intercepted, {relayed} relayed",
        cases.len()
    );
    assert!(
        refused > 100 && intercepted >= 4 && relayed >= 2,
        "{refused}/{intercepted}/{relayed}"
    );

    // Directly, the runtime ran its CheckpointContainer handler on the marker for the
    // leaking spellings; through the proxy, never.
    let marker_hex = hex::encode(&body[5..]);
    let log = std::fs::read_to_string(&calls_log).unwrap_or_default();
    let leaked = |lines: &str| {
        lines
            .lines()
            .filter(|l| l.contains("/CheckpointContainer ") && l.ends_with(&marker_hex))
            .count()
    };
    let direct_leaks = direct
        .iter()
        .filter(|a| handler_of(a).is_some_and(|h| h.ends_with("/CheckpointContainer")));
    let n_direct = direct_leaks.count();
    assert!(
        n_direct >= 3,
        "the double must be reachable by the spellings: {n_direct}"
    );
    assert_eq!(
        leaked(&log),
        n_direct,
        "only the direct calls reached the runtime's CheckpointContainer handler:\n{log}"
    );
    let proxy_log = std::fs::read_to_string(dir.join("proxy.log")).unwrap();
    assert!(proxy_log.contains("refused a CRI call"), "{proxy_log}");
}
