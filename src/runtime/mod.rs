//! The seam between the reconciler and a container runtime: the verbs
//! `execute` and `daemon` need, in terms of sessions and containers, never
//! of one runtime's command line. Podman (`podman/`) is the only backend;
//! ARCHITECTURE.md ("A second backend") maps each verb onto a cluster one.
//!
//! What a verb returns is plain data (`observed::Container`,
//! [`ContainerInfo`], [`Change`]); what goes wrong is a [`RuntimeError`]
//! whose [`ErrorKind`] says what the caller does next. The runtime records
//! its calls into a [`CallObserver`] it is handed (the metrics), never into
//! a global.

mod error;
#[cfg(test)]
pub mod fake;
pub mod podman;
mod spec;
pub mod surface;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

pub use error::{ErrorKind, RuntimeError};
pub use spec::{BindMount, Identity, SecretMount, SessionSpec};

use crate::observed::{Container, ContainerState};

/// The future a verb returns: boxed, so backends can sit behind
/// `Arc<dyn Runtime>` (a call costs a process or a round trip; the box is
/// noise beside it).
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;

/// What the reconciler asks of a container runtime. Every verb is
/// idempotent where the world allows it: stopping or removing a container
/// that is gone succeeds, inspecting one is `None`.
pub trait Runtime: Send + Sync {
    /// Create and start the container of a prepared session (its command
    /// waits at its start gate until the daemon opens it).
    fn run<'a>(&'a self, spec: &'a SessionSpec) -> Call<'a, RunningSession>;

    /// Stop a container: SIGTERM, then SIGKILL after `grace`.
    fn stop<'a>(&'a self, name: &'a str, grace: Duration) -> Call<'a, ()>;

    /// Remove a container, forcibly (it may still run).
    fn remove<'a>(&'a self, name: &'a str) -> Call<'a, ()>;

    /// State, exit, image identity and deadline of a container; `None`
    /// when it does not exist. A backend may answer without a round trip
    /// when what it already knows is certain (Podman: `podman/known.rs`),
    /// and for a container that removed itself after an exit it saw.
    fn inspect<'a>(&'a self, name: &'a str) -> Call<'a, Option<ContainerInfo>>;

    /// How the session's container `name` ended, when it is gone because
    /// it removed itself ([`ContainerInfo::removes_itself`]): from what the
    /// runtime recorded of it, for a daemon that was not there to see the
    /// exit (a restart). `session_dir` is the session's runtime folder as
    /// given to `run`. `None` when nothing recorded says how it ended (or
    /// it was not a container that removes itself).
    fn ended<'a>(&'a self, name: &'a str, session_dir: &'a Path)
    -> Call<'a, Option<ContainerInfo>>;

    /// Every container of this daemon's instance.
    fn list(&self) -> Call<'_, Vec<Container>>;

    /// Changes of this instance's containers, exits included, for as long
    /// as the returned stream is kept. Each change is a hint to look again;
    /// [`Change::Resync`] says changes may have been lost.
    fn changes(&self) -> Changes;

    /// Whether the secret `name` the operator created in the runtime
    /// exists (its value is never read).
    fn secret_exists<'a>(&'a self, name: &'a str) -> Call<'a, bool>;

    /// Copy the console output of the session whose runtime folder is
    /// `session_dir` into `dest` as the plain bytes it printed, cut at
    /// `cap` bytes with a marker (the audit record's `console.log`).
    fn collect_console<'a>(
        &'a self,
        session_dir: &'a Path,
        dest: &'a Path,
        cap: u64,
    ) -> Call<'a, ConsoleCollected>;

    /// The host uid that owns a session's files (home, clone, credentials,
    /// record) while it runs as `session_uid` inside.
    fn session_files_owner(&self, session_uid: u32) -> u32;

    /// Why a profile limit would not be enforced here (a `start_failed`
    /// message naming the field), `None` when it would be.
    fn unenforced(&self, limit: Limit) -> Option<String>;

    /// Every host path no session may see through a mount, most specific
    /// reasons first: the daemon's folders, then the runtime's own (its
    /// storage, sockets, credentials, configuration).
    fn control_surface(&self, daemon: &surface::DaemonFolders) -> Vec<surface::Guarded>;

    /// What `agentd status` shows of the runtime's host: the JSON document
    /// of `<state>/host.json`.
    fn host_report(&self) -> std::io::Result<Vec<u8>>;
}

