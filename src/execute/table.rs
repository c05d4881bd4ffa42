//! The container table: this instance's containers as last seen, kept by
//! the runtime's listing (`replace`), its changes (`apply`) and the
//! executor's own results. The planner reads it; it is the daemon's memory
//! of the runtime, never proof (finishing asks `Runtime::inspect`).
//!
//! A container that went (the executor removed it, the runtime removed it
//! itself, or reported it removed) is remembered by id for a while
//! ([`Gone`]): the runtime's reports lag (Podman's event log by 100 ms or
//! more), so its `create`, `start` or exit can arrive after the container
//! is gone, and a listing can have been taken before it went. Neither may
//! put it back: the planner would remove the container of a done request
//! a second time (issue 18: `rm` ran twice for one session).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::observed::{Container, ContainerState};
use crate::runtime::{Change, What};

/// This instance's containers as last seen (listing + changes + own actions).
#[derive(Debug, Default)]
pub struct ContainerTable {
    pub by_request: BTreeMap<String, Container>,
    pub orphans: Vec<Container>,
    /// A listing succeeded since the last failed one.
    pub known: bool,
    /// Containers that went, by id.
    gone: Gone,
}

/// How long a container that went is not believed back from a listing:
/// longer than a runtime takes to remove a container that removes itself
/// (`Runtime::run`), shorter than the resync, so a container whose own
/// removal failed is listed, and removed, at the next one.
pub const GONE_GRACE: Duration = Duration::from_secs(10);

/// Ids of containers that went, oldest first, with when (bounded: a late
/// report comes within seconds; ids are never reused).
#[derive(Debug, Default)]
struct Gone {
    at: BTreeMap<String, Instant>,
    order: VecDeque<String>,
}

impl Gone {
    const MAX: usize = 4096;

    fn insert(&mut self, id: &str, now: Instant) {
        if id.is_empty() || self.at.insert(id.to_string(), now).is_some() {
            return;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.at.contains_key(id)
    }

    /// Whether a listing taken from `listed` on may still show `id` though
    /// it went: it went after the listing began, or its runtime may still
    /// be removing it.
    fn hides(&self, id: &str, listed: Instant) -> bool {
        self.at
            .get(id)
            .is_some_and(|went| listed < *went + GONE_GRACE)
    }
}

impl ContainerTable {
    /// Replace the table with a fresh listing, keeping entries of requests
    /// whose operations are under way (they may have changed since).
    pub fn replace(
        &mut self,
        listing: Vec<Container>,
        busy: &BTreeSet<String>,
        known_requests: &dyn Fn(&str) -> bool,
    ) {
        self.replace_listed(listing, busy, known_requests, Instant::now());
    }

    /// [`ContainerTable::replace`] with a listing that began at `listed`:
    /// a container that went since (or a moment before) is left out.
    pub fn replace_listed(
        &mut self,
        listing: Vec<Container>,
        busy: &BTreeSet<String>,
        known_requests: &dyn Fn(&str) -> bool,
        listed: Instant,
    ) {
        let listing = listing
            .into_iter()
            .filter(|c| !self.gone.hides(&c.id, listed));
        let mut by_request: BTreeMap<String, Container> = self
            .by_request
            .iter()
            .filter(|(r, _)| busy.contains(*r))
            .map(|(r, c)| (r.clone(), c.clone()))
            .collect();
        let mut orphans = Vec::new();
        for c in listing {
            match c.request.clone() {
                Some(r) if known_requests(&r) => {
                    by_request.entry(r).or_insert(c);
                }
                _ => orphans.push(c),
            }
        }
        self.by_request = by_request;
        self.orphans = orphans;
        self.known = true;
    }

    /// The container `name` is gone (removed by the executor, or by the
    /// runtime itself): drop it, and ignore what is reported later of it
    /// (of `id`, and of every id the table knew under that name).
    pub fn went(&mut self, name: &str, id: Option<&str>, now: Instant) {
        let ids = self
            .by_request
            .values()
            .chain(&self.orphans)
            .filter(|c| c.name == name)
            .map(|c| c.id.clone())
            .chain(id.map(str::to_string))
            .collect::<Vec<_>>();
        for id in &ids {
            self.gone.insert(id, now);
        }
        self.orphans.retain(|c| c.name != name);
        self.by_request.retain(|_, c| c.name != name);
    }

