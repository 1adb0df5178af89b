//! The `ckvault` command line: argument definitions and dispatch. Each subcommand family
//! lives in its own file and only wires library calls to terminal output.

mod audit;
mod common;
mod deploy;
mod diff;
mod fetch;
mod inspect;
mod key;
mod logging;
mod memsearch;
mod open;
mod output;
pub use output::error_text;
mod proxy;
mod records;
mod retention;
mod seal;
mod serve;
mod trust;
mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub(crate) use logging::LogFormat;

/// ckvault seals Kubernetes container checkpoints: every archive is hashed, compressed,
/// encrypted to named age/SSH recipients and recorded with a signed manifest, so memory
/// dumps never sit on a node in plaintext and every copy can be verified.
#[derive(Debug, Parser)]
#[command(name = "ckvault", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// How log lines go to stderr: `text` for a person, `json` (one object per line) for a
    /// log pipeline. Which pass: CKVAULT_LOG or RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CKVAULT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats for listing and inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned, human-readable text (control characters escaped).
    Table,
    /// JSON for scripts.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seal a checkpoint archive into a store and print its manifest as JSON.
    ///
    /// The archive (.tar, .tar.gz or .tar.zst) is inspected, then streamed once through
    /// SHA-256, zstd (unless already compressed) and age encryption into DIR; the signed
    /// manifest is written next to the blob. An archive that fails inspection is still
    /// sealed, and flagged `inspection.status = "rejected"` with the reason.
    Seal(seal::SealArgs),
    /// Describe a checkpoint archive without unpacking it (identity, image, CRIU process
    /// tree, memory size). Exits with status 3 when the archive is rejected as unsafe.
    Inspect(inspect::InspectArgs),
    /// Search a checkpoint's memory (an archive, or a sealed record decrypted in memory):
    /// every match with its pid, virtual address and context; nothing is written to disk.
    Memsearch(memsearch::MemsearchArgs),
    /// Compare two checkpoints of one container (archives or records): identity, processes,
    /// environment names, memory sizes, open files, sockets, mounts and root filesystem
    /// changes side by side. Environment values are never shown.
    Diff(diff::DiffArgs),
    /// List the records of a store, oldest first.
    Ls(records::LsArgs),
    /// Print one record's manifest (JSON).
    Show(records::ShowArgs),
    /// Copy a record's sealed blob (and its manifest, as FILE.manifest.json) out of the store.
    Export(records::ExportArgs),
    /// Decrypt a record with your age or SSH identity, verifying both digests; the output
    /// file appears only if everything matches.
    Open(open::OpenArgs),
    /// Re-hash a record's blob and check its manifest signature.
    Verify(records::VerifyArgs),
    /// Read and verify the store's tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Download a record from a ckvault server (resumable, verified; optionally opened).
    Fetch(fetch::FetchArgs),
    /// Watch the kubelet checkpoint directory: seal each new archive, remove the plaintext,
    /// leave a receipt. Also seals anything a crash left in the store's staging directory.
    Watch(watch::WatchArgs),
    /// Run the CRI proxy between kubelet and the runtime: every call passes through
    /// untouched except CheckpointContainer, whose archive is sealed as it is written.
    Proxy(proxy::ProxyArgs),
    /// Place a legal hold on a record (it cannot be deleted until released).
    Hold(retention::HoldArgs),
    /// Upload what the spool holds to the bucket now (`[store] kind = "s3"`), or show the
    /// background uploader's status.
    Upload(common::UploadArgs),
    /// Release a record's legal hold.
    Release(retention::HoldArgs),
    /// Delete a record (refused under legal hold).
    Delete(retention::DeleteArgs),
    /// Plan or apply the retention policy.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Serve records over HTTPS to authenticated, authorized, audited callers.
    Serve(serve::ServeArgs),
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(serve::TokenCommand),
    /// Manage this node's signing key in a shared bucket (rotation, audited).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Renew the generated TLS certificates.
    #[command(subcommand)]
    Tls(serve::TlsCommand),
    /// Validate policy files.
    #[command(subcommand)]
    Policy(serve::PolicyCommand),
    /// Make what a Kubernetes install needs (docs/deploy.md): TLS material, a node's
    /// public key, the server's pinned node keys as manifests.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
}

/// A `--store DIR` or `--config FILE` argument shared by the record commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArg {
    /// The store directory.
    #[arg(
        long,
        value_name = "DIR",
        env = "CKVAULT_STORE",
        default_value = "ckvault-data"
    )]
    pub store: PathBuf,
    /// A configuration file whose `[store]` names the store instead (local or S3 bucket).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "store")]
    pub config: Option<PathBuf>,
}

impl StoreArg {
    /// The configuration: `--config FILE`, or the embedded defaults with the store of
    /// `--store DIR`.
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        Ok(match &self.config {
            Some(cfg) => crate::config::Config::load(cfg)?,
            None => crate::config::Config::for_store(&self.store),
        })
    }

    /// Opens the local store of `--store` or `--config` (with its audit log); a bucket
    /// configuration is refused: `what` works on local files only.
    pub fn open_local(&self, what: &str) -> anyhow::Result<crate::store::LocalStore> {
        let config = self.config()?;
        if let (crate::config::StoreKind::S3, Some(cfg)) = (config.store.kind, &self.config) {
            anyhow::bail!(
                "`ckvault {what}` works on a local store; with a bucket use `ckvault fetch` \
                 against a ckvault server (or `ckvault ls`/`show`/`hold`/`release`/`delete` \
                 --config {})",
                cfg.display()
            );
        }
        let node = crate::wiring::Node::build(config, crate::wiring::Open::Existing)?;
        Ok(node.local().clone())
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    logging::init(cli.log_format);
    match cli.command {
        Command::Seal(a) => seal::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Memsearch(a) => memsearch::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Ls(a) => records::ls(a),
        Command::Show(a) => records::show(a),
        Command::Export(a) => records::export(a),
        Command::Open(a) => open::run(a),
        Command::Verify(a) => records::verify(a),
        Command::Audit(c) => audit::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Hold(a) => retention::hold(a),
        Command::Release(a) => retention::release(a),
        Command::Upload(a) => common::upload(a),
        Command::Delete(a) => retention::delete(a),
        Command::Retention(c) => retention::retention(c),
        Command::Proxy(a) => proxy::run(a),
        Command::Token(c) => serve::token(c),
        Command::Key(c) => key::run(c),
        Command::Tls(c) => serve::tls(c),
        Command::Policy(c) => serve::policy(c),
        Command::Deploy(c) => deploy::run(c),
    }
}
