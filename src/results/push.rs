//! Pushing the agent's commits (issue 20): the session's HEAD to one
//! branch of the repository it cloned, from the quarantine repository the
//! capture filled (its objects checked on the way in), by the daemon,
//! after the container is gone. The agent never holds the token: it is
//! read from its source only now, and reaches git through its environment
//! with redirects off, for the one URL of the push.
//!
//! Never forced: the refspec has no `+`, so a branch that has other
//! commits rejects the push (`failed`, not retried); a branch already at
//! the commit is `pushed`. A local repository gets its `receive-pack` with
//! the daemon's settings on its command line (which win over the
//! repository's own): no hooks, no automatic gc, no alternate-refs
//! command, no update of a checked-out branch. Bounded: a few attempts
//! with backoff within [`PUSH_TIME`].

use std::path::Path;
use std::time::Duration;

use super::git::{Git, Launch};
use super::model::{PushPlan, PushResult};
use super::stream;
use crate::desired::{Repo, SecretSource, valid_ref_name};
use crate::observed::Outcome;

/// How long a push may take in all, attempts and backoff included.
pub const PUSH_TIME: Duration = Duration::from_secs(120);

/// Attempts at most (1 s, 2 s, 4 s... between them).
const ATTEMPTS: u32 = 4;

/// Each attempt at most this long.
const ATTEMPT_TIME: Duration = Duration::from_secs(60);

/// The `receive-pack` a push into a local repository runs there.
/// (`safe.directory` for exactly that repository comes from the global
/// config the sandbox writes.)
const LOCAL_RECEIVE_PACK: &str = "git -c core.hooksPath=/dev/null -c receive.autogc=false \
     -c core.alternateRefsCommand=true -c core.fsmonitor=false \
     -c receive.denyCurrentBranch=refuse -c receive.denyDeleteCurrent=refuse \
     -c receive.fsckObjects=true receive-pack";

/// What a push needs from the capture.
pub struct Pushing<'a> {
    pub plan: &'a PushPlan,
    pub outcome: Outcome,
    /// The session's final HEAD.
    pub head: Option<&'a str>,
    /// HEAD has commits the base did not have.
    pub head_is_new: bool,
    /// The quarantine repository holding them.
    pub repo_git: &'a Path,
}

/// Where the push goes.
enum Target {
    Local(std::path::PathBuf),
    Https(String),
}

/// Reads a secret's value from its source (the caller's: the daemon reads
/// sources as `execute::secrets` does); the error names the source.
pub type ReadSecret<'a> = &'a (dyn Fn(&SecretSource) -> Result<String, String> + Sync);

