//! The one integration test binary: drives the real `agentd` binary in temp
//! dirs, and real Podman where sessions are involved.

mod audit;
mod cli;
mod convergence;
mod hardening_daemon;
mod podman;
mod scheduling;
mod service_cli;
mod sessions;
mod tidy;
mod util;
mod validate;
