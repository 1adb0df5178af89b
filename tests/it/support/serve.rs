//! A `ckvault serve` process for the tests that talk to the server: started on a free
//! port (the config says `listen = "127.0.0.1:0"`), its port read from the first stdout
//! line, killed and reaped when dropped.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `ckvault serve`.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// The HTTPS port on 127.0.0.1.
    pub port: u16,
}

impl Serve {
    /// Starts `ckvault serve --config CONFIG` with stderr in `log`; panics with the log
    /// when the server does not announce its port within 60 s.
    pub fn start(config: &Path, log: &Path) -> Serve {
        let stderr = fs::File::create(log).expect("create server log");
        let mut child = Command::new(super::ckvault_bin())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ckvault serve");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {} // keep draining: the server prints more lines
        });
        let first = rx.recv_timeout(Duration::from_secs(60));
        let port = first.as_deref().ok().and_then(|line| {
            let rest = line.strip_prefix("ckvault: serving https://127.0.0.1:")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        match port {
            Some(port) => Serve { child, port },
            None => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "ckvault serve did not announce its port (first line {first:?}, {status:?}); stderr:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    /// Sends signal `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child process, which we have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -sS --max-time SECS -w "\n%{http_code}" --cacert TLS/ca.pem`: a request to a
/// server whose generated CA is in `tls`; the caller adds the credentials, its arguments
/// and the URL, and reads the output with [`answer`] or [`json_answer`].
pub fn curl(tls: &Path, max_time: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time.to_string()])
        .args(["-w", "\n%{http_code}", "--cacert"])
        .arg(tls.join("ca.pem"));
    cmd
}

/// [`curl`] with the generated admin certificate (mTLS).
pub fn admin_curl(tls: &Path, max_time: u32) -> Command {
    let mut cmd = curl(tls, max_time);
    cmd.arg("--cert")
        .arg(tls.join("admin.pem"))
        .arg("--key")
        .arg(tls.join("admin.key"));
    cmd
}

/// curl's output under `-w "\n%{http_code}"` as (status, body); status 0 when there is
/// none (curl could not connect).
pub fn answer(mut stdout: Vec<u8>) -> (u16, Vec<u8>) {
    let cut = stdout.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(stdout.get(cut..).unwrap_or_default())
        .trim()
        .parse()
        .unwrap_or(0);
    stdout.truncate(cut);
    (status, stdout)
}

/// [`answer`] with the body as JSON, or as a JSON string of its text when it is not JSON.
pub fn json_answer(stdout: Vec<u8>) -> (u16, serde_json::Value) {
    let (status, body) = answer(stdout);
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, body)
}

/// The access policy of the alerting tests: admins may do everything everywhere, the
/// group `alerting` (the alert senders) may ask for checkpoints in `shop`.
pub const ALERTING_POLICY: &str = r#"version = 1
[[grant]]
subjects = ["group:ckvault:admins"]
namespaces = ["*"]
actions = ["list", "read-manifest", "download", "delete", "hold", "read-audit", "checkpoint"]
[[grant]]
subjects = ["group:alerting"]
namespaces = ["shop"]
actions = ["checkpoint"]
"#;

/// Writes [`ALERTING_POLICY`] as `dir/policies/access.toml` and adds the alert sender's
/// bearer token (user `alertmanager`, group `alerting`) to `dir/tokens.toml`; the token.
pub fn alerting_policy_and_token(dir: &Path) -> String {
    fs::create_dir_all(dir.join("policies")).unwrap();
    fs::write(dir.join("policies/access.toml"), ALERTING_POLICY).unwrap();
    super::ok(&super::ckvault(&[
        "token",
        "add",
        "alertmanager",
        "--group",
        "alerting",
        "--tokens",
        super::p(&dir.join("tokens.toml")),
    ]))
    .trim()
    .to_owned()
}
