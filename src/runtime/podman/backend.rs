//! `runtime::Runtime` for Podman: each verb as the podman calls (and the
//! knowledge in `known.rs`) that carry it out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Podman, RunSpec, console, ended, events, exits, json, labels, surface};
use crate::observed::{Container, ContainerState};
use crate::runtime::{
    Call, Changes, ConsoleCollected, ContainerInfo, ErrorKind, Limit, RunningSession, Runtime,
    RuntimeError, SessionSpec,
};
use crate::sync::lock;

/// The pid in a `--pidfile` file, if any.
fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|p| *p > 0)
}

impl Runtime for Podman {
    fn run<'a>(&'a self, spec: &'a SessionSpec) -> Call<'a, RunningSession> {
        Box::pin(async move {
            let mut run = RunSpec::for_session(spec, self.rootless());
            run.remove_on_exit = self.removes_sessions(spec);
            console::prepare(&spec.runtime_dir).map_err(|e| {
                RuntimeError::new(
                    ErrorKind::Failed,
                    format!("cannot create the console capture: {e}"),
                )
            })?;
            if run.remove_on_exit {
                // Before the container exists: a daemon killed while
                // `podman run` runs still finds its end (`ended.rs`).
                let pending = ended::Recorded {
                    id: String::new(),
                    created_after: Some(jiff::Timestamp::now().as_millisecond()),
                    image_id: None,
                    image_digest: None,
                    removes_itself: true,
                };
                if let Err(e) = pending.write(&spec.runtime_dir) {
                    tracing::warn!(container = %spec.name, error = %e, "cannot record the container of a session");
                }
            }
            // The image is learned beside `podman run`, off the session's
            // critical path (`known.rs`).
            // A session with a memory limit records no image (below), so
            // its start asks nothing.
            let learn = async {
                match spec.memory {
                    None => self.learn_image(&spec.image).await,
                    Some(_) => None,
                }
            };
            let (ran, image) = tokio::join!(self.run_container(&run), learn);
            let id = ran.map_err(|e| self.run_error(e, spec))?;
            // Recorded only if no tag can have moved while `podman run`
            // resolved the name. A session with a memory limit records
            // nothing: whether the kernel killed one of its processes for
            // memory only Podman knows, so its end asks `container inspect`.
            let mut image = image
                .filter(|(stamp, _)| self.images_stamp() == Some(*stamp))
                .map(|(_, info)| info);
            if run.remove_on_exit && image.is_none() {
                // The image store changed while it started (or the image is
                // new): ask the container now, while it waits at its gate;
                // once it exited it is gone, and its image with it.
                image = self.image_of(&id).await;
            }
            lock(&self.known).ran(
                &spec.name,
                &id,
                image.clone(),
                run.pid_file.clone(),
                spec.identity.deadline,
            );
            if run.remove_on_exit {
                lock(&self.known).removes_itself(&spec.name);
            }
            // Read only for a container that removes itself (`ended.rs`):
            // the others stay until the daemon removes them.
            if run.remove_on_exit {
                let record = ended::Recorded {
                    id: id.clone(),
                    created_after: None,
                    image_id: image.as_ref().map(|i| i.id.clone()),
                    image_digest: image.and_then(|i| i.digest),
                    removes_itself: true,
                };
                if let Err(e) = record.write(&spec.runtime_dir) {
                    // Only a restarted daemon needs it; without it, a session
                    // whose container exited meanwhile ends as disappeared.
                    tracing::warn!(container = %spec.name, error = %e, "cannot record the container of a session");
                }
            }
            Ok(RunningSession {
                id,
                namespaces: self.namespaces_of(read_pid(&run.pid_file)),
            })
        })
    }

