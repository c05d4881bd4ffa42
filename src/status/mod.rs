//! The status store: `<state>/status/<request>.json`, one file per request,
//! atomically replaced. The daemon is the only writer (it holds the state
//! lock) and keeps the records in memory; CLI commands read the files.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;
use crate::observed::Status;

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
        Ok((StatusStore { dir, records }, problems))
    }

    pub fn get(&self, id: &str) -> Option<&Status> {
        self.records.get(id)
    }

    pub fn all(&self) -> &BTreeMap<String, Status> {
        &self.records
    }

    /// Write `status` to disk, then to memory; a no-op when unchanged.
    pub fn put(&mut self, status: Status) -> Result<(), StatusError> {
        if self.records.get(&status.request) == Some(&status) {
            return Ok(());
        }
        let path = self.dir.join(format!("{}.json", status.request));
        let mut bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(|source| StatusError::Write { path, source })?;
        self.records.insert(status.request.clone(), status);
        Ok(())
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
        self.records.remove(id);
        Ok(())
    }
}

/// Read every `*.json` record of a status folder (for the CLI and startup).
pub fn read_dir(dir: &Path) -> Result<(BTreeMap<String, Status>, Vec<String>), StatusError> {
    let mut records = BTreeMap::new();
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((records, problems)),
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
            Ok(s) => {
                records.insert(s.request.clone(), s);
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((records, problems))
}

pub fn read_one(path: &Path) -> Result<Status, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
