//! Issue 17 (second hardening pass), items 6-8 and the defects found in the
//! same read: profile mounts never show a session the daemon's control
//! surface (Podman's own paths, registry credentials, the desired dir's
//! `profiles/` and `requests/`, rootless the daemon user's home and runtime
//! dir); `network = "host"` only with `--allow-host-network`; idle
//! connections cannot starve the metrics listener; every subcommand's
//! `--help` shows the global options apart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::*;

/// The facts of `podman info` (as the world's user) a test names paths by.
fn podman_info(w: &World) -> serde_json::Value {
    let out = w
        .podman()
        .args(["info", "--format", "json"])
        .output()
        .expect("podman info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("podman info is JSON")
}

/// The nearest existing folder at or above `p`.
fn existing_ancestor(p: &Path) -> PathBuf {
    p.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// A profile on the test image that mounts `source` read-only at /mnt/x.
fn mounting(w: &World, profile: &str, source: &Path) {
    w.sh_profile(
        profile,
        "echo should-not-run",
        &format!(
            "mounts = [{{ source = {}, target = \"/mnt/x\" }}]",
            toml_string(&source.display().to_string())
        ),
    );
}

/// The request ended `start_failed` before any container existed, with a
/// message that starts with `field`, names `path`, and contains every one
/// of `says`.
fn refused(w: &World, id: &str, field: &str, path: &Path, says: &[&str]) {
    let s = w.wait_done(id);
    assert_eq!(s["outcome"], "start_failed", "{id}: {s}\n{}", w.log());
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with(field), "{id}: {msg}");
    assert!(
        msg.contains(&format!("`{}`", path.display())),
        "{id} should name {}: {msg}",
        path.display()
    );
    for want in says {
        assert!(msg.contains(want), "{id} should say `{want}`: {msg}");
    }
    assert_eq!(w.containers_created_for(id), 0, "{id}");
}

#[test]
fn mounts_of_podmans_own_paths_and_registry_credentials_are_refused_issue_17() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let info = podman_info(&w);
    let run_root = PathBuf::from(info["store"]["runRoot"].as_str().expect("runRoot"));
    let socket = PathBuf::from(
        info["host"]["remoteSocket"]["path"]
            .as_str()
            .expect("remoteSocket.path"),
    );
    // The folder conmon writes exit files to, which the daemon trusts.
    let exits = if running_rootless() {
        PathBuf::from(std::env::var("XDG_RUNTIME_DIR").expect("XDG_RUNTIME_DIR"))
            .join("libpod/tmp/exits")
    } else {
        PathBuf::from("/run/libpod/exits")
    };
    assert!(exits.is_dir(), "{} is missing", exits.display());
    // Registry credentials where Podman reads them (REGISTRY_AUTH_FILE);
    // a read-only mount of them leaks them as well.
    let auth = w.path().join("registry/auth.json");
    write(w.path(), "registry/auth.json", "{\"auths\": {}}\n");
    // The socket need not exist (no podman.socket here): a mount holding
    // where it would be is refused all the same.
    let around_socket = existing_ancestor(socket.parent().expect("socket folder"));
    mounting(&w, "runroot", &run_root);
    mounting(&w, "socket", &around_socket);
    mounting(&w, "exits", &exits);
    mounting(&w, "auth", &auth);
    for p in ["runroot", "socket", "exits", "auth"] {
        w.request(&format!("g-{p}"), &format!("profile = \"{p}\"\n"));
    }
    let auth_env = auth.display().to_string();
    w.start_daemon_with(&[("REGISTRY_AUTH_FILE", &auth_env)], &[]);
    let run_root_says = format!("Podman run root `{}`", run_root.display());
    refused(
        &w,
        "g-runroot",
        "mounts[0].source",
        &run_root,
        &[&run_root_says, "controls its containers"],
    );
    let socket_says = format!("Podman socket `{}`", socket.display());
    refused(
        &w,
        "g-socket",
        "mounts[0].source",
        &around_socket,
        &[&socket_says],
    );
    let exits_says = format!("exit-file folder `{}`", exits.display());
    refused(
        &w,
        "g-exits",
        "mounts[0].source",
        &exits,
        &[&exits_says, "exit codes"],
    );
    let auth_says = format!("registry credentials `{}`", auth.display());
    refused(
        &w,
        "g-auth",
        "mounts[0].source",
        &auth,
        &[&auth_says, "read-only"],
    );
}

