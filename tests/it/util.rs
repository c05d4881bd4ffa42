//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command running the agentd binary with a clean agentd environment.
pub fn agentd() -> Command {
    let mut c = Command::new(cargo_bin("agentd"));
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

/// Write `text` at `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create folders");
    }
    std::fs::write(&p, text).expect("write file");
    p
}

/// The test image built by scripts/setup-podman.
pub fn test_image() -> String {
    std::env::var("AGENTD_TEST_IMAGE").unwrap_or_else(|_| "localhost/agentd-test:bookworm".into())
}

/// Podman is required: tests that need it fail loudly when it is missing,
/// unless a developer opted out with AGENTD_NO_PODMAN=1 (then they return
/// early, and say so).
pub fn require_podman() -> bool {
    if std::env::var("AGENTD_NO_PODMAN").as_deref() == Ok("1") {
        eprintln!("AGENTD_NO_PODMAN=1: not running this Podman test");
        return false;
    }
    let image = test_image();
    let ok = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "podman or the test image `{image}` is unavailable: run scripts/setup-podman \
         (or set AGENTD_NO_PODMAN=1 on a machine without Podman)"
    );
    true
}

/// One isolated agentd world: desired dir, state dir, a local git repo, and
/// (once started) a daemon. Everything lives in a temp dir; containers of
/// this world's instance are removed on drop, so a failing test leaks nothing
/// into the next.
pub struct World {
    pub root: tempfile::TempDir,
    pub desired: PathBuf,
    pub state: PathBuf,
    /// `file://` URL of a bare repo holding README.md ("agentd test repo")
    pub repo_url: String,
    daemon: Option<std::process::Child>,
    /// Set by `new_rootless`: agentd, podman and clients run as this user.
    pub run_as: Option<RunAs>,
}

/// An unprivileged user a root test drives a rootless daemon as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// The rootless test user scripts/setup-podman prepares
    /// (`AGENTD_ROOTLESS_USER`, default `agentd-rootless`). Tests that need
    /// it fail loudly when it is missing: run scripts/setup-podman.
    pub fn test_user() -> RunAs {
        let name =
            std::env::var("AGENTD_ROOTLESS_USER").unwrap_or_else(|_| "agentd-rootless".into());
        let u = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!("the rootless test user `{name}` does not exist: run scripts/setup-podman")
            });
        RunAs {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/user/{}", self.uid))
    }

    /// `program` run as this user with a login-like environment (no
    /// inherited variables), in `/`. `setpriv` execs, so the child's pid is
    /// the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--init-groups", "--"])
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("AGENTD_TEST_IMAGE", test_image())
            .current_dir("/");
        c
    }
}

/// Whether this test process itself runs rootless (the second pass of
/// scripts/test runs the Podman suites as the rootless test user).
pub fn running_rootless() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// The uid of a daemon this test process starts: what sealed records and
/// the daemon's own files belong to (root, or the rootless user).
pub fn daemon_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The host uid of a running session's files: the session uid rootful
/// (mapped 1:1), the daemon's own uid rootless (`--userns=keep-id`).
pub fn session_host_uid() -> u32 {
    if running_rootless() {
        daemon_uid()
    } else {
        10_001
    }
}

