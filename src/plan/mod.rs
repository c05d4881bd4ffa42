//! The reconcile planner: `plan(desired, observed, config) -> Vec<Action>`.
//!
//! PURE and level-triggered: it compares the whole desired state with what
//! the status store and Podman show, and says what would converge them. It
//! has no memory; running it twice on the same inputs gives the same plan,
//! so missed events, crashes and restarts all converge. `agentd plan` prints
//! its output; the daemon's executor applies it.

mod scope;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::desired::{Desired, RequestEntry};
pub use crate::observed::StopReason;
use crate::observed::{ContainerState, Observed, Phase, Status};
pub use scope::Scope;

/// Knobs and facts the planner needs besides the two states.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub now: jiff::Timestamp,
    pub max_sessions: u32,
    /// How long the status of a request whose file is gone is kept.
    pub status_retention: Duration,
    /// False when the desired dir could not be read this pass: nothing is
    /// admitted, cancelled or pruned on its account.
    pub source_available: bool,
    /// False while draining for shutdown: admit and start nothing new.
    pub admitting: bool,
    /// Most requests admitted and not started yet (`--max-pending`); valid
    /// requests past it wait, not admitted, oldest first.
    pub max_pending: usize,
}

/// Default of `--max-pending`.
pub const DEFAULT_MAX_PENDING: usize = 1000;

/// The status message of a valid request held back by `--max-pending`.
pub fn not_admitted_message(max_pending: usize) -> String {
    format!(
        "not admitted: {max_pending} requests already pending (--max-pending); it is admitted, oldest first, as room frees up"
    )
}

/// A request held back by `--max-pending`: its status is `pending` (it
/// waits) but it was never admitted, so no spec was frozen for it.
pub fn is_deferred(s: &Status) -> bool {
    s.phase == Phase::Pending && s.spec_sha256.is_none()
}

/// One step toward convergence. Actions name requests; the executor reads
/// what else it needs from the states it was planned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record a valid request as admitted (`pending`), freezing its spec.
    Admit { request: String },
    /// A valid request waits to be admitted (`--max-pending` is reached):
    /// status `pending` with no frozen spec, the message says why.
    Defer {
        request: String,
        profile: String,
        message: String,
    },
    /// Record why a request cannot be admitted (phase `invalid`).
    Reject {
        request: String,
        profile: String,
        message: String,
    },
    /// Start a session for an admitted request: a slot is free.
    Start { request: String },
    /// A session whose start was interrupted has a running container:
    /// record it as running and supervise it.
    Adopt { request: String },
    /// An admitted request waits; the message says for what.
    Hold { request: String, message: String },
    /// Note in the status that the file changed after admission.
    NoteEdited { request: String },
    /// Stop a running container (grace period, then kill).
    Stop { request: String, reason: StopReason },
    /// The session is over (container exited, or it never got one): collect
    /// the exit, finalize the audit record, remove the container.
    Finish { request: String, cancelled: bool },
    /// Forget the status of a request whose file is gone.
    Prune { request: String },
    /// Remove a container of this instance that belongs to no live session.
    RemoveContainer { container: String, why: String },
}

impl Action {
    pub fn request(&self) -> Option<&str> {
        match self {
            Action::Admit { request }
            | Action::Reject { request, .. }
            | Action::Defer { request, .. }
            | Action::Start { request }
            | Action::Adopt { request }
            | Action::Hold { request, .. }
            | Action::NoteEdited { request }
            | Action::Stop { request, .. }
            | Action::Finish { request, .. }
            | Action::Prune { request } => Some(request),
            Action::RemoveContainer { .. } => None,
        }
    }

