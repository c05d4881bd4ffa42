//! The two moments of a session where `results` is called (issue 20): the
//! base right after the clone, the capture and push at the end, before
//! the record is sealed. Kept apart so `start` and `finish` carry one line
//! each.

use std::ffi::OsString;
use std::path::Path;

use super::clone_sandbox::SUBCOMMAND;

use super::Shared;
use crate::audit::Record;
use crate::desired::{BranchVars, Profile, Repo, Request};
use crate::observed::Outcome;
use crate::results::{Captured, Plan};

/// What results capture and push will need, fixed at the start.
pub fn plan(profile: &Profile, repo: &Repo, session_id: &str, spec: &Request) -> Plan {
    let work_unit = match &spec.input {
        crate::desired::Input::WorkUnit(w) => Some(w.as_str()),
        _ => None,
    };
    Plan::of(
        profile,
        repo,
        &BranchVars {
            profile: &profile.name,
            session_id,
            request: &spec.id,
            work_unit,
        },
    )
}

/// Record the base of the fresh clone in `work_root` (before the gate),
/// from the held `seed` it is a copy of when there is one.
pub async fn record_base(
    sh: &Shared,
    work_root: &Path,
    plan: Plan,
    seed: Option<crate::results::Seed>,
) -> Result<(), BaseError> {
    let git_home = sh.settings.state.join("git-home");
    crate::results::record_base(work_root, &git_home, plan, &sh.listings, seed)
        .await
        .map_err(BaseError)
}

/// The base of a session's results could not be recorded (`results`'
/// message: what failed and why); the start fails.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BaseError(String);

/// Capture what the session's agent changed into `record`, and push.
pub async fn capture(sh: &Shared, session_id: &str, record: &Record, outcome: Outcome) -> Captured {
    let env_lookup = |name: &str| std::env::var(name).ok();
    let read = move |src: &crate::desired::SecretSource| {
        super::secrets::read("push.token", src, &env_lookup).map_err(|e| e.to_string())
    };
    // The receiving side of a push into a local repository runs where a
    // local clone does: in the sandbox (a root of git's system folders, the
    // repository kept writable and trusted, nothing of the daemon's). git
    // runs it through the shell, so the helper is named by its path.
    let hide = sh.clone_sandbox.hide.clone();
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let launch = move |dest: &Path, home: &Path| {
        let mut argv: Vec<OsString> = vec![exe.clone().into(), SUBCOMMAND.into()];
        for h in &hide {
            argv.extend(["--hide".into(), h.clone().into()]);
        }
        argv.extend([
            "--keep".into(),
            dest.into(),
            "--home".into(),
            home.into(),
            "--trust".into(),
            dest.into(),
            "--".into(),
        ]);
        argv
    };
    let git_home = sh.settings.state.join("git-home");
    let host = crate::results::Host {
        git_home: &git_home,
        read_secret: &read,
        sandbox: Some(&launch),
    };
    crate::results::finish(
        &sh.settings.work_dir(session_id),
        &record.dir,
        outcome,
        &host,
    )
    .await
}
