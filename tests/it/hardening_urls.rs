//! Issue 17, items 2, 4 and 10: what a repository string or a file name
//! can smuggle past a check. A percent-escape that a forge decodes into
//! `../` (item 2), a wildcard that matches an empty segment and so the folder
//! above (item 10), and a newline in an imported config's path that becomes
//! keys of the generated profile (item 4). Remote repositories are served on
//! 127.0.0.1 by `crate::git_server`, in its mode that decodes and normalises
//! request paths as real forges and their proxies do.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{World, agentd, leak_haystacks, require_podman, test_image, toml_string, write};

/// A profile on the test image that prints the clone's README.
fn readme_profile(w: &World, name: &str, repo: &str, extra: &str) {
    w.profile(
        name,
        &format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"cat README.md\"]\nrepo = {}\nnetwork = \"none\"\n{extra}\n",
            test_image(),
            toml_string(repo)
        ),
    );
}

fn head_commit(bare: &Path) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["rev-parse", "HEAD"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `(phase, outcome, message, console)` of a request that ended one way or
/// the other: `invalid` (refused by validation) or `done`.
fn settled(w: &World, id: &str) -> (String, String, String, String) {
    let s = w.wait_for(id, Duration::from_secs(90), |s| {
        s["phase"] == "invalid" || s["phase"] == "done"
    });
    let console = if s["phase"] == "done" {
        std::fs::read_to_string(w.audit_dir(id).join("agentd/console.log")).unwrap_or_default()
    } else {
        String::new()
    };
    let field = |k: &str| s[k].as_str().unwrap_or("").to_string();
    (field("phase"), field("outcome"), field("message"), console)
}

#[test]
fn escapes_that_decode_to_another_folder_are_a_validation_error_issue_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"https://git.example.com/team/site.git\"\nrepo_token_source = \"TOK\"\nallowed_repos = [\"https://git.example.com/team/*\"]\n",
    );
    // A pattern that is itself an escaped climb.
    write(
        d,
        "profiles/q.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nallowed_repos = [\n  \"https://git.example.com/team/%2e%2e/*\",\n]\n",
    );
    for (id, repo) in [
        (
            "climb",
            "https://git.example.com/team/%2e%2e%2fother%2fsecret.git",
        ),
        (
            "climb2",
            "https://git.example.com/team/..%2fother%2fsecret.git",
        ),
        (
            "climb3",
            "https://git.example.com/team/%2E%2E%5Cother%5Csecret.git",
        ),
    ] {
        // The key indented on line 3, so the position is not a default.
        write(
            d,
            &format!("requests/{id}.toml"),
            format!("profile = \"p\"\n# from a reviewer\n  repo = \"{repo}\"\n"),
        );
    }
    // A legitimate escape keeps working.
    write(
        d,
        "requests/space.toml",
        "profile = \"p\"\nrepo = \"https://git.example.com/team/my%20repo.git\"\n",
    );
    let out = agentd().arg("validate").arg(d).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for id in ["climb", "climb2", "climb3"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("requests/{id}.toml")))
            .unwrap_or_else(|| panic!("{id}.toml not reported:\n{stdout}"));
        assert!(
            line.contains(&format!(
                "{id}.toml:3:3: repo `https://git.example.com/team/"
            )) && line.contains("decodes to")
                && line.contains("path separator")
                && line.contains("hint: "),
            "{line}"
        );
    }
    let q = stdout
        .lines()
        .find(|l| l.contains("profiles/q.toml"))
        .unwrap_or_else(|| panic!("q.toml not reported:\n{stdout}"));
    assert!(
        q.contains("q.toml:3:1: allowed_repos[0]: pattern `https://git.example.com/team/%2e%2e/*`")
            && q.contains("decodes to `..`"),
        "{q}"
    );
    assert!(!stdout.contains("space.toml"), "{stdout}");
}

