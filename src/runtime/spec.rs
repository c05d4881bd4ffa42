//! A prepared session, as the runtime is asked to run it: plain data, in
//! the reconciler's terms. How a backend expresses it (Podman: the
//! `podman run` argv in `podman/args.rs`) is the backend's business.
//!
//! Secrets never appear here: credential values reach the session through
//! a file mounted into the container (see `execute::secrets`). A runtime
//! secret is named (never its value) and mounted as a file.

use std::path::PathBuf;

use crate::desired::Network;

/// Everything the runtime needs to run one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    /// The container's name (unique per instance and request).
    pub name: String,
    pub image: String,
    /// Whose container it is, put on it so a restarted daemon recognises it.
    pub identity: Identity,
    /// Numeric uid and gid the command runs as.
    pub uid: u32,
    pub gid: u32,
    /// User name (the profile) and home folder for the passwd entry.
    pub user: String,
    pub home: String,
    pub workdir: String,
    /// Plain environment; never secret values.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    /// Runtime secrets mounted as files, owned by `uid`, mode 0400.
    pub secrets: Vec<SecretMount>,
    /// A host folder private to the daemon, outside every mount of the
    /// session, where the runtime keeps its own files of this session (its
    /// console capture); it goes when the session ends.
    pub runtime_dir: PathBuf,
    /// Bound on the console capture kept while the session runs, so a
    /// runaway agent cannot fill the host disk.
    pub console_max_bytes: Option<u64>,
    pub network: Network,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// argv inside the container.
    pub command: Vec<String>,
}

/// Whose container it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// This daemon's identity on shared runtime resources.
    pub instance: String,
    pub session_id: String,
    pub profile: String,
    pub request: String,
    /// Unix millisecond after which the session is timed out.
    pub deadline: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A runtime secret the operator created, mounted read-only at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub secret: String,
    pub target: String,
}
