//! Unit tests of the executor's verbs (start, finish, adopt) against the
//! fake runtime (`runtime::fake`), and of their pure decisions. Real files
//! in a temporary folder (status store, audit record, work folder, a local
//! git repository to clone); no Podman (issue 18).

mod adopt;
mod decide;
mod egress;
mod finish;
mod removal;
mod start;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Event, Settings, Shared, lock};
use crate::desired::{Desired, Input, Profile, Repo, Request};
use crate::observed::{Phase, Status};
use crate::runtime::fake::Fake;
use crate::status::StatusStore;

/// A daemon's executor state in a temporary folder, on the fake runtime.
pub struct Harness {
    /// Holds every file of the test until it ends.
    _dir: tempfile::TempDir,
    pub sh: Arc<Shared>,
    pub fake: Fake,
    /// A local repository sessions clone.
    pub repo: PathBuf,
    _wake: mpsc::Receiver<Event>,
}

/// A clone "sandbox" that only runs the program: the real helper is the
/// agentd binary (`agentd __clone-sandbox`), which a unit test binary is
/// not; the sandbox itself is tested by `tests/it/hardening_clone.rs`.
pub fn no_sandbox(dir: &std::path::Path) -> crate::execute::clone_sandbox::Sandbox {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("run-only.sh");
    std::fs::write(
        &exe,
        "#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    crate::execute::clone_sandbox::Sandbox {
        exe,
        hide: Vec::new(),
    }
}

pub fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let repo = root.join("repo");
    std::fs::create_dir(&repo).expect("repo");
    crate::testkit::git(&repo, &["init", "-q"]);
    crate::testkit::git(&repo, &["commit", "-q", "--allow-empty", "-m", "init"]);
    let state = root.join("state");
    std::fs::create_dir_all(&state).expect("state");
    let fake = Fake::default();
    let settings = Settings {
        desired: root.join("desired"),
        state: state.clone(),
        audit_root: root.join("audit"),
        instance: "test".into(),
        max_sessions: 4,
        max_pending: 100,
        status_retention: Duration::from_secs(3600),
        session_uid: 10001,
        stop_grace: Duration::from_secs(1),
        audit_max_bytes: 1 << 20,
        clone_timeout: Duration::from_secs(60),
        allow_host_network: false,
        egress_ca_file: None,
        session_files_owner: nix::unistd::geteuid().as_raw(),
    };
    let (store, _) = StatusStore::open(&state).expect("store");
    let (wake, rx) = mpsc::channel(1024);
    let sh = Arc::new(Shared {
        settings,
        runtime: Arc::new(fake.clone()),
        metrics: Arc::default(),
        store: Mutex::new(store),
        containers: Mutex::default(),
        busy: Mutex::default(),
        wake,
        tasks: TaskTracker::new(),
        clone_cache: Default::default(),
        listings: Default::default(),
        clone_sandbox: no_sandbox(&root),
        backoff: Mutex::default(),
        gates: Mutex::default(),
        leftovers: Mutex::default(),
        seal_failures: Mutex::default(),
        egress: Default::default(),
    });
    Harness {
        _dir: dir,
        sh,
        fake,
        repo,
        _wake: rx,
    }
}

impl Harness {
    pub fn profile(&self) -> Profile {
        Profile {
            repo: Some(Repo::Local(self.repo.clone())),
            ..Profile::minimal("p", "localhost/img:1", &["true"])
        }
    }

    /// Admit request `id` (frozen spec, `pending`), as the loop would.
    pub fn admit(&self, id: &str) {
        let mut desired = Desired::default();
        desired.profiles.insert("p".into(), self.profile());
        let r = Request {
            id: id.into(),
            path: PathBuf::from(format!("requests/{id}.toml")),
            profile: "p".into(),
            repo: None,
            input: Input::WorkUnit("WU-1".into()),
            timeout: None,
            scheduled_for: None,
            spec_sha256: "0".repeat(64),
        };
        self.sh.admit(&r, &desired);
    }

    /// One start of `id`, as `apply(Action::Start)` runs it.
    pub async fn start(&self, id: &str) {
        lock(&self.sh.store).update_unpersisted(id, |s| s.phase = Phase::Starting);
        super::start::start(&self.sh, id, self.profile()).await;
    }

    pub fn status(&self, id: &str) -> Status {
        lock(&self.sh.store).get(id).cloned().expect("status")
    }

    pub fn message(&self, id: &str) -> String {
        self.status(id).message.unwrap_or_default()
    }

    /// Failed operations of `id` so far (0: none pending).
    pub fn attempts(&self, id: &str) -> u32 {
        lock(&self.sh.backoff).get(id).map_or(0, |b| b.attempts)
    }

    /// Let a retry run now (the loop would wait for the backoff).
    pub fn retry_now(&self, id: &str) {
        if let Some(b) = lock(&self.sh.backoff).get_mut(id) {
            b.until = std::time::Instant::now();
        }
    }

    pub fn container_name(&self, id: &str) -> String {
        self.sh.settings.container_name(id)
    }

    /// The final `session.json` of `id`'s record.
    pub fn record(&self, id: &str) -> crate::audit::SessionRecord {
        let dir = self.status(id).audit_dir.expect("audit dir");
        crate::audit::Record { dir }
            .read_session()
            .expect("session.json")
    }

    pub fn work_dir(&self, id: &str) -> PathBuf {
        let sid = self.status(id).session_id.expect("session id");
        self.sh.settings.work_dir(&sid)
    }
}

/// Wait (a bounded while) for the fake's command to pass its gate.
pub async fn until_past_gate(h: &Harness, id: &str) {
    let name = h.container_name(id);
    for _ in 0..500 {
        if h.fake.container(&name).is_some_and(|c| c.passed_gate) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the command of {id} never passed its gate");
}
