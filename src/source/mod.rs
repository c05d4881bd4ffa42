//! Reading the desired dir from disk: finding candidate files, reading them,
//! and keeping a cache of per-file validation results keyed by file identity
//! (inode, size, mtime) so a pass re-parses only files that changed.
//!
//! This is IO; everything it hands on is checked by the pure `desired` module.

use std::collections::HashMap;
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

/// Per-file validation results from earlier passes, reused while a file's
/// key is unchanged.
#[derive(Default)]
pub struct Cache {
    profiles: HashMap<PathBuf, (FileKey, Result<Profile, Vec<Diagnostic>>)>,
    requests: HashMap<PathBuf, (FileKey, Result<Request, Vec<Diagnostic>>)>,
    /// Files (re)validated by the last `load`, for tests and benchmarks.
    pub last_parsed: usize,
}

/// A loaded desired dir.
pub struct Loaded {
    pub desired: Desired,
    pub diagnostics: Vec<Diagnostic>,
}

impl Cache {
    /// Scan `dir` and validate what changed since the last call.
    pub fn load(&mut self, dir: &Path, host: &dyn HostView) -> Result<Loaded, SourceError> {
        let found_profiles = scan_folder(dir, FOLDERS[0].0, Kind::Profile)?;
        let found_requests = scan_folder(dir, FOLDERS[1].0, Kind::Request)?;
        self.last_parsed = 0;
        let profiles = refresh(
            &mut self.profiles,
            &found_profiles,
            &mut self.last_parsed,
            |p, b| desired::validate_profile(p, b, host),
        );
        let requests = refresh(
            &mut self.requests,
            &found_requests,
            &mut self.last_parsed,
            |p, b| desired::validate_request(p, b, host),
        );
        let (desired, diagnostics) = desired::assemble(profiles, requests, host);
        Ok(Loaded {
            desired,
            diagnostics,
        })
    }
}

fn refresh<T: Clone>(
    cache: &mut HashMap<PathBuf, (FileKey, Result<T, Vec<Diagnostic>>)>,
    found: &[Found],
    parsed: &mut usize,
    validate: impl Fn(&Path, &[u8]) -> Result<T, Vec<Diagnostic>>,
) -> Vec<desired::FileResult<T>> {
    let mut keep: HashMap<PathBuf, (FileKey, Result<T, Vec<Diagnostic>>)> =
        HashMap::with_capacity(found.len());
    for f in found {
        let entry = match cache.remove(&f.path) {
            Some(old) if old.0 == f.key => old,
            _ => {
                *parsed += 1;
                let result = match read_capped(&f.path, MAX_FILE_BYTES) {
                    Ok(bytes) => validate(&f.path, &bytes),
                    Err(e) => Err(vec![Diagnostic::new(
                        &f.path,
                        None,
                        format!("cannot read file: {e}"),
                    )]),
                };
                (f.key, result)
            }
        };
        keep.insert(f.path.clone(), entry);
    }
    *cache = keep;
    cache
        .iter()
        .map(|(p, (_, r))| (p.clone(), r.clone()))
        .collect()
}
