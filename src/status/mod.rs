//! The status store: `<state>/status/<request>.json`, one file per request,
//! atomically replaced. The daemon is the only writer (it holds the state
//! lock) and keeps the records in memory; CLI commands read the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::write_json_atomic;
use crate::observed::{Phase, Status, StatusCounts};

/// Told of every change of a record's phase, after it is stored: the one
/// place phase changes are counted (the metrics).
pub trait StatusObserver: Send + Sync {
    /// The record changed from phase `before` (`None`: it is new) to `after`.
    fn status_changed(&self, before: Option<Phase>, after: &Status);
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot write status {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read status folder {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
}

/// The store on disk plus the daemon's in-memory copy of it.
pub struct StatusStore {
    dir: PathBuf,
    records: BTreeMap<String, Status>,
    /// Records changed in memory only (`update_unpersisted`): their next
    /// write goes to disk even if it changes nothing more.
    unpersisted: std::collections::BTreeSet<String>,
    /// The records counted by phase and profile, updated with every change.
    counts: StatusCounts,
    /// Ids whose record was written or removed since `take_changed`: the
    /// daemon re-decides only those for its planning scope (issue 12).
    changed: BTreeSet<String>,
    /// Told of every change (`observe`).
    observer: Option<std::sync::Arc<dyn StatusObserver>>,
}

impl StatusStore {
    /// Open (creating) `<state>/status` and load every record in it.
    /// Unreadable or corrupt records are reported and skipped.
    pub fn open(state: &Path) -> Result<(StatusStore, Vec<String>), StatusError> {
        let dir = state.join("status");
        fs::create_dir_all(&dir).map_err(|source| StatusError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let (records, problems) = read_dir(&dir)?;
        let counts = StatusCounts::of(records.values());
        Ok((
            StatusStore {
                dir,
                records,
                unpersisted: Default::default(),
                counts,
                changed: BTreeSet::new(),
                observer: None,
            },
            problems,
        ))
    }

    /// Tell `observer` of every change from now on.
    pub fn observe(&mut self, observer: std::sync::Arc<dyn StatusObserver>) {
        self.observer = Some(observer);
    }

    fn tell(&self, before: Option<Phase>, after: &Status) {
        if let Some(o) = &self.observer {
            o.status_changed(before, after);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Status> {
        self.records.get(id)
    }

    pub fn all(&self) -> &BTreeMap<String, Status> {
        &self.records
    }

    /// The records counted by phase and profile.
    pub fn counts(&self) -> &StatusCounts {
        &self.counts
    }

    /// The ids whose record was written or removed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    /// Write `status` to disk, then to memory; a no-op when unchanged.
    pub fn put(&mut self, status: Status) -> Result<(), StatusError> {
        if self.records.get(&status.request) == Some(&status)
            && !self.unpersisted.contains(&status.request)
        {
            return Ok(());
        }
        let path = self.dir.join(format!("{}.json", status.request));
        // A record that cannot be serialised is a failed write: memory keeps
        // the old record, and the pass that decides it again retries.
        write_json_atomic(&path, &status, 0o600)
            .map_err(|source| StatusError::Write { path, source })?;
        let id = status.request.clone();
        self.unpersisted.remove(&id);
        let before = self.records.get(&id).map(|s| s.phase);
        self.tell(before, &status);
        self.counts.replace(self.records.get(&id), Some(&status));
        self.records.insert(id.clone(), status);
        self.changed.insert(id);
        Ok(())
    }

    /// Apply `f` to a record in memory only, for a change the very next
    /// write of that record supersedes (a start marks `starting` for the
    /// slot count; its task writes `starting` with the session id a moment
    /// later): a crash in between leaves the older record on disk, which
    /// the next daemon handles the same way. Saves a synced write on the
    /// way to `podman run` (issue 12 item 4).
    pub fn update_unpersisted(&mut self, id: &str, f: impl FnOnce(&mut Status)) -> Option<Status> {
        let old = self.records.get(id)?.clone();
        let s = self.records.get_mut(id)?;
        f(s);
        let s = s.clone();
        // Counted and planned like any change; only the disk lags.
        self.tell(Some(old.phase), &s);
        self.counts.replace(Some(&old), Some(&s));
        self.changed.insert(id.to_string());
        self.unpersisted.insert(id.to_string());
        Some(s)
    }

    /// Apply `f` to a record and store the result, if the record exists.
    pub fn update(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut Status),
    ) -> Result<Option<Status>, StatusError> {
        let Some(mut s) = self.records.get(id).cloned() else {
            return Ok(None);
        };
        f(&mut s);
        self.put(s.clone())?;
        Ok(Some(s))
    }

    pub fn remove(&mut self, id: &str) -> Result<(), StatusError> {
        let path = self.dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StatusError::Write { path, source }),
        }
        self.unpersisted.remove(id);
        if let Some(old) = self.records.remove(id) {
            self.counts.replace(Some(&old), None);
            self.changed.insert(id.to_string());
        }
        Ok(())
    }
}

/// Read every `*.json` record of a status folder (for the CLI and startup).
pub fn read_dir(dir: &Path) -> Result<(BTreeMap<String, Status>, Vec<String>), StatusError> {
    // Collected first, then built in one go: `BTreeMap` builds sorted input
    // into full nodes, where inserting in the folder's order leaves them
    // about a third empty (10,000 records: ~1.5 MB, issue 12).
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((BTreeMap::new(), problems)),
        Err(source) => {
            return Err(StatusError::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match read_one(&path) {
            Ok(s) => records.push((s.request.clone(), s)),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((records.into_iter().collect(), problems))
}

pub fn read_one(path: &Path) -> Result<Status, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::Phase;

    fn on_disk(state: &Path, id: &str) -> Phase {
        let (records, _) = read_dir(&state.join("status")).expect("read");
        records[id].phase
    }

    #[test]
    fn an_unpersisted_change_is_written_by_the_next_update_even_if_equal_issue_12() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = StatusStore::open(dir.path()).expect("open");
        let mut s = Status::new("r", "p");
        s.phase = Phase::Pending;
        store.put(s).expect("put");
        store.update_unpersisted("r", |s| s.phase = Phase::Starting);
        assert_eq!(store.get("r").map(|s| s.phase), Some(Phase::Starting));
        assert_eq!(on_disk(dir.path(), "r"), Phase::Pending);
        // Counted and marked changed at once, though not yet on disk.
        assert_eq!(store.counts(), &StatusCounts::of(store.all().values()));
        assert!(store.take_changed().contains("r"));
        // An update that changes nothing more still persists it.
        store.update("r", |_| {}).expect("update");
        assert_eq!(on_disk(dir.path(), "r"), Phase::Starting);
    }

    /// The store's own counts and change list follow every write and
    /// removal (the pure counting is property-tested in `observed`).
    #[test]
    fn counts_and_changes_follow_writes_and_removals_issue_12() {
        let d = tempfile::tempdir().expect("tempdir");
        let (mut store, problems) = StatusStore::open(d.path()).expect("open");
        assert!(problems.is_empty());
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..120 {
            let id = format!("r{}", next(5));
            if next(4) == 0 {
                store.remove(&id).expect("remove");
            } else if next(2) == 0 {
                let phase = Phase::ALL[usize::try_from(next(6)).unwrap_or(0)];
                store.update(&id, |s| s.phase = phase).expect("update");
            } else {
                let mut s = Status::new(&id, &format!("p{}", next(3)));
                s.phase = Phase::ALL[usize::try_from(next(6)).unwrap_or(0)];
                store.put(s).expect("put");
            }
            assert_eq!(store.counts(), &StatusCounts::of(store.all().values()));
        }
        let (reopened, _) = StatusStore::open(d.path()).expect("reopen");
        assert_eq!(reopened.counts(), store.counts());
        assert_eq!(reopened.all(), store.all());

        store.take_changed();
        let mut s = Status::new("x", "p");
        store.put(s.clone()).expect("put");
        store.put(s.clone()).expect("unchanged: no write");
        s.phase = Phase::Done;
        store.put(s).expect("put");
        store.remove("absent").expect("remove");
        assert_eq!(store.take_changed(), BTreeSet::from(["x".to_string()]));
        assert!(store.take_changed().is_empty());
    }
}
