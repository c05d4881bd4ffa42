//! Local repositories (a path on the host): git's clone in the sandbox,
//! or a copy of the repository's seed clone (`seed.rs`) while its git
//! folder is unchanged.

use std::path::Path;
use std::time::SystemTime;

use super::git::{FileTransport, Git, Sandboxed};
use super::{CloneEnv, CloneError, blocking, blocking_io, seed, seeds_root, trusted};
use crate::desired::Repo;

/// A local repository: a copy of its seed when its git folder is as it was
/// when the seed was made (`seed.rs`), else git's clone in the sandbox,
/// kept as the seed when the folder had settled and did not change
/// meanwhile. Clones that may make a seed take turns per repository path,
/// so the ones after the first copy its seed; the others run side by side.
pub(super) async fn clone_local(
    repo: &Repo,
    local: &Path,
    dest: &Path,
    env: &CloneEnv<'_>,
) -> Result<Option<crate::results::Seed>, CloneError> {
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CloneError::Create { path, source }
    };
    let key = seed::Seeds::key(local);
    let turn = env.cache.lock_for(&seed_lock(&key)).lock_owned().await;
    let seeds = &env.cache.seeds;
    let at = local.to_path_buf();
    let read_at = SystemTime::now();
    // Bounded like git's run: a hung file system must not hold the turn.
    let before = tokio::time::timeout(env.timeout, blocking(move || seed::state(&at)))
        .await
        .ok()
        .flatten()
        .flatten();
    if let Some(from) = before.as_ref().and_then(|s| seeds.get(&key, &s.digest)) {
        let seed_git = from.join(".git");
        let to = dest.to_path_buf();
        match blocking_io(move || seed::copy_tree(&from, &to)).await {
            Ok(()) => {
                tracing::debug!(repo = %local.display(), "copied the seed clone");
                // The seed stays locked until the results base has read
                // its refs and linked its objects.
                return Ok(Some(crate::results::Seed {
                    git_dir: seed_git,
                    hold: Box::new(turn),
                }));
            }
            Err(e) => {
                tracing::warn!(repo = %local.display(), error = %e, "cannot copy a seed clone; cloning");
                seeds.forget(&key);
                let to = dest.to_path_buf();
                blocking_io(move || seed::empty(&to))
                    .await
                    .map_err(create(dest))?;
            }
        }
    }
    let Some(state) = before.filter(|s| s.settled(read_at)) else {
        // No seed will be made: git clones into the session's folder, and
        // other sessions of this repository need not wait for it.
        drop(turn);
        sandboxed_clone(repo, local, dest, env).await?;
        return Ok(None);
    };
    // A seed is cloned where only the daemon reaches it, then copied: the
    // session's container is being created meanwhile, and nothing it could
    // write into its own folder may reach a later session.
    let root = seeds_root(env.cache_root);
    let (r, k) = (root.clone(), key.clone());
    let private = blocking_io(move || seed::private_folder(&r, &k))
        .await
        .map_err(create(&root))?;
    let copied = match sandboxed_clone(repo, local, &private, env).await {
        Ok(()) => {
            let (from, to) = (private.clone(), dest.to_path_buf());
            blocking_io(move || seed::copy_tree(&from, &to))
                .await
                .map_err(create(dest))
        }
        Err(e) => Err(e),
    };
    let (seeds2, at, ok) = (seeds.clone(), local.to_path_buf(), copied.is_ok());
    let kept =
        blocking_io(move || seeds2.keep_if_unchanged(&root, &key, &at, state, &private, ok)).await;
    if let Err(e) = kept {
        tracing::warn!(repo = %local.display(), error = %e, "cannot keep a seed clone");
    }
    drop(turn);
    copied?;
    evict_seeds(env).await;
    Ok(None)
}

/// The lock of the seed `key` (one namespace with the mirrors' locks).
fn seed_lock(key: &str) -> String {
    format!("seed\0{key}")
}

/// Remove the seeds past the cap whose lock is free; one in use is a copy
/// under way, and stays until a later clone finds it free.
async fn evict_seeds(env: &CloneEnv<'_>) {
    for key in env.cache.seeds.over_cap() {
        let Ok(turn) = env.cache.lock_for(&seed_lock(&key)).try_lock_owned() else {
            continue;
        };
        let seeds = env.cache.seeds.clone();
        if let Err(e) = blocking_io(move || seeds.evict(&key)).await {
            tracing::warn!(error = %e, "cannot remove a seed clone");
        }
        drop(turn);
    }
}

/// git's clone of the local repository `local` into `dest`, in the sandbox.
async fn sandboxed_clone(
    repo: &Repo,
    local: &Path,
    dest: &Path,
    env: &CloneEnv<'_>,
) -> Result<(), CloneError> {
    let trust = trusted(local);
    let git = Git {
        home: env.git_home,
        timeout: env.timeout,
        sandbox: Some(Sandboxed {
            sandbox: env.sandbox,
            source: local,
            keep: dest,
            trust: &trust,
        }),
    };
    // Through git's transport, like its file:// URL (see the module doc).
    git.run(
        &[
            "clone".as_ref(),
            "--quiet".as_ref(),
            "--no-local".as_ref(),
            "--".as_ref(),
            local.as_os_str(),
            dest.as_os_str(),
        ],
        FileTransport::Allow,
        None,
    )
    .await
    .map_err(|source| CloneError::Local {
        repo: repo.as_str(),
        // The sandbox's own refusals carry their hint already.
        hint: if source.to_string().contains("; hint: ") {
            ""
        } else {
            "; hint: name a git repository the daemon's user can read, by its real path; git reads it where nothing else of the host is there, so links out of it lead nowhere"
        },
        source,
    })
}
