//! `ckvault deploy tls|node-key|node-keys`: the material a Kubernetes install needs that
//! only ckvault can make (docs/deploy.md walks through them): the generated PKI and admin
//! token for the server's Secrets, a node's public signing key read where the agent runs,
//! and the server's pinned node keys (`[store] trusted_keys`) as a ConfigMap and the
//! Deployment patch that lays it out one directory per node name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail, ensure};

use crate::config::Config;
use crate::fsutil;
use crate::manifest::VerifyingKey;
use crate::store::s3::valid_node_name;
use crate::wiring::{Node, Open};

/// Most keys `node-keys` puts in one ConfigMap (a ConfigMap holds at most 1 MiB; a key's
/// PEM is about 115 bytes).
const MAX_PINNED_KEYS: usize = 4096;
/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 16 << 10;
/// Longest key file name kept (it becomes a path in the server's pod).
const MAX_KEY_FILE_NAME: usize = 128;

/// `ckvault deploy ...`
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Generate the server's TLS material and first token into DIR (once; an existing DIR
    /// is left as it is): a private CA (ca.pem, ca.key), a server certificate for
    /// localhost (server.pem, server.key: clients reach an in-cluster server through
    /// `kubectl port-forward`; for another name bring a certificate from your own CA), an
    /// admin client certificate (admin.pem, admin.key) and token (admin.token, its hash in
    /// tokens.toml). Prints the files; docs/deploy.md turns them into Secrets.
    Tls {
        /// Directory to create (private, 0700).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print this node's public signing key (SPKI PEM), or with --name the node name its
    /// manifests carry: run it where the agent runs (`kubectl exec` into its pod), after it
    /// has started once; the key goes in the server's `[store] trusted_keys` as
    /// TRUSTED/NAME/KEY.pem.
    NodeKey {
        /// The node's configuration file (its `[store]` spool and `[node] name`).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Print the node name instead of the key.
        #[arg(long)]
        name: bool,
    },
    /// Turn a `trusted_keys` directory (TRUSTED/NODE/*.pem) into Kubernetes manifests:
    /// OUT/node-keys.yaml (the ConfigMap ckvault-node-keys) and OUT/node-keys-patch.yaml
    /// (a patch of the ckvault-server Deployment mounting it at /etc/ckvault/node-keys,
    /// one directory per node), for an overlay's kustomization.yaml.
    NodeKeys {
        /// The pins directory, laid out as `[store] trusted_keys` reads it.
        trusted: PathBuf,
        /// Directory to write the two files into (an overlay's).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Namespace of the ConfigMap and the Deployment.
        #[arg(long, default_value = "ckvault")]
        namespace: String,
    },
}

/// Runs `ckvault deploy ...`.
pub(super) fn run(cmd: DeployCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeployCommand::Tls { dir } => tls(&dir),
        DeployCommand::NodeKey { config, name } => node_key(&config, name),
        DeployCommand::NodeKeys {
            trusted,
            out,
            namespace,
        } => node_keys(&trusted, &out, &namespace),
    }
}

