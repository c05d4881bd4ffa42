//! How git runs for a clone: a cleared environment, no configuration of
//! the daemon user's, bounded by `--clone-timeout` (its process group
//! killed), a local clone in the sandbox, the clone token in the
//! environment only and never behind a redirect.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::execute::clone_sandbox::Sandbox;

/// Whether git may use the `file` transport: only for a local repository
/// the profile allows and for the copy out of the daemon's own mirror.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FileTransport {
    Allow,
    Never,
}

/// How git is run: isolated and bounded.
pub(super) struct Git<'a> {
    pub(super) home: &'a Path,
    pub(super) timeout: Duration,
    /// A local clone: in the sandbox, with `source` (the repository)
    /// read-only, `keep` (the destination) writable and `trust` trusted.
    pub(super) sandbox: Option<Sandboxed<'a>>,
}

/// The sandbox a local clone runs in, and what it shows, keeps and trusts
/// there.
pub(super) struct Sandboxed<'a> {
    pub(super) sandbox: &'a Sandbox,
    pub(super) source: &'a Path,
    pub(super) keep: &'a Path,
    pub(super) trust: &'a [PathBuf],
}

/// Environment variables passed through to git: the search path, temp dir,
/// and what reaching a remote needs (trust anchors, proxies). Everything
/// else of the daemon's environment (credential values, GIT_* settings
/// such as tracing that would print the auth header) stays out.
const PASS_ENV: &[&str] = &[
    "PATH",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// A git run that failed; each message says what git said or why it was
/// stopped, and the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}; hint: install git on the daemon's host")]
    Spawn(std::io::Error),
    #[error("git: {0}")]
    Wait(std::io::Error),
    #[error(
        "git did not finish within {secs}s (--clone-timeout); hint: check that the remote answers, or raise --clone-timeout"
    )]
    Timeout { secs: u64 },
    #[error("git exited with {0}")]
    Exited(std::process::ExitStatus),
    /// The last lines git printed.
    #[error("{0}")]
    Said(String),
    #[error(
        "{0}; the remote answered with a redirect, which agentd never follows while it sends the clone token; hint: name the repository's final https:// URL in the profile"
    )]
    Redirected(String),
}

impl Git<'_> {
    pub(super) async fn run(
        &self,
        args: &[&std::ffi::OsStr],
        file: FileTransport,
        token: Option<&str>,
    ) -> Result<(), GitError> {
        let mut cmd = match &self.sandbox {
            Some(s) => s
                .sandbox
                .command(s.source, s.keep, self.home, s.trust, "git"),
            None => Command::new(crate::fsutil::program_path("git")),
        };
        cmd.env_clear();
        for k in PASS_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        let file_allow = match file {
            FileTransport::Allow => "protocol.file.allow=always",
            FileTransport::Never => "protocol.file.allow=never",
        };
        cmd.env("HOME", self.home)
            .env("XDG_CONFIG_HOME", self.home)
            .env("GIT_TEMPLATE_DIR", self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C")
            .args(["-c", "credential.helper="])
            .args(["-c", file_allow, "-c", "submodule.recurse=false"])
            .args(["-c", "core.hooksPath=/dev/null"])
            // No reflog of the clone itself (`logs/`: eight files and
            // folders a session, issue 18). The clone's config then has no
            // `logallrefupdates = true`, which is git's default for a
            // repository with a work tree anyway: the agent's own ref
            // updates are logged as usual.
            .args(["-c", "core.logAllRefUpdates=false"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills git's helpers
            // (git-remote-https, upload-pack) too.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(t) = token {
            // Redirects off with the token (issue 17): `git_auth`.
            cmd.envs(crate::git_auth::token_env(t));
        }
        let child = cmd.spawn().map_err(GitError::Spawn)?;
        let pgid = child.id();
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out.map_err(GitError::Wait)?,
            Err(_) => {
                if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(GitError::Timeout {
                    secs: self.timeout.as_secs(),
                });
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(3)..].join(" | ");
        Err(if tail.is_empty() {
            GitError::Exited(out.status)
        } else if token.is_some() && redirected(&tail) {
            GitError::Redirected(tail)
        } else {
            GitError::Said(tail)
        })
    }
}

/// git's message for an HTTP redirect it did not follow
/// (`http.followRedirects=false`): "The requested URL returned error: 301".
fn redirected(stderr: &str) -> bool {
    ["301", "302", "303", "307", "308"]
        .iter()
        .any(|code| stderr.contains(&format!("returned error: {code}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_redirect_is_recognised_issue_17() {
        assert!(redirected(
            "fatal: unable to access 'https://h/r.git/': The requested URL returned error: 301"
        ));
        assert!(redirected("The requested URL returned error: 308"));
        assert!(!redirected("The requested URL returned error: 404"));
        assert!(!redirected("fatal: repository not found"));
    }
}
