//! Git as results capture and push run it (issue 20): isolated from the
//! daemon user's configuration and from anything an agent wrote, and
//! bounded in time and output.
//!
//! Every run gets a cleared environment (only the search path, temp dir,
//! trust anchors and proxies pass), no system or global config, an empty
//! `HOME`, an explicit `GIT_DIR` that is always a repository the daemon
//! made, attributes read from the empty tree (`GIT_ATTR_SOURCE`, so no
//! `.gitattributes` of the agent's ever applies), no hooks, no fsmonitor,
//! no credential helper, no prompt, and no replace refs. No filter, diff
//! driver or textconv is ever defined (only the daemon's own config
//! exists), and diffs pass `--no-ext-diff --no-textconv` anyway. Output is
//! read up to a cap; past it the run is killed and reported as cut. Each
//! run is bounded by the deadline of the whole job, its process group
//! killed when it passes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Git's empty tree: attributes come from it, so there are none.
pub const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Environment passed through to git (see `execute::clone`): trust anchors
/// and proxies are what a push over https needs.
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

/// The argv prefix (up to and including `--`) that runs a program in the
/// sandbox local clones run in, with the given repository kept (visible,
/// writable, trusted) and the given git home.
pub type Launch = dyn Fn(&Path, &Path) -> Vec<std::ffi::OsString> + Send + Sync;

/// Stderr kept for an error message.
const STDERR_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}; hint: install git on the daemon's host")]
    Spawn(std::io::Error),
    #[error("git {what} did not finish in time")]
    TimedOut { what: String },
    #[error("git {what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("git {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Where a run's standard output goes.
enum Out {
    /// Kept in memory, at most this many bytes.
    Capture(usize),
    /// Written to a file the daemon owns, at most this many bytes.
    File(PathBuf, u64),
}

/// What a run gave.
#[derive(Debug, Default)]
pub struct Done {
    /// Standard output (empty when it went to a file).
    pub stdout: Vec<u8>,
    /// Bytes of output seen (up to the cap plus one).
    pub bytes: u64,
    /// Output went past its cap: the run was killed, the output is cut.
    pub over: bool,
    /// Git exited with 0 (always true unless `keep_failure` was asked).
    /// No caller reads it yet (issue 18's narrowed exports showed it): the
    /// one `keep_failure` caller reads git's porcelain output instead.
    #[allow(dead_code)]
    pub success: bool,
    /// The last lines of its stderr, when it failed.
    pub detail: String,
}

/// The git of one job (a capture, a push), bounded by its deadline.
#[derive(Debug, Clone)]
pub struct Git {
    /// An empty folder of the daemon's: git's `HOME` and template dir.
    pub home: PathBuf,
    pub deadline: Instant,
}

/// One git command under construction.
pub struct GitCmd {
    cmd: tokio::process::Command,
    /// `-c` options, placed before the subcommand whenever they are given.
    configs: Vec<String>,
    /// The subcommand and its arguments.
    args: Vec<OsString>,
    what: String,
    stdin: Option<Vec<u8>>,
    stdin_file: Option<PathBuf>,
    out: Out,
    deadline: Instant,
    keep_failure: bool,
}