/// The token follows an allowed pattern; a forge that decodes the path
/// must not be talked into serving another repository with it.
#[test]
fn an_escaped_climb_never_takes_the_token_to_another_repository_issue_17() {
    if !require_podman() {
        return;
    }
    let token = format!("clonetok-{}", agentd::new_session_id());
    let mut w = World::new();
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    bare_repo(&served.join("team/site.git"), "team site");
    bare_repo(&served.join("team/my repo.git"), "team repo with a space");
    bare_repo(&served.join("other/secret.git"), "other secret");
    let secret_commit = head_commit(&served.join("other/secret.git"));
    let forge = GitServer::start_with(
        &w.path().join("forge"),
        &served,
        Some((&cert, &key)),
        Some(&token),
        &["--decode-paths"],
    );
    readme_profile(
        &w,
        "p",
        &forge.url("team/site.git"),
        &format!(
            "repo_token_source = \"HOST_REPO_TOKEN\"\nallowed_repos = [\"https://127.0.0.1:{}/team/*\"]\n",
            forge.port
        ),
    );
    let climbs = [
        ("climb", "team/%2e%2e%2fother%2fsecret.git"),
        ("climb2", "team/..%2fother%2fsecret.git"),
        ("climb3", "team/%2e%2e%5cother%5csecret.git"),
    ];
    for (id, path) in climbs {
        w.request(
            id,
            &format!(
                "profile = \"p\"\nrepo = {}\n",
                toml_string(&forge.url(path))
            ),
        );
    }
    w.request(
        "space",
        &format!(
            "profile = \"p\"\nrepo = {}\n",
            toml_string(&forge.url("team/my%20repo.git"))
        ),
    );
    w.start_daemon_with(
        &[
            ("HOST_REPO_TOKEN", &token),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &[],
    );
    // `%20` is an ordinary escape: allowed by `team/*`, cloned with the token.
    let s = w.wait_done("space");
    assert_eq!(s["outcome"], "success", "{s}");
    assert_eq!(w.console("space"), "team repo with a space\n");
    let results: Vec<_> = climbs
        .iter()
        .map(|(id, _)| (*id, settled(&w, id)))
        .collect();
    let log = forge.requests();
    assert!(
        log.contains("served=/team/my repo.git/info/refs"),
        "the forge decodes paths: {log}"
    );
    for (id, (phase, outcome, message, console)) in &results {
        assert!(
            phase == "invalid" && message.contains("decodes to") && console.is_empty(),
            "{id}: phase {phase}, outcome {outcome}, message {message:?}, console {console:?}\n--- forge log ---\n{log}"
        );
        assert!(w.status(id).expect("status")["session_id"].is_null());
    }
    assert!(
        !log.contains("served=/other/") && !log.contains("%2e") && !log.contains("..%2f"),
        "the forge saw a climb: {log}"
    );
    // Nothing the daemon keeps holds the other repository's commit or
    // content, or the token.
    let haystacks = leak_haystacks(&w, Vec::new());
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&token), "the token is in {name}");
        assert!(
            !text.contains(&secret_commit) && !text.contains("other secret"),
            "other/secret.git is in {name}"
        );
    }
}

/// `*` stands for one or more characters: `/srv/forks/*` does not admit
/// `/srv/forks//`, the folder of the forks itself.
#[test]
fn a_wildcard_does_not_admit_the_folder_above_issue_17() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // The forks folder is a repository of its own, which the pattern must
    // not reach.
    let forks = w.path().join("forks");
    bare_repo(&forks, "the forks folder itself");
    bare_repo(&forks.join("a.git"), "fork a");
    let forks_s = forks.display().to_string();
    readme_profile(
        &w,
        "p",
        &format!("{forks_s}/a.git"),
        &format!("allowed_repos = [{}]", toml_string(&format!("{forks_s}/*"))),
    );
    w.request(
        "fork",
        &format!(
            "profile = \"p\"\nrepo = {}\n",
            toml_string(&format!("{forks_s}/a.git"))
        ),
    );
    w.request(
        "parent",
        &format!(
            "profile = \"p\"\nrepo = {}\n",
            toml_string(&format!("{forks_s}//"))
        ),
    );
    w.request(
        "parent-url",
        &format!(
            "profile = \"p\"\nrepo = {}\n",
            toml_string(&format!("file://{forks_s}//"))
        ),
    );
    w.start_daemon();
    let s = w.wait_done("fork");
    assert_eq!(s["outcome"], "success", "{s}");
    assert_eq!(w.console("fork"), "fork a\n");
    for id in ["parent", "parent-url"] {
        let (phase, outcome, message, console) = settled(&w, id);
        assert!(
            phase == "invalid" && console.is_empty(),
            "{id}: phase {phase}, outcome {outcome}, message {message:?}, console {console:?}"
        );
        assert!(message.contains("empty path segment"), "{message}");
    }
}

