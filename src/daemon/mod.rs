//! The daemon: one loop that wakes on events (desired-dir changes, container
//! events, finished tasks, signals, timers), loads the desired state, reads
//! the observed state, plans and applies. Events carry no state; every pass
//! looks at everything, so a missed event only delays convergence until the
//! next periodic resync (`RESYNC`).

mod lock;
mod notify;
mod passes;
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
use crate::observed::Phase;
use crate::plan::Scope;
use crate::runtime::{Change, Runtime};
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

/// Start the daemon (its folders, lock, status store, containers, the
/// followers of container changes), then run the loop (`passes::Loop`)
/// until drained (after `Event::Drain`) or until `hard_stop` fires. `rx`
/// is the loop's inbox; `tx` is its sending side, which the watcher and
/// `Shared::wake` (tasks, the runtime's followers) use; the signal handler
/// holds a clone of it.
pub async fn run(
    settings: Settings,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<crate::metrics::Metrics>,
    hard_stop: CancellationToken,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
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
    let clone_sandbox =
        crate::execute::clone_sandbox::Sandbox::for_daemon(&settings, runtime.as_ref());
    // Sessions with injected credentials use the CA kept in `<state>/ca`.
    let egress = crate::execute::SessionEgress::new(settings.max_sessions)
        .with_inject(settings.state.join("ca"), settings.egress_ca_file.clone());
    // Seed clones are indexed in memory (`execute::clone::seed`): what an
    // earlier run left is junk now.
    let seeds = crate::execute::clone::seeds_root(&settings.state.join("cache/git"));
    if let Err(e) = crate::execute::clone::seed::clear(&seeds) {
        tracing::warn!(dir = %seeds.display(), error = %e, "cannot remove an earlier run's seed clones");
    }
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
        listings: Default::default(),
        clone_sandbox,
        backoff: Mutex::new(Default::default()),
        gates: Mutex::new(Default::default()),
        leftovers: Mutex::default(),
        seal_failures: Mutex::default(),
        egress,
    });
    write_daemon_state(&sh.settings.state, None, &[]);
    resync_containers(&sh).await;
    sh.sweep_work_dirs();
    reopen_gates(&sh);
    crate::execute::reopen_egress(&sh).await;
    let changes_task = tokio::spawn(follow_changes(Arc::clone(&sh)));

    let daemon = passes::Loop::new(Arc::clone(&sh), tx, rx, hard_stop.clone());
    daemon.run().await;
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
    let listed = std::time::Instant::now();
    match sh.runtime.list().await {
        Ok(listing) => {
            let mut keep = busy_before;
            keep.extend(sh.busy_now());
            // The store's lock, then the table's: the order planning uses.
            let store = guard(&sh.store);
            guard(&sh.containers).replace_listed(
                listing,
                &keep,
                &|r| store.get(r).is_some(),
                listed,
            );
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
