//! The store's signing key: made with the store, read, replaced by a rotation (the keys it
//! replaced kept under keys/retired/ to verify what they signed).

use super::*;

impl LocalStore {
    pub(super) fn create_key(&self) -> Result<(), StoreError> {
        let key = SigningKey::generate()?;
        let tmp = self.tmp_dir();
        let kio = |path: &Path, e| {
            StoreError::Key(KeyError::Io {
                path: path.display().to_string(),
                source: e,
            })
        };
        let pem = key.to_pem()?;
        let pub_pem = key.verifying_key().to_pem()?;
        fsutil::write_atomic_owned(&tmp, &self.key_path(), pem.as_bytes())
            .map_err(|e| kio(&self.key_path(), e))?;
        fsutil::write_atomic_owned(&tmp, &self.public_key_path(), pub_pem.as_bytes())
            .map_err(|e| kio(&self.public_key_path(), e))?;
        Ok(())
    }

    /// Loads the vault's signing key.
    pub fn signing_key(&self) -> Result<SigningKey, StoreError> {
        let path = self.key_path();
        let pem = read_small(&path, 64 << 10)?;
        Ok(SigningKey::from_pem(&pem, &path)?)
    }

    /// Loads the vault's public key from keys/signing.pub (what verifiers are handed).
    pub fn verifying_key(&self) -> Result<VerifyingKey, StoreError> {
        let path = self.public_key_path();
        let pem = read_small(&path, 64 << 10)?;
        Ok(VerifyingKey::from_pem(&pem, &path)?)
    }

    /// The key this store verifies its manifests with: derived from the signing key (a
    /// copy of a store without its private key uses keys/signing.pub), loaded once.
    pub fn manifest_key(&self) -> Result<&VerifyingKey, StoreError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = if self.key_path().exists() {
            self.signing_key()?.verifying_key()
        } else {
            self.verifying_key()?
        };
        Ok(self.key.get_or_init(|| key))
    }

    fn retired_path(&self, key_id: &str) -> PathBuf {
        let safe: String = key_id
            .chars()
            .map(|c| match c {
                '/' => '_',
                '+' => '-',
                ':' => '.',
                c => c,
            })
            .collect();
        self.keys_dir().join("retired").join(format!("{safe}.pub"))
    }

    /// The public key with `key_id` among this store's current and retired keys (what
    /// its earlier manifests and audit heads are signed with).
    pub fn key_by_id(&self, key_id: &str) -> Result<Option<VerifyingKey>, StoreError> {
        let current = self.manifest_key()?;
        if current.key_id() == key_id {
            return Ok(Some(current.clone()));
        }
        let path = self.retired_path(key_id);
        match read_small(&path, 64 << 10) {
            Ok(pem) => {
                let k = VerifyingKey::from_pem(&pem, &path)?;
                return Ok((k.key_id() == key_id).then_some(k));
            }
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
        // Rotated by another process since this one loaded its key.
        if self.key_path().exists() {
            let k = self.signing_key()?.verifying_key();
            if k.key_id() == key_id {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The current key and every retired one.
    pub fn all_keys(&self) -> Result<Vec<VerifyingKey>, StoreError> {
        let mut keys = vec![self.manifest_key()?.clone()];
        let dir = self.keys_dir().join("retired");
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("pub") {
                    continue;
                }
                if let Ok(pem) = read_small(&path, 64 << 10) {
                    keys.push(VerifyingKey::from_pem(&pem, &path)?);
                }
            }
        }
        Ok(keys)
    }

    /// Replaces the signing key with `new` (`ckvault key rotate`): the old public key is
    /// kept in keys/retired/ so what it signed keeps verifying, the old private key is
    /// overwritten. Returns the old public key.
    pub fn replace_signing_key(&self, new: &SigningKey) -> Result<VerifyingKey, StoreError> {
        let old = self.signing_key()?.verifying_key();
        let retired = self.keys_dir().join("retired");
        fsutil::ensure_private_dir(&retired).map_err(|e| StoreError::io(&retired, e))?;
        let path = self.retired_path(&old.key_id());
        if !path.exists() {
            fsutil::write_atomic(&retired, &path, old.to_pem()?.as_bytes())
                .map_err(|e| StoreError::io(&path, e))?;
        }
        let tmp = self.tmp_dir();
        // The private key first: a crash before the public one is repaired at open.
        fsutil::replace_atomic_owned(&tmp, &self.key_path(), new.to_pem()?.as_bytes())
            .map_err(|e| StoreError::io(&self.key_path(), e))?;
        let pub_path = self.public_key_path();
        fsutil::replace_atomic_owned(&tmp, &pub_path, new.verifying_key().to_pem()?.as_bytes())
            .map_err(|e| StoreError::io(&pub_path, e))?;
        Ok(old)
    }
}
