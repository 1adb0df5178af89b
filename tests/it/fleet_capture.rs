//! Capture across a fleet (issue 31, docs/fleet-capture.md), with real parts: three
//! `ckvault serve` processes on one bucket (a real SeaweedFS, and a real moto server):
//!
//! - **central**: the alert receivers, no runtime (as a cluster's central server);
//! - **node-a**: a node agent on the real containerd 2.1 (tests/harness/real-cri-runtime.sh)
//!   running `shop/api-0` (a 256 MiB container), with its own receivers too;
//! - **node-b**: a node agent on Debian 12's containerd 1.6 running `shop/web-0` (it runs
//!   pods but cannot checkpoint), polling its inbox all along.
//!
//! An alert posted to the central server is captured by node-a exactly once (one claim,
//! one record), its outcome reaches `GET /v1/captures/ID` on the central server; an alert
//! for a pod nobody runs is answered `unclaimed` after `request_ttl = "5s"`; on SeaweedFS,
//! node-a killed with SIGKILL while the runtime checkpoints leaves a request answered
//! `failed` ("the agent stopped"), never lost and never captured twice. Printed: alert to
//! claim and to sealed record through the bucket beside node-a's own receiver (the direct
//! figure) in the same run, and the S3 requests each agent sends per idle hour.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::realcri::RealCri;
use crate::support::{self, wait_for};

use ckvault::config::StoreConfig;
use ckvault::internal::store::s3::S3Store;
use ckvault::internal::store::s3::fleet::{Claim, Fleet};

const BUCKET: &str = "fleet";
const PREFIX: &str = "f";

enum Backend {
    Seaweed(support::seaweed::Seaweed),
    Moto(support::moto::Moto),
}

