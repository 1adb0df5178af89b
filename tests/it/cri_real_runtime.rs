//! ckvault in front of a REAL runtime that checkpoints: containerd 2.1 + runc + CRIU 4.2
//! (tests/harness/real-cri-runtime.sh) running a labelled pod whose memory holds known text.
//! - A stock grpcio client (no `:authority` override: it sends the socket path) gets the
//!   same answers through `ckvault proxy` as directly (Version, Status, ListContainers,
//!   ListPodSandbox, ImageFsInfo, a server stream, an unknown method), and so does
//!   ckvault's own client.
//! - CheckpointContainer through the proxy becomes a sealed record with the runtime's
//!   identity whose opened archive is containerd's layout, and a receipt at the kubelet's
//!   path; two checkpoints of one container at once; a location whose directory is missing.
//! - The trigger API (curl) checkpoints the container by name; the record downloads and
//!   opens.
//! - The proxy SIGKILLed mid-checkpoint, and containerd SIGKILLed mid-checkpoint: no record
//!   of nothing, no plaintext left, every capture accounted for (record or
//!   `capture-abandoned` event).
//!
//! After each: no plaintext anywhere but inside sealed records (staging empty, nothing at
//! the kubelet's path, the memory marker in no store file).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::realcri::RealCri;
use support::{ok, p};

const RUNTIME: &str = "/runtime.v1.RuntimeService";

/// Protobuf: field `f` as a length-delimited string.
fn pb_str(f: u8, s: &str) -> Vec<u8> {
    let mut v = vec![(f << 3) | 2];
    let mut n = s.len();
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v.extend_from_slice(s.as_bytes());
    v
}

fn checkpoint_request(container_id: &str, location: &Path) -> String {
    let mut b = pb_str(1, container_id);
    b.extend(pb_str(2, p(location)));
    b.extend([3 << 3, 120]); // timeout = 120 s
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the stock grpcio client with `calls` on `socket` on a thread of its own (a call
/// the test interrupts, or several at once); its output when it ends.
fn grpcio_in_thread(socket: &Path, calls: Value) -> std::thread::JoinHandle<std::process::Output> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), calls.to_string()).unwrap();
        Command::new(Path::new(support::realcri::CACHE).join("venv/bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/harness/grpc_call.py"
            ))
            .arg(socket)
            .arg(f.path())
            .output()
            .unwrap()
    })
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy in front of the runtime, staging under `dir/staging` (bound into the runtime),
/// its store in `dir/store`.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    identity: PathBuf,
    listen: PathBuf,
}

impl Setup {
    fn new(rt: &RealCri, name: &str) -> Setup {
        Self::with_mode(rt, name, "file")
    }

