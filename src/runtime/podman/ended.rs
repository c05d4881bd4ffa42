//! The end of a session container that removed itself, for a daemon that
//! was not there to see it (issue 18 item 6).
//!
//! Session containers run with `--rm` (`backend.rs`): Podman's clean-up,
//! which conmon starts when the container's process ends, reads conmon's
//! exit file, records the `died` event (with the exit code), deletes the
//! exit file and removes the container. A running daemon learns the exit
//! as it happens, from the exit file or the event (`known.rs`). A daemon
//! that was not running then (killed, restarted) finds no container and
//! no exit file; it reads the exit from Podman's own record of it, the
//! event log (`podman events --stream=false`), where the `died` event
//! carries the code and its time.
//!
//! Which container: before `podman run`, `run` writes `container.json`
//! into the session's runtime folder, beside the pid file: that the
//! container removes itself, and the time before it was created; when
//! `podman run` returns, it adds the container's id and the image it ran.
//! The event log is searched for that id, so an earlier container of the
//! same name (a start tried again) is never taken for it. A daemon killed
//! while `podman run` ran (its container then adopted by the next one)
//! never learned the id: the container is the first one of that name
//! created after the recorded time (`create` events). An earlier container
//! of the name cannot be: a start runs a container only once it found
//! none of that name, and Podman records a container's exit before it
//! removes it.
//!
//! Trust: the runtime folder is the daemon's, outside every mount of the
//! session, and Podman's event log is outside every mount too (the control
//! surface: `/run/libpod`, the rootless user's runtime folder). The agent
//! chooses its exit code anyway (it can exit with any); it can write
//! neither record, so it can neither pass for another container, nor move
//! its end past or before its deadline, nor claim an exit while it runs
//! (this answer is asked only once Podman says the container is gone).
//!
//! What it cannot cover: Podman keeps the newest half of its event log
//! when the file passes `events_logfile_max_size` (1 MB by default, a few
//! hundred sessions of the whole host). An exit rotated away before the
//! daemon came back is not found, and the session ends as one whose
//! container disappeared (`generic_failure`, said in its message). With
//! `events_logger = "none"` Podman keeps no record, and sessions are not
//! run with `--rm` (`Podman::removes_sessions`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Podman, PodmanError, events};
use crate::observed::ContainerState;
use crate::runtime::{ContainerInfo, ImageIdentity};

/// What `run` records of a session's container (`container.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The container's id; empty until `podman run` returned.
    pub id: String,
    /// A time before the container was created (unix ms).
    #[serde(default)]
    pub created_after: Option<i64>,
    /// The image it was created from, when known at its start.
    pub image_id: Option<String>,
    pub image_digest: Option<String>,
    /// Run with `--rm`.
    pub removes_itself: bool,
}

