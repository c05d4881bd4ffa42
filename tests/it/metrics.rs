//! Issue 11, metrics: `--metrics-listen` serves Prometheus metrics over real
//! HTTP from its own listener; the output passes `promtool check metrics`
//! and agrees with the status store; a hostile scraper stalls nothing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{World, require_podman};

const MIN: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET `path` over a plain TCP connection; (status code, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

fn scrape(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics", None).expect("scrape over HTTP");
    assert_eq!(code, 200, "{body}");
    body
}

/// `promtool check metrics` must accept the text. Without promtool the test
/// fails on CI (scripts/setup-podman installs it) and is skipped elsewhere.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is missing on CI: scripts/setup-podman installs the `prometheus` package"
            );
            eprintln!(
                "promtool not installed: not checking the format (apt-get install prometheus)"
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics rejected the output:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every sample of `name` with its labels.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once("} ") else {
                continue;
            };
            (l, v)
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        found.push((labels, value.trim().parse().expect("a number")));
    }
    found
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, v)| v)
}

fn status_json(w: &World) -> Vec<serde_json::Value> {
    let out = w
        .agentd()
        .args(["status", "--json"])
        .output()
        .expect("agentd status");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("status --json is a JSON array")
}

/// Where the scraped counts and the status store disagree (empty: agree).
fn disagreements(text: &str, statuses: &[serde_json::Value]) -> Vec<String> {
    let mut want_phase: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_finished: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in statuses {
        let str_of = |k: &str| s[k].as_str().unwrap_or_default().to_string();
        *want_phase.entry(str_of("phase")).or_default() += 1.0;
        if s["phase"] == "done" {
            *want_finished
                .entry((str_of("profile"), str_of("outcome")))
                .or_default() += 1.0;
        }
    }
    let mut wrong = Vec::new();
    for phase in [
        "pending",
        "starting",
        "running",
        "finishing",
        "done",
        "invalid",
    ] {
        let want = want_phase.get(phase).copied().unwrap_or(0.0);
        let got = value(text, "agentd_sessions_in_phase", &[("phase", phase)]);
        if got != Some(want) {
            wrong.push(format!("phase {phase}: status {want}, metrics {got:?}"));
        }
    }
    let got_finished: BTreeMap<(String, String), f64> =
        samples(text, "agentd_sessions_finished_total")
            .into_iter()
            .map(|(l, v)| ((l["profile"].clone(), l["outcome"].clone()), v))
            .collect();
    if got_finished != want_finished {
        wrong.push(format!(
            "finished: status {want_finished:?}, metrics {got_finished:?}"
        ));
    }
    wrong
}

