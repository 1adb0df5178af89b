//! A log line never carries a token, a key or memory bytes (issue 28 item 4), with the log
//! as a pipeline gets it (`--log-format json`, every ckvault event down to debug):
//!
//! - a server answering requests with the admin bearer token, with a wrong token, and a
//!   download of a record, logs JSON lines whose `request` span names the request ID, the
//!   caller and the record, and none of the tokens;
//! - `ckvault seal` of an archive whose memory holds a marker and `ckvault open` of its
//!   record with an age identity write neither the marker, nor the identity, nor the store's
//!   signing key, to their logs or the server's.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{age_keypair, ok, p, tar_with};

/// What the test's processes are told about logging.
const FILTER: &str = "ckvault=trace,info";

/// A marker standing for process memory (a secret in a heap page).
const MARKER: &str = "LOGHYGIENE-MEMORY-MARKER-7f3a9c";

/// A bearer token no one holds: sent, refused, never logged.
const WRONG_TOKEN: &str = "ckv-wrong-token-LOGHYGIENE-0c1d2e3f4a5b";

fn ckvault_logged(args: &[&str]) -> std::process::Output {
    Command::new(support::ckvault_bin())
        .args(["--log-format", "json"])
        .args(args)
        .env("CKVAULT_LOG", FILTER)
        .output()
        .expect("run ckvault")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ckvault --log-format json serve --config CONFIG`, stderr into `log`; its port.
fn serve(config: &Path, log: &Path) -> (Server, u16) {
    let mut child = Command::new(support::ckvault_bin())
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("CKVAULT_LOG", FILTER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log).expect("create server log"))
        .spawn()
        .expect("spawn ckvault serve");
    let stdout = child.stdout.take().expect("stdout pipe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    let server = Server(child);
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let port = first
        .strip_prefix("ckvault: serving https://127.0.0.1:")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no port announced ({first:?}); log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            )
        });
    (server, port)
}

/// `curl` GET of `path` with `token`: the HTTP status.
fn get(ca: &Path, port: u16, token: &str, path: &str, out: &Path) -> u16 {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The lines of a PEM file's body (the key material), without its armour.
fn pem_body(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[test]
fn logs_carry_no_token_key_or_memory_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let config = dir.join("ckvault.toml");
    fs::write(
        &config,
        format!(
            "[store]\npath = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n",
            p(&store)
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let (server, port) = serve(&config, &log);
    let ca = store.join("tls").join("ca.pem");
    let admin = fs::read_to_string(store.join("tls").join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(admin.len() >= 16, "admin token {admin:?}");

    // Seal an archive whose "memory" holds the marker into the server's store.
    let (identity, recipient) = age_keypair(dir);
    let archive = dir.join("checkpoint.tar");
    let page = MARKER.repeat(64);
    fs::write(
        &archive,
        tar_with(&[
            ("inventory.img", b'0', b"\0"),
            ("pages-1.img", b'0', page.as_bytes()),
        ]),
    )
    .unwrap();
    let sealed = ckvault_logged(&[
        "seal",
        p(&archive),
        "--store",
        p(&store),
        "--recipient",
        &recipient,
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&ok(&sealed)).expect("seal prints its manifest");
    let id = manifest["id"].as_str().expect("record id").to_owned();

    // Requests: a listing and a download with the admin token, a listing with a wrong one.
    let body = dir.join("body");
    assert_eq!(get(&ca, port, &admin, "/v1/checkpoints", &body), 200);
    let archive_path = format!("/v1/checkpoints/{id}/archive");
    assert_eq!(get(&ca, port, &admin, &archive_path, &body), 200);
    assert_eq!(get(&ca, port, WRONG_TOKEN, "/v1/checkpoints", &body), 401);

    // Open the record with the age identity (the marker is in what it decrypts).
    let opened = dir.join("opened.tar");
    let open = ckvault_logged(&[
        "open",
        &id,
        "--store",
        p(&store),
        "-i",
        p(&identity),
        "-o",
        p(&opened),
    ]);
    ok(&open);
    assert!(support::contains(
        &fs::read(&opened).unwrap(),
        MARKER.as_bytes()
    ));

    // Let the download's end event be written, then stop the server.
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let server_log = fs::read_to_string(&log).unwrap();

    // The server's log is JSON lines, and the download's carries the request's span.
    let lines: Vec<serde_json::Value> = server_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let download = lines
        .iter()
        .filter_map(|l| l["spans"].as_array())
        .flatten()
        .find(|s| s["name"] == "request" && s["record"] == id.as_str())
        .unwrap_or_else(|| panic!("no request span naming {id}:\n{server_log}"));
    assert!(
        download["request"].as_str().is_some_and(|r| r.len() == 26),
        "request ID: {download}"
    );
    assert!(
        download["caller"].as_str().is_some_and(|c| !c.is_empty()),
        "caller: {download}"
    );

    // Nothing secret anywhere.
    let identity_text = fs::read_to_string(&identity).unwrap();
    let age_secret = identity_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("an age secret key")
        .to_owned();
    let mut secrets = vec![
        ("the admin token", admin.clone()),
        ("the wrong token", WRONG_TOKEN.to_owned()),
        ("the age identity", age_secret.clone()),
        ("the memory marker", MARKER.to_owned()),
    ];
    // The private keys: the store's signing key, and the TLS keys the server made.
    let mut keys = vec![store.join("keys").join("signing.key")];
    for entry in fs::read_dir(store.join("tls")).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".key") {
            keys.push(path);
        }
    }
    assert!(keys.len() >= 2, "keys: {keys:?}");
    for key in &keys {
        for line in pem_body(key).into_iter().take(1) {
            secrets.push(("a private key", line));
        }
    }
    for (what, text) in [
        ("server log", server_log.as_str()),
        ("seal's log", &String::from_utf8_lossy(&sealed.stderr)),
        ("open's log", &String::from_utf8_lossy(&open.stderr)),
    ] {
        for (secret, value) in &secrets {
            assert!(
                !text.contains(value.as_str()),
                "{what} carries {secret}:\n{text}"
            );
        }
    }
}