impl Recorded {
    /// Write the record (not synced: it is needed after a restart of the
    /// daemon, which loses no written page, and a host that restarts ends
    /// every container anyway).
    pub fn write(&self, session_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let path = super::args::record_file(session_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    /// The record of the session whose runtime folder is `session_dir`, if
    /// it names a container id, or (written before `podman run`) the time
    /// before its container was created.
    pub fn read(session_dir: &Path) -> Option<Recorded> {
        let bytes = std::fs::read(super::args::record_file(session_dir)).ok()?;
        let r: Recorded = serde_json::from_slice(&bytes).ok()?;
        let named = is_container_id(&r.id) || (r.id.is_empty() && r.created_after.is_some());
        named.then_some(r)
    }

    fn image(&self) -> ImageIdentity {
        ImageIdentity {
            id: self.image_id.clone().unwrap_or_default(),
            digest: self.image_digest.clone(),
        }
    }
}

/// A full container id: 64 lowercase hex digits.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// PURE: the end of container `rec` (named `name`) from the lines of
/// `podman events --format=json` (in the log's order, any containers): its
/// last `died` event, with its `start` as the start. `None` without a
/// `died` event of that id. A record without an id (written before `podman
/// run`) names the first container `name` created after its time.
pub fn from_events(rec: &Recorded, name: &str, lines: &str) -> Option<ContainerInfo> {
    let events: Vec<_> = lines.lines().filter_map(events::parse_event).collect();
    let id = if rec.id.is_empty() {
        let after = rec.created_after?;
        events
            .iter()
            .find(|ev| {
                ev.status == "create"
                    && ev.name == name
                    && ev.time.is_some_and(|t| t.as_millisecond() >= after)
            })?
            .id
            .clone()
    } else {
        rec.id.clone()
    };
    let mut started = None;
    let mut died = None;
    for ev in events {
        if ev.id != id {
            continue;
        }
        match ev.status.as_str() {
            "start" => started = started.or(ev.time),
            "died" => died = Some(ev),
            _ => {}
        }
    }
    let died = died?;
    let code = died.exit_code.unwrap_or(0);
    Some(ContainerInfo {
        id,
        state: ContainerState::Exited(code),
        exit_code: code,
        image: rec.image(),
        // It ran: it died. Its start event may have been rotated away.
        started_at: started.or(died.time),
        finished_at: died.time,
        oom_killed: false,
        deadline: died.deadline,
        namespaces: None,
        removes_itself: true,
    })
}

impl Podman {
    /// The end of the session container `name` recorded in `session_dir`
    /// (see the module doc).
    pub(super) async fn ended_from_log(
        &self,
        name: &str,
        session_dir: &Path,
    ) -> Result<Option<ContainerInfo>, PodmanError> {
        let Some(rec) = Recorded::read(session_dir).filter(|r| r.removes_itself) else {
            return Ok(None);
        };
        // Bound what a journald backend reads: the container was made when
        // its record was written.
        let since = std::fs::metadata(super::args::record_file(session_dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
            .and_then(|t| t.checked_sub(jiff::SignedDuration::from_secs(300)).ok());
        // By id, or (no id recorded) by name: `from_events` picks the
        // container created after the record's time.
        let which = if rec.id.is_empty() { name } else { &rec.id };
        let mut args = vec![
            "events".to_string(),
            "--stream=false".into(),
            "--format=json".into(),
            format!("--filter=container={which}"),
        ];
        if let Some(t) = since {
            args.push(format!("--since={}", t.strftime("%Y-%m-%dT%H:%M:%SZ")));
        }
        let out = self.call(&args, self.timeout).await?;
        let found = from_events(&rec, name, &out);
        tracing::info!(
            container = name,
            id = found.as_ref().map_or("", |i| i.id.as_str()),
            exit_code = found.as_ref().map(|i| i.exit_code),
            "a container that removed itself: its exit read from podman's event log"
        );
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Recorded {
        Recorded {
            id: "a".repeat(64),
            created_after: Some(0),
            image_id: Some("0e25".into()),
            image_digest: None,
            removes_itself: true,
        }
    }

    fn line(id: &str, status: &str, extra: &str, time: &str) -> String {
        format!(
            r#"{{"ID":"{id}","Image":"localhost/x","Name":"agentd-i-r",{extra}"Status":"{status}","Time":"{time}","Type":"container","Attributes":{{"io.agentd.deadline":"1795337999000"}}}}"#
        )
    }

    #[test]
    fn the_died_event_of_the_recorded_container_is_its_end_issue_18() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let log = [
            // An earlier container of the same name: not this one.
            line(
                &b,
                "died",
                r#""ContainerExitCode":9,"#,
                "2026-12-07T09:00:00Z",
            ),
            line(&a, "create", "", "2026-12-07T09:00:01Z"),
            line(&a, "start", "", "2026-12-07T09:00:02Z"),
            line(
                &a,
                "died",
                r#""ContainerExitCode":5,"#,
                "2026-12-07T09:00:03Z",
            ),
            line(&a, "remove", "", "2026-12-07T09:00:04Z"),
            "garbage".to_string(),
        ]
        .join("\n");
        let i = from_events(&rec(), "agentd-i-r", &log).expect("found");
        assert_eq!((i.state, i.exit_code), (ContainerState::Exited(5), 5));
        assert_eq!(i.image.id, "0e25");
        assert_eq!(i.deadline, Some(1_795_337_999_000));
        assert_eq!(
            i.started_at,
            Some("2026-12-07T09:00:02Z".parse().expect("time"))
        );
        assert_eq!(
            i.finished_at,
            Some("2026-12-07T09:00:03Z".parse().expect("time"))
        );
        assert!(i.removes_itself && !i.oom_killed);
        // Podman leaves a zero code out.
        let ok = line(&a, "died", "", "2026-12-07T09:00:03Z");
        assert_eq!(
            from_events(&rec(), "agentd-i-r", &ok).map(|i| i.exit_code),
            Some(0)
        );
        // No `died` of that id (rotated away, another container's): none.
        assert_eq!(
            from_events(&rec(), "agentd-i-r", &log.replace(&a, &b)),
            None
        );
        assert_eq!(from_events(&rec(), "agentd-i-r", ""), None);
    }

    #[test]
    fn without_an_id_the_first_container_of_the_name_created_after_the_record_is_it_issue_18() {
        // The daemon died while `podman run` ran: the record has no id.
        let at = |t: &str| t.parse::<jiff::Timestamp>().expect("time").as_millisecond();
        let pending = Recorded {
            id: String::new(),
            created_after: Some(at("2026-12-07T09:00:01Z")),
            ..rec()
        };
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let other = |id: &str, status: &str, extra: &str, time: &str| {
            line(id, status, extra, time).replace("agentd-i-r", "agentd-i-other")
        };
        let log = [
            // An earlier container of the name, created before the record.
            line(&b, "create", "", "2026-12-07T09:00:00Z"),
            line(
                &b,
                "died",
                r#""ContainerExitCode":9,"#,
                "2026-12-07T09:00:00.5Z",
            ),
            // Another name, created after it.
            other(&c, "create", "", "2026-12-07T09:00:01.2Z"),
            line(&a, "create", "", "2026-12-07T09:00:01.5Z"),
            line(&a, "start", "", "2026-12-07T09:00:02Z"),
            line(
                &a,
                "died",
                r#""ContainerExitCode":6,"#,
                "2026-12-07T09:00:03Z",
            ),
        ]
        .join("\n");
        let i = from_events(&pending, "agentd-i-r", &log).expect("found");
        assert_eq!((i.id.as_str(), i.exit_code), (a.as_str(), 6));
        // Nothing of that name created after it: not found.
        let before = log.replace("09:00:01.5Z", "09:00:00.9Z");
        assert_eq!(from_events(&pending, "agentd-i-r", &before), None);
        // Neither an id nor a time: never read.
        let dir = tempfile::tempdir().expect("tempdir");
        Recorded {
            created_after: None,
            ..pending.clone()
        }
        .write(dir.path())
        .expect("write");
        assert_eq!(Recorded::read(dir.path()), None);
        pending.write(dir.path()).expect("write");
        assert_eq!(Recorded::read(dir.path()), Some(pending));
    }

    #[test]
    fn only_a_record_naming_a_container_id_is_read_issue_18() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Recorded::read(dir.path()), None);
        rec().write(dir.path()).expect("write");
        assert_eq!(Recorded::read(dir.path()), Some(rec()));
        let bad = Recorded {
            id: "../x".into(),
            ..rec()
        };
        bad.write(dir.path()).expect("write");
        assert_eq!(Recorded::read(dir.path()), None);
        std::fs::write(super::super::args::record_file(dir.path()), "{").expect("write");
        assert_eq!(Recorded::read(dir.path()), None);
    }
}
