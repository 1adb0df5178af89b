//! Careful file-system primitives: private directories, files created exclusively without
//! following symlinks, inputs opened only if they are regular files (a FIFO or a device
//! named as input is refused instead of hanging or reading forever), and atomic
//! publication (write to a temporary name, fsync, rename, fsync the directory), and
//! [`NewFile`], an output that has no name at all until it is complete (a failed or killed
//! writer leaves nothing), and [`visible_writer`] (does a process hold a file open for
//! writing). Everything that touches plaintext or sealed records uses these.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` as a directory private to this user (0700), or checks an existing one.
///
/// An existing path must be a real directory (not a symlink) owned by the current user;
/// its mode is tightened to 0700 if it was looser.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                return Err(io::Error::other(format!(
                    "{} exists but is not a directory (symlinks are refused)",
                    path.display()
                )));
            }
            let uid = current_uid();
            if meta.uid() != uid {
                return Err(io::Error::other(format!(
                    "{} is owned by uid {}, not by this user (uid {uid}); refusing to keep private data there",
                    path.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(path)?;
            // `recursive` applies the mode to every created level only through umask;
            // make the leaf exact.
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

fn current_uid() -> u32 {
    // The owner of a file we just could create is us; /proc/self is always ours.
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// Creates a new file readable and writable only by its owner (0600), refusing to follow a
/// symlink or to reuse an existing file (O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates a named pipe at `path` (0600; fails if anything exists there) and checks that
/// what is there now is that pipe, ours.
pub fn create_private_fifo(path: &Path) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )?;
    let meta = fs::symlink_metadata(path)?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_fifo() || meta.uid() != current_uid() {
        return Err(io::Error::other(format!(
            "{} is not the pipe just made",
            path.display()
        )));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Opens the read end of the named pipe at `path`, blocking until a writer opens it, and
/// asks for a pipe buffer of `size` bytes (best effort).
pub fn open_fifo_reader(path: &Path, size: usize) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&f, size);
    Ok(f)
}

/// Unblocks a reader waiting in [`open_fifo_reader`] when no writer will ever come: opens
/// the write end without blocking and closes it (the reader then sees an empty stream).
pub fn release_fifo_reader(path: &Path) {
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
}

/// Reads a leftover named pipe to its end on a thread of its own, discarding the bytes: a
/// writer still holding it (a runtime whose reader died) is released instead of blocking
/// forever. Returns at once; a pipe without writers ends immediately.
pub fn drain_fifo(path: &Path) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&f)?;
    rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK)?;
    std::thread::Builder::new()
        .name("ckvault-drain".into())
        .spawn(move || {
            let _ = io::copy(&mut f, &mut io::sink());
        })?;
    Ok(())
}

/// Opens an existing file for reading without following a final symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a file the user named as input (archive, recipients, identity, key, policy,
/// token, manifest), following symlinks, refusing anything but a regular file.
///
/// The open itself never blocks: it uses `O_NONBLOCK` (a FIFO without a writer would
/// otherwise hang `open`), then `fstat`s the opened file and refuses a FIFO, socket or
/// device with an [`io::ErrorKind::InvalidInput`] error saying what it is, and finally
/// clears `O_NONBLOCK` so reads of the regular file behave normally.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_flags(path, 0)
}

/// [`open_regular`] that also refuses a final symlink (`O_NOFOLLOW`), for inputs the store
/// or a capture path hands over.
pub fn open_regular_nofollow(path: &Path) -> io::Result<File> {
    open_regular_flags(path, libc::O_NOFOLLOW)
}

