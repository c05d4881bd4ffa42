//! Issue 13, repositories: what a request may clone, where the clone token
//! goes, git's isolation from the daemon user's configuration, and the
//! mirror cache (not clonable, per-repository locks, bounded, pruned).
//! Remote repositories are served on 127.0.0.1 by `crate::git_server`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{
    World, agentd, leak_haystacks, require_podman, sample_ps, test_image, toml_string, write,
};

/// A profile on the test image that runs `script` with `repo`.
fn repo_profile(w: &World, name: &str, repo: &str, script: &str, extra: &str) {
    w.profile(
        name,
        &format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = {}\nnetwork = \"none\"\n{extra}\n",
            test_image(),
            toml_string(script),
            toml_string(repo)
        ),
    );
}

fn message(s: &serde_json::Value) -> &str {
    s["message"].as_str().unwrap_or("")
}

#[test]
fn request_naming_a_repo_its_profile_does_not_allow_is_invalid_issue_13() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"file:///srv/git/app.git\"\n",
    );
    write(
        d,
        "profiles/q.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"https://git.example.com/a/app.git\"\nallowed_repos = [\"https://git.example.com/a/*\", \"/srv/git/*\"]\n",
    );
    // Whatever root can read: refused.
    write(
        d,
        "requests/steal.toml",
        "profile = \"p\"\nrepo = \"/root\"\n",
    );
    // The profile's own repo, as a local path: fine.
    write(
        d,
        "requests/own.toml",
        "profile = \"p\"\nrepo = \"/srv/git/app.git\"\n",
    );
    // Allowed by a pattern: fine; outside every pattern: refused.
    write(
        d,
        "requests/ok.toml",
        "profile = \"q\"\nrepo = \"file:///srv/git/lib.git\"\n",
    );
    write(
        d,
        "requests/far.toml",
        "profile = \"q\"\nrepo = \"https://git.example.com/b/secret.git\"\n",
    );
    let out = agentd().arg("validate").arg(d).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let steal = stdout
        .lines()
        .find(|l| l.contains("requests/steal.toml"))
        .unwrap_or_else(|| panic!("steal.toml not reported:\n{stdout}"));
    assert!(
        steal.contains("steal.toml:2:1: repo: `/root` differs from profile `p`'s repo")
            && steal.contains("hint: add a pattern to allowed_repos in profile p"),
        "{steal}"
    );
    assert!(
        stdout.contains("far.toml:2:1: repo: `https://git.example.com/b/secret.git` differs"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("own.toml") && !stdout.contains("ok.toml"),
        "{stdout}"
    );
}

#[test]
fn a_token_for_a_plain_http_repo_is_a_validation_error_issue_13() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"http://git.example.com/a.git\"\nrepo_token_source = \"TOK\"\n",
    );
    let out = agentd()
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "p.toml:4:1: repo_token_source `TOK` would send the clone token over plain http://"
        ),
        "{stdout}"
    );
}

#[test]
fn the_mirror_cache_is_not_clonable_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let served = w.path().join("served");
    bare_repo(&served.join("remote.git"), "remote repo");
    let server = GitServer::start(&w.path().join("srv"), &served, None, None);
    repo_profile(&w, "remote", &server.url("remote.git"), "cat README.md", "");
    w.request("fill", "profile = \"remote\"\n");
    w.start_daemon();
    let s = w.wait_done("fill");
    assert_eq!(s["outcome"], "success", "{s}");
    let mirror = std::fs::read_dir(w.state.join("cache/git"))
        .expect("cache")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .expect("a mirror");
    // A profile naming the mirror (as a path, or as a file:// URL) gets
    // nothing out of it.
    repo_profile(
        &w,
        "thief",
        &mirror.display().to_string(),
        "cat README.md",
        "",
    );
    w.request("steal", "profile = \"thief\"\n");
    let s = w.wait_done("steal");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    assert!(
        message(&s).contains("is inside the daemon's state dir")
            && message(&s).contains(&mirror.display().to_string()),
        "{s}"
    );
    repo_profile(
        &w,
        "thief2",
        &format!("file://{}", mirror.display()),
        "cat README.md",
        "",
    );
    w.request("steal2", "profile = \"thief2\"\n");
    let s = w.wait_done("steal2");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    // Nor can a request whose profile allows every local path.
    repo_profile(
        &w,
        "wide",
        &w.repo_url.clone(),
        "cat README.md",
        "allowed_repos = [\"/**\"]",
    );
    w.request(
        "steal3",
        &format!(
            "profile = \"wide\"\nrepo = {}\n",
            toml_string(&mirror.display().to_string())
        ),
    );
    let s = w.wait_done("steal3");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    assert!(message(&s).contains("state dir"), "{s}");
    // A work folder is not clonable either (its path is under the state dir).
    w.request(
        "steal4",
        &format!(
            "profile = \"wide\"\nrepo = {}\n",
            toml_string(
                &w.state
                    .join("work/0123456789abcdef/home/repo")
                    .display()
                    .to_string()
            )
        ),
    );
    let s = w.wait_done("steal4");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    assert!(message(&s).contains("state dir"), "{s}");
    // The daemon reports a request naming a repo its profile does not allow
    // as invalid, and never starts it.
    w.request("nope", "profile = \"remote\"\nrepo = \"/etc\"\n");
    let s = w.wait_for("nope", Duration::from_secs(30), |s| s["phase"] == "invalid");
    assert!(
        message(&s).contains("repo: `/etc`")
            && message(&s).contains("hint: add a pattern to allowed_repos in profile remote"),
        "{s}"
    );
    assert!(s["session_id"].is_null(), "{s}");
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

