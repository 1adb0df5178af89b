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
