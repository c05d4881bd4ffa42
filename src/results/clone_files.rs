//! Reading the agent's clone on the host without trusting it (issue 20):
//! its refs and its object files, by descriptor, never through a symlink,
//! never blocking on a FIFO, within byte and entry caps. Git is never run
//! in the clone: refs are parsed as bytes (`refs`), object files are
//! copied into a repository the daemon made, and only then read by git
//! (`capture`), with `transfer.fsckObjects` on the way in.
//!
//! What is never read: `.git/config`, hooks, `info/` (so a planted
//! `objects/info/alternates` points nowhere), `commit-graph`, pack
//! indexes (git rebuilds them from the pack itself), anything reached
//! through a symlink.

use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::model::RefTip;
use super::refs::{self, Head};
use crate::fdtree::{file_kind, open_dir, open_dir_at, read_names};

/// Largest `HEAD` or loose ref file read.
const REF_FILE_CAP: usize = 4096;
/// Largest `packed-refs` read (about a million refs).
const PACKED_REFS_CAP: usize = 128 * 1024 * 1024;
/// Loose ref files and folders looked at, at most.
const MAX_REF_ENTRIES: usize = 100_000;
/// Folder levels of loose refs.
const MAX_REF_DEPTH: usize = 16;
/// Loose object files copied, at most.
pub const MAX_LOOSE_OBJECTS: u64 = 100_000;

/// Flags for opening a file an agent may have planted.
fn file_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// The clone's folders: the work tree and its `.git`.
pub struct Clone {
    pub worktree: Dir,
    pub dotgit: Option<Dir>,
}

/// Open `<work>/home/repo` and its `.git` folder, each step relative to
/// the last and never through a symlink. A `.git` that is a file (a
/// `gitdir:` pointer) or a link is not followed: the clone then has no
/// repository as far as capture is concerned.
pub fn open_clone(work_root: &Path) -> io::Result<Clone> {
    let root = open_dir(work_root)?;
    let home = open_dir_at(&root, c"home")?;
    let worktree = open_dir_at(&home, c"repo")?;
    let dotgit = match open_dir_at(&worktree, c".git") {
        Ok(d) => Some(d),
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Clone { worktree, dotgit })
}

/// A regular file `name` in `dir`, opened without following a link or
/// blocking: `(file, size)`, or `None` when it is absent or not a
/// regular file.
pub fn open_file(dir: &Dir, name: &CStr) -> io::Result<Option<(std::fs::File, u64)>> {
    let fd = match openat(dir, name, file_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = fstat(&fd)?;
    if file_kind(&st) != SFlag::S_IFREG {
        return Ok(None);
    }
    Ok(Some((std::fs::File::from(fd), st.st_size as u64)))
}

/// The bytes of a small regular file, or `None` when absent, not regular
/// or larger than `cap`.
pub fn read_small(dir: &Dir, name: &CStr, cap: usize) -> io::Result<Option<Vec<u8>>> {
    let Some((f, size)) = open_file(dir, name)? else {
        return Ok(None);
    };
    if size > cap as u64 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(cap as u64 + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() <= cap).then_some(bytes))
}

/// What the clone's refs say.
#[derive(Debug, Default)]
pub struct Refs {
    pub head: Option<Head>,
    /// Refs under the prefix asked for, loose over packed, sorted.
    pub refs: Vec<RefTip>,
    /// What could not be read (for the record).
    pub notes: Vec<String>,
}

/// Read `HEAD` and the refs under `prefix` (`refs/` or `refs/heads/`).
pub fn read_refs(dotgit: &Dir, prefix: &str) -> io::Result<Refs> {
    let mut out = Refs {
        head: read_small(dotgit, c"HEAD", REF_FILE_CAP)?.and_then(|b| refs::parse_head(&b)),
        ..Refs::default()
    };
    let packed = match read_small(dotgit, c"packed-refs", PACKED_REFS_CAP)? {
        Some(b) => refs::parse_packed(&b, prefix),
        None => Vec::new(),
    };
    let mut loose = Vec::new();
    let mut seen = 0usize;
    let mut dir = match open_dir_at(dotgit, c"refs") {
        Ok(d) => Some(d),
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => None,
        Err(e) => return Err(e.into()),
    };
    // Go down to the prefix's folder (`refs/heads` for `refs/heads/`).
    for part in prefix.trim_end_matches('/').split('/').skip(1) {
        let Some(d) = &dir else { break };
        let name = CString::new(part).map_err(io::Error::other)?;
        dir = match open_dir_at(d, &name) {
            Ok(d) => Some(d),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => None,
            Err(e) => return Err(e.into()),
        };
    }
    if let Some(mut d) = dir {
        let top = prefix.trim_end_matches('/').to_string();
        loose_refs(&mut d, &top, 0, &mut seen, &mut loose, &mut out.notes)?;
    }
    out.refs = refs::merge(packed, loose);
    Ok(out)
}

