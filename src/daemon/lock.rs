//! One daemon per state dir: an exclusive `flock` on `<state>/agentd.lock`,
//! which also records the holder's pid for the error a second daemon prints.
//! The kernel drops the lock when the process dies, so a crash never leaves
//! a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another agentd (pid {pid}) holds {path}; hint: one daemon per state dir, or pass a different --state"
    )]
    Held { path: PathBuf, pid: String },
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
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
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
