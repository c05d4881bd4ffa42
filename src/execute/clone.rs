//! Getting the repository into the session's home, on the host.
//!
//! Cloning on the host means the image needs no git, a `file://` repo works
//! with `network = "none"`, and the clone token never enters the container.
//! Remote repositories go through a bare mirror cache under
//! `<state>/cache/git/`, refreshed with `git fetch`, so a large repository is
//! not downloaded from scratch for every session; the session clone is then a
//! local copy (`--no-hardlinks`: the agent owns its copy and can never write
//! through to the cache or to a local source repository).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::desired::{Repo, sha256_hex};

const GIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Clone `repo` into `dest`. `token` (the value of `repo_token_source`) is
/// handed to git through its environment as an HTTP header, never argv.
pub async fn clone(
    repo: &Repo,
    dest: &Path,
    token: Option<&str>,
    cache_root: &Path,
    cache_lock: &tokio::sync::Mutex<()>,
) -> Result<(), String> {
    let source = match repo.local_path() {
        Some(local) => local,
        None => {
            let url = repo.as_str();
            let cache = cache_root.join(format!("{}.git", &sha256_hex(url.as_bytes())[..16]));
            let _guard = cache_lock.lock().await;
            refresh_mirror(&url, &cache, token).await?;
            cache
        }
    };
    git(
        &[
            "clone".as_ref(),
            "--quiet".as_ref(),
            "--no-hardlinks".as_ref(),
            "--".as_ref(),
            source.as_os_str(),
            dest.as_os_str(),
        ],
        None,
    )
    .await
    .map_err(|e| format!("clone of {} failed: {e}", repo.as_str()))?;
    if repo.local_path().is_none() {
        let url = repo.as_str();
        git(
            &[
                "-C".as_ref(),
                dest.as_os_str(),
                "remote".as_ref(),
                "set-url".as_ref(),
                "origin".as_ref(),
                url.as_ref(),
            ],
            None,
        )
        .await?;
    }
    Ok(())
}

/// Create or update the bare mirror of `url` at `cache`.
async fn refresh_mirror(url: &str, cache: &Path, token: Option<&str>) -> Result<(), String> {
    if cache.join("HEAD").exists() {
        return git(
            &[
                "-C".as_ref(),
                cache.as_os_str(),
                "fetch".as_ref(),
                "--quiet".as_ref(),
                "--prune".as_ref(),
                "origin".as_ref(),
            ],
            token,
        )
        .await
        .map_err(|e| format!("fetch of {url} failed: {e}"));
    }
    let tmp: PathBuf = cache.with_extension("git.tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    if let Some(parent) = cache.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    git(
        &[
            "clone".as_ref(),
            "--quiet".as_ref(),
            "--mirror".as_ref(),
            "--".as_ref(),
            url.as_ref(),
            tmp.as_os_str(),
        ],
        token,
    )
    .await
    .map_err(|e| format!("clone of {url} failed: {e}"))?;
    tokio::fs::rename(&tmp, cache)
        .await
        .map_err(|e| format!("cannot move mirror into place: {e}"))
}

/// Run git with a clean, non-interactive environment.
async fn git(args: &[&std::ffi::OsStr], token: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("git");
    // Only what git needs: the daemon's environment holds credential values
    // and possibly GIT_* settings (tracing that would print the auth header).
    cmd.env_clear();
    for k in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    // Source repositories may belong to another user; reading them is fine.
    cmd.args(["-c", "safe.directory=*", "-c", "protocol.file.allow=always"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        let header = format!(
            "Authorization: Basic {}",
            base64(format!("x-access-token:{t}").as_bytes())
        );
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git: {e}; hint: install git on the daemon's host"))?;
    let out = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("git did not finish within {}s", GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = last[last.len().saturating_sub(3)..].join(" | ");
    Err(if tail.is_empty() {
        format!("git exited with {}", out.status)
    } else {
        tail
    })
}

/// Standard base64 (RFC 4648) for the HTTP auth header.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
