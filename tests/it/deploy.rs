//! Deployment artefacts, checked as a user would use them: the container image
//! (deploy/image/Containerfile, built by scripts/image.sh with Debian's buildah/podman and
//! run with podman: `--version`, and a seal and verify inside it on a mounted directory);
//! every kustomization under deploy/ rendered by kubectl, validated against the Kubernetes
//! 1.37 schemas (`kubernetes-validate --strict`) and linted by `checkov` (every finding
//! fixed or waived in the manifest); and docs/deploy.md's commands run as written (its
//! ```` ```sh deploy-test ```` blocks, with a stand-in for the cluster side of `kubectl`).
//! (The lead moves this file into the one integration-test binary, tests/it/.)

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{age_keypair, ckvault_bin, ok, p, tar_with};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Set (by scripts/test.sh) to make a missing tool a failure rather than a logged skip.
const REQUIRE_ENV: &str = "CKVAULT_REQUIRE_DEPLOY_TOOLS";

/// Whether `tool` runs; when it does not, says so through the repo's skip machinery (a
/// failure under scripts/test.sh, which sets CKVAULT_REQUIRE_DEPLOY_TOOLS=1 unless
/// CKVAULT_ALLOW_SKIP=1; a loud notice and a line in the skip log otherwise).
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        support::cannot_run(
            REQUIRE_ENV,
            &format!("{tool} is not installed (run scripts/test-deps.sh as root)"),
        );
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Podman as it works on these machines: runc with cgroupfs (Debian 12's crun refuses the
/// hybrid cgroup layout), no network, and resource limits lowered rather than raised (the
/// sandbox cannot raise RLIMIT_NOFILE/NPROC, which podman's defaults would).
fn podman_run() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--rm",
    ])
    .args(["--network", "none", "--ulimit", "nofile=1024:1024"])
    .args(["--ulimit", "nproc=1024:1024"]);
    c
}

/// Removes the test's image however the test ends.
struct Image(String);
impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn image_is_built_here_and_seals_and_verifies_inside() {
    if !have("podman") {
        return;
    }
    let tag = format!("localhost/ckvault-test:{}", std::process::id());
    let built = run(Command::new("bash")
        .arg(Path::new(REPO).join("scripts/image.sh"))
        .args(["--bin", p(&ckvault_bin()), "--tag", &tag]));
    let _image = Image(tag.clone());
    eprintln!("{}", String::from_utf8_lossy(&built.stderr));

    // The image runs the binary and nothing else: its version, as the host's says.
    let version = run(podman_run().arg(&tag).arg("--version"));
    let host = ok(&support::ckvault(&["--version"]));
    assert_eq!(String::from_utf8_lossy(&version.stdout), host);
    // No shell in it.
    let shell = Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "run",
            "--rm",
        ])
        .args([
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
        ])
        .args([
            "nproc=1024:1024",
            "--entrypoint",
            "/bin/sh",
            &tag,
            "-c",
            "true",
        ])
        .output()
        .expect("run podman");
    assert!(!shell.status.success(), "the image has a shell");
    // Not root by default.
    let inspect = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &tag,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "65532:65532"
    );

    // A seal and a verify inside, as the unprivileged user, on a mounted directory.
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_keypair(dir.path());
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let archive = tar_with(&[
        ("config.dump", b'0', br#"{"id":"abc"}"#),
        ("spec.dump", b'0', b"{}"),
        ("checkpoint/pages-1.img", b'0', b"CKVAULT-IMAGE-TEST-PAGES"),
    ]);
    fs::write(data.join("ckpt.tar"), &archive).unwrap();
    run(Command::new("chown").args(["-R", "65532:65532", p(&data)]));
    let mount = format!("{}:/data", p(&data));
    let sealed = run(podman_run()
        .args(["-v", &mount, &tag, "seal", "/data/ckpt.tar"])
        .args(["--store", "/data/store", "-r", &recipient]));
    let manifest: serde_json::Value =
        serde_json::from_slice(&sealed.stdout).expect("manifest JSON");
    let id = manifest["id"].as_str().expect("record id").to_owned();
    let verified =
        run(podman_run().args(["-v", &mount, &tag, "verify", &id, "--store", "/data/store"]));
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with(&format!("OK {id}")));
    // What was sealed inside opens outside, byte for byte.
    let opened = dir.path().join("opened.tar");
    ok(&support::ckvault(&[
        "open",
        &id,
        "--store",
        p(&data.join("store")),
        "-i",
        p(&identity),
        "-o",
        p(&opened),
    ]));
    assert_eq!(fs::read(&opened).unwrap(), archive);
}

