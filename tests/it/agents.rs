//! Issue 20 part 3: Claude Code, Codex CLI and Aider under agentd, end to
//! end. Each test runs the real CLI in its image (examples/agents/<cli>,
//! built once per machine by examples/agents/build-all) with the example's
//! own profile, pointed at a scripted fake model server on the host's
//! 127.0.0.1 that the session reaches only through its egress proxy. The
//! model's scripted answer makes the CLI write a file and commit it; the
//! commit comes back in the sealed record's `changes.bundle` and is pushed
//! by the daemon to a branch on a local https git server. The API key and
//! the git tokens appear nowhere in the record, the status or the logs.
//! Claude Code's example injects its key (issue 21): its fake speaks HTTPS
//! with a test CA the daemon trusts by `--egress-ca-file`, the session holds
//! a placeholder, and the fake receives the real key on every request.
//! Runs rootful, and rootless in scripts/test's second pass.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agents_setup::{
    Agent, ENV_LINE, FakeModel, Key, NOTE_FILE, NOTE_SUBJECT, NOTE_TEXT,
    drop_limits_rootless_cannot_enforce, profile_for, require_agent_image, secret_file,
};
use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::inject::ca_and_leaf;
use crate::util::{World, git, leak_haystacks, read_json};

/// A failing run ends in minutes, not after the example's 30m: the
/// request shortens the timeout (the CLIs take seconds here, see
/// examples/agents/README.md), and the test waits a little longer.
const REQUEST_TIMEOUT: &str = "3m";
const WAIT_FOR_DONE: Duration = Duration::from_secs(300);

/// The CLIs share the machine's two cores: one agent session at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// An injected key: the session's variable held a placeholder (the
/// environment the command printed, `ENV_LINE`), and every request reached
/// the fake over TLS with the real key in `header`, none with the
/// placeholder. The placeholder.
fn injected_key_checks(
    console: &str,
    key_var: &str,
    header: &str,
    api_key: &str,
    reqs: &[serde_json::Value],
) -> String {
    let prefix = format!("{ENV_LINE}{key_var}=");
    let held: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    let [placeholder] = held[..] else {
        panic!("the session's {key_var} is not in the console once: {held:?}\n{console}");
    };
    let hex = placeholder.strip_prefix("agentd-ph-").unwrap_or_default();
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "the session's {key_var} is no placeholder: {placeholder:?}"
    );
    assert!(
        console.lines().filter(|l| l.starts_with(ENV_LINE)).count() > 1,
        "the whole environment was printed: {console}"
    );
    assert!(!reqs.is_empty(), "the fake received nothing");
    for r in reqs {
        assert_eq!(r["tls"], true, "every request over TLS: {r}");
        assert_eq!(
            r["headers"][header].as_str(),
            Some(api_key),
            "request {} did not carry the real key in {header}",
            r["n"]
        );
        assert!(
            !r.to_string().contains(placeholder),
            "the placeholder reached the fake: {r}"
        );
    }
    placeholder.to_string()
}

