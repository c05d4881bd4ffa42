//! Sessions with `egress` (issue 19): the glue between a session's life
//! and its proxy. Before the container runs, the port and the policy are
//! written to `<work>/egress.json` (the proxy variables go into the
//! container's environment); once it runs (the runtime reports its
//! namespaces: `runtime::Namespaces`), before the start gate opens, the
//! listening socket is placed in its network namespace and served; when
//! the session ends, before its record is sealed, the proxy stops.
//!
//! After a restart, every running session with an `egress.json` gets its
//! listener back on the same port with the policy it started with (a
//! profile edited since changes nothing for it), appending to the same
//! `egress.jsonl`. If the port is taken in its namespace, nothing else is
//! opened: the session runs on with no way out, and its status says so.
//!
//! The port is below 1024: the session's user has no capability, so it can
//! never bind it, even while a restarting daemon has no listener there.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::desired::{Credential, EgressPolicy, PROXY_VARS};
use crate::egress::Observer;
use crate::egress::log::EgressLog;
use crate::egress::netns::{self, NetnsError, Placement};
use crate::egress::proxy::{self, Hub, Limits, Running};
use crate::observed::{ContainerState, Phase};
use crate::runtime::Namespaces;

/// The proxy's port in every session's namespace.
pub const PROXY_PORT: u16 = 880;

// A port the session's user (no capabilities) cannot bind.
const _: () = assert!(PROXY_PORT < 1024);

/// The work folder's record of a session's proxy.
const STATE_FILE: &str = "egress.json";

/// The record's file, in the daemon's part of it.
pub const LOG_FILE: &str = "agentd/egress.jsonl";

/// What a session's proxy is, kept for a restart.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Persisted {
    port: u16,
    policy: EgressPolicy,
    /// The injected credentials (issue 21): names and sources, never values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inject: Vec<Credential>,
}

