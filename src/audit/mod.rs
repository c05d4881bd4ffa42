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
}
