//! The mistakes a new user makes (issue 29 item 5), each made with the real binary and its
//! message read: it must say what happened and what to do next. `fetch` against nothing,
//! with a wrong CA, with a foreign client certificate, and with http:// to the HTTPS server;
//! TOML errors (config, token file, policy) with line, column and the offending line on
//! lines of their own; a missing config said once; `open` with `--config` and the default
//! store; a wrong key for `open` naming the record's recipients; `serve` on a busy port
//! failing before it creates anything; the demo refusing a busy port with the reason.

use crate::support;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{ckvault, free_port, ok, p};

/// Runs `ckvault ARGS` in `dir`.
fn ckvault_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(support::ckvault_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("CKVAULT_CONFIG")
        .env_remove("CKVAULT_STORE")
        .output()
        .expect("run ckvault")
}

/// The stderr of a run that must have failed with status 1; no line break of a message may
/// have been printed as the literal escape `\u{a}`.
fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1: {}\nstderr: {err}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !err.contains(r"\u{a}"),
        "a line break printed escaped:\n{err}"
    );
    err
}

/// `SHA256:` + unpadded base64 of the SHA-256 of an age recipient string (the manifest's
/// fingerprint), computed here independently of ckvault.
fn age_fingerprint(recipient: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(recipient))
    )
}

#[test]
fn toml_errors_show_line_column_and_the_offending_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The config: a value that is not TOML.
    fs::write(
        dir.join("bad.toml"),
        "# node\n[store]\npath = \"s\"\n[server]\nlisten = 127.0.0.1:8443\n",
    )
    .unwrap();
    let err = failed(&ckvault_in(dir, &["ls", "--config", "bad.toml"]));
    let lines: Vec<&str> = err.lines().collect();
    // "ckvault: error: config bad.toml:5:COLUMN: message"
    let column: usize = lines[0]
        .strip_prefix("ckvault: error: config bad.toml:5:")
        .and_then(|rest| rest.split(':').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("file:line:column first:\n{err}"));
    assert!(
        (10..=24).contains(&column),
        "a column within the value:\n{err}"
    );
    assert!(
        lines.contains(&"    5 | listen = 127.0.0.1:8443"),
        "the offending line on a line of its own:\n{err}"
    );
    let caret = lines
        .iter()
        .find(|l| l.trim_end().ends_with('^'))
        .unwrap_or_else(|| panic!("no caret line:\n{err}"));
    let text_at = lines
        .iter()
        .find(|l| l.contains("| listen"))
        .unwrap()
        .find("listen")
        .unwrap();
    assert_eq!(
        caret.find('^').unwrap() - text_at,
        column - 1,
        "the caret points at column {column}:\n{err}"
    );
    assert!(err.contains("fix that line"), "{err}");

    // The config: a key that does not exist.
    fs::write(dir.join("typo.toml"), "[store]\npaht = \"s\"\n").unwrap();
    let err = failed(&ckvault_in(dir, &["ls", "--config", "typo.toml"]));
    assert!(err.contains("typo.toml:2:1: unknown field `paht`"), "{err}");
    assert!(err.contains("    2 | paht = \"s\""), "{err}");
    assert!(err.contains("examples/ckvault.toml"), "{err}");

    // A token file.
    fs::write(
        dir.join("tokens.toml"),
        "[[token]]\nname = \"alice\"\ngroups = [responders]\n",
    )
    .unwrap();
    let err = failed(&ckvault_in(
        dir,
        &["token", "list", "--tokens", "tokens.toml"],
    ));
    assert!(err.contains("token file tokens.toml:3:"), "{err}");
    assert!(err.contains("    3 | groups = [responders]"), "{err}");
    assert!(err.contains("ckvault token add"), "{err}");

    // A policy file, through a command that loads the policy directory.
    let pol = dir.join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(
        pol.join("access.toml"),
        "version = 1\n[[grant]]\nsubjects = [\"group:responders\"\n",
    )
    .unwrap();
    let out = ckvault_in(dir, &["policy", "check", "policies"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("policies/access.toml:3:"), "{shown}");
    assert!(
        shown.contains("  3 | subjects = [\"group:responders\""),
        "{shown}"
    );
    let err = failed(&ckvault_in(
        dir,
        &[
            "retention",
            "plan",
            "--store",
            "store",
            "--policies",
            "policies",
        ],
    ));
    assert!(err.contains("access.toml:3:"), "{err}");
    assert!(err.contains("| subjects = [\"group:responders\""), "{err}");
}

