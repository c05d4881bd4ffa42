//! Reading the desired dir from disk: finding candidate files, reading them,
//! and keeping a cache of per-file validation results keyed by file identity
//! (inode, size, mtime) so a pass re-parses only files that changed.
//!
//! This is IO; everything it hands on is checked by the pure `desired` module.

mod cache;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use walkdir::WalkDir;

use crate::desired::{self, Desired, Diagnostic, HostView, Kind, MAX_FILE_BYTES, Profile, Request};
use cache::{FileState, Files, Parsed};

/// The sub-folders of the desired dir and the kind of file each holds.
pub const FOLDERS: [(&str, Kind); 2] = [("profiles", Kind::Profile), ("requests", Kind::Request)];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The desired dir or one of its folders is missing or unreadable. Never
    /// read as "everything was deleted": the daemon keeps what runs.
    #[error("source unavailable: {path}: {reason}")]
    Unavailable { path: PathBuf, reason: String },
}

/// The kind folder's name.
fn folder_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Profile => "profiles",
        Kind::Request => "requests",
    }
}

/// The host as validation sees it: the real filesystem.
pub struct RealHost;

/// The real filesystem, with `network = "host"` allowed when the operator
/// passed `--allow-host-network` (issue 17).
pub fn real_host(allow_host_network: bool) -> &'static dyn HostView {
    if allow_host_network {
        &desired::AllowHostNetwork(RealHost)
    } else {
        &RealHost
    }
}

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
        let f = open_regular(path, OFlag::O_NOFOLLOW).ok()?;
        read_capped_from(f, 16 * 1024 * 1024).ok()
    }
    fn read_beneath(&self, base: &Path, rel: &Path, cap: usize) -> Result<Vec<u8>, String> {
        let f = open_beneath(base, rel).map_err(|e| match e.raw_os_error() {
            Some(libc_errno) if libc_errno == Errno::EXDEV as i32 => format!(
                "resolves outside `{}` (through `..` or a symlink)",
                base.display()
            ),
            Some(libc_errno) if libc_errno == Errno::ELOOP as i32 => {
                "resolves through a symlink loop".to_string()
            }
            _ => format!("cannot be read: {e}"),
        })?;
        read_capped_from(f, cap).map_err(|e| format!("cannot be read: {e}"))
    }
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        fs::canonicalize(path).ok()
    }
}

/// Open `path` for reading without ever blocking (a FIFO or device opened
/// `O_NONBLOCK` returns at once) and only if it is a regular file (checked
/// on the opened descriptor, so a swap after the check changes nothing).
fn open_regular(path: &Path, extra: OFlag) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra).bits())
        .open(path)?;
    regular(f)
}

fn regular(f: fs::File) -> std::io::Result<fs::File> {
    if f.metadata()?.file_type().is_file() {
        Ok(f)
    } else {
        Err(std::io::Error::other("not a regular file"))
    }
}

/// Open `rel` below the folder `base` in one resolution that may not leave
/// `base`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so `..`,
/// absolute symlinks and symlinks climbing out are refused by the kernel
/// (`EXDEV`); symlinks that stay below `base` work. `base` itself is
/// opened following links (a kind folder may be a swapped symlink). On a
/// kernel without `openat2` every component is opened with `O_NOFOLLOW`
/// instead (no symlink at all below `base`).
fn open_beneath(base: &Path, rel: &Path) -> std::io::Result<fs::File> {
    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    let dir = fs::File::open(base)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(&dir, rel, how) {
        Ok(fd) => regular(fs::File::from(fd)),
        Err(Errno::ENOSYS) => {
            let mut cur = std::os::fd::OwnedFd::from(dir);
            let parts: Vec<_> = rel.components().collect();
            for (i, c) in parts.iter().enumerate() {
                let std::path::Component::Normal(name) = c else {
                    return Err(Errno::EXDEV.into());
                };
                let last = i + 1 == parts.len();
                let f = if last {
                    flags
                } else {
                    flags | OFlag::O_DIRECTORY
                };
                cur = nix::fcntl::openat(
                    &cur,
                    *name,
                    f | OFlag::O_NOFOLLOW,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| if e == Errno::ELOOP { Errno::EXDEV } else { e })?;
            }
            regular(fs::File::from(cur))
        }
        Err(e) => Err(e.into()),
    }
}

