//! `agentd daemon` (also bare `agentd`): the foreground reconciler.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::GlobalArgs;
use crate::daemon;
use crate::execute::{Event, Settings};
use crate::runtime::podman::Podman;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How long the status of a request whose file is gone is kept
    /// (`90s`, `30m`, `24h`).
    #[arg(long, env = "AGENTD_STATUS_RETENTION", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub status_retention: Duration,
    /// Grace period between SIGTERM and SIGKILL when a session is stopped.
    #[arg(long, env = "AGENTD_STOP_GRACE", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub stop_grace: Duration,
    /// Largest console capture kept in one audit record, in bytes; past it
    /// the capture is truncated with a marker. Also the bytes of files
    /// under `session/` (what the agent wrote in `$AGENTD_AUDIT_DIR`)
    /// hashed into one record: files past it are left out, and named in
    /// `session.json`'s `cut`.
    #[arg(long, env = "AGENTD_AUDIT_MAX_BYTES", default_value_t = 1 << 30, value_name = "BYTES")]
    pub audit_max_bytes: u64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            status_retention: Duration::from_secs(86_400),
            stop_grace: Duration::from_secs(10),
            audit_max_bytes: 1 << 30,
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::desired::parse_duration(s).map_err(|(m, h)| match h {
        Some(h) => format!("{m}; {h}"),
        None => m,
    })
}

/// uid the session command runs as: unprivileged, and outside the range
/// distributions hand to people, so host files it may own are recognisable.
pub const SESSION_UID: u32 = 10_001;

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    super::init_tracing();
    // Absolute paths: they are recorded in status files and passed to Podman.
    let absolute = |p: std::path::PathBuf| {
        std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))
    };
    let state = absolute(global.state_dir()?)?;
    let audit_root = absolute(global.audit_root()?)?;
    for (what, p) in [("state dir", &state), ("audit root", &audit_root)] {
        if p.to_string_lossy().contains(',') {
            anyhow::bail!(
                "the {what} {} contains a comma, which Podman's --mount cannot take; hint: choose another path",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating state dir {}", state.display()))?;
    let settings = Settings {
        desired: absolute(global.desired.clone())?,
        instance: daemon::instance_id(&state),
        audit_root,
        state,
        max_sessions: global.max_sessions,
        status_retention: args.status_retention,
        session_uid: SESSION_UID,
        stop_grace: args.stop_grace,
        audit_max_bytes: args.audit_max_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (tx, rx) = mpsc::channel::<Event>(64);
        let hard_stop = CancellationToken::new();
        spawn_signal_handler(tx.clone(), hard_stop.clone())?;
        daemon::run(settings, Podman::default(), hard_stop, tx, rx).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM drains, a second exits at once; SIGHUP rescans.
fn spawn_signal_handler(
    tx: mpsc::Sender<Event>,
    hard_stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        let mut stops = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {
                    let _ = tx.send(Event::Hangup).await;
                    continue;
                }
            }
            stops += 1;
            if stops == 1 {
                let _ = tx.send(Event::Drain).await;
            } else {
                hard_stop.cancel();
                return;
            }
        }
    });
    Ok(())
}
