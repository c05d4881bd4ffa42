//! The reconcile loop as named steps: [`Loop::scan`] the desired dir (the
//! paths events named, or all of it), [`Loop::plan_and_apply`] (schedules,
//! the plan, the actions), [`Loop::after_pass`] (metrics, logs, systemd),
//! then [`Loop::sleep`] until an event, a deadline or a timer, and
//! [`Loop::resync_if_due`]. The fields are what one pass leaves the next.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    RESYNC, idle, next_wake, notify, release_freed_memory, resync_containers, start_watcher, us,
    watch, write_daemon_state,
};
use crate::desired::Diagnostic;
use crate::execute::{Event, Schedules, Shared};
use crate::observed::Observed;
use crate::plan::{PlanConfig, Scope, plan, plan_in};
use crate::source::{Source, real_host};
use crate::sync::lock as guard;

/// The loop's state between passes.
pub struct Loop {
    sh: Arc<Shared>,
    /// The loop's inbox (a sender for the watcher), and its receiver.
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    /// The second stop signal: exit now, leaving sessions for the next start.
    hard_stop: CancellationToken,
    /// Cron fires and their persisted state.
    schedules: Schedules,
    /// Paths the watcher reported since the last pass (a hint).
    dirty: Arc<Mutex<watch::Dirty>>,
    watcher: Option<watch::Watcher>,
    /// The desired dir, kept up to date incrementally.
    source: Source,
    /// The next pass scans the whole desired dir: the first pass, every
    /// resync and every lost-events signal; other passes look only at the
    /// paths events named.
    full_scan: bool,
    /// The desired dir could be read at the last scan.
    source_available: bool,
    /// Not draining: new requests are admitted.
    admitting: bool,
    next_resync: Instant,
    /// What daemon.json last said was not followed (symlinked folders, loops).
    reported_skipped: Vec<Diagnostic>,
    passes: u64,
    /// The requests a pass plans; rebuilt by every full pass.
    scope: Scope,
    notifier: notify::Notifier,
}

/// What a scan tells the planning of the same pass.
struct Scanned {
    /// The whole desired dir was scanned: plan everything.
    full: bool,
    /// Request ids whose desired entry changed.
    touched: BTreeSet<String>,
}

/// When the parts of a pass ended, for its log line.
struct Timings {
    pass: std::time::Instant,
    plan: std::time::Instant,
    apply: std::time::Instant,
    end: std::time::Instant,
}

impl Loop {
    pub fn new(
        sh: Arc<Shared>,
        tx: mpsc::Sender<Event>,
        rx: mpsc::Receiver<Event>,
        hard_stop: CancellationToken,
    ) -> Loop {
        let dirty: Arc<Mutex<watch::Dirty>> = Arc::default();
        let watcher = start_watcher(&sh.settings.desired, &tx, &dirty);
        Loop {
            schedules: Schedules::load(&sh.settings.state),
            source: Source::new(&sh.settings.desired),
            sh,
            tx,
            rx,
            hard_stop,
            dirty,
            watcher,
            full_scan: true,
            source_available: true,
            admitting: true,
            next_resync: Instant::now() + RESYNC,
            reported_skipped: Vec::new(),
            passes: 0,
            scope: Scope::default(),
            notifier: notify::Notifier::from_env(),
        }
    }

    /// Run until drained (after `Event::Drain`) or until `hard_stop` fires.
    pub async fn run(mut self) {
        loop {
            let pass = std::time::Instant::now();
            let scanned = self.scan();
            let timings = self.plan_and_apply(pass, scanned);
            self.after_pass(&timings);
            if !self.admitting && idle(&self.sh) {
                tracing::info!("drained: no sessions left; exiting");
                break;
            }
            if !self.sleep().await {
                break;
            }
            self.resync_if_due().await;
        }
        drop(self.watcher);
    }