    /// Apply one change the runtime reported. Returns whether the loop
    /// should look again: always for a change the runtime names fully
    /// (events carry no state), for an early exit only when it changed the
    /// table. A report of a container that went changes nothing.
    pub fn apply(&mut self, change: &Change) -> bool {
        let id = match change {
            Change::Container { id, .. } | Change::Exited { id, .. } => id,
            Change::Resync => return true,
        };
        if self.gone.contains(id) {
            return false;
        }
        match change {
            Change::Container {
                id,
                name,
                request,
                session_id,
                deadline,
                what,
            } => {
                if let Some(r) = request {
                    self.apply_container(id, name, r, session_id, *deadline, *what);
                }
                true
            }
            Change::Exited { id, code } => self.apply_exit(id, *code),
            // The caller lists again.
            Change::Resync => true,
        }
    }

    fn apply_container(
        &mut self,
        id: &str,
        name: &str,
        r: &str,
        session_id: &Option<String>,
        deadline: Option<i64>,
        what: What,
    ) {
        let state = match what {
            What::Created => ContainerState::Created,
            What::Started => ContainerState::Running,
            What::Exited(code) => ContainerState::Exited(code.unwrap_or(-1)),
            What::Removed => {
                if self
                    .by_request
                    .get(r)
                    .is_some_and(|c| c.id == id || c.name == name)
                {
                    self.by_request.remove(r);
                }
                self.gone.insert(id, Instant::now());
                return;
            }
            What::Other => return,
        };
        match self.by_request.get_mut(r) {
            // Another container of the same request (an older attempt's): the
            // table keeps the one it knows until that is removed.
            Some(c) if c.name != name => {}
            // A `Created` arriving after `Started`/`Exited` (reports can race
            // the table's own updates) must not move the state backwards.
            Some(c) if state == ContainerState::Created => c.id = id.to_string(),
            Some(c) => {
                c.state = state;
                c.started = true;
                c.id = id.to_string();
            }
            None => {
                self.by_request.insert(
                    r.to_string(),
                    Container {
                        id: id.to_string(),
                        name: name.to_string(),
                        request: Some(r.to_string()),
                        session_id: session_id.clone(),
                        state,
                        deadline,
                        started: state != ContainerState::Created,
                    },
                );
            }
        }
    }

