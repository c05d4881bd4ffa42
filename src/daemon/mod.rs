//! The daemon: one loop that wakes on events (desired-dir changes, container
//! events, finished tasks, signals, timers), loads the desired state, reads
//! the observed state, plans and applies. Events carry no state; every pass
//! looks at everything, so a missed event only delays convergence until the
//! next periodic resync (`RESYNC`).

mod lock;
mod notify;
pub mod private;
mod watch;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lock::{LockError, acquire, lock_path};

use crate::desired::Diagnostic;
use crate::execute::{ContainerTable, Event, Settings, Shared};
use crate::observed::{Observed, Phase};
use crate::plan::{PlanConfig, Scope, plan, plan_in};
use crate::runtime::{Change, Runtime};
use crate::source::{Source, real_host};
use crate::status::StatusStore;
use crate::sync::lock as guard;

/// Worst-case delay for a change whose events were all lost: a full rescan
/// of the desired dir and of Podman happens at least this often.
pub const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Private(#[from] private::PrivateError),
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
}

/// The instance id: derived from the state dir's canonical path, so two
/// daemons with different state dirs never touch each other's resources.
pub fn instance_id(state: &Path) -> String {
    let canon = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    crate::desired::sha256_hex(canon.as_os_str().as_encoded_bytes())[..12].to_string()
}

