//! `ckvault fetch`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::output;
use crate::client::{Client, ClientOptions, Trust};
use crate::manifest::RecordId;
use crate::seal::open::{Identities, open_to_file};

/// Arguments of `ckvault fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Record ID.
    id: RecordId,
    /// Server base URL.
    #[arg(
        long,
        value_name = "URL",
        env = "CKVAULT_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    server: String,
    /// CA certificate to trust (PEM).
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// File holding a bearer token.
    #[arg(long, value_name = "F", conflicts_with = "cert")]
    token_file: Option<PathBuf>,
    /// Stated purpose of the download (recorded in the server's audit log).
    #[arg(long)]
    purpose: Option<String>,
    /// Where to write the sealed blob (an interrupted download resumes from OUT.partial).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Also open the blob with this identity into FILE.tar (plaintext verified).
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    #[command(flatten)]
    trust: super::trust::TrustArgs,
}

/// Runs `ckvault fetch`.
pub(super) fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&ClientOptions {
        server: args.server.clone(),
        cacert: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        token_file: args.token_file.clone(),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = args.trust.public_key()?;
    let pins = args.trust.pins()?;
    let manifest = runtime.block_on(async {
        let (manifest, trust) = client
            .trusted_manifest(&args.id, key.as_ref(), &pins)
            .await?;
        match trust {
            Trust::Given => {}
            Trust::Pinned(dir) => eprintln!(
                "ckvault: manifest signature verified with the key pinned for {} ({})",
                client.server(),
                dir.display()
            ),
            Trust::PinnedNow { path, key_id } => eprintln!(
                "ckvault: first use of {}: pinned its signing key {key_id} ({}); manifests from it must verify with this key from now on. Compare it with the vault's keys/signing.pub, or pass --public-key",
                client.server(),
                path.display()
            ),
        }
        let bar = output::progress(manifest.sealed.size, "downloading");
        client
            .download(
                &manifest,
                &args.output,
                args.purpose.as_deref(),
                &|done, _| bar.set_position(done),
            )
            .await?;
        bar.finish_and_clear();
        anyhow::Ok(manifest)
    })?;
    eprintln!(
        "fetched {} -> {} (manifest signature and sealed sha256 {} verified)",
        manifest.id,
        args.output.display(),
        manifest.sealed.sha256
    );
    // Keep the manifest beside the blob, as `export` does, for offline verification.
    let mpath = super::records::manifest_path_for(&args.output);
    if !mpath.exists() {
        crate::fsutil::write_atomic(
            mpath
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new(".")),
            &mpath,
            &manifest.to_json_pretty()?,
        )
        .with_context(|| format!("writing {}", mpath.display()))?;
    }
    if let Some(identity) = &args.identity {
        let ids = Identities::from_file(identity)?;
        let mut out = args.output.clone().into_os_string();
        out.push(".tar");
        let out = PathBuf::from(out);
        let blob = crate::fsutil::open_nofollow(&args.output)?;
        let blob_len = blob.metadata()?.len();
        let digest = open_to_file(blob, blob_len, &manifest, &ids, &out)?;
        eprintln!(
            "opened -> {} (plaintext sha256 {} verified)",
            out.display(),
            digest.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}