#[test]
fn the_desired_dirs_profiles_and_requests_are_refused_a_methodology_folder_beside_them_is_not_issue_17()
 {
    if !require_podman() {
        return;
    }
    // A session that could write profiles/ would define its own sessions
    // (mounts, network, credentials); requests/ its own requests.
    let mut w = World::new();
    let profiles = w.desired.join("profiles");
    let requests = w.desired.join("requests");
    let methodology = w.desired.join("methodology");
    write(&w.desired, "methodology/guide.md", "be careful\n");
    mounting(&w, "profiles", &profiles);
    mounting(&w, "requests", &requests);
    mounting(&w, "checkout", &w.desired);
    w.sh_profile(
        "meth",
        "echo should-not-run",
        &format!(
            "methodology_dir = {}",
            toml_string(&profiles.display().to_string())
        ),
    );
    // Kept inside the desired checkout, beside profiles/ and requests/:
    // still mountable, as methodology_dir and as a mount.
    w.sh_profile(
        "beside",
        "cat /agentd/methodology/guide.md /mnt/m/guide.md",
        &format!(
            "methodology_dir = {m}\nmounts = [{{ source = {m}, target = \"/mnt/m\" }}]",
            m = toml_string(&methodology.display().to_string())
        ),
    );
    for p in ["profiles", "requests", "checkout", "meth", "beside"] {
        w.request(&format!("d-{p}"), &format!("profile = \"{p}\"\n"));
    }
    w.start_daemon();
    let profiles_says = format!("profiles/ folder `{}`", profiles.display());
    let requests_says = format!("requests/ folder `{}`", requests.display());
    refused(
        &w,
        "d-profiles",
        "mounts[0].source",
        &profiles,
        &[&profiles_says, "defines its own sessions"],
    );
    refused(
        &w,
        "d-requests",
        "mounts[0].source",
        &requests,
        &[&requests_says],
    );
    refused(
        &w,
        "d-checkout",
        "mounts[0].source",
        &w.desired,
        &[&profiles_says, &requests_says],
    );
    refused(
        &w,
        "d-meth",
        "methodology_dir",
        &profiles,
        &[&profiles_says],
    );
    let s = w.wait_done("d-beside");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert_eq!(w.console("d-beside").matches("be careful").count(), 2);
}

#[test]
fn rootless_the_daemon_users_home_and_runtime_dir_are_refused_issue_17() {
    if !require_podman() {
        return;
    }
    // Rootless, the agent has the daemon user's uid on the host: a
    // writable ~/.config/systemd, ~/.config/containers, ~/.ssh or
    // ~/.bashrc runs its code as that user; the runtime dir holds the
    // user's D-Bus and systemd sockets.
    let mut w = World::new_rootless();
    let user = w.run_as.clone().expect("rootless world");
    let containers_conf = user.home.join(".config/containers");
    let bashrc = user.home.join(".bashrc");
    assert!(containers_conf.is_dir() && bashrc.is_file());
    let runtime = user.runtime_dir();
    mounting(&w, "conf", &containers_conf);
    mounting(&w, "rc", &bashrc);
    mounting(&w, "home", &user.home);
    mounting(&w, "runtime", &runtime);
    w.sh_profile(
        "meth",
        "echo should-not-run",
        &format!(
            "methodology_dir = {}",
            toml_string(&user.home.join(".config").display().to_string())
        ),
    );
    for p in ["conf", "rc", "home", "runtime", "meth"] {
        w.request(&format!("h-{p}"), &format!("profile = \"{p}\"\n"));
    }
    w.start_daemon();
    let home_says = format!("user's home `{}`", user.home.display());
    for (id, field, path) in [
        ("h-conf", "mounts[0].source", &containers_conf),
        ("h-rc", "mounts[0].source", &bashrc),
        ("h-home", "mounts[0].source", &user.home),
        ("h-meth", "methodology_dir", &user.home.join(".config")),
    ] {
        refused(&w, id, field, path, &[&home_says, "runs code on the host"]);
    }
    let runtime_says = format!("runtime dir `{}`", runtime.display());
    refused(
        &w,
        "h-runtime",
        "mounts[0].source",
        &runtime,
        &[&runtime_says],
    );
}

/// A profile with `network = "host"` whose session proves it reaches the
/// host's loopback: it connects to `port` on 127.0.0.1 (bash's /dev/tcp).
fn host_network_profile(w: &World, port: u16) -> PathBuf {
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo reached-host-loopback");
    let body = format!(
        "base_image = \"{}\"\ncommand = [\"/bin/bash\", \"-c\", {}]\nrepo = \"{}\"\nnetwork = \"host\"\n",
        test_image(),
        toml_string(&script),
        w.repo_url
    );
    w.profile("hostnet", &body);
    w.desired.join("profiles/hostnet.toml")
}

