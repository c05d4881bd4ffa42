//! Sessions end to end against real Podman (issue 3): a dropped request
//! becomes exactly one container that sees the in-container contract, and
//! ends with the right outcome, a complete audit record and nothing left.

use std::process::Command;
use std::time::Duration;

use crate::util::{World, require_podman, test_image, write};

/// Facts the contract test's agent prints, one `key=value` per line.
const FACTS_SCRIPT: &str = r#"
set -u
echo "user=$(id -un)"
echo "uid=$(id -u)"
echo "home=$HOME"
echo "cwd=$(pwd)"
echo "readme=$(cat README.md)"
echo "git_dir=$(test -d .git && echo yes)"
echo "session_id=$AGENTD_SESSION_ID"
echo "profile=$AGENTD_PROFILE"
echo "request=$AGENTD_REQUEST"
echo "work_unit=${AGENTD_WORK_UNIT:-unset}"
echo "audit_dir=$AGENTD_AUDIT_DIR"
echo "plain=$PLAIN_VAR"
echo "cred_sha=$(printf %s "$API_TOKEN" | sha256sum | cut -c1-16)"
echo "methodology=$(cat /agentd/methodology/guide.md)"
touch /agentd/methodology/x 2>/dev/null && echo "methodology_rw=yes" || echo "methodology_rw=no"
echo "ro_mount=$(cat /mnt/ro/data.txt)"
touch /mnt/ro/x 2>/dev/null && echo "ro_writable=yes" || echo "ro_writable=no"
touch /mnt/rw/from-agent && echo "rw_writable=yes" || echo "rw_writable=no"
echo "input=$(tr -d "\n" < /agentd/input/request.json 2>/dev/null || echo none)"
echo "artifact=$(cat /agentd/input/review/*.json 2>/dev/null | tr -d ' \n' || echo none)"
touch README.md && echo "repo_writable=yes"
echo "from the agent" > "$AGENTD_AUDIT_DIR/report.txt" && echo "audit_writable=yes"
echo "to-stderr" >&2
"#;

