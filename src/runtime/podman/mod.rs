//! The Podman backend of `runtime::Runtime`: the only code that spawns
//! `podman`, parses its JSON, or knows its mechanisms (conmon's exit files
//! and console capture, the pid file, `podman events`, keep-id, the image
//! store's stamp).
//!
//! Every call has a timeout, and its error names the podman subcommand and
//! what podman said, never the full argv (which is long, though it never
//! holds a secret: see `args.rs`).

mod args;
mod backend;
pub mod console;
mod ended;
mod events;
mod exits;
mod host;
#[cfg(test)]
mod hostile_tests;
mod images;
mod json;
mod known;
mod surface;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::process::Command;

pub use args::{RunSpec, run_args};
#[cfg(test)]
pub use exits::exit_dir;
pub use host::Host;
pub use json::Inspected;

use crate::runtime::{CallObserver, ErrorKind, Namespaces, RuntimeError, SessionSpec};
use crate::sync::lock;
use known::Known;

/// Label keys agentd puts on everything it creates.
pub mod labels {
    pub const MANAGED: &str = "io.agentd.managed";
    pub const INSTANCE: &str = "io.agentd.instance";
    pub const SESSION: &str = "io.agentd.session";
    pub const PROFILE: &str = "io.agentd.profile";
    pub const REQUEST: &str = "io.agentd.request";
    /// Unix millisecond after which the session is timed out.
    pub const DEADLINE: &str = "io.agentd.deadline";
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot run `{program}`: {source}; hint: install podman or put it on PATH")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`podman {verb}` did not finish within {secs}s")]
    Timeout { verb: String, secs: u64 },
    #[error("`podman {verb}` failed (exit {code}): {stderr}")]
    Failed {
        verb: String,
        code: i32,
        stderr: String,
    },
    #[error("cannot parse the output of `podman {verb}`: {reason}")]
    Parse { verb: String, reason: String },
}

/// Why the daemon cannot start: Podman is missing or not answering. Each
/// message says what to install or start.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(
        "podman is not installed: cannot run `{program}`: {source}; hint: install podman (Debian/Ubuntu: `apt-get install podman`, Fedora/RHEL: `dnf install podman`), put it on the daemon's PATH, or set AGENTD_PODMAN to its absolute path"
    )]
    Missing {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "podman is not answering: `{program} info` did not finish within {secs}s; hint: run `podman info` as the daemon's user to see where it hangs (a stuck podman process holding the storage lock, a hung storage mount); with CONTAINER_HOST set, start the Podman service (`systemctl start podman.socket`, or `systemctl --user start podman.socket` rootless); AGENTD_PODMAN_TIMEOUT sets this limit"
    )]
    NotAnswering { program: String, secs: u64 },
    #[error(
        "podman is not working: `{program} info` failed (exit {code}): {stderr}; hint: run `podman info` as the daemon's user and fix what it reports (rootless: a subuid/subgid range in /etc/subuid and /etc/subgid, a set XDG_RUNTIME_DIR; remote: start the Podman service)"
    )]
    Failed {
        program: String,
        code: i32,
        stderr: String,
    },
}

impl PodmanError {
    /// The image is not in local storage (agentd never pulls).
    pub fn is_image_missing(&self) -> bool {
        matches!(self, PodmanError::Failed { stderr, .. } if stderr.contains("image not known") || stderr.contains("no such image"))
    }

    /// Rootless Podman's user-mode network (slirp4netns or pasta) could not
    /// start: the cause in a few words, for a message that names it rather
    /// than passing on Podman's raw text alone.
    pub fn user_network_failure(&self) -> Option<&'static str> {
        let PodmanError::Failed { stderr, .. } = self else {
            return None;
        };
        // Podman's own phrases ("/usr/bin/slirp4netns failed: ...", "pasta
        // failed with exit code ..."), not any mention of the words (a
        // request or image name may hold them).
        let helper = stderr.contains("slirp4netns failed") || stderr.contains("pasta failed");
        if !helper {
            return None;
        }
        Some(if stderr.contains("/dev/net/tun") {
            "its user-mode network helper (slirp4netns or pasta) cannot open /dev/net/tun on this host"
        } else {
            "its user-mode network helper (slirp4netns or pasta) failed"
        })
    }

    /// A container with that name exists already.
    pub fn is_name_in_use(&self) -> bool {
        matches!(self, PodmanError::Failed { stderr, .. } if stderr.contains("already in use"))
    }

    /// Podman could not be run or did not answer in time: worth a retry.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PodmanError::Timeout { .. } | PodmanError::Spawn { .. }
        )
    }

    /// `podman secret inspect` of a secret that does not exist.
    pub fn is_no_such_secret(&self) -> bool {
        matches!(self, PodmanError::Failed { stderr, .. } if stderr.contains("no such secret"))
    }

    /// Podman reported that the container does not exist.
    pub fn is_no_such_container(&self) -> bool {
        matches!(self, PodmanError::Failed { stderr, .. } if stderr.contains("no such container"))
    }
}

