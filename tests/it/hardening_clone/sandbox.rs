//! Issue 17 item 1, second pass: the local clone's sandbox shows git its
//! system folders, the repository's own folder, the destination and its
//! home, and nothing else of the host. A planted repository linking into
//! any readable repository outside `allowed_repos` gets none of it; the
//! sandbox's view seen from inside; its clone still ends at the timeout.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{assert_plain_git_copies_the_mirror, git, head_commit, plant_links};
use crate::git_server::bare_repo;
use crate::util::{World, leak_haystacks, require_podman, toml_string};

/// Item 1, second gap: the planted folder links into a repository the
/// daemon's user can read but `allowed_repos` does not match (another
/// team's repository, not the daemon's own). A request naming the plant,
/// or a link to that repository, gets none of it: the clone sees nothing
/// of the host but git's system folders and the named folder itself.
#[test]
fn a_planted_folder_linking_into_a_readable_repo_outside_allowed_repos_gets_none_of_it_issue_17() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let secret = w.path().join("private/secret.git");
    let secret_text = format!("not for this profile {}", agentd::new_session_id());
    bare_repo(&secret, &secret_text);
    let commit = head_commit(&secret);
    let forks = w.path().join("forks");
    std::fs::create_dir_all(&forks).expect("mkdir");
    w.sh_profile(
        "thief",
        "git rev-parse HEAD; cat README.md; exit 0",
        &format!(
            "allowed_repos = [{}]",
            toml_string(&format!("{}/*", forks.display()))
        ),
    );
    // objects, refs and packed-refs linked (absolute links).
    let linked = forks.join("linked");
    plant_links(&linked, &secret);
    // The same with relative links, resolved from inside the plant.
    let relative = forks.join("relative");
    std::fs::create_dir_all(&relative).expect("mkdir");
    std::fs::copy(secret.join("HEAD"), relative.join("HEAD")).expect("HEAD");
    for name in ["objects", "refs", "packed-refs"] {
        std::os::unix::fs::symlink(
            Path::new("../../private/secret.git").join(name),
            relative.join(name),
        )
        .expect("symlink");
    }
    // A repository of its own that borrows the objects (alternates), its
    // refs linked. (Not copied: a plant naming the commit itself would only
    // see its own input again in git's error message.)
    let borrower = forks.join("borrower");
    std::fs::create_dir_all(borrower.join("objects/info")).expect("mkdir");
    std::fs::create_dir_all(borrower.join("refs/heads")).expect("mkdir");
    std::fs::copy(secret.join("HEAD"), borrower.join("HEAD")).expect("HEAD");
    std::os::unix::fs::symlink(secret.join("packed-refs"), borrower.join("packed-refs"))
        .expect("symlink");
    std::fs::write(
        borrower.join("objects/info/alternates"),
        format!("{}\n", secret.join("objects").display()),
    )
    .expect("alternates");
    // The whole folder a link to the repository.
    let whole = forks.join("whole");
    std::os::unix::fs::symlink(&secret, &whole).expect("symlink");
    let scratch = w.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    w.start_daemon();
    let plants = [
        ("linked", &linked),
        ("relative", &relative),
        ("borrower", &borrower),
        ("whole", &whole),
    ];
    for (id, plant) in plants {
        assert_plain_git_copies_the_mirror(plant, &commit, &scratch);
        w.request(
            id,
            &format!(
                "profile = \"thief\"\nrepo = {}\n",
                toml_string(&plant.display().to_string())
            ),
        );
    }
    let mut got = Vec::new();
    for (id, _) in plants {
        let s = w.wait_done(id);
        eprintln!("{id}: {} {}", s["outcome"], s["message"]);
        assert!(
            s["outcome"] == "start_failed" || s["outcome"] == "success",
            "{s}"
        );
        if s["outcome"] == "success" {
            let console = w.console(id);
            if console.contains(&commit) || console.contains(&secret_text) {
                got.push(id);
            }
        }
    }
    assert!(got.is_empty(), "{got:?} got the other repository");
    let mut searched = 0;
    for (name, bytes) in leak_haystacks(&w, Vec::new()) {
        searched += 1;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&commit) && !text.contains(&secret_text),
            "the other repository's commit is in {name}"
        );
    }
    eprintln!("searched {searched} files and the daemon log for commit {commit}: none");
    assert!(w.containers_after_removal().is_empty());
}