/// Run until drained (after `Event::Drain`) or until `hard_stop` fires.
/// `rx` is the loop's inbox; `tx` is its sending side, which the watcher
/// and `Shared::wake` (tasks, Podman followers) use; the signal handler
/// holds a clone of it.
pub async fn run(
    settings: Settings,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<crate::metrics::Metrics>,
    hard_stop: CancellationToken,
    tx: mpsc::Sender<Event>,
    mut rx: mpsc::Receiver<Event>,
) -> Result<(), DaemonError> {
    private::prepare(&settings.state, &settings.audit_root)?;
    let lock = acquire(&settings.state, &settings.instance)?;
    tracing::info!(lock = %lock.path.display(), "holding the daemon lock");
    write_host(&settings.state, runtime.as_ref());
    let (mut store, problems) = StatusStore::open(&settings.state)?;
    store.observe(Arc::clone(&metrics) as _);
    for p in problems {
        tracing::warn!(problem = %p, "skipping unreadable status record");
    }
    tracing::info!(
        desired = %settings.desired.display(),
        state = %settings.state.display(),
        audit_root = %settings.audit_root.display(),
        instance = %settings.instance,
        max_sessions = settings.max_sessions,
        "agentd starting"
    );
    let sh = Arc::new(Shared {
        settings,
        runtime,
        metrics,
        store: Mutex::new(store),
        containers: Mutex::new(ContainerTable::default()),
        busy: Mutex::new(BTreeSet::new()),
        wake: tx.clone(),
        tasks: TaskTracker::new(),
        clone_cache: Default::default(),
        backoff: Mutex::new(Default::default()),
        gates: Mutex::new(Default::default()),
        leftovers: Mutex::default(),
        seal_failures: Mutex::default(),
    });
    write_daemon_state(&sh.settings.state, None, &[]);
    resync_containers(&sh).await;
    sh.sweep_work_dirs();
    reopen_gates(&sh);
    let changes_task = tokio::spawn(follow_changes(Arc::clone(&sh)));

    let mut schedules = crate::execute::Schedules::load(&sh.settings.state);
    let dirty: Arc<Mutex<watch::Dirty>> = Arc::default();
    let mut watcher = start_watcher(&sh.settings.desired, &tx, &dirty);
    let mut source = Source::new(&sh.settings.desired);
    // The first pass, every resync and every lost-events signal scan the
    // whole desired dir; other passes look only at the paths events named.
    let mut full_scan = true;
    let mut source_available = true;
    let mut admitting = true;
    let mut next_resync = Instant::now() + RESYNC;

    // What daemon.json last said was not followed (symlinked folders, loops).
    let mut reported_skipped: Vec<Diagnostic> = Vec::new();
    let mut passes: u64 = 0;
    // The requests a pass plans; rebuilt by the first (full) pass.
    let mut scope = Scope::default();
    let mut notifier = notify::Notifier::from_env();
    loop {
        let pass_start = std::time::Instant::now();
        let changes = {
            let mut d = guard(&dirty);
            // Files still being written stay behind for their close event.
            let writing = std::mem::take(&mut d.writing);
            let mut taken = std::mem::take(&mut *d);
            d.writing = writing;
            taken.writing.clear();
            taken
        };
        if changes.rescan || changes.rewatch {
            full_scan = true;
        }
        if changes.rewatch {
            // A folder was replaced (a symlink swap): watch what it points at now.
            watcher = None;
        }
        let host = real_host(sh.settings.allow_host_network);
        let scanned = if full_scan || !source_available {
            Some(source.full_scan(host))
        } else if !changes.paths.is_empty() {
            Some(source.update_paths(&changes.paths, host))
        } else {
            None
        };
        let was_full = full_scan || !source_available;
        full_scan = false;
        if was_full {
            release_freed_memory();
        }
        if let Some(result) = scanned {
            tracing::trace!(parsed = source.last_parsed, "desired dir updated");
            match result {
                Ok(()) if !source_available => {
                    tracing::info!("desired dir available again");
                    write_daemon_state(&sh.settings.state, None, &source.desired().skipped);
                    source_available = true;
                    reported_skipped = source.desired().skipped.clone();
                }
                Ok(()) => {
                    if source.desired().skipped != reported_skipped {
                        reported_skipped = source.desired().skipped.clone();
                        for d in &reported_skipped {
                            tracing::warn!(problem = %d, "not followed in the desired dir");
                        }
                        write_daemon_state(&sh.settings.state, None, &reported_skipped);
                    }
                }
                Err(e) => {
                    if source_available {
                        tracing::warn!(error = %e, "desired dir unavailable; keeping running work, retrying");
                        write_daemon_state(
                            &sh.settings.state,
                            Some(&e.to_string()),
                            &source.desired().skipped,
                        );
                    }
                    source_available = false;
                }
            }
        }
        if source_available && watcher.is_none() {
            watcher = start_watcher(&sh.settings.desired, &tx, &dirty);
        }
        // Request ids whose desired entry changed: their planning scope is
        // re-decided below (a full scan rebuilds it instead).
        let touched = source.take_touched();
        let last_desired = source.desired();

        // Cron fires become request files; never while the source is away
        // (there is no requests/ to write into, and nothing to compare with).
        if source_available {
            schedules.tick(&sh, last_desired, &jiff::Zoned::now());
        }
        let cfg = PlanConfig {
            now: jiff::Timestamp::now(),
            max_sessions: sh.settings.max_sessions,
            status_retention: sh.settings.status_retention,
            source_available,
            admitting,
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
            if was_full {
                scope = Scope::rebuild(last_desired, store.all());
                plan(last_desired, &observed, &cfg)
            } else {
                scope.update(touched.iter().chain(&changed), last_desired, store.all());
                plan_in(last_desired, &observed, &cfg, &scope.ids(&observed))
            }
        };
        let apply_start = std::time::Instant::now();
        for action in actions {
            if action.is_change() {
                tracing::debug!(action = %action, request = action.request().unwrap_or(""), "applying");
            }
            sh.apply(action, last_desired);
        }

        passes += 1;
        let apply_end = std::time::Instant::now();
        let pass_elapsed = pass_start.elapsed();
        sh.metrics.pass_done(
            pass_elapsed,
            guard(&sh.store).counts(),
            last_desired,
            source.invalid_requests(),
        );
        // One event per pass, at debug level: what it cost and why.
        tracing::debug!(
            pass = passes,
            parsed = source.last_parsed,
            requests = last_desired.requests.len(),
            elapsed_us = u64::try_from(pass_start.elapsed().as_micros()).unwrap_or(u64::MAX),
            before_plan_us = us(plan_start - pass_start),
            plan_us = us(apply_start - plan_start),
            apply_us = us(apply_end - apply_start),
            "pass"
        );
        source.last_parsed = 0;
        // READY=1 after the first full pass, STATUS= on change, WATCHDOG=1.
        let summary = notify::summary(guard(&sh.store).counts(), admitting, source_available);
        notifier.after_pass(summary);
        if !admitting && idle(&sh) {
            tracing::info!("drained: no sessions left; exiting");
            break;
        }

        let mut wake_at = next_wake(&sh, next_resync, &scope);
        if let Some(fire) = schedules.scheduler.next_wake() {
            let until = jiff::Timestamp::now().duration_until(fire);
            let wait = if until.is_negative() {
                Duration::ZERO
            } else {
                until.unsigned_abs()
            };
            wake_at = wake_at.min(Instant::now() + wait);
        }
        if let Some(max) = notifier.max_sleep() {
            wake_at = wake_at.min(Instant::now() + max);
        }
        tokio::select! {
            ev = rx.recv() => {
                let mut evs = vec![ev];
                while let Ok(more) = rx.try_recv() {
                    evs.push(Some(more));
                }
                for ev in evs.into_iter().flatten() {
                    match ev {
                        Event::Drain => {
                            notifier.stopping();
                            if admitting {
                                tracing::info!("draining: admitting nothing new; waiting for running sessions (signal again to exit now)");
                            }
                            admitting = false;
                        }
                        Event::Hangup | Event::Rescan => {
                            tracing::info!(reason = ?ev, "full rescan");
                            full_scan = true;
                            watcher = None;
                            next_resync = Instant::now();
                        }
                        Event::Resync => next_resync = Instant::now(),
                        Event::Desired | Event::Container | Event::TaskDone => {}
                    }
                }
            }
            () = tokio::time::sleep_until(wake_at) => {}
            () = hard_stop.cancelled() => {
                notifier.stopping();
                tracing::warn!("exiting now; running containers are left for the next start to adopt");
                break;
            }
        }
        if Instant::now() >= next_resync {
            resync_containers(&sh).await;
            sh.sweep_work_dirs();
            next_resync = Instant::now() + RESYNC;
            full_scan = true;
        }
    }
    drop(watcher);
    changes_task.abort();
    if !hard_stop.is_cancelled() {
        sh.tasks.close();
        sh.tasks.wait().await;
    }
    Ok(())
}

