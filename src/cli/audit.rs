//! `agentd audit verify [SESSION...]`: re-hash sealed records and report
//! every difference from their manifests. Exit 0 when all sealed records
//! match, 1 when any differs (incomplete records are listed, not failures:
//! they were never sealed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::audit::verify::{Finding, verify};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check sealed records against their MANIFEST.sha256.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Session ids (or record folders) to check [default: every record].
    pub sessions: Vec<String>,
}

pub fn run(global: &GlobalArgs, cmd: &Command) -> anyhow::Result<ExitCode> {
    let Command::Verify(args) = cmd;
    let root = global.audit_root()?;
    let records = if args.sessions.is_empty() {
        all_records(&root)?
    } else {
        args.sessions
            .iter()
            .map(|s| find(&root, s))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let (mut ok, mut bad, mut incomplete) = (0, 0, 0);
    let mut out = super::out::Lines::new(std::io::stdout().lock());
    for dir in &records {
        // Record folders and the file names in findings come from the
        // agent's own files: escaped.
        let name =
            super::escape::text(&dir.strip_prefix(&root).unwrap_or(dir).display().to_string())
                .into_owned();
        let findings = verify(dir);
        if findings.is_empty() {
            ok += 1;
            out.line(format_args!("{name}: ok"))?;
        } else if findings == [Finding::Incomplete] {
            incomplete += 1;
            out.line(format_args!("{name}: {}", Finding::Incomplete))?;
        } else {
            bad += 1;
            for f in findings {
                out.line(format_args!(
                    "{name}: {}",
                    super::escape::text(&f.to_string())
                ))?;
            }
        }
    }
    eprintln!(
        "{} record(s): {ok} ok, {bad} differ, {incomplete} incomplete",
        records.len()
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn all_records(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let profiles = match std::fs::read_dir(root) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for p in profiles.flatten().filter(|e| e.path().is_dir()) {
        for s in std::fs::read_dir(p.path())?
            .flatten()
            .filter(|e| e.path().is_dir())
        {
            out.push(s.path());
        }
    }
    out.sort();
    Ok(out)
}

fn find(root: &Path, session: &str) -> anyhow::Result<PathBuf> {
    let as_path = PathBuf::from(session);
    if as_path.join("agentd").is_dir() {
        return Ok(as_path);
    }
    let found: Vec<PathBuf> = all_records(root)?
        .into_iter()
        .filter(|d| d.file_name().is_some_and(|n| n == session))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no audit record for session `{session}` under {}; hint: `agentd status` shows session ids",
            root.display()
        ),
        _ => bail!(
            "session `{}` names several records: {found:?}",
            super::escape::text(session)
        ),
    }
}