/// The sandbox's view, seen from inside (`agentd __clone-sandbox` running
/// a shell instead of git; no Podman): git's system folders read-only, the
/// source read-only at its own path with the daemon's folders inside it
/// covered, the destination writable, git's home with its config; no
/// procfs, nothing else of the host (not the test's other folders, not
/// /var, /home or /run), and /etc holds nothing but the loader's cache.
#[test]
fn the_clone_sandbox_shows_git_its_system_folders_the_source_and_the_destination_only_issue_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (source, state) = (d.join("srv/repo.git"), d.join("srv/repo.git/inner-state"));
    let (keep, home) = (d.join("state/work/x/repo"), d.join("state/git-home"));
    let outside = d.join("outside/secret.txt");
    for p in [
        &state,
        &keep,
        &home,
        &outside.parent().expect("parent").to_path_buf(),
    ] {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(source.join("HEAD"), "ref: refs/heads/main\n").expect("write");
    std::fs::write(state.join("token"), "hidden inside the source").expect("write");
    std::fs::write(&outside, "outside the view").expect("write");
    let script = format!(
        r#"set -u
echo "root: $(ls -A / | tr '\n' ' ')"
echo "etc: $(ls -A /etc | tr '\n' ' ')"
test -e /proc/self && echo "PROC VISIBLE"
test -e {outside} && echo "OUTSIDE VISIBLE"
for p in /var /home /run /root /srv /opt; do test -e "$p" && echo "$p VISIBLE"; done
cat {source}/HEAD
ls -A {state} | grep -q . && echo "STATE VISIBLE"
touch {source}/x 2>/dev/null && echo "SOURCE WRITABLE"
echo made > {keep}/made && echo "keep writable"
/usr/local/bin/git --version >/dev/null 2>&1 || git --version >/dev/null && echo "git runs"
echo "trusted $(grep -c directory "$GIT_CONFIG_GLOBAL")"
"#,
        outside = outside.display(),
        source = source.display(),
        state = state.display(),
        keep = keep.display(),
    );
    let out = Command::new(assert_cmd::cargo::cargo_bin("agentd"))
        .arg("__clone-sandbox")
        .arg("--hide")
        .arg(&state)
        .arg("--hide")
        .arg(d.join("state"))
        .arg("--keep")
        .arg(&keep)
        .arg("--home")
        .arg(&home)
        .arg("--source")
        .arg(&source)
        .arg("--trust")
        .arg(&source)
        .args(["--", "/bin/sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .expect("agentd runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");
    for absent in ["VISIBLE", "SOURCE WRITABLE"] {
        assert!(!stdout.contains(absent), "{absent}: {stdout}");
    }
    for present in [
        "ref: refs/heads/main",
        "keep writable",
        "git runs",
        "trusted 1",
    ] {
        assert!(stdout.contains(present), "{present}: {stdout}");
    }
    assert_eq!(
        std::fs::read_to_string(keep.join("made")).expect("written through"),
        "made\n"
    );
    let etc = stdout
        .lines()
        .find_map(|l| l.strip_prefix("etc: "))
        .expect("etc listing");
    assert!(
        etc.split_whitespace().all(|e| e == "ld.so.cache"),
        "/etc shows {etc}"
    );
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("root: "))
        .expect("root listing");
    let allowed = [
        "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "tmp",
    ];
    let top = d
        .components()
        .nth(1)
        .expect("the temp dir's top folder")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    for e in root.split_whitespace() {
        assert!(allowed.contains(&e) || e == top, "/ shows {e}: {root}");
    }
}

/// The sandbox keeps the clone's bound: a local repository whose
/// `packed-refs` is a FIFO (git waits on it forever) ends at the clone
/// timeout with the clear message, and none of git's processes is left.
#[test]
fn a_local_clone_that_hangs_in_the_sandbox_is_killed_at_the_timeout_issue_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let state = d.join("state");
    let plant = d.join("forks/fifo.git");
    git(&["init", "-q", "--bare", plant.to_str().expect("utf8")], d).expect("init");
    nix::unistd::mkfifo(&plant.join("packed-refs"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let cache = agentd::MirrorCache::default();
    let sandbox = agentd::Sandbox {
        exe: assert_cmd::cargo::cargo_bin("agentd"),
        hide: vec![state.clone()],
    };
    let (cache_root, git_home) = (state.join("cache/git"), state.join("git-home"));
    let env = agentd::CloneEnv {
        cache_root: &cache_root,
        git_home: &git_home,
        timeout: Duration::from_secs(3),
        cache: &cache,
        sandbox: &sandbox,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let err = rt
        .block_on(agentd::clone_repo(
            &agentd::Repo::Local(plant.clone()),
            &state.join("work/x/home/repo"),
            None,
            "p",
            &env,
        ))
        .expect_err("the clone hangs")
        .to_string();
    let took = started.elapsed();
    eprintln!("{err} after {took:?}");
    assert!(err.contains("did not finish within 3s"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    // git and its upload-pack name the plant on their command lines.
    let needle = plant.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The helper refuses, with a `clone sandbox:` message naming the reason,
/// a source named through a symbolic link (at its end or on its way), with
/// `..`, or lying inside a hidden folder; git never runs.
#[test]
fn the_sandbox_refuses_a_source_through_a_link_with_dot_dot_or_inside_a_hidden_folder_issue_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (keep, home) = (d.join("state/work/x/repo"), d.join("state/git-home"));
    let real = d.join("real/repo.git");
    for p in [&keep, &home, &real, &d.join("hidden/repo.git")] {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::os::unix::fs::symlink(&real, d.join("link.git")).expect("symlink");
    std::os::unix::fs::symlink(d.join("real"), d.join("via")).expect("symlink");
    let marker = d.join("ran");
    for (source, want) in [
        (
            d.join("link.git"),
            format!(
                "passes through the symbolic link `{}`",
                d.join("link.git").display()
            ),
        ),
        (
            d.join("via/repo.git"),
            format!(
                "passes through the symbolic link `{}`",
                d.join("via").display()
            ),
        ),
        (
            d.join("real/../real/repo.git"),
            "is not a plain absolute path".to_string(),
        ),
        (
            d.join("hidden/repo.git"),
            format!("lies inside `{}`", d.join("hidden").display()),
        ),
    ] {
        let out = Command::new(assert_cmd::cargo::cargo_bin("agentd"))
            .arg("__clone-sandbox")
            .arg("--hide")
            .arg(d.join("state"))
            .arg("--hide")
            .arg(d.join("hidden"))
            .arg("--source")
            .arg(&source)
            .arg("--keep")
            .arg(&keep)
            .arg("--home")
            .arg(&home)
            .args(["--", "/usr/bin/touch"])
            .arg(&marker)
            .output()
            .expect("agentd runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{}: {stderr}",
            source.display()
        );
        assert!(
            stderr.starts_with(&format!(
                "clone sandbox: the repository `{}` ",
                source.display()
            )) && stderr.contains(&want),
            "{}: {stderr}",
            source.display()
        );
        assert!(!marker.exists(), "the program ran for {}", source.display());
    }
}
