//! `agentd logs ID [-f]`: a session's console output, live from the work
//! folder while it runs, from the audit record after (`--egress`: its
//! egress log instead, `logs_egress.rs`).
//!
//! The console is the agent's: by default every control character but
//! newline and tab is escaped (and non-UTF-8 bytes shown as `\xNN`), so
//! reading a log can never drive the reader's terminal. `--raw` writes the
//! bytes as captured, for piping into files or tools.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::observed::Phase;
use crate::runtime::podman::console::K8sLogReader;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Request id.
    pub id: String,
    /// Keep printing output as it arrives, until the session ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Write the console bytes exactly as captured, control characters and
    /// all (for redirecting into a file or another tool; never needed to
    /// read a log on a terminal).
    #[arg(long)]
    pub raw: bool,
    /// Print the session's egress log instead (one JSON line per connection
    /// through its proxy; profiles with `egress` only).
    #[arg(long, conflicts_with = "raw")]
    pub egress: bool,
}

/// Where console bytes go: escaped unless `--raw`.
struct Sink<W: Write> {
    out: W,
    escape: Option<super::escape::Console>,
}

impl<W: Write> Sink<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.escape {
            Some(e) => self.out.write_all(&e.push(bytes)),
            None => self.out.write_all(bytes),
        }
    }
    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(e) = &mut self.escape {
            self.out.write_all(&e.finish())?;
        }
        self.out.flush()
    }
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    if args.egress {
        return super::logs_egress::run(global, args);
    }
    let state = global.state_dir()?;
    let status_path = state.join("status").join(format!("{}.json", args.id));
    let read_status = || crate::status::read_one(&status_path);
    let mut status = read_status().map_err(|_| {
        anyhow::anyhow!(
            "no status for request `{}`; hint: `agentd status` lists known requests",
            args.id
        )
    })?;
    let mut out = Sink {
        out: std::io::stdout().lock(),
        escape: (!args.raw).then(super::escape::Console::default),
    };
    let mut reader: Option<K8sLogReader> = None;
    loop {
        if status.phase == Phase::Done {
            if reader.is_none() {
                let Some(dir) = &status.audit_dir else {
                    bail!(
                        "request `{}` ended without a session ({})",
                        args.id,
                        super::escape::text(&status.message.unwrap_or_default())
                    );
                };
                let path = dir.join("agentd/console.log");
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.write(&bytes)?;
            }
            out.finish()?;
            return Ok(ExitCode::SUCCESS);
        }
        if let (None, Some(sid)) = (&reader, &status.session_id) {
            reader = K8sLogReader::open_session(&state.join("work").join(sid)).ok();
        }
        if let Some(r) = reader.as_mut() {
            out.write(&r.read_new()?)?;
            out.out.flush()?;
        }
        if !args.follow {
            if reader.is_none() {
                bail!(
                    "request `{}` is {} and has no output yet",
                    args.id,
                    status.phase.as_str()
                );
            }
            out.finish()?;
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        match read_status() {
            Ok(s) => status = s,
            // The request was pruned while we followed: stop.
            Err(_) => {
                out.finish()?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        if status.phase == Phase::Done
            && let Some(r) = reader.as_mut()
        {
            out.write(&r.read_new().unwrap_or_default())?;
            out.finish()?;
            return Ok(ExitCode::SUCCESS);
        }
    }
}
