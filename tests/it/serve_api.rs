//! End-to-end tests of `ckvault serve` with real parts: a real server process speaking TLS
//! on loopback, curl (OpenSSL) as an independent client, `ckvault fetch`, a REAL CRIU
//! checkpoint sealed with the CLI, client certificates issued with the generated CA key
//! (and with a CA of our own, and expired ones), and the audit log read back and verified
//! with `ckvault audit verify/show` after each scenario.
//!
//! Every test builds its own vault (see [`setup`]): a temp dir with a store holding the real
//! checkpoint (namespace `forensics`) and a small tar (namespace `team-b`), both sealed to a
//! fresh age identity; an access policy; a config with no certificates, so the server
//! generates its CA, server and admin credentials under `<store>/tls/`; a bearer token for
//! alice added with `ckvault token add` and loaded by SIGHUP.

use crate::support;

use support::{ckvault, ok, p};

use support::{contains, tar_with};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn seal(archive: &Path, store: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["seal", p(archive), "--store", p(store)];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&ckvault(&args))).expect("seal prints manifest JSON")
}

use support::pki::{client_cert, issuer_from_pem};
use support::serve::Serve as Server;

/// How a request authenticates.
enum Auth<'a> {
    Anonymous,
    Admin,
    Cert(&'a Path, &'a Path),
    Token(&'a str),
}

/// What curl got.
struct Resp {
    exit: i32,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stderr: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn describe(&self) -> String {
        let body = if self.body.len() > 600 {
            format!("<{} bytes>", self.body.len())
        } else {
            self.text()
        };
        format!(
            "curl exit {}, HTTP {}, headers {:?}, body {body}, stderr {}",
            self.exit, self.status, self.headers, self.stderr
        )
    }
}

/// One test's vault: store, policy, config, running server, credentials.
struct Vault {
    // Declared first so the server is stopped before the temp dir goes.
    server: Server,
    tmp: tempfile::TempDir,
    store: PathBuf,
    identity: PathBuf,
    archive: PathBuf,
    real: Value,
    small: Value,
    alice_token: String,
}

const ACCESS_TOML: &str = r#"version = 1

[[grant]]
subjects = ["group:responders"]
namespaces = ["forensics"]
actions = ["list", "read-manifest", "download", "hold"]

[[grant]]
subjects = ["group:ckvault:admins"]
namespaces = ["*"]
actions = ["list", "read-manifest", "download", "delete", "hold", "read-audit", "checkpoint"]

[[grant]]
subjects = ["user:auditor"]
namespaces = ["*"]
actions = ["read-audit", "list"]
"#;

/// What every vault starts from: a store holding the real checkpoint (`forensics`) and a
/// small tar (`team-b`), sealed once per test binary with the CLI (sealing 16 MiB takes
/// seconds in a debug build) and copied into each test's own directory.
struct Template {
    store: PathBuf,
    identity: PathBuf,
    archive: PathBuf,
    real: Value,
    small: Value,
}

static TEMPLATE: OnceLock<Option<Template>> = OnceLock::new();

fn template() -> Option<&'static Template> {
    let mut made_here = false;
    let template = TEMPLATE
        .get_or_init(|| {
            made_here = true;
            make_template()
        })
        .as_ref();
    // The test that tried to make it said why it could not; the later ones say so too.
    if template.is_none() && !made_here {
        support::cannot_run(
            support::REQUIRE_ENV,
            "no template: the real checkpoint it is sealed from could not be made",
        );
    }
    template
}

fn make_template() -> Option<Template> {
    let archive = support::real_checkpoint(16, "forensics", "web-7d4", "app", "none")?;
    // Under the target dir, one per test process; those of finished processes are removed.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = "serve_api-template-";
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<i32>().ok());
        // SAFETY: kill(pid, 0) only asks whether the process exists.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (identity, recipient) = support::age_keypair(&dir);
    let store = dir.join("store");

    let real = seal(&archive, &store, &["-r", &recipient]);
    assert_eq!(real["namespace"], "forensics", "{real:#}");
    assert_eq!(real["inspection"]["status"], "ok", "{real:#}");
    let small_tar = dir.join("notes.tar");
    fs::write(
        &small_tar,
        tar_with(&[("notes.txt", b'0', b"incident notes, not a checkpoint\n")]),
    )
    .unwrap();
    let small = seal(
        &small_tar,
        &store,
        &["-r", &recipient, "--namespace", "team-b"],
    );
    assert_eq!(small["namespace"], "team-b", "{small:#}");
    Some(Template {
        store,
        identity,
        archive,
        real,
        small,
    })
}

/// Copies a directory tree (files keep their permissions; directories are made 0700).
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if ty.is_file() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Builds a vault (a copy of the [`Template`] store, a policy, a config) and starts its
/// server; `None` (after a loud notice) where this machine cannot make a real checkpoint.
fn setup() -> Option<Vault> {
    let t = template()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = dir.join("store");
    copy_tree(&t.store, &store);
    let identity = dir.join("identity.txt");
    fs::copy(&t.identity, &identity).unwrap();
    let (archive, real, small) = (t.archive.clone(), t.real.clone(), t.small.clone());

    let policies = dir.join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(policies.join("access.toml"), ACCESS_TOML).unwrap();
    let config = dir.join("ckvault.toml");
    for path in [&store, &policies] {
        assert!(!p(path).contains(['"', '\\']), "odd temp path {path:?}");
    }
    fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n[policy]\ndir = \"{}\"\n",
            p(&store),
            p(&policies)
        ),
    )
    .unwrap();

    let server = Server::start(&config, &dir.join("server.log"));
    let mut vault = Vault {
        server,
        tmp,
        store,
        identity,
        archive,
        real,
        small,
        alice_token: String::new(),
    };
    for name in ["ca.pem", "ca.key", "admin.pem", "admin.key", "admin.token"] {
        assert!(
            vault.tls(name).is_file(),
            "server did not generate tls/{name}"
        );
    }
    // A served request proves the accept loop (and so the SIGHUP handler) is running.
    let health = vault.curl(&Auth::Anonymous, "/healthz", &[]);
    assert_eq!(health.status, 200, "{}", health.describe());

    let tokens = vault.tls("tokens.toml");
    let token = ok(&ckvault(&[
        "token",
        "add",
        "alice",
        "--group",
        "responders",
        "--tokens",
        p(&tokens),
    ]))
    .trim()
    .to_owned();
    assert!(token.starts_with("ckv_"), "{token:?}");
    assert!(
        !fs::read_to_string(&tokens).unwrap().contains(&token),
        "the token file must hold only hashes"
    );
    vault.server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = vault.curl(&Auth::Token(&token), "/v1/checkpoints", &[]);
        if r.status == 200 {
            break;
        }
        assert!(
            r.status == 401 && Instant::now() < deadline,
            "alice's token was not loaded after SIGHUP: {}",
            r.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    vault.alice_token = token;
    Some(vault)
}