/// Read at most `cap + 1` bytes, so a huge file costs nothing to reject.
/// Only a regular file is read, opened without blocking: a FIFO planted
/// under `requests/` never stalls the daemon.
pub fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    read_capped_from(open_regular(path, OFlag::empty())?, cap)
}

fn read_capped_from(f: fs::File, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// What identifies a version of a file without reading it. Times are
/// nanoseconds in an `i64` (kept per file, 10,000 times over): that covers
/// the years 1677-2262; an mtime beyond saturates, and the ctime, which
/// the kernel sets to the real time of every change, still tells a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u64,
    pub len: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            ino: meta.ino(),
            dev: meta.dev(),
            len: meta.len(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// A candidate file found by a scan.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: Kind,
    pub path: PathBuf,
    pub key: FileKey,
    /// Why the file is rejected without being read (a symlink leading out
    /// of its folder, or one that cannot be resolved).
    pub problem: Option<String>,
}

/// A path below a kind folder that is not followed and is reported: a
/// symlinked folder, a symlink loop. Everything else there keeps working.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

/// What a scan of one kind folder found.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    pub skipped: Vec<Skipped>,
}

/// What one path below a kind folder is, as the scan decides.
enum Entry {
    File(Found),
    Skip(Skipped),
    /// Not ours (not a candidate, gone, a plain folder): silently nothing.
    Ignore,
}

/// Decide what a symlink below a kind folder is. Symlinks are never
/// followed into folders (a `requests/evil -> /` would walk the host); a
/// symlinked candidate file is read only when its target stays inside the
/// kind folder (ConfigMap-style `x.toml -> ..data/x.toml`), else it is
/// rejected for that path; a loop is reported for that path.
fn classify_link(
    root_canon: Option<&Path>,
    kind: Kind,
    path: &Path,
    lmeta: &fs::Metadata,
) -> Entry {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let candidate = desired::is_candidate(&name);
    let skip = |why: String| {
        Entry::Skip(Skipped {
            path: path.to_path_buf(),
            why,
        })
    };
    let reject = |why: String| {
        Entry::File(Found {
            kind,
            path: path.to_path_buf(),
            key: FileKey::of(lmeta),
            problem: Some(why),
        })
    };
    match fs::metadata(path) {
        // A dangling link is nothing (an editor's lock, a half-done swap).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Entry::Ignore,
        Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => {
            let why = "symlink loop; not followed".to_string();
            if candidate { reject(why) } else { skip(why) }
        }
        Err(e) => {
            let why = format!("symlink cannot be resolved: {e}");
            if candidate { reject(why) } else { skip(why) }
        }
        Ok(m) if m.is_dir() => skip(
            "symlink to a folder; agentd does not follow symlinked folders below profiles/ and requests/ (only those two folders themselves may be symlinks)"
                .to_string(),
        ),
        Ok(_) if !candidate => Entry::Ignore,
        Ok(m) if !m.is_file() => Entry::Ignore,
        Ok(m) => {
            let inside = root_canon.is_some_and(|root| {
                fs::canonicalize(path).is_ok_and(|target| target.starts_with(root))
            });
            if inside {
                Entry::File(Found {
                    kind,
                    path: path.to_path_buf(),
                    key: FileKey::of(&m),
                    problem: None,
                })
            } else {
                reject(
                    "symlink leads outside its folder; agentd reads no host files outside the desired dir"
                        .to_string(),
                )
            }
        }
    }
}

