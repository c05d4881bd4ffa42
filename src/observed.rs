//! What the world shows, as plain data: the status store's records and the
//! containers Podman reports for this instance. PURE: built by the daemon's
//! IO layers, read by the planner; no IO here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Lifecycle of a request (docs/sessions.md, "Phases").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Admitted, waiting for a slot.
    Pending,
    /// Session allocated; work folder, clone and container being prepared.
    Starting,
    /// The container runs.
    Running,
    /// Teardown and audit sealing.
    Finishing,
    Done,
    /// The file or its profile is rejected; `message` says why.
    Invalid,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Invalid => "invalid",
        }
    }

    /// Holds a session slot.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Finishing)
    }

    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Starting,
        Phase::Running,
        Phase::Finishing,
        Phase::Done,
        Phase::Invalid,
    ];

    /// Its position in [`Phase::ALL`].
    fn index(self) -> usize {
        match self {
            Phase::Pending => 0,
            Phase::Starting => 1,
            Phase::Running => 2,
            Phase::Finishing => 3,
            Phase::Done => 4,
            Phase::Invalid => 5,
        }
    }
}

/// Status records counted by phase and by profile, kept up to date record
/// by record (`StatusStore` calls [`StatusCounts::replace`] on every
/// change), so the metrics and the systemd `STATUS=` line after each pass
/// cost nothing per record (issue 12: 10,000 finished records are walked
/// by nobody).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusCounts {
    /// Records per phase, in [`Phase::ALL`] order.
    by_phase: [usize; 6],
    /// Records per profile name; only names with at least one record.
    by_profile: BTreeMap<String, usize>,
}

impl StatusCounts {
    /// Count `statuses` from scratch.
    pub fn of<'a>(statuses: impl IntoIterator<Item = &'a Status>) -> StatusCounts {
        let mut c = StatusCounts::default();
        for s in statuses {
            c.replace(None, Some(s));
        }
        c
    }

    /// One record changed from `old` to `new` (`None`: absent).
    pub fn replace(&mut self, old: Option<&Status>, new: Option<&Status>) {
        if let Some(o) = old {
            self.by_phase[o.phase.index()] = self.by_phase[o.phase.index()].saturating_sub(1);
            if let Some(n) = self.by_profile.get_mut(&o.profile) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_profile.remove(&o.profile);
                }
            }
        }
        if let Some(n) = new {
            self.by_phase[n.phase.index()] += 1;
            match self.by_profile.get_mut(&n.profile) {
                Some(c) => *c += 1,
                None => {
                    self.by_profile.insert(n.profile.clone(), 1);
                }
            }
        }
    }

    /// Records in `phase`.
    pub fn phase(&self, phase: Phase) -> usize {
        self.by_phase[phase.index()]
    }

    /// Records holding a session slot (starting, running, finishing).
    pub fn active(&self) -> usize {
        Phase::ALL
            .iter()
            .filter(|p| p.is_active())
            .map(|p| self.phase(*p))
            .sum()
    }

    /// Every profile some record names.
    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.by_profile.keys().map(String::as_str)
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    GenericFailure,
    UsageError,
    Blocked,
    NothingReady,
    WorkFailed,
    InfrastructureFailure,
    CommandNotExecutable,
    CommandNotFound,
    TerminatedBySignal,
    TimedOut,
    Cancelled,
    StartFailed,
}

impl Outcome {
    /// The contract's mapping from a container exit code.
    pub fn from_exit_code(code: i32) -> Outcome {
        match code {
            0 => Outcome::Success,
            2 => Outcome::UsageError,
            3 => Outcome::Blocked,
            4 => Outcome::NothingReady,
            5 => Outcome::WorkFailed,
            6 => Outcome::InfrastructureFailure,
            126 => Outcome::CommandNotExecutable,
            127 => Outcome::CommandNotFound,
            c if c >= 129 => Outcome::TerminatedBySignal,
            _ => Outcome::GenericFailure,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::GenericFailure => "generic_failure",
            Outcome::UsageError => "usage_error",
            Outcome::Blocked => "blocked",
            Outcome::NothingReady => "nothing_ready",
            Outcome::WorkFailed => "work_failed",
            Outcome::InfrastructureFailure => "infrastructure_failure",
            Outcome::CommandNotExecutable => "command_not_executable",
            Outcome::CommandNotFound => "command_not_found",
            Outcome::TerminatedBySignal => "terminated_by_signal",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::StartFailed => "start_failed",
        }
    }

