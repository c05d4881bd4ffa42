//! Issue 20, results: what the agent changed comes back as data (a bundle
//! of its commits, its uncommitted work as a patch, a `changes` summary),
//! sealed in the record and captured on the host without anything in the
//! agent's clone running there; and the agent's commits pushed as a branch
//! the agent never held the token for.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::git_server::{GitServer, bare_repo};
use crate::util::{World, git, require_podman, test_image, toml_string};

/// The agent's git: a name and address for its commits.
const AGENT_GIT: &str = "g() { git -c user.name=agent -c user.email=agent@example.com \"$@\"; }; ";

fn verify_clean(w: &World) {
    let out = w
        .agentd()
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_agents_commits_and_uncommitted_work_are_sealed_in_the_record_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let script = format!(
        "set -e; {AGENT_GIT}\
         g checkout -q -b feature; \
         printf 'agentd test repo\\nsecond line\\n' > README.md; g commit -qam 'second line'; \
         printf '\\033[31mred\\033[0m\\n' > colour.txt; g add colour.txt; g commit -qm colour; \
         echo uncommitted >> README.md; echo fresh > untracked.txt; \
         printf '\\000\\001\\002\\377' > blob.bin"
    );
    w.sh_profile("coder", &script, "");
    w.request("r", "profile = \"coder\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let ch = &s["changes"];
    assert_eq!(ch["commits"], 2, "{s}");
    assert_eq!(ch["truncated"], false, "{s}");
    assert_eq!(
        ch["refs"],
        serde_json::json!(["refs/heads/feature", "HEAD"])
    );
    // base -> work tree: README.md, colour.txt, untracked.txt, blob.bin
    assert_eq!(ch["files_changed"], 4, "{s}");
    assert_eq!(s["push"], serde_json::Value::Null);
    let rec = w.session_record("r");
    assert_eq!(rec["changes"], *ch, "status and record agree");
    let dir = w.audit_dir("r");
    let agentd = dir.join("agentd");
    for (f, key) in [
        ("changes.bundle", "bundle_bytes"),
        ("worktree.patch", "patch_bytes"),
        ("commits.patch", "series_bytes"),
    ] {
        let len = std::fs::metadata(agentd.join(f)).expect(f).len();
        assert_eq!(ch[key], len, "{f}");
    }
    let manifest = std::fs::read_to_string(agentd.join("MANIFEST.sha256")).expect("manifest");
    for f in ["changes.bundle", "worktree.patch", "commits.patch"] {
        assert!(
            manifest.contains(&format!("  agentd/{f}\n")),
            "{f} not in\n{manifest}"
        );
    }
    verify_clean(&w);

    // The bundle brings the commits onto the base; the patch brings the
    // work tree, binary file included.
    let check = w.path().join("check");
    git(
        w.path(),
        &["clone", "-q", "--no-local", &w.repo_url, "check"],
    );
    let bundle = agentd.join("changes.bundle");
    git(
        &check,
        &[
            "fetch",
            "-q",
            bundle.to_str().expect("utf8"),
            "refs/heads/feature:refs/heads/feature",
        ],
    );
    let head = git(&check, &["rev-parse", "feature"]);
    assert_eq!(ch["head"], head.as_str());
    assert_eq!(ch["base"], git(&check, &["rev-parse", "main"]).as_str());
    git(&check, &["checkout", "-q", "feature"]);
    git(
        &check,
        &[
            "apply",
            "--binary",
            agentd.join("worktree.patch").to_str().expect("utf8"),
        ],
    );
    assert_eq!(
        std::fs::read(check.join("blob.bin")).expect("blob"),
        [0u8, 1, 2, 255]
    );
    assert_eq!(
        std::fs::read_to_string(check.join("untracked.txt")).expect("read"),
        "fresh\n"
    );

    // `agentd diff`: the series, then the work; escaped, or raw for git.
    let raw = w
        .agentd()
        .args(["diff", "r", "--raw"])
        .output()
        .expect("diff");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let mut want = std::fs::read(agentd.join("commits.patch")).expect("series");
    want.extend(std::fs::read(agentd.join("worktree.patch")).expect("patch"));
    assert_eq!(raw.stdout, want);
    assert!(
        raw.stdout.windows(5).any(|x| x == b"\x1b[31m"),
        "raw keeps the ESC"
    );
    let shown = w.agentd().args(["diff", "r"]).output().expect("diff");
    assert!(shown.status.success());
    assert!(!shown.stdout.contains(&0x1b), "escaped output holds no ESC");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("+\\e[31mred\\e[0m"), "{text}");
    let series_at = text
        .find("Subject: [PATCH 1/2] second line")
        .expect("series first");
    let work_at = text
        .find("diff --git a/untracked.txt")
        .expect("work tree after");
    assert!(series_at < work_at);
    // The series applies with `git am` onto the base and gives the commit's tree.
    let am = w.path().join("am");
    git(w.path(), &["clone", "-q", "--no-local", &w.repo_url, "am"]);
    let series = w.path().join("series.mbox");
    std::fs::write(
        &series,
        std::fs::read(agentd.join("commits.patch")).expect("read"),
    )
    .expect("write");
    git(&am, &["am", "-q", series.to_str().expect("utf8")]);
    assert_eq!(
        git(&am, &["rev-parse", "HEAD^{tree}"]),
        git(&check, &["rev-parse", "feature^{tree}"])
    );

    // `agentd status --json` shows the summary too.
    let st = w
        .agentd()
        .args(["status", "--json", "r"])
        .output()
        .expect("status");
    let arr: serde_json::Value = serde_json::from_slice(&st.stdout).expect("json");
    assert_eq!(arr[0]["changes"]["commits"], 2, "{arr}");
    assert!(arr[0].get("push").is_some(), "{arr}");
}

