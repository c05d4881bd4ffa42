//! `agentd run`: write a request file (atomically) and print its id;
//! `--wait` follows it to `done`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::GlobalArgs;
use crate::observed::Phase;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").args(["work_unit", "request", "artifact_type"])))]
pub struct Args {
    /// Profile to run.
    pub profile: String,
    /// Repository, overriding the profile's `repo`; it must be the profile's
    /// or match the profile's `allowed_repos`.
    pub repo: Option<String>,
    /// Work unit, exported as AGENTD_WORK_UNIT.
    #[arg(long, value_name = "ID")]
    pub work_unit: Option<String>,
    /// Operator text, materialized as /agentd/input/request.json.
    #[arg(long, value_name = "TEXT")]
    pub request: Option<String>,
    /// Artifact type (with --artifact-file): /agentd/input/<TYPE>/<id>.json.
    #[arg(long, value_name = "TYPE", requires = "artifact_file")]
    pub artifact_type: Option<String>,
    /// JSON file to send as the artifact.
    #[arg(long, value_name = "FILE", requires = "artifact_type")]
    pub artifact_file: Option<PathBuf>,
    /// Request id (the file name) [default: <profile>-<date>-<time>-<random>].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Follow the request to `done`; exit 0 for success, blocked and
    /// nothing_ready, 1 for any other outcome.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Serialize)]
struct RequestOut {
    profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    work_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact: Option<ArtifactOut>,
}

#[derive(Serialize)]
struct ArtifactOut {
    #[serde(rename = "type")]
    kind: String,
    json: String,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => default_id(&args.profile),
    };
    if let Err((msg, hint)) = crate::desired::check_request_id(&id) {
        bail!(
            "{msg}{}",
            hint.map(|h| format!("; hint: {h}")).unwrap_or_default()
        );
    }
    let artifact = match (&args.artifact_type, &args.artifact_file) {
        (Some(kind), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading artifact {}", file.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            Some(ArtifactOut {
                kind: kind.clone(),
                json: text,
            })
        }
        _ => None,
    };
    let body = RequestOut {
        profile: args.profile.clone(),
        repo: args.repo.clone(),
        work_unit: args.work_unit.clone(),
        request: args.request.clone(),
        artifact,
    };
    let text = format!(
        "# written by `agentd run`\n{}",
        toml::to_string(&body).context("encoding the request")?
    );
    let dir = global.desired.join("requests");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for ext in ["toml", "yaml", "yml"] {
        let existing = dir.join(format!("{id}.{ext}"));
        if existing.exists() {
            bail!(
                "request `{id}` already exists ({}); hint: choose another --id",
                existing.display()
            );
        }
    }
    let path = dir.join(format!("{id}.toml"));
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    // A reader that closed stdout early still gets the wait and its exit code.
    if let Err(e) = writeln!(std::io::stdout(), "{id}")
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait(&global.state_dir()?, &id)
}

/// `<profile>-<YYYYMMDD>-<HHMMSS>-<4 hex>`, valid as a request id.
fn default_id(profile: &str) -> String {
    let now = jiff::Zoned::now();
    let rand = &crate::execute::new_session_id()[..4];
    let stem = profile.trim_start_matches('_');
    let stem = if stem.is_empty() { "run" } else { stem };
    format!("{stem}-{}-{rand}", now.strftime("%Y%m%d-%H%M%S"))
}

/// Poll the status file until the request is done (or rejected).
fn wait(state: &std::path::Path, id: &str) -> anyhow::Result<ExitCode> {
    let path = state.join("status").join(format!("{id}.json"));
    let mut last_phase = None;
    loop {
        if let Ok(s) = crate::status::read_one(&path) {
            if last_phase != Some(s.phase) {
                eprintln!("{id}: {}", s.phase.as_str());
                last_phase = Some(s.phase);
            }
            match s.phase {
                Phase::Done => {
                    let outcome = s.outcome.map_or("unknown", |o| o.as_str());
                    let code = s
                        .exit_code
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default();
                    let msg = s
                        .message
                        .map(|m| format!(": {}", super::escape::text(&m)))
                        .unwrap_or_default();
                    eprintln!("{id}: {outcome}{code}{msg}");
                    return Ok(if s.outcome.is_some_and(|o| o.is_ok()) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    });
                }
                Phase::Invalid => {
                    eprintln!(
                        "{id}: invalid: {}",
                        super::escape::text(&s.message.unwrap_or_default())
                    );
                    return Ok(ExitCode::from(1));
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