fn start_watcher(
    dir: &Path,
    tx: &mpsc::Sender<Event>,
    dirty: &Arc<Mutex<watch::Dirty>>,
) -> Option<watch::Watcher> {
    match watch::watch(dir, tx.clone(), Arc::clone(dirty)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch desired dir; relying on periodic rescans");
            None
        }
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// No session holds a slot and no task runs.
fn idle(sh: &Shared) -> bool {
    sh.busy_now().is_empty() && guard(&sh.store).counts().active() == 0
}

/// The next moment a pass is due without any event: the resync, a session
/// deadline, or the retention expiry of a finished request whose file is
/// gone (only those are pruned; all of them are in the scope).
fn next_wake(sh: &Shared, next_resync: Instant, scope: &Scope) -> Instant {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let mut at = next_resync;
    // Unix milliseconds to a tokio instant (the past means now).
    let at_ms = |unix_ms: i64| {
        Instant::now()
            + Duration::from_millis(u64::try_from(unix_ms.saturating_sub(now_ms)).unwrap_or(0))
    };
    for c in guard(&sh.containers).by_request.values() {
        if let Some(d) = c.deadline {
            at = at.min(at_ms(d));
        }
    }
    if let Some(until) = guard(&sh.backoff).earliest() {
        at = at.min(Instant::from_std(until));
    }
    let retention_ms =
        i64::try_from(sh.settings.status_retention.as_millis()).unwrap_or(i64::MAX / 4);
    let store = guard(&sh.store);
    for s in scope.live().iter().filter_map(|id| store.get(id)) {
        if s.phase == Phase::Done
            && let Some(f) = s.finished_at
        {
            at = at.min(at_ms(f.as_millisecond().saturating_add(retention_ms)));
        }
    }
    at
}

/// Replace the container table with a fresh listing of the runtime.
async fn resync_containers(sh: &Shared) {
    // Requests busy at either end of the listing may have changed while it
    // ran (a start's run returning mid-listing): keep what the
    // table knows of them rather than a listing older than their change.
    let busy_before = sh.busy_now();
    match sh.runtime.list().await {
        Ok(listing) => {
            let mut keep = busy_before;
            keep.extend(sh.busy_now());
            // The store's lock, then the table's: the order planning uses.
            let store = guard(&sh.store);
            guard(&sh.containers).replace(listing, &keep, &|r| store.get(r).is_some());
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers; retrying at the next resync");
            guard(&sh.containers).known = false;
        }
    }
}

/// Follow the runtime's container changes: each updates the container
/// table and wakes the loop; a lost stretch of changes wakes it to list
/// the containers again.
async fn follow_changes(sh: Arc<Shared>) {
    let mut changes = sh.runtime.changes();
    while let Some(change) = changes.next().await {
        let wake = match change {
            Change::Resync => Event::Resync,
            change if guard(&sh.containers).apply(&change) => Event::Container,
            _ => continue,
        };
        let _ = sh.wake.try_send(wake);
    }
}

/// After a restart, re-send `go` to every running session's gate: a `go`
/// written just before a crash may never have reached its reader.
fn reopen_gates(sh: &Shared) {
    let running: Vec<(String, String)> = guard(&sh.store)
        .all()
        .values()
        .filter(|s| s.phase == Phase::Running)
        .filter_map(|s| Some((s.request.clone(), s.session_id.clone()?)))
        .collect();
    for (request, sid) in running {
        match sh.send_go(&sid) {
            Ok(f) => {
                guard(&sh.gates).insert(request, f);
            }
            // A full gate (a session of an older agentd, whose agent could
            // write into it) cannot take a `go`, and needs none: its command
            // was past the gate when it was marked running.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::warn!(request, error = %e, "cannot re-send go");
            }
            Err(e) => tracing::debug!(request, error = %e, "no gate to reopen"),
        }
    }
}

