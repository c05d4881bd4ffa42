//! The rootless namespace helper (issue 19): `agentd __egress-listen PID
//! PORT`, the daemon's own binary re-executed (`/proc/self/exe`) by
//! `netns::listen_in`, with its stdin one end of a Unix socket pair.
//!
//! `setns` into a user namespace needs a single-threaded process, so this
//! runs first thing in `main`, before anything could start a thread. It
//! makes itself non-dumpable (nothing in the namespaces it enters can
//! attach to it), opens the network namespace of PID, enters the user
//! namespace that owns it (`NS_GET_USERNS`: where the daemon's user holds
//! the capabilities `setns` needs), then the network namespace, binds
//! `127.0.0.1:PORT`, sends the listening socket over `SCM_RIGHTS` and
//! exits. It never enters the mount or pid namespace: the agent cannot
//! see it, and it touches no file of the container.
//!
//! Why a re-exec and not a second binary: one file to install and to
//! upgrade, and the helper is always exactly the running daemon's version
//! (`/proc/self/exe` is the running image even after the file on disk was
//! replaced); nothing is looked up on `PATH` or beside the binary.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use nix::sched::CloneFlags;

use super::netns::{HELPER_ARG, NetnsError, answer, bind_loopback, open_netns};

nix::ioctl_none!(ns_get_userns, 0xb7, 0x1);

/// Run the helper when the process was started as one; `None` otherwise
/// (`main` goes on as the CLI). Call before anything else in `main`.
pub fn run_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(HELPER_ARG)) {
        return None;
    }
    let num = |a: Option<std::ffi::OsString>| a.and_then(|a| a.to_str()?.parse::<u64>().ok());
    let (Some(pid), Some(port)) = (num(args.next()), num(args.next())) else {
        return Some(ExitCode::from(2));
    };
    let (Ok(pid), Ok(port)) = (u32::try_from(pid), u16::try_from(port)) else {
        return Some(ExitCode::from(2));
    };
    Some(run(pid, port))
}

fn run(pid: u32, port: u16) -> ExitCode {
    let _ = nix::sys::prctl::set_dumpable(false);
    let placed = place(pid, port);
    // SAFETY: fd 0 is the socket the daemon handed over as stdin; it stays
    // open for the whole life of this process, longer than the borrow.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    match send(stdin, &answer(&placed), placed.as_ref().ok()) {
        Ok(()) if placed.is_ok() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// `(device, inode)` of a namespace: its identity.
fn ns_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn place(pid: u32, port: u16) -> Result<std::net::TcpListener, NetnsError> {
    let net = open_netns(pid)?;
    let enter = |what, source: io::Error| NetnsError::Enter { what, pid, source };
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor
    // (or -1); `net` is a namespace descriptor open for the whole call.
    let owner = unsafe { ns_get_userns(net.as_raw_fd()) }.map_err(|e| enter("user", e.into()))?;
    // SAFETY: the ioctl just returned `owner` as a new descriptor that
    // nothing else owns; it is wrapped once and closed on drop.
    let owner = unsafe { OwnedFd::from_raw_fd(owner) };
    let own = std::fs::File::open("/proc/self/ns/user").map_err(|e| enter("user", e))?;
    let same = ns_id(owner.as_fd()).and_then(|a| ns_id(own.as_fd()).map(|b| a == b));
    if !same.map_err(|e| enter("user", e))? {
        nix::sched::setns(&owner, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| enter("user", e.into()))?;
    }
    nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).map_err(|e| enter("network", e.into()))?;
    bind_loopback(port)
}

fn send(to: BorrowedFd<'_>, msg: &[u8], socket: Option<&std::net::TcpListener>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match socket {
        Some(s) => {
            fds = [s.as_raw_fd()];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    sendmsg::<()>(
        to.as_raw_fd(),
        &[io::IoSlice::new(msg)],
        &cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}