fn open_regular_flags(path: &Path, extra: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({}): ckvault reads its inputs only from regular files",
                describe_type(kind)
            ),
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// Reads a whole input file that must be a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a whole input file that must be a regular file (see [`open_regular`]) as UTF-8.
pub fn read_regular_to_string(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

fn describe_type(kind: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// The PID of a process holding the file `meta` describes open for writing (or for reading
/// and writing), among the processes this one can see in `/proc`: its own PID namespace and
/// those below it. A writer in another PID namespace (a node agent without `hostPID` does
/// not see the runtime), or a system without `/proc`, is not seen: `None` means "none
/// seen", not "none". Costs a `stat` per open descriptor of every visible process.
pub fn visible_writer(meta: &fs::Metadata) -> Option<u32> {
    use std::io::Read;
    let want = (meta.dev(), meta.ino());
    let procs = fs::read_dir("/proc").ok()?;
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue; // gone, or not ours to look at
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::metadata(fd.path()) else {
                continue;
            };
            if (target.dev(), target.ino()) != want {
                continue;
            }
            // `flags:` in fdinfo is the open flags in octal; the access mode is the low bits.
            let mut info = String::new();
            let read = File::open(proc_entry.path().join("fdinfo").join(fd.file_name()))
                .and_then(|f| f.take(4096).read_to_string(&mut info));
            let flags = read.ok().and_then(|_| {
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
            match flags {
                Some(f) if f & (libc::O_ACCMODE as u32) == libc::O_RDONLY as u32 => {}
                // Writable, or cannot tell: count it as a writer.
                _ => return Some(pid),
            }
        }
    }
    None
}

/// fsyncs a directory so that renames and unlinks inside it are durable.
/// An empty path (the parent of a bare file name) means the current directory.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    File::open(path)?.sync_all()
}

/// A file being written under a temporary name, published by [`AtomicFile::commit`].
///
/// Dropping it without committing removes the temporary file, so an error or a panic
/// never leaves a half-written file visible under its final name.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates `tmp` (exclusively, 0600, no symlink following) for writing.
    pub fn create(tmp: PathBuf) -> io::Result<Self> {
        let file = create_private_file(&tmp)?;
        Ok(Self {
            tmp,
            file: Some(file),
        })
    }

    /// The open file.
    pub fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("atomic file already committed"))
    }

    /// The temporary path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// fsyncs the data and closes the file, keeping it under its temporary name.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        Ok(())
    }

    /// fsyncs, renames to `dest` (replacing nothing: fails if `dest` exists) and fsyncs the
    /// destination directory.
    pub fn commit(mut self, dest: &Path) -> io::Result<()> {
        self.sync()?;
        rename_noreplace(&self.tmp, dest)?;
        self.tmp = PathBuf::new();
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }

    /// fsyncs and renames over `dest`, replacing it atomically (state files that are
    /// rewritten: a reader sees the old or the new content, never a mix).
    pub fn commit_replace(mut self, dest: &Path) -> io::Result<()> {
        self.sync()?;
        fs::rename(&self.tmp, dest)?;
        self.tmp = PathBuf::new();
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Renames to `dest` without the final directory fsync (the caller syncs once for
    /// several files). The data itself is fsynced.
    pub fn commit_deferred(mut self, dest: &Path) -> io::Result<()> {
        self.sync()?;
        rename_noreplace(&self.tmp, dest)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A new output file that has no name in its directory until [`NewFile::commit`] links it
/// under its final one (`O_TMPFILE`): an error, a panic or a `kill -9` of the writer leaves
/// nothing behind, not even a partial file to clean up. On a file system without
/// `O_TMPFILE` (or without `/proc` to link it through) it falls back to a hidden
/// `.NAME.PID.partial` beside the destination, removed on drop ([`AtomicFile`]).
#[derive(Debug)]
pub struct NewFile {
    inner: NewFileInner,
    dir: PathBuf,
}

#[derive(Debug)]
enum NewFileInner {
    Unnamed(File),
    Named(AtomicFile),
}

impl NewFile {
    /// Starts a new file to be published as `dest` (0600). Fails with `AlreadyExists` when
    /// `dest` exists (nothing is ever replaced).
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::other("the output path has no file name"))?;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing file",
            ));
        }
        if Path::new("/proc/self/fd").is_dir() {
            use rustix::fs::{Mode, OFlags};
            match rustix::fs::open(
                &dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => {
                    return Ok(Self {
                        inner: NewFileInner::Unnamed(File::from(fd)),
                        dir,
                    });
                }
                // The file system has no O_TMPFILE: a named partial file instead.
                Err(e)
                    if e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::ISDIR
                        || e == rustix::io::Errno::INVAL => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.partial", std::process::id()));
        Ok(Self {
            inner: NewFileInner::Named(AtomicFile::create(dir.join(tmp_name))?),
            dir,
        })
    }

    /// The open file.
    pub fn file(&mut self) -> io::Result<&mut File> {
        match &mut self.inner {
            NewFileInner::Unnamed(f) => Ok(f),
            NewFileInner::Named(a) => a.file(),
        }
    }

    /// The directory the file will be published in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes an unprivileged writer can still write on the file's file system.
    pub fn available(&mut self) -> io::Result<u64> {
        available_on(self.file()?)
    }

    /// Fails with `StorageFull` (saying how much is needed and free) unless `needed` bytes
    /// fit on the file's file system.
    pub fn ensure_room(&mut self, needed: u64) -> io::Result<()> {
        let available = self.available()?;
        if available < needed {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{needed} bytes are needed and only {available} are free in {}; nothing was written",
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// fsyncs the data, gives the file its name `dest` (failing with `AlreadyExists` rather
    /// than replacing anything) and fsyncs the directory.
    pub fn commit(self, dest: &Path) -> io::Result<()> {
        match self.inner {
            NewFileInner::Unnamed(file) => {
                file.sync_all()?;
                use std::os::fd::AsRawFd;
                let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    fd_path.as_str(),
                    rustix::fs::CWD,
                    dest,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )?;
                fsync_dir(&self.dir)
            }
            NewFileInner::Named(a) => a.commit(dest),
        }
    }
}

/// Bytes an unprivileged writer can still write on the file system holding `file`.
pub fn available_on(file: &File) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(file)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
///
/// Uses a hard link plus unlink, which is atomic for the destination on every local Linux
/// file system and never overwrites.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Writes `bytes` to `dest` atomically via a temporary file `NAME.PID.tmp` in `tmp_dir`
/// (any directory: a leftover of a crash there is nobody's to clean).
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes, &std::process::id().to_string())?.commit(dest)
}

