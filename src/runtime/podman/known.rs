//! What the Podman backend knows of the sessions it ran, so that the end of
//! a session need not ask Podman (issue 12 item 3): the image each one was
//! created from, where its pid file is, and its exit as reported early.
//!
//! The image: `podman run IMAGE` resolves the name in local storage when
//! it creates the container. What the name resolves to is asked once per
//! image (`podman image inspect`, beside `podman run`) and cached with a
//! stamp of the storage's image list (`images.rs`); it is recorded for a
//! session only if that stamp is the same before and after its `podman
//! run`, so a moved tag is never misrecorded.
//!
//! The exit: conmon's exit file (`exits.rs`) and the `died` event give the
//! code; it is believed without `container inspect` only when the
//! container's pid (`podman run --pidfile`) is gone too (`exits::
//! process_gone`), the image is known, the code is not 137 (out of memory
//! or not, only Podman knows), the session has no memory limit (an
//! out-of-memory kill of one of its processes is Podman's to report), and
//! its deadline has not passed when it ended (conmon's exit file's mtime is
//! the end time Podman itself records; without it, the time of asking).
//! Anything else is answered by `container inspect`.
//!
//! A session container that removes itself (`podman run --rm`, see
//! `backend.rs`) may be gone before anyone asks: Podman's clean-up removes
//! it right after the exit. Its exit as reported (the exit file, or the
//! `died` event) is then the answer ([`Known::gone_exit`]); only a daemon
//! that saw neither (a restart) reads Podman's event log (`ended.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::images::ImagesStamp;
use crate::observed::ContainerState;
use crate::runtime::{ContainerInfo, ImageIdentity};

/// One container this daemon ran.
#[derive(Debug, Clone)]
struct Ran {
    id: String,
    /// The image, when known exactly (see the module doc).
    image: Option<ImageIdentity>,
    /// `podman run --pidfile`: where the container's host pid is.
    pid_file: PathBuf,
    deadline: i64,
    /// An exit code reported for this container (exit file or event).
    exit: Option<i32>,
    /// When it exited, as reported (the exit file's mtime, else the
    /// `died` event's time).
    exited_at: Option<jiff::Timestamp>,
    started_at: jiff::Timestamp,
    /// Podman removes it once it exits (`run --rm`).
    removes_itself: bool,
}

/// Image answers per image name, and what is known of each container run.
#[derive(Debug, Default)]
pub struct Known {
    /// What `podman image inspect NAME` said, and the image list's stamp
    /// at the time (the answer holds while the stamp does).
    images: BTreeMap<String, (ImagesStamp, ImageIdentity)>,
    /// Per container name. In memory only: after a restart the end asks
    /// `container inspect` (or Podman's event log, `ended.rs`). Bounded
    /// ([`Known::MAX_RAN`]): a container that removes itself is never
    /// removed through this daemon, so nothing else forgets it.
    ran: BTreeMap<String, Ran>,
}

impl Known {
    /// Containers remembered at most; past it, the oldest ended one goes
    /// (then the oldest): an entry is only needed until its session ends.
    pub const MAX_RAN: usize = 1024;

