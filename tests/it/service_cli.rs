//! Issue 11, CLI side: an installed binary needs nothing from the source
//! tree (completions and man pages included), every printing command ends
//! quietly when its reader goes away, and `agentd import` converts the
//! configs of the system agentd is modelled on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::cargo_bin;
use clap::CommandFactory;

use crate::util::{agentd, repo_root, write};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.expect("walk");
        let dest = to.join(e.path().strip_prefix(from).expect("prefix"));
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// The binary alone, as `cargo install` leaves it: copied away from the
/// source tree, run from an unrelated folder with no agentd environment.
struct Installed {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    cwd: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path().join("bin/agentd");
        std::fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir");
        std::fs::copy(cargo_bin("agentd"), &bin).expect("copy binary");
        let cwd = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        Installed {
            _tmp: tmp,
            bin,
            cwd,
        }
    }
    fn root(&self) -> &Path {
        self._tmp.path()
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(&self.cwd);
        for var in [
            "AGENTD_DESIRED",
            "AGENTD_STATE",
            "AGENTD_AUDIT_ROOT",
            "AGENTD_MAX_SESSIONS",
        ] {
            c.env_remove(var);
        }
        c
    }
}

#[test]
fn installed_binary_validates_examples_away_from_the_source_tree_issue_11() {
    let inst = Installed::new();
    let ex = inst.root().join("examples");
    copy_tree(&repo_root().join("examples"), &ex);
    let out = inst.cmd().arg("validate").arg(&ex).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));

    // The artifact schema is read from the profile's methodology_dir (here
    // the copy), not from anything beside the binary or in the source tree.
    write(
        &ex,
        "requests/bad-review.yaml",
        "profile: code-reviewer\nartifact:\n  type: review\n  json: {pull_request: \"seven\", base: main}\n",
    );
    let out = inst.cmd().arg("validate").arg(&ex).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let named = stdout
        .split('`')
        .find(|s| s.ends_with("methodology/schemas/review.schema.json"))
        .unwrap_or_else(|| panic!("no schema named: {}", text(&out)));
    assert!(named.starts_with(&ex.display().to_string()), "{named}");
    assert!(
        stdout.contains("\"seven\" is not of type \"integer\""),
        "{stdout}"
    );

    // The file-format schemas come from the binary itself.
    let out = inst
        .cmd()
        .args(["schema", "request"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let fresh: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schemas/request.schema.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(fresh, shipped);
}

/// Every visible subcommand path, as clap_mangen names its pages.
fn subcommand_pages() -> Vec<String> {
    fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<String>) {
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if s.get_name() == "help" {
                continue;
            }
            let name = format!("{prefix}-{}", s.get_name());
            out.push(format!("{name}.1"));
            walk(&name, s, out);
        }
    }
    let mut out = Vec::new();
    walk("agentd", &agentd::Cli::command(), &mut out);
    out
}

#[test]
fn installed_binary_prints_completions_and_writes_man_pages_issue_11() {
    let inst = Installed::new();
    let names: Vec<String> = agentd::Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for must in ["run", "status", "validate", "import", "completions", "man"] {
        assert!(names.iter().any(|n| n == must), "no `{must}` subcommand");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = inst
            .cmd()
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for n in &names {
            assert!(
                script.contains(n.as_str()),
                "{shell} completions lack `{n}`"
            );
        }
    }
    let out = inst
        .cmd()
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // `man DIR` writes the top page and one per subcommand (nested too).
    let dir = inst.root().join("man/man1");
    let out = inst.cmd().arg("man").arg(&dir).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let pages = subcommand_pages();
    assert!(pages.contains(&"agentd-audit-verify.1".to_string()));
    for page in std::iter::once("agentd.1".to_string()).chain(pages) {
        let body = std::fs::read_to_string(dir.join(&page))
            .unwrap_or_else(|e| panic!("{page}: {e}\n{}", text(&out)));
        assert!(body.contains(".TH"), "{page} is not a man page");
    }
    let top = std::fs::read_to_string(dir.join("agentd.1")).expect("agentd.1");
    assert!(top.contains("import"), "agentd.1 lists no import");

    // Without DIR the top page goes to stdout.
    let out = inst.cmd().arg("man").output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(".ie"));
}

