//! Which vault key a client command trusts for a manifest that did not come from a local
//! store (`fetch`, `open FILE`): `--public-key`, or a key pinned by `fetch` on first use
//! of a server (`--pinned-keys`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::client::Pins;
use crate::fsutil;
use crate::manifest::{Manifest, VerifyingKey};

/// The trust options of `fetch` and `open FILE`.
#[derive(Debug, clap::Args)]
pub(super) struct TrustArgs {
    /// The vault's public key (SPKI PEM: the store's keys/signing.pub, obtained out of
    /// band); the manifest must verify with it. Without it, a key pinned by `fetch`.
    #[arg(long, value_name = "PEM")]
    public_key: Option<PathBuf>,
    /// Where `fetch` pins each server's signing key on first use, and where `open FILE`
    /// looks for it [default: $XDG_CONFIG_HOME/ckvault/pinned-keys or
    /// ~/.config/ckvault/pinned-keys].
    #[arg(long, value_name = "DIR", env = "CKVAULT_PINNED_KEYS")]
    pinned_keys: Option<PathBuf>,
}

impl TrustArgs {
    /// The key given with `--public-key`, if any.
    pub(super) fn public_key(&self) -> anyhow::Result<Option<VerifyingKey>> {
        let Some(path) = &self.public_key else {
            return Ok(None);
        };
        let mut pem = String::new();
        fsutil::open_regular(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(64 << 10)
            .read_to_string(&mut pem)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(VerifyingKey::from_pem(&pem, path)?))
    }

    /// The pinned keys.
    pub(super) fn pins(&self) -> anyhow::Result<Pins> {
        match self.pinned_keys.clone().or_else(Pins::default_dir) {
            Some(dir) => Ok(Pins::new(dir)),
            None => bail!("no HOME to keep pinned keys in: pass --pinned-keys DIR or --public-key"),
        }
    }

    /// Verifies the signature of a manifest read from `mpath` (beside an exported or
    /// fetched blob): with `--public-key`, else with the pinned key it names.
    pub(super) fn verify_file_manifest(
        &self,
        manifest: &Manifest,
        mpath: &Path,
    ) -> anyhow::Result<()> {
        let unverified = || format!("the manifest {} is not trusted", mpath.display());
        if let Some(key) = self.public_key()? {
            key.verify(manifest).with_context(unverified)?;
            return Ok(());
        }
        let key_id = manifest
            .signature
            .as_ref()
            .map(|s| s.key_id.clone())
            .with_context(|| format!("{}: manifest is not signed", unverified()))?;
        match self.pins()?.find(&key_id) {
            Some((dir, key)) => {
                key.verify(manifest).with_context(unverified)?;
                eprintln!(
                    "ckvault: manifest signature verified with key {key_id}, pinned in {}",
                    dir.display()
                );
                Ok(())
            }
            None => bail!(
                "cannot check the signature of {}: it is signed by key {key_id}, which is not pinned here; pass --public-key VAULT.pub (the vault's keys/signing.pub), or fetch the record with `ckvault fetch`, which pins the server's key",
                mpath.display()
            ),
        }
    }
}