    /// Bring the desired dir up to date: the paths events named, or all of
    /// it; notice it going away and coming back.
    fn scan(&mut self) -> Scanned {
        let changes = {
            let mut d = guard(&self.dirty);
            // Files still being written stay behind for their close event.
            let writing = std::mem::take(&mut d.writing);
            let mut taken = std::mem::take(&mut *d);
            d.writing = writing;
            taken.writing.clear();
            taken
        };
        if changes.rescan || changes.rewatch {
            self.full_scan = true;
        }
        if changes.rewatch {
            // A folder was replaced (a symlink swap): watch what it points at now.
            self.watcher = None;
        }
        let full = self.full_scan || !self.source_available;
        let host = real_host(self.sh.settings.allow_host_network);
        let scanned = if full {
            Some(self.source.full_scan(host))
        } else if !changes.paths.is_empty() {
            Some(self.source.update_paths(&changes.paths, host))
        } else {
            None
        };
        self.full_scan = false;
        if full {
            release_freed_memory();
        }
        if let Some(result) = scanned {
            tracing::trace!(parsed = self.source.last_parsed, "desired dir updated");
            self.note_source(result);
        }
        if self.source_available && self.watcher.is_none() {
            self.watcher = start_watcher(&self.sh.settings.desired, &self.tx, &self.dirty);
        }
        // Request ids whose desired entry changed: their planning scope is
        // re-decided (a full scan rebuilds it instead).
        Scanned {
            full,
            touched: self.source.take_touched(),
        }
    }

    /// What a scan's result means for `daemon.json` and the log.
    fn note_source(&mut self, result: Result<(), crate::source::SourceError>) {
        let state = &self.sh.settings.state;
        match result {
            Ok(()) if !self.source_available => {
                tracing::info!("desired dir available again");
                write_daemon_state(state, None, &self.source.desired().skipped);
                self.source_available = true;
                self.reported_skipped = self.source.desired().skipped.clone();
            }
            Ok(()) => {
                if self.source.desired().skipped != self.reported_skipped {
                    self.reported_skipped = self.source.desired().skipped.clone();
                    for d in &self.reported_skipped {
                        tracing::warn!(problem = %d, "not followed in the desired dir");
                    }
                    write_daemon_state(state, None, &self.reported_skipped);
                }
            }
            Err(e) => {
                if self.source_available {
                    tracing::warn!(error = %e, "desired dir unavailable; keeping running work, retrying");
                    write_daemon_state(state, Some(&e.to_string()), &self.source.desired().skipped);
                }
                self.source_available = false;
            }
        }
    }

    /// Materialize cron fires, plan, and apply the actions.
    fn plan_and_apply(&mut self, pass: std::time::Instant, scanned: Scanned) -> Timings {
        let sh = &self.sh;
        let desired = self.source.desired();
        // Cron fires become request files; never while the source is away
        // (there is no requests/ to write into, and nothing to compare with).
        if self.source_available {
            self.schedules.tick(sh, desired, &jiff::Zoned::now());
        }
        let cfg = PlanConfig {
            now: jiff::Timestamp::now(),
            max_sessions: sh.settings.max_sessions,
            status_retention: sh.settings.status_retention,
            source_available: self.source_available,
            admitting: self.admitting,
            max_pending: sh.settings.max_pending,
        };
        // Plan against the live views, borrowed under their locks (tasks
        // take them one at a time, never both), then apply with the locks
        // released. A full scan plans every request and rebuilds the scope;
        // other passes plan the scope (`plan::Scope`): the requests not
        // finished, plus those with a container or an operation under way,
        // after re-deciding the ids whose status or file changed. Both give
        // the same actions; only the cost differs (issue 12).
        let plan_start = std::time::Instant::now();
        let actions = {
            let busy = sh.busy_now();
            let mut store = guard(&sh.store);
            let changed = store.take_changed();
            let table = guard(&sh.containers);
            let observed = Observed {
                statuses: store.all(),
                containers: &table.by_request,
                orphans: &table.orphans,
                busy: &busy,
                containers_known: table.known,
            };
            if scanned.full {
                self.scope = Scope::rebuild(desired, store.all());
                plan(desired, &observed, &cfg)
            } else {
                self.scope
                    .update(scanned.touched.iter().chain(&changed), desired, store.all());
                plan_in(desired, &observed, &cfg, &self.scope.ids(&observed))
            }
        };
        let apply_start = std::time::Instant::now();
        for action in actions {
            if action.is_change() {
                tracing::debug!(action = %action, request = action.request().unwrap_or(""), "applying");
            }
            sh.apply(action, desired);
        }
        Timings {
            pass,
            plan: plan_start,
            apply: apply_start,
            end: std::time::Instant::now(),
        }
    }