#[test]
fn a_missing_config_is_said_once_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = support::age_keypair(keys.path());
    for args in [
        &["ls", "--config", "nowhere.toml"][..],
        &["serve", "--config", "nowhere.toml"][..],
        &[
            "open",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "--config",
            "nowhere.toml",
            "-i",
            p(&key),
            "-o",
            "o",
        ][..],
    ] {
        let err = failed(&ckvault_in(tmp.path(), args));
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        assert_eq!(err.matches("nowhere.toml").count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("config nowhere.toml does not exist"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "said once, not twice: {err}");
        assert!(err.contains("leave out --config"), "{args:?}: {err}");
    }
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn open_takes_config_and_the_default_store_and_a_wrong_key_names_the_recipients() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    fs::create_dir(&keys).unwrap();
    let (alice, alice_r) = support::age_keypair(&keys);
    let (bob, bob_r) = support::age_keypair(&keys);
    let (mallory, mallory_r) = support::age_keypair(&keys);
    let plain = support::tar_with(&[("notes.txt", b'0', b"incident notes\n")]);
    fs::write(dir.join("notes.tar"), &plain).unwrap();
    // Sealed into the default store, ./ckvault-data.
    let manifest: serde_json::Value = serde_json::from_str(&ok(&ckvault_in(
        dir,
        &["seal", "notes.tar", "-r", &alice_r, "-r", &bob_r],
    )))
    .unwrap();
    let id = manifest["id"].as_str().unwrap().to_owned();
    assert!(dir.join("ckvault-data").is_dir());

    // The default store, as every other record command.
    ok(&ckvault_in(
        dir,
        &["open", &id, "-i", p(&alice), "-o", "a.tar"],
    ));
    assert_eq!(fs::read(dir.join("a.tar")).unwrap(), plain);

    // --config names the store, from anywhere.
    let cfg = dir.join("node.toml");
    fs::write(
        &cfg,
        format!("[store]\npath = \"{}\"\n", p(&dir.join("ckvault-data"))),
    )
    .unwrap();
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    ok(&ckvault_in(
        &elsewhere,
        &[
            "open",
            &id,
            "--config",
            p(&cfg),
            "-i",
            p(&bob),
            "-o",
            "b.tar",
        ],
    ));
    assert_eq!(fs::read(elsewhere.join("b.tar")).unwrap(), plain);

    // A key the record was not sealed to: the message names the record's recipients and
    // the key given, and nothing is written.
    let err = failed(&ckvault_in(
        dir,
        &["open", &id, "-i", p(&mallory), "-o", "m.tar"],
    ));
    assert!(!dir.join("m.tar").exists());
    let line = err.lines().next().unwrap();
    assert!(line.contains(&format!("opens record {id}")), "{err}");
    for r in [&alice_r, &bob_r] {
        assert!(
            line.contains(&format!("x25519 {}", age_fingerprint(r))),
            "the recipient {r} is named:\n{err}"
        );
    }
    assert!(
        line.contains(&format!("holds x25519 {}", age_fingerprint(&mallory_r))),
        "the key given is named:\n{err}"
    );
    assert!(err.contains(&format!("`ckvault show {id}`")), "{err}");
    // The fingerprints are the manifest's.
    let listed: Vec<&str> = manifest["sealed"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    for f in listed {
        assert!(line.contains(f), "{f} in {err}");
    }
}

/// Runs `ckvault serve ARGS` in `dir`, killed after `limit` if still running.
fn serve_briefly(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(support::ckvault_bin())
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env_remove("CKVAULT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ckvault serve");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn serve_on_a_busy_port_fails_before_it_creates_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let out = serve_briefly(tmp.path(), &["--listen", &listen], Duration::from_secs(30));
    let err = failed(&out);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    assert!(err.contains("another process listens there"), "{err}");
    assert!(err.contains("--listen ADDR"), "{err}");
    assert!(err.contains("nothing was created"), "{err}");
    assert!(
        err.contains("Address already in use"),
        "the cause is kept: {err}"
    );
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "serve created {left:?} before failing");
    drop(busy);
}

/// A served vault (generated CA, admin certificate and token) in a fresh directory.
struct Vault {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    server: support::serve::Serve,
}

impl Vault {
    fn start() -> Vault {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let config = dir.join("ckvault.toml");
        fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n",
                p(&dir.join("store"))
            ),
        )
        .unwrap();
        let server = support::serve::Serve::start(&config, &dir.join("server.log"));
        Vault {
            _tmp: tmp,
            dir,
            server,
        }
    }
    fn tls(&self, name: &str) -> String {
        p(&self.dir.join("store/tls").join(name)).to_owned()
    }
    /// `ckvault fetch` of some record with `args` (which name the server and credentials).
    fn fetch(&self, args: &[&str]) -> String {
        let out = self.dir.join(format!("out-{}.age", free_port()));
        let mut all = vec!["fetch", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-o", p(&out)];
        all.extend_from_slice(args);
        let err = failed(&ckvault(&all));
        assert!(!out.exists());
        err
    }
}

