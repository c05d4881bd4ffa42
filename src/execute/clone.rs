//! Getting the repository into the session's home, on the host.
//!
//! Cloning on the host means the image needs no git, a `file://` repo works
//! with `network = "none"`, and the clone token never enters the container.
//! Remote repositories go through a bare mirror cache under
//! `<state>/cache/git/`, refreshed with `git fetch`, so a large repository is
//! not downloaded from scratch for every session; the session clone is then a
//! local copy (`--no-hardlinks`: the agent owns its copy and can never write
//! through to the cache or to a local source repository).
//!
//! Hardening (issue 13):
//! - git runs isolated from the daemon user's configuration: no system or
//!   global config, an empty `HOME`/`XDG_CONFIG_HOME`, no credential helper,
//!   no prompt, an empty template dir (no hooks), so an `insteadOf` or a
//!   credential helper in root's `~/.gitconfig` never applies. The `file`
//!   transport is allowed only for a local repository the profile allows and
//!   for the copy out of the daemon's own cache; a remote fetch never gets it.
//! - Local repositories are cloned through git's transport (`--no-local`),
//!   exactly like their `file://` URL, so only what the repository's refs
//!   reach is copied, never whatever sits in its folder.
//! - A local repository inside the daemon's own folders is refused before
//!   this runs (`private_repo.rs`), and git for a local clone runs in a
//!   sandbox whose root holds only git's system folders, the repository's
//!   own folder (named by its real path), the destination and git's home
//!   (`clone_sandbox.rs`, issue 17): links planted in the repository,
//!   swapped in at any moment, lead nowhere, neither into the daemon's
//!   folders nor into any other repository. There it trusts the exact
//!   repository path (`safe.directory` in a generated global config), so a
//!   repository of another owner clones, and no other path is trusted.
//! - With a clone token, git follows no HTTP redirect (issue 17): the
//!   header is not scoped to a host, and a redirect moves git's base URL.
//! - Each mirror has its own lock, so a slow remote holds up only sessions
//!   of that repository, and every git run is bounded by `--clone-timeout`
//!   (its whole process group is killed). A mirror fetched with a profile's
//!   token is that profile's alone: another profile naming the same URL gets
//!   its own mirror, fetched with its own credentials.
//! - Mirrors not used for [`MIRROR_MAX_AGE`] are pruned, and beyond
//!   [`MIRROR_MAX_ENTRIES`] the least recently used go, after every remote
//!   clone; a mirror in use is never pruned.

mod git;
mod local;
pub mod seed;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::git::GitError;
use self::git::{FileTransport, Git};
use super::clone_sandbox::Sandbox;
use crate::desired::{Repo, sha256_hex};

/// A mirror not used for this long is removed.
pub const MIRROR_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most this many mirrors are kept; the least recently used go first.
pub const MIRROR_MAX_ENTRIES: usize = 32;

/// File in a mirror whose mtime is its last use.
const USED_MARKER: &str = "agentd-used";

/// Per-mirror locks: a fetch, the session's copy out of the mirror and
/// pruning of one mirror exclude each other; different mirrors never wait
/// for each other.
#[derive(Debug, Default, Clone)]
pub struct MirrorCache {
    /// Keyed by the mirror's folder stem (and `seed\0<key>` for seeds).
    locks: crate::sync::KeyedLocks,
    /// Clones of local repositories, kept per state of their git folder.
    seeds: seed::Seeds,
}

impl MirrorCache {
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.of(key)
    }
}

/// Where and how long git may work.
pub struct CloneEnv<'a> {
    /// `<state>/cache/git`: the mirrors.
    pub cache_root: &'a Path,
    /// An empty folder used as git's `HOME`, `XDG_CONFIG_HOME` and template dir.
    pub git_home: &'a Path,
    /// Bound on each git run.
    pub timeout: Duration,
    pub cache: &'a MirrorCache,
    /// Where local clones run.
    pub sandbox: &'a Sandbox,
}