    /// The cached answer for `image` if the list is still at `stamp`.
    pub fn image(&self, image: &str, stamp: ImagesStamp) -> Option<ImageIdentity> {
        self.images
            .get(image)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, i)| i.clone())
    }

    pub fn learned(&mut self, image: &str, stamp: ImagesStamp, info: ImageIdentity) {
        self.images.insert(image.to_string(), (stamp, info));
    }

    /// `podman run` of `name` created container `id`.
    pub fn ran(
        &mut self,
        name: &str,
        id: &str,
        image: Option<ImageIdentity>,
        pid_file: PathBuf,
        deadline: i64,
    ) {
        self.ran.insert(
            name.to_string(),
            Ran {
                id: id.to_string(),
                image,
                pid_file,
                deadline,
                exit: None,
                exited_at: None,
                started_at: jiff::Timestamp::now(),
                removes_itself: false,
            },
        );
        while self.ran.len() > Self::MAX_RAN {
            let oldest = |ended: bool| {
                self.ran
                    .iter()
                    .filter(|(_, r)| !ended || r.exit.is_some())
                    .min_by_key(|(_, r)| r.started_at)
                    .map(|(n, _)| n.clone())
            };
            match oldest(true).or_else(|| oldest(false)) {
                Some(n) => self.ran.remove(&n),
                None => break,
            };
        }
    }

    /// The container `name` was run to remove itself once it exits.
    pub fn removes_itself(&mut self, name: &str) {
        if let Some(r) = self.ran.get_mut(name) {
            r.removes_itself = true;
        }
    }

    /// An exit of container `id` was reported. `replace`: the runtime's own
    /// report (the `died` event), which wins over an early one.
    pub fn exited(&mut self, id: &str, code: Option<i32>, replace: bool) {
        self.exited_at(id, code, None, replace);
    }

    /// [`Known::exited`], with when it exited if the report says. The
    /// earliest time reported is kept: the exit file's mtime is the exit,
    /// the `died` event is recorded by Podman's clean-up a moment later.
    pub fn exited_at(
        &mut self,
        id: &str,
        code: Option<i32>,
        at: Option<jiff::Timestamp>,
        replace: bool,
    ) {
        if let Some(r) = self.ran.values_mut().find(|r| r.id == id) {
            if replace || r.exit.is_none() {
                r.exit = code;
            }
            r.exited_at = match (r.exited_at, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// The container `name` is gone (removed, or not found).
    pub fn forget(&mut self, name: &str) {
        self.ran.remove(name);
    }

    /// The exit of `name` when it is certain without asking Podman (see the
    /// module doc); `None` sends the caller to `container inspect`.
    pub fn certain_exit(&self, name: &str, now: jiff::Timestamp) -> Option<ContainerInfo> {
        let r = self.ran.get(name)?;
        let code = r.exit?;
        let ended = r.exited_at.unwrap_or(now);
        if code < 0 || code == 137 || ended.as_millisecond() >= r.deadline {
            return None;
        }
        let image = r.image.clone()?;
        if !super::exits::process_gone(&r.pid_file) {
            return None;
        }
        Some(r.info(code, image))
    }

    /// The exit of `name`, a container that removed itself and that Podman
    /// no longer knows: the code reported of it (Podman's clean-up reads
    /// the same exit file before it removes the container). `None` when it
    /// was not run to remove itself or no code was reported.
    pub fn gone_exit(&self, name: &str) -> Option<ContainerInfo> {
        let r = self.ran.get(name).filter(|r| r.removes_itself)?;
        let code = r.exit.filter(|c| *c >= 0)?;
        Some(r.info(code, r.image.clone().unwrap_or_default()))
    }
}

impl Ran {
    fn info(&self, code: i32, image: ImageIdentity) -> ContainerInfo {
        ContainerInfo {
            id: self.id.clone(),
            state: ContainerState::Exited(code),
            exit_code: code,
            image,
            started_at: Some(self.started_at),
            finished_at: self.exited_at,
            oom_killed: false,
            deadline: Some(self.deadline),
            namespaces: None,
            removes_itself: self.removes_itself,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid file naming a pid above the kernel's maximum: never in use.
    fn gone_pid() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("container.pid");
        std::fs::write(&f, "4194305").expect("write");
        (d, f)
    }

    fn known_with(
        code: Option<i32>,
        deadline_in_ms: i64,
        image: bool,
    ) -> (Known, jiff::Timestamp, tempfile::TempDir) {
        let now = jiff::Timestamp::now();
        let mut k = Known::default();
        let (d, pid_file) = gone_pid();
        k.ran(
            "c",
            "id1",
            image.then(ImageIdentity::default),
            pid_file,
            now.as_millisecond() + deadline_in_ms,
        );
        k.exited("id1", code, false);
        (k, now, d)
    }

    #[test]
    fn only_a_certain_exit_is_answered_without_podman_issue_18() {
        let (k, now, _d) = known_with(Some(3), 60_000, true);
        let i = k.certain_exit("c", now).expect("certain");
        assert_eq!(i.state, ContainerState::Exited(3));
        // Every doubt sends the caller to `container inspect`.
        let doubts = [
            ("no code", known_with(None, 60_000, true)),
            ("killed", known_with(Some(137), 60_000, true)),
            ("unreadable", known_with(Some(-1), 60_000, true)),
            ("deadline passed", known_with(Some(0), -1, true)),
            ("image unknown", known_with(Some(0), 60_000, false)),
        ];
        for (why, (k, now, _d)) in doubts {
            assert!(k.certain_exit("c", now).is_none(), "{why}");
        }
        assert!(k.certain_exit("other", now).is_none());
    }

    #[test]
    fn an_early_exit_never_overwrites_and_the_runtimes_own_does_issue_18() {
        let (mut k, now, _d) = known_with(Some(3), 60_000, true);
        k.exited("id1", Some(4), false);
        assert_eq!(k.certain_exit("c", now).map(|i| i.exit_code), Some(3));
        k.exited("id1", Some(5), true);
        assert_eq!(k.certain_exit("c", now).map(|i| i.exit_code), Some(5));
        k.exited("other", Some(6), true);
        assert_eq!(k.certain_exit("c", now).map(|i| i.exit_code), Some(5));
        k.forget("c");
        assert!(k.certain_exit("c", now).is_none());
    }

    #[test]
    fn a_live_pid_is_no_proof_of_an_exit_issue_18() {
        let now = jiff::Timestamp::now();
        let mut k = Known::default();
        let d = tempfile::tempdir().expect("tempdir");
        let pid_file = d.path().join("container.pid");
        std::fs::write(&pid_file, std::process::id().to_string()).expect("write");
        k.ran(
            "c",
            "id1",
            Some(ImageIdentity::default()),
            pid_file,
            now.as_millisecond() + 60_000,
        );
        k.exited("id1", Some(0), false);
        assert!(k.certain_exit("c", now).is_none());
    }

    #[test]
    fn a_container_that_removed_itself_is_answered_from_its_exit_issue_18() {
        let (mut k, now, _d) = known_with(Some(4), 60_000, true);
        // Not run to remove itself: gone means gone.
        assert!(k.gone_exit("c").is_none());
        k.removes_itself("c");
        let i = k.gone_exit("c").expect("answered");
        assert_eq!((i.state, i.exit_code), (ContainerState::Exited(4), 4));
        assert!(i.removes_itself);
        assert!(k.certain_exit("c", now).expect("certain").removes_itself);
        // No code seen, or an unreadable one: not answered.
        let (mut k, _, _d) = known_with(None, 60_000, true);
        k.removes_itself("c");
        assert!(k.gone_exit("c").is_none());
        let (mut k, _, _d) = known_with(Some(-1), 60_000, true);
        k.removes_itself("c");
        assert!(k.gone_exit("c").is_none());
    }

    #[test]
    fn the_reported_end_decides_the_deadline_and_the_earliest_is_kept_issue_18() {
        let (mut k, now, _d) = known_with(None, 1_000, true);
        let before = now
            .checked_add(jiff::SignedDuration::from_millis(500))
            .expect("t");
        let after = now
            .checked_add(jiff::SignedDuration::from_millis(2_000))
            .expect("t");
        let late = now
            .checked_add(jiff::SignedDuration::from_millis(5_000))
            .expect("t");
        // The exit file's mtime, then the `died` event's later time.
        k.exited_at("id1", Some(0), Some(before), false);
        k.exited_at("id1", Some(0), Some(after), true);
        // Asked after the deadline, it ended before: certain, not timed out.
        let i = k
            .certain_exit("c", late)
            .expect("ended before its deadline");
        assert_eq!(i.finished_at, Some(before));
        // Ended after it: Podman's answer is wanted.
        let (mut k, now, _d) = known_with(None, 1_000, true);
        let after = now
            .checked_add(jiff::SignedDuration::from_millis(2_000))
            .expect("t");
        k.exited_at("id1", Some(0), Some(after), false);
        assert!(k.certain_exit("c", now).is_none());
    }

    #[test]
    fn what_is_known_stays_bounded_ended_ones_going_first_issue_18() {
        let (_d, pid_file) = gone_pid();
        let mut k = Known::default();
        k.ran("running", "r", None, pid_file.clone(), 0);
        for n in 0..Known::MAX_RAN + 10 {
            let id = format!("id{n}");
            k.ran(&format!("c{n}"), &id, None, pid_file.clone(), 0);
            k.exited(&id, Some(0), false);
        }
        assert_eq!(k.ran.len(), Known::MAX_RAN);
        assert!(k.ran.contains_key("running"), "an ended one went first");
    }
}