/// Like [`write_atomic`], but replaces `dest` if it exists.
pub fn replace_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes, &std::process::id().to_string())?.commit_replace(dest)
}

/// [`write_atomic`] through a store's `tmp/`: the temporary name carries this process's
/// owner token ([`owner_token`]), so the store's recovery knows whether its writer lives.
pub fn write_atomic_owned(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes, &owner_token(tmp_dir)?)?.commit(dest)
}

/// [`replace_atomic`] through a store's `tmp/` (see [`write_atomic_owned`]).
pub fn replace_atomic_owned(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes, &owner_token(tmp_dir)?)?.commit_replace(dest)
}

/// Writes `bytes` to a fresh temporary file `NAME.TAG.tmp` in `tmp_dir`.
fn staged(tmp_dir: &Path, dest: &Path, bytes: &[u8], tag: &str) -> io::Result<AtomicFile> {
    use std::io::Write;
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::other("destination has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{tag}.tmp"));
    let mut file = AtomicFile::create(tmp_dir.join(tmp_name))?;
    file.file()?.write_all(bytes)?;
    Ok(file)
}

/// Opens (creating, 0600) a lock file for `flock`, without following a symlink.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// This process's token for the temporary files it writes into `lock_dir` (a store's
/// `tmp/`): temporary names carry it, and `lock_dir/owner.TOKEN.lock` stays locked
/// (`flock`) for as long as the process lives. Whether the writer of a temporary file is
/// alive is then [`owner_alive`], a question the kernel answers the same way in every PID
/// namespace (a PID does not: another container's process can have any PID, or ours).
pub fn owner_token(lock_dir: &Path) -> io::Result<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static TOKEN: OnceLock<String> = OnceLock::new();
    static HELD: Mutex<Option<HashMap<PathBuf, File>>> = Mutex::new(None);
    let token = match TOKEN.get() {
        Some(t) => t.clone(),
        None => {
            let mut raw = [0u8; 8];
            getrandom::fill(&mut raw).map_err(io::Error::from)?;
            let t = format!("o{}", hex::encode(raw));
            TOKEN.get_or_init(|| t).clone()
        }
    };
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    let lock_path = lock_dir.join(format!("owner.{token}.lock"));
    if !held.contains_key(lock_dir) || !lock_path.exists() {
        let file = fresh_owner_lock(lock_dir, &token, &lock_path)?;
        held.insert(lock_dir.to_path_buf(), file);
    }
    Ok(token)
}