fn tls(dir: &Path) -> anyhow::Result<ExitCode> {
    let pki = crate::serve::pki::ensure_default_pki(dir)?;
    for (what, path) in [
        ("CA certificate", &pki.ca_cert),
        ("CA key", &pki.ca_key),
        ("server certificate", &pki.server_cert),
        ("server key", &pki.server_key),
        ("admin certificate", &pki.admin_cert),
        ("admin key", &pki.admin_key),
        ("token file", &pki.tokens),
        ("admin token", &pki.admin_token),
    ] {
        println!("{what}\t{}", path.display());
    }
    if !pki.created {
        eprintln!(
            "ckvault: {} already held generated material: kept as it was (`ckvault tls renew --store DIR/..` renews it)",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn node_key(config_path: &Path, name: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let spool = config.store.local_dir().to_owned();
    ensure!(
        spool.is_dir(),
        "no store or spool at {} ({}'s [store]): run this where the node agent runs \
         (`kubectl -n ckvault exec POD -- ckvault deploy node-key --config FILE`), after it \
         has started once and made its key",
        spool.display(),
        config_path.display()
    );
    let node = Node::build(config, Open::Existing)?;
    if name {
        println!("{}", node.name());
    } else {
        print!("{}", node.local().verifying_key()?.to_pem()?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One pinned key: its node, its file name, its normalised PEM.
struct Pin {
    node: String,
    file: String,
    pem: String,
}

fn node_keys(trusted: &Path, out: &Path, namespace: &str) -> anyhow::Result<ExitCode> {
    ensure!(
        valid_node_name(namespace) && !namespace.contains(['.', '_']) && namespace.len() <= 63,
        "namespace {namespace:?} is not a Kubernetes namespace name"
    );
    crate::store::s3::keys::check_pins(trusted)?;
    let pins = read_pins(trusted)?;
    ensure!(
        !pins.is_empty(),
        "{} pins no key: lay it out as TRUSTED/NODE/KEY.pem (`ckvault deploy node-key` prints a node's key)",
        trusted.display()
    );
    let mut configmap = format!(
        "# Made by `ckvault deploy node-keys`: the server's pinned node keys.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ckvault-node-keys\n  \
         namespace: {namespace}\ndata:\n"
    );
    let mut items = String::new();
    for (i, pin) in pins.iter().enumerate() {
        writeln!(configmap, "  key-{i}.pem: |")?;
        for line in pin.pem.lines() {
            writeln!(configmap, "    {line}")?;
        }
        writeln!(
            items,
            "              - {{key: key-{i}.pem, path: {}/{}}}",
            pin.node, pin.file
        )?;
    }
    let patch = format!(
        "# Made by `ckvault deploy node-keys`: mounts ckvault-node-keys as the server's\n\
         # [store] trusted_keys = \"/etc/ckvault/node-keys\", one directory per node name.\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ckvault-server\n  \
         namespace: {namespace}\nspec:\n  template:\n    spec:\n      containers:\n        \
         - name: server\n          volumeMounts:\n            - {{name: node-keys, \
         mountPath: /etc/ckvault/node-keys, readOnly: true}}\n      volumes:\n        \
         - name: node-keys\n          configMap:\n            name: ckvault-node-keys\n            \
         items:\n{items}"
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, text) in [
        ("node-keys.yaml", &configmap),
        ("node-keys-patch.yaml", &patch),
    ] {
        let path = out.join(name);
        fsutil::replace_atomic(out, &path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    eprintln!(
        "ckvault: {} key(s) of {} node name(s); in the overlay's kustomization.yaml list \
         node-keys.yaml under resources and node-keys-patch.yaml under \
         patchesStrategicMerge, and set [store] trusted_keys = \"/etc/ckvault/node-keys\" \
         in the server's configuration",
        pins.len(),
        pins.iter()
            .map(|p| p.node.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every `TRUSTED/NODE/*.pem`, sorted, each parsed as a public key.
fn read_pins(trusted: &Path) -> anyhow::Result<Vec<Pin>> {
    let mut pins = Vec::new();
    let read_dir = |dir: &Path| {
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))
    };
    let mut nodes: Vec<_> = read_dir(trusted)?.collect::<Result<_, _>>()?;
    nodes.sort_by_key(|e| e.file_name());
    for entry in nodes {
        let node = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        ensure!(
            valid_node_name(&node),
            "{}: {node:?} is not a node name (letters, digits, '-', '.', '_'; not starting with '.')",
            trusted.display()
        );
        let mut files: Vec<_> = read_dir(&entry.path())?.collect::<Result<_, _>>()?;
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let file = f.file_name().to_string_lossy().into_owned();
            if !file.ends_with(".pem") {
                continue;
            }
            let path = f.path();
            ensure!(
                file.len() <= MAX_KEY_FILE_NAME
                    && !file.starts_with('.')
                    && file
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{}: rename it to letters, digits, '-', '.', '_' (at most {MAX_KEY_FILE_NAME}): it becomes a file name in the server's pod",
                path.display()
            );
            let text = read_small(&path)?;
            let key = VerifyingKey::from_pem(&text, &path)?;
            pins.push(Pin {
                node: node.clone(),
                file,
                pem: key.to_pem()?,
            });
            if pins.len() > MAX_PINNED_KEYS {
                bail!(
                    "{} pins more than {MAX_PINNED_KEYS} keys: more than one ConfigMap holds",
                    trusted.display()
                );
            }
        }
    }
    Ok(pins)
}

fn read_small(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file = fsutil::open_regular_nofollow(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    ensure!(
        text.len() as u64 <= MAX_KEY_FILE_BYTES,
        "{}: larger than {MAX_KEY_FILE_BYTES} bytes, not a public key",
        path.display()
    );
    Ok(text)
}