    fn stop<'a>(&'a self, name: &'a str, grace: Duration) -> Call<'a, ()> {
        Box::pin(async move {
            let args = [
                "stop".into(),
                format!("--time={}", grace.as_secs()),
                name.into(),
            ];
            match self.call(&args, self.timeout + grace).await {
                Err(e) if e.is_no_such_container() => Ok(()),
                r => r.map(drop).map_err(Into::into),
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            let args = [
                "rm".into(),
                "--force".into(),
                "--time=0".into(),
                name.into(),
            ];
            match self.call(&args, self.timeout).await {
                Err(e) if e.is_no_such_container() => {}
                r => r.map(drop)?,
            }
            lock(&self.known).forget(name);
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, name: &'a str) -> Call<'a, Option<ContainerInfo>> {
        Box::pin(async move {
            let certain = lock(&self.known).certain_exit(name, jiff::Timestamp::now());
            if let Some(info) = certain {
                tracing::debug!(container = name, "exit and image known; podman not asked");
                return Ok(Some(info));
            }
            let Some(i) = self.inspect_container(name).await? else {
                // Gone: a container that removed itself after an exit we
                // saw is answered from that exit (`known.rs`).
                let mut known = lock(&self.known);
                if let Some(info) = known.gone_exit(name) {
                    tracing::debug!(container = name, "removed itself; its exit as seen");
                    return Ok(Some(info));
                }
                known.forget(name);
                return Ok(None);
            };
            let running = i.state == ContainerState::Running;
            Ok(Some(ContainerInfo {
                id: i.id,
                state: i.state,
                exit_code: i.exit_code,
                image: crate::runtime::ImageIdentity {
                    id: i.image_id,
                    digest: i.image_digest,
                },
                started_at: i.started_at,
                finished_at: i.finished_at,
                oom_killed: i.oom_killed,
                deadline: i.deadline,
                namespaces: self.namespaces_of(i.pid.filter(|_| running)),
                removes_itself: i.auto_remove,
            }))
        })
    }

    fn ended<'a>(
        &'a self,
        name: &'a str,
        session_dir: &'a Path,
    ) -> Call<'a, Option<ContainerInfo>> {
        // An exit this daemon saw is answered by `inspect` already.
        Box::pin(async move { Ok(self.ended_from_log(name, session_dir).await?) })
    }

    fn list(&self) -> Call<'_, Vec<Container>> {
        Box::pin(async move {
            let args = [
                "ps".into(),
                "--all".into(),
                "--format=json".into(),
                format!("--filter=label={}={}", labels::INSTANCE, self.instance),
            ];
            let out = self.call(&args, self.timeout).await?;
            let listing = json::parse_ps(&out)?;
            let mut known = lock(&self.known);
            for c in &listing {
                if let ContainerState::Exited(code) = c.state {
                    known.exited(&c.id, Some(code), false);
                }
            }
            Ok(listing)
        })
    }

    fn changes(&self) -> Changes {
        let (tx, rx) = mpsc::channel(256);
        let mut tasks = vec![tokio::spawn(events::follow(
            self.program.clone(),
            self.instance.clone(),
            Arc::clone(&self.known),
            tx.clone(),
        ))];
        tasks.extend(exits::follow(Arc::clone(&self.known), tx));
        Changes::new(rx, tasks)
    }

    fn secret_exists<'a>(&'a self, name: &'a str) -> Call<'a, bool> {
        Box::pin(async move {
            // `podman secret inspect` (Podman 4.3 has no `secret exists`).
            // Only its metadata is read: Podman 4.3 cannot show a secret's
            // value, and agentd never asks.
            let args = [
                "secret".into(),
                "inspect".into(),
                "--format={{.ID}}".into(),
                name.into(),
            ];
            match self.call(&args, self.timeout).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_no_such_secret() => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn collect_console<'a>(
        &'a self,
        session_dir: &'a Path,
        dest: &'a Path,
        cap: u64,
    ) -> Call<'a, ConsoleCollected> {
        let (src, dest) = (session_dir.to_path_buf(), dest.to_path_buf());
        Box::pin(async move {
            let collected = tokio::task::spawn_blocking(move || console::collect(&src, &dest, cap))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match collected {
                Ok((bytes, truncated)) => Ok(ConsoleCollected { bytes, truncated }),
                Err(e) => Err(RuntimeError::new(ErrorKind::Failed, e)),
            }
        })
    }

    fn session_files_owner(&self, session_uid: u32) -> u32 {
        // Rootful Podman maps the session uid 1:1; rootless, keep-id shows
        // the daemon's own uid inside as the session uid, so the daemon
        // takes the files back without `CAP_CHOWN`.
        if self.rootless() {
            nix::unistd::geteuid().as_raw()
        } else {
            session_uid
        }
    }

    fn unenforced(&self, limit: Limit) -> Option<String> {
        self.host.get().and_then(|h| h.why_not_enforced(limit))
    }

    fn control_surface(
        &self,
        daemon: &crate::runtime::surface::DaemonFolders,
    ) -> Vec<crate::runtime::surface::Guarded> {
        let host = self.host.get().cloned().unwrap_or_default();
        surface::surface(&surface::Inputs::of(daemon), &host)
    }

    fn host_report(&self) -> std::io::Result<Vec<u8>> {
        let host = self
            .host
            .get()
            .ok_or_else(|| std::io::Error::other("podman info was not asked yet"))?;
        crate::fsutil::json_pretty(host)
    }
}
