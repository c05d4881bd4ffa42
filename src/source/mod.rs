//! Reading the desired dir from disk, in three rooms: safe opening of
//! untrusted files (`open.rs`), scanning the kind folders (`scan.rs`), and
//! here the incremental source: a cache of per-file validation results
//! keyed by file identity (inode, size, mtime, `cache.rs`) so a pass
//! re-parses only files that changed, and the assembled `Desired`.
//!
//! This is IO; everything it hands on is checked by the pure `desired` module.

mod cache;
mod open;
mod scan;

pub use open::{read_capped, real_host};
pub use scan::{FileKey, Found, Skipped, scan, scan_each, scan_folder};

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::desired::{self, Desired, Diagnostic, HostView, Kind, MAX_FILE_BYTES, Profile, Request};
use cache::{FileState, Files, Parsed};
use open::{open_beneath, read_capped_from};
use scan::{behind_link, folder_of};

/// The sub-folders of the desired dir and the kind of file each holds.
pub const FOLDERS: [(&str, Kind); 2] = [("profiles", Kind::Profile), ("requests", Kind::Request)];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The desired dir or one of its folders is missing or unreadable. Never
    /// read as "everything was deleted": the daemon keeps what runs.
    #[error("source unavailable: {path}: {reason}")]
    Unavailable { path: PathBuf, reason: String },
}

/// The desired dir as the daemon sees it, kept up to date incrementally:
/// per-file validation results keyed by file identity, the assembled
/// `Desired`, and the indexes that say which entries a change touches. A
/// pass after one file changed re-reads that file and re-decides the few
/// names it affects; a full scan (start-up, periodic resync, lost events)
/// re-stats everything but still re-parses only files whose key changed.
pub struct Source {
    dir: PathBuf,
    /// Every candidate file's last validation, by kind and stem.
    files: Files,
    desired: Desired,
    /// Request ids whose entry was re-decided since `take_touched` (the
    /// daemon's planner looks at those, see `plan::Scope`).
    touched: BTreeSet<String>,
    /// The current scan's number: a file whose `seen` is older was not
    /// found by the last full scan (or folder rescan) and is gone.
    generation: u32,
    /// How many of `desired.requests` are invalid (for the metrics, which
    /// must not walk every request after every pass).
    invalid_requests: usize,
    /// Paths each kind folder's last scan did not follow (reported).
    skipped: BTreeMap<Kind, Vec<Skipped>>,
    /// Files (re)validated by the last update, for tests and benchmarks.
    pub last_parsed: usize,
}

