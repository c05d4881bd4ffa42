//! `agentd logs ID --egress` (issue 19): the session's egress log, one
//! JSON line per connection, from its audit record (`agentd/egress.jsonl`),
//! which the daemon appends to while the session runs, so `-f` follows it
//! live. Lines are printed escaped (they hold text the agent chose); the
//! `omitted` line, rewritten in place while the session runs, is printed
//! once, as it stands at the end.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::GlobalArgs;
use super::logs::Args;
use crate::observed::{Phase, Status};

/// Lines of `path` from byte `offset` on: the complete ones, printed
/// (escaped); returns the offset after them. An `omitted` line stops the
/// reading before it (it is printed at the end); `last` prints it.
fn print_new(path: &Path, offset: u64, last: bool, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut at = offset;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        if line.starts_with(b"{\"omitted\"") && !last {
            break;
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        writeln!(out, "{}", super::escape::text(&text))?;
        at += line.len() as u64;
    }
    Ok(at)
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = global.state_dir()?;
    let status_path = state.join("status").join(format!("{}.json", args.id));
    let read_status = || crate::status::read_one(&status_path);
    let mut status: Status = read_status().map_err(|_| {
        anyhow::anyhow!(
            "no status for request `{}`; hint: `agentd status` lists known requests",
            args.id
        )
    })?;
    let Some(dir) = status.audit_dir.clone() else {
        bail!(
            "request `{}` has no session yet ({}); hint: its egress log appears once it starts",
            args.id,
            status.phase.as_str()
        );
    };
    let path = dir.join(crate::execute::EGRESS_LOG_FILE);
    if status.phase == Phase::Done && !path.exists() {
        bail!(
            "session of `{}` has no egress log; hint: only profiles with `egress` have one",
            args.id
        );
    }
    let mut out = std::io::stdout().lock();
    let mut offset = 0;
    loop {
        let done = status.phase == Phase::Done;
        offset = print_new(&path, offset, done || !args.follow, &mut out)?;
        out.flush()?;
        if done || !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        match read_status() {
            Ok(s) => status = s,
            Err(_) => return Ok(ExitCode::SUCCESS),
        }
    }
}
