//! `podman events` as a stream. Events only wake the reconcile loop; the
//! state itself is re-read from `podman ps`/`inspect`, so a lost or
//! misparsed event costs latency, never correctness.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::known::Known;
use super::{PodmanError, labels};
use crate::runtime::{Change, What};
use crate::sync::lock;

/// One container event of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `create`, `start`, `died`, `remove`, ...
    pub status: String,
    pub id: String,
    pub name: String,
    pub request: Option<String>,
    pub session_id: Option<String>,
    /// Unix ms, from the deadline label.
    pub deadline: Option<i64>,
    /// On `died` (Podman leaves out a code of 0: `Some(0)` then).
    pub exit_code: Option<i32>,
    /// When Podman recorded it (the event's own time).
    pub time: Option<jiff::Timestamp>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "ContainerExitCode")]
    exit_code: Option<i32>,
    #[serde(rename = "Time", default)]
    time: String,
    #[serde(rename = "Attributes", default)]
    attributes: BTreeMap<String, String>,
}

/// Parse one line of `podman events --format json`.
pub fn parse_event(line: &str) -> Option<ContainerEvent> {
    let raw: Raw = serde_json::from_str(line).ok()?;
    (raw.kind == "container").then(|| ContainerEvent {
        request: raw.attributes.get(labels::REQUEST).cloned(),
        session_id: raw.attributes.get(labels::SESSION).cloned(),
        deadline: raw
            .attributes
            .get(labels::DEADLINE)
            .and_then(|d| d.parse().ok()),
        // Podman 4.3 omits a zero `ContainerExitCode` from the JSON.
        exit_code: raw
            .exit_code
            .or_else(|| (raw.status == "died").then_some(0)),
        time: raw.time.parse().ok(),
        id: raw.id,
        status: raw.status,
        name: raw.name,
    })
}

/// The change an event reports, in the runtime's terms.
pub fn change_of(ev: ContainerEvent) -> Change {
    let what = match ev.status.as_str() {
        "create" => What::Created,
        "start" => What::Started,
        "died" => What::Exited(ev.exit_code),
        "remove" => What::Removed,
        _ => What::Other,
    };
    Change::Container {
        id: ev.id,
        name: ev.name,
        request: ev.request,
        session_id: ev.session_id,
        deadline: ev.deadline,
        what,
    }
}

/// A `podman events` child outlives a daemon killed with SIGKILL unless the
/// kernel kills it: `PR_SET_PDEATHSIG`. That signal fires when the *thread*
/// that forked the child exits, not the process, and the async runtime's
/// threads come and go (a worker handed over by `block_in_place`, blocking
/// threads idle for 10 s). So the child is forked from one thread made for
/// it that never exits: it blocks on a channel whose sender lives in a
/// static, so it lives exactly as long as the daemon's process.
fn spawn_tied_to_daemon(
    mut cmd: Command,
) -> impl Future<Output = std::io::Result<Child>> + Send + 'static {
    type Job = (
        Command,
        tokio::runtime::Handle,
        tokio::sync::oneshot::Sender<std::io::Result<Child>>,
    );
    static SPAWNER: OnceLock<std::io::Result<std_mpsc::Sender<Job>>> = OnceLock::new();
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes two raw syscalls
    // (prctl(PR_SET_PDEATHSIG) and getppid) and on failure builds an
    // io::Error from an errno, which does not allocate; it takes no lock and
    // touches no shared state (`parent` is a copied integer).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The daemon may have died between fork and prctl: then the
            // signal will never come, and the child was re-parented.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let queued = match SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("agentd-spawner".into())
            .spawn(move || {
                for (mut cmd, rt, reply) in rx {
                    // Spawning registers the child with the runtime's reaper.
                    let _in_runtime = rt.enter();
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    }) {
        Ok(tx) => tx
            .send((cmd, tokio::runtime::Handle::current(), reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone")),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot start the spawner thread: {e}"),
        )),
    };
    async move {
        queued?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

/// A running `podman events` process.
pub struct EventStream {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl EventStream {
    /// Start `podman events` for this instance. The child dies with the
    /// daemon, even on SIGKILL (see `spawn_tied_to_daemon`).
    pub async fn spawn(program: &str, instance: &str) -> Result<EventStream, PodmanError> {
        let mut cmd = Command::new(program);
        super::scrub_env(&mut cmd);
        cmd.args(["events", "--format=json"])
            .arg(format!("--filter=label={}={instance}", labels::INSTANCE))
            .arg("--filter=type=container")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = spawn_tied_to_daemon(cmd)
            .await
            .map_err(|source| PodmanError::Spawn {
                program: program.into(),
                source,
            })?;
        let stdout = child.stdout.take().ok_or_else(|| PodmanError::Parse {
            verb: "events".into(),
            reason: "no stdout".into(),
        })?;
        Ok(EventStream {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next container event; `None` when the process ended (the caller
    /// restarts it and resyncs).
    pub async fn next(&mut self) -> Option<ContainerEvent> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(ev) = parse_event(&line) {
                        return Some(ev);
                    }
                }
                _ => {
                    let _ = self.child.start_kill();
                    return None;
                }
            }
        }
    }
}

/// Follow `podman events` of this instance into `tx`, recording exits
/// (`known.rs`); restart the stream whenever it ends, and send
/// `Change::Resync` after each restart (events may have been lost).
pub async fn follow(
    program: String,
    instance: String,
    known: Arc<Mutex<Known>>,
    tx: mpsc::Sender<Change>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match EventStream::spawn(&program, &instance).await {
            Ok(mut stream) => {
                while let Some(ev) = stream.next().await {
                    backoff = Duration::from_millis(500);
                    if ev.status == "died" {
                        lock(&known).exited_at(&ev.id, ev.exit_code, ev.time, true);
                    }
                    if tx.send(change_of(ev)).await.is_err() {
                        return;
                    }
                }
                tracing::warn!("podman events stream ended; restarting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow podman events"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if tx.send(Change::Resync).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn died_event_of_podman_4_3() {
        let line = r#"{"ContainerExitCode":3,"ID":"6f5a","Image":"localhost/x","Name":"agentd-x-r1","Status":"died","Time":"2026-11-22T08:50:36.121641452Z","Type":"container","Attributes":{"io.agentd.request":"r1"}}"#;
        let ev = parse_event(line).expect("parses");
        assert_eq!(
            ev,
            ContainerEvent {
                status: "died".into(),
                id: "6f5a".into(),
                name: "agentd-x-r1".into(),
                request: Some("r1".into()),
                session_id: None,
                deadline: None,
                exit_code: Some(3),
                time: "2026-11-22T08:50:36.121641452Z".parse().ok(),
            }
        );
        assert_eq!(parse_event("garbage"), None);
        assert_eq!(parse_event(r#"{"Type":"image","Status":"pull"}"#), None);
    }

    #[test]
    fn a_died_event_without_a_code_is_an_exit_0_issue_18() {
        // Podman 4.3 leaves a zero `ContainerExitCode` out of the JSON.
        let line = r#"{"ID":"6f5a","Image":"localhost/x","Name":"agentd-x-r1","Status":"died","Time":"2026-12-07T09:18:40.193480678Z","Type":"container","Attributes":{}}"#;
        let ev = parse_event(line).expect("parses");
        assert_eq!(ev.exit_code, Some(0));
        assert_eq!(ev.time, "2026-12-07T09:18:40.193480678Z".parse().ok());
        let start = line.replace("died", "start");
        assert_eq!(parse_event(&start).expect("parses").exit_code, None);
    }
}
