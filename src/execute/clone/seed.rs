//! Seed clones (issue 18): a local repository is cloned through git's
//! transport, in the sandbox, once per state of its git folder; the
//! sessions that follow while that folder is unchanged get a plain copy
//! of that clone instead of six git processes each.
//!
//! What a clone of a local repository copies is decided by its git folder
//! alone (refs, packed refs, `HEAD`, objects, its configuration), never by
//! its work tree, and git changes that folder by writing new files and
//! renaming them into place. So the state is read from the metadata of the
//! git folder's own entries, of everything under `refs/` and `reftable/`,
//! and of the entries of `objects/`, `objects/pack`, `objects/info` and
//! `info/`: inode, size, mode, change and modification times. Any write
//! there changes at least one change time, which no one but the kernel
//! sets. Nothing is read but folder listings and `lstat`s, every name is
//! opened relative to its parent's descriptor without following a link,
//! and a link anywhere in those folders, a `.git` that is not a folder, a
//! linked work tree (`commondir`) or more than [`MAX_ENTRIES`] entries mean
//! no seed: that clone always runs in the sandbox.
//!
//! A seed is made from a sandboxed clone whose source state was the same
//! before and after it and had not changed for [`SETTLE`] before it was
//! read (so a later write, even on a file system with one-second
//! timestamps, always reads differently). It is cloned into a folder of
//! the daemon's and copied into the session's from there, never taken from
//! a folder that a container (created beside the clone) may already reach.
//! It is used only by the daemon run that made it (the index lives in
//! memory; seeds left by an earlier run are removed at start), and copied
//! without following links into the session's fresh folder: the session
//! gets exactly what the sandboxed clone gave, never anything of the host.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

use crate::desired::sha256_hex;
use crate::fdtree::{dir_flags, file_kind, read_names};

/// At most this many seeds are kept; the least recently used goes first.
pub const MAX_SEEDS: usize = 32;

/// A git folder showing more entries than this (in the folders read) gets
/// no seed.
pub const MAX_ENTRIES: usize = 20_000;

/// How deep `refs/` and `reftable/` are read.
const MAX_DEPTH: usize = 32;

/// The seeds of one daemon: which local repository has one, in which
/// state, and when it was last used.
#[derive(Debug, Default, Clone)]
pub struct Seeds {
    index: Arc<Mutex<HashMap<PathBuf, Seed>>>,
}

#[derive(Debug)]
struct Seed {
    state: String,
    dir: PathBuf,
    used: Instant,
}

impl Seeds {
    /// The seed of `source` made in `state`, marked used.
    pub fn get(&self, source: &Path, state: &str) -> Option<PathBuf> {
        let mut index = crate::sync::lock(&self.index);
        let seed = index.get_mut(source).filter(|s| s.state == state)?;
        seed.used = Instant::now();
        Some(seed.dir.clone())
    }

    /// Forget the seed of `source` (its copy failed).
    pub fn forget(&self, source: &Path) {
        crate::sync::lock(&self.index).remove(source);
    }

    /// Where the seed of `source` lives under `root`.
    pub fn folder(root: &Path, source: &Path) -> PathBuf {
        root.join(&sha256_hex(source.as_os_str().as_bytes())[..16])
    }

    /// Keep `clone` (a finished clone of `source` in `state`, a folder of
    /// the daemon's under `root` that no session ever saw) as its seed,
    /// replacing the one before; beyond [`MAX_SEEDS`] the least recently
    /// used seed goes. Blocking.
    pub fn keep(&self, root: &Path, source: &Path, state: String, clone: &Path) -> io::Result<()> {
        let dir = Self::folder(root, source);
        // The old seed is no longer named before its folder goes.
        self.forget(source);
        remove_if_there(&dir)?;
        std::fs::rename(clone, &dir)?;
        let evicted = {
            let mut index = crate::sync::lock(&self.index);
            index.insert(
                source.to_path_buf(),
                Seed {
                    state,
                    dir,
                    used: Instant::now(),
                },
            );
            let oldest = (index.len() > MAX_SEEDS)
                .then(|| {
                    index
                        .iter()
                        .min_by_key(|(_, s)| s.used)
                        .map(|(k, _)| k.clone())
                })
                .flatten();
            oldest.and_then(|k| index.remove(&k))
        };
        if let Some(old) = evicted {
            remove_if_there(&old.dir)?;
        }
        Ok(())
    }
}

/// Remove the seeds a previous run left under `root` (their index is gone
/// with that run).
pub fn clear(root: &Path) -> io::Result<()> {
    remove_if_there(root)
}

