//! `agentd status`: what the daemon observes, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use comfy_table::{Table, presets::NOTHING};

use super::GlobalArgs;
use crate::observed::Status;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these requests.
    pub ids: Vec<String>,
    /// Print an array of status objects.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = global.state_dir()?;
    let dir = state.join("status");
    if let Ok(bytes) = std::fs::read(state.join("daemon.json"))
        && let Ok(d) = serde_json::from_slice::<crate::daemon::DaemonState>(&bytes)
        && let Some(why) = d.source_unavailable
    {
        eprintln!(
            "warning: the daemon cannot read the desired dir since {}: {why}",
            d.since
        );
    }
    loop {
        let (records, problems) = crate::status::read_dir(&dir)?;
        let mut selected: Vec<&Status> = if args.ids.is_empty() {
            records.values().collect()
        } else {
            let missing: Vec<&String> = args
                .ids
                .iter()
                .filter(|i| !records.contains_key(*i))
                .collect();
            if !missing.is_empty() && !args.watch {
                bail!(
                    "no status for {}; hint: `agentd status` lists known requests",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            args.ids.iter().filter_map(|i| records.get(i)).collect()
        };
        selected.sort_by(|a, b| (a.created_at, &a.request).cmp(&(b.created_at, &b.request)));
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &selected)?;
            writeln!(out)?;
            return Ok(ExitCode::SUCCESS);
        }
        if args.watch {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        writeln!(out, "{}", table(&selected, jiff::Timestamp::now()))?;
        for p in problems {
            eprintln!("warning: {p}");
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        out.flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The status table; `now` is a parameter so tests can pin ages.
pub fn table(records: &[&Status], now: jiff::Timestamp) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "ID", "PROFILE", "PHASE", "OUTCOME", "EXIT", "AGE", "DURATION", "MESSAGE",
    ]);
    for s in records {
        let age = s
            .created_at
            .map(|c| human(now.duration_since(c).unsigned_abs()))
            .unwrap_or_else(|| "-".into());
        let duration = s
            .started_at
            .map(|st| {
                human(
                    s.finished_at
                        .unwrap_or(now)
                        .duration_since(st)
                        .unsigned_abs(),
                )
            })
            .unwrap_or_else(|| "-".into());
        let mut message = s.message.clone().unwrap_or_default();
        if message.chars().count() > 60 {
            message = message.chars().take(57).collect::<String>() + "...";
        }
        t.add_row([
            s.request.clone(),
            s.profile.clone(),
            s.phase.as_str().to_string(),
            s.outcome.map_or("-".into(), |o| o.as_str().to_string()),
            s.exit_code.map_or("-".into(), |c| c.to_string()),
            age,
            duration,
            message,
        ]);
    }
    t.to_string()
}

/// `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}
