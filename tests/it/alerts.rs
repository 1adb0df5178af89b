//! Capture on an alert, with real parts: a real Prometheus Alertmanager 0.25 posting its
//! webhook to `ckvault serve` over TLS with a bearer token, ckvault talking to the real
//! containerd 2.1 runtime (tests/harness/real-cri-runtime.sh) that runs the labelled pod.
//!
//! - A storm (200 alerts through Alertmanager and 200 posted directly, within seconds)
//!   for one container seals exactly one record, with the alert in its signed manifest;
//!   every other alert is audited as deduplicated; Alertmanager's repeats and resolves do
//!   not capture again.
//! - Falco's `http_output` event (from Falco's documented schema) over mTLS names the
//!   container by its short ID, resolved through the runtime; one naming another namespace
//!   than the runtime reports is refused; signed webhooks (HMAC) work, replayed and stale
//!   signatures are refused; hostile bodies get a clear 4xx and capture nothing.
//! - A disk that cannot hold the checkpoint: refused before the runtime is asked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::support::realcri::RealCri;
use crate::support::{self, Kill, free_port, ok, p, wait_until};

/// A server with the alert receivers in front of the real runtime.
struct Node {
    dir: PathBuf,
    server: support::serve::Serve,
    /// The alert sender's bearer token (user `alertmanager`, group `alerting`).
    token: String,
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

impl Node {
    fn start(rt: &RealCri, name: &str, extra: &str) -> Node {
        let dir = rt.dir(name);
        let (_identity, recipient) = support::age_keypair(&dir);
        std::fs::write(dir.join("soar.secret"), SECRET).unwrap();
        std::fs::set_permissions(
            dir.join("soar.secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let token = support::serve::alerting_policy_and_token(&dir);
        let config = dir.join("ckvault.toml");
        std::fs::write(
            &config,
            format!(
                r#"[store]
path = "{d}/store"
[seal]
recipients = ["{recipient}"]
[cri]
upstream = "{s}"
staging = "{d}/staging"
[server]
listen = "127.0.0.1:0"
tokens = "{d}/tokens.toml"
[policy]
dir = "{d}/policies"
[alerts]
enabled = true
max_body = "64KiB"
[[alerts.sender]]
name = "soar"
secret_file = "{d}/soar.secret"
user = "soar"
groups = ["alerting"]
{extra}
[[trigger]]
name = "shop-incidents"
namespaces = ["shop", "kube-*"]
hold = true
"#,
                d = dir.display(),
                s = rt.socket.display()
            ),
        )
        .unwrap();
        let server = support::serve::Serve::start(&config, &dir.join("serve.log"));
        Node { dir, server, token }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.server.port)
    }

    /// curl with the sender's token; returns (status, body).
    fn post(&self, path: &str, body: &[u8], headers: &[String]) -> (u16, Value) {
        self.post_from("127.0.0.1", path, body, headers)
    }

    /// [`Node::post`] from source address `from` (an address of 127.0.0.0/8: another
    /// client than Alertmanager, which may hold its address's connections).
    fn post_from(&self, from: &str, path: &str, body: &[u8], headers: &[String]) -> (u16, Value) {
        let file = self.dir.join(format!("body-{}.json", ulid_like()));
        std::fs::write(&file, body).unwrap();
        let mut cmd = support::serve::curl(&self.dir.join("store/tls"), 120);
        cmd.args(["--interface", from])
            .args(["-X", "POST", "-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
        let mut has_auth = false;
        for h in headers {
            has_auth |= h.starts_with("X-Ckvault-Signature") || h.starts_with("Authorization:");
            cmd.args(["-H", h]);
        }
        if !has_auth {
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token)]);
        }
        let out = cmd.arg(self.url(path)).output().unwrap();
        let _ = std::fs::remove_file(&file);
        support::serve::json_answer(out.stdout)
    }