fn facts(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn in_container_contract_holds_for_a_dropped_request() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    write(w.path(), "methodology/guide.md", "be careful");
    write(w.path(), "ro/data.txt", "read-only data");
    std::fs::create_dir_all(w.path().join("rw")).expect("mkdir");
    // Write access to an extra mount is the operator's to grant.
    std::fs::set_permissions(
        w.path().join("rw"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let extra = format!(
        "methodology_dir = \"{m}\"\nenv = {{ PLAIN_VAR = \"plain value\" }}\ncredentials = [{{ name = \"API_TOKEN\", source = \"TEST_API_TOKEN\" }}]\n\
         mounts = [{{ source = \"{ro}\", target = \"/mnt/ro\" }}, {{ source = \"{rw}\", target = \"/mnt/rw\", read_only = false }}]\n",
        m = w.path().join("methodology").display(),
        ro = w.path().join("ro").display(),
        rw = w.path().join("rw").display(),
    );
    w.sh_profile("inspector", FACTS_SCRIPT, &extra);
    write(
        w.path(),
        "methodology/schemas/review.schema.json",
        r#"{"type":"object","required":["pr"]}"#,
    );
    w.request(
        "with-unit",
        "profile = \"inspector\"\nwork_unit = \"PR-7\"\n",
    );
    w.request(
        "with-text",
        "profile = \"inspector\"\nrequest = \"please review\"\n",
    );
    w.request(
        "with-artifact",
        "profile = \"inspector\"\nartifact = { type = \"review\", json = '{\"pr\": 7}' }\n",
    );
    w.start_daemon_with(&[("TEST_API_TOKEN", "tok-value-123")], &[]);

    let expected_cred = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"tok-value-123");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..16].to_string()
    };
    for id in ["with-unit", "with-text", "with-artifact"] {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "success", "{id}: {s}\n{}", w.log());
        let console = w.console(id);
        let f = facts(&console);
        assert_eq!(f["user"], "inspector", "{console}");
        assert_ne!(f["uid"], "0");
        assert_eq!(f["home"], "/home/inspector");
        assert_eq!(f["cwd"], "/home/inspector/repo");
        assert_eq!(f["readme"], "agentd test repo");
        assert_eq!(f["git_dir"], "yes");
        assert_eq!(f["session_id"].len(), 16);
        assert!(
            f["session_id"]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(
            f["session_id"],
            s["session_id"].as_str().expect("session_id")
        );
        assert_eq!(f["profile"], "inspector");
        assert_eq!(f["request"], id);
        assert_eq!(f["audit_dir"], "/home/inspector/.agentd/audit");
        assert_eq!(f["plain"], "plain value");
        assert_eq!(f["cred_sha"], expected_cred);
        assert_eq!(f["methodology"], "be careful");
        assert_eq!(f["methodology_rw"], "no");
        assert_eq!(f["ro_mount"], "read-only data");
        assert_eq!(f["ro_writable"], "no");
        assert_eq!(f["rw_writable"], "yes");
        assert_eq!(f["repo_writable"], "yes");
        assert_eq!(f["audit_writable"], "yes");
        assert!(console.contains("to-stderr"), "stderr captured: {console}");
        // What the agent wrote under $AGENTD_AUDIT_DIR is in the record.
        let report =
            std::fs::read_to_string(w.audit_dir(id).join("session/report.txt")).expect("report");
        assert_eq!(report, "from the agent\n");
        match id {
            "with-unit" => {
                assert_eq!(f["work_unit"], "PR-7");
                assert_eq!(f["input"], "none");
                assert_eq!(s["work_unit"], "PR-7");
            }
            "with-text" => {
                assert_eq!(f["work_unit"], "unset");
                let input: serde_json::Value =
                    serde_json::from_str(&f["input"]).expect("request.json is JSON");
                assert_eq!(
                    input,
                    serde_json::json!({"description": "please review", "source": "operator"})
                );
            }
            _ => assert_eq!(f["artifact"], "{\"pr\":7}"),
        }
    }
    assert!(w.path().join("rw/from-agent").exists());
    assert!(
        w.containers_after_removal().is_empty(),
        "containers left: {:?}",
        w.containers()
    );
}

#[test]
fn status_and_audit_record_carry_every_field() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo out; echo err >&2; exit 0", "");
    w.request("r1", "profile = \"p\"\nwork_unit = \"wu\"\n");
    w.start_daemon();
    let s = w.wait_done("r1");
    for field in [
        "request",
        "profile",
        "phase",
        "outcome",
        "exit_code",
        "session_id",
        "container",
        "repo",
        "work_unit",
        "origin",
        "spec_sha256",
        "created_at",
        "started_at",
        "finished_at",
        "audit_dir",
        "message",
    ] {
        assert!(s.get(field).is_some(), "status lacks {field}: {s}");
    }
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["origin"], "file");
    assert_eq!(s["repo"], w.repo_url.as_str());
    let sha = agentd::sha256_hex(&std::fs::read(w.desired.join("requests/r1.toml")).expect("read"));
    assert_eq!(s["spec_sha256"], sha.as_str());
    let dir = w.audit_dir("r1");
    assert!(
        dir.starts_with(w.state.join("audit/p")),
        "{}",
        dir.display()
    );
    assert!(dir.ends_with(s["session_id"].as_str().expect("sid")));
    let rec: serde_json::Value = crate::util::read_json(&dir.join("agentd/session.json"));
    for field in [
        "schema_version",
        "session_id",
        "profile",
        "request",
        "spec_sha256",
        "repo",
        "work_unit",
        "start_timestamp",
        "end_timestamp",
        "outcome",
        "exit_code",
        "image_id",
    ] {
        assert!(
            rec.get(field).is_some_and(|v| !v.is_null()),
            "session.json lacks {field}: {rec}"
        );
    }
    assert_eq!(rec["outcome"], "success");
    assert!(
        rec["image_id"].as_str().is_some_and(|i| i.len() == 64),
        "{rec}"
    );
    let console = std::fs::read_to_string(dir.join("agentd/console.log")).expect("console");
    assert!(
        console.contains("out\n") && console.contains("err\n"),
        "{console}"
    );
    // `agentd logs` prints the same from the record.
    let out = w.agentd().args(["logs", "r1"]).output().expect("logs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), console);
    // Status table and JSON.
    let out = w.agentd().args(["status"]).output().expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("r1") && table.contains("done") && table.contains("success"),
        "{table}"
    );
    let out = w
        .agentd()
        .args(["status", "--json", "r1"])
        .output()
        .expect("status");
    let arr: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(arr[0], s);
    // Every daemon log line is JSON; session transitions carry the request.
    let log = w.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    for msg in [
        "request admitted",
        "session starting",
        "session running",
        "session done",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["message"] == msg && l["request"] == "r1"),
            "no `{msg}` event for r1:\n{log}"
        );
    }
}

