//! Audit records: `<audit-root>/<profile>/<session_id>/` with
//! `agentd/session.json`, `agentd/console.log` and `session/` (what the agent
//! wrote under `$AGENTD_AUDIT_DIR`).
//!
//! `session.json` is written twice, each time by atomic replace: the start
//! form before the container starts, the final form (with `end_timestamp`
//! and `outcome`) only after teardown succeeded. A record without them is
//! incomplete by design: it never claims an end that did not happen.

#[cfg(test)]
mod hostile_tests;
pub mod manifest;
mod seal;
pub mod verify;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use seal::{Limits, SealOptions, Sealed};

use crate::fsutil::write_json_atomic;
use crate::observed::Outcome;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("audit record {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError {
        path: path.to_path_buf(),
        source,
    }
}

/// `agentd/session.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub schema_version: u32,
    pub session_id: String,
    pub profile: String,
    pub request: String,
    pub spec_sha256: String,
    pub repo: String,
    pub work_unit: Option<String>,
    pub start_timestamp: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    /// The image as the profile named it.
    pub image: String,
    /// The image id (sha256 of its config) the container actually ran.
    pub image_id: Option<String>,
    /// Its manifest digest, when Podman knows one.
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What of `session/` was over budget and left out of the sealed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Cut>,
    /// What the agent changed (issue 20): `agentd/changes.bundle` and the
    /// patches are described here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<crate::observed::Changes>,
    /// How the push of the agent's commits went, when the profile pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::observed::PushResult>,
}

/// `session.json`'s `cut`: entries of `session/` left out of a sealed
/// record because they were over its budget (removed, never hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// Entries removed (a folder cut whole counts once).
    pub entries: u64,
    /// Their apparent size in bytes, as far as known (a cut folder's
    /// content is not counted).
    pub bytes: u64,
    /// Why, one reason per kind of limit passed, `; `-separated.
    pub reason: String,
    /// The first few of them, relative to the record, escaped as in the manifest.
    pub paths: Vec<String>,
}

impl Cut {
    /// One line for the status message.
    pub fn note(&self) -> String {
        format!(
            "audit record sealed without {} entr{} of session/ ({} bytes): {}; see `cut` in agentd/session.json",
            self.entries,
            if self.entries == 1 { "y" } else { "ies" },
            self.bytes,
            self.reason
        )
    }
}

/// One session's record folder.
#[derive(Debug, Clone)]
pub struct Record {
    pub dir: PathBuf,
}

impl Record {
    pub fn path_for(root: &Path, profile: &str, session_id: &str) -> PathBuf {
        root.join(profile).join(session_id)
    }

    /// Create the folders of a new record. `session/` is handed to the
    /// session user (`uid`) so the agent can write it while it runs.
    pub fn create(
        root: &Path,
        profile: &str,
        session_id: &str,
        uid: u32,
    ) -> Result<Record, AuditError> {
        let dir = Self::path_for(root, profile, session_id);
        let agentd = dir.join("agentd");
        fs::create_dir_all(&agentd).map_err(err(&agentd))?;
        let session = dir.join("session");
        fs::create_dir_all(&session).map_err(err(&session))?;
        if uid != nix::unistd::geteuid().as_raw() {
            std::os::unix::fs::chown(&session, Some(uid), Some(uid)).map_err(err(&session))?;
        }
        fs::set_permissions(&session, fs::Permissions::from_mode(0o700)).map_err(err(&session))?;
        Ok(Record { dir })
    }

    pub fn session_dir(&self) -> PathBuf {
        self.dir.join("session")
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join("agentd/console.log")
    }

    pub fn write_session(&self, rec: &SessionRecord) -> Result<(), AuditError> {
        let path = self.dir.join("agentd/session.json");
        write_json_atomic(&path, rec, 0o644).map_err(err(&path))
    }

    pub fn read_session(&self) -> Option<SessionRecord> {
        let bytes = fs::read(self.dir.join("agentd/session.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Make the daemon's part writable again before a finish runs anew: a
    /// crash in the middle of sealing leaves `agentd/` read-only with a
    /// `session.json` that never got its outcome, and the next finish
    /// rewrites `console.log` and the results there. Root writes read-only
    /// files anyway; a rootless daemon cannot, and would retry forever.
    /// Only the daemon's own files: `session/` is the seal's to take back.
    pub fn reopen(&self) -> Result<(), AuditError> {
        make_writable(&self.dir)?;
        reopen_tree(&self.dir.join("agentd"))
    }
}

/// Add the owner's write bit to `path` (never through a link) when missing.
fn make_writable(path: &Path) -> Result<(), AuditError> {
    let meta = fs::symlink_metadata(path).map_err(err(path))?;
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() || mode & 0o200 != 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode((mode & 0o7777) | 0o200))
        .map_err(err(path))
}

/// [`make_writable`] for `dir`, its files and its folders, links left alone.
fn reopen_tree(dir: &Path) -> Result<(), AuditError> {
    make_writable(dir)?;
    for entry in fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(err(&path))?;
        if kind.is_dir() {
            reopen_tree(&path)?;
        } else if kind.is_file() {
            make_writable(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod reopen_tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_record_a_crash_left_half_sealed_is_writable_again_for_the_finish_issue_19() {
        let root = tempfile::tempdir().expect("tmp");
        let rec = Record::create(root.path(), "p", "s1", nix::unistd::geteuid().as_raw())
            .expect("create");
        let agentd = rec.dir.join("agentd");
        let results = agentd.join("results");
        fs::create_dir(&results).expect("mkdir");
        let outside = root.path().join("outside");
        fs::write(&outside, "not the record's").expect("write");
        std::os::unix::fs::symlink(&outside, agentd.join("link")).expect("link");
        let files = [
            agentd.join("console.log"),
            agentd.join("egress.jsonl"),
            results.join("changes.bundle"),
        ];
        for f in &files {
            fs::write(f, "sealed").expect("write");
        }
        // What a seal does before a kill -9 stops it short of session.json.
        for f in files.iter().chain([&outside]) {
            fs::set_permissions(f, fs::Permissions::from_mode(0o444)).expect("chmod");
        }
        fs::set_permissions(&results, fs::Permissions::from_mode(0o555)).expect("chmod");
        rec.reopen().expect("reopen");
        for f in &files {
            assert_eq!(mode(f), 0o644, "{}", f.display());
        }
        assert_eq!(mode(&results), 0o755);
        assert_eq!(mode(&outside), 0o444, "a link in agentd/ is not followed");
        assert_eq!(
            mode(&rec.session_dir()),
            0o700,
            "session/ is left to the seal"
        );
    }
}
