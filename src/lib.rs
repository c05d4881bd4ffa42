//! agentd: a declarative reconciler that runs AI-agent sessions in ephemeral
//! Podman containers. See ARCHITECTURE.md for the map of modules.

pub mod cli;
pub mod desired;
pub mod schedule;
pub mod source;
