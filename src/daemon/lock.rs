//! One daemon per state dir: an exclusive `flock` on a lock file, which also
//! records the holder's pid for the error a second daemon prints, and one
//! on the state dir itself. The kernel drops both when the process dies, so
//! a crash never leaves a stale lock behind.
//!
//! Where the lock file lives (`lock_path`): for an unprivileged user with a
//! usable `XDG_RUNTIME_DIR`, `$XDG_RUNTIME_DIR/agentd/<instance>.lock` (a
//! private tmpfs that goes with the user's last session); otherwise (root,
//! or no runtime dir, as under `su -` or cron) `<state>/agentd.lock`. The
//! lock on the state dir's own descriptor keeps two daemons apart even when
//! they disagree on `XDG_RUNTIME_DIR`.
//!
//! The file is opened without following a symlink (a link planted there
//! would make the daemon truncate whatever it points at), created 0600, and
//! must be a regular file of the daemon's user.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another agentd (pid {pid}) holds {path}; hint: one daemon per state dir, or pass a different --state"
    )]
    Held { path: PathBuf, pid: String },
    #[error(
        "the lock file {path} is a symlink, which agentd never follows; hint: remove it (`rm {path}`)"
    )]
    Symlink { path: PathBuf },
    #[error(
        "the lock file {path} is not a regular file of the daemon's user (uid {me}); hint: remove it (`rm {path}`)"
    )]
    Foreign { path: PathBuf, me: u32 },
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the daemon's lifetime; dropping it releases the lock.
pub struct StateLock {
    _file: Flock<File>,
    _dir: Flock<File>,
    pub path: PathBuf,
}

/// The lock file of the daemon whose state dir is `state` (see the module
/// docs). `instance` is that state dir's instance id.
pub fn lock_path(state: &Path, instance: &str) -> PathBuf {
    match runtime_dir() {
        Some(run) => run.join("agentd").join(format!("{instance}.lock")),
        None => state.join("agentd.lock"),
    }
}

/// `$XDG_RUNTIME_DIR` when it can hold a private lock: not root, set,
/// absolute, and a folder of the daemon's user that nobody else can write.
fn runtime_dir() -> Option<PathBuf> {
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return None;
    }
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (dir.is_absolute() && meta.is_dir() && meta.uid() == me.as_raw() && meta.mode() & 0o022 == 0)
        .then_some(dir)
}

pub fn acquire(state: &Path, instance: &str) -> Result<StateLock, LockError> {
    let path = lock_path(state, instance);
    if let Some(parent) = path.parent().filter(|p| *p != state) {
        crate::daemon::private::ensure_dir(
            "runtime folder",
            parent,
            nix::unistd::geteuid().as_raw(),
            true,
        )
        .map_err(|e| LockError::Io {
            path: parent.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let file = lock_file(&path)?;
    let dir = lock_dir(state, &path)?;
    Ok(StateLock {
        _file: file,
        _dir: dir,
        path,
    })
}

/// The second lock: on the state dir's own descriptor.
fn lock_dir(state: &Path, lock_file: &Path) -> Result<Flock<File>, LockError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(state)
        .map_err(|source| LockError::Io {
            path: state.to_path_buf(),
            source,
        })?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|_| LockError::Held {
        path: state.to_path_buf(),
        pid: format!(
            "unknown: not the holder of {}; it was started with another XDG_RUNTIME_DIR",
            lock_file.display()
        ),
    })
}

fn lock_file(path: &Path) -> Result<Flock<File>, LockError> {
    let path = path.to_path_buf();
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(LockError::Symlink { path });
        }
        Err(e) => return Err(io(e)),
    };
    // O_NONBLOCK: a FIFO planted here must not wedge the open; it is then
    // refused as not a regular file.
    let meta = file.metadata().map_err(io)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me {
        return Err(LockError::Foreign { path, me });
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io)?;
            locked.seek(SeekFrom::Start(0)).map_err(io)?;
            writeln!(locked, "{}", std::process::id()).map_err(io)?;
            locked.sync_all().map_err(io)?;
            Ok(locked)
        }
        Err((mut file, _errno)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(LockError::Held {
                path,
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            })
        }
    }
}