    fn with_mode(rt: &RealCri, name: &str, mode: &str) -> Setup {
        let dir = rt.dir(name);
        let (identity, recipient) = support::age_keypair(&dir);
        let config = dir.join("ckvault.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{d}/store\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nupstream = \"{s}\"\nstaging = \"{d}/staging\"\nstaging_mode = \"{mode}\"\nlisten = \"{d}/cri.sock\"\n",
                d = dir.display(),
                s = rt.socket.display()
            ),
        )
        .unwrap();
        Setup {
            listen: dir.join("cri.sock"),
            dir,
            config,
            identity,
        }
    }

    fn proxy(&self) -> Proc {
        let _ = std::fs::remove_file(&self.listen);
        let log = std::fs::File::create(self.dir.join("proxy.log")).unwrap();
        let child = Command::new(support::ckvault_bin())
            .args(["proxy", "--config", p(&self.config)])
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

    fn records(&self) -> Vec<Value> {
        let out = ok(&support::ckvault(&[
            "ls",
            "--store",
            p(&self.dir.join("store")),
            "--format",
            "json",
        ]));
        serde_json::from_str(&out).unwrap()
    }

    fn staging(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("staging"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Opens record `id` with the age CLI (through ckvault open) and lists its members.
    fn members(&self, id: &str) -> Vec<String> {
        let out_tar = self.dir.join(format!("{id}.tar"));
        ok(&support::ckvault(&[
            "open",
            id,
            "--store",
            p(&self.dir.join("store")),
            "-i",
            p(&self.identity),
            "-o",
            p(&out_tar),
        ]));
        let out = Command::new("tar")
            .arg("tf")
            .arg(&out_tar)
            .output()
            .unwrap();
        std::fs::remove_file(&out_tar).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn audit(&self) -> Vec<Value> {
        support::audit_events(&self.dir.join("store"))
    }

    /// Nothing but sealed records holds the container's memory: staging is empty, and the
    /// marker text memhog writes is in no file under the setup's directory.
    fn no_plaintext(&self) {
        assert!(self.staging().is_empty(), "staging: {:?}", self.staging());
        for e in walkdir::WalkDir::new(&self.dir).into_iter().flatten() {
            if !e.file_type().is_file() {
                continue;
            }
            let data = std::fs::read(e.path()).unwrap_or_default();
            assert!(
                !contains(&data, b"Host: shop.internal session=7f3a91c"),
                "plaintext memory in {}",
                e.path().display()
            );
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Integer values zeroed (and each level sorted again): for answers that carry counters
/// and timestamps.
fn numbers_zeroed(v: &Value) -> Value {
    match v {
        Value::Number(_) => json!(0),
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(numbers_zeroed).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), numbers_zeroed(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn a_stock_grpc_client_through_the_proxy_gets_what_the_runtime_answers() {
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::new(&rt, "calls");
    let _proxy = s.proxy();
    let calls = json!([
        {"method": format!("{RUNTIME}/Version"), "request": hex(&pb_str(1, "v1"))},
        {"method": format!("{RUNTIME}/Status"), "request": ""},
        {"method": format!("{RUNTIME}/ListContainers"), "request": ""},
        {"method": format!("{RUNTIME}/ListPodSandbox"), "request": ""},
        {"method": format!("{RUNTIME}/ContainerStatus"), "request": hex(&pb_str(1, &rt.container_id))},
        {"method": "/runtime.v1.ImageService/ImageFsInfo", "request": ""},
        {"method": format!("{RUNTIME}/GetContainerEvents"), "request": "", "stream": true, "timeout": 1},
        {"method": format!("{RUNTIME}/NoSuchMethod"), "request": ""},
    ]);
    // containerd queues container events until a first subscriber takes them: take
    // those (the pod just started) so both sides see the same, quiet stream.
    rt.grpcio(
        &rt.socket,
        &json!([{"method": format!("{RUNTIME}/GetContainerEvents"), "stream": true, "timeout": 1}]),
    );
    // The runtime's state can move between the two runs (a leftover event, a sandbox
    // of an earlier test going away): a pair that differs is asked again, and only
    // answers that differ three times in a row fail.
    let mut attempt = 0;
    let direct = loop {
        attempt += 1;
        let direct = rt.grpcio(&rt.socket, &calls);
        let proxied = rt.grpcio(&s.listen, &calls);
        assert_eq!(direct.len(), 8);
        assert_eq!(proxied.len(), 8);
        let differ: Vec<(Value, Value)> = direct
            .iter()
            .zip(&proxied)
            .map(|(d, p)| {
                if d["method"].as_str().unwrap().ends_with("ImageFsInfo") {
                    (numbers_zeroed(d), numbers_zeroed(p))
                } else {
                    (d.clone(), p.clone())
                }
            })
            .filter(|(d, p)| d != p)
            .collect();
        if differ.is_empty() {
            break direct;
        }
        eprintln!("attempt {attempt}: direct and proxied answers differ: {differ:#?}");
        if attempt == 3 {
            let (d, p) = &differ[0];
            assert_eq!(d, p, "{}: direct and through the proxy differ", d["method"]);
        }
    };
    assert_eq!(direct[0]["code"], "OK");
    assert_eq!(direct[6]["code"], "DEADLINE_EXCEEDED");
    assert_eq!(direct[7]["code"], "UNIMPLEMENTED");

    // ckvault's own client, through the proxy and directly.
    use ckvault::internal::capture::cri::{RuntimeClient, VersionRequest, VersionResponse};
    let tokio = support::seaweed::runtime();
    let ask = |sock: &Path| -> VersionResponse {
        tokio
            .block_on(RuntimeClient::new(sock).version(
                VersionRequest {
                    version: "v1".into(),
                },
                Duration::from_secs(10),
            ))
            .unwrap()
    };
    assert_eq!(ask(&rt.socket), ask(&s.listen));
    assert_eq!(ask(&s.listen).runtime_name, "containerd");
}

#[test]
fn no_spelling_of_checkpoint_container_reaches_containerd_unsealed() {
    // containerd 2.1.9 is built after the fix for CVE-2026-33186 and answers a path
    // without its leading slash "malformed method name"; the proxy refuses every
    // non-canonical spelling itself (tests/it/cri_proxy_paths.rs has a runtime that routes
    // them), and seals a canonical one in any letter case.
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::new(&rt, "paths");
    let _proxy = s.proxy();
    let kubelet = s.dir.join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let request = |loc: &Path| {
        let mut framed = vec![0u8; 5];
        let msg = hex::decode(checkpoint_request(&rt.container_id, loc)).unwrap();
        framed[1..5].copy_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend(msg);
        framed
    };
    let canonical = format!("{RUNTIME}/CheckpointContainer").into_bytes();
    let version = format!("{RUNTIME}/Version").into_bytes();
    let spellings: Vec<Vec<Vec<u8>>> = vec![
        vec![canonical[1..].to_vec()],
        vec![[b"/", &canonical[..]].concat()],
        vec![format!("{RUNTIME}/CheckpointContainer/").into_bytes()],
        vec![version.clone(), canonical.clone()],
        vec![canonical.clone(), version.clone()],
        vec![],
    ];
    let locations: Vec<PathBuf> = (0..spellings.len())
        .map(|i| kubelet.join(format!("checkpoint-spelling-{i}.tar")))
        .collect();
    let cases: Vec<_> = spellings
        .iter()
        .zip(&locations)
        .map(|(paths, loc)| (paths.clone(), request(loc)))
        .collect();
    let direct = support::grpc::raw_paths(&rt.socket, &cases[..1]);
    assert!(
        direct[0]["grpc_message"]
            .as_str()
            .unwrap_or("")
            .contains("malformed method name"),
        "containerd 2.1 is built with the fix: {}",
        direct[0]
    );
    let proxied = support::grpc::raw_paths(&s.listen, &cases);
    for ((paths, answer), loc) in spellings.iter().zip(&proxied).zip(&locations) {
        let shown: Vec<_> = paths.iter().map(|p| String::from_utf8_lossy(p)).collect();
        assert_eq!(answer["grpc_status"], "12", "{shown:?}: {answer}");
        assert!(
            answer["grpc_message"]
                .as_str()
                .unwrap_or("")
                .contains("not forwarded"),
            "{shown:?}: {answer}"
        );
        assert!(
            !loc.exists(),
            "{shown:?}: the runtime wrote {}",
            loc.display()
        );
    }
    assert!(s.records().is_empty());
    // The method in another letter case is a checkpoint: intercepted and sealed.
    let lower = kubelet.join("checkpoint-lower.tar");
    let r = support::grpc::raw_paths(
        &s.listen,
        &[(
            vec![format!("{RUNTIME}/checkpointcontainer").into_bytes()],
            request(&lower),
        )],
    );
    assert_eq!(r[0]["grpc_status"], "0", "{}", r[0]);
    let records = s.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let receipt: Value = serde_json::from_slice(&std::fs::read(&lower).unwrap()).unwrap();
    assert_eq!(receipt["id"], records[0]["id"]);
    s.no_plaintext();
}

/// Bytes a process wrote to storage (`/proc/PID/io` write_bytes).
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn checkpoints_through_the_proxy_become_sealed_records_with_receipts() {
    checkpoints("file");
}

#[test]
fn checkpoints_through_the_proxy_in_fifo_mode_put_no_plaintext_on_disk() {
    checkpoints("fifo");
}

fn checkpoints(mode: &str) {
    let Some(rt) = RealCri::start(32, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::with_mode(&rt, &format!("ckpt-{mode}"), mode);
    let proxy = s.proxy();
    let pid = proxy.0.id();
    // Watch staging while the runtime writes: the largest regular file seen there is the
    // plaintext ckvault's staging held on disk.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, staging_dir) = (stop.clone(), s.dir.join("staging"));
    let watcher = std::thread::spawn(move || {
        let mut max = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for e in std::fs::read_dir(&staging_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(m) = e.path().symlink_metadata()
                    && m.file_type().is_file()
                    && e.file_name().to_string_lossy().ends_with(".tar")
                {
                    max = max.max(m.len());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        max
    });
    let written_before = write_bytes(pid);
    let kubelet = s.dir.join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let location = kubelet.join("checkpoint-api-0_shop-api-2026-12-02T00:00:00Z.tar");
    let call = |loc: &Path| {
        json!([{"method": format!("{RUNTIME}/CheckpointContainer"),
                "request": checkpoint_request(&rt.container_id, loc), "timeout": 150}])
    };
    let r = rt.grpcio(&s.listen, &call(&location));
    assert_eq!(r[0]["code"], "OK", "{r:?}");
    let written = write_bytes(pid) - written_before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let staged_max = watcher.join().unwrap();
    let records = s.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let m = &records[0];
    let plain = m["plaintext"]["size"].as_u64().unwrap();
    let sealed = m["sealed"]["size"].as_u64().unwrap();
    eprintln!(
        "staging_mode = {mode}: archive {plain} bytes, sealed {sealed}; plaintext in ckvault's \
         staging at most {staged_max} bytes; the proxy wrote {written} bytes to storage"
    );
    if mode == "fifo" {
        assert_eq!(staged_max, 0, "plaintext in staging in fifo mode");
        assert!(
            written < plain / 2,
            "the proxy wrote {written} bytes for a {plain}-byte archive"
        );
    } else {
        assert!(
            staged_max > plain / 2,
            "file mode staged {staged_max} bytes"
        );
    }
    assert_eq!(
        (&m["namespace"], &m["pod"], &m["container"]),
        (&json!("shop"), &json!("api-0"), &json!("api"))
    );
    assert_eq!(m["inspection"]["status"], "ok", "{m}");
    assert_eq!(m["source"]["kind"], "cri-proxy");
    let id = m["id"].as_str().unwrap();
    let members = s.members(id);
    for want in [
        "checkpoint/pages-1.img",
        "checkpoint/pagemap-1.img",
        "checkpoint/inventory.img",
        "config.dump",
        "spec.dump",
        "rootfs-diff.tar",
    ] {
        assert!(
            members.iter().any(|m| m.trim_start_matches("./") == want),
            "{want} not in {members:?}"
        );
    }
    // The kubelet's path holds a receipt naming the record, never the archive.
    let receipt: Value = serde_json::from_slice(&std::fs::read(&location).unwrap()).unwrap();
    assert_eq!(receipt["id"], id);

    // Two checkpoints of one container at once: both sealed (serialized per container).
    let both = [
        kubelet.join("checkpoint-a.tar"),
        kubelet.join("checkpoint-b.tar"),
    ];
    let handles: Vec<_> = both
        .iter()
        .map(|loc| grpcio_in_thread(&s.listen, call(loc)))
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\"code\": \"OK\""), "{text}");
    }
    assert_eq!(s.records().len(), 3);

    // A location whose directory does not exist: sealed all the same, no receipt, and
    // nothing created there.
    let missing = s.dir.join("no-such-dir/checkpoint-x.tar");
    let r = rt.grpcio(&s.listen, &call(&missing));
    assert_eq!(r[0]["code"], "OK", "{r:?}");
    assert_eq!(s.records().len(), 4);
    assert!(!s.dir.join("no-such-dir").exists());
    s.no_plaintext();
}

#[test]
fn the_trigger_api_checkpoints_a_real_container_by_name() {
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::new(&rt, "trigger");
    let config = s.dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "{}[server]\nlisten = \"127.0.0.1:0\"\n",
            std::fs::read_to_string(&s.config).unwrap()
        ),
    )
    .unwrap();
    let server = support::serve::Serve::start(&config, &s.dir.join("serve.log"));
    let tls = s.dir.join("store/tls");
    let curl = |args: &[&str], path: &str| -> (String, Vec<u8>) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--cacert",
                p(&tls.join("ca.pem")),
            ])
            .args([
                "--cert",
                p(&tls.join("admin.pem")),
                "--key",
                p(&tls.join("admin.key")),
            ])
            .args(args)
            .arg(format!("https://127.0.0.1:{}{path}", server.port))
            .output()
            .unwrap();
        let text = out.stdout;
        let cut = text.iter().rposition(|b| *b == b'\n').unwrap();
        (
            String::from_utf8_lossy(&text[cut + 1..]).into_owned(),
            text[..cut].to_vec(),
        )
    };
    let (code, body) = curl(&["-X", "POST"], "/checkpoint/shop/api-0/api?timeout=120");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(
        code,
        "200",
        "{body}\n{}",
        std::fs::read_to_string(s.dir.join("serve.log")).unwrap_or_default()
    );
    let items: Value = serde_json::from_str(&body).unwrap();
    let path = items["items"][0].as_str().unwrap().to_owned();
    let (code, manifest) = curl(&[], &path);
    assert_eq!(code, "200");
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["source"]["kind"], "trigger");
    assert_eq!(m["pod"], "api-0");
    let id = m["id"].as_str().unwrap();
    let blob = s.dir.join("download.age");
    let out = Command::new("curl")
        .args(["-s", "-f", "--cacert", p(&tls.join("ca.pem"))])
        .args([
            "--cert",
            p(&tls.join("admin.pem")),
            "--key",
            p(&tls.join("admin.key")),
        ])
        .args(["-H", "X-Ckvault-Purpose: incident 42", "-o", p(&blob)])
        .arg(format!(
            "https://127.0.0.1:{}/v1/checkpoints/{id}/archive",
            server.port
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "download: {out:?}");
    // The age CLI opens it: a zstd-compressed tar with containerd's layout.
    let opened = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -dc | tar tf -",
            p(&s.identity),
            p(&blob)
        ))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&opened.stdout);
    assert!(list.contains("checkpoint/pages-1.img"), "{list}");
    std::fs::remove_file(&blob).unwrap();
    drop(server);
    s.no_plaintext();
}

