//! A directory `ckvault watch` seals from and a local store it seals into, under a
//! temporary directory of the test's own, with a fresh age recipient: the setup of the
//! watcher suites, and the commands they run on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{Kill, ckvault_bin, p};

/// The watched directory, the store and the recipient.
pub struct Watched {
    /// The test's temporary directory (everything below is in it).
    pub tmp: TempDir,
    /// The watched directory (made).
    pub dir: PathBuf,
    /// The store (`TMP/store`, made by the first watch).
    pub store: PathBuf,
    /// The age identity that opens what is sealed.
    pub identity: PathBuf,
    /// Its recipient.
    pub recipient: String,
}

impl Watched {
    /// A fresh temporary directory with the watched directory `TMP/DIR_NAME` in it.
    pub fn new(dir_name: &str) -> Watched {
        let tmp = tempfile::tempdir().unwrap();
        let (identity, recipient) = super::age_keypair(tmp.path());
        let dir = tmp.path().join(dir_name);
        fs::create_dir(&dir).unwrap();
        let store = tmp.path().join("store");
        Watched {
            tmp,
            dir,
            store,
            identity,
            recipient,
        }
    }

    /// The temporary directory.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `ckvault watch` with `args`, then `--store STORE -r RECIPIENT`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ckvault_bin());
        cmd.arg("watch")
            .args(args)
            .args(["--store", p(&self.store), "-r", &self.recipient]);
        cmd
    }

    /// One sweep of `dir` (`watch --once`), with `--settle SECS` when given: its output.
    pub fn once(&self, dir: &Path, settle: Option<&str>) -> Output {
        let mut args = vec!["--once"];
        if let Some(s) = settle {
            args.extend(["--settle", s]);
        }
        args.extend(["--dir", p(dir)]);
        self.command(&args).output().unwrap()
    }

    /// A live watcher of the watched directory with `--settle SECS`, its stdout and stderr
    /// in `TMP/watch.out` and `TMP/watch.err`; `prefix` runs it inside another command
    /// (e.g. `unshare`). Killed when dropped.
    pub fn spawn(&self, prefix: &[&str], settle: &str) -> Kill {
        let bin = ckvault_bin();
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend([p(&bin), "watch", "--settle", settle, "--dir", p(&self.dir)]);
        argv.extend(["--store", p(&self.store), "-r", &self.recipient]);
        let (program, args) = argv.split_first().unwrap();
        Kill(
            Command::new(program)
                .args(args)
                .stdout(fs::File::create(self.root().join("watch.out")).unwrap())
                .stderr(fs::File::create(self.root().join("watch.err")).unwrap())
                .spawn()
                .unwrap(),
        )
    }

    /// The store's records, as `ckvault ls --format json` lists them.
    pub fn records(&self) -> Vec<Value> {
        let out = super::ok(&super::ckvault(&[
            "ls",
            "--store",
            p(&self.store),
            "--format",
            "json",
        ]));
        serde_json::from_str(&out).unwrap()
    }

    /// Waits up to 30 s for the receipt of the archive `name` in the watched directory.
    pub fn wait_receipt(&self, name: &str) -> PathBuf {
        let receipt = self.dir.join(format!("{name}.ckvault-receipt.json"));
        super::wait_until(
            &format!("the receipt of {name}"),
            Duration::from_secs(30),
            || receipt.exists(),
        );
        receipt
    }
}
