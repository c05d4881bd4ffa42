//! Command-line interface: clap types and one file per subcommand.
//!
//! Exit codes: 0 success, 1 the command's own failure (validation errors, a
//! failed session), 2 usage errors (clap) and operational errors.

mod audit;
mod cancel;
mod completions;
mod daemon;
mod diff;
pub mod escape;
mod import;
mod logs;
mod logs_egress;
mod out;
mod plan;
mod run;
mod schema;
mod status;
mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs autonomous AI-agent sessions in ephemeral Podman containers,
/// reconciling a desired dir of profile and request files.
///
/// Operators drop profiles into DESIRED/profiles/ and session requests into
/// DESIRED/requests/ (TOML or YAML); agentd turns each request into exactly
/// one session and records it under the audit root.
#[derive(Debug, Parser)]
#[command(
    name = "agentd",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// With no command, `agentd` runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

const EXAMPLES: &str = "\
Examples:
  agentd --desired /srv/agentd/desired daemon    # run the reconciler
  agentd validate /srv/agentd/desired            # check files before committing them
  agentd run reviewer --work-unit PR-42 --wait   # one session, follow it to the end
  agentd status --json | jq '.[].outcome'
  agentd import /etc/agentd/agentd.toml --into /srv/agentd/desired

Exit codes: 0 success; 1 the command's own failure (validation problems, a
failed session, plan has changes); 2 usage and operational errors. A reader
closing stdout early (`| head`) is not an error.";

/// Options every command understands (docs/cli.md, "Global options"). Each
/// command's `--help` lists them under their own heading, after its own
/// options (issue 17).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The desired dir: profiles/ and requests/ live here (often a git checkout).
    #[arg(
        long,
        env = "AGENTD_DESIRED",
        default_value = "./desired",
        global = true,
        value_name = "DIR"
    )]
    pub desired: PathBuf,
    /// The daemon's own state: status files, lock, work folders
    /// [default: $XDG_STATE_HOME/agentd, else ~/.local/state/agentd].
    #[arg(long, env = "AGENTD_STATE", global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Where audit records go [default: <state>/audit].
    #[arg(long, env = "AGENTD_AUDIT_ROOT", global = true, value_name = "DIR")]
    pub audit_root: Option<PathBuf>,
    /// Running sessions at once, across all profiles.
    #[arg(long, env = "AGENTD_MAX_SESSIONS", default_value_t = 4, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// Most requests admitted and waiting for a slot; valid requests past
    /// it are not admitted yet (status `pending`, message says why) and are
    /// admitted oldest first as room frees up.
    #[arg(long, env = "AGENTD_MAX_PENDING", default_value_t = crate::plan::DEFAULT_MAX_PENDING,
          global = true, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_pending: usize,
}

/// `--allow-host-network`: the daemon, `validate` and `plan` read the
/// desired dir alike.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct HostNetworkArg {
    /// Let profiles set `network = "host"`: their sessions then share the
    /// host's network and reach every service on its loopback (the metrics
    /// listener among them). Without it such a profile is invalid.
    #[arg(long, env = "AGENTD_ALLOW_HOST_NETWORK",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_host_network: bool,
}

