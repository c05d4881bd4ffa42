//! Learning that a container exited without waiting for `podman events`.
//!
//! conmon writes the container's exit code to `<exit dir>/<container id>`
//! the moment the container's process ends (rootful Podman:
//! `/run/libpod/exits`, conmon's `--exit-dir`); Podman's clean-up process
//! reads and deletes it a few milliseconds later. With the file event
//! logger, the `died` event reaches `podman events` up to ~250 ms later.
//! Watching the folder with inotify sees the file at once.
//!
//! The file alone is never believed: the daemon ends a session from it
//! without asking Podman only when the container's pid is gone as well
//! (`process_gone`), else it asks `podman container inspect`, so a missed,
//! unreadable, stray or misattributed file costs latency, never
//! correctness. The events stream stays the fallback (and the only source for containers
//! whose file we cannot see: remote Podman, another tmp dir).

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::known::Known;
use crate::runtime::Change;
use crate::sync::lock;

/// A container's exit, as conmon wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitFile {
    /// The full container id (the file's name).
    pub id: String,
    /// The exit code, when the file could still be read (Podman's clean-up
    /// may delete it first).
    pub exit_code: Option<i32>,
    /// Its mtime: when conmon wrote it, right after the container's process
    /// ended (the `FinishedAt` Podman records is this same mtime).
    pub at: Option<jiff::Timestamp>,
}

/// The folder conmon writes exit files to, when this daemon can watch it:
/// `AGENTD_PODMAN_EXIT_DIR` (empty: do not watch), else Podman's default
/// for a local rootful (`/run/libpod/exits`) or rootless
/// (`$XDG_RUNTIME_DIR/libpod/tmp/exits`) engine. `None` when remote
/// (`CONTAINER_HOST`/`CONTAINER_CONNECTION`) or the folder does not exist.
pub fn exit_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("AGENTD_PODMAN_EXIT_DIR") {
        return (!d.is_empty())
            .then(|| PathBuf::from(d))
            .filter(|d| d.is_dir());
    }
    let remote = ["CONTAINER_HOST", "CONTAINER_CONNECTION"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if remote {
        return None;
    }
    let dir = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/libpod/exits")
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("libpod/tmp/exits")
    };
    dir.is_dir().then_some(dir)
}

/// A container id as Podman names exit files: 64 lowercase hex digits.
fn container_id(name: &str) -> Option<&str> {
    (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(name)
}

/// The exit code in an exit file's content (conmon writes it in decimal).
pub fn parse_exit_code(content: &str) -> Option<i32> {
    content.trim().parse().ok()
}

/// Whether the container whose OCI runtime wrote `pid_file` (`podman run
/// --pidfile`) has certainly ended: the file names a pid and no process
/// has it. conmon reaps the container's first process before it writes the
/// exit file, and the end of that process ends the container's pid
/// namespace, so together with an exit file this proves the exit without
/// asking Podman. Anything less certain (no file, a pid that is in use
/// again, a zombie) is `false`: the caller then asks `container inspect`.
pub fn process_gone(pid_file: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|p| *p > 1)
    else {
        return false;
    };
    matches!(
        std::fs::symlink_metadata(format!("/proc/{pid}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    )
}

/// Watch `dir`; every exit file written there is sent to `tx` (the
/// receiver must keep up: a full channel drops the hint, the events stream
/// then reports the exit). Keep the returned watcher alive.
pub fn watch(dir: &Path, tx: mpsc::Sender<ExitFile>) -> notify::Result<notify::RecommendedWatcher> {
    let handler = move |result: notify::Result<notify::Event>| {
        let Ok(event) = result else { return };
        // conmon writes `<id>.tmp` and renames it to `<id>` (older conmon
        // writes `<id>` in place: its close tells the code is complete). A
        // create is sent too: if the clean-up wins the race to delete the
        // file, the exit is still known.
        if !matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(notify::event::ModifyKind::Name(_))
                | EventKind::Access(notify::event::AccessKind::Close(_))
        ) {
            return;
        }
        for path in &event.paths {
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(container_id)
            else {
                continue;
            };
            let exit_code = std::fs::read_to_string(path)
                .ok()
                .as_deref()
                .and_then(parse_exit_code);
            let at = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok());
            let _ = tx.try_send(ExitFile {
                id: id.to_string(),
                exit_code,
                at,
            });
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Watch the exit folder (when there is one this daemon can watch): each
/// exit is recorded (`known.rs`) and sent as `Change::Exited`, so the
/// planner finishes a session the moment its container exits instead of
/// when `podman events` gets around to the `died` event. Without an exit
/// folder (remote or unusual Podman), or if watching fails, the events
/// stream alone reports exits.
pub fn follow(
    known: Arc<Mutex<Known>>,
    tx: mpsc::Sender<Change>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(dir) = exit_dir() else {
        tracing::info!("no Podman exit folder to watch; exits are learned from podman events");
        return None;
    };
    Some(tokio::spawn(async move {
        let (exits_tx, mut exits) = mpsc::channel(256);
        let _watcher = match watch(&dir, exits_tx) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch Podman's exit folder; exits are learned from podman events");
                return;
            }
        };
        tracing::debug!(dir = %dir.display(), "watching Podman's exit folder");
        while let Some(exit) = exits.recv().await {
            tracing::debug!(id = %exit.id, exit_code = exit.exit_code, "exit file");
            lock(&known).exited_at(&exit.id, exit.exit_code, exit.at, false);
            let change = Change::Exited {
                id: exit.id,
                code: exit.exit_code,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_container_ids_name_exit_files() {
        let id = "2394462ae6a6b43c2efdf4adee72acf1b14d5f9730956cca05c4fe9fd2c04384";
        assert_eq!(container_id(id), Some(id));
        assert_eq!(container_id("2394462ae6a6"), None);
        assert_eq!(container_id(&id.to_uppercase()), None);
        assert_eq!(container_id(&format!("{id}.tmp")), None);
    }

    #[test]
    fn exit_codes_parse_as_conmon_writes_them() {
        assert_eq!(parse_exit_code("0"), Some(0));
        assert_eq!(parse_exit_code("137\n"), Some(137));
        assert_eq!(parse_exit_code(""), None);
        assert_eq!(parse_exit_code("x"), None);
    }

    #[test]
    fn only_a_named_process_that_is_gone_proves_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("container.pid");
        assert!(!process_gone(&f), "no pid file");
        std::fs::write(&f, std::process::id().to_string()).unwrap();
        assert!(!process_gone(&f), "a live process");
        std::fs::write(&f, "junk").unwrap();
        assert!(!process_gone(&f), "no pid");
        std::fs::write(&f, "1").unwrap();
        assert!(!process_gone(&f), "init");
        // A pid above the kernel's maximum is never in use.
        std::fs::write(&f, "4194305").unwrap();
        assert!(process_gone(&f));
    }

    #[tokio::test]
    async fn a_written_exit_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let _w = watch(dir.path(), tx).unwrap();
        let id = "a".repeat(64);
        let tmp = dir.path().join(format!("{id}.tmp"));
        std::fs::write(&tmp, "3").unwrap();
        std::fs::rename(&tmp, dir.path().join(&id)).unwrap();
        let mut got = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await
        {
            got.push(e);
            if got.iter().any(|e: &ExitFile| e.exit_code == Some(3)) {
                break;
            }
        }
        assert!(got.iter().all(|e| e.id == id), "{got:?}");
        assert!(got.iter().any(|e| e.exit_code == Some(3)), "{got:?}");
    }
}
