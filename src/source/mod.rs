//! Reading the desired dir from disk: finding candidate files, reading them,
//! and keeping a cache of per-file validation results keyed by file identity
//! (inode, size, mtime) so a pass re-parses only files that changed.
//!
//! This is IO; everything it hands on is checked by the pure `desired` module.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::desired::{self, Desired, Diagnostic, HostView, Kind, MAX_FILE_BYTES, Profile, Request};

/// The sub-folders of the desired dir and the kind of file each holds.
pub const FOLDERS: [(&str, Kind); 2] = [("profiles", Kind::Profile), ("requests", Kind::Request)];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The desired dir or one of its folders is missing or unreadable. Never
    /// read as "everything was deleted": the daemon keeps what runs.
    #[error("source unavailable: {path}: {reason}")]
    Unavailable { path: PathBuf, reason: String },
}

/// The host as validation sees it: the real filesystem.
pub struct RealHost;

impl HostView for RealHost {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    /// Regular files only, never through a final symlink: a request may not
    /// make the daemon (root) read a FIFO (it would hang) or a file that a
    /// link points at elsewhere on the host.
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        read_capped(path, 16 * 1024 * 1024).ok()
    }
}

/// Read at most `cap + 1` bytes, so a huge file costs nothing to reject.
pub fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            ino: meta.ino(),
            dev: meta.dev(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// A candidate file found by a scan.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: Kind,
    pub path: PathBuf,
    pub key: FileKey,
}