#[test]
fn git_ignores_the_daemon_users_gitconfig_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let served = w.path().join("served");
    bare_repo(&served.join("r.git"), "remote repo");
    bare_repo(&served.join("locked.git"), "locked repo");
    let open = GitServer::start(&w.path().join("srv-open"), &served, None, None);
    // A remote that wants credentials the profile does not have.
    let locked = GitServer::start(&w.path().join("srv-locked"), &served, None, Some("s3cret"));
    // Root's ~/.gitconfig redirects the profile's remote to a local
    // repository of its own, and names a credential helper that leaves a
    // mark when it runs.
    let evil = w.path().join("evil");
    bare_repo(&evil.join("r.git"), "evil repo");
    let home = w.path().join("home");
    let marker = w.path().join("helper-ran");
    write(
        &home,
        ".gitconfig",
        format!(
            "[url \"file://{}/\"]\n\tinsteadOf = {}\n[credential]\n\thelper = \"!f() {{ touch {}; }}; f\"\n[protocol \"file\"]\n\tallow = always\n",
            evil.display(),
            open.url(""),
            marker.display()
        ),
    );
    repo_profile(&w, "p", &open.url("r.git"), "cat README.md", "");
    w.request("r", "profile = \"p\"\n");
    repo_profile(&w, "locked", &locked.url("locked.git"), "cat README.md", "");
    w.request("l", "profile = \"locked\"\n");
    w.start_daemon_with(&[("HOME", home.to_str().expect("utf8"))], &[]);
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let console = w.console("r");
    assert_eq!(
        console, "remote repo\n",
        "insteadOf from ~/.gitconfig applied"
    );
    let s = w.wait_done("l");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    assert!(
        !marker.exists(),
        "the credential helper of ~/.gitconfig ran for the clone"
    );
    assert!(
        locked.requests().contains("auth=missing"),
        "{}",
        locked.requests()
    );
}

#[test]
fn a_stalled_remote_blocks_only_its_own_clone_and_times_out_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // A remote that accepts connections and never answers.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stall_port = stall.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in stall.incoming() {
            held.push(c);
        }
    });
    let served = w.path().join("served");
    bare_repo(&served.join("fast.git"), "fast repo");
    let server = GitServer::start(&w.path().join("srv"), &served, None, None);
    repo_profile(
        &w,
        "slow",
        &format!("http://127.0.0.1:{stall_port}/slow.git"),
        "cat README.md",
        "",
    );
    repo_profile(&w, "fast", &server.url("fast.git"), "cat README.md", "");
    w.request("s", "profile = \"slow\"\n");
    // An environment variable, not a flag: the daemon of an older build
    // ignores it instead of refusing to start.
    w.start_daemon_with(&[("AGENTD_CLONE_TIMEOUT", "75s")], &[]);
    w.wait_for("s", Duration::from_secs(60), |s| s["phase"] == "starting");
    let started = Instant::now();
    w.request("f", "profile = \"fast\"\n");
    // Well inside the stalled clone's 75 s, with room for a loaded machine.
    let f = w.wait_for("f", Duration::from_secs(60), |s| s["phase"] == "done");
    assert_eq!(f["outcome"], "success", "{f}");
    assert_eq!(w.console("f"), "fast repo\n");
    assert_eq!(
        w.status("s").expect("status")["phase"],
        "starting",
        "the stalled clone should still be waiting"
    );
    // The stalled clone itself is bounded.
    let s = w.wait_for("s", Duration::from_secs(150), |s| s["phase"] == "done");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    assert!(message(&s).contains("did not finish within 75s"), "{s}");
    assert!(started.elapsed() < Duration::from_secs(140));
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

