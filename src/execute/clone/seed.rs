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
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
/// state, and when it was last used. Keyed by [`Seeds::key`], the hash of
/// the repository's path exactly as written: two spellings of one folder
/// (`/srv/a`, `/srv/a/`) are two seeds, each with its own lock and folder.
#[derive(Debug, Default, Clone)]
pub struct Seeds {
    index: Arc<Mutex<HashMap<String, Seed>>>,
}

#[derive(Debug)]
struct Seed {
    state: String,
    dir: PathBuf,
    used: Instant,
}

impl Seeds {
    /// The key of `source`: its seed's folder name and lock.
    pub fn key(source: &Path) -> String {
        sha256_hex(source.as_os_str().as_bytes())[..16].to_string()
    }

    /// The seed of `key` made in `state`, marked used.
    pub fn get(&self, key: &str, state: &str) -> Option<PathBuf> {
        let mut index = crate::sync::lock(&self.index);
        let seed = index.get_mut(key).filter(|s| s.state == state)?;
        seed.used = Instant::now();
        Some(seed.dir.clone())
    }

    /// Forget the seed of `key` (its copy failed).
    pub fn forget(&self, key: &str) {
        crate::sync::lock(&self.index).remove(key);
    }

    /// Where the seed of `key` lives under `root`.
    pub fn folder(root: &Path, key: &str) -> PathBuf {
        root.join(key)
    }

    /// Keep `clone` (a finished clone in `state`, a folder of the daemon's
    /// under `root` that no session ever saw) as the seed of `key`,
    /// replacing the one before. Blocking; the caller holds `key`'s lock,
    /// so nothing copies the seed it replaces.
    pub fn keep(&self, root: &Path, key: &str, state: String, clone: &Path) -> io::Result<()> {
        let dir = Self::folder(root, key);
        // The old seed is no longer named before its folder goes.
        self.forget(key);
        remove_if_there(&dir)?;
        std::fs::rename(clone, &dir)?;
        crate::sync::lock(&self.index).insert(
            key.to_string(),
            Seed {
                state,
                dir,
                used: Instant::now(),
            },
        );
        Ok(())
    }

    /// Keep `clone` (in `private_folder`) as the seed of `key` when the
    /// repository at `source` still reads as `state`: no change can have
    /// slipped in during the clone. Otherwise, or when `copied` is false,
    /// remove it. Blocking; the caller holds `key`'s lock.
    pub fn keep_if_unchanged(
        &self,
        root: &Path,
        key: &str,
        source: &Path,
        state: State,
        clone: &Path,
        copied: bool,
    ) -> io::Result<()> {
        if copied && self::state(source).as_ref() == Some(&state) {
            self.keep(root, key, state.digest, clone)
        } else {
            remove_if_there(clone)
        }
    }

