//! The base a session's changes are measured against (issue 20), taken
//! right after the host-side clone and before the start gate opens, while
//! the clone is still the daemon's own: nothing of the agent's has run.
//!
//! Kept in the session's work folder, outside every mount of the session:
//! - `results/base.json`: HEAD and every ref of the clone (branches,
//!   remote-tracking refs, tags), and the session's capture and push plan;
//! - `results/repo.git`: a bare repository of the daemon's holding the
//!   clone's objects and one ref per base object
//!   (`refs/agentd/base/<oid>`). It is the quarantine repository of the
//!   capture: the agent's new objects are fetched into it (checked), and
//!   the bundle, patches and push are made from it.
//!
//! When the clone is a copy of a seed (the daemon's own clone, which no
//! session ever sees), the refs, the config and the objects are read from
//! the seed, held unchanged meanwhile, and the object files are hard links
//! to the seed's: no copy, no new inodes, and nothing read from the
//! session's folder, which a rootless session's user may reach before the
//! gate opens. Otherwise all of it is read from the clone and its object
//! files are copies, never links: the clone's files are handed to the
//! session user next.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// The seed a session's clone is an exact copy of: a clone of the
/// daemon's that no session ever sees, so unlike the session's copy it can
/// be read before the gate opens, whatever the session's user may already
/// do in its own folder.
pub struct Seed {
    /// The seed's git folder.
    pub git_dir: PathBuf,
    /// What keeps the seed as it is (its lock): dropped as soon as the
    /// base has read its refs and linked its objects.
    pub hold: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("git_dir", &self.git_dir)
            .finish_non_exhaustive()
    }
}

/// Record the base of the fresh clone at `<work_root>/home/repo`, reading
/// its refs and objects from `seed` when it is a copy of one. Errors are
/// the session's `start_failed` message. Its files are scratch of the work
/// folder: written atomically, not synced (`write_atomic_scratch`).
pub async fn record(
    work_root: &Path,
    git_home: &Path,
    plan: Plan,
    listings: &Listings,
    seed: Option<Seed>,
) -> Result<(), String> {
    let dir = dir(work_root);
    let repo = repo(work_root);
    let work = work_root.to_path_buf();
    let d = dir.clone();
    let seed_git = seed.as_ref().map(|s| s.git_dir.clone());
    // A retried start may find an earlier attempt's folder: start over.
    type Read = (Option<refs::Head>, Vec<super::model::RefTip>, bool, bool);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Read> {
        crate::fdtree::remove_tree(&d)?;
        std::fs::DirBuilder::new().mode(0o700).create(&d)?;
        let seeded = seed_git.as_deref().and_then(open_seed);
        let from_seed = seeded.is_some();
        let dotgit = match seeded {
            Some(dir) => dir,
            None => clone_files::open_clone(&work)?
                .dotgit
                .ok_or_else(|| std::io::Error::other("the clone has no .git folder"))?,
        };
        let read = clone_files::read_refs(&dotgit, "refs/")?;
        // The clone's config was written by git a moment ago.
        let config = clone_files::read_small(&dotgit, c"config", 1 << 20)?.unwrap_or_default();
        let sha256 = String::from_utf8_lossy(&config)
            .to_ascii_lowercase()
            .contains("objectformat = sha256");
        Ok((read.head, read.refs, sha256, from_seed))
    });
    let (head, refs_v, sha256, from_seed) = read
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
        return crate::fsutil::write_atomic_scratch(&base_file(work_root), &json, 0o600)
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
        init_bare(&repo2)?;
        match seed.filter(|_| from_seed) {
            Some(seed) => {
                // The objects of the refs just read: the seed's.
                let objects = seed.git_dir.join("objects");
                if let Err(e) = put_objects(&objects, &to, link) {
                    // Another file system, say: copies of the seed's.
                    tracing::debug!(from = %objects.display(), to = %to.display(), error = %e, "cannot link a seed's objects; copying them");
                    crate::fdtree::remove_tree(&to)?;
                    make_objects_dirs(&to)?;
                    put_objects(&objects, &to, copy)?;
                }
                // The seed is let go here, before any git runs.
                drop(seed);
            }
            None => put_objects(&from, &to, copy)?,
        }
        crate::fsutil::write_atomic_scratch(&repo2.join("packed-refs"), &lines, 0o600)?;
        crate::fsutil::write_atomic_scratch(&base_path, &json, 0o600)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .map_err(|e| format!("recording the clone's objects for results: {e}"))?;
    // HEAD's tree now, off the end's critical path: a session that leaves
    // HEAD where it was needs no git at all to compare its work tree.
    if let Some(head) = &base.head {
        let listed = match listings.get(head) {
            Some(known) => known,
            None => {
                let listed = git
                    .cmd(&repo, "ls-tree")
                    .args(["ls-tree", "-r", "-l", "-z", "--full-tree", head])
                    .capture(1 << 30)
                    .run()
                    .await
                    .map_err(|e| format!("listing the clone's tree for results: {e}"))?;
                listings.put(head, listed.stdout)
            }
        };
        crate::fsutil::write_atomic_scratch(&tree_file(work_root), &listed, 0o600)
            .map_err(|e| format!("recording the clone's tree for results: {e}"))?;
    }
    Ok(())
}

