//! Receipts: what is left where a plaintext checkpoint was: the record ID, both digests and
//! where to download the sealed record. Written atomically, mode 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::manifest::Manifest;

/// Suffix of receipt files next to where an archive was.
pub(crate) const SUFFIX: &str = ".ckvault-receipt.json";

/// A receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    /// Always `ckvault.dev/receipt/v1`.
    pub schema: String,
    /// Record ID.
    pub id: String,
    /// Namespace/pod/container of the record.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// SHA-256 of the archive that was here.
    pub plaintext_sha256: String,
    /// Its size.
    pub plaintext_size: u64,
    /// SHA-256 of the sealed blob.
    pub sealed_sha256: String,
    /// Inspection outcome (`ok` or the rejection code).
    pub inspection: String,
    /// API path of the sealed blob.
    pub download: String,
}

impl Receipt {
    /// The receipt for a sealed record.
    pub(crate) fn for_manifest(m: &Manifest) -> Self {
        Self {
            schema: "ckvault.dev/receipt/v1".into(),
            id: m.id.to_string(),
            namespace: m.namespace.clone(),
            pod: m.pod.clone(),
            container: m.container.clone(),
            plaintext_sha256: m.plaintext.sha256.clone(),
            plaintext_size: m.plaintext.size,
            sealed_sha256: m.sealed.sha256.clone(),
            inspection: m.inspection.code.clone().unwrap_or_else(|| "ok".into()),
            download: format!("/v1/checkpoints/{}/archive", m.id),
        }
    }

    /// Writes the receipt atomically to `path` (0600), replacing nothing.
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fsutil::write_atomic(dir, path, &bytes)
    }
}

/// Where the receipt for an archive at `archive` goes.
pub(crate) fn path_for(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(SUFFIX);
    PathBuf::from(s)
}
