//! Fault injection for crash-safety tests: `AGENTD_FAULT=<point>` makes the
//! daemon die abruptly (like `kill -9`: no destructors, no cleanup) when it
//! reaches that point of the session lifecycle. Unset, a point costs one
//! cached lookup.
//!
//! Points: `start-before-credentials`, `start-after-credentials`,
//! `start-before-prepared`, `start-after-run`, `finish-before-audit`,
//! `seal-before-session-json` (the record's files read-only and its manifest
//! written, `session.json` not yet final), `finish-after-audit`,
//! `finish-after-done` (the status says `done`, the exited container is not
//! removed yet), `finish-after-rm`.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("AGENTD_FAULT").ok().filter(|f| !f.is_empty()))
        .as_deref()
}

/// Die here if this point is armed.
pub fn point(name: &str) {
    if armed() == Some(name) {
        eprintln!("agentd: AGENTD_FAULT={name}: dying now");
        // SIGKILL ourselves: exactly what an operator's kill -9 does.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
