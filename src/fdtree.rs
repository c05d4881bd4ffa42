//! Trees an untrusted process wrote, handled by file descriptor: every step
//! opens a name relative to its parent's descriptor with `O_NOFOLLOW` (so a
//! symlink swapped in is never followed, and no path is ever re-resolved
//! from the top), and going down never holds more than a few descriptors,
//! whatever the depth: going back up re-opens `..` and checks that it is the
//! very folder (device, inode) that was left.
//!
//! Used by audit sealing (`audit::seal`) and by work folder removal
//! (`remove_tree`), which must succeed on what an agent leaves behind:
//! thousands of levels, folders without read or search bits, read-only files.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How a folder is opened: read-only, must be a folder, never through a symlink.
pub fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Names read from a folder per batch while removing, so a folder with
/// millions of entries never needs them all in memory.
const BATCH: usize = 4096;

/// Open a trusted path (one the daemon made, e.g. a record or work folder
/// root) as a folder; its last component must not be a symlink.
pub fn open_dir(path: &Path) -> nix::Result<Dir> {
    Dir::open(path, dir_flags(), Mode::empty())
}

/// Open `name` in `parent` as a folder, never following a symlink. A folder
/// without read or search bits (as a non-root owner sees it) gets `u+rwx`
/// first, through `fchmodat` with no-follow semantics.
pub fn open_dir_at(parent: &Dir, name: &CStr) -> nix::Result<Dir> {
    match Dir::openat(parent, name, dir_flags(), Mode::empty()) {
        Err(Errno::EACCES) => {
            fchmodat(
                parent,
                name,
                Mode::from_bits_truncate(0o700),
                FchmodatFlags::NoFollowSymlink,
            )?;
            Dir::openat(parent, name, dir_flags(), Mode::empty())
        }
        other => other,
    }
}