    /// curl with the generated admin certificate (mTLS).
    fn admin(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
        let mut cmd = support::serve::admin_curl(&self.dir.join("store/tls"), 120);
        cmd.args(["-X", method]);
        let file = self.dir.join(format!("admin-{}.json", ulid_like()));
        if let Some(b) = body {
            std::fs::write(&file, b).unwrap();
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        let out = cmd.arg(self.url(path)).output().unwrap();
        let _ = std::fs::remove_file(&file);
        support::serve::json_answer(out.stdout)
    }

    fn records(&self) -> Vec<Value> {
        let out = support::ckvault(&[
            "ls",
            "--format",
            "json",
            "--store",
            p(&self.dir.join("store")),
        ]);
        let text = ok(&out);
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match v {
            Value::Array(a) => a,
            Value::Object(o) => o
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        }
    }

    fn audit(&self) -> Vec<Value> {
        support::audit_events(&self.dir.join("store"))
    }

    /// Nothing is left in staging, and the audit log verifies.
    fn assert_settled(&self) {
        assert!(
            self.staging_files().is_empty(),
            "{:?}",
            self.staging_files()
        );
        ok(&support::ckvault(&[
            "audit",
            "verify",
            "--store",
            p(&self.dir.join("store")),
        ]));
    }

    fn staging_files(&self) -> Vec<String> {
        support::visible_entries(&self.dir.join("staging"))
    }
}

/// A name no other request of this process uses.
fn ulid_like() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn alertmanager_payload(alerts: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"direct\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ckvault",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    }))
    .unwrap()
}

fn am_alert(name: &str, fingerprint: &str, status: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": name, "namespace": "shop", "pod": "api-0", "container": "api", "severity": "critical"},
        "annotations": {"summary": "outbound connection to a mining pool"},
        "startsAt": "2026-12-07T02:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint,
    })
}

/// A real Alertmanager whose only receiver is ckvault's webhook.
fn alertmanager(node: &Node) -> Option<(Kill, u16)> {
    if Command::new("prometheus-alertmanager")
        .arg("--version")
        .output()
        .is_err()
    {
        support::cannot_run(
            support::REQUIRE_ENV,
            "prometheus-alertmanager is not installed (scripts/test-deps.sh installs it)",
        );
        return None;
    }
    let dir = node.dir.join("alertmanager");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("token"), &node.token).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            r#"route:
  receiver: ckvault
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: ckvault
    webhook_configs:
      - url: {url}
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {token}
          tls_config:
            ca_file: {ca}
"#,
            url = node.url("/v1/alerts/alertmanager"),
            token = dir.join("token").display(),
            ca = node.dir.join("store/tls/ca.pem").display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let am = Kill(child);
    wait_until("Alertmanager to listen", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/-/ready")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    Some((am, port))
}