/// Why a clone failed; the message names the repository and what git said.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("cannot prepare {}: {source}", dir.display())]
    GitHome {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clone of {repo} failed: {source}{hint}")]
    Local {
        repo: String,
        source: GitError,
        hint: &'static str,
    },
    #[error("clone of {url} failed: {source}")]
    Clone { url: String, source: GitError },
    #[error("fetch of {url} failed: {source}")]
    Fetch { url: String, source: GitError },
    #[error("cannot move mirror into place: {0}")]
    MoveMirror(std::io::Error),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Clone `repo` into `dest`. `token` (the value of `repo_token_source`, only
/// when the profile's rules send it to this repo) is handed to git through
/// its environment as an HTTP header, never argv. `owner` (the profile)
/// keys a tokened mirror. When the clone is a copy of a seed, that seed
/// comes back for the results base, its lock held so it can be neither
/// replaced nor evicted until the base has read its refs and linked its
/// objects (issue 18).
pub async fn clone(
    repo: &Repo,
    dest: &Path,
    token: Option<&str>,
    owner: &str,
    env: &CloneEnv<'_>,
) -> Result<Option<crate::results::Seed>, CloneError> {
    prepare_git_home(env.git_home)?;
    if let Some(local) = repo.local_path() {
        // The sandbox keeps an existing folder as the destination.
        std::fs::create_dir_all(dest).map_err(|source| CloneError::Create {
            path: dest.to_path_buf(),
            source,
        })?;
        return local::clone_local(repo, &local, dest, env).await;
    }
    let git = Git {
        home: env.git_home,
        timeout: env.timeout,
        sandbox: None,
    };
    let url = repo.as_str();
    // A tokened mirror belongs to its profile: without that, a profile with
    // no (or a weaker) token would get what another profile's token fetched.
    let key_src = match token {
        Some(_) => format!("{owner}\0{url}"),
        None => url.clone(),
    };
    let key = sha256_hex(key_src.as_bytes())[..16].to_string();
    let cache = env.cache_root.join(format!("{key}.git"));
    let guard = env.cache.lock_for(&key).lock_owned().await;
    refresh_mirror(&git, &url, &cache, token).await?;
    // Marks the mirror used (pruning is by last use); a failure only makes
    // it look older.
    let _ = std::fs::write(cache.join(USED_MARKER), b"");
    let copied = git
        .run(
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--no-hardlinks".as_ref(),
                "--".as_ref(),
                cache.as_os_str(),
                dest.as_os_str(),
            ],
            // The source is the daemon's own mirror.
            FileTransport::Allow,
            None,
        )
        .await
        .map_err(|source| CloneError::Clone {
            url: url.clone(),
            source,
        });
    drop(guard);
    copied?;
    git.run(
        &[
            "-C".as_ref(),
            dest.as_os_str(),
            "remote".as_ref(),
            "set-url".as_ref(),
            "origin".as_ref(),
            url.as_ref(),
        ],
        FileTransport::Never,
        None,
    )
    .await?;
    let (root, locks) = (env.cache_root.to_path_buf(), env.cache.clone());
    let pruned = blocking(move || prune(&root, &locks, SystemTime::now()));
    for r in pruned.await.unwrap_or_default() {
        tracing::info!(mirror = %r.display(), "pruned a git mirror not used recently");
    }
    Ok(None)
}

/// `<state>/cache/seeds` beside the mirrors' `<state>/cache/git`.
pub fn seeds_root(cache_root: &Path) -> PathBuf {
    cache_root.with_file_name("seeds")
}

/// Run blocking file work off the runtime; `None` if it panicked.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// [`blocking`] for file work that returns an `io::Result`: a panic is
/// one more error.
async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    blocking(f)
        .await
        .unwrap_or_else(|| Err(std::io::Error::other("the file work panicked")))
}

/// Create or update the bare mirror of `url` at `cache`.
async fn refresh_mirror(
    git: &Git<'_>,
    url: &str,
    cache: &Path,
    token: Option<&str>,
) -> Result<(), CloneError> {
    if cache.join("HEAD").exists() {
        return git
            .run(
                &[
                    "-C".as_ref(),
                    cache.as_os_str(),
                    "fetch".as_ref(),
                    "--quiet".as_ref(),
                    "--prune".as_ref(),
                    "--no-recurse-submodules".as_ref(),
                    "origin".as_ref(),
                ],
                FileTransport::Never,
                token,
            )
            .await
            .map_err(|source| CloneError::Fetch {
                url: url.to_string(),
                source,
            });
    }
    let tmp: PathBuf = cache.with_extension("git.tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    if let Some(parent) = cache.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| CloneError::Create {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    git.run(
        &[
            "clone".as_ref(),
            "--quiet".as_ref(),
            "--mirror".as_ref(),
            "--".as_ref(),
            url.as_ref(),
            tmp.as_os_str(),
        ],
        FileTransport::Never,
        token,
    )
    .await
    .map_err(|source| CloneError::Clone {
        url: url.to_string(),
        source,
    })?;
    tokio::fs::rename(&tmp, cache)
        .await
        .map_err(CloneError::MoveMirror)
}

