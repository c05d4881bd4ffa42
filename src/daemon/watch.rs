//! Watching the desired dir. The notify callback records changed paths in a
//! shared dirty set and only `try_send`s a wake-up into the loop's bounded
//! channel: a full channel means a pass is already due, so dropping the
//! wake-up loses nothing. Lost inotify events (`need_rescan`, the queue
//! overflowed) and watcher errors ask for a full rescan; the periodic resync
//! (`RESYNC`, 30 s) bounds the delay when even that is lost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::execute::Event;

pub type Watcher = notify::RecommendedWatcher;

/// What changed since the loop last looked: a cache-invalidation hint the
/// watcher fills and the loop drains. Losing it costs latency only: the
/// periodic full scan is the truth.
#[derive(Debug, Default)]
pub struct Dirty {
    pub paths: HashSet<PathBuf>,
    /// Events were lost (inotify overflow) or the watcher failed.
    pub rescan: bool,
    /// A watched folder itself was replaced (symlink swap): re-watch.
    pub rewatch: bool,
    /// Files opened for writing and not closed yet (not part of `paths`).
    pub writing: HashSet<PathBuf>,
}

/// Start watching `dir` recursively. Errors explain inotify limits.
///
/// No debounce window: a file renamed into place or closed after writing
/// is ready at once (that is what atomic writers and `git` do), a file
/// still being written waits for its close, and a burst of events lands in
/// one dirty set that the next pass drains in one go.
pub fn watch(
    dir: &Path,
    tx: mpsc::Sender<Event>,
    dirty: Arc<Mutex<Dirty>>,
) -> Result<Watcher, String> {
    let roots: Vec<PathBuf> = [
        dir.to_path_buf(),
        dir.join("profiles"),
        dir.join("requests"),
    ]
    .into();
    let handler = move |result: notify::Result<notify::Event>| {
        let event = {
            let mut d = dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                // Reads are not changes: our own scans open the folders
                // (IN_OPEN/IN_CLOSE_NOWRITE), which must not wake us.
                Ok(e) if !is_change(&e.kind) && !e.need_rescan() => return,
                Ok(e) => {
                    if e.need_rescan() {
                        d.rescan = true;
                    }
                    for p in &e.paths {
                        if roots.contains(p) {
                            d.rewatch = true;
                        }
                        // A file being written (created or modified, not yet
                        // closed) is not ready: it is looked at when its
                        // writer closes it, never half-written.
                        if writing(&e.kind) {
                            d.writing.insert(p.clone());
                            continue;
                        }
                        d.writing.remove(p);
                        d.paths.insert(p.clone());
                    }
                    if d.rescan {
                        Event::Rescan
                    } else {
                        Event::Desired
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %explain(&e), "watcher error; rescanning");
                    d.rescan = true;
                    Event::Rescan
                }
            }
        };
        let _ = tx.try_send(event);
    };
    // Symlinks below the kind folders are never followed (a committed
    // `requests/evil -> /` would otherwise put a watch on every folder of
    // the host); the kind folders themselves may be symlinks swapped
    // atomically, so each is watched through its own link as well.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config).map_err(|e| explain(&e))?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|e| explain(&e))?;
    for folder in [dir.join("profiles"), dir.join("requests")] {
        // A missing kind folder is the scan's to report.
        if folder.is_dir() {
            watcher
                .watch(&folder, RecursiveMode::Recursive)
                .map_err(|e| explain(&e))?;
        }
    }
    Ok(watcher)
}

/// A write in progress: created or modified, not closed. (A rename into
/// place, a close after writing, a removal or a metadata change mean the
/// file is as its writer wants it.)
fn writing(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{CreateKind, ModifyKind};
    matches!(
        kind,
        EventKind::Create(CreateKind::File)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
    )
}

/// Whether an event kind can mean the content changed. Everything but
/// accesses counts; of accesses only a close after writing (the end of a
/// non-atomic write) does.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A watcher error in words an operator can act on.
pub fn explain(e: &notify::Error) -> String {
    let raw = e.to_string();
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "{raw}: the inotify watch limit is reached; raise it with `sysctl fs.inotify.max_user_watches=524288` \
             (changes are still picked up by the periodic rescan)"
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(nix::libc::EMFILE) => format!(
            "{raw}: too many inotify instances; raise `sysctl fs.inotify.max_user_instances` \
             (changes are still picked up by the periodic rescan)"
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(nix::libc::ENOSPC) => format!(
            "{raw}: the inotify watch limit is reached; raise it with `sysctl fs.inotify.max_user_watches=524288`"
        ),
        _ => raw,
    }
}
