//! Opening untrusted files of the desired dir safely: never blocking on a
//! FIFO or device, only regular files (checked on the opened descriptor),
//! never leaving a kind folder (`openat2(RESOLVE_BENEATH)`), and read with a
//! cap. `RealHost` is the host as validation sees it, built on these.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::desired::HostView;

/// The real filesystem, with `network = "host"` allowed when the operator
/// passed `--allow-host-network` (issue 17).
pub fn real_host(allow_host_network: bool) -> &'static dyn HostView {
    if allow_host_network {
        &crate::desired::AllowHostNetwork(RealHost)
    } else {
        &RealHost
    }
}

/// The host as validation sees it: the real filesystem.
pub struct RealHost;

impl HostView for RealHost {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    /// Regular files only, never through a final symlink: a request may not
    /// make the daemon (root) read a FIFO (it would hang) or a file that a
    /// link points at elsewhere on the host.
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let f = open_regular(path, OFlag::O_NOFOLLOW).ok()?;
        read_capped_from(f, 16 * 1024 * 1024).ok()
    }
    fn read_beneath(&self, base: &Path, rel: &Path, cap: usize) -> Result<Vec<u8>, String> {
        let f = open_beneath(base, rel).map_err(|e| match e.raw_os_error() {
            Some(libc_errno) if libc_errno == Errno::EXDEV as i32 => format!(
                "resolves outside `{}` (through `..` or a symlink)",
                base.display()
            ),
            Some(libc_errno) if libc_errno == Errno::ELOOP as i32 => {
                "resolves through a symlink loop".to_string()
            }
            _ => format!("cannot be read: {e}"),
        })?;
        read_capped_from(f, cap).map_err(|e| format!("cannot be read: {e}"))
    }
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        fs::canonicalize(path).ok()
    }
}

/// Open `path` for reading without ever blocking (a FIFO or device opened
/// `O_NONBLOCK` returns at once) and only if it is a regular file (checked
/// on the opened descriptor, so a swap after the check changes nothing).
pub(super) fn open_regular(path: &Path, extra: OFlag) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra).bits())
        .open(path)?;
    regular(f)
}

fn regular(f: fs::File) -> std::io::Result<fs::File> {
    if f.metadata()?.file_type().is_file() {
        Ok(f)
    } else {
        Err(std::io::Error::other("not a regular file"))
    }
}

/// Open `rel` below the folder `base` in one resolution that may not leave
/// `base`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so `..`,
/// absolute symlinks and symlinks climbing out are refused by the kernel
/// (`EXDEV`); symlinks that stay below `base` work. `base` itself is
/// opened following links (a kind folder may be a swapped symlink). On a
/// kernel without `openat2` every component is opened with `O_NOFOLLOW`
/// instead (no symlink at all below `base`).
pub(super) fn open_beneath(base: &Path, rel: &Path) -> std::io::Result<fs::File> {
    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    let dir = fs::File::open(base)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(&dir, rel, how) {
        Ok(fd) => regular(fs::File::from(fd)),
        Err(Errno::ENOSYS) => {
            let mut cur = std::os::fd::OwnedFd::from(dir);
            let parts: Vec<_> = rel.components().collect();
            for (i, c) in parts.iter().enumerate() {
                let std::path::Component::Normal(name) = c else {
                    return Err(Errno::EXDEV.into());
                };
                let last = i + 1 == parts.len();
                let f = if last {
                    flags
                } else {
                    flags | OFlag::O_DIRECTORY
                };
                cur = nix::fcntl::openat(
                    &cur,
                    *name,
                    f | OFlag::O_NOFOLLOW,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| if e == Errno::ELOOP { Errno::EXDEV } else { e })?;
            }
            regular(fs::File::from(cur))
        }
        Err(e) => Err(e.into()),
    }
}

/// Read at most `cap + 1` bytes, so a huge file costs nothing to reject.
/// Only a regular file is read, opened without blocking: a FIFO planted
/// under `requests/` never stalls the daemon.
pub fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    read_capped_from(open_regular(path, OFlag::empty())?, cap)
}

pub(super) fn read_capped_from(f: fs::File, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}
