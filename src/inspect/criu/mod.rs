//! CRIU images: the process tree from `checkpoint/pstree.img` and each process's command
//! name from `checkpoint/core-<pid>.img`, read with a tiny bounded protobuf reader of our
//! own (no code generation, no allocation proportional to declared lengths).
//!
//! Image layout: a 4-byte little-endian `IMG_COMMON_MAGIC` (0x54564319), the image's own
//! 4-byte magic (pstree 0x50273030, core 0x55053847), then entries, each a u32 LE length
//! and a protobuf message. Field numbers (CRIU `images/pstree.proto`, `images/core.proto`,
//! checked against a real core image): `PstreeEntry { pid = 1; ppid = 2; pgid = 3;
//! sid = 4; repeated threads = 5 }`, `CoreEntry { tc = 3 }`, `TaskCoreEntry { comm = 6 }`.
//! Unknown fields are skipped; groups, invalid wire types, overlong varints and lengths
//! past the end are malformed. Thread core images carry no `tc` and so no command name.
//!
//! By job: `proto` (the framing and the protobuf reader every image shares), `process`
//! (the process tree and command names), `files` (descriptors and files), `sockets`
//! (socket entries and queued packets), `stats` (dump statistics).

mod files;
mod process;
mod proto;
mod sockets;
mod stats;
#[cfg(test)]
mod tests;

pub use self::files::{
    FDINFO_MAGIC, FILES_MAGIC, FS_MAGIC, FdInfo, FileDetail, FileImage, IDS_MAGIC, fd_type_name,
    parse_fdinfo, parse_files, parse_files_id, parse_fs,
};
pub use self::process::{CORE_MAGIC, MAX_COMM_BYTES, PSTREE_MAGIC, parse_core_comm, parse_pstree};
pub use self::proto::{CriuError, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, MAX_NAME_BYTES};
pub(crate) use self::proto::{entries_of, submessages, varint_fields};
pub use self::sockets::{SK_QUEUES_MAGIC, SocketImage, parse_sk_queues};
pub use self::stats::{DumpStatistics, STATS_MAGIC, parse_stats};
