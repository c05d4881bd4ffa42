//! Issue 11, CLI side: every printing command ends quietly when its reader
//! goes away.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::cargo_bin;

use crate::util::{agentd, write};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `cmd` with stdout a pipe whose reading end is already closed: the
/// first write fails with EPIPE, every time.
fn into_closed_pipe(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped());
    cmd.output().expect("run")
}

/// A state dir with `n` finished requests whose audit records exist.
fn state_with_statuses(root: &Path, n: usize) -> PathBuf {
    let state = root.join("state");
    std::fs::create_dir_all(state.join("status")).expect("mkdir");
    for i in 0..n {
        let id = format!("req-{i:05}");
        let mut s = agentd::observed::Status::new(&id, "p");
        s.phase = agentd::observed::Phase::Done;
        s.outcome = Some(agentd::observed::Outcome::Success);
        s.exit_code = Some(0);
        s.message = Some("x".repeat(200));
        let audit = state.join(format!("audit/p/s{i}"));
        std::fs::create_dir_all(audit.join("agentd")).expect("mkdir");
        std::fs::write(audit.join("agentd/console.log"), "hello\n".repeat(20_000)).expect("log");
        s.audit_dir = Some(audit);
        std::fs::write(
            state.join(format!("status/{id}.json")),
            serde_json::to_vec(&s).expect("json"),
        )
        .expect("write");
    }
    state
}

#[test]
fn every_printing_command_ends_quietly_on_a_closed_pipe_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_statuses(tmp.path(), 3);
    let desired = tmp.path().join("desired");
    write(
        &desired,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = []\n",
    );
    let cases: Vec<Vec<String>> = [
        vec!["status", "--json"],
        vec!["status"],
        vec!["status", "--schedules", "--json"],
        vec!["validate"],
        vec!["logs", "req-00001"],
        vec!["audit", "verify"],
        vec!["schema"],
        vec!["--help"],
        vec!["run", "p", "--request", "hi"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    for args in cases {
        let mut cmd = agentd();
        cmd.arg("--state")
            .arg(&state)
            .arg("--desired")
            .arg(&desired)
            .args(&args);
        let out = into_closed_pipe(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: {}",
            text(&out)
        );
        // validate finds a problem (exit 1): the pipe changes nothing else.
        let want = if args[0] == "validate" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {}", text(&out));
    }
}

#[test]
fn status_json_into_head_exits_quietly_issue_11() {
    // The real thing: a shell pipeline whose reader quits after one line
    // while agentd still has most of a large array to write.
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_statuses(tmp.path(), 400);
    let script = format!(
        "{} --state '{}' status --json | head -1; echo \"agentd=${{PIPESTATUS[0]}}\"",
        cargo_bin("agentd").display(),
        state.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env_remove("AGENTD_STATE")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("["), "{}", text(&out));
    assert!(stdout.contains("agentd=0"), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}
