//! Local repositories that would hand a session the daemon's own data.
//!
//! A request (or profile) naming a path inside the state dir (the git
//! mirror cache, other sessions' work folders) or the audit root would
//! clone what the daemon keeps for others: another profile's tokened
//! mirror, another session's credentials file or work. Such a repository is
//! refused at start, also when it gets there indirectly: through a symlink,
//! a `.git` file, the `.git` suffix git tries, a worktree's `commondir`, or
//! objects borrowed through `objects/info/alternates` (issue 13).
//!
//! This is the early refusal with a clear message, not the guarantee: the
//! repository's folder may hold links anywhere below it (`objects`, `refs`,
//! `objects/pack/...`) and change after this check. What keeps the clone
//! away from the daemon's folders whatever is swapped in is that git runs
//! where they are covered (`clone_sandbox.rs`, issue 17).

use std::path::{Path, PathBuf};

use crate::desired::Repo;

/// A local repository the daemon refuses to clone.
#[derive(Debug, thiserror::Error)]
pub enum PrivateRepoError {
    #[error(
        "repo `{repo}` {how} the daemon's {what} `{}`; hint: agentd's own folders (mirror cache, work folders, audit records) are never cloned: name the repository itself",
        dir.display()
    )]
    Inside {
        repo: String,
        how: &'static str,
        what: String,
        dir: PathBuf,
    },
    #[error(
        "repo `{0}` chains objects/info/alternates too deep; hint: clone from a self-contained repository"
    )]
    AlternatesTooDeep(String),
}

