//! The daemon's own folders are private to its user (docs/security.md, "The
//! daemon's own files"): the state dir, the audit root and the folders under the state dir
//! (status records, work folders, the mirror cache, frozen specs, schedule
//! state) are created 0700, and checked at every start:
//!
//! - owned by the daemon's user, else refuse: another user could change
//!   what the daemon reads there (a status record, a frozen spec, a cached
//!   repository);
//! - not group- or world-writable, else refuse: someone could have planted
//!   files, and the daemon cannot tell which;
//! - merely readable by others (0755, how older versions created them):
//!   tightened to 0700 in place, which loses nothing.
//!
//! Status records are tightened to 0600 the same way. The audit root is
//! 0700 too: a group that should read records is given access by the
//! operator (ACLs or a bind mount), never by agentd loosening the mode.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error(
        "cannot create the {what} {path}: {source}; hint: create it (mode 700) or pass another path"
    )]
    Create {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect the {what} {path}: {source}")]
    Inspect {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} is not a folder; hint: move it away or pass another path")]
    NotDir { what: &'static str, path: PathBuf },
    #[error(
        "the {what} {path} is a symlink; agentd follows none inside its state dir; hint: replace it with a folder (`rm {path} && mkdir -m 700 {path}`)"
    )]
    Symlink { what: &'static str, path: PathBuf },
    #[error(
        "the {what} {path} is owned by uid {owner}, not by the daemon's user (uid {me}), who alone may change it; hint: `chown -R {me} {path}` if it is this daemon's, else pass another path"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "the {what} {path} is writable by its group or by others (mode {mode:04o}), so its contents cannot be trusted; hint: check it, then `chmod 700 {path}`"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("cannot restrict the {what} {path} to mode {mode:04o}: {source}")]
    Tighten {
        what: &'static str,
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
}

/// The folders under the state dir the daemon owns, with what to call them.
pub const STATE_FOLDERS: [(&str, &str); 6] = [
    ("status", "status folder"),
    ("work", "work folder"),
    ("cache", "mirror cache"),
    ("cache/git", "mirror cache"),
    ("specs", "spec folder"),
    ("schedules", "schedule folder"),
];

/// Check (creating when missing) every private folder of a daemon with
/// this state dir and audit root, and tighten the status records.
pub fn prepare(state: &Path, audit_root: &Path) -> Result<(), PrivateError> {
    let me = nix::unistd::geteuid().as_raw();
    // The two roots may be symlinks the operator placed (another disk);
    // what they point at must be private.
    ensure_dir("state dir", state, me, true)?;
    ensure_dir("audit root", audit_root, me, true)?;
    for (rel, what) in STATE_FOLDERS {
        ensure_dir(what, &state.join(rel), me, false)?;
    }
    // Each session's work folder is a hierarchy of its own, made and
    // removed whole: ext4 spreads them over its block groups (issue 18).
    let work = state.join("work");
    if let Err(e) = crate::fsutil::spread_subfolders(&work) {
        tracing::debug!(path = %work.display(), error = %e, "cannot mark the work folder top of its hierarchies (chattr +T); sessions run as before");
    }
    tighten_files("status folder", &state.join("status"), 0o600)
}

/// `path` is a folder of `me`, mode 0700 (or stricter); created when
/// missing. `follow`: a symlink at `path` is allowed and its target checked.
pub fn ensure_dir(
    what: &'static str,
    path: &Path,
    me: u32,
    follow: bool,
) -> Result<(), PrivateError> {
    let path_buf = || path.to_path_buf();
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|source| PrivateError::Create {
                    what,
                    path: path_buf(),
                    source,
                })?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .or_else(|e| {
                    // Created meanwhile by someone else: checked below.
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|source| PrivateError::Create {
                    what,
                    path: path_buf(),
                    source,
                })?;
            fs::symlink_metadata(path)
        }
        other => other,
    }
    .map_err(|source| PrivateError::Inspect {
        what,
        path: path_buf(),
        source,
    })?;
    let meta = if meta.file_type().is_symlink() {
        if !follow {
            return Err(PrivateError::Symlink {
                what,
                path: path_buf(),
            });
        }
        fs::metadata(path).map_err(|source| PrivateError::Inspect {
            what,
            path: path_buf(),
            source,
        })?
    } else {
        meta
    };
    if !meta.is_dir() {
        return Err(PrivateError::NotDir {
            what,
            path: path_buf(),
        });
    }
    check_and_tighten(what, path, &meta, me, 0o700)
}

/// Refuse a foreign owner or group/other write access; drop any other
/// access beyond `mode`.
fn check_and_tighten(
    what: &'static str,
    path: &Path,
    meta: &fs::Metadata,
    me: u32,
    mode: u32,
) -> Result<(), PrivateError> {
    if meta.uid() != me {
        return Err(PrivateError::Owner {
            what,
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let current = meta.mode() & 0o7777;
    if current & 0o022 != 0 {
        return Err(PrivateError::Writable {
            what,
            path: path.to_path_buf(),
            mode: current,
        });
    }
    if current & !mode != 0 {
        tracing::info!(path = %path.display(), from = format!("{current:04o}"), to = format!("{:04o}", current & mode), "restricting access to the daemon's user");
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode)).map_err(
            |source| PrivateError::Tighten {
                what,
                path: path.to_path_buf(),
                mode,
                source,
            },
        )?;
    }
    Ok(())
}

/// Regular files directly in `dir` lose any access beyond `mode` (status
/// records written 0644 by older versions). Never follows a symlink.
fn tighten_files(what: &'static str, dir: &Path, mode: u32) -> Result<(), PrivateError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let current = meta.mode() & 0o7777;
        if meta.is_file() && current & !mode != 0 {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(current & mode)).map_err(
                |source| PrivateError::Tighten {
                    what,
                    path: e.path(),
                    mode,
                    source,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn creates_missing_folders_0700() {
        let d = tempfile::tempdir().expect("tempdir");
        let state = d.path().join("a/state");
        prepare(&state, &state.join("audit")).expect("prepare");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("audit")), 0o700);
        for (rel, _) in STATE_FOLDERS {
            assert_eq!(mode(&state.join(rel)), 0o700, "{rel}");
        }
    }

    #[test]
    fn refuses_a_group_writable_folder_naming_the_fix() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("state");
        fs::create_dir(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o770)).expect("chmod");
        let e = ensure_dir("state dir", &p, me(), true).expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains(&format!("chmod 700 {}", p.display())),
            "{text}"
        );
        assert!(text.contains("mode 0770"), "{text}");
    }

    #[test]
    fn refuses_a_folder_of_another_user() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = ensure_dir("state dir", d.path(), me() + 1, true).expect_err("refused");
        assert!(matches!(e, PrivateError::Owner { .. }), "{e}");
        assert!(e.to_string().contains("chown"), "{e}");
    }

    #[test]
    fn tightens_a_readable_folder_and_status_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let state = d.path().join("state");
        fs::create_dir_all(state.join("status")).expect("mkdir");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
        let f = state.join("status/r.json");
        fs::write(&f, "{}").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        prepare(&state, &state.join("audit")).expect("prepare");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn refuses_a_symlinked_inner_folder() {
        let d = tempfile::tempdir().expect("tempdir");
        let state = d.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        std::os::unix::fs::symlink(d.path(), state.join("status")).expect("symlink");
        let e = prepare(&state, &state.join("audit")).expect_err("refused");
        assert!(matches!(e, PrivateError::Symlink { .. }), "{e}");
    }
}
