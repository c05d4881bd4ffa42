//! Issue 11, credentials from where operators keep them: the daemon's
//! environment, a systemd credential (`$CREDENTIALS_DIRECTORY`), a Podman
//! secret, a private file; the clone token from a systemd credential or a
//! file. Every form reaches the session (or git), none leaks, and a missing
//! or unsafe source is `start_failed` naming the secret and the source.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{
    World, agentd, leak_haystacks, require_podman, sample_ps, test_image, toml_string, write,
};

/// A Podman secret made for one test, removed when dropped.
struct PodmanSecret(String);

impl PodmanSecret {
    fn create(value: &[u8]) -> PodmanSecret {
        use std::io::Write;
        let name = format!("agentd-it-{}", agentd::new_session_id());
        let mut child = Command::new("podman")
            .args(["secret", "create", &name, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("podman secret create");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value)
            .expect("write the secret");
        assert!(
            child.wait().expect("wait").success(),
            "podman secret create"
        );
        PodmanSecret(name)
    }
}

impl Drop for PodmanSecret {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["secret", "rm", &self.0])
            .output();
    }
}

/// A file only its owner (this test's user, the daemon's) may read.
fn private_file(path: &std::path::Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_secret_source_reaches_the_session_and_never_leaks_issue_11() {
    if !require_podman() {
        return;
    }
    let rnd = || agentd::new_session_id();
    // Distinct random markers; no haystack may contain any of them.
    let (env_m, sd_m, pod_m, file_m, tok_m) = (rnd(), rnd(), rnd(), rnd(), rnd());
    // The push token (issue 20): read on the host, for the push only.
    let push_m = rnd();
    let push_token = format!("pushtok-{push_m}");
    let env_value = format!("env-{env_m}");
    let sd_value = format!("sd-{sd_m} with spaces 'and' \"quotes\"");
    // A multi-line Podman secret: read inside the session with sh builtins.
    let pod_file = format!("pod-{pod_m}\nsecond line \\n $HOME\n");
    let file_file = format!("file-{file_m}\n");
    let token = format!("clonetok-{tok_m}");

    let mut w = World::new();
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    bare_repo(&served.join("private.git"), "private repo over https");
    let push_token_file = w.path().join("push-token");
    private_file(
        &push_token_file,
        format!("{push_token}\n").as_bytes(),
        0o400,
    );
    let tls = GitServer::start_with(
        &w.path().join("srv-tls"),
        &served,
        Some((&cert, &key)),
        Some(&token),
        &["--push-token-file", push_token_file.to_str().expect("utf8")],
    );
    // What systemd's LoadCredential= makes: a private folder of files.
    let creds_dir = w.path().join("credentials");
    std::fs::create_dir_all(&creds_dir).expect("mkdir");
    private_file(&creds_dir.join("sd.key"), sd_value.as_bytes(), 0o400);
    private_file(&creds_dir.join("clone.token"), token.as_bytes(), 0o400);
    std::fs::set_permissions(&creds_dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let secret = PodmanSecret::create(pod_file.as_bytes());
    let file = w.path().join("file-secret");
    private_file(&file, file_file.as_bytes(), 0o600);
    let token_file = w.path().join("token-file");
    private_file(&token_file, format!("{token}\n").as_bytes(), 0o400);

    std::fs::create_dir_all(w.path().join("gate")).expect("mkdir");
    // A quiet commit first, so the profile that pushes has something to push.
    let script = "git -c user.name=a -c user.email=a@example.com commit -q --allow-empty -m pushed; \
                  for v in \"$ENV_C\" \"$SD_C\" \"$POD_C\" \"$FILE_C\"; do printf %s \"$v\" | sha256sum | cut -c1-64; done; \
                  stat -c %a /agentd/secrets/POD_C; cat README.md; env | grep -c clonetok; \
                  until [ -e /gate/go ]; do sleep 0.05; done";
    let profile = |name: &str, token_form: &str, creds: &str| {
        w.profile(
            name,
            &format!(
                "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = {}\nnetwork = \"none\"\n\
                 repo_token = {token_form}\nmounts = [{{ source = \"{}\", target = \"/gate\" }}]\n{creds}",
                test_image(),
                toml_string(script),
                toml_string(&tls.url("private.git")),
                w.path().join("gate").display()
            ),
        );
    };
    profile(
        "every",
        "{ systemd_credential = \"clone.token\" }",
        &format!(
            "push = {{ token = {{ file = \"{}\" }} }}\n\
             credentials = [\n  {{ name = \"ENV_C\", source = \"HOST_ENV_C\" }},\n  {{ name = \"SD_C\", systemd_credential = \"sd.key\" }},\n  \
             {{ name = \"POD_C\", podman_secret = \"{}\" }},\n  {{ name = \"FILE_C\", file = \"{}\" }},\n]\n",
            push_token_file.display(),
            secret.0,
            file.display()
        ),
    );
    profile(
        "tokfile",
        &format!("{{ file = \"{}\" }}", token_file.display()),
        "credentials = [\n  { name = \"ENV_C\", source = \"HOST_ENV_C\" },\n  { name = \"SD_C\", source = \"HOST_ENV_C\" },\n  \
         { name = \"POD_C\", source = \"HOST_ENV_C\" },\n  { name = \"FILE_C\", source = \"HOST_ENV_C\" },\n]\n",
    );
    let out = w.agentd().arg("validate").output().expect("validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    w.request("r", "profile = \"every\"\n");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_ps(std::sync::Arc::clone(&stop));
    w.start_daemon_with(
        &[
            ("HOST_ENV_C", &env_value),
            ("CREDENTIALS_DIRECTORY", creds_dir.to_str().expect("utf8")),
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
    let inspected: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    // Named, mounted as a file, and never as an environment variable.
    assert!(
        inspected.to_string().contains(&secret.0),
        "the session's podman secret is not in its inspect"
    );
    let env_names: Vec<String> = inspected[0]["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.as_str()?.split('=').next().map(str::to_string))
        .collect();
    for name in ["ENV_C", "SD_C", "POD_C", "FILE_C"] {
        assert!(
            !env_names.iter().any(|n| n == name),
            "{name} in podman run's env"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ps = sampler.join().expect("ps sampler");
    w.open_gate();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    // Host-read file forms and the Podman secret lose one trailing newline.
    let want = [
        env_value.clone(),
        sd_value.clone(),
        pod_file.strip_suffix('\n').expect("newline").to_string(),
        file_file.strip_suffix('\n').expect("newline").to_string(),
    ]
    .iter()
    .map(|v| format!("{}\n", sha256_hex(v.as_bytes())))
    .collect::<String>();
    assert_eq!(
        w.console("r"),
        format!("{want}400\nprivate repo over https\n0\n")
    );

    // The clone token from a file, on a second profile. Close the gate the
    // first session went through, so this one waits there too (it ends
    // within milliseconds once through, faster than a poll may see it run).
    std::fs::remove_file(w.path().join("gate/go")).expect("close the gate");
    let stop2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_ps(std::sync::Arc::clone(&stop2));
    w.request("t", "profile = \"tokfile\"\n");
    let t = w.wait_for("t", Duration::from_secs(60), |s| {
        s["phase"] == "running" || s["phase"] == "done"
    });
    assert_eq!(t["phase"], "running", "{t}");
    stop2.store(true, std::sync::atomic::Ordering::Relaxed);
    ps.extend(sampler.join().expect("ps sampler"));
    w.open_gate();
    let t = w.wait_done("t");
    assert_eq!(t["outcome"], "success", "{t}");
    assert!(w.console("t").contains("private repo over https"));
    let served_log = tls.requests();
    assert!(
        served_log.matches("auth=ok").count() >= 2 && !served_log.contains("auth=bad"),
        "both clones used the token: {served_log}"
    );
    // The push went with the push token, from the host, after the session.
    assert_eq!(s["push"]["result"], "pushed", "{s}");
    assert!(
        served_log.contains("git-receive-pack auth=push"),
        "{served_log}"
    );

    let haystacks = leak_haystacks(
        &w,
        vec![
            ("podman inspect".into(), inspect.stdout),
            ("ps".into(), ps.concat()),
        ],
    );
    let mut saw = [false; 3];
    for (name, bytes) in &haystacks {
        saw[0] |= name.contains("/status/");
        saw[1] |= name.contains("/audit/");
        saw[2] |= name.contains("/specs/");
        let text = String::from_utf8_lossy(bytes);
        for (what, m) in [
            ("env credential", &env_m),
            ("systemd credential", &sd_m),
            ("podman secret", &pod_m),
            ("file credential", &file_m),
            ("clone token", &tok_m),
            ("push token", &push_m),
        ] {
            assert!(!text.contains(m.as_str()), "{what} value found in {name}");
        }
    }
    assert_eq!(saw, [true; 3], "status, audit and specs were searched");
    assert!(w.containers_after_removal().is_empty());
    assert_eq!(
        w.work_dirs_after_removal(),
        0,
        "work folder (credentials file) left"
    );
    // The operator's secret is the operator's: still there.
    let still = Command::new("podman")
        .args(["secret", "inspect", &secret.0])
        .output()
        .expect("secret inspect");
    assert!(
        still.status.success(),
        "agentd removed the operator's secret"
    );
}

#[test]
fn a_missing_or_unsafe_source_is_start_failed_naming_it_issue_11() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let creds_dir = w.path().join("credentials");
    std::fs::create_dir_all(&creds_dir).expect("mkdir");
    let open = w.path().join("open-secret");
    private_file(&open, b"x\n", 0o640);
    let foreign = w.path().join("foreign-secret");
    private_file(&foreign, b"x\n", 0o600);
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&foreign, Some(54321), Some(54321)).expect("chown");
    }
    let missing_secret = format!("agentd-it-missing-{}", agentd::new_session_id());
    let gone = w.path().join("no-such-file");
    let mut cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "m-env",
            "credentials = [{ name = \"E_CRED\", source = \"AGENTD_IT_UNSET_ISSUE_11\" }]".into(),
            vec![
                "credential `E_CRED`".into(),
                "environment variable `AGENTD_IT_UNSET_ISSUE_11` is not set".into(),
            ],
        ),
        (
            "m-sd",
            "credentials = [{ name = \"S_CRED\", systemd_credential = \"not-there\" }]".into(),
            vec![
                "credential `S_CRED`: systemd credential `not-there`".into(),
                "does not exist".into(),
            ],
        ),
        (
            "m-pod",
            format!(
                "credentials = [{{ name = \"P_CRED\", podman_secret = \"{missing_secret}\" }}]"
            ),
            vec![format!(
                "credential `P_CRED`: podman secret `{missing_secret}` does not exist"
            )],
        ),
        (
            "m-file",
            format!(
                "credentials = [{{ name = \"F_CRED\", file = \"{}\" }}]",
                gone.display()
            ),
            vec![format!(
                "credential `F_CRED`: file `{}` does not exist",
                gone.display()
            )],
        ),
        (
            "m-open",
            format!(
                "credentials = [{{ name = \"O_CRED\", file = \"{}\" }}]",
                open.display()
            ),
            vec![format!(
                "credential `O_CRED`: file `{}` is accessible to group or others (mode 0640)",
                open.display()
            )],
        ),
        (
            "m-token",
            format!("repo_token = {{ file = \"{}\" }}", gone.display()),
            vec![format!(
                "repo_token: file `{}` does not exist",
                gone.display()
            )],
        ),
    ];
    if root {
        cases.push((
            "m-foreign",
            format!(
                "credentials = [{{ name = \"X_CRED\", file = \"{}\" }}]",
                foreign.display()
            ),
            vec![format!(
                "credential `X_CRED`: file `{}` is owned by uid 54321",
                foreign.display()
            )],
        ));
    }
    for (name, extra, _) in &cases {
        if *name == "m-token" {
            // The token goes only to https: a repo nobody serves, since
            // the start fails before any clone.
            w.profile(
                name,
                &format!(
                    "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran\"]\nrepo = \"https://127.0.0.1:9/x.git\"\n{extra}\n",
                    test_image()
                ),
            );
        } else {
            w.sh_profile(name, "echo ran", extra);
        }
        w.request(name, &format!("profile = \"{name}\"\n"));
    }
    w.start_daemon_with(
        &[("CREDENTIALS_DIRECTORY", creds_dir.to_str().expect("utf8"))],
        &[],
    );
    for (name, _, wants) in &cases {
        let s = w.wait_done(name);
        assert_eq!(s["outcome"], "start_failed", "{name}: {s}");
        let msg = s["message"].as_str().unwrap_or("");
        for want in wants {
            assert!(
                msg.contains(want.as_str()),
                "{name}: {msg:?} lacks {want:?}"
            );
        }
        assert_eq!(w.containers_created_for(name), 0, "{name}: a container ran");
    }
}

#[test]
fn validate_knows_every_source_form_and_refuses_two_or_none_issue_11() {
    let d = tempfile::tempdir().expect("tempdir");
    write(
        d.path(),
        "profiles/good.yaml",
        "base_image: img\ncommand: [x]\nrepo: https://example.com/r.git\nrepo_token: {file: /etc/agentd/token}\n\
         credentials:\n  - {name: A, source: HOST_A}\n  - {name: B, systemd_credential: b.key}\n  \
         - {name: C, podman_secret: c-key}\n  - {name: D, file: /etc/agentd/d}\n",
    );
    write(
        d.path(),
        "profiles/bad.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [\n  { name = \"TWO\", source = \"A\", file = \"/etc/a\" },\n  { name = \"NONE\" },\n]\n\
         repo_token_source = \"TOK\"\nrepo_token = { podman_secret = \"tok\" }\n",
    );
    let out = agentd()
        .arg("validate")
        .arg(d.path())
        .output()
        .expect("validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("good.yaml"), "{stdout}");
    for want in [
        "bad.toml:4:5: credentials[0] names 2 sources (source, file); a secret comes from exactly one",
        "bad.toml:5:5: credentials[1] names no source",
        "bad.toml:8:1: repo_token and repo_token_source are exclusive",
    ] {
        assert!(stdout.contains(want), "{want:?} not in\n{stdout}");
    }

    // The JSON Schema knows the forms too.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::util::repo_root().join("schemas/profile.schema.json"))
            .expect("schema"),
    )
    .expect("json");
    let v = jsonschema::validator_for(&schema).expect("valid schema");
    let profile = |extra: serde_json::Value| {
        let mut p = serde_json::json!({"base_image": "i", "command": ["x"]});
        for (k, val) in extra.as_object().expect("object") {
            p[k] = val.clone();
        }
        v.is_valid(&p)
    };
    for form in ["source", "systemd_credential", "podman_secret", "file"] {
        assert!(
            profile(serde_json::json!({"credentials": [{"name": "A", form: "x"}]})),
            "{form}"
        );
    }
    assert!(!profile(
        serde_json::json!({"credentials": [{"name": "A", "source": "X", "file": "/x"}]})
    ));
    assert!(!profile(
        serde_json::json!({"credentials": [{"name": "A"}]})
    ));
    assert!(profile(serde_json::json!({"repo_token": {"file": "/x"}})));
    assert!(!profile(
        serde_json::json!({"repo_token": {"podman_secret": "x"}})
    ));
    assert!(!profile(
        serde_json::json!({"repo_token": {"file": "/x"}, "repo_token_source": "T"})
    ));
}