#[test]
fn fetch_errors_say_what_happened_and_what_to_do() {
    let vault = Vault::start();
    let port = vault.server.port;
    let base = format!("https://127.0.0.1:{port}");
    let ca = vault.tls("ca.pem");
    let token = vault.tls("admin.token");
    // The right CA and token reach the server: it answers (no such record).
    let err = vault.fetch(&["--server", &base, "--cacert", &ca, "--token-file", &token]);
    assert!(err.contains("404"), "the server was reached: {err}");

    // Nothing listens there.
    let nowhere = free_port();
    let err = vault.fetch(&[
        "--server",
        &format!("https://127.0.0.1:{nowhere}"),
        "--cacert",
        &ca,
        "--token-file",
        &token,
    ]);
    assert!(
        err.contains(&format!(
            "connection refused: nothing listens on 127.0.0.1:{nowhere}"
        )),
        "{err}"
    );
    assert!(err.contains("start `ckvault serve` there"), "{err}");
    assert!(
        err.contains("Connection refused (os error 111)"),
        "cause kept: {err}"
    );

    // A CA that did not sign the server's certificate.
    let other = vault.dir.join("other");
    fs::create_dir(&other).unwrap();
    let (other_ca, _, _) = support::pki::loopback_server(&other);
    let err = vault.fetch(&[
        "--server",
        &base,
        "--cacert",
        p(&other_ca),
        "--token-file",
        &token,
    ]);
    assert!(
        err.contains(&format!(
            "the server's certificate is not signed by the CA in --cacert {}",
            p(&other_ca)
        )),
        "{err}"
    );
    assert!(
        err.contains("pass --cacert the CA certificate of this server"),
        "{err}"
    );
    assert!(err.contains("ckvault-data/tls/ca.pem"), "{err}");
    assert!(
        err.contains("invalid peer certificate"),
        "cause kept: {err}"
    );

    // A client certificate from another CA.
    let foreign_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ckvault CA");
    let issuer = rcgen::Issuer::new(params, foreign_ca_key);
    let (cert, key) =
        support::pki::client_cert(&issuer, &other, "admin", Some("ckvault:admins"), None);
    let err = vault.fetch(&[
        "--server",
        &base,
        "--cacert",
        &ca,
        "--cert",
        p(&cert),
        "--key",
        p(&key),
    ]);
    assert!(
        err.contains(&format!(
            "the server refused the client certificate --cert {}",
            p(&cert)
        )),
        "{err}"
    );
    assert!(
        err.contains("issued by the CA the server trusts for clients"),
        "{err}"
    );
    assert!(err.contains("--token-file"), "{err}");
    assert!(err.contains("alert"), "cause kept: {err}");

    // http:// to the HTTPS server (no credentials: those are refused over http:// anyway).
    let err = vault.fetch(&[
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--cacert",
        &ca,
    ]);
    assert!(
        err.contains("did not answer in plain HTTP: it speaks HTTPS"),
        "{err}"
    );
    assert!(err.contains("use https:// in --server"), "{err}");
}

#[test]
fn the_demo_refuses_a_busy_port_with_the_reason_before_doing_anything() {
    if !nix_root() {
        support::cannot_run(support::REQUIRE_ENV, "scripts/demo.sh needs root");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let demo = |port: &str| {
        // Should the check not stop it, the demo must not go on to install and build for
        // long: no install, no Rust toolchain on PATH or in HOME, so the set-up stops it.
        Command::new("bash")
            .arg(repo.join("scripts/demo.sh"))
            .env("CKVAULT_NO_INSTALL", "1")
            .env("HOME", home.path())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CKVAULT_DEMO_PORT", port)
            .env("CKVAULT_STORE", work.path().join("store"))
            .env("CKVAULT_DEMO_DIR", work.path().join("demo"))
            .env("CKVAULT_BIN_DIR", work.path().join("bin"))
            .output()
            .expect("run scripts/demo.sh")
    };
    let out = demo(&port);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is busy")),
        "{err}"
    );
    assert!(err.contains("CKVAULT_DEMO_PORT="), "{err}");
    let out = demo("http");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("CKVAULT_DEMO_PORT must be a TCP port number"),
        "{out:?}"
    );
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        0,
        "the demo made nothing before refusing"
    );
    drop(busy);
}

fn nix_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