/// Push, or say why not. A push into a local repository runs in
/// `sandbox` (the daemon's folders covered, as for a local clone): the
/// repository named may have been made by someone else, with links into
/// the daemon's folders.
pub async fn push(
    p: &Pushing<'_>,
    git_home: &Path,
    read_secret: ReadSecret<'_>,
    sandbox: Option<&Launch>,
) -> PushResult {
    if !p.plan.when.contains(&p.outcome) {
        return PushResult::Skipped {
            why: format!("the outcome `{}` is not in push.when", p.outcome.as_str()),
        };
    }
    let (Some(head), true) = (p.head, p.head_is_new) else {
        return PushResult::NothingToPush;
    };
    let ref_name = &p.plan.ref_name;
    if !valid_ref_name(ref_name) {
        return PushResult::Skipped {
            why: format!("`{ref_name}` (from push.branch) is not a valid ref name"),
        };
    }
    let target = match (&p.plan.repo, p.plan.repo.local_path()) {
        (_, Some(path)) => Target::Local(path),
        (Repo::Url(u), None) if u.starts_with("https://") => Target::Https(u.clone()),
        (r, _) => {
            return PushResult::Skipped {
                why: format!(
                    "push goes only to https:// or local repositories, not `{}`",
                    r.as_str()
                ),
            };
        }
    };
    let token = match (&target, &p.plan.token) {
        (Target::Local(_), _) => None,
        (Target::Https(u), None) => {
            return PushResult::Skipped {
                why: format!("push to `{u}` needs push.token"),
            };
        }
        (Target::Https(_), Some(src)) => match read_secret(src) {
            Ok(t) => Some(t),
            Err(reason) => return PushResult::Failed { reason },
        },
    };
    let git = Git::new(git_home, PUSH_TIME);
    let refspec = format!("{head}:{ref_name}");
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let pause = Duration::from_secs(1 << (attempt - 1));
            if git.left() <= pause {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let mut cmd = git
            .cmd(p.repo_git, "push")
            .within(ATTEMPT_TIME)
            .keep_failure()
            .capture(64 * 1024)
            .args(["push", "--porcelain", "--no-verify", "--no-progress"]);
        cmd = match &target {
            Target::Local(path) => cmd
                .file_transport()
                .arg(receive_pack(path, sandbox.map(|l| l(path, git_home))))
                // Absolute: never read as an option.
                .arg(path),
            Target::Https(url) => {
                let c = match &token {
                    Some(t) => cmd.token(t),
                    None => cmd.no_redirects(),
                };
                // `https://...`: never read as an option.
                c.arg(url)
            }
        };
        let done = match cmd.arg(&refspec).run().await {
            Ok(d) => d,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let text = String::from_utf8_lossy(&done.stdout);
        match stream::porcelain_status(&text, ref_name) {
            Some(('=' | '*' | ' ', _)) => {
                return PushResult::Pushed {
                    ref_name: ref_name.clone(),
                    commit: head.to_string(),
                };
            }
            Some(('!', summary)) => {
                return PushResult::Failed {
                    reason: format!(
                        "{ref_name} {summary}: the branch has other commits and a push is never forced"
                    ),
                };
            }
            _ => {
                last = if done.detail.is_empty() {
                    "git push said nothing about the branch".into()
                } else {
                    done.detail.clone()
                };
                if permanent(&last) {
                    break;
                }
            }
        }
    }
    PushResult::Failed {
        reason: format!("git push: {last}"),
    }
}

/// `--receive-pack=...` for a push into the local repository `dest`: the
/// sending side is the daemon's own quarantine repository; the receiving
/// side, which runs in `dest` (a folder someone else may have made),
/// runs in the sandbox when `sandbox` gives its argv prefix (whose global
/// config trusts exactly `dest`), else with `dest` trusted on its command
/// line. Quoted for the shell git runs it with.
fn receive_pack(dest: &Path, sandbox: Option<Vec<std::ffi::OsString>>) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    match sandbox {
        Some(prefix) => {
            let words: Vec<String> = prefix.iter().map(|w| quote(&w.to_string_lossy())).collect();
            format!("--receive-pack={} {LOCAL_RECEIVE_PACK}", words.join(" "))
        }
        None => {
            let head = LOCAL_RECEIVE_PACK.trim_end_matches("receive-pack");
            let trust = quote(&format!("safe.directory={}", dest.display()));
            format!("--receive-pack={head}-c {trust} receive-pack")
        }
    }
}

/// Whether a failed push would fail again: the server refused (4xx),
/// redirected (never followed), or the repository is not one.
fn permanent(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("returned error: 3")
        || d.contains("returned error: 4")
        || d.contains("redirect")
        || d.contains("does not appear to be a git repository")
        || d.contains("authentication failed")
        || d.contains("usage: git push")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_receive_pack_trusts_exactly_the_repository_quoted_issue_20() {
        let dest = Path::new("/srv/it's.git");
        assert!(
            receive_pack(dest, None)
                .ends_with("-c 'safe.directory=/srv/it'\\''s.git' receive-pack")
        );
        let sandboxed = receive_pack(
            dest,
            Some(vec![
                "/usr/bin/agentd".into(),
                "--keep".into(),
                dest.into(),
                "--".into(),
            ]),
        );
        assert_eq!(
            sandboxed,
            format!(
                "--receive-pack='/usr/bin/agentd' '--keep' '/srv/it'\\''s.git' '--' {LOCAL_RECEIVE_PACK}"
            )
        );
    }

    #[test]
    fn refusals_and_redirects_are_not_retried_issue_20() {
        assert!(permanent(
            "fatal: unable to access 'https://x/': The requested URL returned error: 301"
        ));
        assert!(permanent("fatal: Authentication failed for 'https://x/'"));
        assert!(!permanent(
            "fatal: unable to access 'https://x/': Failed to connect"
        ));
    }
}
