//! Issue 13, items 5-7, against the real daemon and real Podman: a request
//! file cannot make the daemon read host files outside the desired dir,
//! cannot freeze reconciliation with planted links or FIFOs, cannot make the
//! daemon's own writes follow a planted link, and cannot outlast or outgrow
//! what its profile and the daemon's defaults allow.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{World, require_podman, write};

const MIN: Duration = Duration::from_secs(60);

fn invalid(s: &serde_json::Value) -> bool {
    s["phase"] == "invalid"
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
}

/// The ids a `* * * * *` schedule of `profile` gets for the next `n` minute
/// boundaries, in the local time zone the daemon also uses.
fn next_fire_ids(profile: &str, n: i64) -> Vec<String> {
    let now = jiff::Zoned::now();
    (1..=n)
        .map(|i| {
            let t = now.checked_add(jiff::Span::new().minutes(i)).expect("time");
            format!("{profile}-{}", t.strftime("%Y%m%dT%H%M"))
        })
        .collect()
}

#[test]
fn an_artifact_through_a_symlinked_folder_outside_is_invalid_and_a_later_swap_changes_nothing_issue_13()
 {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let script = "cat /agentd/input/doc/a.json";
    w.sh_profile("p", script, "suspend = true");
    let outside = w.path().join("outside");
    write(&outside, "a.json", "{\"secret\": \"host file\"}");
    let requests = w.desired.join("requests");
    // A folder link leading out of the desired dir.
    symlink(&outside, requests.join("evil-art")).expect("ln");
    w.request(
        "evil",
        "profile = \"p\"\n[artifact]\ntype = \"doc\"\npath = \"evil-art/a.json\"\n",
    );
    // A real folder, swapped for such a link after validation.
    write(&requests, "art/a.json", "{\"good\": \"checked bytes\"}");
    w.request(
        "good",
        "profile = \"p\"\n[artifact]\ntype = \"doc\"\npath = \"art/a.json\"\n",
    );
    w.start_daemon();
    let s = w.wait_for("evil", MIN, |s| s["phase"] != "pending");
    assert!(invalid(&s), "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("evil-art/a.json") && msg.contains("resolves outside"),
        "{msg}"
    );
    w.wait_for("good", MIN, |s| {
        s["phase"] == "pending" && !s["spec_sha256"].is_null()
    });
    std::fs::remove_dir_all(requests.join("art")).expect("rm");
    symlink(&outside, requests.join("art")).expect("ln");
    w.sh_profile("p", script, "");
    let s = w.wait_done("good");
    assert_eq!(s["outcome"], "success", "{s}");
    let console = w.console("good");
    assert!(
        console.contains("checked bytes") && !console.contains("host file"),
        "{console}"
    );
}

#[test]
fn a_symlink_loop_and_a_link_to_root_are_reported_and_everything_else_goes_on_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo fine", "");
    w.gate_profile("g", "true", "");
    let requests = w.desired.join("requests");
    symlink("/", requests.join("evil")).expect("ln");
    symlink("loop", requests.join("loop")).expect("ln");
    symlink("self.toml", requests.join("self.toml")).expect("ln");
    symlink("/", w.desired.join("profiles/root")).expect("ln");
    w.request("held", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("held", MIN, |s| s["phase"] == "running");
    // Admitted and finished.
    w.request("ok", "profile = \"p\"\n");
    assert_eq!(w.wait_done("ok")["outcome"], "success");
    // Cancelled.
    std::fs::remove_file(requests.join("held.toml")).expect("rm");
    assert_eq!(w.wait_done("held")["outcome"], "cancelled");
    // The loop named like a request is that request's problem.
    let s = w.wait_for("self", MIN, invalid);
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("symlink loop"),
        "{s}"
    );
    // The others are reported by `agentd status` and `agentd validate`.
    let status = w.agentd().arg("status").output().expect("status");
    let err = String::from_utf8_lossy(&status.stderr);
    for p in ["requests/evil", "requests/loop", "profiles/root"] {
        assert!(err.contains(p), "{p} not reported: {err}");
    }
    let validate = w.agentd().arg("validate").output().expect("validate");
    let out = String::from_utf8_lossy(&validate.stdout);
    assert_eq!(validate.status.code(), Some(1), "{out}");
    assert!(
        out.contains("requests/evil: symlink to a folder")
            && out.contains("requests/loop: symlink loop"),
        "{out}"
    );
}