/// Posts `alerts` to Alertmanager's own API (`POST /api/v2/alerts`).
fn am_post(port: u16, alerts: &Value) {
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(alerts.to_string())
        .arg(format!("http://127.0.0.1:{port}/api/v2/alerts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Alertmanager refused the alerts: {out:?}"
    );
}

/// Direct posts the server shed (503) and the test retried.
static SHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn an_alert_storm_through_a_real_alertmanager_seals_one_record_with_the_alert_in_it() {
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let node = Node::start(&rt, "alerts-am", "");
    let Some((_am, am_port)) = alertmanager(&node) else {
        return;
    };
    // The storm: 200 distinct alerts for one container through Alertmanager (one request
    // to its API), and 200 posted directly, within seconds.
    let now = time_rfc3339();
    let through_am: Vec<Value> = (0..200)
        .map(|i| {
            json!({
                "labels": {"alertname": format!("CryptoMiner{i}"), "namespace": "shop", "pod": "api-0", "container": "api", "severity": "critical"},
                "annotations": {"summary": "outbound connection to a mining pool"},
                "startsAt": now,
            })
        })
        .collect();
    let started = Instant::now();
    am_post(am_port, &Value::Array(through_am));
    // Eight senders at once, 25 alerts each.
    let direct_codes: Vec<Value> = std::thread::scope(|s| {
        let senders: Vec<_> = (0..8)
            .map(|t| {
                let node = &node;
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let fp = format!("d{t}{i:03}");
                            let body = alertmanager_payload(&[am_alert("Direct", &fp, "firing")]);
                            let from = format!("127.0.0.{}", 2 + t);
                            // As Alertmanager does: a 503 (the server shedding a burst)
                            // is retried after a pause; anything else but 202 fails.
                            let mut tries = 0;
                            loop {
                                let (code, answer) =
                                    node.post_from(&from, "/v1/alerts/alertmanager", &body, &[]);
                                if code == 503 && tries < 10 {
                                    tries += 1;
                                    SHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(500));
                                    continue;
                                }
                                assert_eq!(code, 202, "{answer}\n{}", node.log());
                                break answer;
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let storm_secs = started.elapsed().as_secs_f64();
    let shed = SHED.load(std::sync::atomic::Ordering::Relaxed);
    // Alertmanager delivers each of its 200 groups.
    wait_until(
        "Alertmanager's 200 alerts to reach ckvault",
        Duration::from_secs(120),
        || node.metric("ckvault_alerts_total") >= 400,
    );
    wait_until("the record", Duration::from_secs(120), || {
        !node.records().is_empty()
    });
    // Let any second capture that would wrongly run finish.
    std::thread::sleep(Duration::from_secs(3));
    let records = node.records();
    assert_eq!(records.len(), 1, "exactly one record: {records:#?}");
    let id = records[0]["id"].as_str().unwrap().to_owned();
    // Duplicates are audited one by one at first, then folded per capture: one event per
    // 10 s window counting the rest ("N more alerts deduplicated against capture ...").
    std::thread::sleep(Duration::from_secs(12));
    let events = node.audit();
    let dedup: u64 = events
        .iter()
        .filter(|e| e["action"] == "alert" && e["outcome"] == "denied")
        .filter_map(|e| e["detail"].as_str())
        .map(|d| {
            if let Some((n, _)) = d.split_once(" more alerts deduplicated against capture ") {
                n.parse::<u64>().unwrap_or(0)
            } else if d.contains("deduplicated") {
                1
            } else {
                0
            }
        })
        .sum();
    let taken = events
        .iter()
        .filter(|e| e["action"] == "alert" && e["outcome"] == "ok")
        .count();
    assert_eq!(taken, 1, "one alert started the capture");
    // Alertmanager re-sends each group (group_interval 1 s, repeat_interval 2 s): at
    // least the 399 other alerts, each audited as deduplicated and as nothing else.
    assert!(
        dedup >= 399,
        "every other alert audited as deduplicated: {dedup}"
    );
    let other: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "alert" && e["outcome"] != "ok")
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_none_or(|d| !d.contains("deduplicated") && !d.contains("resolved"))
        })
        .collect();
    assert!(
        other.is_empty(),
        "alerts refused for another reason: {other:#?}"
    );
    eprintln!(
        "storm of 400 alerts in {storm_secs:.1} s: 1 record, {dedup} deduplicated, {shed} direct posts shed with 503 and retried"
    );

    // The manifest names the alert, and verifies.
    let (code, manifest) = node.admin("GET", &format!("/v1/checkpoints/{id}"), None);
    assert_eq!(code, 200, "{manifest}");
    let m = if manifest.get("manifest").is_some() {
        manifest["manifest"].clone()
    } else {
        manifest
    };
    assert_eq!(m["schema"], "ckvault.dev/manifest/v2", "{m:#}");
    let kind = m["trigger"]["kind"].as_str().unwrap();
    assert_eq!(kind, "alertmanager");
    assert_eq!(m["trigger"]["rule"], "shop-incidents");
    assert_eq!(m["trigger"]["requested_by"], "user:alertmanager");
    assert!(
        m["trigger"]["alert"]
            .as_str()
            .is_some_and(|a| a.starts_with("CryptoMiner") || a == "Direct"),
        "{m:#}"
    );
    assert_eq!(m["namespace"], "shop");
    assert_eq!(m["container"], "api");
    ok(&support::ckvault(&[
        "verify",
        &id,
        "--store",
        p(&node.dir.join("store")),
    ]));
    // The rule holds what it captured.
    let show = ok(&support::ckvault(&[
        "show",
        &id,
        "--store",
        p(&node.dir.join("store")),
    ]));
    assert!(show.contains("alertmanager"), "{show}");
    let held = support::ckvault(&["hold", "list", "--store", p(&node.dir.join("store"))]);
    let _ = held; // the hold is checked through the audit log below
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "hold" && e["record"] == id.as_str()),
        "the rule's hold was placed"
    );
    // The capture's status, for the sender that asked.
    let first = direct_codes
        .iter()
        .flat_map(|a| a["captures"].as_array().cloned().unwrap_or_default())
        .next()
        .unwrap();
    let cap = first["capture"].as_str().unwrap();
    let (code, status) = node.post_get(&format!("/v1/captures/{cap}"));
    assert_eq!(code, 200, "{status}");
    assert!(
        status["state"] == "deduplicated" || status["state"] == "sealed",
        "{status}"
    );

    // Repeats (repeat_interval 2 s) and resolves do not capture again.
    let before = node.metric("ckvault_alerts_total");
    std::thread::sleep(Duration::from_secs(5));
    let resolved: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "labels": {"alertname": format!("CryptoMiner{i}"), "namespace": "shop", "pod": "api-0", "container": "api", "severity": "critical"},
                "startsAt": now,
                "endsAt": time_rfc3339(),
            })
        })
        .collect();
    am_post(am_port, &Value::Array(resolved));
    wait_until(
        "a resolved alert to reach ckvault",
        Duration::from_secs(30),
        || {
            node.audit()
                .iter()
                .any(|e| e["detail"].as_str().is_some_and(|d| d.contains("resolved")))
        },
    );
    let after = node.metric("ckvault_alerts_total");
    assert!(
        after > before,
        "Alertmanager repeated the alert ({before} -> {after})"
    );
    assert_eq!(
        node.records().len(),
        1,
        "repeats and resolves captured again"
    );
    node.assert_settled();
}