/// Run `cmd` with stdout a pipe whose reading end is already closed: the
/// first write fails with EPIPE, every time.
fn into_closed_pipe(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped());
    cmd.output().expect("run")
}

/// A state dir with `n` finished requests whose audit records exist.
fn state_with_statuses(root: &Path, n: usize) -> PathBuf {
    let state = root.join("state");
    std::fs::create_dir_all(state.join("status")).expect("mkdir");
    for i in 0..n {
        let id = format!("req-{i:05}");
        let mut s = agentd::Status::new(&id, "p");
        s.phase = agentd::Phase::Done;
        s.outcome = Some(agentd::Outcome::Success);
        s.exit_code = Some(0);
        s.message = Some("x".repeat(200));
        let audit = state.join(format!("audit/p/s{i}"));
        std::fs::create_dir_all(audit.join("agentd")).expect("mkdir");
        std::fs::write(audit.join("agentd/console.log"), "hello\n".repeat(20_000)).expect("log");
        s.audit_dir = Some(audit);
        std::fs::write(
            state.join(format!("status/{id}.json")),
            serde_json::to_vec(&s).expect("json"),
        )
        .expect("write");
    }
    state
}

#[test]
fn every_printing_command_ends_quietly_on_a_closed_pipe_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_statuses(tmp.path(), 3);
    let desired = tmp.path().join("desired");
    write(
        &desired,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = []\n",
    );
    let seeds = repo_root().join("tests/fixtures/seed-examples");
    let mut cases: Vec<Vec<String>> = [
        vec!["status", "--json"],
        vec!["status"],
        vec!["status", "--schedules", "--json"],
        vec!["validate"],
        vec!["logs", "req-00001"],
        vec!["audit", "verify"],
        vec!["schema"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["run", "p", "--request", "hi"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    cases.push(vec![
        "import".into(),
        seeds.join("agentd-agents.toml").display().to_string(),
        "--into".into(),
        tmp.path().join("imported").display().to_string(),
    ]);
    for args in cases {
        let mut cmd = agentd();
        cmd.arg("--state")
            .arg(&state)
            .arg("--desired")
            .arg(&desired)
            .args(&args);
        let out = into_closed_pipe(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: {}",
            text(&out)
        );
        // validate finds a problem (exit 1): the pipe changes nothing else.
        let want = if args[0] == "validate" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {}", text(&out));
    }
}

#[test]
fn status_json_into_head_exits_quietly_issue_11() {
    // The real thing: a shell pipeline whose reader quits after one line
    // while agentd still has most of a large array to write.
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_statuses(tmp.path(), 400);
    let script = format!(
        "{} --state '{}' status --json | head -1; echo \"agentd=${{PIPESTATUS[0]}}\"",
        cargo_bin("agentd").display(),
        state.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env_remove("AGENTD_STATE")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("["), "{}", text(&out));
    assert!(stdout.contains("agentd=0"), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

fn import(config: &Path, into: &Path) -> Output {
    agentd()
        .arg("import")
        .arg(config)
        .arg("--into")
        .arg(into)
        .output()
        .expect("run")
}

/// The two seed configs, copied into `root/etc/agentd/` so that their
/// relative `methodology_dir = "../groundwork"` lands inside the test dir.
fn seeds(root: &Path) -> (PathBuf, PathBuf) {
    let etc = root.join("etc/agentd");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let from = repo_root().join("tests/fixtures/seed-examples");
    let copy = |name: &str| {
        let to = etc.join(name);
        std::fs::copy(from.join(name), &to).expect("copy seed");
        to
    };
    (copy("agentd-profiles.toml"), copy("agentd-agents.toml"))
}

fn validate(dir: &Path) -> Output {
    agentd().arg("validate").arg(dir).output().expect("run")
}

#[test]
fn importing_the_profiles_seed_gives_valid_profiles_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (profiles_toml, _) = seeds(tmp.path());
    let desired = tmp.path().join("desired");
    let out = import(&profiles_toml, &desired);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let groundwork = tmp.path().join("etc/groundwork");
    for name in ["site-builder", "code-reviewer"] {
        assert!(
            desired.join(format!("profiles/{name}.toml")).is_file(),
            "{}",
            text(&out)
        );
        // The relative methodology_dir starts at the config's folder, and
        // the summary names it as missing.
        assert!(
            report.contains(&format!(
                "missing: {name} methodology_dir `{}`",
                groundwork.display()
            )),
            "{report}"
        );
    }
    // Before the folder exists validate names it; once it does, all clean.
    let out = validate(&desired);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&groundwork.display().to_string()),
        "{}",
        text(&out)
    );
    std::fs::create_dir_all(&groundwork).expect("mkdir");
    let out = validate(&desired);
    assert!(out.status.success(), "{}", text(&out));

    // The shell script of the command survives byte for byte.
    let written: toml::Table = toml::from_str(
        &std::fs::read_to_string(desired.join("profiles/site-builder.toml")).expect("read"),
    )
    .expect("toml");
    let original: toml::Table =
        toml::from_str(&std::fs::read_to_string(&profiles_toml).expect("read")).expect("toml");
    assert_eq!(
        written.get("command"),
        original["profiles"][0].get("command"),
        "command changed"
    );
    assert_eq!(
        written["credentials"][0]["source"].as_str(),
        Some("AGENTD_GITHUB_TOKEN")
    );
}

#[test]
fn importing_the_agents_seed_names_missing_paths_and_unmapped_fields_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, agents_toml) = seeds(tmp.path());
    let desired = tmp.path().join("desired");
    let out = import(&agents_toml, &desired);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let groundwork = tmp.path().join("etc/groundwork");
    for line in [
        format!(
            "missing: site-builder methodology_dir `{}`",
            groundwork.display()
        ),
        "missing: site-builder mounts[0].source `/home/core/.claude`".to_string(),
        "missing: code-reviewer methodology_dir `/srv/groundwork`".to_string(),
        "daemon setting: daemon.audit_root: start the daemon with `--audit-root /var/lib/tesserine/audit`".to_string(),
        "no equivalent: daemon.socket_path".to_string(),
    ] {
        assert!(report.contains(&line), "lacks {line:?}:\n{report}");
    }
    let written: toml::Table = toml::from_str(
        &std::fs::read_to_string(desired.join("profiles/code-reviewer.toml")).expect("read"),
    )
    .expect("toml");
    assert_eq!(
        written["command"],
        toml::Value::Array(
            ["code-reviewer", "exec", "--strict"]
                .map(|s| toml::Value::String(s.into()))
                .to_vec()
        )
    );

    // With the named paths present (the absolute ones pointed into the test
    // dir, since a test cannot create /home/core), validate accepts them.
    let relocated = tmp.path().join("relocated.toml");
    let claude = tmp.path().join("home/core/.claude");
    let srv = tmp.path().join("srv/groundwork");
    std::fs::write(
        &relocated,
        std::fs::read_to_string(&agents_toml)
            .expect("read")
            .replace("/home/core/.claude", &claude.display().to_string())
            .replace("/srv/groundwork", &srv.display().to_string())
            .replace(
                "\"../groundwork\"",
                &format!("{:?}", groundwork.display().to_string()),
            ),
    )
    .expect("write");
    let desired2 = tmp.path().join("desired2");
    let out = import(&relocated, &desired2);
    assert!(out.status.success(), "{}", text(&out));
    let out = validate(&desired2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for p in [&claude, &srv, &groundwork] {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    let out = validate(&desired2);
    assert!(out.status.success(), "{}", text(&out));
    let out = import(&relocated, &tmp.path().join("desired3"));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("missing:"),
        "{}",
        text(&out)
    );
}

