//! Local repositories that would hand a session the daemon's own data.
//!
//! A request (or profile) naming a path inside the state dir (the git
//! mirror cache, other sessions' work folders) or the audit root would
//! clone what the daemon keeps for others: another profile's tokened
//! mirror, another session's credentials file or work. Such a repository is
//! refused at start, also when it gets there indirectly: through a symlink,
//! a `.git` file, the `.git` suffix git tries, a worktree's `commondir`, or
//! objects borrowed through `objects/info/alternates` (issue 13).

use std::path::{Path, PathBuf};

use crate::desired::Repo;

/// Refuse a local repository that lies inside one of the daemon's own
/// folders (`private`: what, path), or borrows objects from one through
/// `objects/info/alternates`. Paths are compared as written and resolved
/// (symlinks followed), against the folders as written and resolved.
pub fn refuse_private(repo: &Repo, private: &[(&str, &Path)]) -> Result<(), String> {
    let Some(local) = repo.local_path() else {
        return Ok(());
    };
    let check = |p: &Path, how: &str| -> Result<(), String> {
        for (what, dir) in private {
            let dirs = [Some(dir.to_path_buf()), std::fs::canonicalize(dir).ok()];
            let paths = [Some(p.to_path_buf()), std::fs::canonicalize(p).ok()];
            let inside = paths
                .iter()
                .flatten()
                .any(|p| dirs.iter().flatten().any(|d| p.starts_with(d)));
            if inside {
                return Err(format!(
                    "repo `{}` {how} the daemon's {what} `{}`; hint: agentd's own folders (mirror cache, work folders, audit records) are never cloned: name the repository itself",
                    repo.as_str(),
                    dir.display()
                ));
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
            return Err(format!(
                "repo `{}` chains objects/info/alternates too deep; hint: clone from a self-contained repository",
                repo.as_str()
            ));
        }
        let Ok(text) = std::fs::read_to_string(objects.join("info/alternates")) else {
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
            let target = std::fs::read_to_string(&candidate).ok().and_then(|t| {
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
            let c = std::fs::read_to_string(d.join("commondir")).ok()?;
            Some(d.join(c.trim()))
        })
        .collect();
    out.extend(common);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = refuse_private(&local(&other), &private).unwrap_err();
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
        let e = refuse_private(&local(&gitfile), &private).unwrap_err();
        assert!(e.contains("resolves to a git dir inside"), "{e}");
        std::os::unix::fs::symlink(&mirror, dir.path().join("suffixed.git")).expect("symlink");
        assert!(refuse_private(&local(&dir.path().join("suffixed")), &private).is_err());
        let clean = dir.path().join("clean.git");
        std::fs::create_dir_all(clean.join("objects")).expect("mkdir");
        assert!(refuse_private(&local(&clean), &private).is_ok());
        assert!(refuse_private(&Repo::Url("https://h/x".into()), &private).is_ok());
    }
}