    /// True for actions that change something (not a plain hold).
    pub fn is_change(&self) -> bool {
        !matches!(self, Action::Hold { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Admit { request } => write!(f, "admit {request}"),
            Action::Reject {
                request, message, ..
            } => write!(f, "invalid {request}: {message}"),
            Action::Defer {
                request, message, ..
            } => write!(f, "defer {request}: {message}"),
            Action::Start { request } => write!(f, "start {request}"),
            Action::Adopt { request } => write!(f, "adopt {request}"),
            Action::Hold { request, message } => write!(f, "wait {request}: {message}"),
            Action::NoteEdited { request } => write!(f, "note-edited {request}"),
            Action::Stop {
                request,
                reason: StopReason::Cancelled,
            } => write!(f, "stop {request} (cancelled)"),
            Action::Stop {
                request,
                reason: StopReason::TimedOut,
            } => write!(f, "stop {request} (timed out)"),
            Action::Finish {
                request,
                cancelled: false,
            } => write!(f, "finish {request}"),
            Action::Finish {
                request,
                cancelled: true,
            } => write!(f, "finish {request} (cancelled)"),
            Action::Prune { request } => write!(f, "prune {request}"),
            Action::RemoveContainer { container, why } => {
                write!(f, "clean-up container {container}: {why}")
            }
        }
    }
}

/// Message recorded when a request's file changes after admission.
pub const EDITED_MESSAGE: &str = "file changed after admission; the admitted spec is kept (requests are one-shot: drop a new file for a new session)";

/// Compute the actions that converge `observed` toward `desired`.
pub fn plan(desired: &Desired, observed: &Observed<'_>, cfg: &PlanConfig) -> Vec<Action> {
    plan_joined(
        desired,
        observed,
        cfg,
        &join(observed.statuses, &desired.requests),
    )
}

/// [`plan`] looking only at the requests `ids` names (and at orphans): the
/// same actions as `plan` when `ids` holds every request that is live, has
/// a container or is busy ([`Scope::ids`]), at a cost that grows with
/// those, not with every finished request the desired dir keeps.
pub fn plan_in(
    desired: &Desired,
    observed: &Observed<'_>,
    cfg: &PlanConfig,
    ids: &BTreeSet<&str>,
) -> Vec<Action> {
    let joined: Joined<'_> = ids
        .iter()
        .filter_map(|id| {
            let status = observed.statuses.get_key_value(*id);
            let entry = desired.requests.get_key_value(*id);
            let key = match (status, entry) {
                (Some((k, _)), _) | (None, Some((k, _))) => k,
                (None, None) => return None,
            };
            Some((key, status.map(|(_, s)| s), entry.map(|(_, e)| e)))
        })
        .collect();
    plan_joined(desired, observed, cfg, &joined)
}

/// The planner over the (id, status, entry) triples it is given, in id
/// order. Counts that span requests (pending, active) are taken over these
/// triples, which hold every request that counts.
fn plan_joined(
    desired: &Desired,
    observed: &Observed<'_>,
    cfg: &PlanConfig,
    joined: &Joined<'_>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // Requests admitted in this pass compete for slots in this pass too:
    // a dropped file starts without waiting for another wake-up.
    let mut admitted: Vec<Status> = Vec::new();
    let mut pending: Vec<(&Status, bool)> = Vec::new();

    for &(id, status, entry) in joined {
        let Some(status) = status else { continue };
        if observed.busy.contains(id) {
            continue;
        }
        let file_gone = cfg.source_available && entry.is_none();
        let finish = |cancelled| Action::Finish {
            request: id.clone(),
            cancelled,
        };
        match status.phase {
            // Never admitted: nothing to cancel; the admission pass below
            // decides it again.
            Phase::Pending if is_deferred(status) => {
                if file_gone {
                    actions.push(Action::Prune {
                        request: id.clone(),
                    });
                }
            }
            Phase::Invalid => {
                if file_gone {
                    actions.push(Action::Prune {
                        request: id.clone(),
                    });
                }
            }
            Phase::Pending if file_gone => actions.push(finish(true)),
            Phase::Pending => pending.push((status, edited(status, entry))),
            Phase::Starting => {
                // An interrupted start (the daemon died mid-way, or a retry
                // after a failure): adopt, finish, or clean up what exists,
                // and start again when nothing does.
                match observed.containers.get(id) {
                    Some(c) if c.state == ContainerState::Running => {
                        actions.push(Action::Adopt {
                            request: id.clone(),
                        });
                        running(&mut actions, id, status, observed, cfg, file_gone);
                    }
                    Some(c) if ended(c) => actions.push(finish(file_gone)),
                    Some(c) => remove_container(
                        &mut actions,
                        observed,
                        &c.name,
                        format!("half-created by an interrupted start of {id}"),
                    ),
                    None if file_gone => actions.push(finish(true)),
                    None if observed.containers_known => {
                        pending.push((status, edited(status, entry)))
                    }
                    None => {}
                }
            }
            Phase::Running => {
                if edited(status, entry)
                    && status.message.as_deref() != Some(EDITED_MESSAGE)
                    && status.stop_reason.is_none()
                {
                    actions.push(Action::NoteEdited {
                        request: id.clone(),
                    });
                }
                running(&mut actions, id, status, observed, cfg, file_gone);
            }
            Phase::Finishing => actions.push(finish(file_gone)),
            Phase::Done => {
                if let Some(c) = observed.containers.get(id) {
                    remove_container(
                        &mut actions,
                        observed,
                        &c.name,
                        format!("request {id} is done"),
                    );
                }
                let expired = status.finished_at.is_none_or(|t| {
                    cfg.now.duration_since(t).unsigned_abs() >= cfg.status_retention
                });
                if file_gone && expired {
                    actions.push(Action::Prune {
                        request: id.clone(),
                    });
                }
            }
        }
    }

    // Files not admitted yet: admit the valid ones, explain the others.
    let mut admissible: Vec<(jiff::Timestamp, &String, &str, Option<&Status>)> = Vec::new();
    for &(id, status, entry) in joined {
        let Some(entry) = entry else { continue };
        if observed.busy.contains(id) {
            continue;
        }
        if status.is_some_and(|s| s.phase != Phase::Invalid && !is_deferred(s)) {
            continue;
        }
        let rejection = match entry {
            RequestEntry::Invalid(r) => Some((String::new(), r.summary())),
            RequestEntry::Valid(r) => desired.invalid_profiles.get(&r.profile).map(|bad| {
                (
                    r.profile.clone(),
                    format!("profile `{}` is invalid: {}", r.profile, bad.summary()),
                )
            }),
        };
        match rejection {
            Some((profile, message)) => {
                let profile = if profile.is_empty() {
                    status.map(|s| s.profile.clone()).unwrap_or_default()
                } else {
                    profile
                };
                if status.is_none_or(|s| s.message.as_deref() != Some(&message)) {
                    actions.push(Action::Reject {
                        request: id.clone(),
                        profile,
                        message,
                    });
                }
            }
            None if cfg.admitting => {
                if let RequestEntry::Valid(r) = entry {
                    // A deferred request keeps its place in the queue.
                    let since = status
                        .filter(|s| is_deferred(s))
                        .and_then(|s| s.created_at)
                        .unwrap_or(cfg.now);
                    admissible.push((since, id, r.profile.as_str(), status));
                }
            }
            None => {}
        }
    }
    // Within `--max-pending`, oldest first (first seen, then by id); the
    // rest wait with a status that says why.
    let already = statuses(joined)
        .filter(|s| s.phase == Phase::Pending && !is_deferred(s))
        .count();
    let room = cfg.max_pending.saturating_sub(already);
    admissible.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (i, (since, id, profile, status)) in admissible.into_iter().enumerate() {
        if i < room {
            actions.push(Action::Admit {
                request: id.clone(),
            });
            let mut s = Status::new(id, profile);
            s.phase = Phase::Pending;
            s.created_at = Some(since);
            admitted.push(s);
        } else {
            let message = not_admitted_message(cfg.max_pending);
            if status.is_none_or(|s| !is_deferred(s) || s.message.as_deref() != Some(&message)) {
                actions.push(Action::Defer {
                    request: id.clone(),
                    profile: profile.to_string(),
                    message,
                });
            }
        }
    }

    pending.extend(admitted.iter().map(|s| (s, false)));
    schedule_starts(&mut actions, desired, statuses(joined), cfg, pending);

    for orphan in observed.orphans {
        remove_container(
            &mut actions,
            observed,
            &orphan.name,
            "it belongs to no request this instance knows".into(),
        );
    }
    actions
}

/// Both id-sorted maps side by side, in one merge pass: every id with its
/// status and its desired entry (either may be missing). Cheaper than a
/// lookup per id, which is what a pass over 10,000 requests spends its time on.
type Joined<'a> = Vec<(&'a String, Option<&'a Status>, Option<&'a RequestEntry>)>;