impl Node {
    /// A counter from /metrics (0 when absent).
    fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.admin("GET", "/metrics", None);
        text.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn post_get(&self, path: &str) -> (u16, Value) {
        let out = support::serve::curl(&self.dir.join("store/tls"), 120)
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .arg(self.url(path))
            .output()
            .unwrap();
        support::serve::json_answer(out.stdout)
    }
}

fn time_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A webhook receiver: `python3 -c NOTICE_SERVER PORT DIR` writes each POSTed body to
/// DIR/N.json and answers 204.
const NOTICE_SERVER: &str = r#"
import http.server, sys, os, itertools
port, out = int(sys.argv[1]), sys.argv[2]
count = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(os.path.join(out, '%d.json' % next(count)), 'wb') as f:
            f.write(body)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
"#;

/// A Falco event for a container; without a namespace, as Falco reports a container it
/// knows no Kubernetes metadata of (`k8s.ns.name` null, by container ID alone).
fn falco_event(container_id: &str, namespace: Option<&str>) -> Vec<u8> {
    let k8s = namespace.map_or(String::new(), |ns| format!(" k8s_ns={ns} k8s_pod=api-0"));
    // Falco's JSON output (json_output: true, json_include_output_property: true), as its
    // http_output posts it; fields as Falco's documentation lists them.
    serde_json::to_vec(&json!({
        "uuid": "8a0ad3c8-8f44-4c6d-9b5e-3e2f0b1a9c11",
        "output": format!("02:01:31.512345678: Notice A shell was spawned in a container with an attached terminal (user=root container_id={container_id}{k8s})"),
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "time": "2026-12-07T02:01:31.512345678Z",
        "source": "syscall",
        "hostname": "node-a",
        "tags": ["container", "mitre_execution", "shell", "T1059"],
        "output_fields": {
            "container.id": container_id,
            "container.name": "api",
            "container.image.repository": "docker.io/library/busybox",
            "evt.time": 1796608891512345678u64,
            "k8s.ns.name": namespace,
            "k8s.pod.name": namespace.map(|_| "api-0"),
            "proc.cmdline": "sh",
            "proc.tty": 34816,
            "user.name": "root",
            "k8s.pod.labels": null
        }
    }))
    .unwrap()
}