#[test]
fn reimport_never_overwrites_a_profile_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (profiles_toml, agents_toml) = seeds(tmp.path());
    let desired = tmp.path().join("desired");
    // An operator's own profile, in YAML and a subfolder, holds one name.
    let mine = write(
        &desired,
        "profiles/team/code-reviewer.yaml",
        "base_image: mine\ncommand: [x]\n",
    );
    let out = import(&profiles_toml, &desired);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains(&format!(
            "skipped profiles[1] `code-reviewer`: {} exists, not overwritten",
            mine.display()
        )),
        "{report}"
    );
    assert!(!desired.join("profiles/code-reviewer.toml").exists());
    assert_eq!(
        std::fs::read_to_string(&mine).expect("read"),
        "base_image: mine\ncommand: [x]\n"
    );
    let site = desired.join("profiles/site-builder.toml");
    let first = std::fs::read(&site).expect("written");
    // A second import (the other format, same names) changes nothing.
    let out = import(&agents_toml, &desired);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read(&site).expect("read"), first);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("skipped agents[0] `site-builder`"),
        "{}",
        text(&out)
    );
}

#[test]
fn import_usage_and_unreadable_configs_exit_2_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = agentd().arg("import").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = import(&tmp.path().join("nope.toml"), tmp.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plain = write(tmp.path(), "plain.toml", "[daemon]\naudit_root = \"/x\"\n");
    let out = import(&plain, tmp.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("neither a `[[profiles]]` nor an `[[agents]]`"),
        "{}",
        text(&out)
    );
    let help = agentd().args(["import", "--help"]).output().expect("run");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Examples:") && help.contains("never overwritten"),
        "{help}"
    );
}

