//! The sandbox's root: built from nothing, then swapped in with
//! `pivot_root` (issue 17).
//!
//! A fresh tmpfs becomes `/`. Into it go, each at its own path: the system
//! folders git runs from (`/usr`, and `/bin`, `/sbin`, `/lib*` as the host
//! has them: links or read-only folders), the loader's cache
//! (`/etc/ld.so.cache`), five device nodes (`/dev/null`, `zero`, `full`,
//! `random`, `urandom`: git gets its temporary file names from
//! `/dev/urandom`), the source repository (read-only, no set-uid, no
//! devices, no exec), git's home (a tmpfs of its own holding its config)
//! and the destination (writable). Nothing else of the host is there: no
//! procfs (git does not need one: it only asks `/proc` how many CPUs there
//! are, and falls back), no `/var`, `/home`, `/run`, `/tmp`, no other
//! repository. A link in the source that points outside it resolves inside
//! this root, to nothing, whenever git resolves it.
//!
//! The source is named by its real path: it is opened one component at a
//! time without following any link (a link there is the request's, which
//! could point anywhere), and bound from that descriptor. A folder hidden
//! from sessions (the daemon's own, Podman's, see `Sandbox::for_daemon`)
//! is never shown: a source inside one is refused, and one inside a shown
//! folder is covered there (an empty read-only tmpfs, or `/dev/null` for a
//! file).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;

use super::{Args, SandboxError, mounts, step};

/// Top-level entries git's programs and libraries are found in, shown as
/// the host has them (a link is copied, a folder bound read-only).
const SYSTEM: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Device nodes git and its shell use.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Files of `/etc` shown: the dynamic loader's cache (libraries outside the
/// loader's default folders, `/usr/local/lib` say, are found through it).
const ETC: [&str; 1] = ["ld.so.cache"];

/// An empty folder in git's home, its template folder: a repository git
/// makes gets nothing of the home (where the config is).
pub(super) const TEMPLATE: &str = "template";

/// Where the host's root goes during `pivot_root`, inside the new root.
const OLD_ROOT: &str = ".old-root";

/// Build the view and enter it; the path (inside it) of git's global
/// config. Called in a fresh mount namespace, before anything else there.
pub(super) fn enter(a: &Args, config_text: &str) -> Result<PathBuf, SandboxError> {
    let root = Path::new("/");
    // Nothing mounted from here on may propagate to the daemon's namespace.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make private the mounts below", root))?;
    let info_path = Path::new("/proc/self/mountinfo");
    let info = std::fs::read_to_string(info_path).map_err(step("read", info_path))?;
    let table = mounts::parse(&info);
    let resolved: Vec<PathBuf> = a
        .hide
        .iter()
        .filter_map(|h| std::fs::canonicalize(h).ok())
        .collect();
    let hidden = mounts::hidden_views(&table, &resolved);

    let keep = std::fs::canonicalize(&a.keep).map_err(step("resolve", &a.keep))?;
    let home = std::fs::canonicalize(&a.home).map_err(step("resolve", &a.home))?;
    let keep_fd = nix::fcntl::open(
        &keep,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(step("open", &keep))?;
    let mut sources = Vec::new();
    for s in &a.source {
        let (path, fd) = open_real(s)?;
        if let Some(h) = mounts::holding(&hidden, &path) {
            return Err(SandboxError::Source {
                path,
                why: format!("lies inside `{}`, which no session may see", h.display()),
            });
        }
        if keep.starts_with(&path) || home.starts_with(&path) {
            return Err(SandboxError::Source {
                path,
                why: "holds the clone's destination".into(),
            });
        }
        sources.push((path, fd));
    }

    // The new root, mounted over git's home (a folder that exists and is
    // the daemon's; the home itself is mounted again inside).
    let stage = home.clone();
    tmpfs(&stage, "0755", MsFlags::empty())?;
    let at = |p: &Path| stage.join(p.strip_prefix(root).unwrap_or(p));
    let mut shown: Vec<PathBuf> = Vec::new();
    for name in SYSTEM {
        let host = root.join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).map_err(step("read", &host))?;
                std::os::unix::fs::symlink(&target, at(&host)).map_err(step("link", &host))?;
            }
            Ok(m) if m.is_dir() && mounts::holding(&hidden, &host).is_none() => {
                mkdir_all(&at(&host))?;
                bind(&host, &at(&host))?;
                remount_ro(&at(&host), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
                shown.push(host);
            }
            _ => {}
        }
    }
    for name in ETC {
        let host = root.join("etc").join(name);
        if std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_file())
            && mounts::holding(&hidden, &host).is_none()
        {
            mkdir_all(&at(root).join("etc"))?;
            file_at(&at(&host))?;
            bind(&host, &at(&host))?;
            remount_ro(&at(&host), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
        }
    }
    mkdir_all(&at(root).join("dev"))?;
    for name in DEVICES {
        let host = root.join("dev").join(name);
        if std::fs::metadata(&host)
            .is_ok_and(|m| kind(std::os::unix::fs::MetadataExt::mode(&m)) == SFlag::S_IFCHR)
        {
            file_at(&at(&host))?;
            bind(&host, &at(&host))?;
        }
    }
    for (path, fd) in &sources {
        mkdir_all(&at(path))?;
        bind(&fd_path(fd), &at(path))?;
        remount_ro(
            &at(path),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
        shown.push(path.clone());
    }
    // Whatever is hidden inside a shown folder. The source is someone
    // else's: its folders are opened without following links, and a path
    // that is not there (or is a link) now shows nothing hidden.
    let mut covered = Vec::new();
    for s in &shown {
        for h in mounts::inside(&hidden, s) {
            let Ok((_, fd)) = open_real_at(&at(h)) else {
                continue;
            };
            let target = fd_path(&fd);
            if is_dir(&fd) {
                tmpfs(&target, "0755", MsFlags::empty())?;
                covered.push(at(h));
            } else {
                bind(Path::new("/dev/null"), &target)?;
            }
        }
    }
    // git's home, with the config.
    let git_home = at(&home);
    mkdir_all(&git_home)?;
    tmpfs(&git_home, "0700", MsFlags::empty())?;
    let config = home.join("gitconfig");
    std::fs::write(at(&config), config_text).map_err(step("write", &config))?;
    mkdir_all(&at(&home.join(TEMPLATE)))?;
    // The destination, writable.
    mkdir_all(&at(&keep))?;
    bind(&fd_path(&keep_fd), &at(&keep))?;
    drop(keep_fd);
    drop(sources);
    for d in covered.iter().chain([&git_home]) {
        remount_ro(
            d,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }

    // Swap the roots and let go of the host's.
    let old = stage.join(OLD_ROOT);
    mkdir_all(&old)?;
    nix::unistd::pivot_root(&stage, &old).map_err(step("pivot the root to", &stage))?;
    std::env::set_current_dir(root).map_err(step("enter", root))?;
    let old = root.join(OLD_ROOT);
    umount2(&old, MntFlags::MNT_DETACH).map_err(step("detach the host's root at", &old))?;
    std::fs::remove_dir(&old).map_err(step("remove", &old))?;
    remount_ro(root, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    Ok(config)
}

/// `/proc/self/fd/N`: mounting from or onto it means the open folder
/// itself, whatever its path leads to by now.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn tmpfs(at: &Path, mode: &str, extra: MsFlags) -> Result<(), SandboxError> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | extra,
        Some(format!("mode={mode},size=1m").as_str()),
    )
    .map_err(step("mount a tmpfs on", at))
}

