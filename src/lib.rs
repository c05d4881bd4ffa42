//! agentd: a declarative reconciler that runs AI-agent sessions in ephemeral
//! Podman containers. See ARCHITECTURE.md for the map of modules.
//!
//! The modules are private: the library exports only what the binary, the
//! benches and the integration tests use (below), so the compiler reports
//! whatever else is never used.

mod audit;
mod cli;
mod cron;
mod daemon;
mod desired;
mod egress;
mod execute;
mod fault;
mod fdtree;
mod fsutil;
mod git_auth;
mod inject;
mod metrics;
mod observed;
mod plan;
mod results;
mod runtime;
mod schedule;
mod source;
mod status;
mod sync;
#[cfg(test)]
mod testkit;

// The binary.
pub use cli::main;
pub use egress::helper::run_if_asked as egress_helper_if_asked;
pub use execute::clone_sandbox::main_if_invoked as clone_sandbox_main_if_invoked;

// The integration tests.
pub use cli::Cli;
pub use daemon::{instance_id, lock_path};
pub use desired::sha256_hex;
pub use egress::netns::{Placement, listen_in};
pub use execute::MirrorCache;
pub use execute::clone::{CloneEnv, clone as clone_repo};
pub use execute::clone_sandbox::Sandbox;
pub use execute::new_session_id;
pub use observed::{Outcome, Phase, Status, StopReason};

// The benches.
pub use audit::{Limits, Record, SealOptions, SessionRecord};
pub use desired::{Desired, Input, Profile, Repo, Request, RequestEntry};
pub use observed::{Container, ContainerState, Observed};
pub use plan::{PlanConfig, plan};

/// The inject latency bench (issue 21): the interception, its TLS and its
/// test servers.
pub mod inject_bench {
    pub use crate::desired::Inject;
    pub use crate::egress::policy;
    pub use crate::inject::ca::{DaemonCa, upstream_config};
    pub use crate::inject::intercept::{Ctx, Job, Limits, Tls};
    pub use crate::inject::io::Meter;
    pub use crate::inject::testkit;
    pub use crate::inject::{Injection, Placeholder, SecretValue};
}
