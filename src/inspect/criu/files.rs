//! Open files: which descriptor table a process uses (`ids-<pid>.img`), its working
//! directory and root (`fs-<pid>.img`), the descriptors (`fdinfo-<id>.img`) and what
//! `files.img` says of each file (a path, a pipe, a socket, or only its type).

use super::proto::{
    CriuError, bad, bytes_of, entries, fields, name_of, only_entry, opt_u32, req_u32,
};
use super::sockets::{SocketImage, socket_of};

/// Magic of `ids-<pid>.img` (`TaskKobjIdsEntry { files_id = 2 }`).
pub const IDS_MAGIC: u32 = 0x5443_2030;
/// Magic of `fdinfo-<files_id>.img` (`FdinfoEntry { id = 1; flags = 2; type = 3; fd = 4 }`).
pub const FDINFO_MAGIC: u32 = 0x5621_3732;
/// Magic of `files.img` (`FileEntry { type = 1; id = 2; reg = 3; isk = 4; psk = 6;
/// nlsk = 7; usk = 16; pipe = 18 }`).
pub const FILES_MAGIC: u32 = 0x5630_3138;
/// Magic of `fs-<pid>.img` (`FsEntry { cwd_id = 1; root_id = 2 }`).
pub const FS_MAGIC: u32 = 0x5140_3912;

/// The name CRIU gives an fd type (`fd_types` in `images/fdinfo.proto`).
pub fn fd_type_name(t: u32) -> String {
    const NAMES: [&str; 20] = [
        "UND",
        "REG",
        "PIPE",
        "FIFO",
        "INETSK",
        "UNIXSK",
        "EVENTFD",
        "EVENTPOLL",
        "INOTIFY",
        "SIGNALFD",
        "PACKETSK",
        "TTY",
        "FANOTIFY",
        "NETLINKSK",
        "NS",
        "TUNF",
        "EXT",
        "TIMERFD",
        "MEMFD",
        "BPFMAP",
    ];
    match t {
        65534 => "CTL_TTY".into(),
        65535 => "AUTOFS_PIPE".into(),
        _ => NAMES
            .get(t as usize)
            .map_or_else(|| format!("TYPE{t}"), |n| (*n).to_owned()),
    }
}

/// A process's `files_id` from `ids-<pid>.img`: which `fdinfo-<id>.img` holds its fds.
pub fn parse_files_id(img: &[u8]) -> Result<u32, CriuError> {
    req_u32(&only_entry(img, IDS_MAGIC, "ids")?, 2, "files_id")
}

/// A process's working directory and root: the file ids in `fs-<pid>.img`.
pub fn parse_fs(img: &[u8]) -> Result<(u32, u32), CriuError> {
    let f = only_entry(img, FS_MAGIC, "fs")?;
    Ok((req_u32(&f, 1, "cwd_id")?, req_u32(&f, 2, "root_id")?))
}

/// One open descriptor of `fdinfo-<id>.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The descriptor number.
    pub fd: u32,
    /// The file's id in `files.img`.
    pub id: u32,
    /// Its type (see [`fd_type_name`]).
    pub kind: u32,
}

/// The descriptors of `fdinfo-<id>.img`, in image order (at most `max`).
pub fn parse_fdinfo(img: &[u8], max: usize) -> Result<Vec<FdInfo>, CriuError> {
    let ents = entries(img, FDINFO_MAGIC)?;
    if ents.len() > max {
        return Err(bad(format!("more than {max} descriptors")));
    }
    ents.into_iter()
        .map(|e| {
            let f = fields(e)?;
            Ok(FdInfo {
                id: req_u32(&f, 1, "fdinfo id")?,
                kind: req_u32(&f, 3, "fdinfo type")?,
                fd: req_u32(&f, 4, "fd")?,
            })
        })
        .collect()
}

/// What `files.img` says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDetail {
    /// A regular file or directory, by path.
    Reg(Vec<u8>),
    /// A pipe, by pipe id (the inode).
    Pipe(u32),
    /// A socket (`INETSK`, `UNIXSK`, `PACKETSK`, `NETLINKSK`).
    Socket(SocketImage),
    /// Anything else.
    Other,
}

/// One entry of `files.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileImage {
    /// Its type (see [`fd_type_name`]).
    pub kind: u32,
    /// Its id, as fdinfo and fs images name it.
    pub id: u32,
    /// What is known of it.
    pub detail: FileDetail,
}

/// The entries of `files.img` (at most `max`).
pub fn parse_files(img: &[u8], max: usize) -> Result<Vec<FileImage>, CriuError> {
    let ents = entries(img, FILES_MAGIC)?;
    if ents.len() > max {
        return Err(bad(format!("more than {max} files")));
    }
    ents.into_iter()
        .map(|e| {
            let f = fields(e)?;
            let kind = req_u32(&f, 1, "file type")?;
            let id = req_u32(&f, 2, "file id")?;
            let sub = |n: u32| bytes_of(&f, n);
            let detail = match kind {
                1 => match sub(3) {
                    Some(reg) => FileDetail::Reg(name_of(&fields(reg)?, 6, "file name")?),
                    None => FileDetail::Other,
                },
                2 => match sub(18) {
                    Some(p) => FileDetail::Pipe(opt_u32(&fields(p)?, 2, "pipe_id")?),
                    None => FileDetail::Other,
                },
                4 | 5 | 10 | 13 => {
                    let field = match kind {
                        4 => 4,
                        5 => 16,
                        10 => 6,
                        _ => 7,
                    };
                    match sub(field) {
                        Some(body) => FileDetail::Socket(socket_of(kind, body)?),
                        None => FileDetail::Other,
                    }
                }
                _ => FileDetail::Other,
            };
            Ok(FileImage { kind, id, detail })
        })
        .collect()
}
