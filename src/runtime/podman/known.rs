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
//! its deadline has not passed (whether it ended before it needs Podman's
//! end time). Anything else is answered by `container inspect`.

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
    started_at: jiff::Timestamp,
}

/// Image answers per image name, and what is known of each container run.
#[derive(Debug, Default)]
pub struct Known {
    /// What `podman image inspect NAME` said, and the image list's stamp
    /// at the time (the answer holds while the stamp does).
    images: BTreeMap<String, (ImagesStamp, ImageIdentity)>,
    /// Per container name. In memory only: after a restart the end asks
    /// `container inspect`.
    ran: BTreeMap<String, Ran>,
}

impl Known {
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
                started_at: jiff::Timestamp::now(),
            },
        );
    }

    /// An exit of container `id` was reported. `replace`: the runtime's own
    /// report (the `died` event), which wins over an early one.
    pub fn exited(&mut self, id: &str, code: Option<i32>, replace: bool) {
        if let Some(r) = self.ran.values_mut().find(|r| r.id == id)
            && (replace || r.exit.is_none())
        {
            r.exit = code;
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
        if code < 0 || code == 137 || now.as_millisecond() >= r.deadline {
            return None;
        }
        let image = r.image.clone()?;
        if !super::exits::process_gone(&r.pid_file) {
            return None;
        }
        Some(ContainerInfo {
            id: r.id.clone(),
            state: ContainerState::Exited(code),
            exit_code: code,
            image,
            started_at: Some(r.started_at),
            finished_at: None,
            oom_killed: false,
            deadline: Some(r.deadline),
            namespaces: None,
        })
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
}
