//! What the agent end-to-end tests (agents.rs, issue 20 part 3) set up:
//! the CLIs, their scripted fake model servers, the example profiles
//! pointed at them, and the host's side (git, credential files, images).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util::{World, read_json, repo_root, running_rootless};

/// One agent CLI: its example folder and how the test points it at its fake.
pub struct Agent {
    /// The folder under examples/agents/ and the profile's name.
    pub cli: &'static str,
    /// The fake model server under tests/support/.
    pub fake: &'static str,
    /// The model API, the only `egress` entry of the example profile.
    pub api: &'static str,
    /// The systemd credential the example profile reads the API key from.
    pub key_credential: &'static str,
    /// How the example profile hands the key over.
    pub key: Key,
    /// Lines of the CLI's own output that must be in `console.log`.
    pub console_has: &'static [&'static str],
}

/// How an example profile hands its CLI the API key.
#[derive(Clone, Copy, PartialEq)]
pub enum Key {
    /// In the session's environment: the variable holds the key.
    InSession,
    /// Injected by the egress proxy into this header of requests to the
    /// model API; the session's variable holds a placeholder (issue 21).
    Injected { header: &'static str },
}

/// Each line of the session's environment, printed by the command before
/// the CLI starts (sessions whose key is injected: the environment holds no
/// secret, so the console may show it, and the leak search covers it).
pub const ENV_LINE: &str = "agentd-e2e env: ";

/// What the fake model makes the agent do (fake_model_common.py's default).
pub const NOTE_FILE: &str = "AGENT_NOTE.md";
pub const NOTE_TEXT: &str = "Written by the agent under agentd.";
pub const NOTE_SUBJECT: &str = "Add the agent's note";

/// A scripted fake model server on 127.0.0.1, killed on drop.
pub struct FakeModel {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// `https` with a certificate, else `http`.
    scheme: &'static str,
}

impl FakeModel {
    /// `tls`: the certificate and key to serve HTTPS with.
    pub fn start(script: &str, dir: &Path, tls: Option<(&Path, &Path)>) -> FakeModel {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (port_file, log) = (dir.join("port"), dir.join("requests.jsonl"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/support").join(script))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(["--file", NOTE_FILE, "--text", NOTE_TEXT])
            .args(["--commit-message", NOTE_SUBJECT]);
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let child = cmd.spawn().expect("python3 runs the fake model server");
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        FakeModel {
            child,
            port,
            log,
            scheme,
        }
    }

    /// `host:port`, as `egress` and `inject.hosts` list it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr())
    }

    /// One line per request received: method, path, status, TLS or not and
    /// the fake's summary (what it answered), or the TLS handshake's
    /// failure; for failure messages.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| match r.get("tls_error") {
                Some(e) => format!("a TLS handshake that failed: {e}"),
                None => format!(
                    "{} {} {} tls={} {}",
                    r["method"], r["path"], r["status"], r["tls"], r["summary"]
                ),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The requests it received, one JSON object each.
    pub fn requests(&self) -> Vec<serde_json::Value> {
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

/// A private file holding `value`.
pub fn secret_file(path: &Path, value: &str) {
    std::fs::write(path, format!("{value}\n")).expect("write");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
}

/// The example's profile, parsed.
pub fn example_profile(cli: &str) -> toml::Table {
    let path = repo_root().join(format!("examples/agents/{cli}/profiles/{cli}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The image must be there: built by examples/agents/build-all, which also
/// copies it into the rootless test user's storage. Missing is a failure.
pub fn require_agent_image(image: &str) {
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

pub fn table<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    t.entry(key)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap_or_else(|| panic!("`{key}` is a table"))
}

pub fn strings(v: &[&str]) -> toml::Value {
    toml::Value::Array(v.iter().map(|s| toml::Value::from(*s)).collect())
}

/// The example's credential that reads the API key, checked to hand it
/// over as `agent.key` says; an injected one is pointed at the fake (its
/// `hosts` were the model API, the only `egress` entry). The variable's
/// name.
pub fn key_credential(p: &mut toml::Table, agent: &Agent, fake: &FakeModel) -> String {
    let cred = p
        .get_mut("credentials")
        .and_then(toml::Value::as_array_mut)
        .expect("the example has credentials")
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|c| c.get("systemd_credential") == Some(&agent.key_credential.into()))
        .unwrap_or_else(|| panic!("no credential reads {}", agent.key_credential));
    let name = cred["name"].as_str().expect("name").to_string();
    match agent.key {
        Key::InSession => assert!(
            cred.get("inject").is_none(),
            "{name} is injected in the example: the test says it is not"
        ),
        Key::Injected { header } => {
            let inject = cred
                .get_mut("inject")
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("{name} is not injected in the example"));
            assert_eq!(inject.get("hosts"), Some(&strings(&[agent.api])), "{name}");
            assert_eq!(inject.get("header"), Some(&header.into()), "{name}");
            assert!(inject.get("format").is_none(), "{name}: the bare key");
            inject.insert("hosts".into(), strings(&[&fake.addr()]));
        }
    }
    name
}

/// The example profile pointed at this test's servers, everything else as
/// the example has it: the model API is the fake (base URL set as each
/// CLI's README says, its address the only `egress` entry and, for an
/// injected key, the only `inject` host), the repository the local https
/// server. Loopback is direct by agentd's `NO_PROXY`, and the fake is on
/// the host's loopback, not the session's: the command runs with
/// `NO_PROXY` unset so the CLI goes through the proxy, as it would to the
/// real API. With an injected key the command prints the session's
/// environment first (`ENV_LINE`). `(profile, image, the key's variable)`.
pub fn profile_for(
    agent: &Agent,
    fake: &FakeModel,
    repo_url: &str,
    files: &Path,
) -> (toml::Table, String, String) {
    let mut p = example_profile(agent.cli);
    assert_eq!(
        p.get("egress"),
        Some(&strings(&[agent.api])),
        "the example lists only the model API"
    );
    assert!(p.get("network").is_none(), "egress, not a network");
    let image = p["base_image"].as_str().expect("base_image").to_string();
    let key_var = key_credential(&mut p, agent, fake);
    let base = fake.base_url();
    p.insert("repo".into(), repo_url.into());
    p.insert("allowed_repos".into(), strings(&[repo_url]));
    p.insert("egress".into(), strings(&[&fake.addr()]));
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
    let dump = format!("env | sed 's/^/{ENV_LINE}/'; exec \"$@\"");
    let mut wrapped: Vec<toml::Value> = Vec::new();
    if agent.key != Key::InSession {
        wrapped.extend(["sh".into(), "-c".into(), dump.into(), "sh".into()]);
    }
    wrapped.extend(
        ["env", "-u", "NO_PROXY", "-u", "no_proxy"]
            .iter()
            .map(|s| toml::Value::from(*s)),
    );
    wrapped.extend(command);
    p.insert("command".into(), toml::Value::Array(wrapped));
    (p, image, key_var)
}

/// Rootless Podman enforces `memory`, `cpus` and `pids_limit` only on a
/// cgroup v2 host that delegates the controller to the daemon's user; on
/// any other host agentd refuses such a profile (`start_failed`, see
/// rootless.rs). So the rootless pass drops from the example's profile the
/// limits its host cannot enforce (the daemon's host.json says which), and
/// says so; rootful, the profile keeps them all.
pub fn drop_limits_rootless_cannot_enforce(w: &World, profile: &mut toml::Table) {
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