/// The kind folder `dir/<folder>` (followed if it is a symlink), or why it
/// is unavailable.
fn kind_root(dir: &Path, folder: &str) -> Result<PathBuf, SourceError> {
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
    Ok(root)
}

/// List candidate files under `dir/<folder>` for one folder. A missing
/// folder is `Unavailable`; unreadable entries inside are skipped (they will
/// be retried next pass).
pub fn scan_folder(dir: &Path, folder: &str, kind: Kind) -> Result<Vec<Found>, SourceError> {
    Ok(scan(dir, folder, kind)?.found)
}

/// Scan one kind folder: candidate files, plus the symlinks it does not
/// follow (reported, never walked into).
pub fn scan(dir: &Path, folder: &str, kind: Kind) -> Result<Scan, SourceError> {
    let mut found = Vec::new();
    let skipped = scan_each(dir, folder, kind, &mut |f| found.push(f))?;
    Ok(Scan { found, skipped })
}

/// [`scan`], handing each candidate file to `each` as it is found instead
/// of collecting them (the daemon's full scans keep only the changed ones:
/// 10,000 unchanged files need no list). Returns what was not followed.
pub fn scan_each(
    dir: &Path,
    folder: &str,
    kind: Kind,
    each: &mut dyn FnMut(Found),
) -> Result<Vec<Skipped>, SourceError> {
    let root = kind_root(dir, folder)?;
    let root_canon = fs::canonicalize(&root).ok();
    let mut skipped = Vec::new();
    // The root itself is followed (walkdir follows a root link); nothing
    // below it is.
    let walker = WalkDir::new(&root)
        .follow_links(false)
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
            // Anything else (a folder we cannot read) hides files we would
            // otherwise treat as deleted: the whole folder is unavailable
            // this pass.
            Err(e) => {
                return Err(SourceError::Unavailable {
                    path: e.path().map_or_else(|| root.clone(), Path::to_path_buf),
                    reason: e.to_string(),
                });
            }
        };
        let ft = entry.file_type();
        if ft.is_symlink() {
            let Ok(lmeta) = entry.path().symlink_metadata() else {
                continue;
            };
            match classify_link(root_canon.as_deref(), kind, entry.path(), &lmeta) {
                Entry::File(f) => each(f),
                Entry::Skip(s) => skipped.push(s),
                Entry::Ignore => {}
            }
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        if !desired::is_candidate(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        each(Found {
            kind,
            path: entry.into_path(),
            key: FileKey::of(&meta),
            problem: None,
        });
    }
    Ok(skipped)
}