impl PodmanError {
    /// The kind of any call's failure: what the caller does next.
    fn kind(&self) -> ErrorKind {
        if self.is_image_missing() {
            ErrorKind::ImageMissing
        } else if self.is_transient() {
            ErrorKind::Transient
        } else if self.is_name_in_use() {
            ErrorKind::NameInUse
        } else {
            ErrorKind::Failed
        }
    }
}

impl From<PodmanError> for RuntimeError {
    fn from(e: PodmanError) -> RuntimeError {
        RuntimeError::new(e.kind(), e)
    }
}

/// Podman gets only the environment it needs: the daemon's environment
/// holds credential values, which no child process should inherit.
pub fn scrub_env(cmd: &mut Command) {
    const KEEP: &[&str] = &[
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "TZ",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "CONTAINERS_REGISTRIES_CONF",
        "REGISTRY_AUTH_FILE",
        "CONTAINER_HOST",
        "CONTAINER_CONNECTION",
        "DBUS_SESSION_BUS_ADDRESS",
    ];
    cmd.env_clear();
    for k in KEEP {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
}

/// `container inspect`, `image inspect`, `secret inspect`, `run`, `ps`:
/// enough to say which call failed (in errors and metrics labels).
fn verb_of(args: &[String]) -> String {
    match args {
        [first, second, ..] if matches!(first.as_str(), "container" | "image" | "secret") => {
            format!("{first} {second}")
        }
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

/// A handle on the podman binary, and what the backend learned of the
/// host and of the sessions it ran.
#[derive(Clone)]
pub struct Podman {
    pub program: String,
    /// Limit for quick calls (inspect, rm, ps).
    pub timeout: Duration,
    /// This daemon's instance: the label on everything it creates, and the
    /// filter of `list` and `changes`.
    instance: String,
    /// What `podman info` said at start-up (`check_available`).
    host: Arc<OnceLock<Host>>,
    /// Where that Podman records its events (`podman info`'s
    /// `eventLogger`): `none` keeps no record of an exit (`ended.rs`).
    event_logger: Arc<OnceLock<String>>,
    /// The storage's image list, learned from `podman info` at start-up
    /// (`images.rs`); unset when it is not a local file.
    images_file: Arc<OnceLock<PathBuf>>,
    /// Told of every call (the daemon's metrics).
    observer: Option<Arc<dyn CallObserver>>,
    /// Images and exits of the sessions run (`known.rs`).
    known: Arc<Mutex<Known>>,
    /// Per image name, held while it is asked about: sessions of one image
    /// starting together (a burst) ask once, and the others take that
    /// answer; sessions of other images do not wait.
    learning: crate::sync::KeyedLocks,
}

impl std::fmt::Debug for Podman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podman")
            .field("program", &self.program)
            .field("timeout", &self.timeout)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Podman {
    /// The podman of this process's environment (`AGENTD_PODMAN`, else
    /// `podman` on PATH) for the instance `instance`.
    pub fn new(instance: &str) -> Podman {
        Podman {
            program: std::env::var("AGENTD_PODMAN").unwrap_or_else(|_| "podman".into()),
            // AGENTD_PODMAN_TIMEOUT (`90s`, `2m`) bounds every quick call.
            timeout: std::env::var("AGENTD_PODMAN_TIMEOUT")
                .ok()
                .and_then(|t| crate::desired::parse_duration(&t).ok())
                .unwrap_or(Duration::from_secs(60)),
            instance: instance.to_string(),
            host: Arc::default(),
            event_logger: Arc::default(),
            images_file: Arc::default(),
            observer: None,
            known: Arc::default(),
            learning: crate::sync::KeyedLocks::default(),
        }
    }

    /// A handle as `check_available` leaves it, for tests of what the
    /// daemon derives from the host.
    #[cfg(test)]
    pub fn with_host(instance: &str, host: Host) -> Podman {
        let p = Podman::new(instance);
        let _ = p.host.set(host);
        p
    }

    /// Tell `observer` of every call from now on.
    pub fn observed_by(mut self, observer: Arc<dyn CallObserver>) -> Podman {
        self.observer = Some(observer);
        self
    }

    /// Whether this is the user's rootless Podman (as `podman info` said).
    fn rootless(&self) -> bool {
        self.host.get().is_some_and(|h| h.rootless)
    }

    /// Whether the session `spec` runs in a container that removes itself
    /// once it exits (`run --rm`: Podman's clean-up, which runs anyway,
    /// removes it, and the end of the session runs no `podman rm`, issue
    /// 18 item 6). Not with a `memory` limit: whether the kernel killed one
    /// of its processes for memory only `container inspect` says, after the
    /// exit. Not when Podman keeps no event log: a daemon restarted after
    /// the exit reads the exit from it (`ended.rs`).
    fn removes_sessions(&self, spec: &SessionSpec) -> bool {
        spec.memory.is_none() && self.event_logger.get().is_some_and(|l| l != "none")
    }
}

impl Podman {
    async fn call(&self, args: &[String], timeout: Duration) -> Result<String, PodmanError> {
        let started = std::time::Instant::now();
        let r = self.call_unmeasured(args, timeout).await;
        // "No such container" answers the question asked (inspect, stop, rm
        // of a gone container): not an error for the metrics either.
        let ok = r
            .as_ref()
            .map_or_else(PodmanError::is_no_such_container, |_| true);
        if let Some(o) = &self.observer {
            o.runtime_call(&verb_of(args), ok, started.elapsed());
        }
        r
    }

    async fn call_unmeasured(
        &self,
        args: &[String],
        timeout: Duration,
    ) -> Result<String, PodmanError> {
        let verb = verb_of(args);
        let mut cmd = Command::new(crate::fsutil::program_path(&self.program));
        scrub_env(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| PodmanError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| PodmanError::Timeout {
                verb: verb.clone(),
                secs: timeout.as_secs(),
            })?
            .map_err(|source| PodmanError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim().trim_start_matches("Error: ").to_string();
            return Err(PodmanError::Failed {
                verb,
                code: out.status.code().unwrap_or(-1),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Podman is installed and answers `podman info` (which reads its
    /// storage and finds its OCI runtime) within the quick-call limit, at
    /// most 30 s. Returns what the daemon needs to know of it: the mode
    /// (rootless or rootful), cgroups, network backend, storage. Also
    /// learns where the storage keeps its image list (see `images.rs`).
    pub async fn check_available(&self) -> Result<Host, Unavailable> {
        let limit = self.timeout.min(Duration::from_secs(30));
        let args = ["info".into(), "--format=json".into()];
        let failed = |code, stderr| Unavailable::Failed {
            program: self.program.clone(),
            code,
            stderr,
        };
        match self.call(&args, limit).await {
            Ok(out) => {
                let host =
                    Host::parse(&out).map_err(|e| failed(0, format!("unexpected output: {e}")))?;
                if !host.graph_root.is_empty()
                    && let Some(f) = images::images_file(
                        std::path::Path::new(&host.graph_root),
                        &host.storage_driver,
                    )
                {
                    let _ = self.images_file.set(f);
                }
                let _ = self.host.set(host.clone());
                let _ = self.event_logger.set(host::event_logger(&out));
                Ok(host)
            }
            Err(PodmanError::Spawn { program, source }) => {
                Err(Unavailable::Missing { program, source })
            }
            Err(PodmanError::Timeout { .. }) => Err(Unavailable::NotAnswering {
                program: self.program.clone(),
                secs: limit.as_secs_f64().ceil() as u64,
            }),
            Err(PodmanError::Failed { code, stderr, .. }) => Err(failed(code, stderr)),
            Err(PodmanError::Parse { reason, .. }) => Err(failed(0, reason)),
        }
    }

    /// `podman run` of a session; returns the container's id.
    async fn run_container(&self, spec: &RunSpec) -> Result<String, PodmanError> {
        let out = self.call(&run_args(spec), self.timeout).await?;
        Ok(out.trim().to_string())
    }

    /// `container inspect`; `None` if the container does not exist.
    async fn inspect_container(&self, name: &str) -> Result<Option<Inspected>, PodmanError> {
        match self
            .call(
                &["container".into(), "inspect".into(), name.into()],
                self.timeout,
            )
            .await
        {
            Ok(out) => json::parse_inspect(&out).map(Some),
            Err(e) if e.is_no_such_container() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image container `id` was created from (`container inspect`);
    /// `None` when Podman cannot say.
    async fn image_of(&self, id: &str) -> Option<crate::runtime::ImageIdentity> {
        match self.inspect_container(id).await {
            Ok(i) => i.map(|i| crate::runtime::ImageIdentity {
                id: i.image_id,
                digest: i.image_digest,
            }),
            Err(e) => {
                tracing::debug!(container = id, error = %e, "cannot learn the image a container ran");
                None
            }
        }
    }

    /// What `image` resolves to now, with the stamp that answer holds for:
    /// from the cache when the stamp is unchanged, else asked. `None` when
    /// unknown: no stamp, Podman failed, or the list changed while asking.
    async fn learn_image(
        &self,
        image: &str,
    ) -> Option<(images::ImagesStamp, crate::runtime::ImageIdentity)> {
        let before = self.images_stamp()?;
        if let Some(info) = lock(&self.known).image(image, before) {
            return Some((before, info));
        }
        let turn = self.learning.of(image);
        let _turn = turn.lock().await;
        if let Some(info) = lock(&self.known).image(image, before) {
            return Some((before, info));
        }
        let info = match self.image_inspect(image).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(image, error = %e, "cannot learn the image id at start; the end asks");
                return None;
            }
        };
        let after = self.images_stamp()?;
        if after != before {
            return None;
        }
        lock(&self.known).learned(image, before, info.clone());
        Some((before, info))
    }

    /// The network failure of a rootless session on the default network,
    /// classified (`ErrorKind::HostNetwork`); any other failure as it is.
    fn run_error(&self, e: PodmanError, spec: &SessionSpec) -> RuntimeError {
        let kind = e.kind();
        let user_network = (kind == ErrorKind::Failed
            && self.rootless()
            && spec.network == crate::desired::Network::Default)
            .then(|| e.user_network_failure())
            .flatten();
        match user_network {
            Some(cause) => RuntimeError::new(ErrorKind::HostNetwork(cause), e),
            None => e.into(),
        }
    }

    /// The pid the OCI runtime wrote for a container just started.
    fn namespaces_of(&self, pid: Option<u32>) -> Option<Namespaces> {
        pid.map(|pid| Namespaces {
            pid,
            own_user_namespace: self.rootless(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PodmanError;

    #[test]
    fn every_verb_agentd_calls_is_named_in_errors_and_metrics_issue_17() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (call, verb) in [
            (&["container", "inspect", "x"][..], "container inspect"),
            (
                &["image", "inspect", "--format", "json", "x"][..],
                "image inspect",
            ),
            (&["secret", "inspect", "s"][..], "secret inspect"),
            (&["run", "--rm", "img"][..], "run"),
            (&["rm", "-f", "c"][..], "rm"),
            (&["info", "--format=json"][..], "info"),
        ] {
            assert_eq!(super::verb_of(&args(call)), verb, "{call:?}");
        }
        let e = PodmanError::Failed {
            verb: super::verb_of(&args(&["image", "inspect", "x"])),
            code: 125,
            stderr: "boom".into(),
        };
        assert!(
            e.to_string().starts_with("`podman image inspect` failed"),
            "{e}"
        );
    }

    fn failed(stderr: &str) -> PodmanError {
        PodmanError::Failed {
            verb: "run".into(),
            code: 125,
            stderr: stderr.into(),
        }
    }

    #[test]
    fn podman_4_3_error_texts_are_classified() {
        assert!(failed("localhost/x:1: image not known").is_image_missing());
        assert!(
            failed("the container name \"agentd-a-r\" is already in use by abc").is_name_in_use()
        );
        assert!(
            failed("no container with name or ID \"x\" found: no such container")
                .is_no_such_container()
        );
        assert!(!failed("OCI runtime error").is_image_missing());
        assert!(
            PodmanError::Timeout {
                verb: "run".into(),
                secs: 60
            }
            .is_transient()
        );
        assert!(!failed("boom").is_transient());
        assert!(
            failed("inspecting secret: no secret with name or id \"x\": no such secret")
                .is_no_such_secret()
        );
    }

    #[test]
    fn a_rootless_network_that_cannot_start_is_named_issue_10() {
        // Podman 4.3.1 rootless on these hosts, verbatim but for the run.
        let tun = failed(
            "/usr/bin/slirp4netns failed: \"open(\\\"/dev/net/tun\\\"): Permission denied\\nchild failed(1)\\n\"",
        );
        assert!(
            tun.user_network_failure()
                .expect("named")
                .contains("/dev/net/tun")
        );
        let pasta = failed("pasta failed with exit code 1: Couldn't open user namespace");
        assert!(
            pasta
                .user_network_failure()
                .expect("named")
                .contains("failed")
        );
        assert_eq!(failed("OCI runtime error").user_network_failure(), None);
        // Names that merely hold the words are no network failure.
        assert_eq!(
            failed("localhost/antipasta:1: image not known").user_network_failure(),
            None
        );
        assert_eq!(
            failed("the container name \"agentd-a-slirp4netns-1\" is already in use")
                .user_network_failure(),
            None
        );
        assert_eq!(
            failed("localhost/x:1: image not known").user_network_failure(),
            None
        );
    }
}