fn statuses<'a>(joined: &'a Joined<'_>) -> impl Iterator<Item = &'a Status> {
    joined.iter().filter_map(|(_, s, _)| *s)
}

fn join<'a>(
    statuses: &'a BTreeMap<String, Status>,
    requests: &'a BTreeMap<String, RequestEntry>,
) -> Joined<'a> {
    use std::cmp::Ordering;
    let mut out = Vec::with_capacity(statuses.len().max(requests.len()));
    let mut s = statuses.iter().peekable();
    let mut r = requests.iter().peekable();
    loop {
        let order = match (s.peek(), r.peek()) {
            (None, None) => break,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        out.extend(match order {
            Ordering::Less => s.next().map(|(id, st)| (id, Some(st), None)),
            Ordering::Greater => r.next().map(|(id, e)| (id, None, Some(e))),
            Ordering::Equal => s
                .next()
                .map(|(id, st)| (id, Some(st), r.next().map(|(_, e)| e))),
        });
    }
    out
}

/// The busy key of a container being removed (requests use their id).
pub fn container_key(name: &str) -> String {
    format!("container:{name}")
}

fn remove_container(actions: &mut Vec<Action>, observed: &Observed<'_>, name: &str, why: String) {
    if !observed.busy.contains(&container_key(name)) {
        actions.push(Action::RemoveContainer {
            container: name.to_string(),
            why,
        });
    }
}