/// Remove the folder (or file) `p` if it is there.
pub fn remove_if_there(p: &Path) -> io::Result<()> {
    match crate::fdtree::remove_tree(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// How long every change time in a state must lie before the state is read
/// for a clone of it to be kept: a file system with one-second timestamps
/// could otherwise give a rewrite in the same second the same metadata (an
/// inode number reused, the same size and times), which git calls racy.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What [`state`] read: its digest, and the newest change time in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub digest: String,
    newest_change: SystemTime,
}

impl State {
    /// Whether a clone of this state may be kept: read at `read_at`, no
    /// change in it was newer than [`SETTLE`] before. Any later write then
    /// has a newer change time than all of it, so it never reads the same.
    pub fn settled(&self, read_at: SystemTime) -> bool {
        self.newest_change + SETTLE <= read_at
    }
}

/// The state of the git folder of the local repository `source` (see the
/// module doc), or `None` when it cannot be read safely or gets no seed.
pub fn state(source: &Path) -> Option<State> {
    let top = open_plain(source)?;
    let mut acc = Acc::default();
    let mut git = match fstatat(&top, c".git", AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => top,
        Ok(st) if file_kind(&st) == SFlag::S_IFDIR => {
            acc.record(c".git", &st)?;
            Dir::openat(&top, c".git", dir_flags(), Mode::empty()).ok()?
        }
        _ => return None,
    };
    acc.walk(&mut git, "", 0, Depth::GitDir)?;
    Some(State {
        digest: sha256_hex(&acc.bytes),
        newest_change: SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(acc.newest.0).ok()?,
                u32::try_from(acc.newest.1).ok()?,
            ),
    })
}

/// How far below a folder is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The git folder: its entries, and what lies below some of them.
    GitDir,
    /// `objects/`: its entries, and those of `pack/` and `info/`.
    Objects,
    /// Every level (`refs/`, `reftable/`).
    All,
    /// The entries only (no level below is read).
    Entries,
}

#[derive(Default)]
struct Acc {
    bytes: Vec<u8>,
    entries: usize,
    /// The newest change time recorded: seconds, nanoseconds.
    newest: (i64, i64),
}

impl Acc {
    /// Add one entry's metadata; `None` for a link or past the cap.
    fn record(&mut self, name: &CStr, st: &FileStat) -> Option<()> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES || file_kind(st) == SFlag::S_IFLNK {
            return None;
        }
        self.newest = self.newest.max((st.st_ctime, st.st_ctime_nsec));
        self.bytes.extend_from_slice(name.to_bytes_with_nul());
        for n in [
            u64::from(st.st_mode),
            st.st_ino,
            st.st_dev,
            st.st_size as u64,
            st.st_mtime as u64,
            st.st_mtime_nsec as u64,
            st.st_ctime as u64,
            st.st_ctime_nsec as u64,
        ] {
            self.bytes.extend_from_slice(&n.to_le_bytes());
        }
        Some(())
    }

    fn walk(&mut self, dir: &mut Dir, at: &str, level: usize, depth: Depth) -> Option<()> {
        if level > MAX_DEPTH {
            return None;
        }
        for name in sorted_names(dir)? {
            if depth == Depth::GitDir && name.as_c_str() == c"commondir" {
                return None;
            }
            let st = fstatat(&*dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
            let path = CString::new(format!("{at}/{}", name.to_string_lossy())).ok()?;
            self.record(&path, &st)?;
            let below = match (depth, name.to_bytes()) {
                (Depth::All, _) => Depth::All,
                (Depth::GitDir, b"refs" | b"reftable") => Depth::All,
                (Depth::GitDir, b"objects") => Depth::Objects,
                (Depth::GitDir, b"info") | (Depth::Objects, b"pack" | b"info") => Depth::Entries,
                _ => continue,
            };
            if file_kind(&st) != SFlag::S_IFDIR {
                continue;
            }
            let mut sub = Dir::openat(&*dir, name.as_c_str(), dir_flags(), Mode::empty()).ok()?;
            self.walk(&mut sub, &path.to_string_lossy(), level + 1, below)?;
        }
        Some(())
    }
}

/// The names in `dir`, sorted; `None` past [`MAX_ENTRIES`].
fn sorted_names(dir: &mut Dir) -> Option<Vec<CString>> {
    let (names, more) = read_names(dir, MAX_ENTRIES, &Default::default()).ok()?;
    if more {
        return None;
    }
    let mut names: Vec<CString> = names.into_iter().map(|(n, _)| n).collect();
    names.sort();
    Some(names)
}

/// Open the absolute `p` as a folder one component at a time, following no
/// link and refusing `..`.
fn open_plain(p: &Path) -> Option<Dir> {
    let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let names: Vec<&OsStr> = p
        .components()
        .map(|c| match c {
            Component::Normal(n) => Some(Some(n)),
            Component::RootDir | Component::CurDir => Some(None),
            Component::ParentDir | Component::Prefix(_) => None,
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    if !p.is_absolute() {
        return None;
    }
    let (last, parents) = names.split_last()?;
    let mut fd: OwnedFd = nix::fcntl::open("/", path_flags, Mode::empty()).ok()?;
    for n in parents {
        fd = nix::fcntl::openat(&fd, *n, path_flags, Mode::empty()).ok()?;
    }
    Dir::openat(&fd, *last, dir_flags(), Mode::empty()).ok()
}

/// Copy the daemon's own tree `from` into the existing folder `to`:
/// folders, regular files (with their permission bits) and links (as
/// links); anything else is an error.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
            let mode = std::os::unix::fs::MetadataExt::mode(&meta) & 0o777;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            return Err(io::Error::other(format!(
                "{}: neither a folder, a file nor a link",
                src.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "seed_tests.rs"]
mod tests;