/// A container the runtime started for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningSession {
    /// The runtime's id of the container.
    pub id: String,
    /// How to reach into the container's namespaces before its gate opens
    /// (the egress listener); `None` when this host cannot.
    pub namespaces: Option<Namespaces>,
}

/// What identifies a session container's namespaces on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// The container's first process, as the host sees it
    /// (`/proc/<pid>/ns/net` is its network namespace).
    pub pid: u32,
    /// The container has a user namespace of its own, which a process of
    /// the daemon's user must enter before any other of its namespaces
    /// (rootless); `false` when the daemon is root on the host.
    pub own_user_namespace: bool,
}

/// What finishing a session needs to know of its container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub state: ContainerState,
    pub exit_code: i32,
    /// The image the container ran.
    pub image: ImageIdentity,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub oom_killed: bool,
    /// The session deadline (unix ms) the container carries.
    pub deadline: Option<i64>,
    /// Its namespaces, while it runs.
    pub namespaces: Option<Namespaces>,
    /// The runtime removes the container itself once it has exited (the
    /// end of a session then runs no removal of its own).
    pub removes_itself: bool,
}

/// Which image a container ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageIdentity {
    /// The image id (sha256 of its config).
    pub id: String,
    /// The manifest digest, when the runtime knows it.
    pub digest: Option<String>,
}

/// The result of [`Runtime::collect_console`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleCollected {
    pub bytes: u64,
    /// The output passed the cap and was cut.
    pub truncated: bool,
}

/// One change of one of this instance's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The runtime reported a change of a container it names fully.
    Container {
        id: String,
        name: String,
        request: Option<String>,
        session_id: Option<String>,
        /// Unix ms, the session's deadline.
        deadline: Option<i64>,
        what: What,
    },
    /// A container exited, known by its id alone and early (before the
    /// runtime's own report); `code` when it could be read. Never proof:
    /// `inspect` decides.
    Exited { id: String, code: Option<i32> },
    /// Changes may have been lost (the source restarted): list again.
    Resync,
}

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Created,
    Started,
    /// Its process ended; the code when reported.
    Exited(Option<i32>),
    Removed,
    /// Anything else the runtime reports (nothing the table tracks).
    Other,
}

/// The stream of [`Change`]s; the runtime's followers stop when it is
/// dropped.
pub struct Changes {
    rx: mpsc::Receiver<Change>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Changes {
    pub fn new(rx: mpsc::Receiver<Change>, tasks: Vec<tokio::task::JoinHandle<()>>) -> Changes {
        Changes { rx, tasks }
    }

    /// The next change; `None` once every follower has ended.
    pub async fn next(&mut self) -> Option<Change> {
        self.rx.recv().await
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A profile limit and the cgroup controller that enforces it.
// `PidsLimit` is named after its profile field, `pids_limit`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Cpus,
    PidsLimit,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::Memory, Limit::Cpus, Limit::PidsLimit];

    /// The profile field.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Cpus => "cpus",
            Limit::PidsLimit => "pids_limit",
        }
    }

    /// The cgroup controller that enforces it.
    pub fn controller(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Cpus => "cpu",
            Limit::PidsLimit => "pids",
        }
    }
}

/// Told of every call a runtime makes (the metrics count them).
pub trait CallObserver: Send + Sync {
    /// One call of `verb` ended after `elapsed`; `ok` unless it failed.
    fn runtime_call(&self, verb: &str, ok: bool, elapsed: Duration);
}
