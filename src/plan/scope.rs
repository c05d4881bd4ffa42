//! Which requests a pass has to look at (issue 12). PURE.
//!
//! The desired dir keeps the files of finished requests (10,000 of them is
//! an ordinary day), and planning every one of them in every pass made the
//! cost of a pass grow with the number of files instead of with what
//! changed. Most of them are inert: a request that is `done` and whose file
//! is still there gets no action from [`plan`](super::plan) whatever else
//! is true, unless a container of it exists (containers are few: all of
//! theirs are always looked at). Every other request is *live*: it has no
//! status yet (to admit or reject), a status that is not `done`, or a `done`
//! status whose file is gone (to prune when its retention ends).
//!
//! [`Scope`] keeps the set of live ids, re-deciding an id whenever its
//! status or its desired entry changes (the daemon hands over the ids the
//! status store and the desired-dir cache report as changed). Planning
//! [`Scope::ids`] with [`plan_in`](super::plan_in) gives exactly the actions
//! planning everything gives (a property test below checks it over random
//! histories); the daemon still plans everything on every full scan.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{Desired, RequestEntry};
use crate::observed::{Observed, Phase, Status};

/// Whether a request needs the planner's attention beyond what its
/// containers and operations under way bring: see the module doc.
pub fn is_live(status: Option<&Status>, entry: Option<&RequestEntry>) -> bool {
    match (status, entry) {
        (None, None) => false,
        (Some(s), Some(_)) => s.phase != Phase::Done,
        _ => true,
    }
}

/// The live request ids (see the module doc).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scope {
    live: BTreeSet<String>,
}

impl Scope {
    /// Decide every id from scratch (start-up and full scans).
    pub fn rebuild(desired: &Desired, statuses: &BTreeMap<String, Status>) -> Scope {
        let mut live = BTreeSet::new();
        for (id, s) in statuses {
            if is_live(Some(s), desired.requests.get(id)) {
                live.insert(id.clone());
            }
        }
        for (id, e) in &desired.requests {
            if !statuses.contains_key(id) && is_live(None, Some(e)) {
                live.insert(id.clone());
            }
        }
        Scope { live }
    }