/// The kubectl to render with: `CKVAULT_TEST_KUBECTL` (e.g. Debian's kubernetes-client
/// 1.20 where another kubectl comes first on PATH), else `kubectl`.
fn kubectl() -> String {
    std::env::var("CKVAULT_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Renders `dir` with `kubectl kustomize`.
fn render(dir: &Path) -> String {
    let out = run(Command::new(kubectl()).arg("kustomize").arg(dir));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// Validates `file` against the Kubernetes 1.37 schemas, strictly (unknown fields refused).
fn validate(file: &Path) {
    run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.37.0"])
        .arg(file));
}

/// Lints the manifests in `dir` with checkov; panics with every finding not waived.
fn lint(dir: &Path) {
    let out = Command::new("checkov")
        .args(["-d", p(dir), "--framework", "kubernetes", "--skip-download"])
        .args(["-o", "json"])
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .expect("run checkov");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}; {}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports: Vec<serde_json::Value> = match json {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    };
    let mut failed = Vec::new();
    let mut passed = 0;
    for r in &reports {
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
        for c in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            failed.push(format!(
                "{} {} ({})",
                c["check_id"], c["resource"], c["check_name"]
            ));
        }
    }
    assert!(
        passed > 100,
        "checkov passed only {passed} checks: did it read the manifests?"
    );
    assert!(
        failed.is_empty(),
        "checkov findings neither fixed nor waived:\n{}",
        failed.join("\n")
    );
}

/// Every kustomization under deploy/ (base and overlays).
fn kustomizations() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![Path::new(REPO).join("deploy")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.file_name() == "kustomization.yaml" {
                found.push(d.clone());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_kustomization_renders_validates_and_passes_checkov() {
    if !have(&kubectl()) || !have("kubernetes-validate") || !have("checkov") {
        return;
    }
    let dirs = kustomizations();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(REPO).unwrap().display().to_string())
        .collect();
    for want in [
        "deploy/base",
        "deploy/overlays/containerd",
        "deploy/overlays/cri-o",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} among {names:?}");
    }
    // Not a hidden directory (tempfile's default .tmpXXXX): checkov skips those.
    let out = tempfile::Builder::new()
        .prefix("ckvault-deploy-")
        .tempdir()
        .unwrap();
    for (dir, name) in dirs.iter().zip(&names) {
        let text = render(dir);
        for kind in [
            "kind: DaemonSet",
            "kind: Deployment",
            "kind: Namespace",
            "kind: NetworkPolicy",
        ] {
            assert!(text.contains(kind), "{name} renders no {kind}");
        }
        let file = out.path().join(format!("{}.yaml", name.replace('/', "-")));
        fs::write(&file, &text).unwrap();
        validate(&file);
    }
    lint(out.path());

    // The checks can fail: a manifest with an unknown field, and one a linter refuses.
    let bad = out.path().join("bad");
    fs::create_dir(&bad).unwrap();
    let wrong = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n    - {name: x, image: x, privileged: true}\n";
    fs::write(bad.join("bad.yaml"), wrong).unwrap();
    let v = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.37.0"])
        .arg(bad.join("bad.yaml"))
        .output()
        .unwrap();
    assert!(
        !v.status.success(),
        "kubernetes-validate accepted an unknown field"
    );
    let c = Command::new("checkov")
        .args([
            "-d",
            p(&bad),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap();
    assert!(!c.status.success(), "checkov passed a bare pod");
}

/// The fence that marks a docs/deploy.md block this test runs.
const RUN_FENCE: &str = "```sh deploy-test";

/// The blocks of docs/deploy.md the test runs, and every `ckvault` command line outside them.
fn doc_blocks(doc: &str) -> (Vec<String>, Vec<String>) {
    let (mut run_blocks, mut outside) = (Vec::new(), Vec::new());
    let mut current: Option<(bool, String)> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.starts_with("```") => {
                current = Some((line.trim() == RUN_FENCE, String::new()))
            }
            None => {}
            Some((runs, text)) if line.starts_with("```") => {
                if *runs {
                    run_blocks.push(std::mem::take(text));
                }
                current = None;
            }
            Some((runs, text)) => {
                let t = line.trim_start();
                let invokes = t.starts_with("ckvault ")
                    || [
                        "$(ckvault ",
                        "-- ckvault ",
                        "| ckvault ",
                        "; ckvault ",
                        "&& ckvault ",
                    ]
                    .iter()
                    .any(|s| line.contains(s));
                if !*runs && invokes {
                    outside.push(line.to_owned());
                }
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "docs/deploy.md: a fenced block is not closed"
    );
    (run_blocks, outside)
}

/// The cluster side of kubectl for docs/deploy.md: `create ... --dry-run=client` and
/// `kustomize` run the real kubectl (offline); `apply` keeps what it is given under
/// $APPLIED (`rollout status` returns at once); `exec POD -- CMD` runs CMD here, the agent's configuration being the test's
/// node configuration; `get pods -o name` names one agent pod.
const KUBECTL_DOUBLE: &str = r#"
kubectl() {
  case " $* " in
    *" --dry-run=client "*|*" kustomize "*) command "$REAL_KUBECTL" "$@" ;;
    *" apply -k "*)
      local all="$*"; local dir=${all##* -k }; dir=${dir%% *}
      command "$REAL_KUBECTL" kustomize "$dir" > "$APPLIED/$(date +%s%N).yaml" ;;
    *" apply -f - "*) cat > "$APPLIED/$(date +%s%N).yaml" ;;
    *" apply -f "*) local all="$*"; local f=${all##* -f }; cp "${f%% *}" "$APPLIED/$(date +%s%N).yaml" ;;
    *" rollout status "*) ;;
    *" port-forward "*) ;;
    *" get pods "*) echo pod/ckvault-node-agent-t3st ;;
    *" exec "*)
      while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift
      local args=()
      for a in "$@"; do args+=("${a//\/etc\/ckvault\/ckvault.toml/$NODE_CONFIG}"); done
      "${args[@]}" ;;
    *) echo "kubectl stand-in: not simulated: kubectl $*" >&2; return 1 ;;
  esac
}
"#;

