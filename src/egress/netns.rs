//! Placing the proxy's listening socket inside a session's own network
//! namespace (issue 19): the container keeps `--network none` (loopback
//! only, no route), and before its start gate opens the daemon binds
//! `127.0.0.1:<port>` *in that namespace* and serves the socket from its
//! own. A socket stays in the namespace it was created in, whoever holds
//! it; the agent's container gets no capability, device or mount for it.
//!
//! - Rootful: a dedicated OS thread (never a runtime worker: a thread's
//!   network namespace is its own) `setns`es into `/proc/<pid>/ns/net`,
//!   binds, listens and ends.
//! - Rootless: the daemon has no capability over the container's network
//!   namespace until it enters the user namespace that owns it, which
//!   `setns` allows only a single-threaded process. The daemon re-executes
//!   its own binary (`/proc/self/exe __egress-listen PID PORT`, see
//!   `helper.rs`), which does that and hands the socket back over
//!   `SCM_RIGHTS` on its stdin. Both run on one dedicated thread here.
//!
//! The pid is the container's init, from the runtime's pid file. A
//! namespace that is the daemon's own (a recycled pid of a host process)
//! is refused, so nothing ever listens on the host's loopback.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sched::CloneFlags;

/// The hidden subcommand of the helper (`agentd __egress-listen PID PORT`).
pub const HELPER_ARG: &str = "__egress-listen";

/// How long placing a socket may take, helper included.
const PLACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a socket could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace of pid {pid}: {source}")]
    Open { pid: u32, source: io::Error },
    #[error("pid {pid} is in the daemon's own network namespace (the container is gone?)")]
    OwnNamespace { pid: u32 },
    #[error("cannot enter the {what} namespace of pid {pid}: {source}")]
    Enter {
        what: &'static str,
        pid: u32,
        source: io::Error,
    },
    #[error("port {port} is already taken in the session's network namespace")]
    PortTaken { port: u16 },
    #[error("cannot listen on 127.0.0.1:{port} in the session's network namespace: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("the namespace helper failed: {0}")]
    Helper(String),
}

impl NetnsError {
    fn io(&self) -> Option<&io::Error> {
        match self {
            NetnsError::Open { source, .. }
            | NetnsError::Enter { source, .. }
            | NetnsError::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `(device, inode)` of a namespace file: its identity.
fn ns_id(f: &impl AsFd) -> io::Result<(u64, u64)> {
    let m = std::fs::File::from(f.as_fd().try_clone_to_owned()?).metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Open `/proc/<pid>/ns/net`, refusing the caller's own namespace.
pub(crate) fn open_netns(pid: u32) -> Result<std::fs::File, NetnsError> {
    let f = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| NetnsError::Open { pid, source })?;
    let own = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|source| NetnsError::Open { pid, source })?;
    let same = ns_id(&f).and_then(|a| ns_id(&own).map(|b| a == b));
    match same {
        Ok(false) => Ok(f),
        Ok(true) => Err(NetnsError::OwnNamespace { pid }),
        Err(source) => Err(NetnsError::Open { pid, source }),
    }
}

/// Bind and listen on `127.0.0.1:port` in the calling thread's namespace.
pub(crate) fn bind_loopback(port: u16) -> Result<std::net::TcpListener, NetnsError> {
    // std sets SO_REUSEADDR: a restart rebinds over the old listener's
    // TIME_WAIT connections, never over a socket listening there.
    std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            NetnsError::PortTaken { port }
        } else {
            NetnsError::Bind { port, source }
        }
    })
}

/// Rootful: enter the namespace on this (dedicated) thread and bind.
fn place_here(pid: u32, port: u16) -> Result<std::net::TcpListener, NetnsError> {
    let ns = open_netns(pid)?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        what: "network",
        pid,
        source: e.into(),
    })?;
    bind_loopback(port)
}

/// How the socket is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Rootful: `setns` on a dedicated thread.
    Thread,
    /// Rootless: the helper, run from this binary (the daemon:
    /// `/proc/self/exe`; tests name the agentd binary).
    Helper(std::path::PathBuf),
}