/// The container's command is over: it exited, or Podman reset a container
/// that had been started (after a host reboot), so it will never exit.
fn ended(c: &crate::observed::Container) -> bool {
    matches!(c.state, ContainerState::Exited(_))
        || (c.state == ContainerState::Created && c.started)
}

/// The file no longer matches the admitted spec (edited, or now invalid on
/// its own; a file rejected only for a cross-file reason keeps its sha).
fn edited(status: &Status, entry: Option<&RequestEntry>) -> bool {
    let sha = match entry {
        Some(RequestEntry::Valid(r)) => Some(r.spec_sha256.as_str()),
        Some(RequestEntry::Invalid(r)) => r.sha256.as_deref(),
        None => return false,
    };
    sha != status.spec_sha256.as_deref()
}

/// A session that should have a container: finish it when the container
/// ended or vanished; stop it when cancelled, past its deadline, or when an
/// earlier stop has not taken effect yet.
fn running(
    actions: &mut Vec<Action>,
    id: &str,
    status: &Status,
    observed: &Observed<'_>,
    cfg: &PlanConfig,
    file_gone: bool,
) {
    match observed.containers.get(id) {
        Some(c) if ended(c) => actions.push(Action::Finish {
            request: id.to_string(),
            cancelled: file_gone,
        }),
        Some(c) => {
            let reason = if file_gone {
                Some(StopReason::Cancelled)
            } else if c.deadline.is_some_and(|d| cfg.now.as_millisecond() >= d) {
                Some(StopReason::TimedOut)
            } else {
                status.stop_reason
            };
            if let Some(reason) = reason {
                actions.push(Action::Stop {
                    request: id.to_string(),
                    reason,
                });
            }
        }
        None if observed.containers_known => actions.push(Action::Finish {
            request: id.to_string(),
            cancelled: file_gone,
        }),
        None => {}
    }
}

/// Hand free slots to pending requests, oldest admitted first, within the
/// global limit and each profile's `max_concurrent`.
fn schedule_starts<'a>(
    actions: &mut Vec<Action>,
    desired: &'a Desired,
    statuses: impl Iterator<Item = &'a Status>,
    cfg: &PlanConfig,
    mut pending: Vec<(&Status, bool)>,
) {
    let mut active_total = 0u32;
    let mut active_by_profile: BTreeMap<&str, u32> = BTreeMap::new();
    for s in statuses {
        if s.phase.is_active() && !pending.iter().any(|(p, _)| p.request == s.request) {
            active_total += 1;
            *active_by_profile.entry(s.profile.as_str()).or_default() += 1;
        }
    }
    pending.sort_by(|(a, _), (b, _)| (a.created_at, &a.request).cmp(&(b.created_at, &b.request)));
    for (s, edited) in pending {
        let id = s.request.clone();
        // An edit of a waiting request is reported with what it waits for.
        let hold = |message: String| Action::Hold {
            request: id.clone(),
            message: if edited {
                format!("{message}; {EDITED_MESSAGE}")
            } else {
                message
            },
        };
        if !cfg.admitting {
            actions.push(hold(
                "daemon is shutting down; not starting new sessions".into(),
            ));
            continue;
        }
        let Some(profile) = desired.profiles.get(&s.profile) else {
            let why = match desired.invalid_profiles.get(&s.profile) {
                Some(bad) => format!("profile `{}` is invalid: {}", s.profile, bad.summary()),
                None if !cfg.source_available => {
                    "desired dir unavailable; waiting for it to return".to_string()
                }
                None => format!("profile `{}` not found; waiting for it", s.profile),
            };
            actions.push(hold(why));
            continue;
        };
        if profile.suspend {
            actions.push(hold(format!("profile `{}` is suspended", profile.name)));
            continue;
        }
        let mine = active_by_profile
            .get(profile.name.as_str())
            .copied()
            .unwrap_or(0);
        if let Some(max) = profile.max_concurrent
            && mine >= max
        {
            actions.push(hold(format!(
                "waiting for a slot of profile `{}` ({mine}/{max} running)",
                profile.name
            )));
            continue;
        }
        if active_total >= cfg.max_sessions {
            actions.push(hold(format!(
                "waiting for a slot ({active_total}/{} running)",
                cfg.max_sessions
            )));
            continue;
        }
        active_total += 1;
        *active_by_profile.entry(profile.name.as_str()).or_default() += 1;
        actions.push(Action::Start { request: id });
    }
}

#[cfg(test)]
mod tests;