/// A config file whose path holds a newline: the generated profile's
/// comment stays one line, and no key comes from the path.
#[test]
fn an_imported_path_cannot_add_keys_to_the_profile_issue_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("cfg\nnetwork = \"host\"\n#");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let cfg = folder.join("agentd\nallowed_repos = [\"\\u002f**\"]\n#.toml");
    std::fs::write(
        &cfg,
        "[[profiles]]\nname = \"imp\"\nbase_image = \"localhost/x\"\ncommand = [\"/bin/true\"]\n",
    )
    .expect("write config");
    let desired = dir.path().join("desired");
    let out = agentd()
        .arg("import")
        .arg(&cfg)
        .arg("--into")
        .arg(&desired)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let text = std::fs::read_to_string(desired.join("profiles/imp.toml")).expect("profile");
    let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let keys: Vec<&str> = table.keys().map(String::as_str).collect();
    assert_eq!(keys, ["base_image", "command", "name"], "{text}");
    let comment = text.lines().next().unwrap_or("");
    assert!(
        comment.starts_with("# imported by `agentd import` from ")
            && comment.contains("cfg\\nnetwork = \"host\"\\n#/agentd\\nallowed_repos"),
        "{text}"
    );
    // What the operator reads is one line per item, without raw controls.
    for (name, shown) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !shown.contains("\nnetwork")
                && !shown.contains("\nallowed_repos")
                && !shown.contains('\u{1b}'),
            "{name}: {shown}"
        );
    }
    assert!(stderr.contains("cfg\\nnetwork"), "{stderr}");
    // validate sees the profile that was meant, and nothing else.
    let out = agentd()
        .arg("validate")
        .arg(&desired)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 17, item 9: `systemctl show` prints a unit's `Environment=` lines
/// to every local user, so no reference page, shipped unit or example may
/// hand a secret over that way. An `Environment=` is fine for the daemon's
/// own settings (`AGENTD_*`), or on a line that warns about it.
#[test]
fn no_reference_hands_a_secret_over_in_environment_issue_17() {
    let root = crate::util::repo_root();
    let mut files: Vec<std::path::PathBuf> = vec![root.join("README.md")];
    for dir in ["docs", "deploy", "examples"] {
        files.extend(
            walkdir::WalkDir::new(root.join(dir))
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path()),
        );
    }
    assert!(files.len() > 10, "{files:?}");
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            for (i, _) in line.match_indices("Environment=") {
                let own_word = line[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_ascii_alphanumeric());
                let rest = &line[i + "Environment=".len()..];
                if own_word && !rest.starts_with("AGENTD_") && !line.contains("systemctl show") {
                    problems.push(format!("{}:{}: {line}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What credentials.md does recommend for a `source` secret.
    let creds = std::fs::read_to_string(root.join("docs/credentials.md")).expect("read");
    let row = creds
        .lines()
        .find(|l| l.starts_with("| `source = \"VAR\"`"))
        .expect("the source row");
    assert!(
        row.contains("EnvironmentFile=") && row.contains("0600") && row.contains("LoadCredential="),
        "{row}"
    );
}
