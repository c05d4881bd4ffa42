//! Finalizing a record: take `session/` back from the session user, write
//! `MANIFEST.sha256`, seal (folders 0555, files 0444), and publish the final
//! `session.json` last, as the commit point.
//!
//! Hostile content is expected: the agent wrote `session/`. Symlinks are
//! never followed (re-owned with lchown, never chmod-ed, never hashed); a
//! file with more than one hard link is refused before anything is changed,
//! because chown/chmod through it would alter whatever else it names.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Record, SessionRecord};
use crate::fsutil::{sync_dir, write_atomic};

pub const MANIFEST: &str = "agentd/MANIFEST.sha256";
pub const SESSION_JSON: &str = "agentd/session.json";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "{path} has {links} hard links; the record is left unsealed and incomplete (sealing it would change the other names too)"
    )]
    MultiLinked { path: PathBuf, links: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every entry below `dir` (not following symlinks), depth-first, parents first.
fn entries(dir: &Path) -> Result<Vec<walkdir::DirEntry>, SealError> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            e.map_err(|e| SealError::Io {
                path: e.path().map(Path::to_path_buf).unwrap_or_default(),
                source: e.into(),
            })
        })
        .collect()
}

/// Hex sha256 of a file's content, streamed.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The record's files (regular files only) as `(relative path, hash)`,
/// sorted, excluding the manifest itself and `session.json`.
pub fn hash_record(dir: &Path) -> Result<Vec<(String, String)>, SealError> {
    let mut out = Vec::new();
    for e in entries(dir)? {
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap_or(e.path())
            .to_string_lossy()
            .into_owned();
        if rel == MANIFEST || rel == SESSION_JSON {
            continue;
        }
        out.push((rel, hash_file(e.path()).map_err(io_err(e.path()))?));
    }
    Ok(out)
}

impl Record {
    /// Take `session/` back from the session user (root-owned, lchown, so a
    /// planted symlink's target is never touched). Refuses multi-linked files
    /// before changing anything.
    pub fn reclaim_session_dir(&self) -> Result<(), SealError> {
        let all = entries(&self.session_dir())?;
        refuse_multi_linked(&all)?;
        for e in &all {
            std::os::unix::fs::lchown(e.path(), Some(0), Some(0)).map_err(io_err(e.path()))?;
        }
        Ok(())
    }

    /// Finalize: reclaim, manifest, seal, then publish `rec` as the final
    /// `session.json`. A failure leaves the start form in place: the record
    /// stays incomplete and never claims an end it did not reach.
    pub fn seal(&self, rec: &SessionRecord) -> Result<(), SealError> {
        self.reclaim_session_dir()?;
        let all = entries(&self.dir)?;
        refuse_multi_linked(&all)?;

        let mut final_bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
        final_bytes.push(b'\n');
        let mut lines = hash_record(&self.dir)?;
        lines.push((SESSION_JSON.to_string(), hex(&Sha256::digest(&final_bytes))));
        lines.sort();
        let manifest: String = lines.iter().map(|(p, h)| format!("{h}  {p}\n")).collect();
        let manifest_path = self.dir.join(MANIFEST);
        write_atomic(&manifest_path, manifest.as_bytes(), 0o444).map_err(io_err(&manifest_path))?;

        // Seal everything but the folders the publish still writes into
        // (the record root and agentd/); those follow the publish.
        let agentd = self.dir.join("agentd");
        for e in entries(&self.dir)?.iter().rev() {
            let path = e.path();
            let ft = e.file_type();
            let mode = if ft.is_dir() {
                if path == self.dir || path == agentd {
                    continue;
                }
                0o555
            } else if ft.is_file() {
                0o444
            } else {
                continue; // symlinks and specials: chmod would follow or mean nothing
            };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
        }
        let session_json = self.dir.join(SESSION_JSON);
        write_atomic(&session_json, &final_bytes, 0o444).map_err(io_err(&session_json))?;
        for d in [&agentd, &self.dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o555)).map_err(io_err(d))?;
            sync_dir(d).map_err(io_err(d))?;
        }
        Ok(())
    }
}

fn refuse_multi_linked(all: &[walkdir::DirEntry]) -> Result<(), SealError> {
    for e in all {
        if e.file_type().is_file() {
            let meta = e.path().symlink_metadata().map_err(io_err(e.path()))?;
            if meta.nlink() > 1 {
                return Err(SealError::MultiLinked {
                    path: e.path().to_path_buf(),
                    links: meta.nlink(),
                });
            }
        }
    }
    Ok(())
}
