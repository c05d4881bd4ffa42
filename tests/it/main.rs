//! The one integration test binary: drives the real `agentd` binary in temp
//! dirs, and real Podman where sessions are involved.

mod agents;
mod agents_setup;
mod audit;
mod cli;
mod convergence;
mod credentials;
mod critical_path;
mod docs;
mod egress;
mod egress_more;
mod egress_netns;
mod exit_detection;
mod git_server;
mod hardening_clone;
mod hardening_daemon;
mod hardening_desired;
mod hardening_guard;
mod hardening_repos;
mod hardening_seal;
mod hardening_urls;
mod inject;
mod metrics;
mod podman;
mod results;
mod rootless;
mod scheduling;
mod service_cli;
mod service_daemon;
mod sessions;
mod tidy;
mod util;
mod validate;