#[test]
fn a_proxy_killed_mid_checkpoint_leaves_no_record_of_nothing() {
    proxy_killed("file");
}

#[test]
fn a_proxy_killed_mid_checkpoint_in_fifo_mode_leaves_the_runtime_unblocked() {
    proxy_killed("fifo");
}

fn proxy_killed(mode: &str) {
    let Some(rt) = RealCri::start(256, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::with_mode(&rt, &format!("killproxy-{mode}"), mode);
    let proxy = s.proxy();
    let location = s.dir.join("checkpoint-k.tar");
    let calls = json!([{"method": format!("{RUNTIME}/CheckpointContainer"),
                        "request": checkpoint_request(&rt.container_id, &location), "timeout": 150}]);
    let client = grpcio_in_thread(&s.listen, calls);
    // Killed once the capture is registered (its intent in staging).
    wait_until(
        "the capture's intent in staging",
        Duration::from_secs(30),
        || s.staging().iter().any(|n| n.ends_with(".json")),
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(proxy);
    let out = client.join().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"code\": \"OK\""));
    // containerd cancels the dump when the call goes away; let it finish whatever it does.
    std::thread::sleep(Duration::from_secs(3));
    let staged = s.staging();
    assert!(
        staged.iter().any(|n| n.ends_with(".json")),
        "the intent stays for recovery: {staged:?}"
    );
    // The next start deals with it: a record with the runtime's identity, or an audited
    // abandoned capture; never a record of nothing.
    let proxy = s.proxy();
    wait_until("staging dealt with", Duration::from_secs(30), || {
        s.staging().is_empty()
    });
    // The runtime is not left blocked on the capture: the next one goes through.
    let again = s.dir.join("checkpoint-again.tar");
    let r = rt.grpcio(
        &s.listen,
        &json!([{"method": format!("{RUNTIME}/CheckpointContainer"),
                 "request": checkpoint_request(&rt.container_id, &again), "timeout": 60}]),
    );
    assert_eq!(r[0]["code"], "OK", "{mode}: {r:?}");
    drop(proxy);
    let records: Vec<Value> = s
        .records()
        .into_iter()
        .filter(|m| m["source"]["kind"] != "cri-proxy")
        .collect();
    let abandoned: Vec<Value> = s
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "capture-abandoned")
        .collect();
    for m in &records {
        assert_eq!(m["pod"], "api-0", "{m}");
        assert_eq!(m["source"]["kind"], "staging-recovery", "{m}");
        assert!(m["plaintext"]["size"].as_u64().unwrap() > 0, "{m}");
    }
    assert_eq!(
        records.len() + abandoned.len(),
        1,
        "{records:?} {abandoned:?}"
    );
    if let Some(e) = abandoned.first() {
        assert_eq!(e["namespace"], "shop", "{e}");
        assert!(e["detail"].as_str().unwrap().contains("api-0"), "{e}");
    }
    s.no_plaintext();
}

#[test]
fn containerd_killed_mid_checkpoint_leaves_no_plaintext() {
    let Some(rt) = RealCri::start(256, "shop", "api-0", "api") else {
        return;
    };
    let s = Setup::new(&rt, "killctd");
    let _proxy = s.proxy();
    let location = s.dir.join("checkpoint-c.tar");
    let calls = json!([{"method": format!("{RUNTIME}/CheckpointContainer"),
                        "request": checkpoint_request(&rt.container_id, &location), "timeout": 150}]);
    let client = grpcio_in_thread(&s.listen, calls);
    wait_until(
        "the capture's intent in staging",
        Duration::from_secs(30),
        || s.staging().iter().any(|n| n.ends_with(".json")),
    );
    std::thread::sleep(Duration::from_millis(300));
    rt.kill_containerd();
    let out = client.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("\"code\": \"OK\""), "{text}");
    // The proxy's late-write sweep (5 s when the runtime is gone) deals with staging.
    wait_until("staging dealt with", Duration::from_secs(30), || {
        s.staging().is_empty()
    });
    let abandoned = s
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "capture-abandoned")
        .count();
    assert_eq!(s.records().len() + abandoned, 1);
    s.no_plaintext();
}
