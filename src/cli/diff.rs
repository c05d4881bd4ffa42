//! `agentd diff ID [--raw]`: what a session's agent changed (issue 20),
//! from its audit record alone: the new commits as a patch series
//! (`agentd/commits.patch`), then the uncommitted work
//! (`agentd/worktree.patch`). Both are the agent's text: escaped as the
//! console is (newline and tab kept, every other control and non-UTF-8
//! byte shown as an escape) unless `--raw`, which gives bytes `git am` and
//! `git apply` take. What the record left out is said on stderr.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::observed::Phase;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Request id.
    pub id: String,
    /// Write the patches exactly as recorded (for `git am` / `git apply`).
    #[arg(long)]
    pub raw: bool,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = global.state_dir()?;
    let status = crate::status::read_one(&state.join("status").join(format!("{}.json", args.id)))
        .map_err(|_| {
        anyhow::anyhow!(
            "no status for request `{}`; hint: `agentd status` lists known requests",
            args.id
        )
    })?;
    if status.phase != Phase::Done {
        bail!(
            "request `{}` is {}: what its agent changed is recorded when it ends",
            args.id,
            status.phase.as_str()
        );
    }
    let Some(dir) = &status.audit_dir else {
        bail!("request `{}` ended without a session", args.id);
    };
    let record = crate::audit::Record { dir: dir.clone() };
    let changes = record.read_session().and_then(|r| r.changes);
    let mut out = std::io::stdout().lock();
    let mut printed = false;
    for name in ["commits.patch", "worktree.patch"] {
        let path = dir.join("agentd").join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        printed |= !bytes.is_empty();
        if args.raw {
            out.write_all(&bytes)?;
        } else {
            out.write_all(&super::escape::console(&bytes))?;
        }
    }
    out.flush()?;
    let mut err = std::io::stderr().lock();
    match &changes {
        None => writeln!(
            err,
            "agentd: request `{}` has no record of its changes (no clone, or an older agentd)",
            args.id
        )?,
        Some(c) if !printed => writeln!(
            err,
            "agentd: request `{}`: no changes ({} new commits)",
            args.id, c.commits
        )?,
        Some(_) => {}
    }
    if let Some(c) = changes.filter(|c| c.truncated) {
        for line in &c.cut {
            writeln!(
                err,
                "agentd: not in the record: {}",
                super::escape::text(line)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
