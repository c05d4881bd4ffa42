//! A scripted `Runtime` for unit tests of the executor (test-only): every
//! failure kind of every verb is a line of a test, not a Podman run.
//!
//! Containers live in memory. A `run` that succeeds starts a thread that
//! plays the session's command at its start gate: it reads `go` from the
//! FIFO mounted at the gate's target, then, if the script says so, exits
//! with a code. Failures are queued per verb and taken one per call.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    Call, Change, Changes, ConsoleCollected, ContainerInfo, ErrorKind, ImageIdentity, Limit,
    RunningSession, Runtime, RuntimeError, SessionSpec,
};
use crate::observed::{Container, ContainerState};
use crate::sync::lock;

/// Where the session's entry reads its start gate (see `execute::start`).
const GATE_TARGET: &str = "/agentd/.gate";

/// One container of the fake.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub spec: SessionSpec,
    pub state: ContainerState,
    /// The command read its `go`.
    pub passed_gate: bool,
}

/// What the fake does, and what it saw.
#[derive(Debug, Default)]
pub struct Script {
    pub containers: BTreeMap<String, FakeContainer>,
    /// Failures of the next calls, per verb (`run`, `stop`, `remove`,
    /// `inspect`, `list`, `secret`).
    pub fail: BTreeMap<&'static str, VecDeque<ErrorKind>>,
    /// A `run` that fails transiently creates its container all the same
    /// (the call timed out after Podman did the work).
    pub run_goes_through: bool,
    /// The command exits with this code right after passing its gate.
    pub exit_after_go: Option<i32>,
    /// What the console collection writes.
    pub console: Vec<u8>,
    /// Secrets that exist.
    pub secrets: BTreeSet<String>,
    /// Every call, as `verb name`.
    pub calls: Vec<String>,
    /// Containers remove themselves once they exit (as Podman's `--rm`);
    /// their ends are kept in `ended`.
    pub removes_itself: bool,
    /// What `ended` answers, per container name.
    pub ended: BTreeMap<String, ContainerInfo>,
    next_id: u64,
}

/// The fake runtime. Clone it to keep a handle on its script.
#[derive(Clone, Default)]
pub struct Fake {
    pub script: Arc<Mutex<Script>>,
}

impl Fake {
    /// Queue a failure of the next call of `verb`.
    pub fn fail_next(&self, verb: &'static str, kind: ErrorKind) {
        lock(&self.script)
            .fail
            .entry(verb)
            .or_default()
            .push_back(kind);
    }

    /// The calls made so far of `verb`.
    pub fn calls_of(&self, verb: &str) -> usize {
        lock(&self.script)
            .calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(verb))
            .count()
    }

    /// The container named `name`, if it exists.
    pub fn container(&self, name: &str) -> Option<FakeContainer> {
        lock(&self.script).containers.get(name).cloned()
    }

    /// Put a container in place, as an earlier daemon left it (a started
    /// one's command is past its gate).
    pub fn put(&self, name: &str, state: ContainerState, spec: SessionSpec) {
        self.insert(name, state, spec, state != ContainerState::Created);
    }

    fn insert(&self, name: &str, state: ContainerState, spec: SessionSpec, passed_gate: bool) {
        let mut s = lock(&self.script);
        s.next_id += 1;
        let id = format!("{:064x}", s.next_id);
        s.containers.insert(
            name.to_string(),
            FakeContainer {
                id,
                spec,
                state,
                passed_gate,
            },
        );
    }

    /// The container `name` exits with `code` (as if its command ended).
    pub fn exit(&self, name: &str, code: i32) {
        let mut s = lock(&self.script);
        if let Some(c) = s.containers.get_mut(name) {
            c.state = ContainerState::Exited(code);
        }
        s.clean_up(name);
    }

    /// Record a call of `verb`; the failure queued for it, if any.
    fn called(&self, verb: &'static str, name: &str) -> Result<(), RuntimeError> {
        let mut s = lock(&self.script);
        s.calls.push(format!("{verb} {name}"));
        match s.fail.get_mut(verb).and_then(VecDeque::pop_front) {
            Some(kind) => Err(RuntimeError::new(
                kind,
                format!("fake {verb} of {name} failed ({kind:?})"),
            )),
            None => Ok(()),
        }
    }
}

impl Script {
    /// A container that removes itself and exited goes, its end kept.
    fn clean_up(&mut self, name: &str) {
        let exited = self
            .containers
            .get(name)
            .is_some_and(|c| matches!(c.state, ContainerState::Exited(_)));
        if self.removes_itself
            && exited
            && let Some(c) = self.containers.remove(name)
        {
            self.ended.insert(name.to_string(), info_of(&c, true));
        }
    }
}

