//! The executor: the only code that mutates the world (containers, status
//! records, audit records, work folders). It applies the planner's actions;
//! quick ones inline, slow ones (start, finish, stop, clean-up) as tasks that
//! mark their request busy and wake the loop when done.
//!
//! Per-session failures end that session (`start_failed`, a status message)
//! and never stop the loop.

pub(crate) mod adopt;
pub mod backoff;
pub mod clone;
pub mod clone_sandbox;
pub(crate) mod finish;
mod leftovers;
mod outcome;
mod prepare;
mod private_repo;
mod results;
mod schedule;
mod secrets;
mod session_egress;
mod session_inject;
pub(crate) mod start;
mod table;
#[cfg(test)]
mod tests;

pub use clone::MirrorCache;
pub use leftovers::Leftovers;
pub use schedule::{Schedules, read_all as read_schedules};
pub use session_egress::{LOG_FILE as EGRESS_LOG_FILE, SessionEgress, reopen as reopen_egress};
pub use start::new_session_id;
pub use table::ContainerTable;
mod workdir;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::desired::{Desired, Request, RequestEntry};
use crate::observed::{Container, Origin, Phase, Status};
use crate::plan::{Action, EDITED_MESSAGE, StopReason};
use crate::runtime::{ContainerInfo, Runtime};
use crate::status::StatusStore;
use backoff::{Backoff, Backoffs};

pub use crate::sync::lock;

/// Daemon-wide settings the executor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub desired: PathBuf,
    pub state: PathBuf,
    pub audit_root: PathBuf,
    /// This daemon's identity on shared Podman resources (from the state dir).
    pub instance: String,
    pub max_sessions: u32,
    /// Most requests admitted and waiting to start (`--max-pending`).
    pub max_pending: usize,
    pub status_retention: Duration,
    /// uid and gid the session command runs as (not root).
    pub session_uid: u32,
    /// How long a stopped session gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Cap on a record's console capture, and on the bytes of `session/`
    /// files hashed into a sealed record.
    pub audit_max_bytes: u64,
    /// Bound on each git run of a clone (fetch, mirror, copy).
    pub clone_timeout: Duration,
    /// Profiles may set `network = "host"` (`--allow-host-network`).
    pub allow_host_network: bool,
    /// The host uid that owns the session's files (its home, clone,
    /// credentials file, `session/` folder) while it runs, as the runtime
    /// maps `session_uid` (`Runtime::session_files_owner`).
    pub session_files_owner: u32,
    /// `--egress-ca-file`: certificates the proxy trusts, beside the
    /// host's roots, for the hosts it intercepts (issue 21).
    pub egress_ca_file: Option<PathBuf>,
}

impl Settings {
    /// The host uid that owns the session's files while it runs.
    pub fn host_session_uid(&self) -> u32 {
        self.session_files_owner
    }
    pub fn container_name(&self, request: &str) -> String {
        format!("agentd-{}-{request}", self.instance)
    }
    pub fn work_dir(&self, session_id: &str) -> PathBuf {
        self.state.join("work").join(session_id)
    }
    pub fn spec_path(&self, request: &str) -> PathBuf {
        self.state.join("specs").join(format!("{request}.json"))
    }
}

/// What the loop wakes up for. Events carry no state: each only means
/// "look again" (the reason is kept for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Something changed in the desired dir.
    Desired,
    /// The watcher lost events or failed: rescan everything.
    Rescan,
    /// A container of this instance changed.
    Container,
    /// An executor task finished.
    TaskDone,
    /// Re-list containers (the events stream restarted).
    Resync,
    /// SIGHUP: full rescan and resync.
    Hangup,
    /// First SIGINT/SIGTERM: stop admitting, drain.
    Drain,
}