/// HEAD's tree listings by commit id, for the sessions that start from a
/// commit an earlier one started from (the common case with seed clones):
/// a commit's tree lists the same every time, so they need no git for it.
/// At most [`LISTINGS_MAX`] listings of at most [`LISTING_MAX_BYTES`] each
/// are kept, the most recently used.
#[derive(Debug, Default)]
pub struct Listings {
    recent: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
}

pub const LISTINGS_MAX: usize = 16;
pub const LISTING_MAX_BYTES: usize = 1 << 20;

impl Listings {
    fn get(&self, commit: &str) -> Option<Arc<Vec<u8>>> {
        let mut recent = crate::sync::lock(&self.recent);
        let at = recent.iter().position(|(c, _)| c == commit)?;
        let hit = recent.remove(at)?;
        let listed = Arc::clone(&hit.1);
        recent.push_front(hit);
        Some(listed)
    }

    /// Keep `listed` (when small enough); hand it back.
    fn put(&self, commit: &str, listed: Vec<u8>) -> Arc<Vec<u8>> {
        let listed = Arc::new(listed);
        if listed.len() <= LISTING_MAX_BYTES {
            let mut recent = crate::sync::lock(&self.recent);
            recent.retain(|(c, _)| c != commit);
            recent.push_front((commit.to_string(), Arc::clone(&listed)));
            recent.truncate(LISTINGS_MAX);
        }
        listed
    }
}

/// What `git init --bare` makes with an empty template folder and no
/// configuration (git 2.x, SHA-1), made without running git (issue 18: a
/// process costs more CPU than the whole rest of this step): `HEAD` naming
/// `master`, the core settings of a bare repository, and the object and
/// ref folders. `repo` is a new folder in the daemon's own `results/`.
pub fn init_bare(repo: &Path) -> std::io::Result<()> {
    std::fs::create_dir(repo)?;
    make_objects_dirs(&repo.join("objects"))?;
    for d in ["refs", "refs/heads", "refs/tags"] {
        std::fs::create_dir(repo.join(d))?;
    }
    std::fs::write(repo.join("HEAD"), "ref: refs/heads/master\n")?;
    std::fs::write(
        repo.join("config"),
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n",
    )
}

/// The seed's git folder, opened; `None` (logged) when it cannot be, which
/// it never should while held: everything then comes from the clone, as
/// without a seed.
fn open_seed(git_dir: &Path) -> Option<nix::dir::Dir> {
    crate::fdtree::open_dir(git_dir)
        .inspect_err(|e| {
            tracing::debug!(seed = %git_dir.display(), error = %e, "cannot open a seed; reading the clone");
        })
        .ok()
}

/// An empty object folder as `git init` makes it.
fn make_objects_dirs(objects: &Path) -> std::io::Result<()> {
    std::fs::create_dir(objects)?;
    std::fs::create_dir(objects.join("info"))?;
    std::fs::create_dir(objects.join("pack"))
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to).map(drop)
}

fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)
}

/// Put the object files of a daemon's clone or seed at `from` (packs, their
/// indexes, loose objects) into `to` with `put`; `info/` is left out, and
/// so is anything neither a folder nor a file.
fn put_objects(
    from: &Path,
    to: &Path,
    put: fn(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
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
            put_objects(&e.path(), &dest, put)?;
        } else if t.is_file() {
            put(&e.path(), &dest)?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn listings_are_kept_by_commit_few_and_small_issue_18() {
        let l = super::Listings::default();
        assert_eq!(l.get("c0"), None);
        assert_eq!(*l.put("c0", b"a".to_vec()), b"a");
        assert_eq!(l.get("c0").as_deref().map(Vec::as_slice), Some(&b"a"[..]));
        for i in 1..=super::LISTINGS_MAX {
            l.put(&format!("c{i}"), vec![b'x'; 4]);
            // c0 stays the most recent one.
            assert!(l.get("c0").is_some(), "{i}");
        }
        assert_eq!(l.get("c1"), None, "the least recently used went");
        let big = vec![0u8; super::LISTING_MAX_BYTES + 1];
        assert_eq!(l.put("big", big.clone()).len(), big.len(), "handed back");
        assert_eq!(l.get("big"), None, "but not kept");
    }

    /// Every path under `root` (sorted) with a file's content.
    fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                let rel = p.strip_prefix(root).expect("under").display().to_string();
                if p.is_dir() {
                    stack.push(p);
                    out.push((rel, None));
                } else {
                    out.push((rel, Some(std::fs::read(&p).expect("read"))));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_quarantine_repository_is_what_git_init_bare_makes_issue_18() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("template");
        std::fs::create_dir(&empty).expect("mkdir");
        let by_git = dir.path().join("git.git");
        let out = std::process::Command::new("git")
            .args(["init", "--bare", "--quiet"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &empty)
            .env("GIT_TEMPLATE_DIR", &empty)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_DIR", &by_git)
            .output()
            .expect("git");
        assert!(out.status.success(), "{out:?}");
        let ours = dir.path().join("ours.git");
        super::init_bare(&ours).expect("init");
        assert_eq!(tree(&ours), tree(&by_git));
        let verify = std::process::Command::new("git")
            .args(["--git-dir"])
            .arg(&ours)
            .args(["rev-parse", "--is-bare-repository"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git");
        assert_eq!(String::from_utf8_lossy(&verify.stdout).trim(), "true");
    }
}