    /// The keys past [`MAX_SEEDS`], least recently used first: to be
    /// removed ([`Seeds::evict`]) by whoever gets their lock.
    pub fn over_cap(&self) -> Vec<String> {
        let index = crate::sync::lock(&self.index);
        let mut by_use: Vec<(&String, Instant)> = index.iter().map(|(k, s)| (k, s.used)).collect();
        by_use.sort_by_key(|(_, used)| *used);
        let extra = by_use.len().saturating_sub(MAX_SEEDS);
        by_use
            .into_iter()
            .take(extra)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Remove the seed of `key` and its folder. Blocking; the caller holds
    /// `key`'s lock, so no copy of it is under way.
    pub fn evict(&self, key: &str) -> io::Result<()> {
        let gone = crate::sync::lock(&self.index).remove(key);
        match gone {
            Some(seed) => remove_if_there(&seed.dir),
            None => Ok(()),
        }
    }
}

/// A new, empty folder of the daemon's for the clone that may become the
/// seed of `key`: under `root` (made 0700), never seen by a session.
pub fn private_folder(root: &Path, key: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let private = Seeds::folder(root, key).with_extension("clone");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    remove_if_there(&private)?;
    std::fs::create_dir(&private)?;
    Ok(private)
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
    if !local_file_system(&top) {
        return None;
    }
    let mut acc = Acc::default();
    // Which folder it is (a folder swapped in at the same path is another
    // repository), not its times: the work tree's changes are not the
    // clone's.
    let me = nix::sys::stat::fstat(&top).ok()?;
    acc.bytes.extend_from_slice(&me.st_dev.to_le_bytes());
    acc.bytes.extend_from_slice(&me.st_ino.to_le_bytes());
    let has = |name: &CStr| fstatat(&top, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    let mut git = match has(c".git") {
        Err(Errno::ENOENT) => top,
        // git serves the top folder when `.git` is no repository: which one
        // it takes is not for this walk to guess.
        Ok(st) if file_kind(&st) == SFlag::S_IFDIR && has(c"HEAD").is_err() => {
            acc.record(c".git", &st)?;
            Dir::openat(&top, c".git", dir_flags(), Mode::empty()).ok()?
        }
        _ => return None,
    };
    if includes_other_files(&git)? {
        return None;
    }
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

/// File systems whose metadata the kernel keeps itself, so a change is
/// seen at once: not a network file system (attributes cached for up to a
/// minute, times from another clock) nor FUSE.
fn local_file_system(dir: &Dir) -> bool {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT2_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC,
        OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
    };
    let Ok(fs) = nix::sys::statfs::fstatfs(dir) else {
        return false;
    };
    [
        EXT4_SUPER_MAGIC, // also ext2 and ext3
        EXT2_SUPER_MAGIC,
        XFS_SUPER_MAGIC,
        BTRFS_SUPER_MAGIC,
        TMPFS_MAGIC,
        OVERLAYFS_SUPER_MAGIC,
        F2FS_SUPER_MAGIC,
    ]
    .contains(&fs.filesystem_type())
}

/// Whether the git folder's configuration may include other files
/// (`include.path`, `includeIf`): what those say (a hidden ref, say)
/// changes what a clone gets without changing the git folder. `None` when
/// the configuration cannot be read plainly: a regular file of at most
/// 1 MiB, opened without following a link or blocking.
fn includes_other_files(git: &Dir) -> Option<bool> {
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(git, c"config", flags, Mode::empty()) {
        Err(Errno::ENOENT) => return Some(false),
        other => other.ok()?,
    };
    let st = nix::sys::stat::fstat(&fd).ok()?;
    if file_kind(&st) != SFlag::S_IFREG || st.st_size > 1 << 20 {
        return None;
    }
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_end(&mut text)
        .ok()?;
    Some(
        text.to_ascii_lowercase()
            .windows(7)
            .any(|w| w == b"include"),
    )
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

/// Open the absolute `p` as a folder, one component at a time, following
/// no link and refusing `..`: the sandbox's own opener.
fn open_plain(p: &Path) -> Option<Dir> {
    if !p.is_absolute() {
        return None;
    }
    let (_, fd) = crate::execute::clone_sandbox::open_real(p).ok()?;
    Dir::openat(&fd, c".", dir_flags(), Mode::empty()).ok()
}

/// Copy the daemon's own tree `from` into the existing folder `to`:
/// folders, regular files (with their permission bits) and links (as
/// links); anything else is an error. `to` may be reachable from a
/// container already (its start runs beside the clone): every name there
/// is made new relative to its parent's descriptor, never through a link,
/// and one that exists is an error, never written through.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let dst = crate::fdtree::open_dir(to)?;
    copy_into(from, &dst)
}

fn copy_into(from: &Path, dst: &Dir) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let name = CString::new(e.file_name().as_bytes()).map_err(io::Error::other)?;
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        let mode = Mode::from_bits_truncate(meta.mode() & 0o777);
        if ft.is_dir() {
            nix::sys::stat::mkdirat(dst, name.as_c_str(), Mode::S_IRWXU)?;
            let sub = Dir::openat(dst, name.as_c_str(), dir_flags(), Mode::empty())?;
            copy_into(&src, &sub)?;
            nix::sys::stat::fchmod(&sub, mode)?;
        } else if ft.is_file() {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let mut out =
                std::fs::File::from(nix::fcntl::openat(dst, name.as_c_str(), flags, mode)?);
            io::copy(&mut std::fs::File::open(&src)?, &mut out)?;
            nix::sys::stat::fchmod(&out, mode)?;
        } else if ft.is_symlink() {
            nix::unistd::symlinkat(&std::fs::read_link(&src)?, dst, name.as_c_str())?;
        } else {
            return Err(io::Error::other(format!(
                "{}: neither a folder, a file nor a link",
                src.display()
            )));
        }
    }
    Ok(())
}

/// Remove everything in the folder `to` (a copy that failed half way),
/// keeping the folder itself: a container may have it open already.
pub fn empty(to: &Path) -> io::Result<()> {
    let mut dir = crate::fdtree::open_dir(to)?;
    let (names, _) = read_names(&mut dir, usize::MAX, &Default::default())?;
    for (name, _) in names {
        crate::fdtree::remove_tree_at(&dir, &name)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "seed_tests.rs"]
mod tests;
