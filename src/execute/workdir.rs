//! A session's work folder on the host, `<state>/work/<session_id>/`:
//!
//! - `home/`            bind-mounted at `/home/<profile>`, owned by the session user;
//!   `home/repo` is the clone, `home/.agentd/audit` the mount point of the
//!   record's `session/` folder
//! - `input/`           `/agentd/input`, read-only: request.json or `<type>/<stem>.json`
//! - `credentials.sh`   `/agentd/credentials.sh`, read-only, mode 0400, owned by
//!   the session user: `export NAME='value'` lines the entry wrapper sources
//!   (and, for Podman secrets, lines reading `/agentd/secrets/NAME`).
//!   Values live only here (never argv, never `podman inspect`), and the
//!   file goes with the work folder when the session ends.
//! - `gate`             `/agentd/.gate`, the start gate: a FIFO owned by the
//!   daemon's user, mode 0644 rootful, 0444 rootless (the session can read,
//!   never write)
//!
//! The folder itself is 0700 and the daemon's user's (root rootful, the
//! daemon's own user rootless), so other host users see nothing inside.
//! It is also the session's runtime folder (`SessionSpec::runtime_dir`):
//! the runtime keeps its own files of the session there (its console
//! capture), outside every mount.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::desired::{Input, Profile};

/// What the daemon writes into a start gate.
const GO: &[u8] = b"go\n";

/// Remove a work folder and whatever the agent left in it (any depth, any
/// modes, symlinks never followed, a few descriptors at most), on a
/// blocking thread so the async workers never wait on the filesystem.
pub async fn remove(root: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || crate::fdtree::remove_tree(&root))
        .await
        .map_err(io::Error::other)?
}

/// Why the credentials file was not written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Secret(#[from] super::secrets::SecretError),
    #[error("cannot write credentials file: {0}")]
    Write(io::Error),
}

pub struct WorkDir {
    pub root: PathBuf,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The start gate's mode: 0644 rootful (the session uid is not the owner),
/// 0444 rootless (the session uid is the owner).
fn gate_mode() -> u32 {
    if is_root() { 0o644 } else { 0o444 }
}

impl WorkDir {
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    pub fn repo(&self) -> PathBuf {
        self.root.join("home/repo")
    }
    pub fn input(&self) -> PathBuf {
        self.root.join("input")
    }
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials.sh")
    }

    /// The start gate: a FIFO the session's entry reads `go` from.
    pub fn gate(&self) -> PathBuf {
        self.root.join("gate")
    }