#[test]
fn scraped_metrics_pass_promtool_and_match_agentd_status_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("ok", "echo fine", "");
    w.sh_profile("fails", "exit 1", "");
    w.sh_profile(
        "nocred",
        "true",
        "credentials = [{ name = \"TOKEN\", source = \"AGENTD_TEST_UNSET_VAR\" }]",
    );
    w.sh_profile("slow", "sleep 300", "timeout = \"2s\"");
    w.sh_profile("sleeper", "echo started; sleep 300", "");
    for (id, profile) in [
        ("m-ok-1", "ok"),
        ("m-ok-2", "ok"),
        ("m-fails", "fails"),
        ("m-nocred", "nocred"),
        ("m-slow", "slow"),
        ("m-cancel", "sleeper"),
    ] {
        w.request(id, &format!("profile = \"{profile}\"\n"));
    }
    // An invalid request file: counted as invalid, never a label.
    w.request("m-bad", "profile = \"no-such-profile\"\n");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    w.start_daemon_with(&[], &["--stop-grace", "2s", "--metrics-listen", &listen]);
    w.wait_for("m-cancel", MIN, |s| s["phase"] == "running");
    let out = w
        .agentd()
        .args(["cancel", "m-cancel"])
        .output()
        .expect("cancel");
    assert!(out.status.success());
    let want = [
        ("m-ok-1", "success"),
        ("m-ok-2", "success"),
        ("m-fails", "generic_failure"),
        ("m-nocred", "start_failed"),
        ("m-slow", "timed_out"),
        ("m-cancel", "cancelled"),
    ];
    for (id, outcome) in want {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], outcome, "{s}");
    }

    // The phase gauges follow the store at the end of each pass: poll until
    // a pass after the last change has run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, statuses) = loop {
        let text = scrape(port);
        let statuses = status_json(&w);
        let wrong = disagreements(&text, &statuses);
        if wrong.is_empty() {
            break (text, statuses);
        }
        assert!(
            Instant::now() < deadline,
            "metrics disagree with `agentd status --json`: {wrong:?}\n--- metrics ---\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    promtool_check(&text);
    assert_eq!(statuses.len(), 7, "{statuses:?}");

    let v = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        v(
            "agentd_sessions_finished_total",
            &[("profile", "ok"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v("agentd_sessions_in_phase", &[("phase", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        v("agentd_sessions_in_phase", &[("phase", "done")]),
        Some(6.0)
    );
    assert_eq!(
        v(
            "agentd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // Durations and start latencies of the sessions whose command ran.
    assert_eq!(
        v(
            "agentd_sessions_duration_seconds_count",
            &[("profile", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "agentd_sessions_start_latency_seconds_count",
            &[("profile", "ok")]
        ),
        Some(2.0)
    );
    let slow = v(
        "agentd_sessions_duration_seconds_sum",
        &[("profile", "slow")],
    );
    // (The 2 s deadline counts from the container's start, a little before
    // the command runs.)
    assert!(
        slow.is_some_and(|s| s >= 1.0),
        "timed out after 2s: {slow:?}"
    );
    assert_eq!(
        v(
            "agentd_sessions_duration_seconds_count",
            &[("profile", "slow")]
        ),
        Some(1.0)
    );
    // No command ran for the start failure: no duration, no latency.
    assert_eq!(
        v(
            "agentd_sessions_duration_seconds_count",
            &[("profile", "nocred")]
        ),
        None
    );
    // Podman calls: five containers were run, each inspected; no failures
    // of `run`.
    let runs = v("agentd_podman_calls_total", &[("verb", "run")]);
    assert!(runs.is_some_and(|n| n >= 5.0), "{runs:?}");
    assert_eq!(
        v("agentd_podman_call_errors_total", &[("verb", "run")]),
        None
    );
    let ps = v(
        "agentd_podman_call_duration_seconds_count",
        &[("verb", "ps")],
    );
    assert!(ps.is_some_and(|n| n >= 1.0), "{ps:?}");
    // Every finished session's record was sealed.
    let sealed = v("agentd_audit_records_sealed_total", &[]);
    assert!(sealed.is_some_and(|n| n >= 5.0), "{sealed:?}");
    assert_eq!(v("agentd_audit_records_incomplete_total", &[]), Some(0.0));
    let passes = v("agentd_reconcile_passes_total", &[]);
    assert!(passes.is_some_and(|n| n >= 1.0), "{passes:?}");
    assert_eq!(
        v("agentd_reconcile_pass_duration_seconds_count", &[]),
        passes
    );
    assert_eq!(v("agentd_desired_files", &[("kind", "profile")]), Some(5.0));
    // m-cancel's file is gone; m-bad is there and invalid.
    assert_eq!(v("agentd_desired_files", &[("kind", "request")]), Some(6.0));
    assert_eq!(
        v("agentd_desired_invalid_files", &[("kind", "request")]),
        Some(1.0)
    );
    // Label values come from bounded sets: never a request id.
    assert!(
        !text.contains("m-ok-1") && !text.contains("no-such-profile"),
        "{text}"
    );

    // Prometheus itself asks for OpenMetrics, and gets it.
    let (code, om) = http_get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .expect("scrape");
    assert_eq!(code, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE agentd_sessions_finished counter"),
        "{om}"
    );
    // Anything but /metrics is not found.
    let (code, _) = http_get(port, "/", None).expect("get /");
    assert_eq!(code, 404);
}

#[test]
fn a_hostile_scraper_does_not_stall_the_daemon_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("ok", "echo fine", "");
    let port = free_port();
    let listen = format!("[::1]:{port}");
    let ipv6 = std::net::TcpListener::bind(("::1", 0)).is_ok();
    let (listen, host) = if ipv6 {
        (listen, "::1")
    } else {
        (format!("127.0.0.1:{port}"), "127.0.0.1")
    };
    w.start_daemon_with(&[], &["--metrics-listen", &listen]);
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect((host, port)) {
                Ok(s) => return s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "metrics listener: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    };
    // More idle connections than the cap, and one that dribbles an endless
    // request head.
    let mut idle: Vec<TcpStream> = (0..20).map(|_| connect()).collect();
    let mut dribbler = connect();
    let _ = dribbler.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    // The loop goes on: a session runs start to finish meanwhile.
    let t = Instant::now();
    w.request("h-ok", "profile = \"ok\"\n");
    let s = w.wait_done("h-ok");
    assert_eq!(s["outcome"], "success", "{s}");
    let _ = dribbler.write_all(b"X-Slow: 1\r\n");
    // The server closes every connection that never sent a request: after
    // the 5 s header timeout, or at once when over the cap.
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Ok(0) => {}
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(_) => panic!("an idle connection got data"),
            Err(e) => panic!("an idle connection was held open: {e}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "idle connections were held for {:?}",
        t.elapsed()
    );
    // An oversized request head is refused, not buffered.
    let mut big = connect();
    big.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(head.as_bytes());
    let mut reply = String::new();
    let _ = big.read_to_string(&mut reply);
    assert!(!reply.contains(" 200 "), "{reply}");
    // And scraping works again.
    let mut s = connect();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("agentd_sessions_finished_total{profile=\"ok\",outcome=\"success\"} 1"),
        "{reply}"
    );
}

#[test]
fn metrics_on_a_non_loopback_address_need_allow_remote_issue_11() {
    let w = World::new();
    let port = free_port();
    let out = w
        .agentd()
        .args(["daemon", "--metrics-listen", &format!("0.0.0.0:{port}")])
        .output()
        .expect("agentd runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a loopback address") && err.contains("--metrics-allow-remote"),
        "{err}"
    );
    // Nothing listens there.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // A hostname is not an address: the operator says which interface.
    let out = w
        .agentd()
        .args(["daemon", "--metrics-listen", "localhost:9464"])
        .output()
        .expect("agentd runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn schedule_fires_and_missed_fires_are_counted_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("minutely", "true", "schedule = \"* * * * *\"");
    w.sh_profile("yearly", "true", "schedule = \"0 0 1 1 *\"");
    // Schedule state as a daemon that was down for a long while left it:
    // the latest minute is due now (on time), the latest New Year is missed.
    let dir = w.state.join("schedules");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for p in [&w.state, &dir] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
    }
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 400);
    for (profile, expr) in [("minutely", "* * * * *"), ("yearly", "0 0 1 1 *")] {
        let state = serde_json::json!({
            "profile": profile,
            "schedule": expr,
            "covered_until": long_ago.to_string(),
            "last_fire": null,
            "last_request": null,
            "next_fire": null,
            "last_missed": null,
            "last_skip": null,
            "suspended": false,
        });
        let path = dir.join(format!("{profile}.json"));
        std::fs::write(&path, state.to_string()).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
    }
    let port = free_port();
    w.start_daemon_with(&[], &["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let deadline = Instant::now() + MIN;
    let text = loop {
        let text = http_get(port, "/metrics", None)
            .map(|(_, body)| body)
            .unwrap_or_default();
        let fired = value(
            &text,
            "agentd_schedule_fires_total",
            &[("profile", "minutely")],
        );
        let missed = value(
            &text,
            "agentd_schedule_missed_fires_total",
            &[("profile", "yearly")],
        );
        if fired.is_some() && missed.is_some() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no fire or missed fire counted\n--- metrics ---\n{text}\n--- log ---\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    promtool_check(&text);
    // One fire file per counted fire (a minute may have turned meanwhile).
    let files = std::fs::read_dir(w.desired.join("requests"))
        .expect("requests")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("minutely-"))
        .count();
    let fired = value(
        &text,
        "agentd_schedule_fires_total",
        &[("profile", "minutely")],
    );
    assert!(
        fired.is_some_and(|n| n >= 1.0 && n <= files as f64),
        "{fired:?}, {files} files"
    );
    assert_eq!(
        value(
            &text,
            "agentd_schedule_missed_fires_total",
            &[("profile", "yearly")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "agentd_schedule_fires_total",
            &[("profile", "yearly")]
        ),
        None
    );
}

#[test]
fn an_audit_record_left_incomplete_is_counted_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // A hard-linked file in the record: it is left unsealed and incomplete.
    w.sh_profile(
        "linker",
        "echo data > \"$AGENTD_AUDIT_DIR/a\"; ln \"$AGENTD_AUDIT_DIR/a\" \"$AGENTD_AUDIT_DIR/b\"; exit 0",
        "",
    );
    w.sh_profile("ok", "true", "");
    w.request("i-linker", "profile = \"linker\"\n");
    w.request("i-ok", "profile = \"ok\"\n");
    let port = free_port();
    w.start_daemon_with(&[], &["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let s = w.wait_done("i-linker");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("audit record left incomplete")),
        "{s}"
    );
    w.wait_done("i-ok");
    let text = scrape(port);
    promtool_check(&text);
    assert_eq!(
        value(&text, "agentd_audit_records_incomplete_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "agentd_audit_records_sealed_total", &[]),
        Some(1.0),
        "{text}"
    );
}
