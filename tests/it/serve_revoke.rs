//! Revocation against a real `ckvault serve` (issue 27 item 18), with curl, Python's ssl
//! module and the openssl CLI as independent clients and tools:
//!
//! - a token removed from its file (by hand, or with `ckvault token revoke`) is refused
//!   within `RELOAD_INTERVAL` (2 s) plus slack, without SIGHUP; one added is accepted as
//!   soon;
//! - a client certificate added to the CRL file (`[server] crl`, written by `openssl ca
//!   -gencrl`) is refused without a restart: a new connection fails its handshake (alert
//!   `certificate revoked`), a connection opened before the change gets 401 at its next
//!   request, and a TLS session from before the change is not resumed;
//! - `ckvault token add` refuses a second token for a name and a token without a group
//!   (unless `--no-group`); `token list` and `token revoke` work;
//! - the generated CA lives 10 years, the server and admin certificates 365 days
//!   (`openssl x509 -checkend`), and `ckvault tls renew` renews them under a running
//!   server, which presents the new server certificate within the same bound.
//!
//! To see them fail against an older build: `CKVAULT_TEST_BIN=/old/ckvault cargo test
//! --test it serve_revoke::`.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::serve::Serve;
use support::{ckvault, ok, p};

/// The server's reload interval (`serve::RELOAD_INTERVAL`).
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What the tests allow beyond it: reading the file, a loaded 2-core machine, curl's start.
const SLACK: Duration = Duration::from_secs(2);

/// A server on the embedded defaults (generated CA, certificates, admin token) in a temp
/// dir, optionally with `[server] crl`.
struct Vault {
    server: Option<Serve>,
    tmp: tempfile::TempDir,
    config: PathBuf,
}