fn bind(from: &Path, to: &Path) -> Result<(), SandboxError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(step("bind", from))
}

/// Make the mount at `at` read-only, adding `extra` and keeping the flags
/// it has (inside a user namespace the kernel refuses to clear the flags
/// the outer namespace set).
fn remount_ro(at: &Path, extra: MsFlags) -> Result<(), SandboxError> {
    let have = nix::sys::statvfs::statvfs(at)
        .map_err(step("inspect the mount at", at))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>).map_err(step("make read-only", at))
}

fn mkdir_all(p: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(p).map_err(step("create", p))
}

/// An empty file to mount a file on.
fn file_at(p: &Path) -> Result<(), SandboxError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map(drop)
        .map_err(step("create", p))
}

/// Open the folder or file `p` (absolute) one component at a time,
/// following no link and refusing `..`: its path, as opened.
fn open_real_at(p: &Path) -> Result<(PathBuf, OwnedFd), SandboxError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let root = Path::new("/");
    let mut fd = nix::fcntl::open(root, flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(step("open", root))?;
    let mut path = PathBuf::from("/");
    for c in p.components() {
        let name: &OsStr = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(SandboxError::Source {
                    path: p.to_path_buf(),
                    why: "is not a plain absolute path (`..`)".into(),
                });
            }
        };
        path.push(name);
        let next =
            nix::fcntl::openat(&fd, name, flags, Mode::empty()).map_err(step("open", &path))?;
        // O_PATH with O_NOFOLLOW opens a link itself.
        let link = nix::sys::stat::fstat(&next).is_ok_and(|st| kind(st.st_mode) == SFlag::S_IFLNK);
        if link {
            return Err(SandboxError::Source {
                path: p.to_path_buf(),
                why: format!("passes through the symbolic link `{}`", path.display()),
            });
        }
        fd = next;
    }
    Ok((path, fd))
}

/// The source repository: a folder, opened without following links. Also
/// what the seed clones read a repository's state through (`clone/seed.rs`).
pub(in crate::execute) fn open_real(p: &Path) -> Result<(PathBuf, OwnedFd), SandboxError> {
    let (path, fd) = open_real_at(p)?;
    if !is_dir(&fd) {
        return Err(SandboxError::Source {
            path,
            why: "is not a folder".into(),
        });
    }
    Ok((path, fd))
}

/// The file type bits of `mode`.
fn kind(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits())
}

fn is_dir(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| kind(st.st_mode) == SFlag::S_IFDIR)
}