/// State shared by the loop and the executor's tasks.
pub struct Shared {
    pub settings: Settings,
    /// The container runtime (Podman), behind its seam.
    pub runtime: Arc<dyn Runtime>,
    /// The daemon's metrics (handed in; the store and the runtime tell
    /// them of phase changes and calls themselves).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Mutex<StatusStore>,
    pub containers: Mutex<ContainerTable>,
    pub busy: Mutex<BTreeSet<String>>,
    pub wake: mpsc::Sender<Event>,
    pub tasks: TaskTracker,
    /// Per-repository locks of the git mirror cache.
    pub clone_cache: MirrorCache,
    /// HEAD tree listings of recent base commits (results).
    pub listings: crate::results::Listings,
    /// Where local clones run (`clone_sandbox::Sandbox::for_daemon`).
    pub clone_sandbox: clone_sandbox::Sandbox,
    /// Requests whose last operation failed: attempts so far and when the
    /// next may run. The planner sees them as busy until then.
    pub backoff: Mutex<Backoffs>,
    /// Open write ends of running sessions' start gates: held until the
    /// session ends, so a `go` written before the reader opened the FIFO
    /// is not lost.
    pub gates: Mutex<BTreeMap<String, std::fs::File>>,
    /// Work folders whose removal failed, retried by `sweep_work_dirs`.
    pub leftovers: Mutex<Leftovers>,
    /// Failed sealing attempts per request, counted apart from `backoff`
    /// (which every failure of a finish shares), so a Podman outage during
    /// finishing does not make the daemon give up on a record early.
    pub seal_failures: Mutex<Backoffs>,
    /// The egress proxies of running sessions (issue 19).
    pub egress: SessionEgress,
}

/// How long a start waits for the command to pass its gate.
const GATE_WAIT: Duration = Duration::from_secs(10);

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes written into a FIFO and not read yet.
fn unread_bytes(f: &std::fs::File) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD stores one c_int through the pointer, which points at
    // `n`, a live local; the descriptor is borrowed from `f`, open for the
    // whole call.
    unsafe { fionread(f.as_raw_fd(), &mut n) }.map_err(std::io::Error::from)?;
    Ok(n)
}

/// Clears a task's busy mark and wakes the loop when the task ends.
struct BusyGuard {
    sh: Arc<Shared>,
    key: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.sh.busy).remove(&self.key);
        let _ = self.sh.wake.try_send(Event::TaskDone);
    }
}

