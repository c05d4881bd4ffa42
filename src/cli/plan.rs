//! `agentd plan`: what the next reconcile pass would do, without doing it.
//! Exit 0 when nothing would change, 1 when something would (the Flux
//! `diff` convention), 2 on error.

use std::process::ExitCode;

use anyhow::Context;

use super::GlobalArgs;
use crate::execute::ContainerTable;
use crate::observed::Observed;
use crate::plan::{PlanConfig, plan};
use crate::runtime::Runtime as _;
use crate::runtime::podman::Podman;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the status of a request whose file is gone is kept.
    #[arg(long, env = "AGENTD_STATUS_RETENTION", default_value = "24h", value_parser = super::daemon::parse_duration, value_name = "DURATION")]
    pub status_retention: std::time::Duration,
    #[command(flatten)]
    pub host_network: super::HostNetworkArg,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let state = std::path::absolute(global.state_dir()?)?;
    let (statuses, problems) = crate::status::read_dir(&state.join("status"))?;
    for p in problems {
        eprintln!("warning: {}", super::escape::text(&p));
    }
    let host = crate::source::real_host(args.host_network.allow_host_network);
    let loaded = crate::source::load(&global.desired, host);
    let source_available = loaded.is_ok();
    let desired = match loaded {
        Ok((desired, diagnostics)) => {
            for d in &diagnostics {
                eprintln!("{}", super::escape::text(&d.to_string()));
            }
            desired
        }
        Err(e) => {
            eprintln!("warning: {}", super::escape::text(&e.to_string()));
            Default::default()
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listing = rt
        .block_on(Podman::new(&crate::daemon::instance_id(&state)).list())
        .context("listing containers")?;
    let mut table = ContainerTable::default();
    table.replace(listing, &Default::default(), &|r| statuses.contains_key(r));
    let busy = Default::default();
    let observed = Observed {
        statuses: &statuses,
        containers: &table.by_request,
        orphans: &table.orphans,
        busy: &busy,
        containers_known: true,
    };
    let cfg = PlanConfig {
        now: jiff::Timestamp::now(),
        max_sessions: global.max_sessions,
        status_retention: args.status_retention,
        source_available,
        admitting: true,
        max_pending: global.max_pending,
    };
    let actions = plan(&desired, &observed, &cfg);
    let mut out = super::out::Lines::new(std::io::stdout().lock());
    for a in &actions {
        out.line(super::escape::text(&a.to_string()))?;
    }
    let changes = actions.iter().filter(|a| a.is_change()).count();
    if changes == 0 {
        eprintln!("nothing to do");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{changes} change(s)");
        Ok(ExitCode::from(1))
    }
}
