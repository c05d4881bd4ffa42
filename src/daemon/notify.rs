//! The systemd notification protocol (`Type=notify`), through the
//! `sd-notify` crate. Without `NOTIFY_SOCKET` (not started by systemd) every
//! call is a no-op; a failed send is logged once and never stops the loop.
//!
//! - `READY=1` once, after the first full reconcile pass (the lock is held,
//!   the desired dir was read, every request was decided);
//! - `STATUS=` a one-line summary, sent when it changes;
//! - `STOPPING=1` when the daemon starts draining (or exits at once);
//! - `WATCHDOG=1` from the loop itself, once per iteration, when systemd set
//!   `WATCHDOG_USEC` (and `WATCHDOG_PID` is ours): a wedged loop stops the
//!   pings and systemd restarts the service.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::observed::{Phase, StatusCounts};

/// Talks to the service manager; remembers what it already said.
#[derive(Debug, Default)]
pub struct Notifier {
    ready: bool,
    stopping: bool,
    status: String,
    /// `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
    warned: bool,
}

impl Notifier {
    /// Read the watchdog settings from the environment (`WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        if let Some(d) = watchdog {
            tracing::info!(
                watchdog_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "systemd watchdog on"
            );
        }
        Notifier {
            watchdog,
            ..Notifier::default()
        }
    }

    /// The longest the loop may sleep between two watchdog pings: half the
    /// watchdog interval (as `sd_watchdog_enabled(3)` advises).
    pub fn max_sleep(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// After a pass: `READY=1` the first time, `STATUS=` when the summary
    /// changed, `WATCHDOG=1` when the watchdog is on.
    pub fn after_pass(&mut self, summary: String) {
        let mut states = Vec::new();
        if !self.ready {
            states.push(NotifyState::Ready);
        }
        if summary != self.status {
            states.push(NotifyState::Status(&summary));
        }
        if self.watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        self.send(&states);
        self.ready = true;
        if summary != self.status {
            self.status = summary;
        }
    }

    /// `STOPPING=1`, once.
    pub fn stopping(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.send(&[NotifyState::Stopping]);
        }
    }

    fn send(&mut self, states: &[NotifyState]) {
        if states.is_empty() {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            self.warned = true;
            tracing::warn!(error = %e, socket = ?std::env::var_os("NOTIFY_SOCKET"), "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

/// The one-line `STATUS=`: requests by phase (sessions holding a slot
/// count as running), and the daemon's condition. From the store's kept
/// counts: no walk over the records (issue 12).
pub fn summary(statuses: &StatusCounts, admitting: bool, source_available: bool) -> String {
    let running = statuses.active();
    let pending = statuses.phase(Phase::Pending);
    let invalid = statuses.phase(Phase::Invalid);
    let mut line = format!("{running} running, {pending} pending, {invalid} invalid");
    if !admitting {
        line.insert_str(0, "draining: ");
    }
    if !source_available {
        line.push_str("; desired dir unavailable");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_sessions_holding_slots_as_running_issue_11() {
        assert_eq!(
            summary(&StatusCounts::default(), true, true),
            "0 running, 0 pending, 0 invalid"
        );
        assert_eq!(
            summary(&StatusCounts::default(), false, false),
            "draining: 0 running, 0 pending, 0 invalid; desired dir unavailable"
        );
        let mut records = Vec::new();
        for (i, phase) in Phase::ALL.iter().chain(&[Phase::Running]).enumerate() {
            let mut s = crate::observed::Status::new(&format!("r{i}"), "p");
            s.phase = *phase;
            records.push(s);
        }
        assert_eq!(
            summary(&StatusCounts::of(&records), true, true),
            "4 running, 1 pending, 1 invalid"
        );
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_issue_11() {
        let n = Notifier {
            watchdog: Some(Duration::from_secs(10)),
            ..Notifier::default()
        };
        assert_eq!(n.max_sleep(), Some(Duration::from_secs(5)));
        assert_eq!(Notifier::default().max_sleep(), None);
    }
}
