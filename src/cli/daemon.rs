//! `agentd daemon` (also bare `agentd`): the foreground reconciler.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::GlobalArgs;
use crate::daemon;
use crate::execute::{Event, Settings};
use crate::runtime::Runtime as _;
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
    /// uid (and gid) session commands run as. Rootful: it must belong to no
    /// host account or group, or the daemon refuses to start.
    #[arg(long, env = "AGENTD_SESSION_UID", default_value_t = SESSION_UID, value_name = "UID",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub session_uid: u32,
    /// Longest a git run of a clone may take (mirror fetch, copy); past
    /// it git is killed and the session is start_failed.
    #[arg(long, env = "AGENTD_CLONE_TIMEOUT", default_value = "15m", value_parser = parse_duration, value_name = "DURATION")]
    pub clone_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (`127.0.0.1:9464`).
    /// Off by default. Only loopback addresses unless
    /// --metrics-allow-remote is given too.
    #[arg(long, env = "AGENTD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Let --metrics-listen take a non-loopback address (`0.0.0.0:9464`):
    /// anyone who can reach it sees profile names and activity.
    #[arg(long, env = "AGENTD_METRICS_ALLOW_REMOTE")]
    pub metrics_allow_remote: bool,
    #[command(flatten)]
    pub host_network: super::HostNetworkArg,
    /// PEM certificates (an operator's internal CA) the egress proxy
    /// trusts, besides the host's roots, when it forwards an injected
    /// credential to its host; sessions with `inject` trust them too.
    #[arg(long, env = "AGENTD_EGRESS_CA_FILE", value_name = "FILE")]
    pub egress_ca_file: Option<std::path::PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            status_retention: Duration::from_secs(86_400),
            stop_grace: Duration::from_secs(10),
            audit_max_bytes: 1 << 30,
            session_uid: SESSION_UID,
            clone_timeout: Duration::from_secs(15 * 60),
            metrics_listen: None,
            metrics_allow_remote: false,
            host_network: Default::default(),
            egress_ca_file: None,
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::desired::parse_duration(s).map_err(|(m, h)| match h {
        Some(h) => format!("{m}; {h}"),
        None => m,
    })
}

/// uid the session command runs as by default: unprivileged, above the
/// range distributions hand to people (1000..) in the usual setups, below
/// the subordinate ranges rootless Podman uses (100000..) and `nobody`.
/// No number is free everywhere (directory services, later `useradd`), so
/// rootful start-up checks it against the host's accounts and groups
/// (`check_session_uid`) instead of trusting the choice.
pub const SESSION_UID: u32 = 10_001;

/// Rootful Podman maps the session uid to the same host uid, so the agent's
/// files (its home, its audit folder) are owned by that host uid. Refuse a
/// uid or gid that is a host account's or group's: that account would own
/// what the agent leaves, and could reach into running sessions.
/// (Rootless Podman maps it into the user's subordinate range: no clash.)
fn check_session_uid(uid: u32) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let hint = "hint: pass --session-uid (or AGENTD_SESSION_UID) with a number no host account or group uses (`getent passwd N` and `getent group N` print nothing), or move that account";
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => anyhow::bail!(
            "session uid {uid} belongs to the host account `{}`: rootful sessions run as host uid {uid}, so that account would own what agents leave and could reach into their sessions; {hint}",
            u.name
        ),
        Ok(None) => {}
        Err(e) => anyhow::bail!("cannot look up host account with uid {uid}: {e}"),
    }
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(uid)) {
        Ok(Some(g)) => anyhow::bail!(
            "session gid {uid} (sessions run with gid = uid) belongs to the host group `{}`, whose members could reach into sessions; {hint}",
            g.name
        ),
        Ok(None) => Ok(()),
        Err(e) => anyhow::bail!("cannot look up host group with gid {uid}: {e}"),
    }
}

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
    check_session_uid(args.session_uid)?;
    // Bound before anything starts: a refused or busy address fails the start.
    let listener = args
        .metrics_listen
        .map(|addr| crate::metrics::bind(addr, args.metrics_allow_remote))
        .transpose()?;
    // Private to the daemon's user, checked before anything is read there.
    daemon::private::ensure_dir("state dir", &state, nix::unistd::geteuid().as_raw(), true)?;
    let desired = absolute(global.desired.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let instance = daemon::instance_id(&state);
        // One registry for the daemon, handed to its parts.
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let podman = Podman::new(&instance).observed_by(std::sync::Arc::clone(&metrics) as _);
        // Fail fast: a daemon that cannot reach Podman would only retry.
        // `podman info` also tells the mode (rootless or rootful), which is
        // detected, never configured.
        let fail = |why: &dyn std::fmt::Display| {
            // `<3>`: journald files the line at priority "err".
            let level = if super::stderr_is_journal() {
                "<3>"
            } else {
                ""
            };
            let _ = writeln!(std::io::stderr(), "{level}agentd: error: {why}");
            Ok(ExitCode::from(1))
        };
        let host = match podman.check_available().await {
            Ok(host) => host,
            Err(e) => return fail(&e),
        };
        // Rootless sessions need a Podman that can map the session uid onto
        // the daemon's: say so at start, not as every session's start_failed.
        if let Some(why) = host.cannot_run_sessions(args.session_uid) {
            return fail(&why);
        }
        tracing::info!(
            mode = host.mode(),
            podman_version = %host.version,
            cgroups = %host.cgroup_version,
            cgroup_manager = %host.cgroup_manager,
            cgroup_controllers = %host.cgroup_controllers.join(","),
            network_backend = %host.network_backend,
            storage_driver = %host.storage_driver,
            "podman answers: {}",
            host.summary()
        );
        let settings = Settings {
            desired,
            instance,
            audit_root,
            state,
            max_sessions: global.max_sessions,
            max_pending: global.max_pending,
            status_retention: args.status_retention,
            session_uid: args.session_uid,
            stop_grace: args.stop_grace,
            audit_max_bytes: args.audit_max_bytes,
            clone_timeout: args.clone_timeout,
            allow_host_network: args.host_network.allow_host_network,
            session_files_owner: podman.session_files_owner(args.session_uid),
            egress_ca_file: args.egress_ca_file.clone(),
        };
        // A CA file that cannot be used fails the start, not every session.
        if let Some(f) = &settings.egress_ca_file
            && let Err(e) = crate::inject::ca::read_ca_file(f)
        {
            return fail(&format!("--egress-ca-file: {e}"));
        }
        if let Some(listener) = listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            crate::metrics::serve(listener, std::sync::Arc::clone(&metrics))?;
        }
        let (tx, rx) = mpsc::channel::<Event>(64);
        let hard_stop = CancellationToken::new();
        spawn_signal_handler(tx.clone(), hard_stop.clone())?;
        daemon::run(
            settings,
            std::sync::Arc::new(podman),
            metrics,
            hard_stop,
            tx,
            rx,
        )
        .await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
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