fn run_agent_end_to_end(agent: &Agent) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let mut w = World::new();
    let rnd = agentd::new_session_id;
    let api_key = format!("sk-agentd-e2e-{}{}", rnd(), rnd());
    let (clone_tok, push_tok) = (format!("clone-{}", rnd()), format!("push-{}", rnd()));

    // The forge: https on 127.0.0.1, a clone token and a push token.
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    bare_repo(&served.join("repo.git"), "a repository for the agent");
    let push_file = w.path().join("server-push-token");
    secret_file(&push_file, &push_tok);
    let srv = GitServer::start_with(
        &w.path().join("srv"),
        &served,
        Some((&cert, &key)),
        Some(&clone_tok),
        &["--push-token-file", push_file.to_str().expect("utf8")],
    );
    let bare = served.join("repo.git");
    let before = w.path().join("before");
    git(
        w.path(),
        &[
            "clone",
            "-q",
            bare.to_str().expect("utf8"),
            before.to_str().expect("utf8"),
        ],
    );

    // The model API, and the credentials the example profile names, as
    // systemd would hand them over. An injected key travels over TLS only:
    // the fake speaks HTTPS with a leaf of a test CA the daemon trusts.
    let mut daemon_args: Vec<String> = Vec::new();
    let fake = if agent.key == Key::InSession {
        FakeModel::start(agent.fake, &w.path().join("fake"), None)
    } else {
        let (ca, cert, key) = ca_and_leaf(&w.path().join("fake-tls"));
        daemon_args.push("--egress-ca-file".into());
        daemon_args.push(ca.display().to_string());
        FakeModel::start(agent.fake, &w.path().join("fake"), Some((&cert, &key)))
    };
    let files = w.path().join("files");
    let creds = w.path().join("credentials");
    for d in [&files, &creds] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    secret_file(&creds.join(agent.key_credential), &api_key);
    secret_file(&creds.join("service-git-token"), &clone_tok);
    secret_file(&creds.join("service-git-push-token"), &push_tok);

    let (mut profile, image, key_var) = profile_for(agent, &fake, &srv.url("repo.git"), &files);
    require_agent_image(&image);
    w.start_daemon_with(
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf8")),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &daemon_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    drop_limits_rootless_cannot_enforce(&w, &mut profile);
    w.profile(
        agent.cli,
        &toml::to_string(&profile).expect("profile encodes"),
    );
    let session_start = Instant::now();
    w.request(
        "task",
        &format!(
            "profile = \"{}\"\nrequest = \"Write {NOTE_FILE} and commit it.\"\n\
             timeout = \"{REQUEST_TIMEOUT}\"\n",
            agent.cli
        ),
    );
    // `invalid` is final too: a profile the daemon refuses fails the test
    // at once, with the daemon's message, rather than at the deadline.
    let s = w.wait_for("task", WAIT_FOR_DONE, |s| {
        s["phase"] == "done" || s["phase"] == "invalid"
    });
    let session_secs = session_start.elapsed().as_secs_f64();
    let dir = w.audit_dir("task");
    let console = std::fs::read_to_string(dir.join("agentd/console.log")).unwrap_or_default();
    assert_eq!(
        s["outcome"],
        "success",
        "{s}\n--- console.log ---\n{console}\n--- fake model's requests ---\n{}\n\
         --- egress ---\n{:?}\n--- daemon log ---\n{}",
        fake.summary(),
        crate::egress::egress_lines(&dir),
        w.log()
    );

    // The commit, in the record's bundle.
    let head = s["changes"]["head"]
        .as_str()
        .expect("changes.head")
        .to_string();
    assert!(
        s["changes"]["commits"].as_u64().unwrap_or(0) >= 1,
        "no commit: {s}\n--- console.log ---\n{console}\n--- fake model's requests ---\n{}\n\
         --- egress ---\n{:?}",
        fake.summary(),
        crate::egress::egress_lines(&dir)
    );
    let bundle = dir.join("agentd/changes.bundle");
    let bundle_s = bundle.to_str().expect("utf8");
    git(&before, &["bundle", "verify", "-q", bundle_s]);
    assert!(
        git(&before, &["bundle", "list-heads", bundle_s]).contains(&head),
        "the bundle holds {head}"
    );
    git(
        &before,
        &["fetch", "-q", bundle_s, "+refs/*:refs/from-bundle/*"],
    );
    assert_eq!(
        git(&before, &["log", "-1", "--format=%s", &head]),
        NOTE_SUBJECT
    );
    assert_eq!(
        git(&before, &["show", &format!("{head}:{NOTE_FILE}")]),
        NOTE_TEXT
    );

    // Pushed by the daemon, with its own token, to the branch.
    let session_id = s["session_id"].as_str().expect("session_id");
    let branch = format!("refs/heads/agentd/{}/{session_id}", agent.cli);
    assert_eq!(
        s["push"],
        serde_json::json!({"result": "pushed", "ref": branch, "commit": head}),
        "{s}"
    );
    assert_eq!(git(&bare, &["rev-parse", &branch]), head);
    assert!(
        srv.requests().contains("git-receive-pack auth=push"),
        "{}",
        srv.requests()
    );

    // The CLI's own output is the console.
    for want in agent.console_has {
        assert!(console.contains(want), "{want:?} not in:\n{console}");
    }

    // The model API was reached, with the key, only through the proxy: every
    // connection is an allowed line to the fake, none was refused.
    let reqs = fake.requests();
    let with_key = reqs
        .iter()
        .filter(|r| {
            let h = &r["headers"];
            h["x-api-key"].as_str() == Some(&api_key)
                || h["authorization"].as_str() == Some(&format!("Bearer {api_key}"))
        })
        .count();
    assert!(with_key >= 1, "the key reached the fake: {reqs:?}");
    if let Key::Injected { header } = agent.key {
        let placeholder = injected_key_checks(&console, &key_var, header, &api_key, &reqs);
        eprintln!("{key_var} in the session: {placeholder}, injected as {header}");
    }
    let egress = crate::egress::egress_lines(&dir);
    assert!(!egress.is_empty(), "no egress lines");
    for l in &egress {
        assert_eq!(l["decision"], "allowed", "{egress:?}");
        assert_eq!(l["host"], "127.0.0.1", "{l}");
        assert_eq!(l["port"], fake.port, "{l}");
    }

    // The record is complete and sealed.
    let record = read_json(&dir.join("agentd/session.json"));
    assert_eq!(record["push"], s["push"]);
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

    // No secret anywhere: the record, the state, the daemon's log, the
    // status and `agentd logs`.
    let mut outputs = Vec::new();
    for args in [
        vec!["status", "--json"],
        vec!["logs", "task"],
        vec!["logs", "task", "--egress"],
        vec!["diff", "task", "--raw"],
    ] {
        let out = w.agentd().args(&args).output().expect("agentd runs");
        assert!(
            out.status.success(),
            "agentd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((format!("agentd {args:?}"), out.stdout));
        outputs.push((format!("agentd {args:?} (stderr)"), out.stderr));
    }
    outputs.push(("console.log".into(), console.clone().into_bytes()));
    let mut saw_record = false;
    for (name, bytes) in leak_haystacks(&w, outputs) {
        saw_record |= name.ends_with("agentd/session.json");
        let text = String::from_utf8_lossy(&bytes);
        for (what, secret) in [
            ("the API key", &api_key),
            ("the clone token", &clone_tok),
            ("the push token", &push_tok),
        ] {
            assert!(!text.contains(secret.as_str()), "{what} in {name}");
        }
    }
    assert!(saw_record, "the record was searched");
    // What the run looked like, for the record of the issue.
    let lines: Vec<&str> = console.lines().collect();
    let excerpt: Vec<String> = lines
        .iter()
        .take(4)
        .chain(lines.iter().skip(lines.len().saturating_sub(3).max(4)))
        .map(|l| l.chars().take(240).collect())
        .collect();
    eprintln!(
        "{} ({image}): session {session_secs:.1}s, test {:.1}s, {} model request(s), \
         {} egress connection(s), commit {head}\n--- console.log ({} lines), excerpt ---\n{}",
        agent.cli,
        started.elapsed().as_secs_f64(),
        reqs.len(),
        egress.len(),
        lines.len(),
        excerpt.join("\n")
    );
}

#[test]
fn claude_code_commits_through_the_egress_proxy_and_the_commit_is_pushed_issue_20() {
    run_agent_end_to_end(&Agent {
        cli: "claude-code",
        api: "api.anthropic.com:443",
        fake: "fake-anthropic.py",
        key_credential: "anthropic-api-key",
        key: Key::Injected {
            header: "x-api-key",
        },
        console_has: &[
            "\"name\":\"Write\"",
            "\"name\":\"Bash\"",
            "\"type\":\"result\"",
            "\"subtype\":\"success\"",
        ],
    });
}

#[test]
fn codex_commits_through_the_egress_proxy_and_the_commit_is_pushed_issue_20() {
    run_agent_end_to_end(&Agent {
        cli: "codex",
        api: "api.openai.com:443",
        fake: "fake-openai-responses.py",
        key_credential: "openai-api-key",
        key: Key::InSession,
        console_has: &[
            "\"type\":\"thread.started\"",
            "\"type\":\"command_execution\"",
            "\"type\":\"turn.completed\"",
        ],
    });
}

#[test]
fn aider_commits_through_the_egress_proxy_and_the_commit_is_pushed_issue_20() {
    run_agent_end_to_end(&Agent {
        cli: "aider",
        api: "api.openai.com:443",
        fake: "fake-openai-chat.py",
        key_credential: "openai-api-key",
        key: Key::InSession,
        console_has: &["Applied edit to AGENT_NOTE.md", "Add the agent's note"],
    });
}