/// List candidate files under `dir/<folder>` for one folder. A missing
/// folder is `Unavailable`; unreadable entries inside are skipped (they will
/// be retried next pass).
pub fn scan_folder(dir: &Path, folder: &str, kind: Kind) -> Result<Vec<Found>, SourceError> {
    let root = dir.join(folder);
    let meta = fs::metadata(&root).map_err(|e| SourceError::Unavailable {
        path: root.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(SourceError::Unavailable {
            path: root,
            reason: "not a folder".into(),
        });
    }
    let mut out = Vec::new();
    let walker = WalkDir::new(&root)
        .follow_links(true)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            // A file removed mid-walk is simply gone.
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                continue;
            }
            // Anything else (a folder we cannot read, a symlink loop) hides
            // files we would otherwise treat as deleted: the whole folder
            // is unavailable this pass.
            Err(e) => {
                return Err(SourceError::Unavailable {
                    path: e.path().map_or_else(|| root.clone(), Path::to_path_buf),
                    reason: e.to_string(),
                });
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        if !desired::is_candidate(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        out.push(Found {
            kind,
            path: entry.into_path(),
            key: FileKey::of(&meta),
        });
    }
    Ok(out)
}

/// One candidate file's last validation.
enum Parsed {
    Profile(Result<Profile, Vec<Diagnostic>>),
    Request(Result<Request, Vec<Diagnostic>>),
}

impl Parsed {
    fn profile(&self) -> Option<&Result<Profile, Vec<Diagnostic>>> {
        match self {
            Parsed::Profile(r) => Some(r),
            Parsed::Request(_) => None,
        }
    }
    fn request(&self) -> Option<&Result<Request, Vec<Diagnostic>>> {
        match self {
            Parsed::Request(r) => Some(r),
            Parsed::Profile(_) => None,
        }
    }
}

struct FileState {
    key: FileKey,
    parsed: Parsed,
}

/// The desired dir as the daemon sees it, kept up to date incrementally:
/// per-file validation results keyed by file identity, the assembled
/// `Desired`, and the indexes that say which entries a change touches. A
/// pass after one file changed re-reads that file and re-decides the few
/// names it affects; a full scan (start-up, periodic resync, lost events)
/// re-stats everything but still re-parses only files whose key changed.
pub struct Source {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
    /// Files per (kind, stem): more than one is a duplicate.
    stems: HashMap<(Kind, String), BTreeSet<PathBuf>>,
    /// Request ids per profile they name: re-checked when the profile changes.
    by_profile: HashMap<String, BTreeSet<String>>,
    desired: Desired,
    /// Files (re)validated by the last update, for tests and benchmarks.
    pub last_parsed: usize,
}

impl Source {
    pub fn new(dir: &Path) -> Source {
        Source {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            stems: HashMap::new(),
            by_profile: HashMap::new(),
            desired: Desired::default(),
            last_parsed: 0,
        }
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Re-stat every candidate file; re-validate the ones that changed.
    /// On `Unavailable` nothing is changed: the last good state stands.
    pub fn full_scan(&mut self, host: &dyn HostView) -> Result<(), SourceError> {
        let mut found = Vec::new();
        for (folder, kind) in FOLDERS {
            found.extend(scan_folder(&self.dir, folder, kind)?);
        }
        self.last_parsed = 0;
        let seen: HashSet<&PathBuf> = found.iter().map(|f| &f.path).collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains(p))
            .cloned()
            .collect();
        let mut touched = Touched::default();
        for p in gone {
            self.forget(&p, &mut touched);
        }
        for f in &found {
            self.refresh(f, host, &mut touched);
        }
        self.redecide(touched, host);
        Ok(())
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
            if !desired::is_candidate(&name) {
                rescan.insert((folder, kind));
                continue;
            }
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {
                    let f = Found {
                        kind,
                        path: path.clone(),
                        key: FileKey::of(&meta),
                    };
                    self.refresh(&f, host, &mut touched);
                }
                Ok(_) => {
                    rescan.insert((folder, kind));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.forget(path, &mut touched)
                }
                // Unreadable: the folder scan decides whether the source is
                // unavailable.
                Err(_) => {
                    rescan.insert((folder, kind));
                }
            }
        }
        for (folder, kind) in rescan {
            let found = scan_folder(&self.dir, folder, kind)?;
            let seen: HashSet<&PathBuf> = found.iter().map(|f| &f.path).collect();
            let root = self.dir.join(folder);
            let gone: Vec<PathBuf> = self
                .files
                .keys()
                .filter(|p| p.starts_with(&root) && !seen.contains(p))
                .cloned()
                .collect();
            for p in gone {
                self.forget(&p, &mut touched);
            }
            for f in &found {
                self.refresh(f, host, &mut touched);
            }
        }
        self.redecide(touched, host);
        Ok(())
    }

    /// Re-validate `f` if its key changed since it was last read.
    fn refresh(&mut self, f: &Found, host: &dyn HostView, touched: &mut Touched) {
        if self.files.get(&f.path).is_some_and(|s| s.key == f.key) {
            return;
        }
        self.last_parsed += 1;
        let bytes = read_capped(&f.path, MAX_FILE_BYTES);
        let unreadable = |e: &std::io::Error| {
            vec![Diagnostic::new(
                &f.path,
                None,
                format!("cannot read file: {e}"),
            )]
        };
        let parsed = match f.kind {
            Kind::Profile => Parsed::Profile(match &bytes {
                Ok(b) => desired::validate_profile(&f.path, b, host),
                Err(e) => Err(unreadable(e)),
            }),
            Kind::Request => Parsed::Request(match &bytes {
                Ok(b) => desired::validate_request(&f.path, b, host),
                Err(e) => Err(unreadable(e)),
            }),
        };
        let stem = desired::stem(&f.path);
        touched.mark(f.kind, &stem);
        self.stems
            .entry((f.kind, stem))
            .or_default()
            .insert(f.path.clone());
        self.files
            .insert(f.path.clone(), FileState { key: f.key, parsed });
    }

    fn forget(&mut self, path: &Path, touched: &mut Touched) {
        let Some(state) = self.files.remove(path) else {
            return;
        };
        let kind = match state.parsed {
            Parsed::Profile(_) => Kind::Profile,
            Parsed::Request(_) => Kind::Request,
        };
        let stem = desired::stem(path);
        if let Some(set) = self.stems.get_mut(&(kind, stem.clone())) {
            set.remove(path);
            if set.is_empty() {
                self.stems.remove(&(kind, stem.clone()));
            }
        }
        touched.mark(kind, &stem);
    }

    /// The files that currently have this stem.
    fn stem_paths(&self, kind: Kind, name: &str) -> BTreeSet<PathBuf> {
        self.stems
            .get(&(kind, name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Re-decide the touched names: profiles first (a changed profile
    /// re-checks every request that names it), then requests.
    fn redecide(&mut self, mut touched: Touched, host: &dyn HostView) {
        for name in std::mem::take(&mut touched.profiles) {
            let paths = self.stem_paths(Kind::Profile, &name);
            let files: Vec<desired::FileRef<'_, Profile>> = paths
                .iter()
                .filter_map(|p| Some((p, self.files.get(p)?.parsed.profile()?)))
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
            if let Some(ids) = self.by_profile.get(&name) {
                touched.requests.extend(ids.iter().cloned());
            }
        }
        for id in touched.requests {
            let paths = self.stem_paths(Kind::Request, &id);
            let files: Vec<desired::FileRef<'_, Request>> = paths
                .iter()
                .filter_map(|p| Some((p, self.files.get(p)?.parsed.request()?)))
                .collect();
            // Re-index which profile this id names.
            for ids in self.by_profile.values_mut() {
                ids.remove(&id);
            }
            for (_, r) in &files {
                if let Ok(r) = r {
                    self.by_profile
                        .entry(r.profile.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
            match desired::request_entry(&id, &files, &self.desired, host) {
                Some(e) => {
                    self.desired.requests.insert(id, e);
                }
                None => {
                    self.desired.requests.remove(&id);
                }
            }
        }
        self.by_profile.retain(|_, ids| !ids.is_empty());
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
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn same_as_fresh(s: &Source, dir: &Path) {
        let (fresh, _) = load(dir, &RealHost).expect("load");
        assert_eq!(
            s.desired(),
            &fresh,
            "incremental state differs from a fresh load"
        );
    }

    #[test]
    fn only_changed_files_are_parsed_and_results_match_a_fresh_load() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        put(
            dir,
            "profiles/p.toml",
            "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
        );
        for i in 0..50 {
            put(dir, &format!("requests/r{i}.toml"), "profile = \"p\"\n");
        }
        let mut s = Source::new(dir);
        s.full_scan(&RealHost).expect("scan");
        assert_eq!(s.last_parsed, 51);
        s.full_scan(&RealHost).expect("scan");
        assert_eq!(s.last_parsed, 0, "a rescan re-parses nothing unchanged");

        // One new file: one parse.
        let new = put(dir, "requests/new.toml", "profile = \"q\"\n");
        s.update_paths(&[new.clone()].into(), &RealHost)
            .expect("update");
        assert_eq!(s.last_parsed, 1);
        assert!(
            matches!(
                s.desired().requests["new"],
                desired::RequestEntry::Invalid(_)
            ),
            "profile q unknown"
        );
        same_as_fresh(&s, dir);

        // The profile it names appears: only the profile is read, and the
        // request naming it is re-checked without being re-read.
        let q = put(
            dir,
            "profiles/q.yaml",
            "base_image: i\ncommand: [x]\nrepo: /r\n",
        );
        s.update_paths(&[q.clone()].into(), &RealHost)
            .expect("update");
        assert_eq!(s.last_parsed, 1);
        assert!(matches!(
            s.desired().requests["new"],
            desired::RequestEntry::Valid(_)
        ));
        same_as_fresh(&s, dir);

        // A duplicate stem, then its removal.
        let dup = put(
            dir,
            "profiles/team/q.toml",
            "base_image = \"i\"\ncommand = [\"x\"]\n",
        );
        s.update_paths(&[dup.clone()].into(), &RealHost)
            .expect("update");
        assert!(s.desired().invalid_profiles.contains_key("q"));
        same_as_fresh(&s, dir);
        std::fs::remove_file(&dup).expect("rm");
        s.update_paths(&[dup].into(), &RealHost).expect("update");
        assert!(s.desired().profiles.contains_key("q"));
        same_as_fresh(&s, dir);

        // Deleting a request; an event on a folder rescans that folder.
        std::fs::remove_file(&new).expect("rm");
        std::fs::remove_file(dir.join("requests/r3.toml")).expect("rm");
        s.update_paths(&[new, dir.join("requests")].into(), &RealHost)
            .expect("update");
        assert!(
            !s.desired().requests.contains_key("new") && !s.desired().requests.contains_key("r3")
        );
        assert_eq!(s.last_parsed, 0);
        same_as_fresh(&s, dir);

        // Hidden and temp files are ignored even when events name them.
        let tmp = put(dir, "requests/.x.toml.123.tmp", "garbage");
        s.update_paths(&[tmp].into(), &RealHost).expect("update");
        assert_eq!(s.last_parsed, 0);
        same_as_fresh(&s, dir);
    }

    #[test]
    fn a_missing_folder_is_unavailable_and_changes_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        put(
            dir,
            "profiles/p.toml",
            "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
        );
        put(dir, "requests/r.toml", "profile = \"p\"\n");
        let mut s = Source::new(dir);
        s.full_scan(&RealHost).expect("scan");
        std::fs::rename(dir.join("requests"), dir.join("away")).expect("mv");
        assert!(s.full_scan(&RealHost).is_err());
        assert!(
            s.update_paths(&[dir.join("requests")].into(), &RealHost)
                .is_err()
        );
        assert!(
            s.desired().requests.contains_key("r"),
            "nothing is forgotten while the source is away"
        );
    }
}
