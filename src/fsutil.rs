//! Careful file-system primitives: private directories, files created exclusively without
//! following symlinks, and atomic publication (write to a temporary name, fsync, rename,
//! fsync the directory). Everything that touches plaintext or sealed records uses these.

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

/// Opens an existing file for reading without following a final symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
///
/// Uses a hard link plus unlink, which is atomic for the destination on every local Linux
/// file system and never overwrites.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Writes `bytes` to `dest` atomically via a temporary file in `tmp_dir`.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes)?.commit(dest)
}

/// Writes `bytes` to a fresh temporary file in `tmp_dir` named after `dest`.
fn staged(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<AtomicFile> {
    use std::io::Write;
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::other("destination has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let mut file = AtomicFile::create(tmp_dir.join(tmp_name))?;
    file.file()?.write_all(bytes)?;
    Ok(file)
}

/// Like [`write_atomic`], but replaces `dest` if it exists.
pub fn replace_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(tmp_dir, dest, bytes)?.commit_replace(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

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