    /// Count the pass (metrics, its log line) and tell systemd.
    fn after_pass(&mut self, t: &Timings) {
        self.passes += 1;
        let desired = self.source.desired();
        self.sh.metrics.pass_done(
            t.pass.elapsed(),
            guard(&self.sh.store).counts(),
            desired,
            self.source.invalid_requests(),
        );
        // One event per pass, at debug level: what it cost and why.
        tracing::debug!(
            pass = self.passes,
            parsed = self.source.last_parsed,
            requests = desired.requests.len(),
            elapsed_us = u64::try_from(t.pass.elapsed().as_micros()).unwrap_or(u64::MAX),
            before_plan_us = us(t.plan - t.pass),
            plan_us = us(t.apply - t.plan),
            apply_us = us(t.end - t.apply),
            "pass"
        );
        self.source.last_parsed = 0;
        // READY=1 after the first full pass, STATUS= on change, WATCHDOG=1.
        let summary = notify::summary(
            guard(&self.sh.store).counts(),
            self.admitting,
            self.source_available,
        );
        self.notifier.after_pass(summary);
    }

    /// Wait for an event, the next deadline, fire or resync, or the
    /// watchdog's half period. `false`: stop now (the second signal).
    async fn sleep(&mut self) -> bool {
        let mut wake_at = next_wake(&self.sh, self.next_resync, &self.scope);
        if let Some(fire) = self.schedules.scheduler.next_wake() {
            let until = jiff::Timestamp::now().duration_until(fire);
            let wait = if until.is_negative() {
                Duration::ZERO
            } else {
                until.unsigned_abs()
            };
            wake_at = wake_at.min(Instant::now() + wait);
        }
        if let Some(max) = self.notifier.max_sleep() {
            wake_at = wake_at.min(Instant::now() + max);
        }
        tokio::select! {
            ev = self.rx.recv() => {
                let mut evs = vec![ev];
                while let Ok(more) = self.rx.try_recv() {
                    evs.push(Some(more));
                }
                for ev in evs.into_iter().flatten() {
                    self.on_event(ev);
                }
            }
            () = tokio::time::sleep_until(wake_at) => {}
            () = self.hard_stop.cancelled() => {
                self.notifier.stopping();
                tracing::warn!("exiting now; running containers are left for the next start to adopt");
                return false;
            }
        }
        true
    }

    /// What an event changes before the next pass (most change nothing:
    /// every pass looks at everything).
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Drain => {
                self.notifier.stopping();
                if self.admitting {
                    tracing::info!(
                        "draining: admitting nothing new; waiting for running sessions (signal again to exit now)"
                    );
                }
                self.admitting = false;
            }
            Event::Hangup | Event::Rescan => {
                tracing::info!(reason = ?ev, "full rescan");
                self.full_scan = true;
                self.watcher = None;
                self.next_resync = Instant::now();
            }
            Event::Resync => self.next_resync = Instant::now(),
            Event::Desired | Event::Container | Event::TaskDone => {}
        }
    }

    /// Every `RESYNC`: list the containers again, sweep stale work folders,
    /// and scan the whole desired dir at the next pass.
    async fn resync_if_due(&mut self) {
        if Instant::now() >= self.next_resync {
            resync_containers(&self.sh).await;
            self.sh.sweep_work_dirs();
            self.next_resync = Instant::now() + RESYNC;
            self.full_scan = true;
        }
    }
}
