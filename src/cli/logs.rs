//! `agentd logs ID [-f]`: a session's console output, live from the work
//! folder while it runs, from the audit record after.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::audit::K8sLogReader;
use crate::observed::Phase;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Request id.
    pub id: String,
    /// Keep printing output as it arrives, until the session ends.
    #[arg(short, long)]
    pub follow: bool,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = global.state_dir()?;
    let status_path = state.join("status").join(format!("{}.json", args.id));
    let read_status = || crate::status::read_one(&status_path);
    let mut status = read_status().map_err(|_| {
        anyhow::anyhow!(
            "no status for request `{}`; hint: `agentd status` lists known requests",
            args.id
        )
    })?;
    let mut out = std::io::stdout().lock();
    let mut reader: Option<K8sLogReader> = None;
    loop {
        if status.phase == Phase::Done {
            if reader.is_none() {
                let Some(dir) = &status.audit_dir else {
                    bail!(
                        "request `{}` ended without a session ({})",
                        args.id,
                        status.message.unwrap_or_default()
                    );
                };
                let path = dir.join("agentd/console.log");
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.write_all(&bytes)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let (None, Some(sid)) = (&reader, &status.session_id) {
            reader = K8sLogReader::open(&state.join("work").join(sid).join("console.k8s.log")).ok();
        }
        if let Some(r) = reader.as_mut() {
            out.write_all(&r.read_new()?)?;
            out.flush()?;
        }
        if !args.follow {
            if reader.is_none() {
                bail!(
                    "request `{}` is {} and has no output yet",
                    args.id,
                    status.phase.as_str()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        match read_status() {
            Ok(s) => status = s,
            // The request was pruned while we followed: stop.
            Err(_) => return Ok(ExitCode::SUCCESS),
        }
        if status.phase == Phase::Done
            && let Some(r) = reader.as_mut()
        {
            out.write_all(&r.read_new().unwrap_or_default())?;
            return Ok(ExitCode::SUCCESS);
        }
    }
}