#[test]
fn a_session_that_changes_nothing_records_no_bundle_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("idle", "cat README.md", "");
    w.request("r", "profile = \"idle\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let ch = &s["changes"];
    assert_eq!(ch["commits"], 0, "{s}");
    assert_eq!(ch["base"], ch["head"]);
    assert!(ch["base"].is_string());
    for k in ["files_changed", "bundle_bytes", "patch_bytes"] {
        assert_eq!(ch[k], 0, "{k}: {s}");
    }
    let agentd = w.audit_dir("r").join("agentd");
    for f in ["changes.bundle", "worktree.patch", "commits.patch"] {
        assert!(!agentd.join(f).exists(), "{f}");
    }
    verify_clean(&w);
    let out = w.agentd().args(["diff", "r"]).output().expect("diff");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no changes"));
}

#[test]
fn planted_git_config_in_the_clone_runs_nothing_on_the_host_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let markers = w.path().join("markers");
    std::fs::create_dir_all(&markers).expect("mkdir");
    // Another repository on the host, with a commit the clone never had.
    let other = w.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    git(&other, &["init", "-q"]);
    std::fs::write(other.join("secret.txt"), "from elsewhere\n").expect("write");
    git(&other, &["add", "."]);
    git(&other, &["commit", "-qm", "elsewhere"]);
    let foreign = git(&other, &["rev-parse", "HEAD"]);
    let m = |name: &str| format!("touch {}", markers.join(name).display());
    // Relative: git would resolve it in the clone, wherever that is.
    let hooks = ".git/planted-hooks";
    let config = format!(
        "[core]\n\tfsmonitor = {}\n\thooksPath = {hooks}\n[filter \"x\"]\n\tclean = {}\n\tsmudge = {}\n\
         \tprocess = {}\n\trequired = true\n[diff \"x\"]\n\tcommand = {}\n\ttextconv = {}\n",
        m("fsmonitor"),
        m("clean"),
        m("smudge"),
        m("process"),
        m("diff"),
        m("textconv"),
    );
    // The agent commits first (its own git, inside), then plants: hooks,
    // config, attributes, alternates into the host repository, a branch
    // naming the foreign commit, a symlinked ref.
    let script = format!(
        "set -e; {AGENT_GIT}echo changed > README.md; g commit -qam agent; echo again > README.md; \
         mkdir -p {hooks}; for h in pre-commit post-checkout reference-transaction fsmonitor-watchman; do \
         printf '#!/bin/sh\\n{}\\n' > {hooks}/$h; chmod +x {hooks}/$h; done; \
         printf %s {} >> .git/config; echo '* filter=x diff=x' > .gitattributes; \
         echo {}/.git/objects > .git/objects/info/alternates; echo {foreign} > .git/refs/heads/borrowed; \
         ln -s {}/.git/refs/heads/main .git/refs/heads/linked",
        m("hook"),
        sh_quote(&config),
        other.display(),
        other.display(),
    );
    w.sh_profile("planter", &script, "");
    w.request("r", "profile = \"planter\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let ran: Vec<_> = std::fs::read_dir(&markers)
        .expect("markers")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(ran.is_empty(), "planted commands ran on the host: {ran:?}");
    // The record is complete and sealed, with the agent's own commit, and
    // nothing of the other repository.
    let rec = w.session_record("r");
    assert_eq!(rec["outcome"], "success");
    let ch = &rec["changes"];
    assert_eq!(ch["commits"], 1, "{rec}");
    let cut = ch["cut"].to_string();
    assert!(
        cut.contains("refs/heads/borrowed: the agent's objects did not pass git's checks"),
        "{cut}"
    );
    verify_clean(&w);
    let agentd = w.audit_dir("r").join("agentd");
    let patch = std::fs::read_to_string(agentd.join("worktree.patch")).expect("patch");
    assert!(
        patch.contains("+again") && patch.contains("+* filter=x diff=x"),
        "{patch}"
    );
    for f in ["changes.bundle", "worktree.patch", "commits.patch"] {
        let b = std::fs::read(agentd.join(f)).unwrap_or_default();
        let t = String::from_utf8_lossy(&b);
        assert!(
            !t.contains("from elsewhere") && !t.contains(&foreign),
            "{f}"
        );
    }
    let heads = git(
        w.path(),
        &[
            "bundle",
            "list-heads",
            agentd.join("changes.bundle").to_str().expect("utf8"),
        ],
    );
    assert!(
        !heads.contains("borrowed") && !heads.contains("linked"),
        "{heads}"
    );
}

