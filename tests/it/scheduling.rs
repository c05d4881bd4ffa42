//! Scheduling against real Podman and the real clock (issue 6): a
//! `* * * * *` profile fires, the materialized request runs, a kill -9 and
//! restart inside the same minute create no duplicate, `forbid` skips an
//! overlapping fire, `history_limit` prunes. Takes up to ~2.5 minutes of
//! wall time (it waits for real minute boundaries).

use std::time::Duration;

use crate::util::{World, require_podman};

fn fire_files(w: &World, profile: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(w.desired.join("requests"))
        .expect("requests")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{profile}-")) && n.ends_with(".toml"))
        .map(|n| n.trim_end_matches(".toml").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn cron_fires_run_once_per_minute_with_forbid_and_history() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // Each run of the command appends its request id to a ledger on the
    // host: "one session" is counted outside agentd.
    let ledger = w.path().join("ledger");
    std::fs::create_dir(&ledger).expect("ledger");
    std::fs::set_permissions(&ledger, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod ledger");
    w.sh_profile(
        "tick",
        "echo fired; echo \"$AGENTD_REQUEST\" >> /ledger/runs",
        &format!(
            "schedule = \"* * * * *\"\nhistory_limit = 1\nmounts = [{{ source = \"{}\", target = \"/ledger\", read_only = false }}]",
            ledger.display()
        ),
    );
    w.gate_profile(
        "hold",
        "true",
        "schedule = \"* * * * *\"\nconcurrency_policy = \"forbid\"",
    );
    w.start_daemon();
    let long = Duration::from_secs(150);

    // First fire of `tick`: a deterministic file, a session, origin schedule.
    w.eventually("the first fire", long, || {
        !fire_files(&w, "tick").is_empty()
    });
    let first = fire_files(&w, "tick")[0].clone();
    let text = std::fs::read_to_string(w.desired.join("requests").join(format!("{first}.toml")))
        .expect("fire file");
    assert!(
        text.contains("profile = \"tick\"")
            && text.contains("scheduled_for = \"")
            && text.contains(&w.repo_url),
        "{text}"
    );
    // kill -9 and restart within the same minute: no second file, one session.
    w.kill9();
    w.start_daemon();
    let s = w.wait_done(&first);
    assert_eq!(s["outcome"], "success", "{s}");
    assert_eq!(s["origin"], "schedule");
    let first_audit = w.audit_dir(&first);
    // One session: the command ran once and left one record. (A kill that
    // lands between `podman run` and the clone being in place leaves a
    // container whose command is still at its gate; the restarted daemon
    // removes it and starts again, so a second container may be created,
    // but never a second run.)
    let runs = std::fs::read_to_string(ledger.join("runs")).unwrap_or_default();
    assert_eq!(
        runs.lines().filter(|l| *l == first).count(),
        1,
        "one run of the fire's command: {runs:?}"
    );
    assert_eq!(
        w.audit_records("tick").len(),
        1,
        "one audit record for the fire"
    );
    assert!(
        w.containers_created_for(&first) <= 2,
        "at most the one retried start"
    );
    let hold_first = fire_files(&w, "hold");
    assert_eq!(hold_first.len(), 1, "{hold_first:?}");
    w.wait_for(&hold_first[0], long, |s| s["phase"] == "running");

    // The next minute: tick fires again; hold's fire is skipped (forbid).
    w.eventually("the second fire", long, || {
        fire_files(&w, "tick").iter().any(|f| f != &first)
    });
    let second = fire_files(&w, "tick")
        .into_iter()
        .find(|f| f != &first)
        .expect("second");
    assert!(second > first, "{second} after {first}");
    assert_eq!(w.wait_done(&second)["outcome"], "success");
    w.eventually("the forbid skip recorded", long, || {
        let out = w
            .agentd()
            .args(["status", "--schedules", "--json"])
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().is_some_and(|a| {
            a.iter().any(|p| {
                p["profile"] == "hold"
                    && p["last_skip"]
                        .as_str()
                        .is_some_and(|s| s.contains("forbid"))
            })
        })
    });
    assert_eq!(
        fire_files(&w, "hold"),
        hold_first,
        "forbid started nothing new"
    );

    // history_limit = 1: the older finished fire is pruned (file and
    // status); its audit record stays.
    w.eventually("the first fire pruned", long, || {
        w.status(&first).is_none() && !w.desired.join(format!("requests/{first}.toml")).exists()
    });
    assert!(
        first_audit.join("agentd/session.json").exists(),
        "audit records are never pruned"
    );
    assert!(w.status(&second).is_some());

    // Status shows the scheduled profiles.
    let out = w
        .agentd()
        .args(["status", "--schedules", "--json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tick = v
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["profile"] == "tick")
        .expect("tick row")
        .clone();
    assert!(
        tick["next_fire"].is_string() && tick["last_fire"].is_string(),
        "{tick}"
    );
    w.open_gate();
    assert_eq!(w.wait_done(&hold_first[0])["outcome"], "success");
}
