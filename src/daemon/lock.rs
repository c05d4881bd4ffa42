//! One daemon per state dir: an exclusive `flock` on `<state>/agentd.lock`,
//! which also records the holder's pid for the error a second daemon prints.
//! The kernel drops the lock when the process dies, so a crash never leaves
//! a stale lock behind.
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
}

pub fn acquire(state: &Path) -> Result<StateLock, LockError> {
    let path = state.join("agentd.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state).map_err(io)?;
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
            Ok(StateLock { _file: locked })
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
