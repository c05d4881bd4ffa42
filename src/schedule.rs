//! The pure decisions of the scheduler (which fire is due, what was
//! missed, which scheduled requests conflict or are past `history_limit`),
//! over the cron expressions and fire names of `cron` (the leaf module
//! validation uses too).
//!
//! PURE: time is an argument, never read here. Only 5-field expressions and
//! `@hourly`-style macros are accepted (no seconds, no year field), matching
//! classic cron so operators' expressions mean what they expect. Times are
//! `jiff::Zoned` in the daemon's local zone; DST follows croner: a local time
//! skipped by spring-forward fires at the first valid time after it, and a
//! time that occurs twice (fall-back) fires once.

use std::time::Duration;

use croner::Cron;

pub use crate::cron::{is_fire_id, next_fire, parse, previous_fire, request_id};
use crate::observed::{Origin, Phase, Status};

/// What the scheduler should do for one profile now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The fire to materialize now, if any.
    pub fire: Option<jiff::Zoned>,
    /// The most recent fire that passed unmaterialized (daemon down, or
    /// past its starting deadline): reported, never backfilled.
    pub missed: Option<jiff::Zoned>,
    /// The next fire after `now`.
    pub next: Option<jiff::Zoned>,
}

/// Decide the fire due at `now`. `covered_until` is the last fire ever
/// materialized for the profile (persisted across restarts), or the moment
/// its schedule was first seen: fires at or before it are never due. The
/// most recent fire after it runs if it is on time (within its own minute)
/// or within `starting_deadline`; an older one is reported as missed and
/// never backfilled. At most one fire is due at a time.
pub fn due(
    cron: &Cron,
    covered_until: jiff::Timestamp,
    now: &jiff::Zoned,
    starting_deadline: Option<Duration>,
) -> Due {
    let next = next_fire(cron, now);
    let Some(prev) = previous_fire(cron, now).filter(|p| p.timestamp() > covered_until) else {
        return Due {
            fire: None,
            missed: None,
            next,
        };
    };
    let late = now
        .timestamp()
        .duration_since(prev.timestamp())
        .unsigned_abs();
    if late < Duration::from_secs(60) || starting_deadline.is_some_and(|d| late <= d) {
        Due {
            fire: Some(prev),
            missed: None,
            next,
        }
    } else {
        Due {
            fire: None,
            missed: Some(prev),
            next,
        }
    }
}

/// Scheduled requests of `profile` that are still pending or running (the
/// ones `forbid` waits for and `replace` cancels).
pub fn active_fires<'a>(
    profile: &str,
    statuses: impl IntoIterator<Item = &'a Status>,
) -> Vec<&'a Status> {
    statuses
        .into_iter()
        .filter(|s| {
            s.profile == profile && s.origin == Origin::Schedule && is_fire_id(profile, &s.request)
        })
        .filter(|s| {
            matches!(
                s.phase,
                Phase::Pending | Phase::Starting | Phase::Running | Phase::Finishing
            )
        })
        .collect()
}

/// The records whose id starts `<profile>-`, where every fire id of the
/// profile is: one range of the id-sorted map. The scheduler looks at its
/// history every pass; this makes that cost the profile's own requests,
/// not every record the store keeps (issue 12).
pub fn fire_range<'a>(
    statuses: &'a std::collections::BTreeMap<String, Status>,
    profile: &str,
) -> impl Iterator<Item = &'a Status> + use<'a> {
    let prefix = format!("{profile}-");
    statuses
        .range(prefix.clone()..)
        .take_while(move |(id, _)| id.starts_with(&prefix))
        .map(|(_, s)| s)
}

/// Finished scheduled requests of `profile` beyond `limit`, oldest first.
pub fn history_to_prune<'a>(
    profile: &str,
    limit: u32,
    statuses: impl IntoIterator<Item = &'a Status>,
) -> Vec<String> {
    let mut done: Vec<&Status> = statuses
        .into_iter()
        .filter(|s| {
            s.profile == profile
                && s.origin == Origin::Schedule
                && s.phase == Phase::Done
                && is_fire_id(profile, &s.request)
        })
        .collect();
    // Fire ids sort by time (fixed-width stamps).
    done.sort_by(|a, b| a.request.cmp(&b.request));
    let excess = done.len().saturating_sub(limit as usize);
    done.into_iter()
        .take(excess)
        .map(|s| s.request.clone())
        .collect()
}

/// What the scheduler remembers of one profile (persisted by the executor
/// to `<state>/schedules/<profile>.json`, shown by `agentd status`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProfileSchedule {
    pub profile: String,
    pub schedule: String,
    /// The last fire materialized, or when this schedule was first seen:
    /// no fire at or before it is ever due again.
    pub covered_until: jiff::Timestamp,
    pub last_fire: Option<jiff::Timestamp>,
    pub last_request: Option<String>,
    pub next_fire: Option<jiff::Timestamp>,
    /// The latest fire that passed while the daemon was down (not backfilled).
    pub last_missed: Option<jiff::Timestamp>,
    /// The latest fire skipped by `concurrency_policy = "forbid"`, and why.
    pub last_skip: Option<String>,
    pub suspended: bool,
}