impl Shared {
    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    /// Write a status change; log (never propagate) a failure to persist.
    /// (The store tells the metrics of phase changes.)
    pub fn update_status(&self, id: &str, f: impl FnOnce(&mut Status)) -> Option<Status> {
        match lock(&self.store).update(id, f) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(request = id, error = %e, "cannot persist status");
                None
            }
        }
    }

    /// Write a status record; log (never propagate) a failure to persist.
    /// The transition is counted once it is written: a failed write is
    /// decided again by a later pass, and counted then (issue 17).
    fn put_status(&self, s: Status) {
        let id = s.request.clone();
        // The store counts the phase change once it is written.
        if let Err(e) = lock(&self.store).put(s) {
            tracing::error!(request = id, error = %e, "cannot persist status");
        }
    }

    /// Put a container found by inspection into the table, for the planner.
    pub fn remember(&self, request: &str, session_id: Option<&str>, i: &ContainerInfo) {
        lock(&self.containers).by_request.insert(
            request.to_string(),
            Container {
                id: i.id.clone(),
                name: self.settings.container_name(request),
                request: Some(request.to_string()),
                session_id: session_id.map(str::to_string),
                state: i.state,
                deadline: i.deadline,
                started: i.started_at.is_some(),
            },
        );
    }

    /// The container `name` (of id `id`, when known) is gone: the table
    /// drops it and ignores the runtime's late reports of it.
    pub fn container_gone(&self, name: &str, id: Option<&str>) {
        lock(&self.containers).went(name, id, std::time::Instant::now());
    }

    /// Write `go` into a session's gate, never waiting
    /// (`workdir::WorkDir::send_go`).
    pub fn send_go(&self, session_id: &str) -> std::io::Result<std::fs::File> {
        let work = self.settings.work_dir(session_id);
        workdir::WorkDir::mark_gate_opened(&work)?;
        workdir::WorkDir::send_go(&work.join("gate"))
    }

    /// Let the session's command start, and wait (briefly) until it has read
    /// its `go`: only then is the session marked running, so a daemon that
    /// dies afterwards never strands a command at its gate. A `go` not read
    /// in time (a command that died first, a very slow start) stays held
    /// until the session ends. Idempotent.
    pub async fn open_gate(&self, request: &str, session_id: &str) -> std::io::Result<()> {
        let f = self.send_go(session_id)?;
        let deadline = std::time::Instant::now() + GATE_WAIT;
        while std::time::Instant::now() < deadline {
            if unread_bytes(&f)? == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::warn!(
            request,
            "the session has not read its start gate yet; keeping it open"
        );
        lock(&self.gates).insert(request.to_string(), f);
        Ok(())
    }

    pub fn close_gate(&self, request: &str) {
        lock(&self.gates).remove(request);
    }

    /// Record a failed operation of `request`: it is retried after a growing
    /// delay, and its status message says what failed. Returns the attempts.
    pub fn retry_later(&self, request: &str, what: &str) -> u32 {
        let attempts = lock(&self.backoff)
            .failed(request, std::time::Instant::now())
            .attempts;
        let delay = Backoff::delay(attempts);
        tracing::warn!(
            request,
            attempts,
            retry_in_s = delay.as_secs(),
            error = what,
            "operation failed; will retry"
        );
        self.update_status(request, |s| {
            s.message = Some(format!(
                "{what} (attempt {attempts}; retrying in {}s)",
                delay.as_secs()
            ));
        });
        attempts
    }

    /// The operation of `request` succeeded: forget its failures.
    pub fn succeeded(&self, request: &str) {
        lock(&self.backoff).clear(request);
    }

    /// Requests the planner must leave alone now: tasks under way, and
    /// failed operations waiting for their retry time.
    pub fn busy_now(&self) -> BTreeSet<String> {
        let mut busy = lock(&self.busy).clone();
        let now = std::time::Instant::now();
        busy.extend(lock(&self.backoff).waiting(now).cloned());
        busy
    }

    /// Run `fut` as a task owning `request`: the planner leaves the request
    /// alone until the task ends, then the loop looks again.
    fn spawn_for(
        self: &Arc<Self>,
        request: String,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        lock(&self.busy).insert(request.clone());
        let guard = BusyGuard {
            sh: Arc::clone(self),
            key: request,
        };
        self.tasks.spawn(async move {
            // Dropped when the task ends, even by a panic: the request never
            // stays busy forever.
            let _guard = guard;
            fut.await;
        });
    }

    /// Apply one planned action.
    pub fn apply(self: &Arc<Self>, action: Action, desired: &Desired) {
        match action {
            Action::Admit { request } => {
                if let Some(RequestEntry::Valid(r)) = desired.requests.get(&request) {
                    self.admit(r, desired);
                }
            }
            Action::Reject {
                request,
                profile,
                message,
            } => {
                tracing::warn!(request = %request, profile = %profile, problem = %message, "request invalid");
                let mut s = lock(&self.store)
                    .get(&request)
                    .cloned()
                    .unwrap_or_else(|| Status::new(&request, &profile));
                s.phase = Phase::Invalid;
                s.message = Some(message);
                if !profile.is_empty() {
                    s.profile = profile;
                }
                self.put_status(s);
            }
            Action::Defer {
                request,
                profile,
                message,
            } => {
                let origin = match desired.requests.get(&request) {
                    Some(RequestEntry::Valid(r)) if r.scheduled_for.is_some() => Origin::Schedule,
                    _ => Origin::File,
                };
                tracing::info!(request = %request, profile = %profile, "request not admitted yet: --max-pending reached");
                let mut s = lock(&self.store)
                    .get(&request)
                    .cloned()
                    .unwrap_or_else(|| Status::new(&request, &profile));
                s.phase = Phase::Pending;
                s.spec_sha256 = None;
                s.created_at = s.created_at.or(Some(Self::now()));
                s.profile = profile;
                s.origin = origin;
                s.message = Some(message);
                self.put_status(s);
            }
            Action::Hold { request, message } => {
                self.update_status(&request, |s| s.message = Some(message));
            }
            Action::NoteEdited { request } => {
                tracing::info!(request = %request, "request file changed after admission; spec kept");
                self.update_status(&request, |s| s.message = Some(EDITED_MESSAGE.into()));
            }
            Action::Start { request } => {
                let profile_name = lock(&self.store).get(&request).map(|s| s.profile.clone());
                let Some(profile) = profile_name.and_then(|p| desired.profiles.get(&p).cloned())
                else {
                    return;
                };
                // `starting` now, before the task runs: the slot is taken
                // in the very next pass's count. In memory only: the task's
                // first write (with the session id) persists it.
                lock(&self.store).update_unpersisted(&request, |s| s.phase = Phase::Starting);
                let sh = Arc::clone(self);
                self.spawn_for(request.clone(), async move {
                    start::start(&sh, &request, profile).await
                });
            }
            Action::Adopt { request } => {
                let sh = Arc::clone(self);
                self.spawn_for(request.clone(), async move {
                    adopt::adopt(&sh, &request).await;
                });
            }
            Action::Stop { request, reason } => {
                let sh = Arc::clone(self);
                self.spawn_for(request.clone(), async move {
                    finish::stop(&sh, &request, reason).await
                });
            }
            Action::Finish { request, cancelled } => {
                let sh = Arc::clone(self);
                self.spawn_for(request.clone(), async move {
                    finish::finish(&sh, &request, cancelled).await
                });
            }
            Action::Prune { request } => {
                tracing::info!(request = %request, "pruning status of removed request");
                let _ = std::fs::remove_file(self.settings.spec_path(&request));
                if let Err(e) = lock(&self.store).remove(&request) {
                    tracing::error!(request = %request, error = %e, "cannot prune status");
                }
            }
            Action::RemoveContainer { container, why } => {
                let sh = Arc::clone(self);
                let key = crate::plan::container_key(&container);
                self.spawn_for(key, async move {
                    tracing::info!(container = %container, why = %why, "removing container");
                    match sh.runtime.remove(&container).await {
                        Ok(()) => sh.container_gone(&container, None),
                        Err(e) => tracing::warn!(container = %container, error = %e, "cannot remove container"),
                    }
                });
            }
        }
    }

    /// Freeze a valid request: snapshot its validated spec, record `pending`.
    fn admit(&self, r: &Request, desired: &Desired) {
        let path = self.settings.spec_path(&r.id);
        // Not admitted until frozen: a spec that cannot be serialised or
        // written is logged, and the next pass admits it again.
        if let Err(e) = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::fsutil::write_json_atomic(&path, r, 0o600))
        {
            tracing::error!(request = %r.id, error = %e, "cannot freeze request spec; will retry");
            return;
        }
        let profile_repo = desired
            .profiles
            .get(&r.profile)
            .and_then(|p| p.repo.clone());
        // A request that waited for --max-pending keeps its place in line.
        let since = lock(&self.store)
            .get(&r.id)
            .filter(|s| crate::plan::is_deferred(s))
            .and_then(|s| s.created_at);
        let mut s = Status::new(&r.id, &r.profile);
        s.phase = Phase::Pending;
        s.spec_sha256 = Some(r.spec_sha256.clone());
        s.created_at = Some(since.unwrap_or_else(Self::now));
        s.repo = r.repo.clone().or(profile_repo).map(|r| r.as_str());
        s.work_unit = match &r.input {
            crate::desired::Input::WorkUnit(w) => Some(w.clone()),
            _ => None,
        };
        s.origin = if r.scheduled_for.is_some() {
            Origin::Schedule
        } else {
            Origin::File
        };
        tracing::info!(request = %r.id, profile = %r.profile, spec_sha256 = %r.spec_sha256, "request admitted");
        self.put_status(s);
    }
}

/// The status message while a session is being stopped.
fn stop_message(reason: StopReason) -> String {
    match reason {
        StopReason::Cancelled => "cancelling: the request file was removed".into(),
        StopReason::TimedOut => "timed out; stopping".into(),
    }
}
