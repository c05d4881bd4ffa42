//! `agentd status`: what the daemon observes, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use comfy_table::{Table, presets::NOTHING};

use super::GlobalArgs;
use super::escape;
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
    /// Show the scheduled profiles (last fire, its outcome, next fire)
    /// instead of requests; with --json, an array of schedule objects.
    #[arg(long)]
    pub schedules: bool,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = global.state_dir()?;
    let dir = state.join("status");
    if let Ok(bytes) = std::fs::read(state.join("daemon.json"))
        && let Ok(d) = serde_json::from_slice::<crate::daemon::DaemonState>(&bytes)
    {
        if let Some(why) = &d.source_unavailable {
            eprintln!(
                "warning: the daemon cannot read the desired dir since {}: {}",
                d.since,
                escape::text(why)
            );
        }
        for line in &d.skipped {
            // Paths come from the desired dir: print control characters escaped.
            eprintln!("warning: not followed: {}", escape::text(line));
        }
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
        let schedules = schedule_rows(&state, &records);
        if args.schedules {
            if args.json {
                serde_json::to_writer_pretty(&mut out, &schedules)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", schedule_table(&schedules))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        if args.json {
            serde_json::to_writer_pretty(&mut out, &selected)?;
            writeln!(out)?;
            return Ok(ExitCode::SUCCESS);
        }
        if args.watch {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        // Mode, cgroups and network as the daemon found them at its start,
        // so what this host cannot enforce is seen before a session fails.
        if let Some(host) = std::fs::read(state.join("host.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::runtime::podman::Host>(&b).ok())
        {
            writeln!(out, "host: {}", escape::text(&host.summary()))?;
        }
        writeln!(out, "{}", table(&selected, jiff::Timestamp::now()))?;
        if !schedules.is_empty() && args.ids.is_empty() {
            writeln!(out, "\n{}", schedule_table(&schedules))?;
        }
        for p in problems {
            eprintln!("warning: {}", escape::text(&p.to_string()));
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        out.flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One scheduled profile as `agentd status --schedules --json` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ScheduleRow {
    pub profile: String,
    pub schedule: String,
    pub suspended: bool,
    pub last_fire: Option<jiff::Timestamp>,
    pub last_request: Option<String>,
    /// Phase or outcome of the last fire's request.
    pub last_outcome: Option<String>,
    pub next_fire: Option<jiff::Timestamp>,
    /// The latest fire missed while the daemon was down (not backfilled).
    pub last_missed: Option<jiff::Timestamp>,
    /// The latest fire skipped by `concurrency_policy = "forbid"`.
    pub last_skip: Option<String>,
}

fn schedule_rows(
    state: &std::path::Path,
    records: &std::collections::BTreeMap<String, Status>,
) -> Vec<ScheduleRow> {
    crate::execute::read_schedules(&state.join("schedules"))
        .into_values()
        .map(|s| {
            let last_outcome = s
                .last_request
                .as_ref()
                .and_then(|r| records.get(r))
                .map(|st| match st.outcome {
                    Some(o) => o.as_str().to_string(),
                    None => st.phase.as_str().to_string(),
                });
            ScheduleRow {
                profile: s.profile,
                schedule: s.schedule,
                suspended: s.suspended,
                last_fire: s.last_fire,
                last_request: s.last_request,
                last_outcome,
                next_fire: s.next_fire,
                last_missed: s.last_missed,
                last_skip: s.last_skip,
            }
        })
        .collect()
}

fn schedule_table(rows: &[ScheduleRow]) -> String {
    let local = |t: Option<jiff::Timestamp>| {
        t.map_or_else(
            || "-".to_string(),
            |t| {
                t.to_zoned(jiff::tz::TimeZone::system())
                    .strftime("%Y-%m-%d %H:%M")
                    .to_string()
            },
        )
    };
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "SCHEDULED PROFILE",
        "SCHEDULE",
        "LAST FIRE",
        "LAST OUTCOME",
        "NEXT FIRE",
        "NOTE",
    ]);
    for r in rows {
        let mut note = Vec::new();
        if r.suspended {
            note.push("suspended".to_string());
        }
        if let Some(m) = r.last_missed {
            note.push(format!(
                "missed {} (daemon down; not backfilled)",
                local(Some(m))
            ));
        }
        if let Some(s) = &r.last_skip {
            note.push(s.clone());
        }
        t.add_row([
            escape::text(&r.profile).into_owned(),
            escape::text(&r.schedule).into_owned(),
            local(r.last_fire),
            r.last_outcome.clone().unwrap_or_else(|| "-".into()),
            local(r.next_fire),
            escape::text(&note.join("; ")).into_owned(),
        ]);
    }
    t.to_string()
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
        // Escaped first, so the cut never lets half an escape through raw.
        let mut message = escape::text(s.message.as_deref().unwrap_or_default()).into_owned();
        if message.chars().count() > 60 {
            message = message.chars().take(57).collect::<String>() + "...";
        }
        t.add_row([
            escape::text(&s.request).into_owned(),
            escape::text(&s.profile).into_owned(),
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