#[test]
fn each_exit_code_maps_to_its_outcome() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("exiter", "exit \"$AGENTD_WORK_UNIT\"", "");
    let table = [
        (0, "success"),
        (1, "generic_failure"),
        (2, "usage_error"),
        (3, "blocked"),
        (4, "nothing_ready"),
        (5, "work_failed"),
        (6, "infrastructure_failure"),
        (9, "generic_failure"),
        (126, "command_not_executable"),
        (127, "command_not_found"),
        (130, "terminated_by_signal"),
    ];
    for (code, _) in table {
        w.request(
            &format!("exit-{code}"),
            &format!("profile = \"exiter\"\nwork_unit = \"{code}\"\n"),
        );
    }
    w.start_daemon();
    for (code, outcome) in table {
        let s = w.wait_done(&format!("exit-{code}"));
        assert_eq!(s["outcome"], outcome, "exit {code}: {s}");
        assert_eq!(s["exit_code"], code);
    }
    assert!(w.containers_after_removal().is_empty());
}

#[test]
fn real_signal_death_is_terminated_by_signal() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("killer", "kill -9 $$", "");
    w.request("k", "profile = \"killer\"\n");
    w.start_daemon();
    let s = w.wait_done("k");
    assert_eq!(s["outcome"], "terminated_by_signal", "{s}");
    assert_eq!(s["exit_code"], 137);
}

