//! Sessions with `egress` (issue 19), continued: names that resolve to the
//! host's loopback, the metrics, a daemon restart (the listener returns on
//! the same port, or fails closed when the port is taken), and a hostile
//! agent. Servers on the host's 127.0.0.1 only; rootful, and rootless in
//! scripts/test's second pass.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd::{Placement, listen_in};

use crate::egress::{HttpServer, SH_LIB, egress_lines, egress_profile};
use crate::util::{World, require_podman, running_rootless};

/// `GET /metrics` from the daemon's metrics listener.
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A folder the session can write (mounted read-write) and the test reads.
pub fn shared_dir(w: &World) -> PathBuf {
    let d = w.path().join("x");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    d
}

pub fn wait_file(path: &Path, timeout: Duration, w: &World) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && t.ends_with('\n')
        {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared\n--- daemon log ---\n{}",
            path.display(),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_listed_name_resolving_to_loopback_is_denied_unless_the_entry_allows_private_issue_19() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let by_name = HttpServer::start("by name\n");
    let private = HttpServer::start("private ok\n");
    let script = format!(
        r#"{SH_LIB}
echo "PLAIN: $(ask 'CONNECT localhost:{a} HTTP/1.1\r\n\r\n')"
exec 3<>/dev/tcp/127.0.0.1/$(proxy_port)
printf 'GET http://LocalHost.:{b}/ HTTP/1.1\r\n\r\n' >&3
tr -d '\r' <&3 | grep -q '^private ok$' && echo PRIVATE_OK
echo "NUMERIC: $(ask 'CONNECT 2130706433:{a} HTTP/1.1\r\n\r\n')"
"#,
        a = by_name.port,
        b = private.port
    );
    egress_profile(
        &w,
        "names",
        &script,
        &format!(
            "[\"localhost:{}\", {{ host = \"localhost\", port = {}, allow_private = true }}]",
            by_name.port, private.port
        ),
        "",
    );
    w.request("r", "profile = \"names\"\n");
    let metrics = free_port();
    w.start_daemon_with(&[], &["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
    let s = w.wait_done("r");
    let console = w.console("r");
    assert_eq!(s["outcome"], "success", "{console}");
    for want in [
        "PLAIN: HTTP/1.1 403 Forbidden",
        "PRIVATE_OK",
        "NUMERIC: HTTP/1.1 400 Bad Request",
    ] {
        assert!(
            console.lines().any(|l| l == want),
            "missing {want:?} in:\n{console}"
        );
    }
    assert_eq!(by_name.seen(), 0, "a name resolving to loopback is refused");
    assert_eq!(private.seen(), 1);
    let lines = egress_lines(&w.audit_dir("r"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let line = |port: u16, decision: &str| {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["port"] == port && l["decision"] == decision)
            .filter(|l| l["host"] != "2130706433")
            .collect();
        assert_eq!(found.len(), 1, "{port} {decision}: {lines:?}");
        found[0].clone()
    };
    let plain = line(by_name.port, "denied");
    assert_eq!(plain["host"], "localhost");
    assert_eq!(
        plain["reason"],
        "resolves to 127.0.0.1 (a loopback address); the entry needs allow_private = true"
    );
    let allowed = line(private.port, "allowed");
    assert_eq!(allowed["host"], "LocalHost.");
    assert_eq!(allowed["addr"], format!("127.0.0.1:{}", private.port));
    assert_eq!(
        lines.iter().filter(|l| l["host"] == "2130706433").count(),
        1
    );
    let text = scrape(metrics);
    let series =
        |name: &str, labels: &str| sample(&text, &format!("{name}{{profile=\"names\",{labels}}}"));
    assert_eq!(
        series("agentd_egress_connections_total", "decision=\"allowed\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series("agentd_egress_connections_total", "decision=\"denied\""),
        Some(2.0),
        "{text}"
    );
    let inn = series("agentd_egress_bytes_total", "direction=\"in\"").unwrap_or(0.0);
    assert_eq!(inn, allowed["bytes_in"].as_f64().unwrap_or(-1.0), "{text}");
    assert!(series("agentd_egress_bytes_total", "direction=\"out\"").unwrap_or(0.0) > 0.0);
}

/// Take `port` in the network namespace of `pid` as the daemon would
/// (this test's process holds the socket): a squatter.
fn squat(pid: u32, port: u16) -> std::net::TcpListener {
    let how = if running_rootless() {
        Placement::Helper(assert_cmd::cargo::cargo_bin("agentd"))
    } else {
        Placement::Thread
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(listen_in(pid, port, &how))
        .expect("the squatter takes the port")
}

#[test]
fn after_a_restart_the_proxy_returns_on_its_port_or_fails_closed_if_taken_issue_19() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let server = HttpServer::start("still here\n");
    let x = shared_dir(&w);
    // Each round waits for the test's go, then asks the listed server
    // through the proxy and writes what it got.
    let script = format!(
        r#"{SH_LIB}
round() {{
  until [ -e /x/go$1 ]; do sleep 0.05; done
  r=$(exec 3<>/dev/tcp/127.0.0.1/$(proxy_port) && printf 'GET http://127.0.0.1:{p}/ HTTP/1.1\r\n\r\n' >&3 && timeout 5 tr -d '\r' <&3 | tail -n1)
  echo "${{r:-nothing}}" > /x/out$1
}}
round 1; round 2; round 3
"#,
        p = server.port
    );
    egress_profile(
        &w,
        "restart",
        &script,
        &format!("[\"127.0.0.1:{}\"]", server.port),
        &format!(
            "mounts = [{{ source = \"{}\", target = \"/x\", read_only = false }}]",
            x.display()
        ),
    );
    w.request("r", "profile = \"restart\"\n");
    w.start_daemon();
    w.wait_for("r", Duration::from_secs(60), |s| s["phase"] == "running");
    std::fs::write(x.join("go1"), "").expect("go1");
    assert_eq!(
        wait_file(&x.join("out1"), Duration::from_secs(30), &w),
        "still here\n"
    );
    // While the session runs, `logs --egress` prints its log as it grows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let out = w
            .agentd()
            .args(["logs", "r", "--egress"])
            .output()
            .expect("logs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().count() == 1 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(live.contains("\"decision\":\"allowed\""), "{live}");

    // kill -9: the listener dies with the daemon; the restarted daemon
    // puts it back on the same port (the session's HTTP_PROXY is fixed).
    w.kill9();
    w.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.log().contains("egress proxy serving the session")
        || w.log().matches("egress proxy serving the session").count() < 2
    {
        assert!(
            Instant::now() < deadline,
            "the proxy did not come back\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(x.join("go2"), "").expect("go2");
    assert_eq!(
        wait_file(&x.join("out2"), Duration::from_secs(30), &w),
        "still here\n"
    );
    assert_eq!(server.seen(), 2);

    // kill -9 again, and something takes the port in the session's
    // namespace before the daemon is back: it opens nothing else.
    w.kill9();
    let container = w
        .status("r")
        .and_then(|s| s["container"].as_str().map(str::to_string))
        .expect("container");
    let out = w
        .podman()
        .args(["inspect", "-f", "{{.State.Pid}}", &container])
        .output()
        .expect("inspect");
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let squatter = squat(pid, 880);
    w.start_daemon();
    let s = w.wait_for("r", Duration::from_secs(30), |s| {
        s["message"].as_str().is_some_and(|m| m.contains("egress"))
    });
    let msg = s["message"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains("port 880 is already taken") && msg.contains("no way out"),
        "{msg}"
    );
    std::fs::write(x.join("go3"), "").expect("go3");
    assert_eq!(
        wait_file(&x.join("out3"), Duration::from_secs(30), &w),
        "nothing\n"
    );
    drop(squatter);
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success");
    assert_eq!(
        server.seen(),
        2,
        "nothing went out while the port was taken"
    );
    // One record, appended across both restarts.
    let lines = egress_lines(&w.audit_dir("r"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["decision"] == "allowed" && l["bytes_in"].as_u64() > Some(0))
    );
    let verify = w
        .agentd()
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The daemon's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_hostile_agent_cannot_hurt_the_daemon_or_other_sessions_through_its_proxy_issue_19() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let server = HttpServer::start("ok\n");
    let x = shared_dir(&w);
    let allowed = format!("[\"127.0.0.1:{}\"]", server.port);
    // A well-behaved session: one request through its proxy.
    let quick = format!(
        r#"{SH_LIB}
exec 3<>/dev/tcp/127.0.0.1/$(proxy_port)
printf 'GET http://127.0.0.1:{p}/ HTTP/1.1\r\n\r\n' >&3
tr -d '\r' <&3 | grep -qx ok
"#,
        p = server.port
    );
    egress_profile(&w, "quick", &quick, &allowed, "");
    // The hostile one: a CONNECT tunnel that never sends a byte, a
    // megabyte of header, then 1,000 connections at once that never send
    // a byte (two shells, 500 each: the container allows 1,024
    // descriptors), all held until the test says stop.
    let hostile = format!(
        r#"{SH_LIB}
port=$(proxy_port)
flood() {{ for i in $(seq 500); do exec {{fd}}<>/dev/tcp/127.0.0.1/$port || echo FAILED_OPEN; done; touch /x/flood$1; until [ -e /x/end ]; do sleep 0.1; done; }}
exec 5<>/dev/tcp/127.0.0.1/$port
printf 'CONNECT 127.0.0.1:{p} HTTP/1.1\r\n\r\n' >&5
read -r tunnel <&5
echo "TUNNEL: ${{tunnel%$'\r'}}"
exec 3<>/dev/tcp/127.0.0.1/$port
{{ printf 'GET http://127.0.0.1:{p}/ HTTP/1.1\r\nX: '; head -c 1048576 /dev/zero | tr '\0' a; }} >&3 2>/dev/null
echo "BIG: $(timeout 10 head -n1 <&3 | tr -d '\r')"
exec 3<&-
touch /x/big
flood a & flood b &
wait
"#,
        p = server.port
    );
    egress_profile(
        &w,
        "hostile",
        &hostile,
        &allowed,
        &format!(
            "mounts = [{{ source = \"{}\", target = \"/x\", read_only = false }}]",
            x.display()
        ),
    );
    w.start_daemon();
    let pid = w.daemon_pid().expect("daemon pid");
    // Baseline: a quick session on an idle daemon.
    let timed = |w: &World, id: &str| {
        let t = Instant::now();
        w.request(id, "profile = \"quick\"\n");
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "success", "{s}");
        t.elapsed()
    };
    timed(&w, "q0");
    let baseline = timed(&w, "q1");
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_kib(pid);

    w.request("h", "profile = \"hostile\"\n");
    for f in ["big", "flooda", "floodb"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !x.join(f).exists() {
            assert!(
                Instant::now() < deadline,
                "{f}: the flood did not happen\n{}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // While the flood is held open: another session starts and finishes
    // on time, and the daemon's memory stays put.
    let during = timed(&w, "q2");
    let rss_during = rss_kib(pid);
    // The silent ones are closed by the head timeout, not by the end.
    let log = w.audit_dir("h");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !egress_lines(&log)
        .iter()
        .any(|l| l["reason"] == "no complete request head within 10s")
    {
        assert!(Instant::now() < deadline, "no head timeout\n{}", w.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_timeouts = rss_kib(pid);
    std::fs::write(x.join("end"), "").expect("end");
    let s = w.wait_done("h");
    let console = w.console("h");
    assert_eq!(s["outcome"], "success", "{console}");
    assert!(console.contains("BIG: HTTP/1.1 431 "), "{console}");
    assert!(
        console.contains("TUNNEL: HTTP/1.1 200 Connection established"),
        "{console}"
    );
    assert!(!console.contains("FAILED_OPEN"), "{console}");
    let rss_after = rss_kib(pid);
    eprintln!(
        "quick session: {baseline:?} idle, {during:?} during the flood; daemon RSS {rss_before} KiB before, {rss_during} KiB during, {rss_timeouts} KiB at the head timeouts, {rss_after} KiB after"
    );
    assert!(
        during < baseline * 2 + Duration::from_secs(5),
        "a session during the flood took {during:?} (idle: {baseline:?})"
    );
    let grown = rss_during
        .max(rss_timeouts)
        .max(rss_after)
        .saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "the daemon grew by {grown} KiB");
    let lines = egress_lines(&w.audit_dir("h"));
    let count = |needle: &str| {
        lines
            .iter()
            .filter(|l| l["reason"].as_str().is_some_and(|r| r.contains(needle)))
            .count()
    };
    assert!(
        count("too many connections at once (the limit is 64)") >= 900,
        "{}",
        lines.len()
    );
    // The silent tunnel holds one of the session's 64 slots to the end.
    assert_eq!(count("no complete request head within 10s"), 63);
    assert_eq!(count("the request head is larger than 16384 bytes"), 1);
    let tunnels: Vec<_> = lines
        .iter()
        .filter(|l| l["decision"] == "allowed")
        .collect();
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(tunnels[0]["port"], server.port);
    assert_eq!(tunnels[0]["bytes_out"], 0, "{}", tunnels[0]);
    assert_eq!(
        server.seen(),
        4,
        "only the quick sessions and the silent tunnel reached the server"
    );
}