impl GlobalArgs {
    /// The state dir, resolved from the flag, `XDG_STATE_HOME` or `HOME`.
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.state {
            return Ok(s.clone());
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("agentd"));
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".local/state/agentd")),
            None => anyhow::bail!(
                "cannot find a state dir: set --state, AGENTD_STATE, XDG_STATE_HOME or HOME"
            ),
        }
    }

    /// The audit root: the flag, else `<state>/audit`.
    pub fn audit_root(&self) -> anyhow::Result<PathBuf> {
        match &self.audit_root {
            Some(a) => Ok(a.clone()),
            None => Ok(self.state_dir()?.join("audit")),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconciler in the foreground (the default command).
    ///
    /// One daemon per state dir. The first SIGINT/SIGTERM stops admitting
    /// and waits for running sessions; a second exits at once (running
    /// containers are adopted by the next start). SIGHUP forces a rescan.
    Daemon(daemon::Args),
    /// Request a session: write a request file and print its id.
    Run(run::Args),
    /// Show requests: id, profile, phase, outcome, exit code, age, duration.
    Status(status::Args),
    /// Print a session's console output (live with -f).
    Logs(logs::Args),
    /// Cancel a request by removing its file.
    Cancel(cancel::Args),
    /// Print what a session's agent changed: its commits as a patch
    /// series, then its uncommitted work (from the audit record).
    ///
    /// Escaped for the terminal unless --raw, which gives the bytes
    /// `git am` and `git apply` take.
    Diff(diff::Args),
    /// Audit records: verify sealed records against their manifests.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Print what the next reconcile pass would do, without doing it.
    ///
    /// Exit 0 when nothing would change, 1 when something would, 2 on error.
    Plan(plan::Args),
    /// Validate a desired dir (or single files) without Podman.
    ///
    /// Prints every problem as `path:line:col: message` and exits 0 when
    /// clean, 1 when not.
    Validate(validate::Args),
    /// Print or write the JSON Schemas of profile and request files.
    Schema(schema::Args),
    /// Convert an `agentd.toml` (`[[profiles]]` or `[[agents]]`) into
    /// profile files.
    #[command(long_about = import::LONG_ABOUT, after_long_help = import::EXAMPLES)]
    Import(import::Args),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    #[command(after_long_help = completions::COMPLETIONS_EXAMPLES)]
    Completions(completions::CompletionsArgs),
    /// Write man pages: agentd.1 and one page per subcommand.
    ///
    /// With DIR, writes every page into DIR (created if missing) and prints
    /// the paths written; without, prints agentd.1 on stdout.
    #[command(after_long_help = completions::MAN_EXAMPLES)]
    Man(completions::ManArgs),
}

/// Parse arguments, run, and turn the result into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "agentd: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => daemon::run(&cli.global, &daemon::Args::default()),
        Some(Command::Daemon(a)) => daemon::run(&cli.global, &a),
        Some(Command::Run(a)) => run::run(&cli.global, &a),
        Some(Command::Status(a)) => status::run(&cli.global, &a),
        Some(Command::Logs(a)) => logs::run(&cli.global, &a),
        Some(Command::Cancel(a)) => cancel::run(&cli.global, &a),
        Some(Command::Diff(a)) => diff::run(&cli.global, &a),
        Some(Command::Plan(a)) => plan::run(&cli.global, &a),
        Some(Command::Audit(a)) => audit::run(&cli.global, &a),
        Some(Command::Validate(a)) => validate::run(&cli.global, &a),
        Some(Command::Schema(a)) => schema::run(&a),
        Some(Command::Import(a)) => import::run(&cli.global, &a),
        Some(Command::Completions(a)) => completions::completions(&a),
        Some(Command::Man(a)) => completions::man(&a),
    }
}

/// Logs go to stderr: JSON lines when stderr is not a terminal (files, CI),
/// human-readable when it is. When stderr is the journal (systemd set
/// `JOURNAL_STREAM` to stderr's device and inode), events go to journald's
/// native socket instead, so their fields stay fields (`journalctl -o json`
/// shows `REQUEST=`, `ERROR=`, ...); without the socket, stderr as before.
/// `AGENTD_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var("AGENTD_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Fields keep their own names (upper-cased): `journalctl
                // REQUEST=r1` finds a request's lines.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("agentd".into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "agentd: journald socket unavailable ({e}); logging to stderr"
                );
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

/// `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd for a service whose
/// stderr is the journal) names the file stderr is: a child whose stderr was
/// redirected elsewhere inherits the variable but not the match.
pub(crate) fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// A closed stdout (`agentd status --json | head -1`) is not an error: the
/// reader has what it wanted, so the command ends quietly with status 0, as
/// ripgrep does. Rust ignores SIGPIPE, so the closed pipe shows up as an
/// `EPIPE` write error, which may arrive wrapped in a serde_json error
/// (whose `source()` skips the `io::Error` itself).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn journal_stream_must_name_stderr_itself_issue_11() {
        assert!(super::journal_stream_matches("64769:1234", 64769, 1234));
        assert!(!super::journal_stream_matches("64769:1234", 64769, 1235));
        assert!(!super::journal_stream_matches("64769", 64769, 1234));
        assert!(!super::journal_stream_matches("", 0, 0));
    }
}