/// Why a session's proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot read {path}: {source}")]
    State { path: PathBuf, source: io::Error },
    #[error("the runtime cannot reach into this session's namespaces")]
    Unreachable,
    #[error(transparent)]
    Place(#[from] NetnsError),
    #[error("cannot open {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot serve the proxy's socket: {0}")]
    Serve(io::Error),
    #[error(transparent)]
    Inject(#[from] super::session_inject::InjectSetupError),
}

impl EgressError {
    pub fn is_port_taken(&self) -> bool {
        matches!(self, EgressError::Place(e) if e.is_port_taken())
    }
    /// The container (its process) is gone: nothing to serve.
    pub fn is_gone(&self) -> bool {
        matches!(self, EgressError::Place(e) if e.is_gone())
    }
}

/// The daemon's running proxies, by request.
pub struct SessionEgress {
    hub: Arc<Hub>,
    running: Mutex<BTreeMap<String, Running>>,
    /// The TLS material of interceptions (issue 21), made at first use.
    pub tls: super::session_inject::TlsCell,
}

impl Default for SessionEgress {
    fn default() -> SessionEgress {
        SessionEgress::new(1)
    }
}

impl SessionEgress {
    /// The proxies of a daemon running up to `max_sessions` at once. They
    /// get at most half of its descriptor limit (and never more than the
    /// default budget), so its own git and podman never meet `EMFILE`
    /// because of an agent, and one session at most its fair part of that
    /// (so a session's flood leaves the others theirs). The limit is left
    /// as it is (the units raise it): raising it here would raise it for
    /// every child too.
    pub fn new(max_sessions: u32) -> SessionEgress {
        let limits = budget(nofile(), max_sessions);
        tracing::debug!(
            nofile = nofile(),
            descriptors = limits.descriptors,
            session_descriptors = limits.session_descriptors,
            "egress proxy descriptor budget"
        );
        SessionEgress {
            hub: Hub::new(limits),
            running: Mutex::default(),
            tls: Default::default(),
        }
    }

    /// With the daemon's CA kept in `ca_dir` and the operator's CA file
    /// (`--egress-ca-file`), for sessions with injected credentials.
    pub fn with_inject(mut self, ca_dir: PathBuf, ca_file: Option<PathBuf>) -> SessionEgress {
        self.tls = super::session_inject::TlsCell::new(ca_dir, ca_file);
        self
    }

    /// The variables announcing the proxy to the session (and lower-case).
    pub fn env(port: u16) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{port}");
        let mut env = Vec::new();
        for var in PROXY_VARS {
            let value = if var == "NO_PROXY" {
                "localhost,127.0.0.1,::1".to_string()
            } else {
                url.clone()
            };
            env.push((var.to_string(), value.clone()));
            env.push((var.to_ascii_lowercase(), value));
        }
        env
    }

    /// Before the container runs: keep the port, the policy and the
    /// injected credentials (their sources) in the work folder. Returns
    /// the port.
    pub fn prepare(
        work_root: &Path,
        policy: &EgressPolicy,
        credentials: &[Credential],
    ) -> io::Result<u16> {
        let state = Persisted {
            port: PROXY_PORT,
            policy: policy.clone(),
            inject: super::session_inject::injected(credentials),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(io::Error::other)?;
        write_state(&work_root.join(STATE_FILE), &bytes)?;
        Ok(PROXY_PORT)
    }

    /// Place and serve the proxy of `request`'s session, if it has one
    /// (`Ok(false)` when not) and it is not served yet: after the container
    /// runs, before the gate opens, and again after a restart. `namespaces`
    /// are the container's, as the runtime reports them.
    pub async fn serve(
        &self,
        request: &str,
        work_root: &Path,
        record_dir: &Path,
        namespaces: Option<Namespaces>,
        observer: Arc<dyn Observer>,
    ) -> Result<bool, EgressError> {
        let Some(state) = read_state(work_root)? else {
            return Ok(false);
        };
        if super::lock(&self.running).contains_key(request) {
            return Ok(true);
        }
        let ns = namespaces.ok_or(EgressError::Unreachable)?;
        // The values are read now, into memory only; a source that fails
        // fails the start (or leaves an adopted session with no way out).
        let env = |name: &str| std::env::var(name).ok();
        let inject = super::session_inject::injecting(&self.tls, work_root, &state.inject, |c| {
            super::secrets::read(&format!("credential `{}`", c.name), &c.source, &env)
                .map_err(|e| e.to_string())
        })?;
        let placement = Placement::for_daemon(ns.own_user_namespace);
        let log_path = record_dir.join(LOG_FILE);
        let log = tokio::task::spawn_blocking({
            let p = log_path.clone();
            move || EgressLog::open(&p)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|source| EgressError::Log {
            path: log_path,
            source,
        })?;
        let began = std::time::Instant::now();
        let listener = netns::listen_in(ns.pid, state.port, &placement).await?;
        let place_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let running = proxy::serve(
            &self.hub,
            listener,
            state.policy,
            Arc::new(log),
            observer,
            inject.map(|i| i as Arc<dyn crate::egress::proxy::Interception>),
        )
        .map_err(EgressError::Serve)?;
        super::lock(&self.running).insert(request.to_string(), running);
        tracing::info!(
            request,
            port = state.port,
            place_ms,
            "egress proxy serving the session"
        );
        Ok(true)
    }

    /// Stop `request`'s proxy (if any) and flush its log: before the
    /// record is sealed. Idempotent.
    pub async fn stop(&self, request: &str) {
        let running = super::lock(&self.running).remove(request);
        if let Some(r) = running {
            let began = std::time::Instant::now();
            r.stop().await;
            let stop_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::debug!(request, stop_ms, "egress proxy stopped");
        }
    }
}

/// The session's `egress.json`; `None` when it has none (no `egress`).
fn read_state(work_root: &Path) -> Result<Option<Persisted>, EgressError> {
    let path = work_root.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| EgressError::State {
                path,
                source: io::Error::other(e),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EgressError::State { path, source }),
    }
}

/// Write `egress.json` whole (a temp file renamed over it), without
/// `fsync`: only a daemon restarted on a host that stayed up reads it (a
/// power loss ends the container too), and the start's critical path
/// should not wait for the disk. The work folder is the daemon's own.
fn write_state(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The proxies' bounds for a descriptor limit of `nofile` and up to
/// `max_sessions` sessions: half the limit, at most the default budget;
/// each session at most its part of it, at most the default share, and
/// never less than its connections need without pipes (two each, and the
/// one the accept loop holds).
fn budget(nofile: u64, max_sessions: u32) -> Limits {
    let mut limits = Limits::default();
    limits.descriptors = limits
        .descriptors
        .min(usize::try_from(nofile / 2).unwrap_or(usize::MAX))
        .max(16);
    let sessions = usize::try_from(max_sessions.max(1)).unwrap_or(1);
    let without_pipes = 2 * limits.per_session + 1;
    limits.session_descriptors = (limits.descriptors / sessions)
        .min(limits.session_descriptors)
        .max(without_pipes);
    limits
}

/// The soft `RLIMIT_NOFILE` (1024 when it cannot be read).
fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// After `request`'s container runs, before its gate opens: serve its
/// proxy (the start fails if it cannot). `Ok(false)`: no `egress`.
pub async fn start(
    sh: &super::Shared,
    request: &str,
    profile: &str,
    session_id: &str,
    record_dir: &Path,
    namespaces: Option<Namespaces>,
) -> Result<bool, EgressError> {
    let work = sh.settings.work_dir(session_id);
    let observer = sh.metrics.egress_observer(profile);
    sh.egress
        .serve(request, &work, record_dir, namespaces, observer)
        .await
}

/// At start-up: put back the proxy of every running session that has one.
/// A port taken in the session's namespace fails closed (the session goes
/// on with no way out; its status says why); a container gone meanwhile is
/// the finish's business.
pub async fn reopen(sh: &super::Shared) {
    let running: Vec<(String, String, String, PathBuf)> = super::lock(&sh.store)
        .all()
        .values()
        .filter(|s| s.phase == Phase::Running)
        .filter_map(|s| {
            Some((
                s.request.clone(),
                s.profile.clone(),
                s.session_id.clone()?,
                s.audit_dir.clone()?,
            ))
        })
        .collect();
    for (request, profile, sid, audit_dir) in running {
        // Only a container Podman lists as running: the pid file of one
        // that ended while the daemon was down may name a recycled pid.
        let live = super::lock(&sh.containers)
            .by_request
            .get(&request)
            .is_some_and(|c| c.state == crate::observed::ContainerState::Running);
        if live {
            adopt(sh, &request, &profile, &sid, &audit_dir).await;
        }
    }
}

/// Put back one session's proxy after a restart; `false` when a failure
/// other than a taken port or a gone container should be retried. Only a
/// container the runtime sees running now is reached into, through the
/// namespaces it reports now (a pid remembered from before may have been
/// recycled since).
pub async fn adopt(
    sh: &super::Shared,
    request: &str,
    profile: &str,
    session_id: &str,
    audit_dir: &Path,
) -> bool {
    let work = sh.settings.work_dir(session_id);
    if !work.join(STATE_FILE).exists() {
        return true;
    }
    let name = super::lock(&sh.containers)
        .by_request
        .get(request)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| sh.settings.container_name(request));
    let info = match sh.runtime.inspect(&name).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(request, error = %e, "cannot look at the session's container to put its egress proxy back");
            return false;
        }
    };
    let Some(info) = info.filter(|i| i.state == ContainerState::Running) else {
        tracing::debug!(
            request,
            "no egress proxy to put back: the container is not running"
        );
        return true;
    };
    let observer = sh.metrics.egress_observer(profile);
    match sh
        .egress
        .serve(request, &work, audit_dir, info.namespaces, observer)
        .await
    {
        Ok(_) => true,
        Err(e) if e.is_gone() => {
            tracing::debug!(request, error = %e, "no egress proxy to put back: the container is gone");
            true
        }
        Err(e) => {
            tracing::warn!(request, error = %e, "egress proxy not put back; the session has no way out");
            let msg = format!(
                "egress: the proxy could not come back after a restart: {e}; the session runs on with no way out"
            );
            sh.update_status(request, |s| s.message = Some(msg));
            e.is_port_taken()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_gets_its_part_of_the_descriptor_budget_issue_19() {
        let units = budget(65536, 4);
        assert_eq!((units.descriptors, units.session_descriptors), (4096, 385));
        let shell = budget(1024, 4);
        assert_eq!((shell.descriptors, shell.session_descriptors), (512, 129));
        let many = budget(65536, 64);
        assert_eq!((many.descriptors, many.session_descriptors), (4096, 129));
        let tiny = budget(20, 1000);
        assert_eq!((tiny.descriptors, tiny.session_descriptors), (16, 129));
    }

    #[test]
    fn the_session_sees_the_proxy_in_every_variable_and_its_loopback_direct_issue_19() {
        let env: BTreeMap<String, String> = SessionEgress::env(880).into_iter().collect();
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            assert_eq!(env[var], "http://127.0.0.1:880", "{var}");
        }
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1,::1");
        assert_eq!(env.len(), 8);
    }
}
