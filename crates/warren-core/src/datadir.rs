//! The data directory: created if missing, locked so that two brokers never share it.
//!
//! The lock is an exclusive `flock(2)` on `<dir>/.lock` (through `File::try_lock`), held for as
//! long as the [`DataDir`] value lives. The kernel drops it when the process exits, however it
//! exits, so a crashed broker never leaves a stale lock behind. `flock` locks belong to the open
//! file, so a second `DataDir::open` of the same directory fails even within one process.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Why a data directory cannot be used. Every message names the directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `create_dir_all` failed (a file in the way, no permission on a parent, ...).
    #[error("cannot create data directory {}: {source}", path.display())]
    Create {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("data directory {} is not a directory", path.display())]
    NotADirectory {
        /// The data directory.
        path: PathBuf,
    },
    /// Writing, syncing or removing a probe file failed.
    #[error("data directory {} is not writable: {source}", path.display())]
    NotWritable {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process (or another `DataDir` in this one) holds the lock.
    #[error("data directory {} is locked by another running warren{}", path.display(), holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The process id the holder wrote into the lock file, when it could be read.
        holder: Option<u32>,
    },
    /// Opening or locking the lock file failed for another reason.
    #[error("cannot lock data directory {}: {source}", path.display())]
    Lock {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An open, writable, exclusively locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the lock; closing the file releases it.
    _lock: File,
}

impl DataDir {
    /// Creates `path` (and its parents) if missing, checks that it is writable, and locks it.
    pub fn open(path: impl AsRef<Path>) -> Result<DataDir, DataDirError> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|source| DataDirError::Create {
            path: path.clone(),
            source,
        })?;
        if !path.is_dir() {
            return Err(DataDirError::NotADirectory { path });
        }
        probe_writable(&path).map_err(|source| DataDirError::NotWritable {
            path: path.clone(),
            source,
        })?;
        let lock = lock(&path)?;
        Ok(DataDir { path, _lock: lock })
    }

    /// The directory, as given to [`DataDir::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates, writes, fsyncs and removes a probe file named after this process.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&probe)?;
        f.write_all(b"warren")?;
        f.sync_all()
    })();
    // Remove the probe even when the write failed half-way; report the first error.
    let removed = std::fs::remove_file(&probe);
    match written {
        // A full disk is writable: the broker starts, serves consumers (acks free space) and
        // holds publishers behind the disk alarm.
        Err(e) if is_full(&e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "the data directory's filesystem is full");
        }
        r => r?,
    }
    removed
}

/// `e` says the filesystem is full (or the quota is used up).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Takes the exclusive lock on `<dir>/.lock` and records this process id in it.
fn lock(dir: &Path) -> Result<File, DataDirError> {
    let lock_err = |source| DataDirError::Lock {
        path: dir.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(DataDirError::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(lock_err(source)),
    }
    // Only informative (the lock is what counts), so failing to record the pid is not fatal.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all());
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "warren-datadir-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn creates_missing_directory_and_parents() {
        let root = tempdir();
        let path = root.join("a/b/data");
        let dir = DataDir::open(&path).expect("open");
        assert_eq!(dir.path(), path);
        assert!(path.is_dir());
        assert!(path.join(LOCK_FILE).is_file());
        let left: Vec<_> = std::fs::read_dir(&path)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(LOCK_FILE)],
            "probe removed"
        );
        drop(dir);
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    #[test]
    fn lock_file_records_the_pid() {
        let root = tempdir();
        let _dir = DataDir::open(&root).expect("open");
        let text = std::fs::read_to_string(root.join(LOCK_FILE)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    /// `File::try_lock` is `flock(2)` on Linux: locks belong to open file descriptions, so a
    /// second open in the same process conflicts, like another process would.
    #[test]
    fn second_open_fails_while_the_first_lives() {
        let root = tempdir();
        let first = DataDir::open(&root).expect("first open");
        let err = DataDir::open(&root).expect_err("second open must fail");
        assert!(matches!(err, DataDirError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "data directory {} is locked by another running warren",
                root.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let _again = DataDir::open(&root).expect("lock released on drop");
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    #[test]
    fn a_file_in_the_way_is_reported() {
        let root = tempdir();
        let file = root.join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = DataDir::open(&file).expect_err("a file");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        let err = DataDir::open(file.join("sub")).expect_err("under a file");
        assert!(matches!(err, DataDirError::Create { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("cannot create data directory"),
            "{err}"
        );
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    #[test]
    fn read_only_directory_is_not_writable() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempdir();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        // root ignores permission bits: only check when the probe really cannot be written.
        if File::create(root.join("x")).is_err() {
            let err = DataDir::open(&root).expect_err("read-only");
            assert!(matches!(err, DataDirError::NotWritable { .. }), "{err:?}");
            assert!(err.to_string().contains("is not writable"), "{err}");
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::remove_dir_all(root).expect("cleanup");
    }
}