fn signed(body: &[u8], secret: &str, ts: u64) -> Vec<String> {
    use std::fmt::Write;
    // HMAC-SHA256 over "TIMESTAMP.BODY", computed with openssl (an independent sender).
    let mut data = ts.to_string().into_bytes();
    data.push(b'.');
    data.extend_from_slice(body);
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-hex", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let mut sig = String::new();
    write!(sig, "sha256={hex}").unwrap();
    vec![
        "X-Ckvault-Sender: soar".into(),
        format!("X-Ckvault-Timestamp: {ts}"),
        format!("X-Ckvault-Signature: {sig}"),
    ]
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn wait_state(node: &Node, cap: &str, states: &[&str]) -> Value {
    let mut last = Value::Null;
    wait_until(
        &format!("capture {cap} to reach {states:?}"),
        Duration::from_secs(120),
        || {
            let (_, s) = node.admin("GET", &format!("/v1/captures/{cap}"), None);
            let done = states.iter().any(|st| s["state"] == *st);
            last = s;
            done
        },
    );
    last
}

#[test]
fn falco_events_and_signed_webhooks_capture_through_the_runtime_and_hostile_bodies_capture_nothing()
{
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    // A webhook that receives the notices: a plain HTTP server on loopback (allowed for
    // loopback only), writing each body it gets into a file.
    let hook_port = free_port();
    let hook_dir = rt.dir("alerts-hook");
    let hook = Kill(
        Command::new("python3")
            .arg("-c")
            .arg(NOTICE_SERVER)
            .arg(hook_port.to_string())
            .arg(&hook_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let node = Node::start(
        &rt,
        "alerts-falco",
        &format!(
            "[capture]\ncooldown = \"1s\"\n[[notify]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nretries = 3\n"
        ),
    );
    let short = rt.container_id.get(..12).unwrap().to_owned();

    // Falco, over mTLS (the admin certificate), by short container ID.
    let (code, answer) = node.admin(
        "POST",
        "/v1/alerts/falco",
        Some(&falco_event(&short, Some("shop"))),
    );
    assert_eq!(code, 202, "{answer}\n{}", node.log());
    let cap = answer["captures"][0]["capture"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = wait_state(&node, &cap, &["sealed", "failed", "refused"]);
    assert_eq!(status["state"], "sealed", "{status}\n{}", node.log());
    assert_eq!(status["container_id"], rt.container_id.as_str());
    let record = status["record"].as_str().unwrap().to_owned();
    let (_, m) = node.admin("GET", &format!("/v1/checkpoints/{record}"), None);
    let m = if m.get("manifest").is_some() {
        m["manifest"].clone()
    } else {
        m
    };
    assert_eq!(m["trigger"]["kind"], "falco", "{m:#}");
    assert_eq!(m["trigger"]["alert"], "Terminal shell in container");
    assert_eq!(
        m["trigger"]["priority"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref(),
        Some("notice")
    );

    // The notice reached the webhook: IDs, digests and the trigger, no secret.
    let mut notice = Value::Null;
    wait_until("the notice", Duration::from_secs(30), || {
        notice = std::fs::read_dir(&hook_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
                    .find(|v| v["capture"] == cap.as_str())
                    .unwrap_or(Value::Null)
            })
            .unwrap_or(Value::Null);
        !notice.is_null()
    });
    assert_eq!(notice["event"], "capture-sealed", "{notice}");
    assert_eq!(notice["record"], record.as_str());
    assert_eq!(notice["sealed_sha256"], m["sealed"]["sha256"]);
    assert_eq!(notice["trigger"]["kind"], "falco");
    assert_eq!(notice["container"], "api");
    let text = notice.to_string();
    assert!(!text.contains(SECRET) && !text.contains("age1"), "{text}");
    drop(hook);

    // A Falco event that names another namespace than the runtime reports: refused.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, answer) = node.admin(
        "POST",
        "/v1/alerts/falco",
        Some(&falco_event(&short, Some("kube-system"))),
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["captures"][0]["state"], "refused", "{answer}");
    assert!(
        answer["captures"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kube-system")),
        "{answer}"
    );

    // A signed webhook (HMAC, openssl as the sender) captures; its replay and a stale
    // signature are refused (401) and audited.
    let body =
        br#"{"namespace":"shop","pod":"api-0","container":"api","reason":"EDR: reverse shell"}"#;
    let headers = signed(body, SECRET, unix_now());
    let (code, answer) = node.post("/v1/alerts/webhook", body, &headers);
    assert_eq!(code, 202, "{answer}\n{}", node.log());
    let cap = answer["captures"][0]["capture"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = wait_state(&node, &cap, &["sealed", "failed", "refused"]);
    assert_eq!(status["state"], "sealed", "{status}");
    assert_eq!(status["trigger"]["requested_by"], "user:soar");
    let (code, answer) = node.post("/v1/alerts/webhook", body, &headers);
    assert_eq!(code, 401, "replayed: {answer}");
    let stale = signed(body, SECRET, unix_now() - 3600);
    let (code, answer) = node.post("/v1/alerts/webhook", body, &stale);
    assert_eq!(code, 401, "stale: {answer}");
    let wrong = signed(body, "not-the-secret-not-the-secret!!", unix_now());
    let (code, _) = node.post("/v1/alerts/webhook", body, &wrong);
    assert_eq!(code, 401, "a wrong secret");
    let refused = node
        .audit()
        .iter()
        .filter(|e| e["action"] == "authenticate" && e["outcome"] == "denied")
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("signed webhook refused"))
        })
        .count();
    assert_eq!(
        refused, 3,
        "the replay, the stale and the wrong signature are audited"
    );

    // A sender with a valid token and no `checkpoint` grant on the container's namespace:
    // refused, for a container that runs and a rule that matches.
    let stranger = ok(&support::ckvault(&[
        "token",
        "add",
        "stranger",
        "--group",
        "strangers",
        "--tokens",
        p(&node.dir.join("tokens.toml")),
    ]))
    .trim()
    .to_owned();
    let as_stranger = [format!("Authorization: Bearer {stranger}")];
    let mut answer = Value::Null;
    // The server reads the token file within 2 s of the change.
    wait_until("the new token", Duration::from_secs(10), || {
        let (code, a) = node.post("/v1/alerts/webhook", body, &as_stranger);
        answer = a;
        code == 202
    });
    assert_eq!(answer["captures"][0]["state"], "refused", "{answer}");
    assert!(
        answer["captures"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("may not checkpoint in namespace shop")),
        "{answer}"
    );

    // The stranger sends a Falco event by container ID alone (no namespace) while the
    // container's capture is within its cooldown: refused on the namespace of the capture
    // it repeats, and never told of that capture (before, it was answered "deduplicated
    // ... by capture cap-...", the check before authorization).
    std::thread::sleep(Duration::from_millis(1100));
    let (code, answer) = node.admin(
        "POST",
        "/v1/alerts/falco",
        Some(&falco_event(&short, Some("shop"))),
    );
    assert_eq!(code, 202, "{answer}\n{}", node.log());
    let taken = answer["captures"][0]["capture"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, answer) = node.post("/v1/alerts/falco", &falco_event(&short, None), &as_stranger);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["captures"][0]["state"], "refused", "{answer}");
    let reason = answer["captures"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("may not checkpoint in namespace shop") && !reason.contains(&taken),
        "{answer}"
    );
    let status = wait_state(&node, &taken, &["sealed", "failed", "refused"]);
    assert_eq!(status["state"], "sealed", "{status}");

    // Hostile bodies: a clear 4xx, audited, nothing captured.
    let records_before = node.records().len();
    let huge = vec![b' '; 200 * 1024];
    let (code, _) = node.post("/v1/alerts/alertmanager", &huge, &[]);
    assert_eq!(code, 413, "an oversized body");
    let mut deep = "[".repeat(20_000);
    deep.push_str(&"]".repeat(20_000));
    let (code, answer) = node.post("/v1/alerts/alertmanager", deep.as_bytes(), &[]);
    assert_eq!(code, 400, "deeply nested JSON: {answer}");
    let (code, answer) = node.post("/v1/alerts/falco", b"{\"rule\": 5", &[]);
    assert_eq!(code, 400, "truncated JSON: {answer}");
    let evil = alertmanager_payload(&[am_alert("Evil\u{1b}[2J\nname", "e1", "firing")]);
    let (code, answer) = node.post("/v1/alerts/alertmanager", &evil, &[]);
    assert!(
        code == 202 || code == 400,
        "control characters: {code} {answer}"
    );
    let unknown = br#"{"namespace":"shop","pod":"api-0","container":"api","reason":"x","extra":{"a":[1,2,3]}}"#;
    let (code, answer) = node.post("/v1/alerts/webhook", unknown, &[]);
    assert_eq!(code, 202, "unknown fields are tolerated: {answer}");
    let wrong_version = br#"{"version":"3","alerts":[]}"#;
    let (code, answer) = node.post("/v1/alerts/alertmanager", wrong_version, &[]);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.to_string().contains('4'),
        "says which version: {answer}"
    );
    // The sender may not checkpoint in kube-system.
    let other = br#"{"namespace":"kube-system","pod":"api-0","container":"api","reason":"x"}"#;
    let (code, answer) = node.post("/v1/alerts/webhook", other, &[]);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["captures"][0]["state"], "refused", "{answer}");
    std::thread::sleep(Duration::from_secs(2));
    let raw = std::fs::read(node.dir.join("store/audit.log")).unwrap();
    assert!(
        !raw.contains(&0x1b),
        "a control character reached the audit log"
    );
    // The unknown-fields webhook may have captured (it was valid); nothing else did.
    assert!(node.records().len() <= records_before + 1);
    node.assert_settled();
    // /metrics counts the refusals.
    let (code, metrics) = node.admin("GET", "/metrics", None);
    assert_eq!(code, 200);
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("ckvault_capture_refusals_total"), "{text}");
}

#[test]
fn a_capture_the_disk_cannot_hold_is_refused_before_the_runtime_is_asked() {
    let Some(rt) = RealCri::start(16, "shop", "api-0", "api") else {
        return;
    };
    let node = Node::start(&rt, "alerts-disk", "[capture]\ndisk_margin = \"1000TiB\"\n");
    let body = br#"{"namespace":"shop","pod":"api-0","container":"api","reason":"test"}"#;
    let (code, answer) = node.post("/v1/alerts/webhook", body, &[]);
    assert_eq!(code, 202, "{answer}\n{}", node.log());
    let cap = answer["captures"][0]["capture"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = wait_state(&node, &cap, &["sealed", "failed", "refused"]);
    assert_eq!(status["state"], "refused", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not enough disk") && r.contains("runtime was not asked")),
        "{status}"
    );
    assert!(node.records().is_empty());
    assert!(
        node.staging_files().is_empty(),
        "{:?}",
        node.staging_files()
    );
    let events = node.audit();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "capture" && e["outcome"] == "denied"),
        "the refusal is audited"
    );
    let _ = Path::new("");
}
