//! `agentd cancel ID`: remove the request's file. The daemon sees the file
//! gone and cancels the session (stop with grace, outcome `cancelled`).

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::source::{FOLDERS, scan_folder};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Request id (the file stem under requests/).
    pub id: String,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let (folder, kind) = FOLDERS[1];
    let found = scan_folder(&global.desired, folder, kind)
        .with_context(|| format!("reading {}", global.desired.join(folder).display()))?;
    let matches: Vec<_> = found
        .iter()
        .filter(|f| crate::desired::stem(&f.path) == args.id)
        .collect();
    if matches.is_empty() {
        bail!(
            "no request file for `{}` under {}; hint: `agentd status` lists known requests",
            args.id,
            global.desired.join(folder).display()
        );
    }
    for f in matches {
        std::fs::remove_file(&f.path).with_context(|| format!("removing {}", f.path.display()))?;
        eprintln!("removed {}", f.path.display());
    }
    Ok(ExitCode::SUCCESS)
}