/// Remove mirrors unused for [`MIRROR_MAX_AGE`], and the least recently
/// used beyond [`MIRROR_MAX_ENTRIES`]; leftovers of interrupted first
/// clones (`*.git.tmp`) go whenever their mirror is not locked. A mirror
/// whose lock is held is in use and skipped. Returns what was removed.
pub fn prune(root: &Path, cache: &MirrorCache, now: SystemTime) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut mirrors: Vec<(SystemTime, String, PathBuf)> = Vec::new();
    let mut leftovers: Vec<(String, PathBuf)> = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if let Some(key) = name.strip_suffix(".git.tmp") {
            leftovers.push((key.to_string(), path));
        } else if let Some(key) = name.strip_suffix(".git") {
            let used = std::fs::symlink_metadata(path.join(USED_MARKER))
                .or_else(|_| std::fs::symlink_metadata(&path))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            mirrors.push((used, key.to_string(), path));
        }
    }
    // Newest first: what lies past MIRROR_MAX_ENTRIES is the least recent.
    mirrors.sort_by_key(|m| std::cmp::Reverse(m.0));
    let stale = mirrors
        .into_iter()
        .enumerate()
        .filter_map(|(i, (used, key, path))| {
            let old = now.duration_since(used).unwrap_or_default() > MIRROR_MAX_AGE;
            (old || i >= MIRROR_MAX_ENTRIES).then_some((key, path))
        });
    let mut removed = Vec::new();
    for (key, path) in stale.chain(leftovers) {
        let lock = cache.lock_for(&key);
        let Ok(_in_use_by_us) = lock.try_lock() else {
            continue;
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(mirror = %path.display(), error = %e, "cannot prune a git mirror")
            }
        }
    }
    removed
}

/// The folder git uses as an empty `HOME`: created 0700, and emptied
/// again if anything ever appeared in it.
fn prepare_git_home(dir: &Path) -> Result<(), CloneError> {
    use std::os::unix::fs::PermissionsExt;
    let stray = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if stray {
        tracing::warn!(dir = %dir.display(), "git's empty home was not empty; emptying it");
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| CloneError::GitHome {
            dir: dir.to_path_buf(),
            source,
        })
}

/// The git dirs a clone of the local repository `local` may be served
/// from, and so trusted although another user owns them: the path itself
/// (a bare repository) and its `.git` (a work tree's). git compares them
/// with the repository it opened, both resolved.
fn trusted(local: &Path) -> Vec<PathBuf> {
    vec![local.to_path_buf(), local.join(".git")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_repository_is_trusted_issue_17() {
        assert_eq!(
            trusted(Path::new("/srv/git/app.git")),
            [
                PathBuf::from("/srv/git/app.git"),
                PathBuf::from("/srv/git/app.git/.git")
            ]
        );
    }

    fn mirror(root: &Path, key: &str, age: Duration) -> PathBuf {
        let m = root.join(format!("{key}.git"));
        std::fs::create_dir_all(&m).expect("mkdir");
        let f = std::fs::File::create(m.join(USED_MARKER)).expect("marker");
        f.set_modified(SystemTime::now() - age).expect("set mtime");
        m
    }

    #[test]
    fn prune_removes_old_and_least_recent_mirrors_but_never_one_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let cache = MirrorCache::default();
        let day = Duration::from_secs(86_400);
        let fresh = mirror(root, "fresh", day);
        let old = mirror(root, "old", 8 * day);
        let busy_old = mirror(root, "busy", 30 * day);
        let tmp = root.join("crashed.git.tmp");
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let lock = cache.lock_for("busy");
        let held = lock.try_lock().expect("lock");
        let removed = prune(root, &cache, SystemTime::now());
        assert!(fresh.exists() && busy_old.exists());
        assert!(!old.exists() && !tmp.exists(), "{removed:?}");
        drop(held);
        prune(root, &cache, SystemTime::now());
        assert!(!busy_old.exists());
        // Past the entry cap, the least recently used go.
        for i in 0..MIRROR_MAX_ENTRIES + 3 {
            mirror(
                root,
                &format!("m{i:02}"),
                Duration::from_secs(60 * (i as u64 + 2)),
            );
        }
        prune(root, &cache, SystemTime::now());
        let left = std::fs::read_dir(root).expect("read").count();
        assert_eq!(left, MIRROR_MAX_ENTRIES);
        assert!(!fresh.exists() && root.join("m00.git").exists());
        assert!(
            !root
                .join(format!("m{:02}.git", MIRROR_MAX_ENTRIES + 2))
                .exists()
        );
    }
}
