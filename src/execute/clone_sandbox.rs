//! Local clones run where nothing of the host is there but git and the
//! repository (issue 17).
//!
//! A local repository is a folder someone else may write: its `objects`,
//! `refs` or `packed-refs` can be links into another profile's tokened
//! mirror under `<state>/cache/git/`, or into any other repository the
//! daemon's user can read, swapped in after any check, and git opens
//! `objects/...` by path long after the top folder was looked at. No check
//! closes that window, so git for a local clone runs in a private mount
//! namespace whose root is built from nothing (`view.rs`): git's system
//! folders, the repository's own folder (read-only, opened without
//! following links), the destination and git's home. No procfs, no state
//! dir, no other repository: a link resolves to nothing there, whenever it
//! is resolved. Folders hidden from sessions (the daemon's and Podman's,
//! wherever their filesystems show them, see `mounts.rs`) are never shown:
//! a repository inside one is refused, and one inside a shown folder is
//! covered.
//!
//! The clone's destination lies inside the state dir: it is opened before
//! the root is swapped and bound at its own path through that descriptor.
//! git's home gets a tmpfs of its own holding the one global config the
//! clone runs with: `safe.directory` for the exact repository path (issue
//! 17 item 5: a repository owned by another user, or by anyone but the
//! daemon's uid inside a user namespace, where other owners show as the
//! overflow uid; `-c` would not reach the `upload-pack` that `--no-local`
//! spawns, a global config file does).
//!
//! Rootful, a mount namespace is enough (`CLONE_NEWNS`). Rootless (or root
//! without `CAP_SYS_ADMIN`), an unprivileged user namespace mapping only the
//! daemon's uid and gid to themselves comes with it; git runs with that uid
//! and no capability. A user namespace needs a single-threaded process and
//! the daemon is a multi-threaded tokio process, so the daemon runs its own
//! binary again: `agentd __clone-sandbox ... -- git ...`. `main()` hands
//! that to [`main_if_invoked`] before anything else runs; it sets the
//! sandbox up and execs git (the same pid: the clone's timeout and its
//! process-group kill apply unchanged). A failure to set it up fails the
//! clone; nothing falls back to an unsandboxed clone.

mod mounts;
mod view;

pub(super) use view::open_real;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sched::{CloneFlags, unshare};

/// The hidden argument that makes `agentd` the sandbox helper.
pub const SUBCOMMAND: &str = "__clone-sandbox";

/// The exit code of a helper that could not set the sandbox up.
const SETUP_FAILED: u8 = 125;

/// How local clones are sandboxed.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The agentd binary run as the helper (`/proc/self/exe` in the
    /// daemon: the running binary, even if its file was replaced).
    pub exe: PathBuf,
    /// The daemon's private folders, covered inside the sandbox.
    pub hide: Vec<PathBuf>,
}

impl Sandbox {
    /// The daemon's sandbox: itself as the helper, hiding every path of
    /// its control surface that no session may see (`surface.rs`: state
    /// dir, audit root, Podman's storage, run root, socket, tmp dir and exit
    /// files, registry credentials, the desired dir's `profiles/` and
    /// `requests/`, rootless the user's runtime dir). Not the rootless
    /// user's home: that is guarded from mounts because a session writing
    /// there runs code on the host, while a clone only reads, and the
    /// credentials kept there are in the list on their own; a repository
    /// under that home stays clonable.
    pub fn for_daemon(st: &super::Settings, runtime: &dyn crate::runtime::Runtime) -> Sandbox {
        let guarded = runtime.control_surface(&crate::runtime::surface::DaemonFolders {
            state: st.state.clone(),
            audit_root: st.audit_root.clone(),
            desired: st.desired.clone(),
        });
        let hide = guarded
            .into_iter()
            .filter(|g| g.what != "user's home")
            .map(|g| g.path)
            .filter(|p| p.is_absolute())
            .collect();
        Sandbox {
            exe: PathBuf::from("/proc/self/exe"),
            hide,
        }
    }

    /// A command running `program` (its arguments to be added) in this
    /// sandbox. `source` (a folder, named by its real path) is there
    /// read-only; `keep` (an existing folder) stays as it is and writable;
    /// `home` is an empty read-only folder holding `gitconfig`, which trusts
    /// exactly `trust` (`safe.directory`) and is git's global config
    /// (`GIT_CONFIG_GLOBAL`).
    pub fn command(
        &self,
        source: &Path,
        keep: &Path,
        home: &Path,
        trust: &[PathBuf],
        program: &str,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg(SUBCOMMAND);
        for h in &self.hide {
            cmd.arg("--hide").arg(h);
        }
        cmd.arg("--source").arg(source);
        cmd.arg("--keep").arg(keep).arg("--home").arg(home);
        for t in trust {
            cmd.arg("--trust").arg(t);
        }
        cmd.arg("--").arg(program);
        cmd
    }
}

/// Why the helper could not set the sandbox up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "clone sandbox: {0}; usage: agentd {SUBCOMMAND} --keep DIR --home DIR [--source DIR]... [--hide PATH]... [--trust DIR]... -- PROGRAM [ARG]..."
    )]
    Usage(String),
    #[error(
        "clone sandbox: the repository `{}` {why}; hint: a local repository is cloned from its own folder, named by its real path (no symbolic link on it) in the request and in allowed_repos, and git sees nothing else of the host",
        path.display()
    )]
    Source { path: PathBuf, why: String },
    #[error("clone sandbox: cannot {what} `{}`: {source}{hint}", path.display())]
    Step {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("clone sandbox: {0}")]
    Trust(String),
}

