//! Archive inspection without unpacking: identity, image, CRIU process tree and sizes of
//! a container checkpoint archive, read as a stream of 512-byte tar headers with every byte
//! treated as hostile.
//!
//! * [`inspect_seekable`]: a seekable input; for a plain tar, member data the inspector does
//!   not need (the memory pages, often many GiB) is seeked over, never read.
//! * [`inspect_reader`]: any stream (stdin, pipes, fuzzing); skipping is reading.
//! * `.tar.gz` and `.tar.zst` (sniffed from the first bytes) are decompressed as a stream
//!   with the output counted against [`Limits::max_decompressed_bytes`] and zstd windows
//!   capped at 128 MiB.
//!
//! The tar rules are documented in `tar.rs`, identity rules in `identity.rs`, CRIU image
//! parsing in [`criu`]. Every rejection is an [`InspectError`] with a stable
//! [`InspectError::code`]. Inspection reads only `config.dump`, `spec.dump`,
//! `checkpoint/pstree.img` and `checkpoint/core-<pid>.img`, each under a size cap. The
//! analyst's passes, run only on request, read more, under the same rules: [`deep`] (the
//! small CRIU images, `stats-dump`, the nested `rootfs-diff.tar`, `deleted.files`, and the
//! pages holding each process's arguments and environment) and [`memory`] (every page);
//! [`diff`] compares two deep views.
//!
//! A well-formed tar is a checkpoint only if it holds what every engine (CRI-O, containerd,
//! Podman) writes: a container description (`config.dump` or `spec.dump`) or CRIU's own
//! index of the dump (`checkpoint/inventory.img` or `checkpoint/pstree.img`). Anything
//! else (a tar of text files, a lone `checkpoint/pages-1.img`) is rejected as
//! `not-a-checkpoint` rather than reported with an empty identity.

pub mod criu;
pub mod deep;
pub mod diff;
mod error;
mod escape;
mod identity;
mod input;
mod json;
pub mod model;
mod pax;
mod render;
mod tar;

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::time::Duration;

pub use error::InspectError;
pub use escape::escape_control;
pub(crate) use escape::escape_control_keep_backslash;
pub use identity::naming_violations;
pub use model::*;
pub use render::render_table;

use input::{Deadline, Input, SeekInput};
use tar::{Kind, TarReader};

pub mod memory;

/// Caps that bound the work and memory one inspection may cost. Every field is public;
/// start from [`Limits::default`] and change what you need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most tar members (files and directories) accepted. Default 65,536.
    pub max_entries: u64,
    /// Most bytes of all member paths together. Default 4 MiB.
    pub max_path_bytes: u64,
    /// Largest PAX `x` or GNU `L`/`K` extension header data, checked before reading it.
    /// Default 1 MiB (as Go's archive/tar and libarchive).
    pub max_extension_bytes: u64,
    /// Largest JSON member (`config.dump`, `spec.dump`). Default 4 MiB.
    pub max_json_bytes: u64,
    /// Deepest JSON nesting, checked by a byte scanner before parsing. Default 64.
    pub max_json_depth: usize,
    /// Largest CRIU image read into memory (`pstree.img`, `core-<pid>.img`); a bigger one
    /// is rejected (`criu-image-too-large`). Default 4 MiB.
    pub max_criu_image_bytes: u64,
    /// Most processes in the CRIU process tree. Default 65,536.
    pub max_processes: usize,
    /// Most bytes a compressed archive may decompress to before inspection stops
    /// (`decompressed-too-large`). Default 512 GiB. Not applied to plain tar input.
    pub max_decompressed_bytes: u64,
    /// Wall-clock budget for one inspection (`timeout`). Default 120 s: a plain tar takes
    /// milliseconds, a compressed one is decompressed in full (about 1 GiB/s).
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            max_path_bytes: 4 << 20,
            max_extension_bytes: 1 << 20,
            max_json_bytes: 4 << 20,
            max_json_depth: 64,
            max_criu_image_bytes: 4 << 20,
            max_processes: 65_536,
            max_decompressed_bytes: 512 << 30,
            deadline: Duration::from_secs(120),
        }
    }
}

