//! Work folders left behind. A session's work folder holds its clone and
//! its credentials file, so it must never be forgotten: `<state>/work/` is
//! itself the persisted list of leftovers. Every folder in it that belongs
//! to no active session is removed by a sweep that runs at start-up and at
//! every resync (`daemon::RESYNC`, 30 s); a folder that cannot be removed
//! is retried with the same backoff as failed operations (1 s doubling to
//! 5 min, never before the next resync) and each failure is logged. The
//! finishing session itself says so in its status message.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::backoff::Backoffs;
use super::{Shared, lock};

/// How the note of a work folder left behind ends (see `finish.rs`).
pub const LEFT_NOTE_END: &str = "the daemon retries it";

/// Sweep state: one sweep at a time, and the folders that failed.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Work folder (session id) -> failures so far and the next try.
    pub failed: Backoffs,
    /// A sweep is under way.
    pub sweeping: bool,
}

impl Shared {
    /// Sessions whose work folders must stay: active phases, and requests
    /// with an operation under way.
    fn live_sessions(&self) -> BTreeSet<String> {
        let busy = lock(&self.busy).clone();
        lock(&self.store)
            .all()
            .values()
            .filter(|s| s.phase.is_active() || busy.contains(&s.request))
            .filter_map(|s| s.session_id.clone())
            .collect()
    }

    /// The session whose folder was left behind says so in its message
    /// (`finish::remove_work_dir`): now say it is gone.
    fn note_removed(&self, session_id: &str, shown: &str) {
        let request = lock(&self.store)
            .all()
            .values()
            .find(|s| s.session_id.as_deref() == Some(session_id))
            .map(|s| s.request.clone());
        let Some(request) = request else { return };
        let (from, to) = (
            format!("work folder {shown} not removed yet"),
            LEFT_NOTE_END,
        );
        self.update_status(&request, |s| {
            if let Some(m) = &mut s.message
                && let Some(a) = m.find(&from)
                && let Some(b) = m[a..].find(to)
            {
                m.replace_range(
                    a..a + b + to.len(),
                    &format!("work folder {shown} removed on a later try"),
                );
            }
        });
    }

    /// Remove work folders of sessions that no longer run, off the loop.
    pub fn sweep_work_dirs(self: &Arc<Self>) {
        {
            let mut l = lock(&self.leftovers);
            if l.sweeping {
                return;
            }
            l.sweeping = true;
        }
        let sh = Arc::clone(self);
        tokio::spawn(async move {
            let work = sh.settings.state.join("work");
            // List before looking at the sessions: a session's id is in its
            // status before its folder exists, so a folder listed here and
            // not live below is truly stale.
            let names: Vec<String> = std::fs::read_dir(&work)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let live = sh.live_sessions();
            let now = Instant::now();
            let due: Vec<String> = names
                .into_iter()
                .filter(|n| !live.contains(n))
                .filter(|n| lock(&sh.leftovers).failed.get(n).is_none_or(|b| b.due(now)))
                .collect();
            for name in due {
                let path = work.join(&name);
                let shown = path.display().to_string();
                let result = super::workdir::remove(path).await;
                let mut l = lock(&sh.leftovers);
                match result {
                    Ok(()) => {
                        let retried = l.failed.clear(&name);
                        drop(l);
                        tracing::info!(
                            work_dir = %shown,
                            attempts = retried.map_or(0, |b| b.attempts),
                            "removed stale work folder"
                        );
                        if retried.is_some() {
                            sh.note_removed(&name, &shown);
                        }
                    }
                    Err(e) => {
                        let b = l.failed.failed(&name, Instant::now());
                        tracing::warn!(
                            work_dir = %shown,
                            attempts = b.attempts,
                            error = %e,
                            "cannot remove work folder; it holds the session's clone and credentials file; will retry"
                        );
                    }
                }
            }
            lock(&sh.leftovers).sweeping = false;
        });
    }
}