/// Whether two stats name the same file.
pub fn same_file(a: &FileStat, b: &FileStat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

pub fn file_kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Go up from `dir` to its parent, which must be the folder `expect`
/// describes: a folder moved meanwhile is an error, never a walk elsewhere.
pub fn open_parent(dir: &Dir, expect: &FileStat) -> io::Result<Dir> {
    let up = Dir::openat(dir, c"..", dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    let st = fstat(&up).map_err(io::Error::from)?;
    if !same_file(&st, expect) {
        return Err(io::Error::other(
            "a folder was moved while it was being walked",
        ));
    }
    Ok(up)
}

/// Entry names of a folder, with their types when the folder reports them.
pub type Names = Vec<(CString, Option<Type>)>;

/// Names in `dir` (without `.` and `..`) and their types when the folder
/// reports them, at most `limit`; `true` when there were more.
pub fn read_names(
    dir: &mut Dir,
    limit: usize,
    skip: &HashSet<CString>,
) -> nix::Result<(Names, bool)> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let name = e.file_name();
        if name == c"." || name == c".." || skip.contains(name) {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push((name.to_owned(), e.file_type()));
    }
    Ok((out, false))
}

fn is_dir_at(dir: &Dir, name: &CStr, ty: Option<Type>) -> nix::Result<bool> {
    match ty {
        Some(t) => Ok(t == Type::Directory),
        None => Ok(file_kind(&fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?) == SFlag::S_IFDIR),
    }
}

/// `unlinkat`, once more after giving the folder `u+rwx` when permission was
/// the problem (a folder the agent made read-only, seen by a non-root owner).
/// A name already gone is success.
fn unlink_at(dir: &Dir, name: &CStr, flag: UnlinkatFlags) -> nix::Result<()> {
    let again = |e: Errno| -> nix::Result<()> {
        match e {
            Errno::EACCES | Errno::EPERM => {
                fchmod(dir, Mode::from_bits_truncate(0o700))?;
                unlinkat(dir, name, flag)
            }
            e => Err(e),
        }
    };
    match unlinkat(dir, name, flag).or_else(again) {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Remove every entry of `dir` that is not a non-empty folder; returns the
/// non-empty folders (to be descended into).
fn clear_level(dir: &mut Dir) -> nix::Result<Vec<CString>> {
    let mut pending = HashSet::new();
    loop {
        let (batch, _) = read_names(dir, BATCH, &pending)?;
        if batch.is_empty() {
            return Ok(pending.into_iter().collect());
        }
        for (name, ty) in batch {
            let is_dir = match is_dir_at(dir, &name, ty) {
                Ok(d) => d,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if !is_dir {
                unlink_at(dir, &name, UnlinkatFlags::NoRemoveDir)?;
                continue;
            }
            match unlink_at(dir, &name, UnlinkatFlags::RemoveDir) {
                Ok(()) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    pending.insert(name);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Remove `name` in `parent` and everything below it, without following
/// symlinks and with at most three descriptors open at any depth.
pub fn remove_tree_at(parent: &Dir, name: &CStr) -> io::Result<()> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if file_kind(&st) != SFlag::S_IFDIR {
        return unlink_at(parent, name, UnlinkatFlags::NoRemoveDir).map_err(Into::into);
    }
    /// A folder gone down from: where to come back to, the child being
    /// cleared, and its siblings still to clear.
    struct Frame {
        st: FileStat,
        child: CString,
        pending: Vec<CString>,
    }
    let mut cur = open_dir_at(parent, name)?;
    let mut pending = clear_level(&mut cur)?;
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        if let Some(child) = pending.pop() {
            let next = match open_dir_at(&cur, &child) {
                Ok(d) => d,
                Err(Errno::ENOENT) => continue,
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    unlink_at(&cur, &child, UnlinkatFlags::NoRemoveDir)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            stack.push(Frame {
                st: fstat(&cur)?,
                child,
                pending,
            });
            cur = next;
            pending = clear_level(&mut cur)?;
            continue;
        }
        // `cur` is empty now.
        let Some(frame) = stack.pop() else { break };
        cur = open_parent(&cur, &frame.st)?;
        unlink_at(&cur, &frame.child, UnlinkatFlags::RemoveDir)?;
        pending = frame.pending;
    }
    drop(cur);
    unlink_at(parent, name, UnlinkatFlags::RemoveDir).map_err(Into::into)
}

/// Remove `path` (a folder the daemon made, whatever an agent put inside)
/// and everything below it. A path that is already gone is success.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!(
            "{}: not a removable path",
            path.display()
        )));
    };
    let parent = match open_dir(parent) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let name = CString::new(name.as_bytes()).map_err(io::Error::other)?;
    remove_tree_at(&parent, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A 2,000-level tree, removed by a process allowed 32 descriptors
    /// (`prlimit`): std's `remove_dir_all` holds one per level and fails.
    #[test]
    fn removal_needs_a_few_descriptors_at_any_depth() {
        const CHILD: &str = "AGENTD_FDTREE_TEST_REMOVE";
        if let Some(dir) = std::env::var_os(CHILD) {
            remove_tree(Path::new(&dir)).expect("removed with 32 descriptors");
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("work");
        std::fs::create_dir(&root).expect("mkdir");
        let mut cur = open_dir(&root).expect("open");
        for _ in 0..2000 {
            nix::sys::stat::mkdirat(&cur, c"d", Mode::from_bits_truncate(0o700)).expect("mkdir");
            cur = Dir::openat(&cur, c"d", dir_flags(), Mode::empty()).expect("open");
        }
        drop(cur);
        let out = std::process::Command::new("prlimit")
            .arg("--nofile=32")
            .arg(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "fdtree::tests::removal_needs_a_few_descriptors_at_any_depth",
                "--test-threads=1",
            ])
            .env(CHILD, &root)
            .output()
            .expect("prlimit (util-linux) runs");
        assert!(out.status.success(), "{out:?}");
        assert!(!root.exists());
    }

    #[test]
    fn removes_deep_trees_with_odd_modes_and_never_follows_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "x").expect("write");
        let root = t.path().join("work");
        std::fs::create_dir(&root).expect("mkdir");
        // 2,000 levels, built relative to a descriptor (the path is longer
        // than PATH_MAX).
        let mut cur = open_dir(&root).expect("open");
        for i in 0..2000 {
            nix::sys::stat::mkdirat(&cur, c"d", Mode::from_bits_truncate(0o755)).expect("mkdir");
            if i % 500 == 0 {
                std::os::unix::fs::symlink(
                    &outside,
                    format!("/proc/self/fd/{}/link", {
                        use std::os::fd::AsRawFd;
                        cur.as_raw_fd()
                    }),
                )
                .expect("symlink");
            }
            cur = Dir::openat(&cur, c"d", dir_flags(), Mode::empty()).expect("open");
        }
        drop(cur);
        std::fs::create_dir_all(root.join("odd/none")).expect("mkdir");
        std::fs::write(root.join("odd/none/f"), "x").expect("write");
        std::fs::write(root.join("odd/ro"), "x").expect("write");
        chmod(&root.join("odd/ro"), 0o444);
        chmod(&root.join("odd/none"), 0o000);
        chmod(&root.join("odd"), 0o500);
        std::os::unix::fs::symlink(&outside, root.join("to-outside")).expect("symlink");
        remove_tree(&root).expect("removed");
        assert!(!root.exists());
        assert!(outside.join("keep").exists(), "a link's target survives");
        remove_tree(&root).expect("gone is success");
    }
}