impl Git {
    pub fn new(home: &Path, budget: Duration) -> Git {
        Git {
            home: home.to_path_buf(),
            deadline: Instant::now() + budget,
        }
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `git <args>` on the repository `git_dir` (one the daemon made).
    /// `what` names the step in messages.
    pub fn cmd(&self, git_dir: &Path, what: &str) -> GitCmd {
        let mut cmd = tokio::process::Command::new(crate::fsutil::program_path("git"));
        cmd.env_clear();
        for k in PASS_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_TEMPLATE_DIR", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_DIR", git_dir)
            .env("GIT_ATTR_SOURCE", EMPTY_TREE)
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C");
        let mut safe = OsString::from("safe.directory=");
        safe.push(git_dir);
        cmd.arg("-c").arg(safe);
        for c in [
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "core.untrackedCache=false",
            "core.attributesFile=/dev/null",
            "credential.helper=",
            "submodule.recurse=false",
            "protocol.file.allow=never",
            "gc.auto=0",
            "maintenance.auto=false",
            "fetch.recurseSubmodules=false",
            "advice.detachedHead=false",
        ] {
            cmd.args(["-c", c]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        GitCmd {
            cmd,
            configs: Vec::new(),
            args: Vec::new(),
            what: what.to_string(),
            stdin: None,
            stdin_file: None,
            out: Out::Capture(16 * 1024 * 1024),
            deadline: self.deadline,
            keep_failure: false,
        }
    }
}

impl GitCmd {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// A config value for this run only (`-c`), placed before the subcommand.
    pub fn config(mut self, kv: &str) -> Self {
        self.configs.push(kv.to_string());
        self
    }

    /// Allow the `file` transport: only between the daemon's own repositories
    /// and to the local repository a session cloned.
    pub fn file_transport(self) -> Self {
        self.config("protocol.file.allow=always")
    }

    /// Send `token` as basic auth to the one URL of this run, through the
    /// environment (never argv), with redirects off so it never goes
    /// anywhere else.
    pub fn token(mut self, token: &str) -> Self {
        self.cmd.envs(crate::git_auth::token_env(token));
        self
    }

    /// Redirects off (also without a token).
    pub fn no_redirects(self) -> Self {
        self.config("http.followRedirects=false")
    }

    /// Standard input from a file the daemon wrote.
    pub fn stdin_file(mut self, path: &Path) -> Self {
        self.stdin_file = Some(path.to_path_buf());
        self
    }

    /// A non-zero exit is `Ok` too (`Done::success` false, its output
    /// kept): for commands whose output says why (`push --porcelain`).
    pub fn keep_failure(mut self) -> Self {
        self.keep_failure = true;
        self
    }

    /// At most this long for this run (within the job's deadline).
    pub fn within(mut self, d: Duration) -> Self {
        self.deadline = self.deadline.min(Instant::now() + d);
        self
    }

    /// Keep at most `cap` bytes of output in memory.
    pub fn capture(mut self, cap: usize) -> Self {
        self.out = Out::Capture(cap);
        self
    }

    /// Write output to `path` (created, truncated), at most `cap` bytes.
    pub fn stdout_to(mut self, path: &Path, cap: u64) -> Self {
        self.out = Out::File(path.to_path_buf(), cap);
        self
    }

    /// Run to the end (or the cap, or the deadline).
    pub async fn run(mut self) -> Result<Done, GitError> {
        for c in &self.configs {
            self.cmd.args(["-c", c]);
        }
        self.cmd.args(&self.args);
        let what = self.what.clone();
        let io = |source| GitError::Io {
            what: what.clone(),
            source,
        };
        if let Some(f) = &self.stdin_file {
            self.cmd.stdin(std::fs::File::open(f).map_err(io)?);
        } else if self.stdin.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        let mut child = self.cmd.spawn().map_err(GitError::Spawn)?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let kill = move || {
            if let Some(pid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| io(std::io::Error::other("no stdout")))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| io(std::io::Error::other("no stderr")))?;
        let stdin = child.stdin.take();
        let input = self.stdin.take();
        let feed = async move {
            if let (Some(mut w), Some(bytes)) = (stdin, input) {
                // A git that stops reading early is its own error.
                let _ = w.write_all(&bytes).await;
            }
        };
        let out = &self.out;
        let read_out = async {
            let (cap, mut file) = match out {
                Out::Capture(c) => (*c as u64, None),
                Out::File(p, c) => (*c, Some(tokio::fs::File::create(p).await.map_err(io)?)),
            };
            let mut done = Done::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stdout.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                let room = cap.saturating_sub(done.bytes);
                let keep = n.min(usize::try_from(room).unwrap_or(usize::MAX));
                match &mut file {
                    Some(f) => f.write_all(&buf[..keep]).await.map_err(io)?,
                    None => done.stdout.extend_from_slice(&buf[..keep]),
                }
                done.bytes += n as u64;
                if done.bytes > cap {
                    done.over = true;
                    kill();
                    break;
                }
            }
            if let Some(f) = &mut file {
                f.flush().await.map_err(io)?;
                f.sync_all().await.map_err(io)?;
            }
            Ok::<Done, GitError>(done)
        };
        let read_err = async {
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < STDERR_CAP {
                    kept.extend_from_slice(&buf[..n.min(STDERR_CAP - kept.len())]);
                }
            }
            kept
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let all = async {
            let ((), done, err) = tokio::join!(feed, read_out, read_err);
            let status = child.wait().await.map_err(io)?;
            Ok::<_, GitError>((done?, err, status))
        };
        let (done, err, status) = match tokio::time::timeout(left, all).await {
            Ok(r) => r?,
            Err(_) => {
                kill();
                return Err(GitError::TimedOut { what });
            }
        };
        let detail = tail(&err).unwrap_or_else(|| format!("exited with {status}"));
        if done.over || status.success() || self.keep_failure {
            let success = status.success();
            return Ok(Done {
                success,
                detail: if success { String::new() } else { detail },
                ..done
            });
        }
        Err(GitError::Failed { what, detail })
    }
}

/// The last few non-empty lines of git's stderr, one line.
fn tail(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(3)..].join(" | ");
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_past_its_cap_is_cut_and_the_run_killed_issue_20() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        let git = Git::new(&home, Duration::from_secs(30));
        let repo = d.path().join("r.git");
        git.cmd(&repo, "init")
            .args(["init", "--bare", "-q"])
            .run()
            .await
            .expect("init");
        let done = git
            .cmd(&repo, "help")
            .args(["help", "-a"])
            .capture(100)
            .run()
            .await
            .expect("help");
        assert!(done.over);
        assert_eq!(done.stdout.len(), 100);
        let e = git
            .cmd(&repo, "rev-parse")
            .args(["rev-parse", "--verify", "nope"])
            .run()
            .await
            .expect_err("fails");
        assert!(e.to_string().starts_with("git rev-parse failed:"), "{e}");
    }
}