#[test]
fn network_host_needs_allow_host_network_in_the_daemon_and_in_validate_issue_17() {
    if !require_podman() {
        return;
    }
    // What `network = "host"` gives an agent: the host's loopback services,
    // the metrics listener among them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut w = World::new();
    let file = host_network_profile(&w, port);
    w.request("n1", "profile = \"hostnet\"\n");

    // validate: an error at the field, naming the flag, unless given it.
    let out = w.agentd().arg("validate").output().expect("validate runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = format!("{}:4:", file.display());
    assert!(
        text.lines()
            .any(|l| l.starts_with(&line) && l.contains("--allow-host-network")),
        "want a `{line}` error naming --allow-host-network:\n{text}"
    );
    for allowing in [
        w.agentd()
            .args(["validate", "--allow-host-network"])
            .output(),
        w.agentd()
            .arg("validate")
            .env("AGENTD_ALLOW_HOST_NETWORK", "1")
            .output(),
    ] {
        let out = allowing.expect("validate runs");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The daemon: the profile is invalid, its request never runs.
    w.start_daemon();
    let s = w.wait_for("n1", Duration::from_secs(60), |s| s["phase"] == "invalid");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(msg.contains("--allow-host-network"), "{msg}");
    assert_eq!(w.containers_created_for("n1"), 0);
    w.kill9();

    // With the flag the operator chose it: the session runs on the host's
    // network.
    std::fs::remove_file(w.desired.join("requests/n1.toml")).expect("rm");
    w.request("n2", "profile = \"hostnet\"\n");
    w.start_daemon_with(&[("AGENTD_ALLOW_HOST_NETWORK", "1")], &[]);
    let s = w.wait_done("n2");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert!(w.console("n2").contains("reached-host-loopback"));
    drop(listener);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One `GET /metrics`; the status line and body, or why it failed.
fn try_scrape(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if reply.starts_with("HTTP/1.1 200") && reply.contains("agentd_build_info") {
        Ok(reply)
    } else {
        Err(format!("reply: {reply:?}"))
    }
}

#[test]
fn scrapes_succeed_while_50_idle_connections_are_held_and_reopened_issue_17() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let port = free_port();
    w.start_daemon_with(&[], &["--metrics-listen", &format!("127.0.0.1:{port}")]);
    w.eventually("the metrics listener", Duration::from_secs(60), || {
        try_scrape(port).is_ok()
    });
    // The attacker: 50 connections that never send a byte, each re-opened
    // as soon as the server closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attacker = {
        let (stop, reopened) = (Arc::clone(&stop), Arc::clone(&reopened));
        std::thread::spawn(move || {
            let open = || TcpStream::connect(("127.0.0.1", port)).ok();
            let mut idle: Vec<Option<TcpStream>> = (0..50).map(|_| open()).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in &mut idle {
                    let closed = match c {
                        None => true,
                        Some(s) => {
                            let _ = s.set_nonblocking(true);
                            let mut b = [0u8; 1];
                            match s.read(&mut b) {
                                Ok(0) => true,
                                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                                Ok(_) => false,
                            }
                        }
                    };
                    if closed {
                        *c = open();
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut failures = Vec::new();
    for _ in 0..20 {
        if let Err(e) = try_scrape(port) {
            failures.push(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    assert!(
        failures.is_empty(),
        "{} of 20 scrapes failed while 50 idle connections were held: {failures:?}",
        failures.len()
    );
    assert!(took < Duration::from_secs(30), "20 scrapes took {took:?}");
    // The attacker really was pushed out and came back, again and again.
    assert!(reopened.load(Ordering::Relaxed) >= 50, "{reopened:?}");
}

#[test]
fn every_subcommands_help_shows_the_global_options_under_their_own_heading_after_its_own_issue_17()
{
    let globals = [
        "--desired",
        "--state",
        "--audit-root",
        "--max-sessions",
        "--max-pending",
    ];
    let subcommands: &[&[&str]] = &[
        &["daemon"],
        &["run"],
        &["status"],
        &["logs"],
        &["cancel"],
        &["audit", "verify"],
        &["plan"],
        &["validate"],
        &["schema"],
        &["import"],
        &["completions"],
        &["man"],
    ];
    for sub in subcommands {
        let out = agentd()
            .args(*sub)
            .arg("--help")
            .output()
            .expect("agentd runs");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub:?}: {help}");
        let lines: Vec<&str> = help.lines().collect();
        let heading = |h: &str| lines.iter().position(|l| *l == h);
        let own = heading("Options:").unwrap_or_else(|| panic!("{sub:?}: no Options:\n{help}"));
        let global = heading("Global options:")
            .unwrap_or_else(|| panic!("{sub:?}: no `Global options:` heading\n{help}"));
        assert!(own < global, "{sub:?}: global options come first\n{help}");
        // Every global option is listed under its heading, none among the
        // command's own.
        let option_line = |l: &&str, flag: &str| {
            let t = l.trim_start();
            t.starts_with(&format!("{flag} ")) || t.contains(&format!(", {flag} "))
        };
        for flag in globals {
            let at = lines
                .iter()
                .position(|l| option_line(l, flag))
                .unwrap_or_else(|| panic!("{sub:?}: {flag} is not listed\n{help}"));
            assert!(
                at > global,
                "{sub:?}: {flag} is listed among the command's own options\n{help}"
            );
        }
        // The command's own options (and --help) stay under `Options:`.
        let own_flags = lines[own + 1..global]
            .iter()
            .filter(|l| l.trim_start().starts_with('-'))
            .count();
        assert!(own_flags >= 1, "{sub:?}\n{help}");
    }
}
