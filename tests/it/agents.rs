//! Issue 20 part 3: Claude Code, Codex CLI and Aider under agentd, end to
//! end. Each test runs the real CLI in its image (examples/agents/<cli>,
//! built once per machine by examples/agents/build-all) with the example's
//! own profile, pointed at a scripted fake model server on the host's
//! 127.0.0.1 that the session reaches only through its egress proxy. The
//! model's scripted answer makes the CLI write a file and commit it; the
//! commit comes back in the sealed record's `changes.bundle` and is pushed
//! by the daemon to a branch on a local https git server. The API key and
//! the git tokens appear nowhere in the record, the status or the logs.
//! Runs rootful, and rootless in scripts/test's second pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{World, leak_haystacks, read_json, repo_root, running_rootless};

/// One agent CLI: its example folder and how the test points it at its fake.
struct Agent {
    /// The folder under examples/agents/ and the profile's name.
    cli: &'static str,
    /// The fake model server under tests/support/.
    fake: &'static str,
    /// The model API, the only `egress` entry of the example profile.
    api: &'static str,
    /// The systemd credential the example profile reads the API key from.
    key_credential: &'static str,
    /// Lines of the CLI's own output that must be in `console.log`.
    console_has: &'static [&'static str],
}

/// What the fake model makes the agent do (fake_model_common.py's default).
const NOTE_FILE: &str = "AGENT_NOTE.md";
const NOTE_TEXT: &str = "Written by the agent under agentd.";
const NOTE_SUBJECT: &str = "Add the agent's note";

/// The CLIs share the machine's two cores: one agent session at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A scripted fake model server on 127.0.0.1, killed on drop.
struct FakeModel {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl FakeModel {
    fn start(script: &str, dir: &Path) -> FakeModel {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (port_file, log) = (dir.join("port"), dir.join("requests.jsonl"));
        let child = Command::new("python3")
            .arg(repo_root().join("tests/support").join(script))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(["--file", NOTE_FILE, "--text", NOTE_TEXT])
            .args(["--commit-message", NOTE_SUBJECT])
            .spawn()
            .expect("python3 runs the fake model server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "{script} did not start");
            std::thread::sleep(Duration::from_millis(25));
        };
        FakeModel { child, port, log }
    }

