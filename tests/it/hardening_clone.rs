//! Issue 17, the host-side clone: a planted local repository never reaches
//! another profile's mirror (or anything else of the daemon's), the clone
//! token never follows a redirect, and a local repository owned by another
//! user clones (that path trusted, and only it). Real git, real servers on
//! 127.0.0.1, real daemons and Podman.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{World, leak_haystacks, repo_root, require_podman, test_image, toml_string};

/// The sandbox's view: nothing of the host but git and the repository.
mod sandbox;
mod seeds;

/// git with no configuration of the test user's, in `cwd`; its stdout.
fn git(args: &[&str], cwd: &Path) -> Result<String, String> {
    let out = Command::new("git")
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The commit `HEAD` names in the repository at `dir`.
fn head_commit(dir: &Path) -> String {
    git(&["rev-parse", "HEAD"], dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Whether the clone at `dest` holds `commit`.
fn holds(dest: &Path, commit: &str) -> bool {
    git(&["cat-file", "-e", &format!("{commit}^{{commit}}")], dest).is_ok()
}

/// The one mirror under the daemon's cache.
fn the_mirror(state: &Path) -> PathBuf {
    let mirrors: Vec<PathBuf> = std::fs::read_dir(state.join("cache/git"))
        .expect("the mirror cache")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
    mirrors[0].clone()
}

/// What the review planted: a plain folder whose `objects`, `refs` and
/// `packed-refs` link into `mirror`.
fn plant_links(dir: &Path, mirror: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(mirror.join("HEAD"), dir.join("HEAD")).expect("HEAD");
    for name in ["objects", "refs", "packed-refs"] {
        std::os::unix::fs::symlink(mirror.join(name), dir.join(name)).expect("symlink");
    }
}

/// The attack is real: outside agentd, `git clone --no-local` of the plant
/// copies the mirror's commit.
fn assert_plain_git_copies_the_mirror(plant: &Path, commit: &str, scratch: &Path) {
    let dest = scratch.join(format!(
        "control-{}",
        plant.file_name().expect("name").to_string_lossy()
    ));
    git(
        &[
            "clone",
            "-q",
            "--no-local",
            "--",
            plant.to_str().expect("utf8"),
            dest.to_str().expect("utf8"),
        ],
        scratch,
    )
    .unwrap_or_else(|e| panic!("the control clone of {}: {e}", plant.display()));
    assert!(holds(&dest, commit), "the control clone lacks the commit");
}

/// Item 1 through the daemon: a request naming a planted folder gets
/// nothing of another profile's tokened mirror, and the mirror's commit is
/// in no status file, record or log.
#[test]
fn a_planted_folder_linking_into_another_profiles_mirror_gets_none_of_it_issue_17() {
    if !require_podman() {
        return;
    }
    let token = format!("clonetok-{}", agentd::new_session_id());
    let mut w = World::new();
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    let secret_text = format!("private of owner {}", agentd::new_session_id());
    bare_repo(&served.join("private.git"), &secret_text);
    let commit = head_commit(&served.join("private.git"));
    let tls = GitServer::start(
        &w.path().join("srv"),
        &served,
        Some((&cert, &key)),
        Some(&token),
    );
    w.profile(
        "owner",
        &format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"test -s README.md\"]\nrepo = {}\nnetwork = \"none\"\nrepo_token_source = \"HOST_REPO_TOKEN\"\n",
            test_image(),
            toml_string(&tls.url("private.git"))
        ),
    );
    let forks = w.path().join("forks");
    std::fs::create_dir_all(&forks).expect("mkdir");
    w.sh_profile(
        "thief",
        "git rev-parse HEAD; cat README.md",
        &format!(
            "allowed_repos = [{}]",
            toml_string(&format!("{}/*", forks.display()))
        ),
    );
    w.request("fill", "profile = \"owner\"\n");
    w.start_daemon_with(
        &[
            ("HOST_REPO_TOKEN", &token),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &[],
    );
    let s = w.wait_done("fill");
    assert_eq!(s["outcome"], "success", "{s}");
    let mirror = the_mirror(&w.state);
    let planted = forks.join("planted");
    plant_links(&planted, &mirror);
    // The same links through the daemon's own view of the filesystem
    // (`/proc/<pid>/root`), which a cover of the state dir's path alone
    // would not hide.
    let pid = w.daemon_pid().expect("the daemon runs");
    let via_proc = forks.join("via-proc");
    plant_links(
        &via_proc,
        &Path::new(&format!("/proc/{pid}/root")).join(mirror.strip_prefix("/").expect("absolute")),
    );
    let scratch = w.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    for (id, plant) in [("steal", &planted), ("steal-via-proc", &via_proc)] {
        assert_plain_git_copies_the_mirror(plant, &commit, &scratch);
        w.request(
            id,
            &format!(
                "profile = \"thief\"\nrepo = {}\n",
                toml_string(&plant.display().to_string())
            ),
        );
        let s = w.wait_done(id);
        eprintln!("{id}: {} {}", s["outcome"], s["message"]);
        assert!(
            s["outcome"] == "start_failed" || s["outcome"] == "success",
            "{s}"
        );
        if s["outcome"] == "success" {
            let console = w.console(id);
            assert!(
                !console.contains(&commit) && !console.contains(&secret_text),
                "{id}: the session got the mirror: {console}"
            );
        }
    }
    // Nothing the daemon keeps for the thief's requests names the commit;
    // the mirror itself (its refs) legitimately does, and so do the owner's
    // own session record and status (issue 20: `changes.base`, the commit
    // its clone started from).
    let haystacks = leak_haystacks(&w, Vec::new());
    let mut searched = 0;
    for (name, bytes) in &haystacks {
        if name.contains("/cache/git/")
            || name.contains("/audit/owner/")
            || name.ends_with("/status/fill.json")
        {
            continue;
        }
        searched += 1;
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&commit), "the mirror's commit is in {name}");
        assert!(!text.contains(&token), "the clone token is in {name}");
    }
    eprintln!(
        "searched {searched} files and the daemon log for commit {commit} and the token: none"
    );
    assert!(w.containers_after_removal().is_empty());
}

/// Item 1, the window between any check and git: a thread swaps `objects`
/// of a planted repository between a real folder and a link into the
/// mirror cache while 200 local clones run through agentd's clone code.
/// No clone may hold the mirror's commit.
#[test]
fn two_hundred_clones_racing_a_swapped_objects_link_never_copy_the_mirror_issue_17() {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let state = d.join("state");
    let cache_root = state.join("cache/git");
    std::fs::create_dir_all(&cache_root).expect("mkdir");
    bare_repo(&d.join("served/private.git"), "private mirror content");
    let commit = head_commit(&d.join("served/private.git"));
    let mirror = cache_root.join("0123456789abcdef.git");
    git(
        &[
            "clone",
            "-q",
            "--mirror",
            "--",
            d.join("served/private.git").to_str().expect("utf8"),
            mirror.to_str().expect("utf8"),
        ],
        d,
    )
    .expect("mirror");
    // The planted repository: real refs naming the mirror's commit, and
    // `objects` swapped with `objects.alt` (a link into the mirror).
    let plant = d.join("forks/racer");
    std::fs::create_dir_all(plant.join("objects/info")).expect("mkdir");
    std::fs::create_dir_all(plant.join("objects/pack")).expect("mkdir");
    std::fs::create_dir_all(plant.join("refs/heads")).expect("mkdir");
    std::fs::copy(mirror.join("HEAD"), plant.join("HEAD")).expect("HEAD");
    std::fs::copy(mirror.join("packed-refs"), plant.join("packed-refs")).expect("refs");
    std::os::unix::fs::symlink(mirror.join("objects"), plant.join("objects.alt")).expect("link");
    let (objects, alt) = (plant.join("objects"), plant.join("objects.alt"));
    let swap = || {
        renameat2(
            AT_FDCWD,
            &objects,
            AT_FDCWD,
            &alt,
            RenameFlags::RENAME_EXCHANGE,
        )
        .expect("exchange objects")
    };
    // Control: with the link in place, plain git copies the mirror.
    swap();
    assert_plain_git_copies_the_mirror(&plant, &commit, d);
    swap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (objects, alt) = (objects.clone(), alt.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat2(
                    AT_FDCWD,
                    &objects,
                    AT_FDCWD,
                    &alt,
                    RenameFlags::RENAME_EXCHANGE,
                )
                .expect("exchange objects");
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = agentd::MirrorCache::default();
    let git_home = state.join("git-home");
    // What the daemon runs: its own binary as the helper, hiding its state.
    let sandbox = agentd::Sandbox {
        exe: assert_cmd::cargo::cargo_bin("agentd"),
        hide: vec![state.clone()],
    };
    // Control: the same code clones an ordinary local repository.
    let plain_dest = state.join("work/plain/home/repo");
    rt.block_on(agentd::clone_repo(
        &agentd::Repo::Local(d.join("served/private.git")),
        &plain_dest,
        None,
        "thief",
        &clone_env(&cache_root, &git_home, &cache, &sandbox),
    ))
    .expect("an ordinary local clone");
    assert!(holds(&plain_dest, &commit));
    let repo = agentd::Repo::Local(plant.clone());
    let started = Instant::now();
    let (mut failed, mut clean, mut leaked) = (0, 0, Vec::new());
    let mut first_error = None;
    for i in 0..200 {
        let dest = state.join(format!("work/{i:03}/home/repo"));
        std::fs::create_dir_all(&dest).expect("mkdir");
        let env = clone_env(&cache_root, &git_home, &cache, &sandbox);
        match rt.block_on(agentd::clone_repo(&repo, &dest, None, "thief", &env)) {
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(_) if holds(&dest, &commit) => leaked.push(i),
            Ok(_) => clean += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    eprintln!(
        "200 clones in {:.1}s while `objects` was swapped {} times: {failed} failed, {clean} cloned without the commit, {} held the mirror's commit; first error: {first_error:?}",
        started.elapsed().as_secs_f64(),
        swaps.load(Ordering::Relaxed),
        leaked.len()
    );
    assert!(
        swaps.load(Ordering::Relaxed) > 200,
        "the swapper barely ran"
    );
    assert!(
        leaked.is_empty(),
        "clones {leaked:?} copied the mirror's commit {commit}"
    );
}

/// The clone settings the daemon would use for a state dir at `state`
/// (which also holds its audit records), with `sandbox` hiding it.
fn clone_env<'a>(
    cache_root: &'a Path,
    git_home: &'a Path,
    cache: &'a agentd::MirrorCache,
    sandbox: &'a agentd::Sandbox,
) -> agentd::CloneEnv<'a> {
    agentd::CloneEnv {
        cache_root,
        git_home,
        timeout: Duration::from_secs(60),
        cache,
        sandbox,
    }
}

/// `tests/support/git-redirect-server.py`: answers everything with a 301
/// to `to`, logs whether each request carried `Authorization`; killed on
/// drop.
struct RedirectServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl RedirectServer {
    fn start(dir: &Path, to: &str, cert: &Path, key: &Path) -> RedirectServer {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (port_file, log) = (dir.join("port"), dir.join("requests.log"));
        let child = Command::new("python3")
            .arg(repo_root().join("tests/support/git-redirect-server.py"))
            .args(["--to", to])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .spawn()
            .expect("python3 runs the redirect server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the redirect server did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        RedirectServer { child, port, log }
    }

    fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RedirectServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Item 3: the profile's remote answers 301 to another server (another
/// port on 127.0.0.1: another origin). The token went to the validated
/// remote, never to the other one, and the session ends `start_failed`
/// naming the redirect.
#[test]
fn the_clone_token_never_follows_a_redirect_issue_17() {
    if !require_podman() {
        return;
    }
    let token = format!("clonetok-{}", agentd::new_session_id());
    let mut w = World::new();
    let (cert, key) = self_signed(w.path());
    let served = w.path().join("served");
    bare_repo(&served.join("private.git"), "private repo");
    // The other server serves the repository to anyone, and logs
    // `auth=ok` for every request that carries an Authorization header.
    let other = GitServer::start(
        &w.path().join("srv-other"),
        &served,
        Some((&cert, &key)),
        None,
    );
    let moved = RedirectServer::start(&w.path().join("srv-moved"), &other.url(""), &cert, &key);
    w.profile(
        "moved",
        &format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"cat README.md\"]\nrepo = {}\nnetwork = \"none\"\nrepo_token_source = \"HOST_REPO_TOKEN\"\n",
            test_image(),
            toml_string(&moved.url("private.git"))
        ),
    );
    w.request("r", "profile = \"moved\"\n");
    w.start_daemon_with(
        &[
            ("HOST_REPO_TOKEN", &token),
            ("GIT_SSL_CAINFO", cert.to_str().expect("utf8")),
        ],
        &[],
    );
    let s = w.wait_done("r");
    eprintln!(
        "outcome {} message {}\nvalidated remote saw:\n{}other server saw:\n{}",
        s["outcome"],
        s["message"],
        moved.requests(),
        other.requests()
    );
    assert!(
        moved.requests().contains("auth=present"),
        "the token did not even go to the profile's remote: {}",
        moved.requests()
    );
    assert!(
        !other.requests().contains("auth=ok"),
        "the clone token followed the redirect: {}",
        other.requests()
    );
    assert_eq!(s["outcome"], "start_failed", "{s}");
    let msg = s["message"].as_str().unwrap_or("");
    assert!(msg.contains("redirect"), "{s}");
    for (name, bytes) in leak_haystacks(&w, Vec::new()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "the clone token is in {name}"
        );
    }
    assert!(w.containers_after_removal().is_empty());
}

/// `chown -R owner path`.
fn chown_r(owner: &str, path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()
        .expect("chown")
        .success();
    assert!(ok, "chown {owner} {}", path.display());
}

/// Runs `w`'s daemon on a profile whose repository is `w`'s own, named as
/// a plain path and as a `file://` URL; both sessions print README.md.
fn clones_the_worlds_repo(w: &mut World, what: &str) {
    let path = w.repo_url.trim_start_matches("file://").to_string();
    w.sh_profile(
        "p",
        "cat README.md",
        &format!("allowed_repos = [{}]", toml_string(&path)),
    );
    w.request("url", "profile = \"p\"\n");
    w.request(
        "path",
        &format!("profile = \"p\"\nrepo = {}\n", toml_string(&path)),
    );
    w.start_daemon();
    for id in ["url", "path"] {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "success", "{what}, {id}: {s}");
        assert_eq!(w.console(id), "agentd test repo\n", "{what}, {id}");
    }
}

/// Item 5: a rootful daemon clones a repository owned by another user
/// (`nobody`), and a rootless daemon one owned by root. Both need root to
/// make the owners, so scripts/test's rootless pass skips this test (it
/// drives the rootless daemon itself).
#[test]
fn a_local_repo_owned_by_another_user_clones_in_both_modes_issue_17() {
    if !require_podman() {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test gives files to other users: run it as root"
    );
    let mut rootful = World::new();
    let repo = PathBuf::from(rootful.repo_url.trim_start_matches("file://"));
    chown_r("nobody:nogroup", &repo);
    clones_the_worlds_repo(&mut rootful, "rootful, repo owned by nobody");

    let mut rootless = World::new_rootless();
    let repo = PathBuf::from(rootless.repo_url.trim_start_matches("file://"));
    chown_r("root:root", &repo);
    clones_the_worlds_repo(&mut rootless, "rootless, repo owned by root");
}
