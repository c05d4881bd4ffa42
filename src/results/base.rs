//! The base a session's changes are measured against (issue 20), taken
//! right after the host-side clone and before the start gate opens, while
//! the clone is still the daemon's own: nothing of the agent's has run.
//!
//! Kept in the session's work folder, outside every mount of the session:
//! - `results/base.json`: HEAD and every ref of the clone (branches,
//!   remote-tracking refs, tags), and the session's capture and push plan;
//! - `results/repo.git`: a bare repository of the daemon's holding a copy
//!   of the clone's objects and one ref per base object
//!   (`refs/agentd/base/<oid>`). It is the quarantine repository of the
//!   capture: the agent's new objects are fetched into it (checked), and
//!   the bundle, patches and push are made from it. A copy, not hard
//!   links: the clone's files are handed to the session user next.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::clone_files;
use super::git::Git;
use super::model::{Base, Plan};
use super::refs;

/// The folder of results capture in a work folder.
pub fn dir(work_root: &Path) -> PathBuf {
    work_root.join("results")
}

/// `base.json` of a work folder.
pub fn base_file(work_root: &Path) -> PathBuf {
    dir(work_root).join("base.json")
}

/// The quarantine repository of a work folder.
pub fn repo(work_root: &Path) -> PathBuf {
    dir(work_root).join("repo.git")
}

/// HEAD's tree as `git ls-tree -r -l -z` listed it at the start: what the
/// end compares the work tree with when HEAD did not move.
pub fn tree_file(work_root: &Path) -> PathBuf {
    dir(work_root).join("base.tree")
}

/// Read `base.json`, if the start recorded one.
pub fn read(work_root: &Path) -> Option<Base> {
    let bytes = std::fs::read(base_file(work_root)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Record the base of the fresh clone at `<work_root>/home/repo`. Errors
/// are the session's `start_failed` message.
pub async fn record(work_root: &Path, git_home: &Path, plan: Plan) -> Result<(), String> {
    let dir = dir(work_root);
    let repo = repo(work_root);
    let work = work_root.to_path_buf();
    let d = dir.clone();
    // A retried start may find an earlier attempt's folder: start over.
    let read = tokio::task::spawn_blocking(
        move || -> std::io::Result<(Option<refs::Head>, Vec<super::model::RefTip>, bool)> {
            crate::fdtree::remove_tree(&d)?;
            std::fs::DirBuilder::new().mode(0o700).create(&d)?;
            let clone = clone_files::open_clone(&work)?;
            let dotgit = clone
                .dotgit
                .ok_or_else(|| std::io::Error::other("the clone has no .git folder"))?;
            let read = clone_files::read_refs(&dotgit, "refs/")?;
            // The clone's config was written by git a moment ago.
            let config = clone_files::read_small(&dotgit, c"config", 1 << 20)?.unwrap_or_default();
            let sha256 = String::from_utf8_lossy(&config)
                .to_ascii_lowercase()
                .contains("objectformat = sha256");
            Ok((read.head, read.refs, sha256))
        },
    );
    let (head, refs_v, sha256) = read
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| format!("recording the clone's refs for results: {e}"))?;
    if sha256 {
        // The session runs; what it changes is not captured, and its
        // record says so.
        let base = Base {
            head: None,
            head_ref: None,
            refs: Vec::new(),
            plan,
            unsupported: Some(
                "the repository uses SHA-256 object ids, which results capture does not support: changes not captured".into(),
            ),
        };
        let json = serde_json::to_vec_pretty(&base).unwrap_or_default();
        return crate::fsutil::write_atomic(&base_file(work_root), &json, 0o600)
            .map_err(|e| format!("recording the clone's base for results: {e}"));
    }
    let (head_oid, head_ref) = refs::resolve_head(head.as_ref(), &refs_v);
    let base = Base {
        head: head_oid,
        head_ref,
        refs: refs_v,
        plan,
        unsupported: None,
    };
    let git = Git::new(git_home, Duration::from_secs(120));
    git.cmd(&repo, "init")
        .args(["init", "--bare", "--quiet"])
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let (from, to) = (
        work_root.join("home/repo/.git/objects"),
        repo.join("objects"),
    );
    let lines: Vec<u8> = base
        .tips()
        .iter()
        .flat_map(|oid| format!("{oid} refs/agentd/base/{oid}\n").into_bytes())
        .collect();
    let json = serde_json::to_vec_pretty(&base).unwrap_or_default();
    let (repo2, base_path) = (repo.clone(), base_file(work_root));
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        copy_tree(&from, &to)?;
        crate::fsutil::write_atomic(&repo2.join("packed-refs"), &lines, 0o600)?;
        crate::fsutil::write_atomic(&base_path, &json, 0o600)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .map_err(|e| format!("recording the clone's objects for results: {e}"))?;
    // HEAD's tree now, off the end's critical path: a session that leaves
    // HEAD where it was needs no git at all to compare its work tree.
    if let Some(head) = &base.head {
        let listed = git
            .cmd(&repo, "ls-tree")
            .args(["ls-tree", "-r", "-l", "-z", "--full-tree", head])
            .capture(1 << 30)
            .run()
            .await
            .map_err(|e| format!("listing the clone's tree for results: {e}"))?;
        crate::fsutil::write_atomic(&tree_file(work_root), &listed.stdout, 0o600)
            .map_err(|e| format!("recording the clone's tree for results: {e}"))?;
    }
    Ok(())
}

/// Copy the object files of the daemon's fresh clone (packs, their
/// indexes, loose objects) into `to`; `info/` is not copied.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name == "info" {
            continue;
        }
        let t = e.file_type()?;
        let dest = to.join(&name);
        if t.is_dir() {
            std::fs::create_dir_all(&dest)?;
            copy_tree(&e.path(), &dest)?;
        } else if t.is_file() {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// Write `bytes` to a new file `path` (0600) and sync it.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
