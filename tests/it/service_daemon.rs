//! Issue 11, "a service operators can deploy": the systemd notification
//! protocol (READY/STATUS/STOPPING/WATCHDOG) seen by a real NOTIFY_SOCKET
//! listener, the shipped units pass `systemd-analyze verify`, start-up fails
//! fast without a working Podman, a first SIGTERM with nothing running exits
//! at once, and the `podman events` follower dies with a SIGKILLed daemon.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use nix::sys::signal::Signal;

use crate::util::{World, require_podman};

/// A service manager's notification socket, bound in a temp dir.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// The next datagram within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Datagrams until one satisfies `pred` (returned last), or panic.
    fn until(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(m) => {
                    let done = pred(&m);
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                None => panic!("no notification with {what} within {timeout:?}; got {seen:?}"),
            }
        }
    }
}

/// The `STATUS=` line of a notification, if any.
fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// A daemon started by the test itself, killed on drop.
struct Daemon(Child);

impl Daemon {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal the daemon");
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agentd daemon` on this world through `/bin/sh -c 'exec ...'`, so that
/// `WATCHDOG_PID=$$` names the daemon's own pid, as systemd sets it.
fn spawn_daemon(
    w: &World,
    notify: &Path,
    watchdog_pid: Option<&str>,
    envs: &[(&str, &str)],
) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.log_path())
        .expect("log file");
    let pid = watchdog_pid.unwrap_or("");
    let script = if pid.is_empty() {
        "exec \"$0\" \"$@\"".to_string()
    } else {
        format!("WATCHDOG_PID={pid} exec \"$0\" \"$@\"")
    };
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(cargo_bin("agentd"))
        .arg("--desired")
        .arg(&w.desired)
        .arg("--state")
        .arg(&w.state)
        .arg("daemon")
        .env_remove("AGENTD_DESIRED")
        .env_remove("AGENTD_STATE")
        .env_remove("AGENTD_AUDIT_ROOT")
        .env_remove("AGENTD_MAX_SESSIONS")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("AGENTD_LOG", "debug")
        .env("NOTIFY_SOCKET", notify)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon starts");
    Daemon(child)
}

#[test]
fn ready_follows_the_first_full_pass_and_status_tracks_counts_issue_11() {
    if !require_podman() {
        return;
    }
    let w = World::new();
    // Decided by the first pass: an invalid request (unknown profile).
    w.request("bad1", "profile = \"nosuch\"\n");
    let n = NotifySocket::new();
    let mut d = spawn_daemon(&w, &n.path, None, &[]);
    let seen = n.until("READY=1", Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    // By READY=1 the first pass has decided the request, and logged it.
    let bad = w.status("bad1");
    assert_eq!(
        bad.as_ref().map(|s| s["phase"].clone()),
        Some("invalid".into()),
        "READY=1 came before the first pass decided bad1: {seen:?}\n{}",
        w.log()
    );
    assert!(
        w.log().contains("\"message\":\"pass\""),
        "READY=1 before the first pass was logged:\n{}",
        w.log()
    );
    assert_eq!(seen.len(), 1, "notifications before READY=1: {seen:?}");
    assert_eq!(
        status_of(&seen[0]),
        Some("0 running, 0 pending, 1 invalid"),
        "{seen:?}"
    );

    // A change of counts updates STATUS=.
    w.request("bad2", "profile = \"nosuch\"\n");
    n.until("STATUS with 2 invalid", Duration::from_secs(30), |m| {
        status_of(m) == Some("0 running, 0 pending, 2 invalid")
    });

    // The first SIGTERM: STOPPING=1, and with nothing running, exit at once.
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let stop = n.until("STOPPING=1", Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let status = d.wait(Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon did not exit cleanly: {status:?}\n{}",
        w.log()
    );
    assert!(
        took < Duration::from_secs(5),
        "first SIGTERM with nothing running took {took:?} to exit; {stop:?}"
    );
    assert!(w.log().contains("drained: no sessions left"), "{}", w.log());
}

#[test]
fn watchdog_pings_come_from_the_loop_when_watchdog_pid_is_ours_issue_11() {
    if !require_podman() {
        return;
    }
    let w = World::new();
    let n = NotifySocket::new();
    // 4 s: the loop must wake and ping at least every 2 s, though nothing
    // else happens.
    let _d = spawn_daemon(&w, &n.path, Some("$$"), &[("WATCHDOG_USEC", "4000000")]);
    n.until("READY=1", Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let t0 = Instant::now();
    let mut pings = 0;
    // Generous bounds for a loaded machine: no gap as long as the watchdog
    // interval itself, and most of the expected pings.
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(m) = n.recv(Duration::from_millis(3500)) {
            pings += usize::from(m.lines().any(|l| l == "WATCHDOG=1"));
        } else {
            panic!(
                "no notification for 3.5 s with WATCHDOG_USEC=4000000 ({pings} pings so far)\n{}",
                w.log()
            );
        }
    }
    assert!(pings >= 4, "only {pings} WATCHDOG=1 in 10 s\n{}", w.log());

    // WATCHDOG_PID names another process: the watchdog is not ours.
    let w2 = World::new();
    let n2 = NotifySocket::new();
    let _d2 = spawn_daemon(&w2, &n2.path, Some("1"), &[("WATCHDOG_USEC", "1000000")]);
    n2.until("READY=1", Duration::from_secs(60), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        if let Some(m) = n2.recv(Duration::from_millis(100)) {
            assert!(
                !m.lines().any(|l| l == "WATCHDOG=1"),
                "WATCHDOG=1 sent though WATCHDOG_PID=1: {m}"
            );
        }
    }
}

#[test]
fn first_sigterm_with_a_running_session_still_drains_issue_11() {
    if !require_podman() {
        return;
    }
    let w = World::new();
    w.gate_profile("slow", "echo done", "");
    w.request("r1", "profile = \"slow\"\n");
    let n = NotifySocket::new();
    let mut d = spawn_daemon(&w, &n.path, None, &[]);
    w.wait_for("r1", Duration::from_secs(60), |s| s["phase"] == "running");
    n.until("STATUS with 1 running", Duration::from_secs(30), |m| {
        status_of(m) == Some("1 running, 0 pending, 0 invalid")
    });
    d.signal(Signal::SIGTERM);
    n.until("STOPPING=1", Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    assert!(
        d.wait(Duration::from_millis(1500)).is_none(),
        "the daemon exited with a session running\n{}",
        w.log()
    );
    w.open_gate();
    let status = d.wait(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        w.log()
    );
    assert_eq!(w.status("r1").expect("status")["outcome"], "success");
}

/// Command lines of processes that follow `podman events` for `instance`.
fn event_followers(instance: &str) -> Vec<String> {
    let filter = format!("label=io.agentd.instance={instance}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "events") && args.iter().any(|a| a.ends_with(&filter)) {
            found.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                args.join(" ")
            ));
        }
    }
    found
}

#[test]
fn podman_events_follower_dies_with_a_sigkilled_daemon_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.start_daemon();
    let instance = w.instance();
    w.eventually(
        "the podman events follower",
        Duration::from_secs(30),
        || !event_followers(&instance).is_empty(),
    );
    w.kill9();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = event_followers(&instance);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "podman events outlived the SIGKILLed daemon by 3 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A folder holding only a fake `podman` with this body.
fn fake_podman(body: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("podman");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write fake podman");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Run the daemon to its end (at most `limit`); (exit code, stderr, time).
fn run_daemon_to_end(w: &World, path: &str, limit: Duration) -> (Option<i32>, String, Duration) {
    let err = w.path().join("start.err");
    let mut c = w.agentd();
    c.arg("daemon")
        .env("PATH", path)
        .env_remove("AGENTD_PODMAN")
        .env("AGENTD_PODMAN_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let t0 = Instant::now();
    let mut d = Daemon(c.spawn().expect("daemon starts"));
    let status = d.wait(limit);
    let took = t0.elapsed();
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&err).unwrap_or_default(),
        took,
    )
}

#[test]
fn start_without_podman_exits_1_saying_what_to_install_issue_11() {
    let w = World::new();
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, err, _) = run_daemon_to_end(
        &w,
        empty.path().to_str().expect("utf8"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("podman is not installed"), "{err}");
    assert!(err.contains("apt-get install podman"), "{err}");
}

#[test]
fn start_with_a_hanging_podman_exits_1_within_its_timeout_issue_11() {
    let w = World::new();
    let fake = fake_podman("exec sleep 600");
    let path = format!("{}:/usr/bin:/bin", fake.path().display());
    let (code, err, took) = run_daemon_to_end(&w, &path, Duration::from_secs(20));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("podman is not answering"), "{err}");
    assert!(err.contains("within 2s"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn start_with_a_failing_podman_exits_1_with_its_error_issue_11() {
    let w = World::new();
    let fake =
        fake_podman("echo 'Error: cannot connect to Podman: connection refused' >&2; exit 125");
    let path = format!("{}:/usr/bin:/bin", fake.path().display());
    let (code, err, _) = run_daemon_to_end(&w, &path, Duration::from_secs(20));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("podman is not working"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("run `podman info`"), "{err}");
}

/// `systemd-analyze verify` on a copy of `unit` (and its drop-in folder)
/// whose ExecStart names the built binary.
fn verify_unit(unit: &str, exec_from: &str, user: bool) {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        // On CI the check must run (as promtool's does): a missing tool is a
        // failure there, not a silent pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI: install the `systemd` package"
        );
        eprintln!("systemd-analyze is not installed: not verifying {unit}");
        return;
    };
    assert!(out.status.success());
    let root = crate::util::repo_root().join("deploy/systemd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(root.join(unit)).expect("unit file");
    let bin = cargo_bin("agentd");
    assert!(text.contains(exec_from), "{unit} has no {exec_from}");
    let copy = tmp.path().join("agentd.service");
    std::fs::write(&copy, text.replace(exec_from, bin.to_str().expect("utf8"))).expect("write");
    // The example drop-in applies to both units.
    let dropin = tmp.path().join("agentd.service.d");
    std::fs::create_dir(&dropin).expect("mkdir");
    std::fs::copy(
        root.join("agentd.service.d/override.conf"),
        dropin.join("override.conf"),
    )
    .expect("copy drop-in");
    let runtime = tempfile::tempdir().expect("tempdir");
    let mut c = Command::new("systemd-analyze");
    if user {
        // The user manager's paths come from XDG_RUNTIME_DIR.
        c.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    let out = c
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify {unit}: {err}");
    let about_us: Vec<&str> = err.lines().filter(|l| l.contains("agentd")).collect();
    assert!(about_us.is_empty(), "verify {unit} warns: {about_us:?}");
}

#[test]
fn shipped_systemd_units_pass_systemd_analyze_verify_issue_11() {
    verify_unit("system/agentd.service", "/usr/local/bin/agentd", false);
    verify_unit("user/agentd.service", "%h/.local/bin/agentd", true);
    for unit in ["system/agentd.service", "user/agentd.service"] {
        let text =
            std::fs::read_to_string(crate::util::repo_root().join("deploy/systemd").join(unit))
                .expect("unit");
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=",
            "KillMode=mixed",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{unit} lacks {line}"
            );
        }
        assert!(
            !text.lines().any(|l| l.starts_with("NoNewPrivileges=")),
            "{unit}: NoNewPrivileges breaks Podman's setuid helpers"
        );
    }
}

#[test]
fn journal_stream_without_a_journal_socket_falls_back_to_stderr_issue_11() {
    use std::os::unix::fs::MetadataExt;
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("a journald socket exists: logs would go to the journal, not checked here");
        return;
    }
    let w = World::new();
    let err = w.path().join("stderr.log");
    let f = std::fs::File::create(&err).expect("stderr file");
    let meta = f.metadata().expect("metadata");
    // stderr is "the journal" by JOURNAL_STREAM, but no journald listens.
    let mut c = w.agentd();
    c.arg("daemon")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("PATH", tempfile::tempdir().expect("tempdir").path())
        .stdout(Stdio::null())
        .stderr(f);
    let mut d = Daemon(c.spawn().expect("spawn"));
    let _ = d.wait(Duration::from_secs(20));
    let text = std::fs::read_to_string(&err).expect("stderr");
    assert!(text.contains("journald socket unavailable"), "{text}");
    assert!(text.contains("podman is not installed"), "{text}");
}