#[test]
fn planted_fifos_never_block_the_loop_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo fine", "");
    w.sh_profile("tick", "echo fired", "schedule = \"* * * * *\"");
    let requests = w.desired.join("requests");
    mkfifo(&requests.join("fifo.toml"));
    w.start_daemon();
    let pid = w.daemon_pid().expect("pid");
    // The temp names the daemon would have used for its next fires.
    let fires = next_fire_ids("tick", 2);
    for id in &fires {
        mkfifo(&requests.join(format!(".{id}.toml.{pid}.tmp")));
    }
    w.request("first", "profile = \"p\"\n");
    assert_eq!(w.wait_done("first")["outcome"], "success");
    // A fire happens, and the loop still admits, starts and finishes.
    w.eventually("a fire", Duration::from_secs(150), || {
        fires.iter().any(|id| w.status(id).is_some())
    });
    w.request("after", "profile = \"p\"\n");
    assert_eq!(w.wait_done("after")["outcome"], "success");
    let id = fires
        .iter()
        .find(|id| w.status(id).is_some())
        .expect("fired");
    assert_eq!(w.wait_done(id)["outcome"], "success");
    assert!(w.status("fifo").is_none(), "a FIFO is not a request");
}

#[test]
fn a_cron_fire_never_writes_through_a_planted_symlink_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("tick", "echo fired", "schedule = \"* * * * *\"");
    let requests = w.desired.join("requests");
    let outside = w.path().join("outside");
    w.start_daemon();
    let pid = w.daemon_pid().expect("pid");
    let fires = next_fire_ids("tick", 2);
    // The next fire's own name is a planted link (it must neither stop the
    // fire nor be written through); the temp names the daemon would have
    // used for both fires are links too.
    let victim = write(&outside, &format!("{}.toml", fires[0]), "untouched\n");
    symlink(&victim, requests.join(format!("{}.toml", fires[0]))).expect("ln");
    for id in &fires {
        let victim_tmp = write(&outside, &format!("{id}.tmp"), "untouched\n");
        symlink(&victim_tmp, requests.join(format!(".{id}.toml.{pid}.tmp"))).expect("ln");
    }
    w.eventually("a fire file", Duration::from_secs(150), || {
        fires.iter().any(|id| {
            std::fs::read_to_string(requests.join(format!("{id}.toml")))
                .is_ok_and(|t| t.contains("scheduled_for"))
        })
    });
    let id = fires
        .iter()
        .find(|id| {
            std::fs::read_to_string(requests.join(format!("{id}.toml")))
                .is_ok_and(|t| t.contains("scheduled_for"))
        })
        .expect("fired");
    for victim in std::fs::read_dir(&outside).expect("ls") {
        let victim = victim.expect("entry").path();
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "untouched\n",
            "{} was written through a planted link",
            victim.display()
        );
    }
    let fire = requests.join(format!("{id}.toml"));
    assert!(
        !std::fs::symlink_metadata(&fire)
            .expect("fire")
            .file_type()
            .is_symlink(),
        "the fire file replaced the planted link"
    );
    assert_eq!(w.wait_done(id)["outcome"], "success");
}

#[test]
fn a_request_timeout_longer_than_the_profiles_is_invalid_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo fine", "timeout = \"1h\"");
    w.request("long", "profile = \"p\"\ntimeout = \"2h\"\n");
    w.request("short", "profile = \"p\"\ntimeout = \"10m\"\n");
    w.start_daemon();
    let s = w.wait_for("long", MIN, |s| s["phase"] != "pending");
    assert!(invalid(&s), "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("timeout 2h is longer than profile `p`'s timeout (1h)"),
        "{msg}"
    );
    assert_eq!(w.wait_done("short")["outcome"], "success");
    assert_eq!(w.containers_created_for("long"), 0);
}