const RUN_HINT: &str =
    "; hint: the sandbox shows git only the host's /usr, /bin, /sbin and /lib*: install git there";

const USERNS_HINT: &str = "; hint: local clones run in a private mount namespace: rootful the daemon needs CAP_SYS_ADMIN, rootless unprivileged user namespaces (what rootless Podman needs too: sysctl user.max_user_namespaces > 0)";

fn step<E: Into<std::io::Error>>(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(E) -> SandboxError {
    let path = path.to_path_buf();
    move |e| SandboxError::Step {
        what,
        path,
        source: e.into(),
        hint: "",
    }
}

/// The helper's arguments.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    hide: Vec<PathBuf>,
    source: Vec<PathBuf>,
    keep: PathBuf,
    home: PathBuf,
    trust: Vec<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = OsString>) -> Result<Args, SandboxError> {
        let (mut hide, mut source, mut trust) = (Vec::new(), Vec::new(), Vec::new());
        let (mut keep, mut home) = (None, None);
        loop {
            let Some(flag) = it.next() else {
                return Err(SandboxError::Usage("no `--` before the program".into()));
            };
            if flag == "--" {
                break;
            }
            let value = it
                .next()
                .map(PathBuf::from)
                .ok_or_else(|| SandboxError::Usage(format!("{flag:?} needs a value")))?;
            if !value.is_absolute() {
                return Err(SandboxError::Usage(format!(
                    "{flag:?} needs an absolute path, not {value:?}"
                )));
            }
            match flag.to_str() {
                Some("--hide") => hide.push(value),
                Some("--source") => source.push(value),
                Some("--trust") => trust.push(value),
                Some("--keep") => keep = Some(value),
                Some("--home") => home = Some(value),
                _ => return Err(SandboxError::Usage(format!("unknown option {flag:?}"))),
            }
        }
        let program = it
            .next()
            .ok_or_else(|| SandboxError::Usage("no program after `--`".into()))?;
        Ok(Args {
            hide,
            source,
            keep: keep.ok_or_else(|| SandboxError::Usage("--keep is required".into()))?,
            home: home.ok_or_else(|| SandboxError::Usage("--home is required".into()))?,
            trust,
            program,
            args: it.collect(),
        })
    }
}

/// When `agentd` was run as the helper (`agentd __clone-sandbox ...`): set
/// the sandbox up and exec the program; returns only on failure, with the
/// exit code. `None` for any other command line. Called first thing in
/// `main()`, while the process is single-threaded.
pub fn main_if_invoked() -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().as_deref() != Some(OsStr::new(SUBCOMMAND)) {
        return None;
    }
    let err = match Args::parse(argv) {
        Ok(args) => match set_up(&args) {
            Ok(config) => {
                // An identity of its own for anything git records (clones
                // write no reflog: `core.logAllRefUpdates=false`): without
                // one git looks the user up in /etc/passwd and the host's
                // name up in DNS, neither of which is there.
                // The template folder is an empty one beside the config:
                // git copies its template into every repository it makes,
                // and the home holds the config.
                let template = config.with_file_name(view::TEMPLATE);
                let e = std::process::Command::new(&args.program)
                    .args(&args.args)
                    .env("GIT_TEMPLATE_DIR", template)
                    .env("GIT_CONFIG_GLOBAL", config)
                    .env("GIT_COMMITTER_NAME", "agentd")
                    .env("GIT_COMMITTER_EMAIL", "agentd@localhost")
                    .exec();
                SandboxError::Step {
                    what: "run",
                    path: PathBuf::from(&args.program),
                    source: e,
                    hint: RUN_HINT,
                }
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    eprintln!("{err}");
    Some(ExitCode::from(SETUP_FAILED))
}

/// Enter the namespaces and the view; the global git config's path.
fn set_up(a: &Args) -> Result<PathBuf, SandboxError> {
    let config_text = gitconfig(&a.trust)?;
    enter_namespaces()?;
    let config = view::enter(a, &config_text)?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(step("set no_new_privs for", Path::new(&a.program)))?;
    Ok(config)
}

/// A mount namespace of its own; with a user namespace unless root may
/// make one without.
fn enter_namespaces() -> Result<(), SandboxError> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if uid.is_root() && unshare(CloneFlags::CLONE_NEWNS).is_ok() {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(|e| {
        SandboxError::Step {
            what: "enter a user and mount namespace as uid",
            path: PathBuf::from(uid.to_string()),
            source: e.into(),
            hint: USERNS_HINT,
        }
    })?;
    // Only the daemon's own ids exist inside; every other owner shows as
    // the overflow id.
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{uid} {uid} 1\n")),
        ("/proc/self/gid_map", format!("{gid} {gid} 1\n")),
    ] {
        let path = Path::new(file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(step("write", path))?;
    }
    Ok(())
}

/// The global git config of a sandboxed clone: each of `trust` as a
/// `safe.directory`, and nothing else.
fn gitconfig(trust: &[PathBuf]) -> Result<String, SandboxError> {
    let mut out = String::from("[safe]\n");
    for t in trust {
        let s = t
            .to_str()
            .ok_or_else(|| SandboxError::Trust(format!("{t:?} is not UTF-8")))?;
        let mut quoted = String::with_capacity(s.len() + 2);
        for c in s.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '"' => quoted.push_str("\\\""),
                c if c.is_control() => {
                    return Err(SandboxError::Trust(format!(
                        "{t:?} holds a control character; hint: rename the repository"
                    )));
                }
                c => quoted.push(c),
            }
        }
        out.push_str(&format!("\tdirectory = \"{quoted}\"\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