/// Inspects an archive in a seekable reader, from the reader's current position to its
/// end. The format is sniffed from the first bytes; a plain tar is read header by header
/// with member data seeked over (a 1 GiB archive takes milliseconds); a compressed one is
/// decompressed as a stream.
pub fn inspect_seekable<R: Read + Seek>(
    mut reader: R,
    limits: &Limits,
) -> Result<Inspection, InspectError> {
    let deadline = Deadline::start(limits.deadline);
    let start = reader.stream_position()?;
    let end = reader.seek(SeekFrom::End(0))?;
    let len = end.saturating_sub(start);
    reader.seek(SeekFrom::Start(start))?;
    let mut head = [0u8; 4];
    let got = read_head(&mut reader, &mut head)?;
    reader.seek(SeekFrom::Start(start))?;
    let format = ArchiveFormat::sniff(head.get(..got).unwrap_or_default());
    match format {
        ArchiveFormat::Tar => run(SeekInput::new(reader, start, len, deadline), format, limits),
        _ => inspect_stream(reader, format, limits, deadline),
    }
}

/// Inspects an archive from a non-seekable stream (stdin, a pipe, a byte slice). Member
/// data not needed is read and discarded.
pub fn inspect_reader<R: Read>(mut reader: R, limits: &Limits) -> Result<Inspection, InspectError> {
    let deadline = Deadline::start(limits.deadline);
    let mut head = [0u8; 4];
    let got = read_head(&mut reader, &mut head)?;
    let head = head.get(..got).unwrap_or_default();
    let format = ArchiveFormat::sniff(head);
    inspect_stream(
        Cursor::new(head.to_vec()).chain(reader),
        format,
        limits,
        deadline,
    )
}

/// A tar reader over an archive in a seekable reader (any format), from its position.
fn seekable_tar<'a, R: Read + Seek + 'a>(
    mut reader: R,
    limits: &'a Limits,
) -> Result<TarReader<'a, Box<dyn Input + 'a>>, InspectError> {
    let deadline = Deadline::start(limits.deadline);
    let start = reader.stream_position()?;
    let end = reader.seek(SeekFrom::End(0))?;
    let len = end.saturating_sub(start);
    reader.seek(SeekFrom::Start(start))?;
    let mut head = [0u8; 4];
    let got = read_head(&mut reader, &mut head)?;
    reader.seek(SeekFrom::Start(start))?;
    match ArchiveFormat::sniff(head.get(..got).unwrap_or_default()) {
        ArchiveFormat::Tar => Ok(TarReader::new(
            Box::new(SeekInput::new(reader, start, len, deadline)),
            limits,
        )),
        format => stream_tar(reader, format, limits, deadline),
    }
}

/// A tar reader over an archive arriving as a stream (any format).
fn reader_tar<'a, R: Read + 'a>(
    mut reader: R,
    limits: &'a Limits,
) -> Result<TarReader<'a, Box<dyn Input + 'a>>, InspectError> {
    let deadline = Deadline::start(limits.deadline);
    let mut head = [0u8; 4];
    let got = read_head(&mut reader, &mut head)?;
    let head = head.get(..got).unwrap_or_default();
    let format = ArchiveFormat::sniff(head);
    stream_tar(
        Cursor::new(head.to_vec()).chain(reader),
        format,
        limits,
        deadline,
    )
}

fn stream_tar<'a, R: Read + 'a>(
    reader: R,
    format: ArchiveFormat,
    limits: &'a Limits,
    deadline: Deadline,
) -> Result<TarReader<'a, Box<dyn Input + 'a>>, InspectError> {
    let input = input::decoded(reader, format, limits.max_decompressed_bytes, deadline)?;
    Ok(TarReader::new(input, limits))
}

/// Searches the memory of an archive in a seekable reader (see [`memory`]).
pub fn memsearch_seekable<R: Read + Seek>(
    reader: R,
    limits: &Limits,
    search: &memory::Search,
) -> Result<memory::Found, InspectError> {
    memory::search(&mut seekable_tar(reader, limits)?, limits, search)
}

/// Searches the memory of an archive arriving as a stream (a decrypted record).
pub fn memsearch_reader<R: Read>(
    reader: R,
    limits: &Limits,
    search: &memory::Search,
) -> Result<memory::Found, InspectError> {
    memory::search(&mut reader_tar(reader, limits)?, limits, search)
}

/// The deep view (see [`deep`]: per process command line, environment, open files and
/// sockets; mounts, annotations, dump statistics, root filesystem changes), from an
/// archive in a seekable reader.
pub fn deep_seekable<R: Read + Seek>(
    reader: R,
    limits: &Limits,
) -> Result<deep::DeepView, InspectError> {
    deep::read(&mut seekable_tar(reader, limits)?, limits)
}