impl Backend {
    fn store_toml(&self, spool: &Path) -> String {
        let t = match self {
            Backend::Seaweed(s) => s.store_toml(BUCKET, PREFIX, spool),
            Backend::Moto(m) => m.store_toml(BUCKET, PREFIX, spool),
        };
        // The default index refresh (15 s) on the agents, as deployed: their idle cost is
        // measured.
        t.lines()
            .filter(|l| !l.starts_with("index_refresh"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    fn store_config(&self) -> StoreConfig {
        match self {
            Backend::Seaweed(s) => s.store_config(BUCKET, PREFIX),
            Backend::Moto(m) => m.store_config(BUCKET, PREFIX),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Seaweed(_) => "SeaweedFS",
            Backend::Moto(_) => "moto",
        }
    }
}

/// One `ckvault serve` of the fleet.
struct Proc {
    dir: PathBuf,
    config: PathBuf,
    serve: Option<support::serve::Serve>,
    token: String,
}

impl Proc {
    fn start(dir: &Path, name: &str, store: &str, extra: &str) -> Proc {
        let token = support::serve::alerting_policy_and_token(dir);
        let config = dir.join("ckvault.toml");
        std::fs::write(
            &config,
            format!(
                r#"{store}
[node]
name = "{name}"
[server]
listen = "127.0.0.1:0"
tokens = "{d}/tokens.toml"
[policy]
dir = "{d}/policies"
[alerts]
enabled = true
[fleet]
enabled = true
poll_interval = "1s"
request_ttl = "5s"
{extra}
[[trigger]]
name = "shop-incidents"
namespaces = ["shop"]
hold = true
"#,
                d = dir.display(),
            ),
        )
        .unwrap();
        let mut me = Proc {
            dir: dir.to_path_buf(),
            config,
            serve: None,
            token,
        };
        me.restart();
        me
    }

    fn restart(&mut self) {
        let log = self.dir.join(format!(
            "serve-{}.log",
            std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0)
        ));
        self.serve = Some(support::serve::Serve::start(&self.config, &log));
    }

    fn port(&self) -> u16 {
        self.serve.as_ref().map(|s| s.port).unwrap_or(0)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("serve-") {
                out += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        out
    }

    /// curl: with the sender's token, or (admin) the generated admin certificate.
    fn call(&self, method: &str, path: &str, body: Option<&Value>, admin: bool) -> (u16, Value) {
        let tls = self.dir.join("spool/tls");
        let mut cmd = if admin {
            support::serve::admin_curl(&tls, 120)
        } else {
            let mut cmd = support::serve::curl(&tls, 120);
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token)]);
            cmd
        };
        cmd.args(["-X", method]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", self.port()))
            .output()
            .unwrap();
        support::serve::json_answer(out.stdout)
    }

    /// Posts one webhook alert for `pod`'s container `api`; the capture's answer.
    fn alert(&self, pod: &str, container: &str) -> Value {
        let (code, body) = self.call(
            "POST",
            "/v1/alerts/webhook",
            Some(
                &json!({"namespace": "shop", "pod": pod, "container": container,
                        "reason": "outbound connection to a mining pool"}),
            ),
            false,
        );
        assert_eq!(code, 202, "{body}\n{}", self.logs());
        body["captures"][0].clone()
    }

    fn capture(&self, id: &str) -> Value {
        let (code, body) = self.call("GET", &format!("/v1/captures/{id}"), None, false);
        assert_eq!(code, 200, "{body}");
        body
    }

    /// A counter of `/metrics` (the line starting with `name`).
    fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.call("GET", "/metrics", None, true);
        let text = body.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// S3 requests sent so far, by class.
    fn s3_requests(&self) -> [u64; 6] {
        ["get", "head", "put", "post", "list", "delete"]
            .map(|c| self.metric(&format!("ckvault_s3_requests_total{{class=\"{c}\"}}")))
    }

    fn audit(&self) -> Vec<Value> {
        support::audit_events(&self.dir.join("spool"))
    }
}

fn state(v: &Value) -> String {
    v["state"].as_str().unwrap_or_default().to_owned()
}

fn bucket_keys(s3: &S3Store, rt: &tokio::runtime::Runtime, rel: &str) -> Vec<String> {
    rt.block_on(s3.list(rel)).unwrap()
}

fn run(backend: Backend, tmp: &Path, kill: bool) {
    let Some(rt_cri) = RealCri::start(256, "shop", "api-0", "api") else {
        return;
    };
    let Some(ctrd) = support::containerd::Containerd::start() else {
        return;
    };
    ctrd.run_pod("shop", "web-0", "web");
    let rt = support::seaweed::runtime();
    let s3 = S3Store::new(&backend.store_config()).unwrap();
    let which = backend.name();

    let (_identity, recipient) = support::age_keypair(tmp);
    let seal = format!("[seal]\nrecipients = [\"{recipient}\"]\n");
    let a_dir = rt_cri.dir("fleet-a");
    let mut a = Proc::start(
        &a_dir,
        "node-a",
        &backend.store_toml(&a_dir.join("spool")),
        &format!(
            "{seal}[cri]\nupstream = \"{}\"\nstaging = \"{}\"\n[capture]\ncooldown = \"1s\"\ncapture_timeout = \"60s\"\n",
            rt_cri.socket.display(),
            a_dir.join("staging").display()
        ),
    );
    let b_dir = tmp.join("node-b");
    let b = Proc::start(
        &b_dir,
        "node-b",
        &backend.store_toml(&b_dir.join("spool")),
        &format!(
            "{seal}[cri]\nupstream = \"{}\"\nstaging = \"{}\"\n",
            ctrd.socket.display(),
            b_dir.join("staging").display()
        ),
    );
    let c_dir = tmp.join("central");
    let mut c = Proc::start(
        &c_dir,
        "central",
        &(backend.store_toml(&c_dir.join("spool")) + "index_refresh = \"1s\"\n"),
        "[capture]\ncooldown = \"1s\"\n",
    );

    // Both agents publish their pods.
    let pod_node = |pod: &str| -> Option<String> {
        let key = s3.key(&format!("captures/pods/shop/{pod}.json"));
        let (bytes, _) = rt.block_on(s3.get_bytes(&key, 65536)).ok()??;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["node"].as_str().map(str::to_owned)
    };
    assert_eq!(
        wait_for(
            "node-a's publication",
            Duration::from_secs(30),
            || pod_node("api-0")
        ),
        "node-a"
    );
    assert_eq!(
        wait_for(
            "node-b's publication",
            Duration::from_secs(30),
            || pod_node("web-0")
        ),
        "node-b"
    );

    // Part 4's direct figure: the same container through node-a's own receiver.
    let t0 = Instant::now();
    let direct = a.alert("api-0", "api");
    assert_eq!(state(&direct), "queued", "{direct}");
    let direct_id = direct["capture"].as_str().unwrap().to_owned();
    let direct_done = wait_for("the direct capture", Duration::from_secs(120), || {
        let v = a.capture(&direct_id);
        matches!(state(&v).as_str(), "sealed" | "failed" | "refused").then_some(v)
    });
    let direct_secs = t0.elapsed().as_secs_f64();
    assert_eq!(state(&direct_done), "sealed", "{direct_done}\n{}", a.logs());
    std::thread::sleep(Duration::from_secs(2)); // past the 1 s cooldown

    // Through the central server and the bucket.
    let t0 = Instant::now();
    let asked = c.alert("api-0", "api");
    assert_eq!(state(&asked), "requested", "{asked}\n{}", c.logs());
    assert_eq!(asked["node"], "node-a", "{asked}");
    let id = asked["capture"].as_str().unwrap().to_owned();
    let mut claimed_secs = None;
    let done = wait_for("the fleet capture", Duration::from_secs(120), || {
        let v = c.capture(&id);
        let st = state(&v);
        if claimed_secs.is_none() && st != "requested" {
            claimed_secs = Some(t0.elapsed().as_secs_f64());
        }
        matches!(st.as_str(), "sealed" | "failed" | "refused" | "unclaimed").then_some(v)
    });
    let sealed_secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        state(&done),
        "sealed",
        "{done}\ncentral:\n{}\nnode-a:\n{}",
        c.logs(),
        a.logs()
    );
    assert_eq!(done["node"], "node-a", "{done}");
    let record = done["record"].as_str().unwrap().to_owned();
    // Exactly once: one claim, by node-a; node-b polled all along and claimed nothing.
    let claims = bucket_keys(&s3, &rt, "captures/claims/");
    assert_eq!(claims, vec![format!("{id}.json")], "{claims:?}");
    assert_eq!(a.metric("ckvault_fleet_claims_total"), 1);
    assert_eq!(b.metric("ckvault_fleet_claims_total"), 0);
    assert!(b.metric("ckvault_fleet_inbox_polls_total") > 5);
    // The record reaches the bucket (two in all: the direct one and this one), with the
    // alert's cause in its signed manifest.
    let ids = wait_for(
        "both records in the bucket",
        Duration::from_secs(120),
        || {
            let ids = rt.block_on(s3.ids()).ok()?;
            (ids.len() >= 2).then_some(ids)
        },
    );
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().any(|i| i.to_string() == record));
    let manifest = wait_for(
        "the record in the central index",
        Duration::from_secs(60),
        || {
            let (code, v) = c.call("GET", &format!("/v1/checkpoints/{record}"), None, true);
            (code == 200).then_some(v)
        },
    );
    let text = manifest.to_string();
    assert!(
        text.contains("\"webhook\"")
            && text.contains("user:alertmanager")
            && text.contains("shop-incidents"),
        "{text}"
    );
    // The rule's hold reaches the bucket once the record does (the node seals into its
    // spool; the hold waits for the uploader).
    let rid = ids
        .iter()
        .find(|i| i.to_string() == record)
        .unwrap()
        .clone();
    let hold = wait_for(
        "the rule's hold on the record in the bucket",
        Duration::from_secs(120),
        || rt.block_on(s3.hold(&rid)).ok().flatten(),
    );
    assert!(hold.reason.contains("shop-incidents"), "{hold:?}");
    // Audited on both sides.
    let c_audit = c.audit();
    assert!(c_audit.iter().any(|e| e["action"] == "capture-request"
        && e["outcome"] == "ok"
        && e["detail"].as_str().unwrap_or_default().contains(&id)));
    let a_audit = a.audit();
    assert!(a_audit.iter().any(|e| e["action"] == "capture-claim"
        && e["detail"].as_str().unwrap_or_default().contains("claimed")));
    assert!(a_audit.iter().any(|e| {
        e["action"] == "capture-claim"
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("outcome sealed written")
    }));

    // A pod nobody runs: unclaimed after its 5 s.
    let t1 = Instant::now();
    let nobody = c.alert("nobody-0", "api");
    assert_eq!(state(&nobody), "requested", "{nobody}");
    assert!(nobody.get("node").is_none(), "{nobody}");
    let nid = nobody["capture"].as_str().unwrap().to_owned();
    let unclaimed = wait_for("unclaimed", Duration::from_secs(60), || {
        let v = c.capture(&nid);
        (state(&v) != "requested").then_some(v)
    });
    assert_eq!(state(&unclaimed), "unclaimed", "{unclaimed}");
    let unclaimed_secs = t1.elapsed().as_secs_f64();
    assert!(c.audit().iter().any(|e| {
        e["action"] == "capture-request"
            && e["outcome"] == "error"
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("unclaimed")
    }));

    // A receiver restarted while a request waits still settles it when it expires (the
    // request is read back from the bucket and watched again).
    let again = c.alert("nobody-1", "api");
    assert_eq!(state(&again), "requested", "{again}");
    let aid = again["capture"].as_str().unwrap().to_owned();
    drop(c.serve.take());
    c.restart();
    let settled = wait_for("unclaimed after a restart", Duration::from_secs(60), || {
        let v = c.capture(&aid);
        (state(&v) != "requested").then_some(v)
    });
    assert_eq!(state(&settled), "unclaimed", "{settled}");

    // Two agents racing for one claim: exactly one wins (the store's conditional write).
    let fleet = Fleet::new(s3.clone());
    let race_id = "cap-01JRACE0000000000000000000";
    let wins = rt.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..8 {
            let f = fleet.clone();
            tasks.push(tokio::spawn(async move {
                f.claim(&Claim {
                    id: race_id.into(),
                    node: format!("racer-{n}"),
                    holder: format!("racer-{n}:1"),
                    claimed_at: "2026-01-01T00:00:00Z".into(),
                    deadline: "2026-01-01T00:01:00Z".into(),
                    expired: false,
                })
                .await
                .unwrap()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        wins
    });
    assert_eq!(wins, 1, "{which}: claims of one request won");

    // Idle: S3 requests per agent per hour.
    let window = Duration::from_secs(30);
    let before = [a.s3_requests(), b.s3_requests()];
    let polls_before = b.metric("ckvault_fleet_inbox_polls_total");
    std::thread::sleep(window);
    let after = [a.s3_requests(), b.s3_requests()];
    let polls = b.metric("ckvault_fleet_inbox_polls_total") - polls_before;
    let per_hour = |i: usize| -> Vec<String> {
        ["get", "head", "put", "post", "list", "delete"]
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let d = after[i][k] - before[i][k];
                format!("{c} {:.0}", d as f64 * 3600.0 / window.as_secs_f64())
            })
            .collect()
    };
    println!(
        "fleet capture on {which}: direct (node-a's own receiver) alert->sealed {direct_secs:.2} s; \
         through central + bucket alert->claimed {:.2} s, alert->sealed {sealed_secs:.2} s; \
         unclaimed answered after {unclaimed_secs:.2} s (request_ttl 5 s)",
        claimed_secs.unwrap_or(0.0)
    );
    println!(
        "fleet idle S3 requests per hour (poll_interval 1 s, index_refresh 15 s): node-a {:?}; node-b {:?}; inbox polls {:.0}/h",
        per_hour(0),
        per_hour(1),
        polls as f64 * 3600.0 / window.as_secs_f64()
    );

    if !kill {
        return;
    }
    // node-a killed (SIGKILL) while the runtime checkpoints: answered failed, never lost,
    // never captured twice.
    let asked = c.alert("api-0", "api");
    assert_eq!(state(&asked), "requested", "{asked}");
    let kid = asked["capture"].as_str().unwrap().to_owned();
    wait_for("node-a checkpointing", Duration::from_secs(60), || {
        let (code, v) = a.call("GET", &format!("/v1/captures/{kid}"), None, true);
        (code == 200 && state(&v) == "checkpointing").then_some(())
    });
    if let Some(s) = a.serve.take() {
        s.kill();
    }
    let killed_at = Instant::now();
    a.restart();
    let ended = wait_for(
        "the killed capture's answer",
        Duration::from_secs(240),
        || {
            let v = c.capture(&kid);
            matches!(
                state(&v).as_str(),
                "sealed" | "failed" | "refused" | "unclaimed"
            )
            .then_some(v)
        },
    );
    println!(
        "fleet capture on {which}: node-a killed while checkpointing; answered {} after {:.0} s: {}",
        state(&ended),
        killed_at.elapsed().as_secs_f64(),
        ended["reason"]
    );
    assert_eq!(state(&ended), "failed", "{ended}");
    assert!(
        ended["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("the agent stopped"),
        "{ended}"
    );
    let claims = bucket_keys(&s3, &rt, "captures/claims/");
    assert!(claims.contains(&format!("{kid}.json")));
    assert_eq!(
        a.metric("ckvault_fleet_claims_total"),
        0,
        "the restarted agent claims nothing again"
    );
    drop(rt_cri);
}

#[test]
fn an_alert_at_the_central_server_is_captured_once_by_the_node_running_it_on_seaweedfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(weed) = support::seaweed::Seaweed::start(&tmp.path().join("weed")) else {
        return;
    };
    weed.create_bucket(BUCKET);
    run(Backend::Seaweed(weed), tmp.path(), true);
}

#[test]
fn an_alert_at_the_central_server_is_captured_once_by_the_node_running_it_on_moto() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(moto) = support::moto::Moto::start(&tmp.path().join("moto")) else {
        return;
    };
    let s3 = S3Store::new(&moto.store_config(BUCKET, PREFIX)).unwrap();
    support::seaweed::runtime()
        .block_on(
            s3.client()
                .create_bucket()
                .bucket(BUCKET)
                .object_lock_enabled_for_bucket(true)
                .send(),
        )
        .unwrap();
    run(Backend::Moto(moto), tmp.path(), false);
}