impl World {
    pub fn new() -> World {
        let root = tempfile::tempdir().expect("tempdir");
        let desired = root.path().join("desired");
        std::fs::create_dir_all(desired.join("profiles")).expect("mkdir");
        std::fs::create_dir_all(desired.join("requests")).expect("mkdir");
        let state = root.path().join("state");
        let bare = root.path().join("repo.git");
        let work = root.path().join("repo-src");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("README.md"), "agentd test repo\n").expect("write");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-qm", "first commit"]);
        git(
            root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().expect("utf8"),
                bare.to_str().expect("utf8"),
            ],
        );
        World {
            repo_url: format!("file://{}", bare.display()),
            root,
            desired,
            state,
            daemon: None,
            run_as: None,
        }
    }

    /// A world whose daemon, clients and Podman calls run as the rootless
    /// test user (this test runs as root): everything in it belongs to that
    /// user, and the agentd binary is linked in where the user can run it.
    pub fn new_rootless() -> World {
        let mut w = World::new();
        let user = RunAs::test_user();
        let bin = w.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let exe = cargo_bin("agentd");
        if std::fs::hard_link(&exe, bin.join("agentd")).is_err() {
            std::fs::copy(&exe, bin.join("agentd")).expect("copy agentd");
        }
        let chown = Command::new("chown")
            .args(["-R", &format!("{}:{}", user.uid, user.gid)])
            .arg(w.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        w.run_as = Some(user);
        w
    }

    /// `podman` as this world's user.
    pub fn podman(&self) -> Command {
        match &self.run_as {
            Some(u) => u.command("podman"),
            None => Command::new("podman"),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// An agentd command pointed at this world.
    pub fn agentd(&self) -> Command {
        let mut c = match &self.run_as {
            Some(u) => u.command(self.path().join("bin/agentd")),
            None => agentd(),
        };
        c.arg("--desired")
            .arg(&self.desired)
            .arg("--state")
            .arg(&self.state);
        c
    }

    pub fn profile(&self, name: &str, toml_body: &str) {
        write(&self.desired, &format!("profiles/{name}.toml"), toml_body);
    }

    /// A profile on the test image with this world's repo and no network.
    pub fn sh_profile(&self, name: &str, script: &str, extra: &str) {
        let body = format!(
            "base_image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = \"{}\"\nnetwork = \"none\"\n{extra}\n",
            test_image(),
            toml_string(script),
            self.repo_url
        );
        self.profile(name, &body);
    }

    pub fn request(&self, id: &str, toml_body: &str) {
        write(&self.desired, &format!("requests/{id}.toml"), toml_body);
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("daemon.log")
    }

    /// Start the daemon with extra environment.
    pub fn start_daemon_with(&mut self, envs: &[(&str, &str)], args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut c = self.agentd();
        c.arg("daemon")
            .args(args)
            .envs(envs.iter().copied())
            .stderr(log)
            .stdout(std::process::Stdio::null());
        c.env("AGENTD_LOG", "debug");
        self.daemon = Some(c.spawn().expect("daemon starts"));
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[], &[]);
    }

    /// kill -9 the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How many containers were ever created for `request` (podman events).
    pub fn containers_created_for(&self, request: &str) -> usize {
        let out = self
            .podman()
            .args([
                "events",
                "--stream=false",
                "--since",
                "10m",
                "--format",
                "json",
                "--filter",
                "event=create",
                "--filter",
            ])
            .arg(format!("label=io.agentd.instance={}", self.instance()))
            .output()
            .expect("podman events");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["Attributes"]["io.agentd.request"] == request)
            .count()
    }

    /// Audit record folders of a profile.
    pub fn audit_records(&self, profile: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.state.join("audit").join(profile))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Work folders left under the state dir.
    pub fn work_dirs(&self) -> usize {
        std::fs::read_dir(self.state.join("work"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Work folders left once the daemon has removed what it removes: a
    /// session's folder goes right after `done` is written (issue 12), so a
    /// test claiming none is left waits (bounded: 30 s) and then counts.
    pub fn work_dirs_after_removal(&self) -> usize {
        settle(|| self.work_dirs(), |n| *n == 0)
    }

    /// Poll `cond` until true, or panic with the daemon log.
    pub fn eventually(&self, what: &str, timeout: Duration, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(std::process::Child::id)
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.daemon_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Wait for the daemon to exit; its exit status.
    pub fn wait_daemon(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                self.daemon = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn status(&self, id: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.state.join("status").join(format!("{id}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Poll until the request's status satisfies `pred`, or panic with the log.
    pub fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(id)
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {id}; status: {:?}\n--- daemon log ---\n{}",
                self.status(id),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_done(&self, id: &str) -> serde_json::Value {
        self.wait_for(id, Duration::from_secs(60), |s| s["phase"] == "done")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's lock file, as a daemon of this process's user and
    /// environment places it.
    pub fn lock_path(&self) -> PathBuf {
        agentd::lock_path(&self.state, &self.instance())
    }

    /// This world's instance id, as the daemon derives it.
    pub fn instance(&self) -> String {
        agentd::instance_id(&self.state)
    }

    /// Names of containers carrying this world's instance label.
    pub fn containers(&self) -> Vec<String> {
        let out = self
            .podman()
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("label=io.agentd.instance={}", self.instance()))
            .output()
            .expect("podman ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Names of this world's containers once the daemon has removed what it
    /// removes: an exited container goes right after `done` is written
    /// (issue 12), so a test claiming that nothing is left waits for that
    /// removal (bounded: 30 s) and then looks.
    pub fn containers_after_removal(&self) -> Vec<String> {
        settle(|| self.containers(), Vec::is_empty)
    }

    /// A request's `agentd/session.json`.
    pub fn session_record(&self, id: &str) -> serde_json::Value {
        read_json(&self.audit_dir(id).join("agentd/session.json"))
    }

    /// A request's captured console (`agentd/console.log`).
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.audit_dir(id).join("agentd/console.log")).expect("console.log")
    }

    /// The audit record folder of a finished request.
    pub fn audit_dir(&self, id: &str) -> PathBuf {
        PathBuf::from(
            self.status(id).expect("status")["audit_dir"]
                .as_str()
                .expect("audit_dir"),
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for name in self.containers() {
            let _ = self.podman().args(["rm", "-f", "-t", "0", &name]).output();
        }
    }
}

/// A TOML basic string literal.
/// Sample the process table (`ps -eww -o args`) every few milliseconds
/// until `stop` is set: what a leak test searches for argv leaks.
pub fn sample_ps(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(out) = Command::new("ps").args(["-eww", "-o", "args"]).output() {
                samples.push(out.stdout);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        samples
    })
}

/// Everything a leak test searches: `outputs` (named captures such as
/// `podman inspect` and `ps`), the daemon log, and every file under the
/// state dir (status, specs, audit records, caches, work folders), once
/// the ended sessions' work folders are gone: they are removed right after
/// `done` is written (issue 12), and until then hold the credentials file,
/// as while the session ran.
pub fn leak_haystacks(w: &World, mut outputs: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    w.work_dirs_after_removal();
    outputs.push(("daemon log".into(), w.log().into_bytes()));
    for e in walkdir::WalkDir::new(&w.state)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
    {
        outputs.push((
            e.path().display().to_string(),
            std::fs::read(e.path()).expect("read"),
        ));
    }
    outputs
}

pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

use std::time::{Duration, Instant};

/// A copy of the test image with git removed, built once per test run: the
/// proof that agentd needs nothing but /bin/sh in an image.
pub fn image_without_git() -> String {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let image = "localhost/agentd-test-nogit:latest".to_string();
    ONCE.call_once(|| {
        let name = format!("agentd-nogit-build-{}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        let run = Command::new("podman")
            .args([
                "run",
                "--name",
                &name,
                "--network",
                "none",
                &test_image(),
                "/bin/sh",
                "-c",
                "rm -f /usr/bin/git* && ! command -v git",
            ])
            .output()
            .expect("podman run");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let commit = Command::new("podman")
            .args(["commit", "-q", &name, &image])
            .output()
            .expect("podman commit");
        assert!(
            commit.status.success(),
            "{}",
            String::from_utf8_lossy(&commit.stderr)
        );
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
    });
    image
}

impl World {
    /// A profile whose session waits until the test calls `open_gate`, then
    /// runs `then` (a shell snippet). The gate folder is world-writable.
    pub fn gate_profile(&self, name: &str, then: &str, extra: &str) {
        let gate = self.path().join("gate");
        std::fs::create_dir_all(&gate).expect("mkdir");
        let script = format!("until [ -e /gate/go ]; do sleep 0.05; done; {then}");
        let extra = format!(
            "mounts = [{{ source = \"{}\", target = \"/gate\" }}]\n{extra}",
            gate.display()
        );
        self.sh_profile(name, &script, &extra);
    }

    pub fn open_gate(&self) {
        std::fs::write(self.path().join("gate/go"), "").expect("open gate");
    }
}

/// Read `read()` until `done` holds or 30 s pass; the last reading. What
/// goes right after `done` (container, work folder) is awaited this way.
fn settle<T>(read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = read();
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Read and parse a JSON file, panicking with its path.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[path = "../../src/testkit/host_git.rs"]
mod host_git;
pub use host_git::git;