    /// Re-decide `ids`, whose status or desired entry may have changed.
    pub fn update<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a String>,
        desired: &Desired,
        statuses: &BTreeMap<String, Status>,
    ) {
        for id in ids {
            if is_live(statuses.get(id), desired.requests.get(id)) {
                if !self.live.contains(id) {
                    self.live.insert(id.clone());
                }
            } else {
                self.live.remove(id);
            }
        }
    }

    /// The live ids.
    pub fn live(&self) -> &BTreeSet<String> {
        &self.live
    }

    /// What a pass plans: the live ids, every request with a container, and
    /// every request with an operation under way (those are skipped, but
    /// nothing is lost by naming them).
    pub fn ids<'a>(&'a self, observed: &Observed<'a>) -> BTreeSet<&'a str> {
        self.live
            .iter()
            .chain(observed.containers.keys())
            .chain(observed.busy.iter())
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::desired::{Diagnostic, Input, Profile, Rejected, Request};
    use crate::observed::{Container, ContainerState, Outcome};
    use crate::plan::{PlanConfig, plan, plan_in};

    const IDS: usize = 8;
    const PHASES: [Phase; 6] = Phase::ALL;

    /// One change to the world, as the daemon would see it happen.
    #[derive(Debug, Clone)]
    enum Op {
        /// A status written (`Some`) or pruned: phase, deferred (no spec),
        /// sha, finished long ago or just now, message, profile.
        Status(usize, Option<(usize, bool, bool, bool, bool, bool)>),
        /// A request file appears, changes or goes: valid (naming profile
        /// `p` or the invalid `bad`), or rejected; with sha `a` or `b`.
        Entry(usize, Option<(u8, bool)>),
        /// A container of that request appears (in a state) or goes.
        Container(usize, Option<u8>),
        /// An operation on it starts or ends.
        Busy(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let i = 0..IDS;
        prop_oneof![
            (
                i.clone(),
                proptest::option::of((
                    0..PHASES.len(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>()
                ))
            )
                .prop_map(|(i, s)| Op::Status(i, s)),
            (i.clone(), proptest::option::of((0u8..3, any::<bool>())))
                .prop_map(|(i, e)| Op::Entry(i, e)),
            (i.clone(), proptest::option::of(0u8..4)).prop_map(|(i, c)| Op::Container(i, c)),
            i.prop_map(Op::Busy),
        ]
    }

    fn id(i: usize) -> String {
        format!("r{i}")
    }

    #[derive(Default)]
    struct World {
        desired: Desired,
        statuses: BTreeMap<String, Status>,
        containers: BTreeMap<String, Container>,
        busy: BTreeSet<String>,
    }

    impl World {
        fn new() -> World {
            let mut w = World::default();
            let mut p = Profile::minimal("p", "img", &["true"]);
            p.max_concurrent = Some(2);
            w.desired.profiles.insert("p".into(), p);
            w.desired
                .invalid_profiles
                .insert("bad".into(), rejected("bad"));
            w
        }

        /// Apply `op`; the ids whose status or entry changed.
        fn apply(&mut self, op: &Op, now: jiff::Timestamp) -> Vec<String> {
            match *op {
                Op::Status(i, None) => {
                    self.statuses.remove(&id(i));
                    vec![id(i)]
                }
                Op::Status(i, Some((phase, deferred, sha_a, old, msg, other_profile))) => {
                    let profile = if other_profile { "bad" } else { "p" };
                    let mut s = Status::new(&id(i), profile);
                    s.phase = PHASES[phase];
                    s.spec_sha256 = (!deferred).then(|| if sha_a { "a" } else { "b" }.into());
                    s.created_at = Some(now);
                    if s.phase == Phase::Done {
                        s.outcome = Some(Outcome::Success);
                        s.finished_at = Some(if old {
                            now - jiff::SignedDuration::from_secs(1000)
                        } else {
                            now
                        });
                    }
                    s.message = msg.then(|| "something".into());
                    self.statuses.insert(id(i), s);
                    vec![id(i)]
                }
                Op::Entry(i, None) => {
                    self.desired.requests.remove(&id(i));
                    vec![id(i)]
                }
                Op::Entry(i, Some((kind, sha_a))) => {
                    let sha = if sha_a { "a" } else { "b" };
                    let e = match kind {
                        0 | 1 => RequestEntry::Valid(Arc::new(Request {
                            id: id(i),
                            path: PathBuf::from(format!("d/requests/{}.toml", id(i))),
                            profile: if kind == 0 { "p" } else { "bad" }.into(),
                            repo: None,
                            input: Input::None,
                            timeout: None,
                            scheduled_for: None,
                            spec_sha256: sha.into(),
                        })),
                        _ => RequestEntry::Invalid(Box::new(Rejected {
                            sha256: Some(sha.into()),
                            ..rejected(&id(i))
                        })),
                    };
                    self.desired.requests.insert(id(i), e);
                    vec![id(i)]
                }
                Op::Container(i, None) => {
                    self.containers.remove(&id(i));
                    Vec::new()
                }
                Op::Container(i, Some(state)) => {
                    let state = match state {
                        0 => ContainerState::Running,
                        1 => ContainerState::Created,
                        2 => ContainerState::Exited(0),
                        _ => ContainerState::Other,
                    };
                    self.containers.insert(
                        id(i),
                        Container {
                            id: format!("c{i}"),
                            name: format!("agentd-x-{}", id(i)),
                            request: Some(id(i)),
                            session_id: None,
                            state,
                            deadline: None,
                            started: true,
                        },
                    );
                    Vec::new()
                }
                Op::Busy(i) => {
                    if !self.busy.remove(&id(i)) {
                        self.busy.insert(id(i));
                    }
                    Vec::new()
                }
            }
        }
    }

    fn rejected(name: &str) -> Rejected {
        Rejected {
            sha256: None,
            path: name.into(),
            diagnostics: vec![Diagnostic::new(std::path::Path::new(name), None, "broken")],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Planning the scope, kept up to date change by change, gives
        /// what planning everything gives, after every change.
        #[test]
        fn planning_the_scope_equals_planning_everything_issue_12(
            ops in proptest::collection::vec(op(), 1..40),
            max_sessions in 1u32..3,
            max_pending in 1usize..4,
            source_available in any::<bool>(),
            admitting in any::<bool>(),
            containers_known in any::<bool>(),
        ) {
            let now = jiff::Timestamp::from_second(1_000_000).expect("time");
            let cfg = PlanConfig {
                now,
                max_sessions,
                status_retention: Duration::from_secs(100),
                source_available,
                admitting,
                max_pending,
            };
            let mut w = World::new();
            let mut scope = Scope::rebuild(&w.desired, &w.statuses);
            for op in &ops {
                let changed = w.apply(op, now);
                scope.update(&changed, &w.desired, &w.statuses);
                prop_assert_eq!(&scope, &Scope::rebuild(&w.desired, &w.statuses));
                let observed = Observed {
                    statuses: &w.statuses,
                    containers: &w.containers,
                    orphans: &[],
                    busy: &w.busy,
                    containers_known,
                };
                let all = plan(&w.desired, &observed, &cfg);
                let scoped = plan_in(&w.desired, &observed, &cfg, &scope.ids(&observed));
                prop_assert_eq!(all, scoped, "after {:?}", op);
            }
        }
    }

    #[test]
    fn a_finished_request_whose_file_stays_is_not_live() {
        let mut s = Status::new("r", "p");
        s.phase = Phase::Done;
        let e = RequestEntry::Invalid(Box::new(rejected("r")));
        assert!(!is_live(Some(&s), Some(&e)));
        assert!(is_live(Some(&s), None), "file gone: prune when it expires");
        assert!(is_live(None, Some(&e)), "no status yet: decide it");
        s.phase = Phase::Invalid;
        assert!(is_live(Some(&s), Some(&e)));
        assert!(!is_live(None, None));
    }
}
