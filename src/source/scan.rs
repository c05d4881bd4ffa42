//! Scanning the desired dir: the candidate files of a kind folder, what
//! identifies a version of each without reading it (`FileKey`), and the
//! symlinks that are not followed (reported, never walked into).

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use walkdir::WalkDir;

use super::SourceError;
use crate::desired::{self, Kind};

/// The kind folder's name.
pub(super) fn folder_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Profile => "profiles",
        Kind::Request => "requests",
    }
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
    pub(super) fn of(meta: &fs::Metadata) -> Self {
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
pub(super) fn kind_root(dir: &Path, folder: &str) -> Result<PathBuf, SourceError> {
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
pub(super) fn behind_link(root: &Path, path: &Path) -> bool {
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