/// The cluster side of docs/deploy.md's step 7, run just before that step's block (the
/// port-forward itself is a no-op in the kubectl stand-in): the server a responder reaches
/// through `kubectl port-forward`, here a local `ckvault serve` on $PORT with the TLS
/// material, token file and policies the doc made in step 3, holding one record sealed (in a
/// namespace the doc's policies let alice's group download) to the responder key of step 2.
/// The record's ID is what the doc calls RECORD-ID. The server is stopped when the script
/// ends.
const SERVER_DOUBLE: &str = r#"
serve_for_step_7() {
  local store="$STEP7/store"
  ckvault seal "$ARCHIVE" --store "$store" -r "$(age-keygen -y responder.key)" \
    --namespace team-shop --pod api-0 --container api > "$STEP7/manifest.json"
  RECORD_ID=$(sed -n 's/^  "id": "\([0-9A-Z]*\)",$/\1/p' "$STEP7/manifest.json")
  [ -n "$RECORD_ID" ] || { echo "no id in the sealed manifest" >&2; return 1; }
  printf '[store]\npath = "%s"\n[server]\nlisten = "127.0.0.1:%s"\ncert = "%s"\nkey = "%s"\nclient_ca = "%s"\ntokens = "%s"\n[policy]\ndir = "%s"\n' \
    "$store" "$PORT" "$PWD/tls/server.pem" "$PWD/tls/server.key" "$PWD/tls/ca.pem" \
    "$PWD/tls/tokens.toml" "$PWD/policies" > "$STEP7/serve.toml"
  ckvault serve --config "$STEP7/serve.toml" > "$STEP7/serve.log" 2>&1 &
  SERVE_PID=$!
  trap 'kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null' EXIT
  for _ in $(seq 300); do
    curl -sf --cacert tls/ca.pem "https://localhost:$PORT/healthz" > /dev/null && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$STEP7/serve.log" >&2; return 1; }
    sleep 0.1
  done
  echo "the step 7 server did not answer /healthz in 30 s" >&2; cat "$STEP7/serve.log" >&2; return 1
}
"#;