fn loose_refs(
    dir: &mut Dir,
    prefix: &str,
    depth: usize,
    seen: &mut usize,
    out: &mut Vec<RefTip>,
    notes: &mut Vec<String>,
) -> io::Result<()> {
    let (names, more) = read_names(
        dir,
        MAX_REF_ENTRIES.saturating_sub(*seen),
        &Default::default(),
    )?;
    *seen += names.len();
    if more {
        notes.push(format!(
            "refs past the first {MAX_REF_ENTRIES} were not read"
        ));
    }
    for (name, _) in names {
        let Ok(text) = name.to_str() else { continue };
        let full = format!("{prefix}/{text}");
        match open_dir_at(dir, &name) {
            Ok(mut sub) => {
                if depth + 1 >= MAX_REF_DEPTH {
                    notes.push(format!(
                        "refs deeper than {MAX_REF_DEPTH} levels were not read"
                    ));
                    continue;
                }
                loose_refs(&mut sub, &full, depth + 1, seen, out, notes)?;
            }
            Err(Errno::ENOTDIR) => {
                if !crate::desired::valid_ref_name(&full) {
                    continue;
                }
                if let Some(oid) =
                    read_small(dir, &name, REF_FILE_CAP)?.and_then(|b| refs::parse_loose(&b))
                {
                    out.push(RefTip { name: full, oid });
                }
            }
            Err(Errno::ENOENT | Errno::ELOOP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What copying object files gave.
#[derive(Debug, Default)]
pub struct Copied {
    pub bytes: u64,
    pub loose: u64,
    /// Pack files copied (names in the destination's `objects/pack`).
    pub packs: Vec<String>,
    /// Why copying stopped early (over budget), if it did.
    pub cut: Option<String>,
}

/// Copy the object files of the clone's `.git/objects` that `have` does
/// not already hold (a loose object or a pack of the same name) into
/// `dest` (an `objects` folder of the daemon's), at most `budget` bytes
/// and [`MAX_LOOSE_OBJECTS`] loose objects. Only `??/<38 hex>` loose
/// objects and `pack/pack-<hex>.pack` files are taken; indexes are rebuilt
/// from the packs by the caller.
pub fn copy_objects(dotgit: &Dir, have: &Path, dest: &Path, budget: u64) -> io::Result<Copied> {
    let mut c = Copied::default();
    let objects = match open_dir_at(dotgit, c"objects") {
        Ok(d) => d,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(c),
        Err(e) => return Err(e.into()),
    };
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut objects = objects;
    // 256 fan-out folders, `pack` and `info`; anything else the agent put
    // there is skipped, up to a bound.
    let (names, _) = read_names(&mut objects, 100_000, &Default::default())?;
    let mut fans: Vec<CString> = names
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.as_bytes().len() == 2 && hex(n.as_bytes()))
        .collect();
    fans.sort();
    for fan in fans {
        let mut d = match open_dir_at(&objects, &fan) {
            Ok(d) => d,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
            Err(e) => return Err(e.into()),
        };
        let (names, _) = read_names(&mut d, 1 << 20, &Default::default())?;
        let fan_s = OsStr::from_bytes(fan.as_bytes());
        for (name, _) in names {
            let nb = name.as_bytes();
            if nb.len() != 38 || !hex(nb) {
                continue;
            }
            let rel = Path::new(fan_s).join(OsStr::from_bytes(nb));
            if have.join(&rel).exists() {
                continue;
            }
            if c.loose >= MAX_LOOSE_OBJECTS {
                c.cut = Some(format!(
                    "the clone holds more than {MAX_LOOSE_OBJECTS} new loose objects"
                ));
                return Ok(c);
            }
            match copy_one(&d, &name, &dest.join(&rel), budget.saturating_sub(c.bytes))? {
                Copy::Done(n) => {
                    c.bytes += n;
                    c.loose += 1;
                }
                Copy::Over(n) => {
                    c.cut = Some(over(budget, n));
                    return Ok(c);
                }
                Copy::Skipped => {}
            }
        }
    }
    let mut pack = match open_dir_at(&objects, c"pack") {
        Ok(d) => d,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(c),
        Err(e) => return Err(e.into()),
    };
    let (names, _) = read_names(&mut pack, 100_000, &Default::default())?;
    let mut packs: Vec<CString> = names
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| {
            let b = n.as_bytes();
            b.starts_with(b"pack-") && b.ends_with(b".pack") && hex(&b[5..b.len() - 5])
        })
        .collect();
    packs.sort();
    for name in packs {
        let file = OsStr::from_bytes(name.as_bytes());
        if have.join("pack").join(file).exists() {
            continue;
        }
        match copy_one(
            &pack,
            &name,
            &dest.join("pack").join(file),
            budget.saturating_sub(c.bytes),
        )? {
            Copy::Done(n) => {
                c.bytes += n;
                c.packs.push(file.to_string_lossy().into_owned());
            }
            Copy::Over(n) => {
                c.cut = Some(over(budget, n));
                return Ok(c);
            }
            Copy::Skipped => {}
        }
    }
    Ok(c)
}

fn over(budget: u64, size: u64) -> String {
    format!(
        "the clone's new object files pass the {budget}-byte budget (a file of {size} bytes did not fit)"
    )
}

enum Copy {
    Done(u64),
    /// Larger than the room left: not copied (its size).
    Over(u64),
    Skipped,
}

/// Copy regular file `name` of `dir` to `dest` (created, never replaced),
/// if it fits in `room` bytes; its size is checked before anything is read.
fn copy_one(dir: &Dir, name: &CStr, dest: &Path, room: u64) -> io::Result<Copy> {
    let Some((f, size)) = open_file(dir, name)? else {
        return Ok(Copy::Skipped);
    };
    if size > room {
        return Ok(Copy::Over(size));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)?;
    // At most the size seen: a file that grows meanwhile is cut there (git
    // then finds it corrupt, which the fetch reports).
    let n = io::copy(&mut f.take(size), &mut out)?;
    out.flush()?;
    Ok(Copy::Done(n))
}