    /// An early exit: the container of that id exited. Only a container
    /// the table knows (this instance's, by id) and that it believes is not
    /// over yet changes; `-1` when the code could not be read (finishing
    /// inspects the container anyway). Returns whether the table changed.
    fn apply_exit(&mut self, id: &str, code: Option<i32>) -> bool {
        let Some(c) = self.by_request.values_mut().find(|c| c.id == id) else {
            return false;
        };
        if matches!(c.state, ContainerState::Exited(_)) {
            return false;
        }
        c.state = ContainerState::Exited(code.unwrap_or(-1));
        c.started = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(id: &str, state: ContainerState) -> ContainerTable {
        let mut t = ContainerTable::default();
        t.by_request.insert(
            "r".into(),
            Container {
                id: id.into(),
                name: "agentd-i-r".into(),
                request: Some("r".into()),
                session_id: Some("s".into()),
                state,
                deadline: None,
                started: true,
            },
        );
        t
    }

    fn exit(id: &str, code: Option<i32>) -> Change {
        Change::Exited {
            id: id.into(),
            code,
        }
    }

    #[test]
    fn an_exit_file_marks_only_its_own_running_container_exited() {
        let id = "a".repeat(64);
        let mut t = table_with(&id, ContainerState::Running);
        // Another container's exit (another instance, a bare `podman run`).
        assert!(!t.apply(&exit(&"b".repeat(64), Some(0))));
        assert_eq!(t.by_request["r"].state, ContainerState::Running);
        assert!(t.apply(&exit(&id, Some(3))));
        assert_eq!(t.by_request["r"].state, ContainerState::Exited(3));
        // The events stream's code, or an earlier file, is not overwritten.
        assert!(!t.apply(&exit(&id, None)));
        assert_eq!(t.by_request["r"].state, ContainerState::Exited(3));
    }

    #[test]
    fn an_exit_file_read_too_late_still_ends_the_container() {
        let id = "c".repeat(64);
        let mut t = table_with(&id, ContainerState::Running);
        assert!(t.apply(&exit(&id, None)));
        assert_eq!(t.by_request["r"].state, ContainerState::Exited(-1));
    }

    fn change(id: &str, name: &str, what: What) -> Change {
        Change::Container {
            id: id.into(),
            name: name.into(),
            request: Some("r".into()),
            session_id: Some("s".into()),
            deadline: Some(5),
            what,
        }
    }

    #[test]
    fn reported_changes_move_the_state_forward_only_issue_18() {
        let mut t = ContainerTable::default();
        assert!(t.apply(&change("1", "agentd-i-r", What::Started)));
        assert_eq!(t.by_request["r"].state, ContainerState::Running);
        assert_eq!(t.by_request["r"].deadline, Some(5));
        // A late `Created` does not move it back.
        t.apply(&change("1", "agentd-i-r", What::Created));
        assert_eq!(t.by_request["r"].state, ContainerState::Running);
        t.apply(&change("1", "agentd-i-r", What::Exited(Some(2))));
        assert_eq!(t.by_request["r"].state, ContainerState::Exited(2));
        // The runtime's own report of the exit wins over an early one.
        t.apply(&change("1", "agentd-i-r", What::Exited(None)));
        assert_eq!(t.by_request["r"].state, ContainerState::Exited(-1));
        // Another container of the same request leaves the known one.
        t.apply(&change("2", "agentd-i-other", What::Started));
        assert_eq!(t.by_request["r"].id, "1");
        t.apply(&change("2", "agentd-i-other", What::Removed));
        assert!(t.by_request.contains_key("r"));
        // A change without a request is no session's; still a wake-up.
        assert!(t.apply(&Change::Container {
            id: "9".into(),
            name: "x".into(),
            request: None,
            session_id: None,
            deadline: None,
            what: What::Started,
        }));
        t.apply(&change("1", "agentd-i-r", What::Removed));
        assert!(t.by_request.is_empty());
    }

    #[test]
    fn a_removed_container_is_not_put_back_by_late_reports_issue_18() {
        // What made `rm` run twice for one session: the container's
        // `create`/`start`/`died` reached the table after the end removed
        // it, and the planner removed the "container of a done request".
        let now = Instant::now();
        let mut t = table_with("1", ContainerState::Exited(0));
        t.went("agentd-i-r", None, now);
        assert!(t.by_request.is_empty());
        for what in [What::Created, What::Started, What::Exited(Some(0))] {
            assert!(!t.apply(&change("1", "agentd-i-r", what)));
        }
        assert!(!t.apply(&exit("1", Some(0))));
        assert!(t.by_request.is_empty());
        // One it never knew by name, gone by id (it removed itself).
        t.went("agentd-i-r", Some("2"), now);
        assert!(!t.apply(&change("2", "agentd-i-r", What::Started)));
        assert!(t.by_request.is_empty());
        // Another container of the request is news.
        assert!(t.apply(&change("3", "agentd-i-r", What::Started)));
        assert_eq!(t.by_request["r"].id, "3");
        // The runtime's own report of a removal counts too.
        t.apply(&change("3", "agentd-i-r", What::Removed));
        assert!(!t.apply(&change("3", "agentd-i-r", What::Exited(None))));
        assert!(t.by_request.is_empty());
    }

    #[test]
    fn a_listing_older_than_a_removal_does_not_bring_it_back_issue_18() {
        let listed = |id: &str| Container {
            id: id.into(),
            name: "agentd-i-r".into(),
            request: Some("r".into()),
            session_id: Some("s".into()),
            state: ContainerState::Exited(0),
            deadline: None,
            started: true,
        };
        let t0 = Instant::now();
        let mut t = table_with("1", ContainerState::Exited(0));
        t.went("agentd-i-r", None, t0 + Duration::from_secs(1));
        let known = |_: &str| true;
        // Listed before it went, or while its runtime may still be removing it.
        for at in [t0, t0 + GONE_GRACE] {
            t.replace_listed(vec![listed("1")], &BTreeSet::new(), &known, at);
            assert!(t.by_request.is_empty(), "listed at {at:?}");
        }
        // Still listed well after: its removal failed; the planner removes it.
        let later = t0 + Duration::from_secs(1) + GONE_GRACE;
        t.replace_listed(vec![listed("1")], &BTreeSet::new(), &known, later);
        assert_eq!(t.by_request["r"].id, "1");
        // Other containers are listed as ever.
        t.replace_listed(vec![listed("2")], &BTreeSet::new(), &known, t0);
        assert_eq!(t.by_request["r"].id, "2");
    }
}