impl Vault {
    fn dir(&self) -> &Path {
        self.tmp.path()
    }
    fn tls(&self, name: &str) -> PathBuf {
        self.store.join("tls").join(name)
    }
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.port)
    }
    fn real_id(&self) -> String {
        self.real["id"].as_str().unwrap().to_owned()
    }
    fn small_id(&self) -> String {
        self.small["id"].as_str().unwrap().to_owned()
    }
    fn blob(&self, id: &str) -> Vec<u8> {
        fs::read(self.store.join("records").join(format!("{id}.age"))).unwrap()
    }

    /// `curl` PATH (relative to the server) with `auth` and extra arguments.
    fn curl(&self, auth: &Auth<'_>, path: &str, extra: &[&str]) -> Resp {
        let headers = tempfile::NamedTempFile::new_in(self.dir()).unwrap();
        let ca = self.tls("ca.pem");
        let (admin_pem, admin_key) = (self.tls("admin.pem"), self.tls("admin.key"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--path-as-is", "--max-time", "30", "--cacert"])
            .arg(&ca)
            .arg("-D")
            .arg(headers.path())
            .args(["-o", "-"]);
        let bearer;
        match auth {
            Auth::Anonymous => {}
            Auth::Admin => {
                cmd.arg("--cert")
                    .arg(&admin_pem)
                    .arg("--key")
                    .arg(&admin_key);
            }
            Auth::Cert(cert, key) => {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
            Auth::Token(t) => {
                bearer = format!("Authorization: Bearer {t}");
                cmd.arg("-H").arg(&bearer);
            }
        }
        cmd.args(extra).arg(format!("{}{path}", self.base()));
        let out = cmd.output().expect("run curl");
        let head = fs::read_to_string(headers.path()).unwrap_or_default();
        let mut status = 0;
        let mut fields = Vec::new();
        for line in head.lines() {
            let line = line.trim_end();
            if line.starts_with("HTTP/") {
                // Keep the last response only (there is no redirect or 100 here anyway).
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                fields.clear();
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        Resp {
            exit: out.status.code().unwrap_or(-1),
            status,
            headers: fields,
            body: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The audit log's events, read straight from the file.
    fn audit_lines(&self) -> Vec<Value> {
        fs::read_to_string(self.store.join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The audit log's events as `ckvault audit show --format json` prints them.
    fn audit_show(&self) -> Vec<Value> {
        support::audit_events(&self.store)
    }

    /// `ckvault audit verify --store` must pass.
    fn audit_verify(&self) {
        let out = ok(&ckvault(&["audit", "verify", "--store", p(&self.store)]));
        assert!(out.starts_with("OK audit log"), "{out}");
    }

    /// Issues a client certificate with the server's generated CA (tls/ca.pem + tls/ca.key).
    fn issue(
        &self,
        cn: &str,
        org: Option<&str>,
        validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> (PathBuf, PathBuf) {
        let ca_pem = fs::read_to_string(self.tls("ca.pem")).unwrap();
        let ca_key = fs::read_to_string(self.tls("ca.key")).unwrap();
        let key = rcgen::KeyPair::from_pem(&ca_key).expect("tls/ca.key is a PEM key");
        client_cert(
            &issuer_from_pem(&ca_pem, key),
            self.dir(),
            cn,
            org,
            validity,
        )
    }

    /// Issues a client certificate from a CA of our own that the server does not trust
    /// (with the same subject name as the server's CA, to make it a close forgery).
    fn issue_foreign(&self, cn: &str, org: Option<&str>) -> (PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "ckvault local CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        fs::write(self.dir().join("foreign-ca.pem"), ca_cert.pem()).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        client_cert(&issuer, self.dir(), cn, org, None)
    }
}

/// Events matching all `(field, value)` pairs (string values).
fn matching<'a>(events: &'a [Value], want: &[(&str, &str)]) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| want.iter().all(|(k, v)| e[*k].as_str() == Some(*v)))
        .collect()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

#[test]
fn curl_with_admin_certificate_downloads_a_real_checkpoint_and_everything_is_audited() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let sealed_sha = v.real["sealed"]["sha256"].as_str().unwrap().to_owned();
    let sealed_size = v.real["sealed"]["size"].as_u64().unwrap();

    // The manifest, over mTLS with the generated admin certificate.
    let r = v.curl(&Auth::Admin, &format!("/v1/checkpoints/{id}"), &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json(), v.real, "the served manifest is the sealed one");
    assert_eq!(r.header("ckvault-legal-hold"), Some("false"));

    // The archive.
    let r = v.curl(
        &Auth::Admin,
        &format!("/v1/checkpoints/{id}/archive?purpose=case-42"),
        &[],
    );
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.describe());
    assert_eq!(r.body.len() as u64, sealed_size);
    assert_eq!(sha256_hex(&r.body), sealed_sha);
    assert!(
        r.body == v.blob(&id),
        "downloaded bytes differ from the stored blob"
    );
    assert!(r.body.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !contains(&r.body, support::MARKER.as_bytes()),
        "the container's memory must not travel in plaintext"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sealed_sha).unwrap());
    assert_eq!(
        r.header("repr-digest"),
        Some(format!("sha-256=:{b64}:").as_str())
    );
    assert_eq!(
        r.header("etag"),
        Some(format!("\"sha256-{sealed_sha}\"").as_str())
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        r.header("content-length"),
        Some(sealed_size.to_string().as_str())
    );

    // alice (CN=alice, O=responders, issued with the generated CA key) may download
    // forensics records, but not team-b's, whose records she is not even told exist (404).
    let (cert, key) = v.issue("alice", Some("responders"), None);
    let alice = Auth::Cert(&cert, &key);
    let small = v.small_id();
    let r = v.curl(
        &alice,
        &format!("/v1/checkpoints/{small}/archive?purpose=curiosity"),
        &[],
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.json()["error"], "not-found");
    assert!(!contains(&r.body, b"age-encryption.org"), "{}", r.text());
    let r = v.curl(&alice, &format!("/v1/checkpoints/{small}"), &[]);
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = v.curl(&alice, &format!("/v1/checkpoints/{id}/archive"), &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256_hex(&r.body), sealed_sha);

    // The audit log verifies and tells the story.
    v.audit_verify();
    let events = v.audit_show();
    let admin_dl = matching(
        &events,
        &[
            ("action", "download"),
            ("outcome", "ok"),
            ("actor", "user:admin"),
            ("record", &id),
        ],
    );
    assert_eq!(admin_dl.len(), 1, "{events:#?}");
    let e = admin_dl[0];
    assert_eq!(e["purpose"], "case-42");
    assert_eq!(e["namespace"], "forensics");
    assert_eq!(e["bytes"], sealed_size);
    assert_eq!(e["groups"], serde_json::json!(["ckvault:admins"]));
    assert!(
        e["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{e}"
    );
    let denied = matching(
        &events,
        &[
            ("action", "download"),
            ("outcome", "denied"),
            ("actor", "user:alice"),
        ],
    );
    assert_eq!(denied.len(), 1, "{events:#?}");
    assert_eq!(denied[0]["record"], small.as_str());
    assert_eq!(denied[0]["namespace"], "team-b");
    assert_eq!(
        denied[0]["purpose"],
        Value::Null,
        "a refused download has no purpose"
    );
    assert_eq!(denied[0]["groups"], serde_json::json!(["responders"]));
    assert_eq!(
        matching(
            &events,
            &[
                ("action", "read-manifest"),
                ("outcome", "denied"),
                ("actor", "user:alice")
            ]
        )
        .len(),
        1
    );
    assert_eq!(
        matching(
            &events,
            &[
                ("action", "download"),
                ("outcome", "ok"),
                ("actor", "user:alice"),
                ("record", &id)
            ]
        )
        .len(),
        1
    );
    // The seals by the CLI are in the same log, before the server's events.
    assert_eq!(
        matching(&events, &[("action", "seal"), ("outcome", "ok")]).len(),
        2
    );
}

#[test]
fn authentication_matrix_refuses_strangers_and_audits_every_http_refusal() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let last = |v: &Vault| v.audit_lines().last().cloned().unwrap();

    // No certificate, no token. (Each refusal comes from an address of its own: the first
    // failure from an address in an interval is audited at once, the rest folded into a
    // count, see serve_hostile::an_unauthenticated_flood_grows_the_audit_log_by_a_bounded_amount.)
    let n = v.audit_lines().len();
    let r = v.curl(
        &Auth::Anonymous,
        "/v1/checkpoints",
        &["--interface", "127.0.0.11"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{}",
        r.describe()
    );
    assert_eq!(r.json()["error"], "unauthenticated");
    assert_eq!(v.audit_lines().len(), n + 1);
    let e = last(&v);
    assert_eq!(
        (
            e["actor"].as_str(),
            e["action"].as_str(),
            e["outcome"].as_str()
        ),
        (Some("anonymous"), Some("authenticate"), Some("denied")),
        "{e}"
    );
    assert!(
        e["detail"].as_str().unwrap().starts_with("no credentials"),
        "{e}"
    );

    // No credentials on the archive itself: nothing of the blob comes back.
    let r = v.curl(
        &Auth::Anonymous,
        &format!("/v1/checkpoints/{id}/archive"),
        &["--interface", "127.0.0.12"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert!(!contains(&r.body, b"age-encryption.org"));
    assert_eq!(v.audit_lines().len(), n + 2);
    assert!(last(&v)["detail"].as_str().unwrap().contains(&id));

    // A wrong token, and a scheme that is not Bearer.
    let r = v.curl(
        &Auth::Token("ckv_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        "/v1/checkpoints",
        &["--interface", "127.0.0.13"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(v.audit_lines().len(), n + 3);
    let e = last(&v);
    assert_eq!(e["outcome"], "denied");
    assert!(
        e["detail"].as_str().unwrap().starts_with("invalid token"),
        "{e}"
    );
    let basic = format!("Authorization: Basic {}", v.alice_token);
    let r = v.curl(
        &Auth::Anonymous,
        "/v1/checkpoints",
        &["-H", &basic, "--interface", "127.0.0.14"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(v.audit_lines().len(), n + 4);
    assert_eq!(last(&v)["outcome"], "denied");

    // A certificate from another CA (same CA name, different key), claiming admin.
    let n = v.audit_lines().len();
    let (cert, key) = v.issue_foreign("intruder", Some("ckvault:admins"));
    let r = v.curl(&Auth::Cert(&cert, &key), "/v1/checkpoints", &[]);
    assert!(
        r.exit != 0 && r.status == 0 && r.body.is_empty(),
        "a foreign certificate must fail the handshake: {}",
        r.describe()
    );
    let r = v.curl(
        &Auth::Cert(&cert, &key),
        &format!("/v1/checkpoints/{id}/archive"),
        &[],
    );
    assert!(r.exit != 0 && r.body.is_empty(), "{}", r.describe());

    // An expired certificate from the right CA, claiming admin.
    let (cert, key) = v.issue(
        "mallory",
        Some("ckvault:admins"),
        Some((
            rcgen::date_time_ymd(2020, 1, 1),
            rcgen::date_time_ymd(2021, 1, 1),
        )),
    );
    let r = v.curl(
        &Auth::Cert(&cert, &key),
        &format!("/v1/checkpoints/{id}/archive"),
        &[],
    );
    assert!(
        r.exit != 0 && r.status == 0 && r.body.is_empty(),
        "an expired certificate must fail the handshake: {}",
        r.describe()
    );
    // Refused before HTTP: nothing to audit, and above all nothing done in their name.
    let events = v.audit_lines();
    assert_eq!(events.len(), n, "{:#?}", &events[n..]);
    for who in ["user:intruder", "user:mallory"] {
        assert!(matching(&events, &[("actor", who)]).is_empty());
    }
    // The same certificate, freshly valid, is accepted: the refusal was the expiry.
    let (cert, key) = v.issue("mallory", Some("responders"), None);
    let r = v.curl(&Auth::Cert(&cert, &key), "/v1/checkpoints", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());

    // alice's bearer token: lists only forensics, downloads forensics, nothing of team-b.
    let alice = Auth::Token(&v.alice_token);
    let r = v.curl(&alice, "/v1/checkpoints", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["namespace"], "forensics");
    let r = v.curl(&alice, "/v1/checkpoints?namespace=team-b", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"], serde_json::json!([]));
    let r = v.curl(&Auth::Admin, "/v1/checkpoints", &[]);
    assert_eq!(
        r.json()["items"].as_array().unwrap().len(),
        2,
        "admin sees both"
    );
    let r = v.curl(
        &alice,
        &format!("/v1/checkpoints/{id}/archive?purpose=triage"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        sha256_hex(&r.body),
        v.real["sealed"]["sha256"].as_str().unwrap()
    );
    let r = v.curl(&alice, &format!("/v1/checkpoints/{}", v.small_id()), &[]);
    assert_eq!(r.status, 404, "{}", r.describe());
    // alice may not read the audit log (the auditor grant is user:auditor only): 403, and
    // the refusal is audited as one.
    let r = v.curl(&alice, "/v1/audit", &[]);
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.json()["error"], "forbidden");
    let e = v.audit_lines().last().cloned().unwrap();
    assert_eq!(
        (
            e["actor"].as_str(),
            e["action"].as_str(),
            e["outcome"].as_str()
        ),
        (Some("user:alice"), Some("read-audit"), Some("denied")),
        "{e}"
    );
    // The auditor (certificate CN=auditor, no group) reads the audit log but no archive.
    let (cert, key) = v.issue("auditor", None, None);
    let auditor = Auth::Cert(&cert, &key);
    let r = v.curl(&auditor, &format!("/v1/audit?record={id}"), &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = r.json()["items"].as_array().unwrap().clone();
    assert!(
        seen.iter()
            .any(|e| e["action"] == "download" && e["actor"] == "user:alice"),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|e| e["record"] == id.as_str()));
    let r = v.curl(&auditor, &format!("/v1/checkpoints/{id}/archive"), &[]);
    assert_eq!(r.status, 403, "{}", r.describe());

    v.audit_verify();
    let events = v.audit_show();
    let tok_dl = matching(
        &events,
        &[
            ("action", "download"),
            ("outcome", "ok"),
            ("actor", "user:alice"),
        ],
    );
    assert_eq!(tok_dl.len(), 1, "{events:#?}");
    assert_eq!(tok_dl[0]["purpose"], "triage");
    assert_eq!(tok_dl[0]["groups"], serde_json::json!(["responders"]));
    assert_eq!(
        matching(
            &events,
            &[
                ("action", "read-manifest"),
                ("outcome", "denied"),
                ("actor", "user:alice"),
                ("record", &v.small_id()),
            ]
        )
        .len(),
        1
    );
    // At least the four refusals above (setup's SIGHUP polling may add more).
    assert!(
        matching(
            &events,
            &[("action", "authenticate"), ("outcome", "denied")]
        )
        .len()
            >= 4
    );
}

#[test]
fn malformed_and_hostile_ids_are_refused_and_audited() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let blob = v.blob(&id);
    let long = "A".repeat(5000);
    let lower = id.to_lowercase();
    let cases: Vec<(&str, String)> = vec![
        ("GET", "/v1/checkpoints/..%2F..%2Fetc/archive".into()),
        ("GET", "/v1/checkpoints/..%2F..%2Fetc%2Fpasswd".into()),
        (
            "GET",
            format!("/v1/checkpoints/..%2Frecords%2F{id}/archive"),
        ),
        ("GET", "/v1/checkpoints/a/b".into()),
        ("GET", "/v1/checkpoints/a/b/archive".into()),
        ("GET", "/v1/checkpoints/../../keys/signing.key".into()),
        ("GET", "/v1/checkpoints/%00/archive".into()),
        ("GET", format!("/v1/checkpoints/{id}%00/archive")),
        ("GET", format!("/v1/checkpoints/{long}/archive")),
        ("GET", format!("/v1/checkpoints/{long}")),
        ("GET", format!("/v1/checkpoints/{lower}/archive")),
        ("GET", format!("/v1/checkpoints/{lower}")),
        ("GET", format!("/v1/checkpoints/{id}.age/archive")),
        // Well formed, but no such record.
        (
            "GET",
            "/v1/checkpoints/01ARZ3NDEKTSV4RRFFQ69G5FAV/archive".into(),
        ),
        ("DELETE", "/v1/checkpoints/..%2F..%2Fetc".into()),
        ("DELETE", format!("/v1/checkpoints/{lower}")),
        ("PUT", "/v1/checkpoints/%00/hold?reason=x".into()),
        ("DELETE", format!("/v1/checkpoints/{lower}/hold?reason=x")),
    ];
    for (method, path) in &cases {
        let before = v.audit_lines();
        let r = v.curl(&Auth::Admin, path, &["-X", method]);
        let shown: String = path.chars().take(80).collect();
        assert_eq!(r.exit, 0, "{method} {shown}: {}", r.describe());
        assert!(
            r.status == 400 || r.status == 404,
            "{method} {shown}: expected 400 or 404: {}",
            r.describe()
        );
        assert!(
            !contains(&r.body, b"age-encryption.org") && r.body.len() < 4096,
            "{method} {shown} leaked bytes: {}",
            r.describe()
        );
        assert!(r.json()["error"].is_string(), "{}", r.describe());
        let after = v.audit_lines();
        assert_eq!(
            after.len(),
            before.len() + 1,
            "{method} {shown} ({}) must leave exactly one audit event",
            r.status
        );
        let e = after.last().unwrap();
        assert_eq!(e["actor"], "user:admin", "{e}");
        assert!(
            e["outcome"] == "denied" || e["outcome"] == "error",
            "{method} {shown}: {e}"
        );
        assert!(
            serde_json::to_string(e).unwrap().len() < 6000,
            "a hostile ID is not copied whole into the log: {e}"
        );
    }
    // A malformed query is refused and audited too.
    let n = v.audit_lines().len();
    let r = v.curl(&Auth::Admin, "/v1/checkpoints?since=yesterday", &[]);
    assert_eq!(r.status, 400, "{}", r.describe());
    let after = v.audit_lines();
    assert_eq!(after.len(), n + 1);
    assert_eq!(after.last().unwrap()["outcome"], "denied");

    // Nothing was touched: both records are there and verify, the blob is unchanged.
    assert_eq!(v.blob(&id), blob);
    let out = ok(&ckvault(&["verify", "--all", "--store", p(&v.store)]));
    assert!(!out.is_empty());
    let r = v.curl(&Auth::Admin, "/v1/checkpoints", &[]);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    v.audit_verify();
}

#[test]
fn range_requests_serve_exact_slices_of_the_sealed_blob() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let blob = v.blob(&id);
    let len = blob.len();
    assert_eq!(len as u64, v.real["sealed"]["size"].as_u64().unwrap());
    assert!(len > 10_000, "the real checkpoint's blob is {len} bytes");
    let etag = format!(
        "\"sha256-{}\"",
        v.real["sealed"]["sha256"].as_str().unwrap()
    );
    let url = format!("/v1/checkpoints/{id}/archive?purpose=range-test");
    let get = |range: &str, more: &[&str]| {
        let h = format!("Range: {range}");
        let mut args = vec!["-H", h.as_str()];
        args.extend_from_slice(more);
        v.curl(&Auth::Admin, &url, &args)
    };
    let mid = len / 2;
    let tail = len - 1000;
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-99".into(), 0, 99),
        (format!("bytes={mid}-{}", mid + 4095), mid, mid + 4095),
        ("bytes=-100".into(), len - 100, len - 1),
        (format!("bytes={tail}-"), tail, len - 1),
        (
            format!("bytes={}-{}", len - 10, len + 5000),
            len - 10,
            len - 1,
        ),
    ];
    let downloads = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["action"] == "download")
            .collect()
    };
    for (range, start, end) in &cases {
        let n = downloads(v.audit_lines()).len();
        let r = get(range, &[]);
        assert_eq!(r.status, 206, "{range}: {}", r.describe());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert!(r.body == blob[*start..=*end], "{range}: wrong bytes");
        let events = downloads(v.audit_lines());
        assert_eq!(events.len(), n + 1);
        let e = events.last().unwrap();
        assert_eq!(e["action"], "download");
        assert_eq!(e["outcome"], "ok");
        assert_eq!(e["detail"], format!("bytes {start}-{end}/{len}"));
        assert_eq!(e["bytes"], (end - start + 1) as u64);
        assert_eq!(e["purpose"], "range-test");
        // And its end, with the bytes handed over (written when the body is dropped).
        let t0 = std::time::Instant::now();
        let ended = loop {
            let ends: Vec<Value> = v
                .audit_lines()
                .into_iter()
                .filter(|e| e["action"] == "download-end")
                .collect();
            if ends.len() > n || t0.elapsed() > Duration::from_secs(10) {
                break ends;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(ended.len(), n + 1, "{range}: one download-end per download");
        let end_ev = ended.last().unwrap();
        assert_eq!(end_ev["outcome"], "ok", "{end_ev}");
        assert_eq!(end_ev["bytes"], (end - start + 1) as u64);
    }
    // The first 100 bytes are the age header.
    assert!(
        get("bytes=0-99", &[])
            .body
            .starts_with(b"age-encryption.org/v1\n")
    );

    // Unsatisfiable: 416 with the length, no bytes. Counted without the `download-end`
    // events: the one of the download just above is written when the server drops its body,
    // which may be after this count (seen under load).
    let requests = || -> Vec<Value> {
        v.audit_lines()
            .into_iter()
            .filter(|e| e["action"] != "download-end")
            .collect()
    };
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-", len + 1),
        "bytes=-0".into(),
    ] {
        let n = requests().len();
        let r = get(&range, &[]);
        assert_eq!(r.status, 416, "{range}: {}", r.describe());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{len}").as_str()),
            "{range}"
        );
        assert!(r.body.is_empty(), "{range}: {}", r.describe());
        let events = requests();
        assert_eq!(events.len(), n + 1);
        let e = events.last().unwrap();
        assert_eq!(e["bytes"], 0);
        assert!(
            e["detail"]
                .as_str()
                .unwrap()
                .starts_with("unsatisfiable range"),
            "{e}"
        );
    }

    // If-Range: the right ETag keeps the range, another one gets the whole blob.
    let r = get("bytes=0-99", &["-H", &format!("If-Range: {etag}")]);
    assert_eq!(r.status, 206, "{}", r.describe());
    assert!(r.body == blob[..100]);
    let r = get("bytes=0-99", &["-H", "If-Range: \"sha256-0000\""]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.body == blob,
        "a stale If-Range gets the whole representation"
    );
    assert!(r.header("content-range").is_none());
    // Several ranges: the whole blob (allowed by RFC 9110).
    let r = get("bytes=0-9,20-29", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.body == blob);
    v.audit_verify();
}

#[test]
fn an_unwritable_audit_log_fails_closed_and_recovers() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let url = format!("/v1/checkpoints/{id}/archive?purpose=during-outage");
    let r = v.curl(&Auth::Anonymous, "/healthz", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());

    let log = v.store.join("audit.log");
    let moved = v.store.join("audit.log.moved");
    fs::rename(&log, &moved).unwrap();
    fs::create_dir(&log).unwrap();
    let heads_before = fs::read(v.store.join("audit.log.heads")).unwrap();

    let r = v.curl(&Auth::Admin, &url, &[]);
    assert_eq!((r.exit, r.status), (0, 503), "{}", r.describe());
    assert!(
        !contains(&r.body, b"age-encryption.org") && r.body.len() < 4096,
        "nothing of the blob may be served: {}",
        r.describe()
    );
    assert_eq!(r.json()["error"], "audit-unavailable");
    // A range, a listing, a manifest, a token user and an anonymous caller: all refused.
    for (auth, path) in [
        (Auth::Admin, format!("/v1/checkpoints/{id}")),
        (Auth::Admin, "/v1/checkpoints".to_owned()),
        (Auth::Token(&v.alice_token), "/v1/checkpoints".to_owned()),
        (Auth::Anonymous, "/v1/checkpoints".to_owned()),
    ] {
        let r = v.curl(&auth, &path, &[]);
        assert_eq!(r.status, 503, "{path}: {}", r.describe());
        assert_eq!(r.json()["error"], "audit-unavailable", "{path}");
    }
    let r = v.curl(&Auth::Admin, &url, &["-H", "Range: bytes=0-99"]);
    assert_eq!(r.status, 503, "{}", r.describe());
    assert!(!r.body.starts_with(b"age"));
    let r = v.curl(&Auth::Anonymous, "/healthz", &[]);
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.json()["status"], "degraded");
    let r = v.curl(&Auth::Anonymous, "/metrics", &[]);
    assert!(metric(&r.text(), "ckvault_audit_failures_total") >= 6);
    assert_eq!(metric(&r.text(), "ckvault_downloads_total"), 0);
    assert_eq!(
        fs::read(v.store.join("audit.log.heads")).unwrap(),
        heads_before,
        "no head was signed for events that were not written"
    );

    // Restore the log: service resumes, and the chain is whole.
    fs::remove_dir(&log).unwrap();
    fs::rename(&moved, &log).unwrap();
    let r = v.curl(&Auth::Anonymous, "/healthz", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = v.curl(&Auth::Admin, &url, &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.body == v.blob(&id));
    v.audit_verify();
    let events = v.audit_show();
    let dl = matching(
        &events,
        &[("action", "download"), ("purpose", "during-outage")],
    );
    assert_eq!(dl.len(), 1, "only the download after the restore: {dl:#?}");
    assert_eq!(dl[0]["outcome"], "ok");
    // Nothing after it but its own end.
    let after: Vec<&Value> = events
        .iter()
        .filter(|e| e["seq"].as_u64() > dl[0]["seq"].as_u64())
        .collect();
    assert!(
        after.iter().all(|e| e["action"] == "download-end"),
        "{after:#?}"
    );
}

#[test]
fn legal_holds_block_deletion_until_released_with_a_reason() {
    let Some(v) = setup() else { return };
    let small = v.small_id();
    let rec = format!("/v1/checkpoints/{small}");
    let hold = format!("{rec}/hold");
    let blob_path = v.store.join("records").join(format!("{small}.age"));
    let manifest_path = v.store.join("records").join(format!("{small}.json"));

    // Placing a hold needs a reason.
    let r = v.curl(&Auth::Admin, &hold, &["-X", "PUT"]);
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.json()["error"], "reason-required");
    let r = v.curl(
        &Auth::Admin,
        &format!("{hold}?reason=litigation-7"),
        &["-X", "PUT"],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["reason"], "litigation-7");
    assert_eq!(r.json()["by"], "user:admin");
    let r = v.curl(&Auth::Admin, &rec, &[]);
    assert_eq!(
        r.header("ckvault-legal-hold"),
        Some("true"),
        "{}",
        r.describe()
    );

    // Held: no deletion.
    let r = v.curl(
        &Auth::Admin,
        &format!("{rec}?reason=cleanup"),
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 409, "{}", r.describe());
    assert_eq!(r.json()["error"], "held");
    assert!(blob_path.is_file() && manifest_path.is_file());

    // Releasing needs a reason too, and a responder (hold grant on forensics only) cannot
    // touch team-b's hold nor delete anything.
    let r = v.curl(&Auth::Admin, &hold, &["-X", "DELETE"]);
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = v.curl(
        &Auth::Token(&v.alice_token),
        &format!("{hold}?reason=mine"),
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = v.curl(
        &Auth::Token(&v.alice_token),
        &format!("/v1/checkpoints/{}", v.real_id()),
        &["-X", "DELETE"],
    );
    assert_eq!(
        r.status,
        403,
        "responders have no delete grant: {}",
        r.describe()
    );
    let r = v.curl(&Auth::Admin, &rec, &[]);
    assert_eq!(r.header("ckvault-legal-hold"), Some("true"), "still held");

    let r = v.curl(
        &Auth::Admin,
        &format!("{hold}?reason=case-closed"),
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["released"], true);
    let r = v.curl(
        &Auth::Admin,
        &format!("{rec}?reason=retention"),
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 204, "{}", r.describe());
    assert!(r.body.is_empty());
    assert!(!blob_path.exists() && !manifest_path.exists());
    let r = v.curl(&Auth::Admin, &rec, &[]);
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = v.curl(&Auth::Admin, &format!("{rec}/archive"), &[]);
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = v.curl(&Auth::Admin, "/v1/checkpoints", &[]);
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], v.real_id().as_str());

    v.audit_verify();
    let events = v.audit_show();
    let one = |want: &[(&str, &str)]| {
        let found = matching(&events, want);
        assert_eq!(found.len(), 1, "{want:?} in {events:#?}");
        found[0].clone()
    };
    let admin = ("actor", "user:admin");
    let r = ("record", small.as_str());
    one(&[
        admin,
        r,
        ("action", "hold"),
        ("outcome", "ok"),
        ("purpose", "litigation-7"),
    ]);
    let d = one(&[admin, r, ("action", "delete"), ("outcome", "denied")]);
    assert!(d["detail"].as_str().unwrap().contains("legal hold"), "{d}");
    one(&[
        admin,
        r,
        ("action", "release"),
        ("outcome", "ok"),
        ("purpose", "case-closed"),
    ]);
    one(&[
        admin,
        r,
        ("action", "delete"),
        ("outcome", "ok"),
        ("purpose", "retention"),
    ]);
    // The refusals: holds without reasons, alice's attempts.
    one(&[admin, ("action", "hold"), ("outcome", "denied")]);
    one(&[admin, ("action", "release"), ("outcome", "denied")]);
    one(&[
        ("actor", "user:alice"),
        r,
        ("action", "hold"),
        ("outcome", "denied"),
    ]);
    one(&[
        ("actor", "user:alice"),
        ("action", "delete"),
        ("outcome", "denied"),
    ]);
    // Order: hold, refused delete, release, delete.
    let seq = |action: &str, outcome: &str| {
        matching(
            &events,
            &[admin, r, ("action", action), ("outcome", outcome)],
        )[0]["seq"]
            .as_u64()
            .unwrap()
    };
    assert!(seq("hold", "ok") < seq("delete", "denied"));
    assert!(seq("delete", "denied") < seq("release", "ok"));
    assert!(seq("release", "ok") < seq("delete", "ok"));
}

/// The public key (PEM) of a fresh store made at `store`.
fn ckvault_signing_pub(store: &Path) -> Vec<u8> {
    let dir = store.parent().unwrap();
    let (_, recipient) = support::age_keypair(dir);
    let input = dir.join("foreign-in.tar");
    fs::write(&input, support::tar_with(&[("config.dump", b'0', b"{}")])).unwrap();
    ok(&ckvault(&[
        "seal",
        p(&input),
        "--store",
        p(store),
        "-r",
        &recipient,
    ]));
    fs::read(store.join("keys/signing.pub")).unwrap()
}

#[test]
fn fetch_downloads_resumes_verifies_and_opens_a_real_checkpoint() {
    let Some(v) = setup() else { return };
    let id = v.real_id();
    let blob = v.blob(&id);
    let server = v.base();
    let ca = v.tls("ca.pem");
    let token = v.tls("admin.token");
    let pins = v.dir().join("pins");
    let fetch = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "fetch",
            id.as_str(),
            "--server",
            server.as_str(),
            "--cacert",
            p(&ca),
            "--pinned-keys",
            p(&pins),
            "-o",
            p(out),
        ];
        args.extend_from_slice(extra);
        ckvault(&args)
    };

    // A key that is not the vault's: the manifest does not verify, nothing is downloaded.
    let foreign = v.dir().join("foreign.pub");
    let other = ckvault_signing_pub(&v.dir().join("foreign-store"));
    fs::write(&foreign, other).unwrap();
    let r = fetch(
        &v.dir().join("foreign.age"),
        &["--token-file", p(&token), "--public-key", p(&foreign)],
    );
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!v.dir().join("foreign.age.partial").exists());

    // Whole download, opened with the age identity; the server's key is pinned on first use.
    let out = v.dir().join("got.age");
    let first = fetch(
        &out,
        &[
            "--token-file",
            p(&token),
            "--identity",
            p(&v.identity),
            "--purpose",
            "case 7/a",
        ],
    );
    ok(&first);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(
        err.contains("first use of") && err.contains("pinned its signing key"),
        "{err}"
    );
    let pinned: Vec<_> = fs::read_dir(&pins).unwrap().collect();
    assert_eq!(pinned.len(), 1, "one server pinned");
    // The fetched file opens with the pinned key (its manifest verified, not trusted as is).
    let reopened = v.dir().join("reopened.tar");
    let r = ckvault(&[
        "open",
        p(&out),
        "-i",
        p(&v.identity),
        "--pinned-keys",
        p(&pins),
        "-o",
        p(&reopened),
    ]);
    ok(&r);
    assert!(String::from_utf8_lossy(&r.stderr).contains("pinned in"));
    assert!(fs::read(&reopened).unwrap() == fs::read(&v.archive).unwrap());
    assert!(fs::read(&out).unwrap() == blob, "fetched blob differs");
    let opened = fs::read(v.dir().join("got.age.tar")).unwrap();
    assert!(
        opened == fs::read(&v.archive).unwrap(),
        "opened archive differs from the checkpoint"
    );
    assert!(contains(&opened, support::MARKER.as_bytes()));
    assert!(!v.dir().join("got.age.partial").exists());
    // Refuses to overwrite.
    let again = fetch(&out, &["--token-file", p(&token)]);
    assert!(!again.status.success());

    // Resume: half the blob is already there.
    let half = blob.len() / 2;
    let out2 = v.dir().join("resumed.age");
    fs::write(v.dir().join("resumed.age.partial"), &blob[..half]).unwrap();
    let r = fetch(&out2, &["--token-file", p(&token)]);
    ok(&r);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("verified with the key pinned for"), "{err}");
    assert!(fs::read(&out2).unwrap() == blob, "resumed blob differs");
    assert!(!v.dir().join("resumed.age.partial").exists());

    // The fetched sealed file is analysed as it is (decrypted in memory, both digests of
    // the manifest fetched beside it checked): memory search, deep view, diff.
    let found: Value = serde_json::from_str(&ok(&ckvault(&[
        "memsearch",
        p(&out),
        "-i",
        p(&v.identity),
        "--string",
        support::MARKER,
        "--format",
        "json",
    ])))
    .unwrap();
    assert!(
        !found["matches"].as_array().unwrap().is_empty(),
        "{found:#}"
    );
    assert_eq!(found["record"], id.as_str());
    let deep: Value = serde_json::from_str(&ok(&ckvault(&[
        "inspect",
        p(&out),
        "--deep",
        "-i",
        p(&v.identity),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(deep["record"], id.as_str());
    assert!(
        deep["processes"]["1"]["cmdline"][0] == "/bin/memhog",
        "{deep:#}"
    );
    let same: Value = serde_json::from_str(&ok(&ckvault(&[
        "diff",
        p(&out),
        p(&out2),
        "-i",
        p(&v.identity),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(same["identity"], serde_json::json!([]), "{same:#}");
    // Without its manifest, a sealed file is not analysed (nothing to check it against).
    let lone = v.dir().join("lone.age");
    fs::copy(&out, &lone).unwrap();
    let r = ckvault(&["memsearch", p(&lone), "-i", p(&v.identity), "--string", "x"]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("needs its manifest beside it"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // A damaged partial file is caught by the digest and discarded.
    let out3 = v.dir().join("damaged.age");
    let mut bad = blob[..half].to_vec();
    bad[half / 2] ^= 0x40;
    fs::write(v.dir().join("damaged.age.partial"), &bad).unwrap();
    let r = fetch(&out3, &["--token-file", p(&token)]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("does not match the manifest"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out3.exists() && !v.dir().join("damaged.age.partial").exists());

    // alice's token cannot fetch team-b's record.
    let alice_file = v.dir().join("alice.token");
    fs::write(&alice_file, format!("{}\n", v.alice_token)).unwrap();
    let r = ckvault(&[
        "fetch",
        &v.small_id(),
        "--server",
        &server,
        "--cacert",
        p(&ca),
        "--token-file",
        p(&alice_file),
        "-o",
        p(&v.dir().join("nope.age")),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("404"));
    assert!(!v.dir().join("nope.age").exists());

    v.audit_verify();
    let events = v.audit_show();
    let dl = matching(
        &events,
        &[
            ("action", "download"),
            ("outcome", "ok"),
            ("actor", "user:admin"),
            ("record", &id),
        ],
    );
    assert_eq!(dl.len(), 3, "whole, resumed, damaged-resume: {dl:#?}");
    assert_eq!(dl[0]["purpose"], "case 7/a");
    assert_eq!(dl[0]["detail"], Value::Null);
    let prefix = format!("bytes {half}-");
    let resumed: Vec<_> = dl
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with(&prefix)))
        .collect();
    assert_eq!(resumed.len(), 2, "{dl:#?}");
    assert_eq!(
        resumed[0]["detail"],
        format!("bytes {half}-{}/{}", blob.len() - 1, blob.len())
    );
    assert_eq!(resumed[0]["bytes"], (blob.len() - half) as u64);
    assert_eq!(
        matching(
            &events,
            &[
                ("actor", "user:alice"),
                ("outcome", "denied"),
                ("record", &v.small_id())
            ]
        )
        .len(),
        1
    );
}

#[test]
fn metrics_count_downloads_and_the_openapi_document_is_served() {
    let Some(v) = setup() else { return };
    let r = v.curl(&Auth::Anonymous, "/metrics", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(metric(&r.text(), "ckvault_downloads_total"), 0);
    assert_eq!(metric(&r.text(), "ckvault_records"), 2);

    let id = v.real_id();
    let r = v.curl(&Auth::Admin, &format!("/v1/checkpoints/{id}/archive"), &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = v.curl(&Auth::Anonymous, "/metrics", &[]);
    let text = r.text();
    assert!(metric(&text, "ckvault_downloads_total") >= 1, "{text}");
    assert!(
        text.contains(
            "ckvault_http_requests_total{route=\"/v1/checkpoints/{id}/archive\",status=\"200\"}"
        ),
        "per-route request counter missing: {text}"
    );
    assert!(
        metric(&text, "ckvault_download_bytes_total") >= v.real["sealed"]["size"].as_u64().unwrap()
    );
    assert!(
        text.contains("# TYPE ckvault_downloads_total counter"),
        "{text}"
    );
    // Setup's SIGHUP polling and the anonymous probes are denials.
    let denied = metric(&text, "ckvault_denied_total");
    let r = v.curl(&Auth::Anonymous, "/v1/checkpoints", &[]);
    assert_eq!(r.status, 401);
    let r = v.curl(&Auth::Anonymous, "/metrics", &[]);
    assert_eq!(metric(&r.text(), "ckvault_denied_total"), denied + 1);

    let r = v.curl(&Auth::Anonymous, "/v1/openapi.json", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|s| s.starts_with('3')),
        "{:?}",
        doc["openapi"]
    );
    assert!(doc["paths"]["/v1/checkpoints/{id}/archive"].is_object());
}

#[test]
fn listing_pages_with_a_cursor_and_filters_by_hold_time_source_and_trigger() {
    let Some(v) = setup() else { return };
    let ids = |r: &Value| -> Vec<String> {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = v.curl(&Auth::Admin, "/v1/checkpoints", &[]);
    assert_eq!(all.status, 200, "{}", all.describe());
    let all = ids(&all.json());
    assert!(all.len() >= 2, "{all:?}");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    // One record a page, following `next`, walks the same list once.
    let (mut walked, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/checkpoints?limit=1&cursor={c}"),
            None => "/v1/checkpoints?limit=1".to_owned(),
        };
        let r = v.curl(&Auth::Admin, &path, &[]);
        assert_eq!(r.status, 200, "{}", r.describe());
        let page = r.json();
        walked.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(walked.len() <= all.len(), "{walked:?}");
    }
    assert_eq!(walked, all);
    // Held or not.
    let small = v.small_id();
    let r = v.curl(
        &Auth::Admin,
        &format!("/v1/checkpoints/{small}/hold?reason=case-9"),
        &["-X", "PUT"],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let held = ids(&v
        .curl(&Auth::Admin, "/v1/checkpoints?held=true", &[])
        .json());
    assert_eq!(held, vec![small.clone()]);
    let free = ids(&v
        .curl(&Auth::Admin, "/v1/checkpoints?held=false", &[])
        .json());
    assert_eq!(free.len(), all.len() - 1);
    assert!(!free.contains(&small));
    // Time and source.
    let old = v.curl(
        &Auth::Admin,
        "/v1/checkpoints?until=2000-01-01T00:00:00Z",
        &[],
    );
    assert!(ids(&old.json()).is_empty(), "{}", old.describe());
    let cli = ids(&v
        .curl(&Auth::Admin, "/v1/checkpoints?source=cli", &[])
        .json());
    assert_eq!(cli, all);
    let watch = ids(&v
        .curl(&Auth::Admin, "/v1/checkpoints?source=watch", &[])
        .json());
    assert!(watch.is_empty());
    // Trigger: none of these has one; a record sealed for an alert (through the library,
    // into the served store) is the only one `trigger=alertmanager` lists.
    let listed = v.curl(&Auth::Admin, "/v1/checkpoints", &[]).json();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["trigger"].is_null()),
        "{listed:#}"
    );
    assert!(
        ids(&v
            .curl(&Auth::Admin, "/v1/checkpoints?trigger=alertmanager", &[])
            .json())
        .is_empty()
    );
    let (_key, recipient) = support::age_keypair(v.tmp.path());
    let mut o = ckvault::seal::SealOptions::new(
        vec![recipient.parse().unwrap()],
        ckvault::manifest::Source {
            kind: ckvault::manifest::SourceKind::Trigger,
            path: None,
        },
    );
    o.trigger = Some(ckvault::manifest::Trigger::new(
        ckvault::manifest::TriggerKind::Alertmanager,
        "user:am",
    ));
    let local = ckvault::internal::store::LocalStore::open(&v.store).unwrap();
    let m =
        ckvault::seal::seal_file(&local, fs::File::open(&v.archive).unwrap(), &o, &|_| {}).unwrap();
    let r = v.curl(&Auth::Admin, "/v1/checkpoints?trigger=alertmanager", &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    let page = r.json();
    assert_eq!(ids(&page), [m.id.to_string()]);
    assert_eq!(page["items"][0]["trigger"], "alertmanager");
    assert!(
        ids(&v
            .curl(&Auth::Admin, "/v1/checkpoints?trigger=falco", &[])
            .json())
        .is_empty()
    );
    // A cursor that is not a record ID is refused (and audited).
    let r = v.curl(&Auth::Admin, "/v1/checkpoints?cursor=..%2Fetc", &[]);
    assert_eq!(r.status, 400, "{}", r.describe());
}