    /// Outcomes `agentd run --wait` treats as a good end (exit 0).
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            Outcome::Success | Outcome::Blocked | Outcome::NothingReady
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    #[default]
    File,
    Schedule,
}

/// The status object (docs/sessions.md, "The status object"), one per
/// request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub request: String,
    pub profile: String,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub session_id: Option<String>,
    pub container: Option<String>,
    pub repo: Option<String>,
    pub work_unit: Option<String>,
    pub origin: Origin,
    pub spec_sha256: Option<String>,
    pub created_at: Option<jiff::Timestamp>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub audit_dir: Option<PathBuf>,
    pub message: Option<String>,
    /// Set when agentd stops the session before its command ended, so the
    /// outcome (`cancelled`, `timed_out`) survives a crash between the stop
    /// and the collection of the exit. An extension of the contract's status
    /// object: present only while it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// What the agent changed, once done (issue 20).
    #[serde(default)]
    pub changes: Option<Changes>,
    /// How the push went, once done, when the profile pushes (issue 20).
    #[serde(default)]
    pub push: Option<PushResult>,
}

/// Why agentd stopped a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Cancelled,
    TimedOut,
}

impl Status {
    /// A fresh record for a request that has not been admitted.
    pub fn new(request: &str, profile: &str) -> Status {
        Status {
            request: request.to_string(),
            profile: profile.to_string(),
            phase: Phase::Invalid,
            outcome: None,
            exit_code: None,
            session_id: None,
            container: None,
            repo: None,
            work_unit: None,
            origin: Origin::File,
            spec_sha256: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            audit_dir: None,
            message: None,
            stop_reason: None,
            changes: None,
            push: None,
        }
    }
}

/// A container of this instance as Podman reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The request and session it belongs to, from its labels.
    pub request: Option<String>,
    pub session_id: Option<String>,
    pub state: ContainerState,
    /// Unix milliseconds after which the session is timed out, from its label.
    pub deadline: Option<i64>,
    /// It was started at some point (a `Created` container that was started
    /// is one Podman reset, e.g. after a host reboot: it ended unrecorded).
    pub started: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not (yet) started.
    Created,
    Running,
    /// Stopped with an exit code.
    Exited(i32),
    /// Paused, removing, or anything else Podman may say.
    Other,
}

/// Everything the planner looks at besides the desired state, borrowed from
/// the daemon's live views so a pass copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Status records by request id.
    pub statuses: &'a BTreeMap<String, Status>,
    /// This instance's containers by request id.
    pub containers: &'a BTreeMap<String, Container>,
    /// Containers of this instance that name no known request.
    pub orphans: &'a [Container],
    /// Requests with an executor operation under way: no new action for them.
    pub busy: &'a BTreeSet<String>,
    /// True when the container table is known to be complete (a listing
    /// succeeded); false after a Podman failure, so nothing is concluded
    /// from a container's absence.
    pub containers_known: bool,
}

/// What the agent changed and what was pushed (issue 20), as the status
/// and the audit record carry them; `results` makes them.
/// `changes` in `session.json` and the status object: what the agent
/// changed relative to the base.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The commit HEAD named right after the clone (`null`: an empty repository).
    pub base: Option<String>,
    /// The commit HEAD named at the end (`null`: none).
    pub head: Option<String>,
    /// New commits, on any branch or a detached HEAD, not reachable from
    /// any ref of the base.
    pub commits: u64,
    /// From the base's HEAD to the final work tree (committed and not).
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
    /// Size of `agentd/changes.bundle` (0: absent).
    pub bundle_bytes: u64,
    /// Size of `agentd/worktree.patch`, the uncommitted work (0: absent).
    pub patch_bytes: u64,
    /// Size of `agentd/commits.patch`, the new commits as a patch series
    /// (0: absent).
    #[serde(default)]
    pub series_bytes: u64,
    /// Something was left out: `cut` says what and why.
    pub truncated: bool,
    /// The refs in the bundle (`HEAD`, `refs/heads/...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// What was left out or could not be read, one line each (the first
    /// [`CUT_SHOWN`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<String>,
    /// Lines past the first [`CUT_SHOWN`] of `cut`, counted only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_more: u64,
}