/// A scheduler decision, applied by the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedAction {
    /// Write `requests/<id>.toml` for this fire.
    Materialize {
        profile: String,
        id: String,
        repo: String,
        scheduled_for: jiff::Zoned,
    },
    /// Cancel a running scheduled request (`replace`): remove its file.
    Cancel {
        request: String,
        path: std::path::PathBuf,
    },
    /// Remove a finished scheduled request past `history_limit`: its file
    /// (if still there) and its status. Its audit record stays.
    Prune {
        request: String,
        path: Option<std::path::PathBuf>,
    },
}

/// The scheduler: per-profile state and the decisions of one tick.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    pub profiles: std::collections::BTreeMap<String, ProfileSchedule>,
}

impl Scheduler {
    /// Decide what is due at `now` for every scheduled profile. Updates the
    /// in-memory state (the caller persists what changed) and returns the
    /// actions to apply.
    pub fn tick(
        &mut self,
        desired: &crate::desired::Desired,
        statuses: &std::collections::BTreeMap<String, Status>,
        now: &jiff::Zoned,
    ) -> Vec<SchedAction> {
        use crate::desired::{ConcurrencyPolicy, RequestEntry};
        let mut actions = Vec::new();
        let t = now.timestamp();
        // Profiles that lost their schedule (or vanished) keep no state;
        // invalid ones keep theirs until they are fixed.
        self.profiles.retain(|name, _| {
            desired.invalid_profiles.contains_key(name)
                || desired
                    .profiles
                    .get(name)
                    .is_some_and(|p| p.schedule.is_some())
        });
        for p in desired.profiles.values() {
            let (Some(sched), Some(repo)) = (&p.schedule, &p.repo) else {
                continue;
            };
            let Ok(cron) = parse(&sched.expr) else {
                continue;
            };
            let st = self
                .profiles
                .entry(p.name.clone())
                .or_insert_with(|| ProfileSchedule {
                    profile: p.name.clone(),
                    schedule: sched.expr.clone(),
                    covered_until: t,
                    last_fire: None,
                    last_request: None,
                    next_fire: None,
                    last_missed: None,
                    last_skip: None,
                    suspended: false,
                });
            if st.schedule != sched.expr {
                // A new expression starts fresh: nothing before now is due.
                st.schedule.clone_from(&sched.expr);
                st.covered_until = st.covered_until.max(t);
            }
            st.suspended = p.suspend;
            if p.suspend {
                // Fires while suspended are dropped, not kept for later.
                st.covered_until = st.covered_until.max(t);
                st.next_fire = None;
                continue;
            }
            let d = due(&cron, st.covered_until, now, p.starting_deadline);
            st.next_fire = d.next.as_ref().map(jiff::Zoned::timestamp);
            if let Some(m) = d.missed {
                st.last_missed = Some(m.timestamp());
                st.covered_until = m.timestamp();
            }
            let Some(fire) = d.fire else { continue };
            st.covered_until = fire.timestamp();
            let id = request_id(&p.name, &fire);
            let running = active_fires(&p.name, fire_range(statuses, &p.name));
            match p.concurrency_policy {
                ConcurrencyPolicy::Forbid if !running.is_empty() => {
                    let ids: Vec<&str> = running.iter().map(|s| s.request.as_str()).collect();
                    st.last_skip = Some(format!(
                        "{} skipped: concurrency_policy forbid, {} still running",
                        fire.strftime("%Y-%m-%dT%H:%M%:z"),
                        ids.join(", ")
                    ));
                    continue;
                }
                ConcurrencyPolicy::Replace => {
                    for s in running {
                        if let Some(RequestEntry::Valid(r)) = desired.requests.get(&s.request) {
                            actions.push(SchedAction::Cancel {
                                request: s.request.clone(),
                                path: r.path.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
            st.last_fire = Some(fire.timestamp());
            st.last_request = Some(id.clone());
            // A fire already on disk or known to the status store (a
            // restart, a clock step) is never written twice. Something
            // else squatting the name (an invalid file, a planted link)
            // does not stop the schedule: the fire replaces it (issue 13).
            let on_disk = matches!(
                desired.requests.get(&id),
                Some(RequestEntry::Valid(r)) if r.scheduled_for.is_some() && r.profile == p.name
            );
            let known = statuses.get(&id).is_some_and(|s| s.phase != Phase::Invalid);
            if !on_disk && !known {
                actions.push(SchedAction::Materialize {
                    profile: p.name.clone(),
                    id,
                    repo: repo.as_str(),
                    scheduled_for: fire,
                });
            }
        }
        for p in desired.profiles.values().filter(|p| p.schedule.is_some()) {
            for id in history_to_prune(&p.name, p.history_limit, fire_range(statuses, &p.name)) {
                let path = match desired.requests.get(&id) {
                    Some(RequestEntry::Valid(r)) => Some(r.path.clone()),
                    Some(RequestEntry::Invalid(r)) => Some(r.path.clone()),
                    None => None,
                };
                actions.push(SchedAction::Prune { request: id, path });
            }
        }
        actions
    }

    /// The earliest next fire of all profiles: when the daemon must wake.
    pub fn next_wake(&self) -> Option<jiff::Timestamp> {
        self.profiles.values().filter_map(|p| p.next_fire).min()
    }
}

#[cfg(test)]
mod tests;