impl Vault {
    fn start(crl: Option<&str>) -> Vault {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("ckvault.toml");
        let mut text = "[store]\npath = \"store\"\n[server]\nlisten = \"127.0.0.1:0\"\n".to_owned();
        if let Some(crl) = crl {
            text.push_str(&format!("crl = {crl:?}\n"));
        }
        fs::write(&config, text).unwrap();
        let server = Serve::start(&config, &tmp.path().join("server.log"));
        Vault {
            server: Some(server),
            tmp,
            config,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn tls(&self, name: &str) -> PathBuf {
        self.dir().join("store").join("tls").join(name)
    }

    fn port(&self) -> u16 {
        self.server.as_ref().expect("server running").port
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    fn restart(&mut self, config: &str) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
        fs::write(&self.config, config).unwrap();
        self.server = Some(Serve::start(&self.config, &self.dir().join("server.log")));
    }

    /// `GET /v1/checkpoints` with curl: (curl exit code, HTTP status, stderr).
    fn get(&self, auth: &Auth) -> (i32, u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(self.tls("ca.pem"));
        match auth {
            Auth::Token(t) => {
                cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
            }
            Auth::Cert(c, k) => {
                cmd.arg("--cert").arg(c).arg("--key").arg(k);
            }
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}/v1/checkpoints", self.port()))
            .output()
            .expect("run curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Polls `get(auth)` until `done` holds, for at most `bound`; returns how long it took,
    /// or panics with the last answer.
    fn until(
        &self,
        auth: &Auth,
        bound: Duration,
        what: &str,
        done: impl Fn(&(i32, u16, String)) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let r = self.get(auth);
            if done(&r) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < bound,
                "{what}: not within {bound:?}; last answer {r:?}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

enum Auth {
    Token(String),
    Cert(PathBuf, PathBuf),
}

fn token_cmd(args: &[&str]) -> std::process::Output {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    ckvault(&all)
}

#[test]
fn a_token_removed_from_its_file_stops_working_within_the_reload_interval_without_sighup() {
    let vault = Vault::start(None);
    let tokens = vault.tls("tokens.toml");
    let admin = Auth::Token(
        fs::read_to_string(vault.tls("admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
    );
    assert_eq!(vault.get(&admin).1, 200);

    // Added while the server runs: accepted within the bound, no signal sent.
    let bob = ok(&token_cmd(&[
        "add",
        "bob",
        "--group",
        "ckvault:admins",
        "--tokens",
        p(&tokens),
    ]));
    let bob = Auth::Token(bob.trim().to_owned());
    let carol = ok(&token_cmd(&[
        "add",
        "carol",
        "--group",
        "ckvault:admins",
        "--tokens",
        p(&tokens),
    ]));
    let carol = Auth::Token(carol.trim().to_owned());
    let took = vault.until(&bob, RELOAD_INTERVAL + SLACK, "a new token accepted", |r| {
        r.1 == 200
    });
    println!("new token accepted after {took:?}");
    assert_eq!(vault.get(&carol).1, 200);

    // bob's entry cut out of the file by hand, in place (same inode).
    let text = fs::read_to_string(&tokens).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let kept: Vec<_> = doc["token"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str() != Some("bob"))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 2);
    let mut out = toml::Table::new();
    out.insert("token".into(), toml::Value::Array(kept));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&tokens)
        .unwrap();
    f.write_all(toml::to_string(&out).unwrap().as_bytes())
        .unwrap();
    drop(f);
    let took = vault.until(
        &bob,
        RELOAD_INTERVAL + SLACK,
        "a token removed by hand refused",
        |r| r.1 == 401,
    );
    println!("token removed by hand refused after {took:?}");
    assert!(took <= RELOAD_INTERVAL + SLACK);
    assert_eq!(vault.get(&carol).1, 200, "the other tokens keep working");

    // carol's with `ckvault token revoke` (the file replaced by a rename).
    let revoked = token_cmd(&["revoke", "carol", "--tokens", p(&tokens)]);
    ok(&revoked);
    let took = vault.until(
        &carol,
        RELOAD_INTERVAL + SLACK,
        "a revoked token refused",
        |r| r.1 == 401,
    );
    println!("token revoked with `token revoke` refused after {took:?}");
    assert_eq!(vault.get(&admin).1, 200);

    // A file that does not parse keeps the old tokens (not an open door, not a lock-out).
    fs::write(&tokens, "this is not toml [[[").unwrap();
    std::thread::sleep(RELOAD_INTERVAL + SLACK);
    assert_eq!(vault.get(&admin).1, 200);
    assert_eq!(vault.get(&carol).1, 401);
    assert!(
        vault.log().contains("keeping the old tokens"),
        "{}",
        vault.log()
    );
}

#[test]
fn token_add_refuses_a_duplicate_name_and_a_token_without_a_group_and_list_and_revoke_work() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.toml");
    let t = p(&tokens);
    let first = ok(&token_cmd(&[
        "add",
        "alice",
        "--group",
        "responders",
        "--tokens",
        t,
    ]));
    assert!(first.trim().starts_with("ckv_"));

    let dup = token_cmd(&["add", "alice", "--group", "other", "--tokens", t]);
    assert!(!dup.status.success(), "a second token for alice was added");
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(
        err.contains("exists") && err.contains("token revoke alice"),
        "{err}"
    );

    let groupless = token_cmd(&["add", "bob", "--tokens", t]);
    assert!(
        !groupless.status.success(),
        "a token without a group was added"
    );
    let err = String::from_utf8_lossy(&groupless.stderr);
    assert!(
        err.contains("--group") && err.contains("--no-group"),
        "{err}"
    );
    ok(&token_cmd(&["add", "auditor", "--no-group", "--tokens", t]));

    let list = ok(&token_cmd(&["list", "--tokens", t]));
    let names: Vec<&str> = list.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(names, ["alice", "auditor"], "{list}");
    assert!(
        list.contains("responders") && !list.contains(first.trim()),
        "{list}"
    );
    let json = ok(&token_cmd(&["list", "--tokens", t, "--json"]));
    let first_entry: serde_json::Value =
        serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first_entry["name"], "alice");
    assert_eq!(first_entry["groups"], serde_json::json!(["responders"]));

    ok(&token_cmd(&["revoke", "alice", "--tokens", t]));
    let list = ok(&token_cmd(&["list", "--tokens", t]));
    assert!(!list.contains("alice"), "{list}");
    let again = token_cmd(&["revoke", "alice", "--tokens", t]);
    assert!(
        !again.status.success(),
        "revoking an unknown name succeeded"
    );
    // Once revoked, the name can have a new token.
    ok(&token_cmd(&[
        "add",
        "alice",
        "--group",
        "responders",
        "--tokens",
        t,
    ]));
}

/// An `openssl ca` database for the generated CA in `dir`: revokes `revoke` (if any) and
/// writes the CRL to `out` (via a rename, as a deployment would).
fn openssl_crl(vault: &Vault, dir: &Path, revoke: Option<&Path>, out: &Path) {
    fs::create_dir_all(dir).unwrap();
    let cnf = dir.join("ca.cnf");
    if !cnf.exists() {
        fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 30\n",
                dir.join("index.txt").display(),
                dir.join("crlnumber").display()
            ),
        )
        .unwrap();
        fs::write(dir.join("index.txt"), "").unwrap();
        fs::write(dir.join("crlnumber"), "01\n").unwrap();
    }
    let ca = |cmd: &mut Command| {
        let out = cmd
            .args(["-config", p(&cnf), "-keyfile"])
            .arg(vault.tls("ca.key"))
            .arg("-cert")
            .arg(vault.tls("ca.pem"))
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl ca: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if let Some(cert) = revoke {
        ca(Command::new("openssl").args(["ca", "-revoke", p(cert)]));
    }
    let tmp = out.with_extension("tmp");
    ca(Command::new("openssl").args(["ca", "-gencrl", "-out", p(&tmp)]));
    fs::rename(&tmp, out).unwrap();
}

/// A Python client holding one TLS connection (client certificate `cert`) across a CRL
/// change: prints the status of a request, waits for a line on stdin, prints the status
/// of a second request on the same connection (and whether it was the same), then tries
/// to resume the first TLS session on a new connection and prints what happened.
const KEEPALIVE_PY: &str = r#"
import http.client, socket, ssl, sys
ca, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
c.request("GET", "/v1/checkpoints")
r = c.getresponse(); r.read()
local = c.sock.getsockname()
session = c.sock.session
print("first", r.status, flush=True)
sys.stdin.readline()
c.request("GET", "/v1/checkpoints")
r = c.getresponse(); r.read()
print("second", r.status, "same-connection" if c.sock.getsockname() == local else "new-connection", flush=True)
try:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1", session=session)
    s.sendall(b"GET /v1/checkpoints HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = s.recv(4096)
    print("resume", "reused" if s.session_reused else "full-handshake", data.split(b"\r\n")[0].decode(), flush=True)
except (ssl.SSLError, OSError) as e:
    print("resume refused", type(e).__name__, str(e).replace("\n", " "), flush=True)
"#;

#[test]
fn a_revoked_client_certificate_is_refused_after_the_crl_file_changes_without_a_restart() {
    // First start generates the CA; then the server runs with a CRL (empty) of that CA.
    let mut vault = Vault::start(None);
    let ca_dir = vault.dir().join("openssl-ca");
    let crl = vault.dir().join("clients.crl.pem");
    openssl_crl(&vault, &ca_dir, None, &crl);
    vault.restart(&format!(
        "[store]\npath = \"store\"\n[server]\nlisten = \"127.0.0.1:0\"\ncrl = {:?}\n",
        p(&crl)
    ));
    let tls_dir = vault.tls("");
    let (m_cert, m_key) =
        support::pki::issue(&tls_dir, vault.dir(), "mallory", Some("ckvault:admins"));
    let (c_cert, c_key) =
        support::pki::issue(&tls_dir, vault.dir(), "carol", Some("ckvault:admins"));
    let mallory = Auth::Cert(m_cert.clone(), m_key.clone());
    let carol = Auth::Cert(c_cert, c_key);
    assert_eq!(vault.get(&mallory).1, 200, "{:?}", vault.get(&mallory));
    assert_eq!(vault.get(&carol).1, 200);

    // mallory's connection, opened before the revocation, stays open across it.
    let mut py = Command::new("python3")
        .args(["-c", KEEPALIVE_PY])
        .arg(vault.tls("ca.pem"))
        .arg(&m_cert)
        .arg(&m_key)
        .arg(vault.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "first 200");

    openssl_crl(&vault, &ca_dir, Some(&m_cert), &crl);
    let took = vault.until(
        &mallory,
        RELOAD_INTERVAL + SLACK,
        "a revoked certificate refused",
        |r| r.1 != 200,
    );
    println!("revoked certificate refused after {took:?}");
    // A new connection fails its handshake: rustls checks the CRL while verifying the
    // client certificate and sends the certificate_revoked alert; curl reports it.
    let (exit, status, stderr) = vault.get(&mallory);
    assert_eq!(status, 0, "an HTTP answer to a revoked certificate");
    assert_ne!(exit, 0);
    println!("curl on a new connection: exit {exit}, {}", stderr.trim());
    assert_eq!(
        vault.get(&carol).1,
        200,
        "an unrevoked certificate of the same CA is still accepted"
    );

    // The connection opened before: 401 at its next request.
    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let second = lines.next().map(|l| l.unwrap()).unwrap_or_default();
    assert_eq!(
        second,
        "second 401 same-connection",
        "server log:\n{}",
        vault.log()
    );
    // Its TLS session is not resumed (the session cache was emptied with the CRL change).
    let resume = lines.next().unwrap().unwrap();
    assert!(
        resume.starts_with("resume refused") && resume.contains("REVOKED"),
        "a session from before the revocation: {resume}"
    );
    assert!(py.wait().unwrap().success());

    // Audited: the 401 names the revoked certificate; the refused handshakes are counted.
    let events = support::audit_events(&vault.dir().join("store"));
    assert!(
        events.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("revoked client certificate"))),
        "no audit event for the revoked certificate"
    );
    let log = vault.log();
    let refused = log
        .lines()
        .find(|l| l.contains("TLS handshake"))
        .unwrap_or_default();
    println!("server log: {refused}");
    assert!(refused.contains("Revoked"), "{log}");

    // A CRL that does not load (garbage, or signed by another CA) keeps the old one.
    fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    std::thread::sleep(RELOAD_INTERVAL + SLACK);
    assert_ne!(
        vault.get(&mallory).1,
        200,
        "a broken CRL file let a revoked certificate in"
    );
    assert_eq!(vault.get(&carol).1, 200);
    assert!(
        vault.log().contains("keeping the old TLS credentials"),
        "{}",
        vault.log()
    );
}

/// `openssl x509 -checkend SECONDS`: whether `cert` is still valid then.
fn valid_in(cert: &Path, days: i64) -> bool {
    Command::new("openssl")
        .args(["x509", "-noout", "-in", p(cert), "-checkend"])
        .arg((days * 86_400).to_string())
        .output()
        .expect("run openssl")
        .status
        .success()
}

fn serial(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child.stdin.take().unwrap().write_all(pem).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// The serial of the certificate the server presents now (`openssl s_client`).
fn presented_serial(vault: &Vault) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", vault.port()))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    serial(&out.stdout)
}

#[test]
fn generated_certificates_have_stated_lifetimes_and_tls_renew_renews_them_under_a_running_server() {
    let vault = Vault::start(None);
    let (ca, server, admin) = (
        vault.tls("ca.pem"),
        vault.tls("server.pem"),
        vault.tls("admin.pem"),
    );
    // The CA: 10 years; the server and admin certificates: 365 days (not until 4096).
    assert!(valid_in(&ca, 3649) && !valid_in(&ca, 3651), "CA lifetime");
    for cert in [&server, &admin] {
        assert!(
            valid_in(cert, 364) && !valid_in(cert, 366),
            "{} lifetime",
            cert.display()
        );
    }

    let old_server = serial(&fs::read(&server).unwrap());
    let old_admin = (vault.tls("admin.pem"), vault.tls("admin.key"));
    let old_admin_copy = (
        vault.dir().join("old-admin.pem"),
        vault.dir().join("old-admin.key"),
    );
    fs::copy(&old_admin.0, &old_admin_copy.0).unwrap();
    fs::copy(&old_admin.1, &old_admin_copy.1).unwrap();
    assert_eq!(presented_serial(&vault), old_server);

    let store = vault.dir().join("store");
    let out = ok(&ckvault(&["tls", "renew", "--store", p(&store)]));
    assert!(
        out.contains("server.pem") && out.contains("admin.pem"),
        "{out}"
    );
    let new_server = serial(&fs::read(&server).unwrap());
    assert_ne!(new_server, old_server);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", p(&ca), p(&server), p(&admin)])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    for cert in [&server, &admin] {
        assert!(valid_in(cert, 364) && !valid_in(cert, 366));
    }
    // The running server presents the new certificate within the bound.
    let start = Instant::now();
    while presented_serial(&vault) != new_server {
        assert!(
            start.elapsed() < RELOAD_INTERVAL + SLACK,
            "old server certificate still presented:\n{}",
            vault.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "renewed server certificate presented after {:?}",
        start.elapsed()
    );
    let new_admin = Auth::Cert(vault.tls("admin.pem"), vault.tls("admin.key"));
    assert_eq!(vault.get(&new_admin).1, 200);

    // --ca: a new CA; the old admin certificate (old CA) is refused, the new one accepted.
    let old_ca = fs::read(&ca).unwrap();
    ok(&ckvault(&["tls", "renew", "--store", p(&store), "--ca"]));
    assert_ne!(fs::read(&ca).unwrap(), old_ca);
    assert!(valid_in(&ca, 3649) && !valid_in(&ca, 3651));
    let old = Auth::Cert(old_admin_copy.0.clone(), old_admin_copy.1.clone());
    vault.until(
        &old,
        RELOAD_INTERVAL + SLACK,
        "a certificate of the old CA refused",
        |r| r.1 != 200,
    );
    vault.until(
        &new_admin,
        RELOAD_INTERVAL + SLACK,
        "the new admin certificate accepted",
        |r| r.1 == 200,
    );

    // Renewing what the config brings itself is refused.
    let cfg = vault.dir().join("own.toml");
    fs::write(&cfg, "[server]\ncert = \"x.pem\"\nkey = \"x.key\"\n").unwrap();
    let refused = ckvault(&["tls", "renew", "--config", p(&cfg)]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("yours to renew"));
}