#[test]
fn validate_names_agentd_import_for_a_foreign_config_issue_11() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (profiles_toml, agents_toml) = seeds(tmp.path());
    // Given directly, outside any profiles/ folder.
    for cfg in [&profiles_toml, &agents_toml] {
        let out = agentd().arg("validate").arg(cfg).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "hint: convert it with `agentd import {}",
                cfg.display()
            )),
            "{stdout}"
        );
    }
    // Dropped among the profiles of a desired dir.
    let desired = tmp.path().join("desired");
    std::fs::create_dir_all(desired.join("profiles")).expect("mkdir");
    std::fs::copy(&agents_toml, desired.join("profiles/agentd.toml")).expect("copy");
    let out = validate(&desired);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(`[[agents]]`), not a profile or request")
            && stdout.contains("agentd import"),
        "{stdout}"
    );
}

/// A config over 256 KiB is refused before it is read whole (it took up to
/// 94 MiB to convert a 1 MiB one), with exit 2 and nothing written.
#[test]
fn import_refuses_a_config_over_256_kib_issue_17() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let entry = "[[profiles]]\nname = \"p\"\nbase_image = \"i\"\ncommand = [\"x\"]\n";
    let big = format!("{entry}{}", "# padding\n".repeat(1024 * 1024 / 10));
    let cfg = write(tmp.path(), "agentd.toml", &big);
    let desired = tmp.path().join("desired");
    let out = import(&cfg, &desired);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "too large ({} bytes; the limit is 256 KiB)",
            big.len()
        )),
        "{stderr}"
    );
    assert!(!desired.join("profiles/p.toml").exists());
    // The same entry alone imports.
    let small = write(tmp.path(), "small.toml", entry);
    let out = import(&small, &desired);
    assert!(out.status.success(), "{}", text(&out));
    assert!(desired.join("profiles/p.toml").exists());
}