    /// One line per request received: method, path, status and the fake's
    /// summary (what it answered), for failure messages.
    fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r["method"], r["path"], r["status"], r["summary"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The requests it received, one JSON object each.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// git on the host, with no configuration but the arguments.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A private file holding `value`.
fn secret_file(path: &Path, value: &str) {
    std::fs::write(path, format!("{value}\n")).expect("write");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
}

/// The example's profile, parsed.
fn example_profile(cli: &str) -> toml::Table {
    let path = repo_root().join(format!("examples/agents/{cli}/profiles/{cli}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The image must be there: built by examples/agents/build-all, which also
/// copies it into the rootless test user's storage. Missing is a failure.
fn require_agent_image(image: &str) {
    let out = Command::new("podman")
        .args(["image", "exists", image])
        .output()
        .expect("podman runs");
    assert!(
        out.status.success(),
        "the agent image {image} is missing from this user's Podman storage: run \
         examples/agents/build-all as root (scripts/test does; it builds what is missing and \
         copies the images into the rootless test user's storage). {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn table<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    t.entry(key)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap_or_else(|| panic!("`{key}` is a table"))
}

fn strings(v: &[&str]) -> toml::Value {
    toml::Value::Array(v.iter().map(|s| toml::Value::from(*s)).collect())
}

/// The example profile pointed at this test's servers, everything else as
/// the example has it: the model API is the fake (base URL set as each
/// CLI's README says, its address the only `egress` entry), the repository
/// the local https server. Loopback is direct by agentd's `NO_PROXY`, and
/// the fake is on the host's loopback, not the session's: the command runs
/// with `NO_PROXY` unset so the CLI goes through the proxy, as it would to
/// the real API.
fn profile_for(
    agent: &Agent,
    fake: &FakeModel,
    repo_url: &str,
    files: &Path,
) -> (toml::Table, String) {
    let mut p = example_profile(agent.cli);
    assert_eq!(
        p.get("egress"),
        Some(&strings(&[agent.api])),
        "the example lists only the model API"
    );
    assert!(p.get("network").is_none(), "egress, not a network");
    let image = p["base_image"].as_str().expect("base_image").to_string();
    let base = format!("http://127.0.0.1:{}", fake.port);
    p.insert("repo".into(), repo_url.into());
    p.insert("allowed_repos".into(), strings(&[repo_url]));
    p.insert(
        "egress".into(),
        strings(&[&format!("127.0.0.1:{}", fake.port)]),
    );
    let mut command: Vec<toml::Value> = p["command"].as_array().expect("command").clone();
    let env = table(&mut p, "env");
    match agent.cli {
        "claude-code" => {
            env.insert("ANTHROPIC_BASE_URL".into(), base.as_str().into());
        }
        "codex" => {
            // The fake's model: for the default model (gpt-6.2-sol in
            // 0.171.0) Codex offers a code-mode tool set (`exec`, `wait`,
            // ...) instead of the shell tools the fake scripts.
            let prompt = command.pop().expect("the prompt is last");
            command.push("-m".into());
            command.push("fake-model".into());
            command.push("-c".into());
            command.push(format!("openai_base_url=\"{base}/v1\"").into());
            command.push(prompt);
        }
        "aider" => {
            // The fake answers in Aider's `whole` edit format. The metadata
            // file describes the model and its weak model (commit messages),
            // so Aider fetches no price list from raw.githubusercontent.com.
            let meta = files.join("model-metadata.json");
            let info = r#"{"max_input_tokens": 128000, "max_output_tokens": 8192, "input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat"}"#;
            let models = ["openai/gpt-4.1", "openai/gpt-4.1-mini", "gpt-4.1-mini"];
            let entries: Vec<String> = models.iter().map(|m| format!("\"{m}\": {info}")).collect();
            std::fs::write(&meta, format!("{{{}}}", entries.join(", "))).expect("write");
            let target = "/etc/agentd-test-model-metadata.json";
            env.insert("OPENAI_API_BASE".into(), format!("{base}/v1").into());
            env.insert("AIDER_EDIT_FORMAT".into(), "whole".into());
            env.insert("AIDER_MODEL_METADATA_FILE".into(), target.into());
            let mut mount = toml::Table::new();
            mount.insert("source".into(), meta.display().to_string().into());
            mount.insert("target".into(), target.into());
            p.insert(
                "mounts".into(),
                toml::Value::Array(vec![toml::Value::Table(mount)]),
            );
        }
        other => panic!("no such agent {other}"),
    }
    let mut wrapped: Vec<toml::Value> = ["env", "-u", "NO_PROXY", "-u", "no_proxy"]
        .iter()
        .map(|s| toml::Value::from(*s))
        .collect();
    wrapped.extend(command);
    p.insert("command".into(), toml::Value::Array(wrapped));
    (p, image)
}

/// Rootless Podman enforces `memory`, `cpus` and `pids_limit` only on a
/// cgroup v2 host that delegates the controller to the daemon's user; on
/// any other host agentd refuses such a profile (`start_failed`, see
/// rootless.rs). So the rootless pass drops from the example's profile the
/// limits its host cannot enforce (the daemon's host.json says which), and
/// says so; rootful, the profile keeps them all.
fn drop_limits_rootless_cannot_enforce(w: &World, profile: &mut toml::Table) {
    if !running_rootless() {
        return;
    }
    let host_json = w.state.join("host.json");
    w.eventually("the daemon's host.json", Duration::from_secs(30), || {
        host_json.exists()
    });
    let host = read_json(&host_json);
    for (field, controller) in [
        ("memory", "memory"),
        ("cpus", "cpu"),
        ("pids_limit", "pids"),
    ] {
        let delegated = host["cgroup_version"] == "v2"
            && host["cgroup_controllers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == controller));
        if !delegated && profile.remove(field).is_some() {
            eprintln!(
                "rootless on {} without the `{controller}` controller: `{field}` dropped",
                host["cgroup_version"]
            );
        }
    }
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
    // systemd would hand them over.
    let fake = FakeModel::start(agent.fake, &w.path().join("fake"));
    let files = w.path().join("files");
    let creds = w.path().join("credentials");
    for d in [&files, &creds] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    secret_file(&creds.join(agent.key_credential), &api_key);
    secret_file(&creds.join("service-git-token"), &clone_tok);
    secret_file(&creds.join("service-git-push-token"), &push_tok);

    let (mut profile, image) = profile_for(agent, &fake, &srv.url("repo.git"), &files);
    require_agent_image(&image);
    w.start_daemon_with(
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf8")),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &[],
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
            "profile = \"{}\"\nrequest = \"Write {NOTE_FILE} and commit it.\"\n",
            agent.cli
        ),
    );
    let s = w.wait_for("task", Duration::from_secs(600), |s| s["phase"] == "done");
    let session_secs = session_start.elapsed().as_secs_f64();
    let dir = w.audit_dir("task");
    let console = std::fs::read_to_string(dir.join("agentd/console.log")).unwrap_or_default();
    assert_eq!(
        s["outcome"],
        "success",
        "{s}\n--- console.log ---\n{console}\n--- fake model's requests ---\n{}\n--- daemon log ---\n{}",
        fake.summary(),
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
    for (name, bytes) in leak_haystacks(&w, outputs) {
        let text = String::from_utf8_lossy(&bytes);
        for (what, secret) in [
            ("the API key", &api_key),
            ("the clone token", &clone_tok),
            ("the push token", &push_tok),
        ] {
            assert!(!text.contains(secret.as_str()), "{what} in {name}");
        }
    }
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
        console_has: &["Applied edit to AGENT_NOTE.md", "Add the agent's note"],
    });
}