/// The same from a stream (a decrypted record).
pub fn deep_reader<R: Read>(reader: R, limits: &Limits) -> Result<deep::DeepView, InspectError> {
    deep::read(&mut reader_tar(reader, limits)?, limits)
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the stream).
fn read_head<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, InspectError> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn inspect_stream<R: Read>(
    reader: R,
    format: ArchiveFormat,
    limits: &Limits,
    deadline: Deadline,
) -> Result<Inspection, InspectError> {
    let input = input::decoded(reader, format, limits.max_decompressed_bytes, deadline)?;
    run(input, format, limits)
}

/// What the walk over the members collects.
#[derive(Default)]
struct Found {
    summary: Summary,
    criu_images: Vec<Member>,
    processes: Option<Vec<Process>>,
    comms: BTreeMap<u32, String>,
    spec: Option<identity::SpecDump>,
    config: Option<identity::ConfigDump>,
    /// `checkpoint/inventory.img` or `checkpoint/pstree.img` was seen.
    has_criu_index: bool,
}

/// The pid of `checkpoint/core-<pid>.img`, if the name has that shape.
fn core_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("core-")?.strip_suffix(".img")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_pages(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

fn criu_err(member: &str, e: criu::CriuError) -> InspectError {
    match e {
        criu::CriuError::TooManyProcesses(limit) => InspectError::TooManyProcesses { limit },
        criu::CriuError::Malformed(reason) => InspectError::CriuMalformed {
            member: member.to_owned(),
            reason,
        },
    }
}

fn run<I: Input>(
    input: I,
    format: ArchiveFormat,
    limits: &Limits,
) -> Result<Inspection, InspectError> {
    let mut tar = TarReader::new(input, limits);
    let mut f = Found::default();
    while let Some(entry) = tar.next_entry()? {
        let s = &mut f.summary;
        s.member_count = s.member_count.saturating_add(1);
        if entry.kind == Kind::Dir {
            continue;
        }
        s.content_bytes = s.content_bytes.saturating_add(entry.size);
        let path = entry.path.as_str();
        if let Some(image) = path.strip_prefix("checkpoint/") {
            f.criu_images.push(Member {
                name: entry.path.clone(),
                size: entry.size,
            });
            if image == "inventory.img" || image == "pstree.img" {
                f.has_criu_index = true;
            }
            if is_pages(image) {
                s.memory_pages_bytes = s.memory_pages_bytes.saturating_add(entry.size);
            } else if image == "pstree.img" {
                let data = read_criu(&mut tar, path, entry.size, limits)?;
                let procs = criu::parse_pstree(&data, limits.max_processes)
                    .map_err(|e| criu_err(path, e))?;
                f.processes = Some(procs);
            } else if let Some(pid) = core_pid(image) {
                let data = read_criu(&mut tar, path, entry.size, limits)?;
                if let Some(comm) = criu::parse_core_comm(&data).map_err(|e| criu_err(path, e))? {
                    f.comms.insert(pid, comm);
                }
            }
        } else if path == "rootfs-diff.tar" {
            s.rootfs_diff_bytes = entry.size;
        } else if path == "config.dump" || path == "spec.dump" {
            if entry.size > limits.max_json_bytes {
                return Err(InspectError::JsonTooLarge {
                    member: entry.path.clone(),
                    size: entry.size,
                    limit: limits.max_json_bytes,
                });
            }
            let data = tar.read_data(path)?;
            if path == "config.dump" {
                f.config = Some(identity::parse_config(&data, limits)?);
            } else {
                f.spec = Some(identity::parse_spec(&data, limits)?);
            }
        }
    }
    if f.config.is_none() && f.spec.is_none() && !f.has_criu_index {
        return Err(InspectError::NotACheckpoint);
    }
    let identity = identity::resolve(f.spec.as_ref(), f.config.as_ref(), limits)?;
    let mut processes = f.processes.unwrap_or_default();
    for p in &mut processes {
        p.comm = f.comms.remove(&p.pid);
    }
    f.summary.process_count = processes.len() as u64;
    Ok(Inspection {
        format,
        identity,
        criu_images: f.criu_images,
        processes,
        summary: f.summary,
    })
}

/// Reads a CRIU image that is parsed (pstree, core) under the size cap.
fn read_criu<I: Input>(
    tar: &mut TarReader<'_, I>,
    path: &str,
    size: u64,
    limits: &Limits,
) -> Result<Vec<u8>, InspectError> {
    if size > limits.max_criu_image_bytes {
        return Err(InspectError::CriuImageTooLarge {
            member: path.to_owned(),
            size,
            limit: limits.max_criu_image_bytes,
        });
    }
    tar.read_data(path)
}