#[test]
fn unused_mirrors_are_pruned_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // A mirror last used 30 days ago.
    let stale = w.state.join("cache/git/0123456789abcdef.git");
    write(&stale, "HEAD", "ref: refs/heads/main\n");
    let marker = std::fs::File::create(stale.join("agentd-used")).expect("marker");
    marker
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(30 * 86_400))
        .expect("set mtime");
    let served = w.path().join("served");
    bare_repo(&served.join("r.git"), "remote repo");
    let server = GitServer::start(&w.path().join("srv"), &served, None, None);
    repo_profile(&w, "p", &server.url("r.git"), "cat README.md", "");
    w.request("r", "profile = \"p\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let left: Vec<String> = std::fs::read_dir(w.state.join("cache/git"))
        .expect("cache")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !stale.exists(),
        "a mirror unused for 30 days was kept: {left:?}"
    );
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn clone_token_reaches_only_an_allowed_https_remote_and_never_leaks_issue_13() {
    if !require_podman() {
        return;
    }
    let secret = format!("sekrit-{}", agentd::new_session_id());
    let token = format!("clonetok-{}", agentd::new_session_id());
    let mut w = World::new();
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    bare_repo(&served.join("private.git"), "private repo over https");
    let tls = GitServer::start(
        &w.path().join("srv-tls"),
        &served,
        Some((&cert, &key)),
        Some(&token),
    );
    // The same repository, also on plain http (demanding the token too).
    let plain = GitServer::start(&w.path().join("srv-plain"), &served, None, Some(&token));
    // The server really rejects an unauthenticated fetch.
    let probe = Command::new("git")
        .args(["ls-remote", &tls.url("private.git")])
        .env("GIT_SSL_CAINFO", &cert)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(
        !probe.status.success(),
        "the server let an anonymous fetch through"
    );

    std::fs::create_dir_all(w.path().join("gate")).expect("mkdir");
    let script = "cat README.md; test -n \"$MY_SECRET\" && echo has-secret; env | grep -c clonetok; git config --get remote.origin.url; grep -rc clonetok .git | grep -v ':0$' || echo no-token-in-clone; until [ -e /gate/go ]; do sleep 0.05; done";
    repo_profile(
        &w,
        "leaky",
        &tls.url("private.git"),
        script,
        &format!(
            "credentials = [{{ name = \"MY_SECRET\", source = \"HOST_SECRET\" }}]\nrepo_token_source = \"HOST_REPO_TOKEN\"\nallowed_repos = [\"http://127.0.0.1:*/**\"]\nmounts = [{{ source = \"{}\", target = \"/gate\" }}]\n",
            w.path().join("gate").display()
        ),
    );
    w.request("r", "profile = \"leaky\"\n");
    // The process table, sampled every few milliseconds from before the
    // daemon starts until the session runs: it covers git's clone too.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_ps(std::sync::Arc::clone(&stop));
    w.start_daemon_with(
        &[
            ("HOST_SECRET", &secret),
            ("HOST_REPO_TOKEN", &token),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &[],
    );
    let s = w.wait_for("r", Duration::from_secs(60), |s| {
        s["phase"] == "running" || s["phase"] == "done"
    });
    assert_eq!(s["phase"], "running", "{s}");
    let container = s["container"].as_str().expect("container").to_string();
    let inspect = Command::new("podman")
        .args(["inspect", &container])
        .output()
        .expect("inspect");
    assert!(inspect.status.success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ps = sampler.join().expect("ps sampler");
    let saw_git = ps
        .iter()
        .filter(|o| String::from_utf8_lossy(o).contains("git-remote-https"))
        .count();
    eprintln!(
        "{} ps samples, {saw_git} taken while git fetched over https",
        ps.len()
    );
    w.open_gate();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let console = w.console("r");
    assert_eq!(
        console,
        format!(
            "private repo over https\nhas-secret\n0\n{}\nno-token-in-clone\n",
            tls.url("private.git")
        )
    );
    // The clone used the token: the server saw it.
    assert!(
        tls.requests().contains("auth=ok") && !tls.requests().contains("auth=bad"),
        "{}",
        tls.requests()
    );

    // The same repository named by a request over plain http: allowed by the
    // profile's pattern, but the token never goes with it, so the server
    // turns the clone away.
    w.request(
        "plain",
        &format!(
            "profile = \"leaky\"\nrepo = {}\n",
            toml_string(&plain.url("private.git"))
        ),
    );
    let p = w.wait_done("plain");
    assert_eq!(p["outcome"], "start_failed", "{p}");
    assert!(!plain.requests().is_empty());
    assert!(
        !plain.requests().contains("auth=ok") && !plain.requests().contains("auth=bad"),
        "the token went over plain http: {}",
        plain.requests()
    );

    // Everything the daemon keeps: status, specs, audit records, the mirror
    // cache (its config and refs), git's home, work folders.
    let haystacks = leak_haystacks(
        &w,
        vec![
            ("podman inspect".into(), inspect.stdout),
            ("ps".into(), ps.concat()),
        ],
    );
    assert!(haystacks.len() > 10);
    let mut saw = [false; 3];
    for (name, bytes) in &haystacks {
        saw[0] |= name.contains("/status/");
        saw[1] |= name.contains("/audit/");
        saw[2] |= name.contains("/cache/git/");
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&secret), "credential value found in {name}");
        assert!(!text.contains(&token), "repo token found in {name}");
    }
    assert_eq!(saw, [true; 3], "status, audit and cache were searched");
    assert!(w.containers_after_removal().is_empty());
}
