//! `agentd validate` against real files on disk.

use std::time::{Duration, Instant};

use crate::util::{agentd, repo_root, write};

#[test]
fn shipped_desired_dir_and_examples_are_valid() {
    let root = repo_root();
    for target in ["desired", "examples"] {
        let out = agentd()
            .arg("validate")
            .arg(root.join(target))
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Single files work too.
    let out = agentd()
        .arg("validate")
        .arg(root.join("examples/profiles/code-reviewer.yaml"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn default_dir_comes_from_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "profiles/x.toml",
        "base_image = \"i\"\ncommand = []\n",
    );
    let out = agentd()
        .arg("validate")
        .env("AGENTD_DESIRED", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("profiles/x.toml:2:1: command is empty"),
        "{stdout}"
    );
}

#[test]
fn junk_files_are_ignored_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "profiles/ok.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/srv/r\"\n",
    );
    write(d, "requests/r1.yaml", "profile: ok\n");
    // Each of these would be an error if it were read.
    for junk in [
        ".git/config",
        ".git/objects/ab/cdef.toml",
        "profiles/.hidden.toml",
        "profiles/.team/x.toml",
        "profiles/ok.toml~",
        "profiles/.ok.toml.swp",
        "profiles/ok.toml.swp",
        "profiles/ok.tmp",
        "profiles/#ok.toml#",
        "profiles/4913",
        "profiles/README.md",
        "profiles/ok.json",
        "requests/r1.yaml.tmp",
        "requests/.r2.yaml",
        "requests/notes.txt",
        "README.md",
        "stray.toml",
    ] {
        write(d, junk, "this is { not valid = in any format\0");
    }
    let out = agentd().arg("validate").arg(d).output().expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("1 profile(s), 1 request(s) checked: no problems")
    );
}

#[test]
fn problems_are_printed_as_path_line_col_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "profiles/team/a.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\ntimeout = \"soon\"\n",
    );
    write(d, "profiles/a.yaml", "base_image: i\ncommand: [x]\n");
    write(d, "requests/r.toml", "profile = \"nope\"\n");
    let out = agentd().arg("validate").arg(d).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let p = |rel: &str| d.join(rel).display().to_string();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{}:3:1: invalid duration `soon`",
            p("profiles/team/a.toml")
        ))),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.contains("duplicate profile `a`")
            && l.contains(&p("profiles/a.yaml"))
            && l.contains(&p("profiles/team/a.toml"))),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{}:1:1: profile `nope` not found",
            p("requests/r.toml")
        ))),
        "{stdout}"
    );
}

#[test]
fn huge_and_binary_files_are_rejected_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "profiles/big.yaml",
        "a: ".to_string() + &"x".repeat(8 * 1024 * 1024),
    );
    write(d, "profiles/bin.toml", [0u8, 159, 146, 150, 0, 1, 2]);
    let start = Instant::now();
    let out = agentd().arg("validate").arg(d).output().expect("run");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("big.yaml: file is too large"), "{stdout}");
    assert!(stdout.contains("bin.toml: file is binary"), "{stdout}");
}

#[test]
fn missing_dir_is_an_error() {
    let out = agentd()
        .args(["validate", "/nonexistent/agentd-desired"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("/nonexistent/agentd-desired: no such file or folder")
    );
}

#[test]
fn symlinked_folders_are_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(
        d,
        "data-v1/profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
    );
    write(d, "data-v1/requests/r.toml", "profile = \"p\"\n");
    std::fs::create_dir(d.join("desired")).expect("mkdir");
    std::os::unix::fs::symlink(d.join("data-v1/profiles"), d.join("desired/profiles"))
        .expect("link");
    std::os::unix::fs::symlink(d.join("data-v1/requests"), d.join("desired/requests"))
        .expect("link");
    let out = agentd()
        .arg("validate")
        .arg(d.join("desired"))
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 profile(s), 1 request(s)"));
}
