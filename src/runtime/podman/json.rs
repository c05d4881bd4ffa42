//! Podman's JSON, parsed into plain data. Field names follow Podman 4.3.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{PodmanError, labels};
use crate::observed::{Container, ContainerState};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    exit_code: i32,
    /// Unix seconds; 0 when never started.
    #[serde(default)]
    started_at: i64,
}

pub fn parse_ps(out: &str) -> Result<Vec<Container>, PodmanError> {
    let entries: Vec<PsEntry> = serde_json::from_str(out).map_err(|e| PodmanError::Parse {
        verb: "ps".into(),
        reason: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let labels = e.labels.unwrap_or_default();
            Container {
                name: e.names.first().cloned().unwrap_or_else(|| e.id.clone()),
                id: e.id,
                request: labels.get(labels::REQUEST).cloned(),
                session_id: labels.get(labels::SESSION).cloned(),
                deadline: labels.get(labels::DEADLINE).and_then(|d| d.parse().ok()),
                state: state_of(&e.state, e.exit_code),
                started: e.started_at > 0,
            }
        })
        .collect())
}

fn state_of(state: &str, exit_code: i32) -> ContainerState {
    match state {
        "running" | "stopping" => ContainerState::Running,
        "created" | "configured" | "initialized" => ContainerState::Created,
        "exited" | "stopped" => ContainerState::Exited(exit_code),
        _ => ContainerState::Other,
    }
}

/// What finishing a session needs from `podman container inspect`
/// (`runtime::ContainerInfo` once the pid is placed).
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub id: String,
    pub state: ContainerState,
    pub exit_code: i32,
    /// The image id (sha256 of its config) the container ran.
    pub image_id: String,
    /// The manifest digest of that image, when Podman knows it.
    pub image_digest: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub oom_killed: bool,
    /// The session deadline (unix ms) from the container's label.
    pub deadline: Option<i64>,
    /// The host pid of its first process while it runs.
    pub pid: Option<u32>,
    /// Created with `--rm`: Podman removes it once it exited.
    pub auto_remove: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectEntry {
    id: String,
    image: String,
    #[serde(default)]
    image_digest: Option<String>,
    state: InspectState,
    #[serde(default)]
    config: Option<InspectConfig>,
    #[serde(default)]
    host_config: Option<InspectHostConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectHostConfig {
    #[serde(default)]
    auto_remove: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    status: String,
    exit_code: i32,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    finished_at: Option<String>,
    #[serde(default, rename = "OOMKilled")]
    oom_killed: bool,
    #[serde(default)]
    pid: i64,
}

pub fn parse_inspect(out: &str) -> Result<Inspected, PodmanError> {
    let bad = |reason: String| PodmanError::Parse {
        verb: "container inspect".into(),
        reason,
    };
    let mut entries: Vec<InspectEntry> =
        serde_json::from_str(out).map_err(|e| bad(e.to_string()))?;
    let e = entries.pop().ok_or_else(|| bad("empty list".into()))?;
    Ok(Inspected {
        id: e.id,
        state: state_of(&e.state.status, e.state.exit_code),
        exit_code: e.state.exit_code,
        image_id: e.image,
        image_digest: e.image_digest.filter(|d| !d.is_empty()),
        started_at: e.state.started_at.as_deref().and_then(parse_time),
        finished_at: e.state.finished_at.as_deref().and_then(parse_time),
        oom_killed: e.state.oom_killed,
        pid: u32::try_from(e.state.pid).ok().filter(|p| *p > 0),
        auto_remove: e.host_config.is_some_and(|h| h.auto_remove),
        deadline: e
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(labels::DEADLINE).and_then(|d| d.parse().ok())),
    })
}

/// Podman prints times like `2026-11-22T08:50:36.070637712Z` in JSON; the
/// zero time means "never".
fn parse_time(t: &str) -> Option<jiff::Timestamp> {
    let ts: jiff::Timestamp = t.parse().ok()?;
    (ts.as_second() > 0).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_output_of_podman_4_3() {
        let out = r#"[{"AutoRemove":false,"Command":["sh"],"Exited":true,"ExitedAt":1795337436,"ExitCode":3,
            "Id":"6f5a","Image":"localhost/x","ImageID":"0e25","Labels":{"io.agentd.request":"r1",
            "io.agentd.session":"00ff","io.agentd.deadline":"1795337999"},"Names":["agentd-x-r1"],
            "State":"exited","Status":"Exited (3) 1 second ago","Created":1795337435,"StartedAt":1795337436},
            {"Id":"77","Names":["other"],"Labels":null,"State":"running","ExitCode":0}]"#;
        let cs = parse_ps(out).expect("parses");
        assert_eq!(cs[0].request.as_deref(), Some("r1"));
        assert_eq!(cs[0].state, ContainerState::Exited(3));
        assert_eq!(cs[0].deadline, Some(1_795_337_999));
        assert_eq!(cs[1].state, ContainerState::Running);
        assert!(cs[0].started && !cs[1].started);
        assert_eq!(cs[1].request, None);
        assert!(parse_ps("not json").is_err());
    }

    #[test]
    fn inspect_output_of_podman_4_3() {
        let out = r#"[{"Id":"6f5a","Image":"0e25","ImageDigest":"sha256:5f5b","State":{"Status":"exited",
            "ExitCode":137,"StartedAt":"2026-11-22T08:50:36.070637712Z","FinishedAt":"0001-01-01T00:00:00Z",
            "OOMKilled":true},"Config":{"Labels":{"io.agentd.deadline":"1795337999000"}}}]"#;
        let i = parse_inspect(out).expect("parses");
        assert_eq!(i.exit_code, 137);
        assert_eq!(i.state, ContainerState::Exited(137));
        assert_eq!(i.image_digest.as_deref(), Some("sha256:5f5b"));
        assert!(i.started_at.is_some() && i.finished_at.is_none() && i.oom_killed);
        assert_eq!(i.deadline, Some(1_795_337_999_000));
        assert!(!i.auto_remove);
    }

    #[test]
    fn a_container_that_removes_itself_says_so_issue_18() {
        let out = r#"[{"Id":"6f5a","Image":"0e25","State":{"Status":"exited","ExitCode":0},
            "HostConfig":{"AutoRemove":true,"Memory":0}}]"#;
        assert!(parse_inspect(out).expect("parses").auto_remove);
    }
}