/// A port nothing listens on now (the step 7 server's; the doc's 8443 may be taken).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[test]
fn deploy_doc_commands_run_as_written() {
    if !have(&kubectl()) || !have("kubernetes-validate") || !have("age-keygen") {
        return;
    }
    let doc = fs::read_to_string(Path::new(REPO).join("docs/deploy.md")).expect("docs/deploy.md");
    let (blocks, outside) = doc_blocks(&doc);
    assert!(
        blocks.len() >= 4,
        "docs/deploy.md has {} runnable blocks",
        blocks.len()
    );
    assert!(
        outside.is_empty(),
        "docs/deploy.md shows ckvault commands outside {RUN_FENCE} blocks:\n{outside:#?}"
    );
    // Step 7, the first download: the one block that talks to the server.
    let step7: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].contains("port-forward svc/ckvault"))
        .collect();
    assert_eq!(step7.len(), 1, "docs/deploy.md's first download (step 7)");
    assert!(
        blocks[step7[0]].contains("ckvault fetch RECORD-ID")
            && blocks[step7[0]].contains("localhost:8443"),
        "step 7 changed: update this test's stand-in for it"
    );

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let applied = dir.path().join("applied");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&applied).unwrap();
    // The node the doc collects a key from: its agent has run once (its spool and key exist).
    let spool = dir.path().join("node-spool");
    let node_config = dir.path().join("node.toml");
    fs::write(
        &node_config,
        format!(
            "[store]\nkind = \"s3\"\nendpoint = \"https://s3.example.internal\"\nregion = \"us-east-1\"\nbucket = \"b\"\nspool = \"{}\"\n[node]\nname = \"node-a\"\n",
            p(&spool)
        ),
    )
    .unwrap();
    fs::create_dir(&spool).unwrap();
    ok(&support::ckvault(&[
        "deploy",
        "node-key",
        "--config",
        p(&node_config),
    ]));

    let bin_dir = ckvault_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        p(&bin_dir),
        std::env::var("PATH").unwrap_or_default()
    );
    // The step 7 server: its port free here, its record the one the doc names RECORD-ID.
    let archive = dir.path().join("checkpoint.tar");
    let archive_bytes = tar_with(&[("spec.dump", b'0', b"{}\n"), ("notes.txt", b'0', b"x\n")]);
    fs::write(&archive, &archive_bytes).unwrap();
    let step7_dir = dir.path().join("step7");
    fs::create_dir(&step7_dir).unwrap();
    let port = free_port().to_string();
    let run_blocks: Vec<String> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if i == step7[0] {
                format!(
                    "serve_for_step_7\n{}",
                    b.replace("8443", &port)
                        .replace("RECORD-ID", "\"$RECORD_ID\"")
                )
            } else {
                b.clone()
            }
        })
        .collect();
    let script = format!(
        "set -euo pipefail\n{KUBECTL_DOUBLE}\n{SERVER_DOUBLE}\n{}",
        run_blocks.join("\n")
    );
    fs::write(dir.path().join("doc.sh"), &script).unwrap();
    let out = Command::new("bash")
        .arg(dir.path().join("doc.sh"))
        .current_dir(&work)
        .env("PATH", path)
        .env("CKVAULT_SRC", REPO)
        .env("REAL_KUBECTL", kubectl())
        .env("APPLIED", &applied)
        .env("NODE_CONFIG", &node_config)
        .env("ARCHIVE", &archive)
        .env("STEP7", &step7_dir)
        .env("PORT", &port)
        // `fetch` pins the server's key under ~/.config: keep that inside the test.
        .env("HOME", dir.path())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "docs/deploy.md's commands failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Step 7 listed the record, downloaded it with alice's token and opened it with the
    // responder key: record.age.tar is the archive sealed, byte for byte, and the server's audit
    // log names alice, the record and the purpose.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let manifest = fs::read_to_string(step7_dir.join("manifest.json")).unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        stdout.contains(&id),
        "step 7's listing does not show the record {id}:\n{stdout}"
    );
    assert!(
        work.join("record.age").is_file(),
        "step 7 fetched no record.age"
    );
    assert_eq!(
        fs::read(work.join("record.age.tar")).expect("step 7's fetch -i opens record.age.tar"),
        archive_bytes,
        "the record step 7 opened is not the archive sealed"
    );
    let downloaded = support::audit_events(&step7_dir.join("store"))
        .into_iter()
        .any(|e| {
            e["action"] == "download"
                && e["outcome"] == "ok"
                && e["actor"] == "user:alice"
                && e["record"] == id.as_str()
                && e["purpose"] == "incident 42"
        });
    assert!(
        downloaded,
        "the server's audit log has no download of {id} by alice for \"incident 42\""
    );

    // What the doc applied is valid, and holds every Secret and ConfigMap the workloads
    // mount: nothing is referenced that no documented command creates.
    let mut all = String::new();
    for e in fs::read_dir(&applied).unwrap().flatten() {
        validate(&e.path());
        all.push_str(&fs::read_to_string(e.path()).unwrap());
        all.push_str("\n---\n");
    }
    for needed in [
        "ckvault-s3-node",
        "ckvault-s3-server",
        "ckvault-server-tls",
        "ckvault-client-ca",
        "ckvault-receivers-tls",
        "ckvault-tokens",
        "ckvault-policies",
        "ckvault-node-keys",
    ] {
        assert!(
            all.contains(&format!("secretName: {needed}"))
                || all.contains(&format!("name: {needed}")),
            "{needed} is not referenced"
        );
        let created = all.split("\n---\n").any(|d| {
            (d.contains("kind: Secret") || d.contains("kind: ConfigMap"))
                && d.lines().any(|l| l.trim() == format!("name: {needed}"))
        });
        assert!(
            created,
            "docs/deploy.md creates no Secret or ConfigMap {needed}"
        );
    }
    // The pinned keys the doc collected reach the server's pod as TRUSTED/NODE/KEY.pem.
    assert!(
        all.contains("path: node-a/"),
        "no pinned key for node-a in what was applied"
    );
    assert!(
        all.contains("trusted_keys = \"/etc/ckvault/node-keys\""),
        "the server does not use the pins"
    );
}