/// `text` as one single-quoted shell word.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[test]
fn results_over_budget_are_truncated_and_say_so_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let script = format!(
        "set -e; {AGENT_GIT}head -c 20000 /dev/zero | tr '\\0' a > big.txt; g add big.txt; g commit -qm big; \
         echo small > small.txt; head -c 30000 /dev/zero | tr '\\0' b > huge.txt"
    );
    w.sh_profile("bulky", &script, "results_max_bytes = 3000\n");
    w.request("r", "profile = \"bulky\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let ch = &s["changes"];
    assert_eq!(ch["commits"], 1, "{s}");
    assert_eq!(ch["truncated"], true, "{s}");
    let cut = ch["cut"].to_string();
    assert!(
        cut.contains("huge.txt (30000 bytes) is past the results budget of 3000 bytes"),
        "{cut}"
    );
    let total = ch["bundle_bytes"].as_u64().unwrap_or(0)
        + ch["patch_bytes"].as_u64().unwrap_or(0)
        + ch["series_bytes"].as_u64().unwrap_or(0);
    assert!(total <= 3000, "{s}");
    assert!(cut.contains("past results_max_bytes (3000 bytes"), "{cut}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .contains("results truncated"),
        "{s}"
    );
    verify_clean(&w);
    let out = w.agentd().args(["diff", "r"]).output().expect("diff");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the record: huge.txt"));
}

/// A throw-away CA and a certificate it signed for 127.0.0.1:
/// `(ca.pem, leaf.pem, leaf.key)`.
fn throwaway_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(p("leaf.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=agentd test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (p("ca.pem"), p("leaf.pem"), p("leaf.key"))
}

/// A private file holding `value` (a token source).
fn token_file(path: &Path, value: &str) -> PathBuf {
    std::fs::write(path, format!("{value}\n")).expect("write");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    path.to_path_buf()
}

#[test]
fn the_agents_commits_are_pushed_over_https_and_never_forced_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let rnd = agentd::new_session_id;
    let (clone_tok, push_tok) = (format!("clone-{}", rnd()), format!("push-{}", rnd()));
    let ca_dir = w.path().join("ca");
    std::fs::create_dir_all(&ca_dir).expect("mkdir");
    let (ca, cert, key) = throwaway_ca(&ca_dir);
    let served = w.path().join("served");
    bare_repo(&served.join("repo.git"), "pushed repo");
    let push_file = token_file(&w.path().join("push-token"), &push_tok);
    let srv = GitServer::start_with(
        &w.path().join("srv"),
        &served,
        Some((&cert, &key)),
        Some(&clone_tok),
        &["--push-token-file", push_file.to_str().expect("utf8")],
    );
    let push_src = token_file(&w.path().join("push-token-src"), &push_tok);
    let body = |name: &str, line: &str| {
        format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = {}\nnetwork = \"none\"\n\
             repo_token = {{ source = \"CLONE_TOKEN\" }}\n\
             push = {{ branch = \"agentd/{{profile}}/{{work_unit}}\", token = {{ file = \"{}\" }} }}\n",
            test_image(),
            toml_string(&format!(
                "set -e; {AGENT_GIT}echo '{line}' >> README.md; g commit -qam '{name}'"
            )),
            toml_string(&srv.url("repo.git")),
            push_src.display()
        )
    };
    w.profile("pusher", &body("first", "one"));
    w.request("a", "profile = \"pusher\"\nwork_unit = \"PR 7\"\n");
    w.start_daemon_with(
        &[
            ("CLONE_TOKEN", &clone_tok),
            ("GIT_SSL_CAINFO", ca.to_str().expect("utf8")),
        ],
        &[],
    );
    let s = w.wait_done("a");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let head = s["changes"]["head"].as_str().expect("head").to_string();
    assert_eq!(
        s["push"],
        serde_json::json!({"result": "pushed", "ref": "refs/heads/agentd/pusher/PR-7", "commit": head})
    );
    assert_eq!(w.session_record("a")["push"], s["push"]);
    let bare = served.join("repo.git");
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/agentd/pusher/PR-7"]),
        head
    );
    assert_eq!(git(&bare, &["log", "-1", "--format=%s", &head]), "first");
    let log = srv.requests();
    assert!(
        log.contains("git-receive-pack auth=push"),
        "the push used the push token: {log}"
    );
    assert!(!log.contains("auth=bad"), "{log}");

    // The same branch again, from a session with another commit: the push
    // is refused, never forced, and the session's outcome stands.
    w.profile("pusher", &body("second", "two"));
    w.request("b", "profile = \"pusher\"\nwork_unit = \"PR 7\"\n");
    let s = w.wait_done("b");
    assert_eq!(s["outcome"], "success", "{s}");
    assert_eq!(s["push"]["result"], "failed", "{s}");
    assert!(
        s["push"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("never forced"),
        "{s}"
    );
    assert!(
        s["message"].as_str().unwrap_or("").contains("push failed"),
        "{s}"
    );
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/agentd/pusher/PR-7"]),
        head
    );

    // Nothing of either token anywhere the daemon writes.
    let haystacks = crate::util::leak_haystacks(&w, Vec::new());
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&push_tok), "push token in {name}");
        assert!(!text.contains(&clone_tok), "clone token in {name}");
    }
    let status = w
        .agentd()
        .args(["status", "--json"])
        .output()
        .expect("status");
    assert!(!String::from_utf8_lossy(&status.stdout).contains(&push_tok));
}