#[test]
fn a_profile_without_timeout_gets_a_24h_deadline_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "true", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    let s = w.wait_for("r", MIN, |s| s["phase"] == "running");
    let container = s["container"].as_str().expect("container").to_string();
    let out = Command::new("podman")
        .args([
            "container",
            "inspect",
            "--format",
            "{{index .Config.Labels \"io.agentd.deadline\"}}",
            &container,
        ])
        .output()
        .expect("inspect");
    let label = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline: i64 = label
        .parse()
        .unwrap_or_else(|_| panic!("no deadline label: {label:?}"));
    let in_ms = deadline - jiff::Timestamp::now().as_millisecond();
    let day = 24 * 3600 * 1000;
    assert!(
        (day - 10 * 60 * 1000..=day).contains(&in_ms),
        "deadline in {in_ms} ms, want about 24h"
    );
    w.open_gate();
    assert_eq!(w.wait_done("r")["outcome"], "success");
}

#[test]
fn a_128_kib_work_unit_is_invalid_without_any_podman_attempt_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo fine", "");
    w.request(
        "huge",
        &format!(
            "profile = \"p\"\nwork_unit = \"{}\"\n",
            "x".repeat(128 * 1024)
        ),
    );
    w.request("fine", "profile = \"p\"\nwork_unit = \"wu-1\"\n");
    w.start_daemon();
    let s = w.wait_for("huge", MIN, |s| {
        s["phase"] == "invalid" || s["phase"] == "done"
    });
    assert!(invalid(&s), "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("work_unit is too large (131072 bytes; the limit is 4096 bytes)"),
        "{msg}"
    );
    assert_eq!(w.wait_done("fine")["outcome"], "success");
    assert_eq!(w.containers_created_for("huge"), 0, "no podman attempt");
}

#[test]
fn requests_past_max_pending_wait_with_a_message_and_are_admitted_later_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "true", "");
    for id in ["a", "b", "c"] {
        w.request(id, "profile = \"g\"\n");
    }
    // Set through the environment so the test runs unchanged where the
    // flag does not exist yet (it then fails on the assertions).
    w.start_daemon_with(&[("AGENTD_MAX_PENDING", "1")], &["--max-sessions", "1"]);
    w.wait_for("a", MIN, |s| s["phase"] == "running");
    w.wait_for("b", MIN, |s| {
        s["phase"] == "pending" && !s["spec_sha256"].is_null()
    });
    let c = w.wait_for("c", MIN, |s| {
        s["message"].as_str().is_some_and(|m| {
            m.starts_with("not admitted: 1 requests already pending (--max-pending)")
        })
    });
    assert_eq!(c["phase"], "pending", "{c}");
    assert!(
        c["spec_sha256"].is_null(),
        "not admitted: nothing frozen: {c}"
    );
    w.open_gate();
    for id in ["a", "b", "c"] {
        assert_eq!(w.wait_done(id)["outcome"], "success", "{id}");
    }
}

#[test]
fn a_methodology_dir_swapped_for_a_symlink_after_validation_fails_the_start_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let meth = w.path().join("meth");
    write(&meth, "README", "methodology\n");
    w.gate_profile(
        "g",
        "ls /agentd/methodology",
        &format!("methodology_dir = \"{}\"", meth.display()),
    );
    w.request("a", "profile = \"g\"\n");
    w.start_daemon_with(&[], &["--max-sessions", "1"]);
    w.wait_for("a", MIN, |s| s["phase"] == "running");
    w.request("b", "profile = \"g\"\n");
    w.wait_for("b", MIN, |s| s["phase"] == "pending");
    // The validated folder becomes a link to somewhere else on the host.
    std::fs::rename(&meth, w.path().join("meth-old")).expect("mv");
    symlink("/etc", &meth).expect("ln");
    w.open_gate();
    assert_eq!(w.wait_done("a")["outcome"], "success");
    let s = w.wait_done("b");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("methodology_dir") && msg.contains("is now a symlink"),
        "{msg}"
    );
    assert_eq!(w.containers_created_for("b"), 0, "podman never ran");
}