impl Placement {
    /// The daemon's, for a container with a user namespace of its own
    /// (rootless: the daemon's own binary re-executed as the helper) or
    /// without (a thread).
    pub fn for_daemon(own_user_namespace: bool) -> Placement {
        if own_user_namespace {
            Placement::Helper("/proc/self/exe".into())
        } else {
            Placement::Thread
        }
    }
}

/// Rootless: run the helper and take the socket it sends.
fn place_by_helper(
    exe: &std::path::Path,
    pid: u32,
    port: u16,
) -> Result<std::net::TcpListener, NetnsError> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| NetnsError::Helper(e.to_string()))?;
    ours.set_read_timeout(Some(PLACE_TIMEOUT))
        .map_err(|e| NetnsError::Helper(e.to_string()))?;
    let mut child = std::process::Command::new(exe)
        .arg(HELPER_ARG)
        .arg(pid.to_string())
        .arg(port.to_string())
        // Nothing of the daemon's environment (credential sources) goes
        // where the helper goes.
        .env_clear()
        .stdin(OwnedFd::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| NetnsError::Helper(format!("cannot run {}: {e}", exe.display())))?;
    let got = receive(&ours);
    drop(ours);
    // It exits right after sending; a helper stuck past the timeout is killed.
    if got.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    got
}

/// One message from the helper: `1` with the socket, or `0` and why.
fn receive(sock: &UnixStream) -> Result<std::net::TcpListener, NetnsError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 512];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (bytes, fd) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| NetnsError::Helper(format!("no answer: {e}")))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| NetnsError::Helper(e.to_string()))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in this process
                    // for this message (SCM_RIGHTS); nothing else owns it, so
                    // it is wrapped exactly once and closed when dropped.
                    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (msg.bytes, fd)
    };
    let text = String::from_utf8_lossy(&buf[..bytes]).into_owned();
    match (text.as_bytes().first(), fd) {
        (Some(b'1'), Some(fd)) => Ok(std::net::TcpListener::from(fd)),
        (Some(b'0'), _) => Err(parse_failure(&text[1..])),
        _ => Err(NetnsError::Helper(format!(
            "unexpected answer {:?}",
            text.escape_debug().to_string()
        ))),
    }
}

/// The helper reports a taken port as `taken`; the rest as text.
fn parse_failure(text: &str) -> NetnsError {
    match text.strip_prefix("taken ").and_then(|p| p.parse().ok()) {
        Some(port) => NetnsError::PortTaken { port },
        None => NetnsError::Helper(text.to_string()),
    }
}

/// What the helper answers for `r`.
pub(crate) fn answer(r: &Result<std::net::TcpListener, NetnsError>) -> Vec<u8> {
    match r {
        Ok(_) => b"1".to_vec(),
        Err(NetnsError::PortTaken { port }) => format!("0taken {port}").into_bytes(),
        Err(e) => format!("0{e}").into_bytes(),
    }
}

/// Place a listening socket on `127.0.0.1:port` in the network namespace
/// of `pid`, from a dedicated thread (rootful: `setns` there; rootless:
/// the helper). Bounded in time.
pub async fn listen_in(
    pid: u32,
    port: u16,
    how: &Placement,
) -> Result<std::net::TcpListener, NetnsError> {
    let how = how.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("agentd-netns".into())
        .spawn(move || {
            let r = match &how {
                Placement::Thread => place_here(pid, port),
                Placement::Helper(exe) => place_by_helper(exe, pid, port),
            };
            let _ = tx.send(r);
        })
        .map_err(|e| NetnsError::Helper(format!("cannot start a thread: {e}")))?;
    match tokio::time::timeout(PLACE_TIMEOUT + Duration::from_secs(2), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(NetnsError::Helper(
            "the namespace thread ended without an answer".into(),
        )),
        Err(_) => Err(NetnsError::Helper("placing the socket timed out".into())),
    }
}

impl NetnsError {
    /// Whether the error is the port being taken (adoption fails closed).
    pub fn is_port_taken(&self) -> bool {
        matches!(self, NetnsError::PortTaken { .. })
    }

    /// Whether the process is gone (its container ended meanwhile).
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::OwnNamespace { .. })
            || self
                .io()
                .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
    }
}