#[test]
fn a_push_redirected_elsewhere_fails_without_the_token_going_there_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let push_tok = format!("push-{}", agentd::new_session_id());
    let ca_dir = w.path().join("ca");
    std::fs::create_dir_all(&ca_dir).expect("mkdir");
    let (ca, cert, key) = throwaway_ca(&ca_dir);
    let served = w.path().join("served");
    bare_repo(&served.join("repo.git"), "redirecting repo");
    let elsewhere_root = w.path().join("elsewhere-served");
    bare_repo(&elsewhere_root.join("repo.git"), "elsewhere");
    let elsewhere = GitServer::start(
        &w.path().join("elsewhere"),
        &elsewhere_root,
        Some((&cert, &key)),
        None,
    );
    let push_file = token_file(&w.path().join("push-token"), &push_tok);
    let first = GitServer::start_with(
        &w.path().join("first"),
        &served,
        Some((&cert, &key)),
        None,
        &[
            "--redirect-push-to",
            &format!("https://127.0.0.1:{}", elsewhere.port),
        ],
    );
    w.profile(
        "redirected",
        &format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = {}\nnetwork = \"none\"\n\
             push = {{ token = {{ file = \"{}\" }} }}\n",
            test_image(),
            toml_string(&format!("set -e; {AGENT_GIT}echo x >> README.md; g commit -qam x")),
            toml_string(&first.url("repo.git")),
            push_file.display()
        ),
    );
    w.request("r", "profile = \"redirected\"\n");
    w.start_daemon_with(&[("GIT_SSL_CAINFO", ca.to_str().expect("utf8"))], &[]);
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert_eq!(s["push"]["result"], "failed", "{s}");
    let reason = s["push"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("301") || reason.to_lowercase().contains("redirect"),
        "{reason}"
    );
    assert!(
        first.requests().contains("redirected"),
        "{}",
        first.requests()
    );
    let there = elsewhere.requests();
    assert!(
        !there.contains("auth=ok") && !there.contains("auth=bad") && !there.contains("auth=push"),
        "the token went to the redirect target: {there}"
    );
    assert!(
        !there.contains("receive-pack"),
        "the push followed the redirect: {there}"
    );
}

#[test]
fn the_agents_commits_are_pushed_into_a_local_repository_without_its_hooks_issue_20() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let bare = PathBuf::from(w.repo_url.trim_start_matches("file://"));
    let marker = w.path().join("hook-ran");
    let hook = bare.join("hooks/pre-receive");
    std::fs::create_dir_all(bare.join("hooks")).expect("mkdir");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    w.sh_profile(
        "localpush",
        &format!("set -e; {AGENT_GIT}echo more >> README.md; g commit -qam more"),
        "push = { branch = \"agentd/{request}\", when = [\"success\"] }\n",
    );
    w.request("r-1", "profile = \"localpush\"\n");
    w.start_daemon();
    let s = w.wait_done("r-1");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let head = s["changes"]["head"].as_str().expect("head").to_string();
    assert_eq!(
        s["push"],
        serde_json::json!({"result": "pushed", "ref": "refs/heads/agentd/r-1", "commit": head})
    );
    assert_eq!(git(&bare, &["rev-parse", "refs/heads/agentd/r-1"]), head);
    assert!(!marker.exists(), "the repository's hook ran");
}
