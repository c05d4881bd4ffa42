//! agentd: a declarative reconciler that runs AI-agent sessions in ephemeral
//! Podman containers. See ARCHITECTURE.md for the map of modules.

pub mod audit;
pub mod cli;
pub mod cron;
pub mod daemon;
pub mod desired;
pub mod execute;
pub mod fault;
pub mod fdtree;
pub mod fsutil;
pub mod metrics;
pub mod observed;
pub mod plan;
pub mod results;
pub mod runtime;
pub mod schedule;
pub mod source;
pub mod status;
pub mod sync;
#[cfg(test)]
mod testkit;
