//! Results (issue 20): what the agent changed, captured on the host and
//! sealed in the record, and pushed as a branch without the agent ever
//! holding the token.
//!
//! Two moments of a session call in here (`execute` owns the calls):
//! - right after the host-side clone, before the start gate opens:
//!   [`record_base`] keeps the clone's refs and its objects (links to its
//!   seed's, or a copy) in the work folder (`base`);
//! - at the end of every session that ran, before the record is sealed:
//!   [`finish`] captures the changes (`capture`), places the bundle and
//!   patches into the record within `results_max_bytes`, and pushes
//!   (`push`) when the profile asks and the outcome allows.
//!
//! The clone is the agent's and hostile: nothing in it runs or is followed
//! on the host (see `clone_files`, `worktree` and `git`). Pure parts:
//! `model`, `refs`, `stream`.

mod base;
mod capture;
mod clone_files;
pub mod git;
pub mod model;
mod push;
pub mod refs;
pub mod stream;
mod worktree;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use base::{Listings, Seed, record as record_base};
pub use model::{Changes, Plan, PushResult};
pub use push::ReadSecret;

use crate::observed::Outcome;

/// Record files of results, in the order the budget is spent on them.
pub const FILES: [&str; 3] = ["changes.bundle", "worktree.patch", "commits.patch"];

/// What the end of a session records.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Captured {
    pub changes: Option<Changes>,
    pub push: Option<PushResult>,
}

impl Captured {
    /// What the status message should add (results cut, a failed push).
    pub fn note(&self) -> Option<String> {
        let notes: Vec<String> = self
            .changes
            .as_ref()
            .and_then(Changes::note)
            .into_iter()
            .chain(self.push.as_ref().and_then(PushResult::note))
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// What the end of a session needs from the daemon.
pub struct Host<'a> {
    /// An empty folder of the daemon's: git's home.
    pub git_home: &'a Path,
    /// Reads the push token from its source.
    pub read_secret: ReadSecret<'a>,
    /// Runs git in the sandbox local clones run in (for a local push).
    pub sandbox: Option<&'a git::Launch>,
}

/// Where a finished capture is kept, so a retried finish (a sealing
/// failure, a crash) neither captures nor pushes twice.
fn captured_file(work_root: &Path) -> PathBuf {
    base::dir(work_root).join("captured.json")
}

/// Capture the changes of the session in `work_root`, write its files into
/// the record at `record_dir` (before it is sealed), and push. `None`
/// fields: nothing to say (no base was recorded: the session never got a
/// clone).
pub async fn finish(
    work_root: &Path,
    record_dir: &Path,
    outcome: Outcome,
    host: &Host<'_>,
) -> Captured {
    let git_home = host.git_home;
    if let Some(c) = std::fs::read(captured_file(work_root))
        .ok()
        .and_then(|b| serde_json::from_slice::<Captured>(&b).ok())
    {
        return c;
    }
    let Some(base) = base::read(work_root) else {
        return Captured::default();
    };
    if let Some(why) = &base.unsupported {
        let mut changes = Changes::default();
        changes.cut(why.clone());
        return Captured {
            changes: Some(changes),
            push: base
                .plan
                .push
                .as_ref()
                .map(|_| PushResult::Skipped { why: why.clone() }),
        };
    }
    if let Err(e) = std::fs::create_dir_all(git_home) {
        tracing::warn!(error = %e, "cannot create git's home folder");
    }
    let began = std::time::Instant::now();
    let produced = capture::produce(work_root, git_home, &base).await;
    let mut changes = produced.changes;
    let agentd = record_dir.join("agentd");
    let placed = {
        let (files, agentd2, max) = (produced.files.clone(), agentd.clone(), base.plan.max_bytes);
        tokio::task::spawn_blocking(move || place(&files, &agentd2, max))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    };
    match placed {
        Ok(p) => {
            changes.bundle_bytes = p.sizes[0];
            changes.patch_bytes = p.sizes[1];
            changes.series_bytes = p.sizes[2];
            for c in p.cut {
                changes.cut(c);
            }
        }
        Err(e) => changes.cut(format!(
            "the results could not be written into the record: {e}"
        )),
    }
    let push = match &base.plan.push {
        Some(plan) => Some(
            push::push(
                &push::Pushing {
                    plan,
                    outcome,
                    head: changes.head.as_deref(),
                    head_is_new: produced.head_is_new,
                    repo_git: &base::repo(work_root),
                },
                git_home,
                host.read_secret,
                host.sandbox,
            )
            .await,
        ),
        None => None,
    };
    tracing::info!(
        commits = changes.commits,
        files_changed = changes.files_changed,
        bundle_bytes = changes.bundle_bytes,
        patch_bytes = changes.patch_bytes,
        truncated = changes.truncated,
        push = push.as_ref().map(|p| match p {
            PushResult::Pushed { .. } => "pushed",
            PushResult::NothingToPush => "nothing_to_push",
            PushResult::Skipped { .. } => "skipped",
            PushResult::Failed { .. } => "failed",
        }),
        ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        "results captured"
    );
    let captured = Captured {
        changes: Some(changes),
        push,
    };
    let json = serde_json::to_vec(&captured).unwrap_or_default();
    // Not synced: lost in a crash, the capture is only made again.
    let (file, tmp) = (
        captured_file(work_root),
        base::dir(work_root).join("captured.json.tmp"),
    );
    if let Err(e) = std::fs::write(&tmp, &json).and_then(|()| std::fs::rename(&tmp, &file)) {
        tracing::warn!(error = %e, "cannot keep the captured results; a retried finish captures again");
    }
    captured
}

/// What placing the files gave: sizes in [`FILES`] order, and what was cut.
struct Placed {
    sizes: [u64; 3],
    cut: Vec<String>,
}

/// Copy `files` into the record's `agentd/` folder in [`FILES`] order,
/// each only if it fits in what is left of `max`.
fn place(files: &[(PathBuf, &'static str)], agentd: &Path, max: u64) -> std::io::Result<Placed> {
    let mut placed = Placed {
        sizes: [0; 3],
        cut: Vec::new(),
    };
    let mut room = max;
    for (i, name) in FILES.iter().enumerate() {
        let dest = agentd.join(name);
        // A retried finish may find an earlier attempt's file.
        match std::fs::remove_file(&dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Some((src, _)) = files.iter().find(|(_, n)| n == name) else {
            continue;
        };
        let size = std::fs::metadata(src)?.len();
        if size == 0 {
            continue;
        }
        if size > room {
            let what = if size > max {
                format!("more than {max}")
            } else {
                size.to_string()
            };
            placed.cut.push(format!(
                "agentd/{name} ({what} bytes) left out: past results_max_bytes ({max} bytes, {room} left)"
            ));
            continue;
        }
        let tmp = agentd.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut from = std::fs::File::open(src)?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            std::io::copy(&mut from, &mut to)?;
            to.flush()?;
            to.sync_all()?;
        }
        std::fs::rename(&tmp, &dest)?;
        room -= size;
        placed.sizes[i] = size;
    }
    crate::fsutil::sync_dir(agentd)?;
    Ok(placed)
}

#[cfg(test)]
mod tests;
