//! What inspection learns about an archive: the types shared by the inspector, the
//! manifest and the CLI. Everything here is plain data, serialisable as JSON.

use serde::{Deserialize, Serialize};

/// How the archive bytes were packed as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveFormat {
    /// A plain (uncompressed) tar stream, as CRI-O and containerd write.
    #[serde(rename = "tar")]
    Tar,
    /// A gzip-compressed tar stream (`podman container checkpoint --compress gzip`).
    #[serde(rename = "tar+gzip")]
    TarGzip,
    /// A zstd-compressed tar stream (`podman container checkpoint --compress zstd`).
    #[serde(rename = "tar+zstd")]
    TarZstd,
}

impl ArchiveFormat {
    /// Guesses the format from the first bytes of a stream (magic numbers only).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::TarGzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::TarZstd
        } else {
            Self::Tar
        }
    }

    /// True when the bytes are already compressed (sealing then stores them as they are).
    pub fn is_compressed(self) -> bool {
        !matches!(self, Self::Tar)
    }

    /// The name used in manifests and human output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tar => "tar",
            Self::TarGzip => "tar+gzip",
            Self::TarZstd => "tar+zstd",
        }
    }
}

/// The container engine that wrote the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    /// CRI-O (`io.container.manager = cri-o`).
    #[serde(rename = "cri-o")]
    CriO,
    /// containerd's CRI plugin (`io.kubernetes.cri.*` annotations).
    #[serde(rename = "containerd")]
    Containerd,
    /// Podman (`io.container.manager = libpod`).
    #[serde(rename = "podman")]
    Podman,
}

impl Engine {
    /// The name used in manifests and human output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CriO => "cri-o",
            Self::Containerd => "containerd",
            Self::Podman => "podman",
        }
    }
}

/// Who the checkpointed container was, as the archive's own metadata says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Kubernetes namespace of the pod.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Container name inside the pod.
    pub container: Option<String>,
    /// Runtime container ID (64 hex digits for all three engines).
    pub container_id: Option<String>,
    /// Image name the container ran (as the user wrote it, e.g. `registry/app:1.2`).
    pub image: Option<String>,
    /// Resolved image reference or ID, when the engine recorded one.
    pub image_ref: Option<String>,
    /// Engine that wrote the archive.
    pub engine: Option<Engine>,
    /// OCI runtime (runc, crun, ...).
    pub runtime: Option<String>,
    /// When the container was created (RFC 3339, as recorded).
    pub created_at: Option<String>,
    /// When the checkpoint was taken (RFC 3339, as recorded), when the engine records it.
    pub checkpointed_at: Option<String>,
}

/// One process of the checkpointed process tree (from CRIU's pstree and core images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// PID inside the container's PID namespace.
    pub pid: u32,
    /// Parent PID (0 for the container's init).
    pub ppid: u32,
    /// Command name (`comm`, at most 16 bytes in the kernel), when core-PID.img had it.
    pub comm: Option<String>,
    /// Number of threads CRIU recorded for the process.
    pub threads: u32,
}

/// A member of the archive (used for the CRIU image list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Path inside the archive, normalised (no leading `./`).
    pub name: String,
    /// Size in bytes as recorded in the tar header.
    pub size: u64,
}

/// Sizes and counts, the figures a responder looks at first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of tar members (files and directories).
    pub member_count: u64,
    /// Sum of all member sizes (the uncompressed payload).
    pub content_bytes: u64,
    /// Bytes of raw memory pages (sum of `checkpoint/pages-*.img`).
    pub memory_pages_bytes: u64,
    /// Size of `rootfs-diff.tar` (the container's changed files).
    pub rootfs_diff_bytes: u64,
    /// Number of processes in the CRIU process tree.
    pub process_count: u64,
}

/// Everything inspection reports about one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// How the archive was packed.
    pub format: ArchiveFormat,
    /// The container's identity from spec.dump/config.dump.
    pub identity: Identity,
    /// The CRIU images under `checkpoint/`, in archive order.
    pub criu_images: Vec<Member>,
    /// The process tree, in pstree order.
    pub processes: Vec<Process>,
    /// Sizes and counts.
    pub summary: Summary,
}