/// Lines of `changes.cut` kept; the rest are counted in `cut_more`.
pub const CUT_SHOWN: usize = 20;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Changes {
    /// One line for the status message when something was left out.
    pub fn note(&self) -> Option<String> {
        self.truncated.then(|| {
            let more = match self.cut_more {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            format!(
                "results truncated: {}{more}; see `changes` in agentd/session.json",
                self.cut.join("; ")
            )
        })
    }

    /// Record that `what` was left out.
    pub fn cut(&mut self, what: impl Into<String>) {
        self.truncated = true;
        if self.cut.len() < CUT_SHOWN {
            self.cut.push(what.into());
        } else {
            self.cut_more += 1;
        }
    }
}

/// `push` in `session.json` and the status object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PushResult {
    /// The ref points at the commit (pushed now, or it already did).
    Pushed {
        #[serde(rename = "ref")]
        ref_name: String,
        commit: String,
    },
    /// HEAD had no new commit.
    NothingToPush,
    /// Not attempted: the outcome is not in `when`, the repository or the
    /// branch does not allow it.
    Skipped { why: String },
    /// Attempted and failed (rejected, unreachable, no token).
    Failed { reason: String },
}

impl PushResult {
    /// One line for the status message when the push did not go through.
    pub fn note(&self) -> Option<String> {
        match self {
            PushResult::Failed { reason } => Some(format!("push failed: {reason}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Counts kept change by change equal a recount, after every change
        /// of a random history (records written, rewritten, removed).
        #[test]
        fn counts_kept_per_change_equal_a_recount_issue_12(
            ops in proptest::collection::vec(
                (0usize..6, proptest::option::of((0usize..6, 0usize..3))),
                0..200,
            ),
        ) {
            let mut records: BTreeMap<String, Status> = BTreeMap::new();
            let mut counts = StatusCounts::default();
            for (id, change) in ops {
                let id = format!("r{id}");
                let new = change.map(|(phase, profile)| {
                    let mut s = Status::new(&id, &format!("p{profile}"));
                    s.phase = Phase::ALL[phase];
                    s
                });
                let old = match &new {
                    Some(n) => records.insert(id.clone(), n.clone()),
                    None => records.remove(&id),
                };
                counts.replace(old.as_ref(), new.as_ref());
                prop_assert_eq!(&counts, &StatusCounts::of(records.values()));
            }
            let active = records.values().filter(|s| s.phase.is_active()).count();
            prop_assert_eq!(counts.active(), active);
        }
    }

    #[test]
    fn phase_index_follows_all() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        let table = [
            (0, "success"),
            (1, "generic_failure"),
            (2, "usage_error"),
            (3, "blocked"),
            (4, "nothing_ready"),
            (5, "work_failed"),
            (6, "infrastructure_failure"),
            (7, "generic_failure"),
            (125, "generic_failure"),
            (126, "command_not_executable"),
            (127, "command_not_found"),
            (128, "generic_failure"),
            (129, "terminated_by_signal"),
            (137, "terminated_by_signal"),
            (255, "terminated_by_signal"),
            (-1, "generic_failure"),
        ];
        for (code, label) in table {
            assert_eq!(Outcome::from_exit_code(code).as_str(), label, "exit {code}");
            let json = serde_json::to_string(&Outcome::from_exit_code(code)).unwrap_or_default();
            assert_eq!(json, format!("\"{label}\""));
        }
    }
}
