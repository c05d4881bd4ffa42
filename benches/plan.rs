//! plan() over 10,000 requests and 100 profiles (issue 7, figure 6): most
//! done, some running, some pending. Run with `cargo bench --bench plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentd::{Container, ContainerState, Observed, Phase, Status};
use agentd::{Desired, Input, Profile, Repo, Request, RequestEntry};
use agentd::{PlanConfig, plan};

fn profile(name: &str) -> Profile {
    Profile {
        repo: Some(Repo::Url("https://example.com/r.git".into())),
        max_concurrent: Some(2),
        ..Profile::minimal(name, "img", &["true"])
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n_requests, n_profiles) = (10_000, 100);
    let mut desired = Desired::default();
    for p in 0..n_profiles {
        let name = format!("p{p}");
        desired.profiles.insert(name.clone(), profile(&name));
    }
    let mut statuses = BTreeMap::new();
    let mut containers = BTreeMap::new();
    let now = jiff::Timestamp::now();
    for i in 0..n_requests {
        let id = format!("r{i:05}");
        let prof = format!("p{}", i % n_profiles);
        desired.requests.insert(
            id.clone(),
            RequestEntry::Valid(std::sync::Arc::new(Request {
                id: id.clone(),
                path: PathBuf::from(format!("d/requests/{id}.toml")),
                profile: prof.clone(),
                repo: None,
                input: Input::WorkUnit(format!("wu-{i}")),
                timeout: None,
                scheduled_for: None,
                spec_sha256: "s".into(),
            })),
        );
        let mut s = Status::new(&id, &prof);
        s.spec_sha256 = Some("s".into());
        s.created_at = Some(now);
        s.phase = match i % 200 {
            0 => Phase::Running,
            1 => Phase::Pending,
            _ => Phase::Done,
        };
        if s.phase == Phase::Running {
            containers.insert(
                id.clone(),
                Container {
                    id: id.clone(),
                    name: format!("agentd-x-{id}"),
                    request: Some(id.clone()),
                    session_id: None,
                    state: ContainerState::Running,
                    deadline: None,
                    started: true,
                },
            );
        }
        if s.phase == Phase::Done {
            s.finished_at = Some(now);
        }
        statuses.insert(id, s);
    }
    let busy = BTreeSet::new();
    let orphans = Vec::new();
    let observed = Observed {
        statuses: &statuses,
        containers: &containers,
        orphans: &orphans,
        busy: &busy,
        containers_known: true,
    };
    let cfg = PlanConfig {
        now,
        max_sessions: 64,
        status_retention: Duration::from_secs(86_400),
        source_available: true,
        admitting: true,
        // No cap: the figure measures the planner over every request.
        max_pending: usize::MAX,
    };
    let runs = if quick { 5 } else { 50 };
    let mut times = Vec::new();
    let mut actions = 0;
    for _ in 0..runs {
        let t = Instant::now();
        actions = plan(&desired, &observed, &cfg).len();
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{{\"figure\": \"plan\", \"requests\": {n_requests}, \"profiles\": {n_profiles}, \"actions\": {actions}, \"median_ms\": {:.2}, \"max_ms\": {:.2}}}",
        median.as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
}