    /// Create the gate: owned by the daemon's user, mode 0644, so the
    /// session user can read its `go` and nothing more. A FIFO ignores a
    /// read-only bind mount (writing into one changes no file), so its mode
    /// is what keeps the agent from writing into it: a gate the agent could
    /// fill would make the daemon's next write block. Rootless, the session
    /// user *is* the owner (the runtime maps it so), so the gate is 0444: nobody may write
    /// it, the agent cannot chmod it (its mount is read-only), and the
    /// daemon lends itself `u+w` for the moment of `send_go`.
    pub fn make_gate(&self) -> io::Result<()> {
        let path = self.gate();
        let _ = fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o400))
            .map_err(io::Error::from)?;
        // mkfifo applies the umask; the mode must not depend on it.
        fs::set_permissions(&path, fs::Permissions::from_mode(gate_mode()))
    }

    /// Write `go` into the gate at `path` without ever waiting. The FIFO is
    /// opened read-write and non-blocking (opening a FIFO so never waits for
    /// a peer) and not through a symlink; `go` is shorter than `PIPE_BUF`,
    /// so the write is all or nothing. A full pipe (something other than
    /// this daemon wrote into the gate: a session of an older agentd, whose
    /// gate the agent could write) is `ErrorKind::WouldBlock`, reported at
    /// once. The returned handle keeps the `go` alive: a FIFO drops unread
    /// data when its last writer closes.
    pub fn send_go(path: &Path) -> io::Result<fs::File> {
        use std::io::Write;
        use std::os::unix::fs::FileTypeExt;
        let open = || {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
                .open(path)
        };
        let mut f = match open() {
            // Rootless: the 0444 gate (see `make_gate`). Its folder is the
            // daemon's alone, so the name is still the gate made.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !is_root() => {
                if fs::symlink_metadata(path)?.file_type().is_symlink() {
                    return Err(e);
                }
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
                let opened = open();
                fs::set_permissions(path, fs::Permissions::from_mode(gate_mode()))?;
                opened?
            }
            other => other?,
        };
        if !f.metadata()?.file_type().is_fifo() {
            return Err(io::Error::other(format!(
                "{} is not a FIFO; the start gate was replaced",
                path.display()
            )));
        }
        match f.write(GO) {
            Ok(n) if n == GO.len() => Ok(f),
            Ok(_) => Err(io::Error::other("short write into the start gate")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the start gate {} is full (something other than agentd wrote into it)",
                    path.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// The daemon is about to write `go` into the gate at `root`: from
    /// now on the command may run. Written before every `go` (not synced:
    /// a restart of the daemon loses no written page, a restart of the host
    /// ends the container). A start tried again finds it and never runs
    /// the command a second time (issue 18: a container that removed itself
    /// after its command ran leaves nothing else behind).
    pub fn mark_gate_opened(root: &Path) -> io::Result<()> {
        fs::write(root.join("gate-opened"), b"")
    }

    pub fn gate_opened(root: &Path) -> bool {
        root.join("gate-opened").exists()
    }

    /// Everything the session needs is in place (clone, home, record).
    pub fn mark_prepared(&self) -> io::Result<()> {
        fs::write(self.root.join("prepared"), b"")
    }

    pub fn is_prepared(root: &Path) -> bool {
        root.join("prepared").exists()
    }

    /// Create the folder skeleton (before the clone).
    pub fn create(root: PathBuf) -> io::Result<WorkDir> {
        crate::fdtree::remove_tree(&root)?;
        if let Some(parent) = root.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        fs::DirBuilder::new().mode(0o700).create(&root)?;
        let w = WorkDir { root };
        fs::create_dir_all(w.home().join(".agentd/audit"))?;
        // The clone's folder exists before `podman run`, which runs while
        // the clone is made: Podman creates a missing `--workdir` itself, as
        // the container's root, which rootless is a subordinate uid the
        // daemon could not write into (git then fails "Permission denied").
        // git clones into an empty folder.
        fs::DirBuilder::new().mode(0o755).create(w.repo())?;
        Ok(w)
    }

    /// Hand the home folder (with the clone) to the session user's host
    /// uid. Rootless that is the daemon's own uid, which already owns it.
    pub fn give_home_to(&self, uid: u32) -> io::Result<()> {
        if uid != nix::unistd::geteuid().as_raw() {
            for entry in walkdir::WalkDir::new(self.home()).follow_links(false) {
                let entry = entry.map_err(io::Error::other)?;
                std::os::unix::fs::lchown(entry.path(), Some(uid), Some(uid))?;
            }
        }
        fs::set_permissions(self.home(), fs::Permissions::from_mode(0o700))
    }

    /// Materialize the request's input; returns whether there is any.
    pub fn write_input(&self, input: &Input) -> io::Result<bool> {
        let (rel, value) = match input {
            Input::None | Input::WorkUnit(_) => return Ok(false),
            Input::Text(t) => (
                PathBuf::from("request.json"),
                serde_json::json!({"description": t, "source": "operator"}),
            ),
            Input::Artifact { kind, stem, json } => {
                (Path::new(kind).join(format!("{stem}.json")), json.clone())
            }
        };
        let path = self.input().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, crate::fsutil::json_pretty(&value)?)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
        for dir in walkdir::WalkDir::new(self.input())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir())
        {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555))?;
        }
        Ok(true)
    }

    /// Write the credentials file (see `secrets::script`: host-read values,
    /// and lines reading mounted Podman secrets). A missing or refused
    /// source is an error naming the credential and the source; a value is
    /// never logged.
    pub fn write_credentials(
        &self,
        profile: &Profile,
        uid: u32,
        placeholders: &std::collections::BTreeMap<String, crate::inject::Placeholder>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool, CredentialsError> {
        let Some(text) = super::secrets::script(&profile.credentials, placeholders, lookup)? else {
            return Ok(false);
        };
        let path = self.credentials();
        let write = || -> io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)?;
            f.write_all(text.as_bytes())?;
            // Rootless: the daemon's own file, 0400 in a 0700 folder, which
            // the session sees as its own through the user namespace.
            if uid == nix::unistd::geteuid().as_raw() {
                return Ok(());
            }
            std::os::unix::fs::fchown(&f, Some(uid), Some(uid))
        };
        write().map_err(CredentialsError::Write)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Fill a FIFO to the brim, as a hostile writer would.
    fn fill(path: &Path) -> fs::File {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .expect("open fifo");
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return f,
                Err(e) => panic!("filling the fifo: {e}"),
            }
        }
    }

    #[test]
    fn send_go_on_a_full_gate_returns_at_once_issue_13() {
        let d = tempfile::tempdir().expect("tempdir");
        let w = WorkDir {
            root: d.path().to_path_buf(),
        };
        w.make_gate().expect("gate");
        let _filler = fill(&w.gate());
        let path = w.gate();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(WorkDir::send_go(&path).map(|_| ()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("send_go returned within 5 s on a full gate");
        let err = result.expect_err("a full gate takes no go");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("is full"), "{err}");
    }

    #[test]
    fn send_go_writes_go_and_keeps_it_for_a_later_reader() {
        let d = tempfile::tempdir().expect("tempdir");
        let w = WorkDir {
            root: d.path().to_path_buf(),
        };
        w.make_gate().expect("gate");
        let _held = WorkDir::send_go(&w.gate()).expect("go");
        let mut reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(w.gate())
            .expect("reader");
        let mut buf = [0u8; 8];
        let n = io::Read::read(&mut reader, &mut buf).expect("read");
        assert_eq!(&buf[..n], GO);
    }

    #[test]
    fn the_gate_is_the_daemons_and_read_only_for_others_issue_13() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().expect("tempdir");
        let w = WorkDir {
            root: d.path().to_path_buf(),
        };
        w.make_gate().expect("gate");
        let m = fs::symlink_metadata(w.gate()).expect("stat");
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn send_go_refuses_a_symlinked_gate() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("elsewhere");
        nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("fifo");
        std::os::unix::fs::symlink(&target, d.path().join("gate")).expect("symlink");
        assert!(WorkDir::send_go(&d.path().join("gate")).is_err());
    }
}