/// Creates `lock_dir/owner.TOKEN.lock`, locked before it gets its name, so nobody can
/// ever see it unlocked while we live. Between creating `.owner.TOKEN.lock.new` and
/// locking it, another process's [`remove_dead_owners`] may find it unlocked and
/// remove it (it cannot tell a file being born from a dead owner's leftover): the rename
/// then finds nothing, and the file is made again.
fn fresh_owner_lock(lock_dir: &Path, token: &str, lock_path: &Path) -> io::Result<File> {
    const ATTEMPTS: usize = 16;
    let fresh = lock_dir.join(format!(".owner.{token}.lock.new"));
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let _ = fs::remove_file(&fresh);
        let file = match create_private_file(&fresh) {
            Ok(f) => f,
            // Someone else's cleanup raced our remove_file: try again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        file.lock()?;
        match fs::rename(&fresh, lock_path) {
            Ok(()) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not create an owner lock file")))
}

/// Whether the process that named a temporary file in `lock_dir` with `token` is alive:
/// its lock file is still locked. Tokens of digits only are PIDs (names written before
/// owner tokens): alive if that PID exists here. No lock file means no live owner.
pub fn owner_alive(lock_dir: &Path, token: &str) -> bool {
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        return Path::new(&format!("/proc/{token}")).exists();
    }
    let lock_path = lock_dir.join(format!("owner.{token}.lock"));
    match open_nofollow(&lock_path) {
        Ok(f) => match f.try_lock() {
            Ok(()) => false,
            Err(fs::TryLockError::WouldBlock) => true,
            Err(fs::TryLockError::Error(_)) => true, // cannot tell: keep its files
        },
        Err(_) => false,
    }
}

/// Removes the lock files in `lock_dir` whose owners are gone (after their temporary
/// files were dealt with).
pub fn remove_dead_owners(lock_dir: &Path) {
    let Ok(entries) = fs::read_dir(lock_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = (name.starts_with("owner.") && name.ends_with(".lock"))
            || (name.starts_with(".owner.") && name.ends_with(".lock.new"));
        if ours
            && let Ok(f) = open_nofollow(&entry.path())
            && f.try_lock().is_ok()
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// `path` made absolute against the working directory (lexically, without resolving
/// symlinks: the same as `std::path::absolute`); `path` itself if the working directory
/// cannot be read.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A neighbour cleaning dead owners' locks at the instant we make ours must not make
    /// us fail (seen in CI as "store/tmp: No such file or directory" on a seal while
    /// another process opened the store in a loop).
    #[test]
    fn an_owner_lock_is_made_even_while_a_neighbour_removes_dead_owners() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        const DIRS: usize = 3000;
        let root = tempfile::tempdir().unwrap();
        let dirs: Arc<Vec<PathBuf>> = Arc::new(
            (0..DIRS)
                .map(|i| {
                    let d = root.path().join(format!("d{i}"));
                    fs::create_dir(&d).unwrap();
                    d
                })
                .collect(),
        );
        // The cleaner works on the directory we are making our lock in right now.
        let current = Arc::new(AtomicUsize::new(0));
        let cleaner = {
            let (current, dirs) = (current.clone(), dirs.clone());
            std::thread::spawn(move || {
                loop {
                    let i = current.load(Ordering::Relaxed);
                    let Some(d) = dirs.get(i) else { break };
                    remove_dead_owners(d);
                }
            })
        };
        let mut failures = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            current.store(i, Ordering::Relaxed);
            if let Err(e) = owner_token(d) {
                failures.push(e.to_string());
            }
        }
        current.store(DIRS, Ordering::Relaxed);
        cleaner.join().unwrap();
        assert!(
            failures.is_empty(),
            "owner_token failed {} times: {:?}",
            failures.len(),
            failures.first()
        );
        for d in dirs.iter() {
            let token = owner_token(d).unwrap();
            assert!(owner_alive(d, &token), "our own lock in {d:?} is not held");
        }
    }

    #[test]
    fn private_file_refuses_symlink_and_existing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private_file(&link).is_err());
        assert!(create_private_file(&target).is_err());
        let f = dir.path().join("new");
        create_private_file(&f).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn atomic_file_vanishes_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("a.tmp");
        {
            let mut f = AtomicFile::create(tmp.clone()).unwrap();
            f.file().unwrap().write_all_ok();
        }
        assert!(!tmp.exists());
        let f = AtomicFile::create(tmp.clone()).unwrap();
        let dest = dir.path().join("a");
        f.commit(&dest).unwrap();
        assert!(dest.exists() && !tmp.exists());
        // never replaces
        let f = AtomicFile::create(tmp.clone()).unwrap();
        assert_eq!(
            f.commit(&dest).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    }

    #[test]
    fn new_file_has_no_name_until_committed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let mut f = NewFile::create(&dest).unwrap();
        f.file().unwrap().write_all(b"data").unwrap();
        assert!(f.available().unwrap() > 0);
        assert_eq!(
            f.ensure_room(u64::MAX).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a name was seen"
        );
        f.commit(&dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"data");
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o600);
        // never replaces, and a dropped one leaves nothing
        assert_eq!(
            NewFile::create(&dest).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let other = dir.path().join("other");
        let f = NewFile::create(&other).unwrap();
        fs::write(&other, b"raced").unwrap();
        assert_eq!(
            f.commit(&other).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        drop(NewFile::create(&dir.path().join("third")).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    trait WriteOk {
        fn write_all_ok(&mut self);
    }
    impl WriteOk for File {
        fn write_all_ok(&mut self) {
            use std::io::Write;
            self.write_all(b"partial").unwrap();
        }
    }

    #[test]
    fn open_regular_refuses_fifos_and_devices_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for path in [fifo.as_path(), Path::new("/dev/null"), dir.path()] {
            let e = open_regular(path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{}", path.display());
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        assert!(
            open_regular(&fifo)
                .unwrap_err()
                .to_string()
                .contains("a FIFO")
        );
        let file = dir.path().join("f");
        fs::write(&file, b"data").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let opened = open_regular(&link).unwrap();
        let flags = rustix::fs::fcntl_getfl(&opened).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        assert_eq!(read_regular(&file).unwrap(), b"data");
        assert!(open_regular_nofollow(&link).is_err());
        open_regular_nofollow(&file).unwrap();
    }

    #[test]
    fn private_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err());
    }
}