/// Whether a folder between `root` and `path` (exclusive of both) is a
/// symlink: such a path is not part of the desired dir as agentd reads it.
fn behind_link(root: &Path, path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return false;
    };
    let Ok(rel) = parent.strip_prefix(root) else {
        return false;
    };
    let mut cur = root.to_path_buf();
    rel.components().any(|c| {
        cur.push(c);
        fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
    })
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
        let invalid = fresh
            .requests
            .values()
            .filter(|e| matches!(e, desired::RequestEntry::Invalid(_)))
            .count();
        assert_eq!(
            s.invalid_requests(),
            invalid,
            "invalid count kept per change"
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

    // --- issue 13: planted links and FIFOs ---

    #[test]
    fn planted_links_are_reported_and_skipped_while_the_rest_loads_issue_13() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        let outside = tempfile::tempdir().expect("tempdir");
        put(
            dir,
            "profiles/p.toml",
            "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
        );
        put(dir, "requests/ok.toml", "profile = \"p\"\n");
        put(outside.path(), "stolen.toml", "profile = \"p\"\n");
        symlink("/", dir.join("requests/evil")).expect("ln");
        symlink("loop", dir.join("requests/loop")).expect("ln");
        symlink("self.toml", dir.join("requests/self.toml")).expect("ln");
        symlink(
            outside.path().join("stolen.toml"),
            dir.join("requests/out.toml"),
        )
        .expect("ln");
        symlink(outside.path(), dir.join("profiles/team")).expect("ln");
        // A link to a file inside the folder (ConfigMap style) is read.
        put(dir, "requests/..data/cm.toml", "profile = \"p\"\n");
        symlink("..data/cm.toml", dir.join("requests/cm.toml")).expect("ln");
        nix::unistd::mkfifo(
            &dir.join("requests/fifo.toml"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .expect("mkfifo");

        let mut s = Source::new(dir);
        s.full_scan(&RealHost)
            .expect("a planted link never makes the source unavailable");
        let want_valid = ["cm", "ok"];
        for id in want_valid {
            assert!(
                matches!(
                    s.desired().requests.get(id),
                    Some(desired::RequestEntry::Valid(_))
                ),
                "{id}: {:?}",
                s.desired().requests.get(id)
            );
        }
        fn invalid(s: &Source, id: &str) -> String {
            match s.desired().requests.get(id) {
                Some(desired::RequestEntry::Invalid(r)) => r.summary(),
                other => panic!("{id}: {other:?}"),
            }
        }
        assert!(invalid(&s, "out").contains("symlink leads outside its folder"));
        assert!(invalid(&s, "self").contains("symlink loop"));
        assert!(!s.desired().requests.contains_key("fifo"));
        let skipped: Vec<String> = s
            .desired()
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:#?}");
        assert!(
            skipped[0].contains("profiles/team: symlink to a folder"),
            "{skipped:#?}"
        );
        assert!(
            skipped[1].contains("requests/evil: symlink to a folder"),
            "{skipped:#?}"
        );
        assert!(
            skipped[2].contains("requests/loop: symlink loop"),
            "{skipped:#?}"
        );
        same_as_fresh(&s, dir);

        // Events naming paths behind a symlinked folder are not followed.
        s.update_paths(
            &[
                dir.join("profiles/team/x.toml"),
                dir.join("requests/evil/etc/passwd"),
            ]
            .into(),
            &RealHost,
        )
        .expect("update");
        assert_eq!(s.last_parsed, 0);
        // An event on a planted link re-classifies it, never reads through it.
        s.update_paths(&[dir.join("requests/out.toml")].into(), &RealHost)
            .expect("update");
        assert!(invalid(&s, "out").contains("symlink leads outside its folder"));
        same_as_fresh(&s, dir);
    }

    #[test]
    fn a_fifo_is_never_opened_blocking_issue_13() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("x.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // These would hang forever with a blocking open (no writer).
        assert!(read_capped(&fifo, 10).is_err());
        assert!(RealHost.read(&fifo).is_none());
        assert!(
            RealHost
                .read_beneath(d.path(), Path::new("x.toml"), 10)
                .is_err()
        );
    }

    #[test]
    fn an_artifact_is_read_beneath_the_requests_folder_only_issue_13() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        put(outside.path(), "secret.json", "{\"secret\": 1}");
        let req = d.path().join("requests");
        put(&req, "in/a.json", "{\"a\": 1}");
        symlink(outside.path(), req.join("out")).expect("ln");
        symlink("in", req.join("sub")).expect("ln");
        symlink(outside.path().join("secret.json"), req.join("abs.json")).expect("ln");
        let read = |rel: &str| RealHost.read_beneath(&req, Path::new(rel), 1024);
        assert_eq!(read("in/a.json").expect("inside"), b"{\"a\": 1}");
        // A link that stays inside is fine; one that leaves is refused.
        assert_eq!(read("sub/a.json").expect("inside link"), b"{\"a\": 1}");
        let why = read("out/secret.json").expect_err("outside");
        assert!(why.contains("resolves outside"), "{why}");
        assert!(
            read("abs.json")
                .expect_err("absolute link")
                .contains("resolves outside")
        );
        assert!(
            read("in")
                .expect_err("a folder")
                .contains("not a regular file")
        );
    }
}
