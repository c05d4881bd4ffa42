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
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills git's helpers
            // (git-remote-https, upload-pack) too.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(t) = token {
            // The header is not scoped to a host: a redirect would move
            // git's base URL and take the token to wherever it points
            // (issue 17). With a token, no redirect is followed at all.
            let header = format!(
                "Authorization: Basic {}",
                base64(format!("x-access-token:{t}").as_bytes())
            );
            cmd.env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header)
                .env("GIT_CONFIG_KEY_1", "http.followRedirects")
                .env("GIT_CONFIG_VALUE_1", "false");
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