#[test]
fn start_failures_are_reported_precisely() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // network = "none": none of these needs one, and rootless Podman's
    // default network cannot start on every host (issue 10).
    w.profile("noimage", &format!("base_image = \"localhost/agentd-does-not-exist:1\"\ncommand = [\"true\"]\nrepo = \"{}\"\nnetwork = \"none\"\n", w.repo_url));
    w.profile(
        "badrepo",
        &format!(
            "base_image = \"{}\"\ncommand = [\"true\"]\nrepo = \"file:///nonexistent/repo.git\"\nnetwork = \"none\"\n",
            test_image()
        ),
    );
    w.sh_profile(
        "nocred",
        "true",
        "credentials = [{ name = \"TOKEN\", source = \"AGENTD_TEST_UNSET_VAR\" }]",
    );
    w.sh_profile("notfound", "true", "");
    w.profile("nocmd", &format!("base_image = \"{}\"\ncommand = [\"/no/such/program\"]\nrepo = \"{}\"\nnetwork = \"none\"\n", test_image(), w.repo_url));
    w.request("a", "profile = \"noimage\"\n");
    w.request("b", "profile = \"badrepo\"\n");
    w.request("c", "profile = \"nocred\"\n");
    w.profile(
        "noexec",
        &format!(
            "base_image = \"{}\"\ncommand = [\"./README.md\"]\nrepo = \"{}\"\nnetwork = \"none\"\n",
            test_image(),
            w.repo_url
        ),
    );
    w.request("d", "profile = \"nocmd\"\n");
    w.request("e", "profile = \"noexec\"\n");
    w.start_daemon();
    let a = w.wait_done("a");
    assert_eq!(a["outcome"], "start_failed");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or("")
            .contains("localhost/agentd-does-not-exist:1"),
        "{a}"
    );
    let b = w.wait_done("b");
    assert_eq!(b["outcome"], "start_failed");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or("")
            .contains("clone of file:///nonexistent/repo.git failed"),
        "{b}"
    );
    let c = w.wait_done("c");
    assert_eq!(c["outcome"], "start_failed");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or("")
            .contains("`AGENTD_TEST_UNSET_VAR` is not set"),
        "{c}"
    );
    // A program that cannot be found or run is the agent's failure, with
    // the contract's labels, not a start failure.
    let d = w.wait_done("d");
    assert_eq!(d["outcome"], "command_not_found", "{d}");
    assert_eq!(d["exit_code"], 127);
    let e = w.wait_done("e");
    assert_eq!(e["outcome"], "command_not_executable", "{e}");
    assert_eq!(e["exit_code"], 126);
    for id in ["a", "b", "c"] {
        // The audit record exists and says start_failed.
        let rec: serde_json::Value = w.session_record(id);
        assert_eq!(rec["outcome"], "start_failed", "{id}: {rec}");
    }
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
    assert_eq!(
        std::fs::read_dir(w.state.join("work"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "work folders left"
    );
}

#[test]
fn run_wait_exit_codes_follow_the_outcome() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // The request below names another repo (a start failure): since issue
    // 13 the profile must allow it.
    w.sh_profile(
        "exiter",
        "exit \"$AGENTD_WORK_UNIT\"",
        "allowed_repos = [\"file:///nonexistent/*\"]",
    );
    w.start_daemon();
    for (code, want) in [(0, 0), (3, 0), (4, 0), (5, 1), (1, 1), (127, 1)] {
        let out = w
            .agentd()
            .args(["run", "exiter", "--work-unit", &code.to_string(), "--wait"])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(want),
            "exit {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(id.starts_with("exiter-"), "{id}");
        assert_eq!(w.status(&id).expect("status")["exit_code"], code);
    }
    // --id chooses the id; the file is TOML; a taken id is refused.
    let out = w
        .agentd()
        .args([
            "run",
            "exiter",
            "--work-unit",
            "0",
            "--id",
            "chosen-1",
            "--wait",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "chosen-1");
    assert!(w.desired.join("requests/chosen-1.toml").exists());
    let out = w
        .agentd()
        .args(["run", "exiter", "--id", "chosen-1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // A start failure is a failed run.
    let out = w
        .agentd()
        .args(["run", "exiter", "file:///nonexistent/x.git", "--wait"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("start_failed"));
}

#[test]
fn credential_values_never_leak() {
    if !require_podman() {
        return;
    }
    let secret = format!("sekrit-{}", agentd::new_session_id());
    let token = format!("clonetok-{}", agentd::new_session_id());
    let mut w = World::new();
    std::fs::create_dir_all(w.path().join("gate")).expect("mkdir");
    // The agent uses the secret without printing it, and waits at a gate so
    // the test can look at the running container and the process table.
    let script = "test -n \"$MY_SECRET\" && echo has-secret; env | grep -c sekrit; test -z \"${REPO_TOKEN:-}\" && echo no-token; until [ -e /gate/go ]; do sleep 0.05; done";
    w.sh_profile(
        "leaky",
        script,
        &format!(
            "credentials = [{{ name = \"MY_SECRET\", source = \"HOST_SECRET\" }}]\nrepo_token_source = \"HOST_REPO_TOKEN\"\nmounts = [{{ source = \"{}\", target = \"/gate\" }}]\n",
            w.path().join("gate").display()
        ),
    );
    w.request("r", "profile = \"leaky\"\n");
    w.start_daemon_with(
        &[("HOST_SECRET", &secret), ("HOST_REPO_TOKEN", &token)],
        &[],
    );
    let s = w.wait_for("r", Duration::from_secs(60), |s| s["phase"] == "running");
    let container = s["container"].as_str().expect("container").to_string();
    let inspect = Command::new("podman")
        .args(["inspect", &container])
        .output()
        .expect("inspect");
    assert!(inspect.status.success());
    let ps = Command::new("ps")
        .args(["-eww", "-o", "args"])
        .output()
        .expect("ps");
    std::fs::write(w.path().join("gate/go"), "").expect("open gate");
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let console = w.console("r");
    assert!(
        console.contains("has-secret") && console.contains("no-token"),
        "{console}"
    );

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("podman inspect".into(), inspect.stdout),
        ("ps".into(), ps.stdout),
        ("daemon log".into(), w.log().into_bytes()),
    ];
    for dir in [
        w.state.join("status"),
        w.state.join("audit"),
        w.state.join("specs"),
    ] {
        for e in walkdir::WalkDir::new(&dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
        {
            haystacks.push((
                e.path().display().to_string(),
                std::fs::read(e.path()).expect("read"),
            ));
        }
    }
    assert!(haystacks.len() > 5);
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&secret), "credential value found in {name}");
        assert!(!text.contains(&token), "repo token found in {name}");
    }
    assert!(w.containers_after_removal().is_empty());
    let secrets = Command::new("podman")
        .args(["secret", "ls", "--format", "{{.Name}}"])
        .output()
        .expect("secret ls");
    assert!(!String::from_utf8_lossy(&secrets.stdout).contains(&w.instance()));
    assert_eq!(
        std::fs::read_dir(w.state.join("work"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "work folder (with the credentials file) left behind"
    );
}

#[test]
fn image_needs_only_bin_sh() {
    if !require_podman() {
        return;
    }
    let image = crate::util::image_without_git();
    let mut w = World::new();
    w.profile(
        "bare",
        &format!("base_image = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", \"command -v git || echo no-git; cat README.md; id -un\"]\nrepo = \"{}\"\nnetwork = \"none\"\n", w.repo_url),
    );
    w.request("r", "profile = \"bare\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let console = w.console("r");
    assert_eq!(console, "no-git\nagentd test repo\nbare\n");
}

#[test]
fn second_daemon_on_the_same_state_dir_is_refused() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.start_daemon();
    // Wait until the first daemon holds the lock.
    let lock = w.lock_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&lock)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "first daemon never took the lock:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = w.agentd().arg("daemon").output().expect("second daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = w.daemon_pid().expect("pid").to_string();
    assert!(
        err.contains(&format!("another agentd (pid {pid})")),
        "{err}"
    );
}

#[test]
fn first_signal_drains_running_sessions_then_exits_0() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("slow", "sleep 1; echo finished", "");
    w.request("r", "profile = \"slow\"\n");
    w.start_daemon();
    w.wait_for("r", Duration::from_secs(60), |s| s["phase"] == "running");
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.eventually("draining to begin", Duration::from_secs(30), || {
        w.log().contains("draining: admitting nothing new")
    });
    // A request dropped while draining is not started.
    w.request("late", "profile = \"slow\"\n");
    let status = w
        .wait_daemon(Duration::from_secs(60))
        .expect("daemon exits after draining");
    assert!(status.success(), "{status:?}\n{}", w.log());
    assert_eq!(w.status("r").expect("status")["outcome"], "success");
    assert!(
        w.status("late")
            .is_none_or(|s| s["phase"] != "running" && s["phase"] != "done")
    );
    assert!(w.containers_after_removal().is_empty());
}