/// Refuse a local repository that lies inside one of the daemon's own
/// folders (`private`: what, path), or borrows objects from one through
/// `objects/info/alternates`. Paths are compared as written and resolved
/// (symlinks followed), against the folders as written and resolved.
pub fn refuse_private(repo: &Repo, private: &[(&str, &Path)]) -> Result<(), PrivateRepoError> {
    let Some(local) = repo.local_path() else {
        return Ok(());
    };
    let check = |p: &Path, how: &'static str| -> Result<(), PrivateRepoError> {
        for (what, dir) in private {
            let dirs = [Some(dir.to_path_buf()), std::fs::canonicalize(dir).ok()];
            let paths = [Some(p.to_path_buf()), std::fs::canonicalize(p).ok()];
            let inside = paths
                .iter()
                .flatten()
                .any(|p| dirs.iter().flatten().any(|d| p.starts_with(d)));
            if inside {
                return Err(PrivateRepoError::Inside {
                    repo: repo.as_str(),
                    how,
                    what: (*what).to_string(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        Ok(())
    };
    check(&local, "is inside")?;
    // The git dirs git would serve for that path, and the object stores
    // they use.
    let mut todo: Vec<PathBuf> = Vec::new();
    for dir in git_dirs(&local) {
        check(&dir, "resolves to a git dir inside")?;
        todo.push(dir.join("objects"));
    }
    // Objects borrowed through alternates (which may chain) are served by
    // git as if they were the repository's own.
    let mut seen = 0;
    while let Some(objects) = todo.pop() {
        seen += 1;
        if seen > 32 {
            return Err(PrivateRepoError::AlternatesTooDeep(repo.as_str()));
        }
        let Some(text) = small_text(&objects.join("info/alternates")) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let alt = objects.join(line);
            check(&alt, "borrows objects (objects/info/alternates) from")?;
            todo.push(alt);
        }
    }
    Ok(())
}

/// A small file of a repository someone else may write (alternates,
/// `commondir`, a `.git` file): opened without blocking (a planted FIFO),
/// regular files only (not `/dev/zero`), at most 64 KiB read.
fn small_text(path: &Path) -> Option<String> {
    const CAP: usize = 64 * 1024;
    let bytes = crate::source::read_capped(path, CAP).ok()?;
    (bytes.len() <= CAP).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Every git dir `git upload-pack <local>` may end up in: git tries
/// `<local>/.git`, `<local>`, `<local>.git/.git` and `<local>.git`, follows
/// a `.git` file's `gitdir:` line, and a worktree's `commondir`.
fn git_dirs(local: &Path) -> Vec<PathBuf> {
    let with = |suffix: &str| {
        let mut p = local.as_os_str().to_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let mut out = Vec::new();
    for candidate in [
        with("/.git"),
        local.to_path_buf(),
        with(".git/.git"),
        with(".git"),
    ] {
        if candidate.is_file() {
            let target = small_text(&candidate).and_then(|t| {
                t.trim()
                    .strip_prefix("gitdir:")
                    .map(|g| PathBuf::from(g.trim()))
            });
            if let (Some(t), Some(parent)) = (target, candidate.parent()) {
                out.push(parent.join(t));
            }
        } else if candidate.is_dir() {
            out.push(candidate);
        }
    }
    let common: Vec<PathBuf> = out
        .iter()
        .filter_map(|d| {
            let c = small_text(&d.join("commondir"))?;
            Some(d.join(c.trim()))
        })
        .collect();
    out.extend(common);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in review: a writer of an allowed local repository could plant
    /// a FIFO (a worker blocked forever) or a link to `/dev/zero` (memory
    /// without end) as `objects/info/alternates`.
    #[test]
    fn planted_fifo_or_endless_alternates_do_not_block_or_grow_issue_13() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("mkdir");
        let private = [("state dir", state.as_path())];
        for (name, plant) in [("fifo", 0), ("zero", 1)] {
            let repo = dir.path().join(format!("{name}.git"));
            std::fs::create_dir_all(repo.join("objects/info")).expect("mkdir");
            let alt = repo.join("objects/info/alternates");
            if plant == 0 {
                nix::unistd::mkfifo(&alt, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .expect("mkfifo");
            } else {
                std::os::unix::fs::symlink("/dev/zero", &alt).expect("symlink");
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let r = Repo::Local(repo.clone());
            let p: Vec<(&str, PathBuf)> =
                private.iter().map(|(w, p)| (*w, p.to_path_buf())).collect();
            std::thread::spawn(move || {
                let p: Vec<(&str, &Path)> = p.iter().map(|(w, p)| (*w, p.as_path())).collect();
                let _ = tx.send(refuse_private(&r, &p).is_ok());
            });
            let ok = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{name}: the check blocked"));
            assert!(
                ok,
                "{name}: an unreadable alternates file is no private path"
            );
        }
    }

    #[test]
    fn private_folders_are_refused_as_written_resolved_and_through_alternates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let mirror = state.join("cache/git/abc.git");
        std::fs::create_dir_all(mirror.join("objects")).expect("mkdir");
        let private = [("state dir", state.as_path())];
        let local = |p: &Path| Repo::Local(p.to_path_buf());
        assert!(refuse_private(&local(&mirror), &private).is_err());
        let url = Repo::Url(format!("file://{}", mirror.display()));
        assert!(
            refuse_private(&url, &private)
                .unwrap_err()
                .to_string()
                .contains("state dir")
        );
        // A symlink from outside resolves inside.
        let link = dir.path().join("innocent.git");
        std::os::unix::fs::symlink(&mirror, &link).expect("symlink");
        assert!(refuse_private(&local(&link), &private).is_err());
        // A repository outside that borrows the mirror's objects.
        let other = dir.path().join("other.git");
        std::fs::create_dir_all(other.join("objects/info")).expect("mkdir");
        std::fs::write(
            other.join("objects/info/alternates"),
            format!("{}\n", mirror.join("objects").display()),
        )
        .expect("write");
        let e = refuse_private(&local(&other), &private)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alternates"), "{e}");
        // A `.git` file pointing into the cache, and the `.git` suffix git
        // tries when the named path does not exist.
        let gitfile = dir.path().join("gitfile");
        std::fs::create_dir_all(&gitfile).expect("mkdir");
        std::fs::write(
            gitfile.join(".git"),
            format!("gitdir: {}\n", mirror.display()),
        )
        .expect("write");
        let e = refuse_private(&local(&gitfile), &private)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolves to a git dir inside"), "{e}");
        std::os::unix::fs::symlink(&mirror, dir.path().join("suffixed.git")).expect("symlink");
        assert!(refuse_private(&local(&dir.path().join("suffixed")), &private).is_err());
        let clean = dir.path().join("clean.git");
        std::fs::create_dir_all(clean.join("objects")).expect("mkdir");
        assert!(refuse_private(&local(&clean), &private).is_ok());
        assert!(refuse_private(&Repo::Url("https://h/x".into()), &private).is_ok());
    }
}