/// `<state>/daemon.json`: the daemon's own condition, for `agentd status`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// Set while the desired dir cannot be read: why, and since when.
    pub source_unavailable: Option<String>,
    pub since: jiff::Timestamp,
    /// Paths below `profiles/`/`requests/` the daemon does not follow (a
    /// symlinked folder, a symlink loop), as `path: why` lines.
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// `agentd status` shows this one-line host summary (mode, cgroups,
/// network backend) from `<state>/host.json`, written once at start.
fn write_host(state: &Path, runtime: &dyn Runtime) {
    let written = runtime
        .host_report()
        .and_then(|report| crate::fsutil::write_atomic(&state.join("host.json"), &report, 0o600));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write host.json");
    }
}

fn write_daemon_state(state: &Path, source_unavailable: Option<&str>, skipped: &[Diagnostic]) {
    let d = DaemonState {
        pid: std::process::id(),
        source_unavailable: source_unavailable.map(str::to_string),
        since: jiff::Timestamp::now(),
        skipped: skipped.iter().map(ToString::to_string).collect(),
    };
    if let Err(e) = crate::fsutil::write_json_atomic(&state.join("daemon.json"), &d, 0o600) {
        tracing::warn!(error = %e, "cannot write daemon.json");
    }
}

/// A full scan parses every changed file and frees the temporaries; glibc
/// keeps freed memory in its arenas, so give it back to the system.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes no pointers and touches no live allocation. Calling it from any
    // thread at any time is allowed by glibc.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