impl Source {
    pub fn new(dir: &Path) -> Source {
        Source {
            dir: dir.to_path_buf(),
            files: Files::default(),
            desired: Desired::default(),
            touched: BTreeSet::new(),
            invalid_requests: 0,
            generation: 0,
            skipped: BTreeMap::new(),
            last_parsed: 0,
        }
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// How many request files are rejected (invalid entries).
    pub fn invalid_requests(&self) -> usize {
        self.invalid_requests
    }

    /// The request ids whose entry may have changed (appeared, changed,
    /// gone) since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// Re-stat every candidate file; re-validate the ones that changed.
    /// On `Unavailable` nothing is changed: the last good state stands.
    pub fn full_scan(&mut self, host: &dyn HostView) -> Result<(), SourceError> {
        self.generation = self.generation.wrapping_add(1);
        let mut changed = Vec::new();
        let mut skipped = BTreeMap::new();
        for (folder, kind) in FOLDERS {
            skipped.insert(kind, self.walk(folder, kind, &mut changed)?);
        }
        for (kind, list) in skipped {
            self.set_skipped(kind, list);
        }
        self.last_parsed = 0;
        let mut touched = Touched::default();
        for f in &changed {
            self.refresh(f, host, &mut touched);
        }
        for (_, kind) in FOLDERS {
            for p in self.files.unseen(kind, self.generation) {
                self.forget(kind, &p, &mut touched);
            }
        }
        self.redecide(touched, host);
        Ok(())
    }

    /// Scan one kind folder: mark every unchanged file seen in this
    /// generation, collect the new or changed ones into `changed`. Marks
    /// are all it changes, so an `Unavailable` part-way changes nothing.
    fn walk(
        &mut self,
        folder: &str,
        kind: Kind,
        changed: &mut Vec<Found>,
    ) -> Result<Vec<Skipped>, SourceError> {
        let (files, generation) = (&mut self.files, self.generation);
        scan_each(&self.dir, folder, kind, &mut |f| {
            if !files.mark_seen(kind, &f.path, f.key, generation) {
                changed.push(f);
            }
        })
    }

    /// Update only `paths` (from watcher events). A path that is not a
    /// candidate file (a folder, a renamed symlink, the folders themselves)
    /// rescans its whole folder.
    pub fn update_paths(
        &mut self,
        paths: &HashSet<PathBuf>,
        host: &dyn HostView,
    ) -> Result<(), SourceError> {
        self.last_parsed = 0;
        let mut touched = Touched::default();
        let mut rescan: BTreeSet<(&str, Kind)> = BTreeSet::new();
        for path in paths {
            let Some((folder, kind)) = FOLDERS
                .iter()
                .copied()
                .find(|(f, _)| path.starts_with(self.dir.join(f)))
            else {
                // The desired dir itself, or a sibling: re-check both folders.
                if path == &self.dir || !path.starts_with(&self.dir) {
                    rescan.extend(FOLDERS);
                }
                continue;
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hidden = path.strip_prefix(self.dir.join(folder)).is_ok_and(|rel| {
                rel.components()
                    .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
            });
            if hidden {
                continue;
            }
            let root = self.dir.join(folder);
            // Below a symlinked folder is not ours: never followed.
            if behind_link(&root, path) {
                continue;
            }
            if !desired::is_candidate(&name) {
                rescan.insert((folder, kind));
                continue;
            }
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_file() => {
                    let f = Found {
                        kind,
                        path: path.clone(),
                        key: FileKey::of(&meta),
                        problem: None,
                    };
                    self.refresh(&f, host, &mut touched);
                }
                // A symlinked file: the folder scan classifies it.
                Ok(_) => {
                    rescan.insert((folder, kind));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.forget(kind, path, &mut touched)
                }
                // Unreadable: the folder scan decides whether the source is
                // unavailable.
                Err(_) => {
                    rescan.insert((folder, kind));
                }
            }
        }
        for (folder, kind) in rescan {
            self.generation = self.generation.wrapping_add(1);
            let mut changed = Vec::new();
            let skipped = self.walk(folder, kind, &mut changed)?;
            self.set_skipped(kind, skipped);
            for f in &changed {
                self.refresh(f, host, &mut touched);
            }
            for p in self.files.unseen(kind, self.generation) {
                self.forget(kind, &p, &mut touched);
            }
        }
        self.redecide(touched, host);
        Ok(())
    }

    /// Re-validate `f` if its key changed since it was last read.
    fn refresh(&mut self, f: &Found, host: &dyn HostView, touched: &mut Touched) {
        if self.files.key(f.kind, &f.path) == Some(f.key) {
            return;
        }
        self.last_parsed += 1;
        // One resolution below the kind folder, so a link swapped after
        // the scan still cannot lead the read outside it.
        let bytes = match &f.problem {
            Some(why) => Err(why.clone()),
            None => {
                let root = self.dir.join(folder_of(f.kind));
                let rel = f.path.strip_prefix(&root).unwrap_or(&f.path);
                open_beneath(&root, rel)
                    .and_then(|file| read_capped_from(file, MAX_FILE_BYTES))
                    .map_err(|e| format!("cannot read file: {e}"))
            }
        };
        let unreadable = |why: &String| vec![Diagnostic::new(&f.path, None, why.clone())];
        let parsed = match f.kind {
            Kind::Profile => Parsed::Profile(Box::new(match &bytes {
                Ok(b) => desired::validate_profile(&f.path, b, host),
                Err(e) => Err(unreadable(e)),
            })),
            Kind::Request => Parsed::Request(match &bytes {
                Ok(b) => desired::validate_request(&f.path, b, host).map(Arc::new),
                Err(e) => Err(unreadable(e)),
            }),
        };
        touched.mark(f.kind, &desired::stem(&f.path));
        let state = FileState {
            key: f.key,
            parsed,
            seen: self.generation,
        };
        self.files.insert(f.kind, &f.path, state);
    }

    fn forget(&mut self, kind: Kind, path: &Path, touched: &mut Touched) {
        if self.files.remove(kind, path) {
            touched.mark(kind, &desired::stem(path));
        }
    }

    /// Record what a scan of one kind folder did not follow, and publish
    /// every such path as a diagnostic of the desired state.
    fn set_skipped(&mut self, kind: Kind, list: Vec<Skipped>) {
        self.skipped.insert(kind, list);
        self.desired.skipped = self
            .skipped
            .values()
            .flatten()
            .map(|s| {
                Diagnostic::new(&s.path, None, s.why.clone())
                    .hint("remove the link, or replace it with a real folder or file")
            })
            .collect();
    }

    /// Re-decide the touched names: profiles first (a changed profile
    /// re-checks every request that names it), then requests.
    fn redecide(&mut self, mut touched: Touched, host: &dyn HostView) {
        for name in std::mem::take(&mut touched.profiles) {
            let files: Vec<desired::FileRef<'_, Profile>> = self
                .files
                .stem(Kind::Profile, &name)
                .iter()
                .filter_map(|(p, s)| Some((p, s.parsed.profile()?)))
                .collect();
            let entry = desired::profile_entry(&name, &files);
            self.desired.profiles.remove(&name);
            self.desired.invalid_profiles.remove(&name);
            match entry {
                desired::ProfileEntry::Valid(p) => {
                    self.desired.profiles.insert(name.clone(), *p);
                }
                desired::ProfileEntry::Invalid(r) => {
                    self.desired.invalid_profiles.insert(name.clone(), r);
                }
                desired::ProfileEntry::Absent => {}
            }
            // Every request naming it is re-checked against it.
            touched.requests.extend(self.files.naming(&name).cloned());
        }
        // Most entries re-decided (the first scan): rebuild the map after,
        // from its sorted entries, into full B-tree nodes (inserting in
        // order leaves them half empty).
        let compact =
            touched.requests.len() > 64 && touched.requests.len() > self.desired.requests.len() / 2;
        for id in touched.requests {
            let files: Vec<desired::FileRef<'_, Arc<Request>>> = self
                .files
                .stem(Kind::Request, &id)
                .iter()
                .filter_map(|(p, s)| Some((p, s.parsed.request()?)))
                .collect();
            let invalid = |e: Option<&desired::RequestEntry>| {
                usize::from(matches!(e, Some(desired::RequestEntry::Invalid(_))))
            };
            let entry = desired::request_entry(&id, &files, &self.desired, host);
            self.invalid_requests += invalid(entry.as_ref());
            let old = match entry {
                Some(e) => self.desired.requests.insert(id.clone(), e),
                None => self.desired.requests.remove(&id),
            };
            self.invalid_requests = self.invalid_requests.saturating_sub(invalid(old.as_ref()));
            self.touched.insert(id);
        }
        if compact {
            self.desired.requests = std::mem::take(&mut self.desired.requests)
                .into_iter()
                .collect();
        }
    }
}

/// Names whose entries a change may have altered.
#[derive(Default)]
struct Touched {
    profiles: BTreeSet<String>,
    requests: BTreeSet<String>,
}

impl Touched {
    fn mark(&mut self, kind: Kind, stem: &str) {
        match kind {
            Kind::Profile => self.profiles.insert(stem.to_string()),
            Kind::Request => self.requests.insert(stem.to_string()),
        };
    }
}

/// Load a desired dir in one go (the CLI's path): the model plus every problem.
pub fn load(dir: &Path, host: &dyn HostView) -> Result<(Desired, Vec<Diagnostic>), SourceError> {
    let mut s = Source::new(dir);
    s.full_scan(host)?;
    let diags = s.desired.diagnostics();
    Ok((s.desired, diags))
}

#[cfg(test)]
mod tests;
