//! Watching the desired dir. The notify callback only `try_send`s a wake-up
//! into the loop's bounded channel: a full channel means a pass is already
//! due, so dropping the wake-up loses nothing. Lost inotify events
//! (`need_rescan`) and watcher errors ask for a full rescan; the periodic
//! resync bounds the delay when even that is lost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use crate::execute::Event;

pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Burst window: a writer's create+write+close arrive as one wake-up.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

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
}

/// Start watching `dir` recursively. Errors explain inotify limits.
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
    let handler = move |result: DebounceEventResult| {
        let event = {
            let mut d = dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                Ok(events) if events.is_empty() => return,
                Ok(events) => {
                    for e in &events {
                        if e.need_rescan() {
                            d.rescan = true;
                        }
                        for p in &e.paths {
                            if roots.contains(p) {
                                d.rewatch = true;
                            }
                            d.paths.insert(p.clone());
                        }
                    }
                    if d.rescan {
                        Event::Rescan
                    } else {
                        Event::Desired
                    }
                }
                Err(errors) => {
                    for e in &errors {
                        tracing::warn!(error = %explain(e), "watcher error; rescanning");
                    }
                    d.rescan = true;
                    Event::Rescan
                }
            }
        };
        let _ = tx.try_send(event);
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler).map_err(|e| explain(&e))?;
    debouncer
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|e| explain(&e))?;
    Ok(debouncer)
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