/// Play the command at its gate: read every `go` written into it
/// (non-blocking polls for at most 10 s, or until the container is gone);
/// the first marks the command past its gate, and maybe exits it.
fn play_gate(script: Arc<Mutex<Script>>, name: String, gate: PathBuf) {
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&gate)
        else {
            return;
        };
        let mut buf = [0u8; 8];
        for _ in 0..5000 {
            if let Ok(n) = f.read(&mut buf)
                && n > 0
            {
                let mut s = lock(&script);
                let exit = s.exit_after_go;
                let Some(c) = s.containers.get_mut(&name) else {
                    return;
                };
                if !c.passed_gate {
                    c.passed_gate = true;
                    if let Some(code) = exit {
                        c.state = ContainerState::Exited(code);
                        s.clean_up(&name);
                    }
                }
            }
            if !lock(&script).containers.contains_key(&name) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

fn info_of(c: &FakeContainer, removes_itself: bool) -> ContainerInfo {
    ContainerInfo {
        id: c.id.clone(),
        state: c.state,
        exit_code: match c.state {
            ContainerState::Exited(code) => code,
            _ => 0,
        },
        image: ImageIdentity {
            id: format!("id-of-{}", c.spec.image),
            digest: None,
        },
        started_at: (c.state != ContainerState::Created).then(jiff::Timestamp::now),
        finished_at: None,
        oom_killed: false,
        deadline: Some(c.spec.identity.deadline),
        namespaces: None,
        removes_itself,
    }
}

impl Runtime for Fake {
    fn run<'a>(&'a self, spec: &'a SessionSpec) -> Call<'a, RunningSession> {
        Box::pin(async move {
            let failed = self.called("run", &spec.name);
            let s = lock(&self.script);
            if let Err(e) = failed {
                if e.kind() == ErrorKind::Transient && s.run_goes_through {
                    drop(s);
                    self.put(&spec.name, ContainerState::Running, spec.clone());
                }
                return Err(e);
            }
            if s.containers.contains_key(&spec.name) {
                return Err(RuntimeError::new(
                    ErrorKind::NameInUse,
                    format!("the container name {} is already in use", spec.name),
                ));
            }
            drop(s);
            self.insert(&spec.name, ContainerState::Running, spec.clone(), false);
            if let Some(gate) = spec.mounts.iter().find(|m| m.target == GATE_TARGET) {
                play_gate(
                    Arc::clone(&self.script),
                    spec.name.clone(),
                    gate.source.clone(),
                );
            }
            let id = lock(&self.script).containers[&spec.name].id.clone();
            Ok(RunningSession {
                id,
                namespaces: None,
            })
        })
    }

    fn stop<'a>(&'a self, name: &'a str, _grace: Duration) -> Call<'a, ()> {
        Box::pin(async move {
            self.called("stop", name)?;
            let mut s = lock(&self.script);
            if let Some(c) = s.containers.get_mut(name)
                && c.state == ContainerState::Running
            {
                c.state = ContainerState::Exited(143);
            }
            s.clean_up(name);
            Ok(())
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            self.called("remove", name)?;
            lock(&self.script).containers.remove(name);
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, name: &'a str) -> Call<'a, Option<ContainerInfo>> {
        Box::pin(async move {
            self.called("inspect", name)?;
            let s = lock(&self.script);
            Ok(s.containers.get(name).map(|c| info_of(c, s.removes_itself)))
        })
    }

    fn ended<'a>(
        &'a self,
        name: &'a str,
        _session_dir: &'a Path,
    ) -> Call<'a, Option<ContainerInfo>> {
        Box::pin(async move {
            self.called("ended", name)?;
            Ok(lock(&self.script).ended.get(name).cloned())
        })
    }

    fn list(&self) -> Call<'_, Vec<Container>> {
        Box::pin(async move {
            self.called("list", "")?;
            Ok(lock(&self.script)
                .containers
                .iter()
                .map(|(name, c)| Container {
                    id: c.id.clone(),
                    name: name.clone(),
                    request: Some(c.spec.identity.request.clone()),
                    session_id: Some(c.spec.identity.session_id.clone()),
                    state: c.state,
                    deadline: Some(c.spec.identity.deadline),
                    started: c.state != ContainerState::Created,
                })
                .collect())
        })
    }

    fn changes(&self) -> Changes {
        // The fake reports nothing on its own: tests apply changes to the
        // table themselves.
        let (tx, rx) = mpsc::channel::<Change>(1);
        let keep = tokio::spawn(async move {
            tx.closed().await;
        });
        Changes::new(rx, vec![keep])
    }

    fn secret_exists<'a>(&'a self, name: &'a str) -> Call<'a, bool> {
        Box::pin(async move {
            self.called("secret", name)?;
            Ok(lock(&self.script).secrets.contains(name))
        })
    }

    fn collect_console<'a>(
        &'a self,
        _session_dir: &'a Path,
        dest: &'a Path,
        cap: u64,
    ) -> Call<'a, ConsoleCollected> {
        Box::pin(async move {
            let bytes = lock(&self.script).console.clone();
            let cut = usize::try_from(cap).unwrap_or(usize::MAX).min(bytes.len());
            std::fs::write(dest, &bytes[..cut])
                .map_err(|e| RuntimeError::new(ErrorKind::Failed, e))?;
            Ok(ConsoleCollected {
                bytes: cut as u64,
                truncated: cut < bytes.len(),
            })
        })
    }

    fn session_files_owner(&self, _session_uid: u32) -> u32 {
        // As rootless: the daemon's own uid, so tests need no privileges.
        nix::unistd::geteuid().as_raw()
    }

    fn unenforced(&self, _limit: Limit) -> Option<String> {
        None
    }

    fn control_surface(
        &self,
        daemon: &super::surface::DaemonFolders,
    ) -> Vec<super::surface::Guarded> {
        vec![super::surface::Guarded {
            what: "state dir",
            path: daemon.state.clone(),
            why: "it holds every session's credentials and work folder",
        }]
    }

    fn host_report(&self) -> std::io::Result<Vec<u8>> {
        Ok(b"{}\n".to_vec())
    }
}
