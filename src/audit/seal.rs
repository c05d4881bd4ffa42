//! Finalizing a record: take `session/` back from the session user, write
//! `MANIFEST.sha256`, seal (folders 0555, files 0444), and publish the final
//! `session.json` last, as the commit point.
//!
//! Hostile content is expected: the agent wrote `session/`, and a process of
//! the session uid may still try to swap names under the walk. So the walk
//! works on descriptors (`fdtree`): each folder is opened relative to its
//! parent with `O_NOFOLLOW` and, before anything inside it is looked at,
//! re-owned to root and made 0700 through that descriptor, so nobody else
//! can rename or plant entries in it from then on; files are opened with
//! `O_NOFOLLOW`, checked to be the file that was listed, then hashed,
//! re-owned and chmod-ed through their descriptor. Symlinks are re-owned
//! with no-follow semantics and never chmod-ed or hashed.
//!
//! The walk is bounded (`Limits`): at most `max_bytes` of `session/` files
//! are hashed (a file's size is checked before it is read, so a sparse 16T
//! file costs nothing), at most `max_entries` entries and `max_depth`
//! levels are kept. What is over budget is removed from the record and
//! named in `session.json`'s `cut`; the record is still sealed.
//!
//! A file with more than one hard link refuses the seal (its other name may
//! be anywhere on the same mount): the record stays incomplete, but is still
//! taken back. Such a file is changed only when the session user owns it,
//! and then only by dropping permissions (`mode & 0444`, owner root).

use std::collections::BTreeSet;
use std::ffi::{CStr, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat};
use nix::unistd::{Gid, Uid, fchown, fchownat};
use sha2::{Digest, Sha256};

use super::manifest;
use super::{Cut, Record, SessionRecord};
use crate::fdtree::{
    Names, file_kind, open_dir, open_dir_at, open_parent, read_names, remove_tree_at, same_file,
};
use crate::fsutil::{sync_dir, write_atomic};

pub const MANIFEST: &str = "agentd/MANIFEST.sha256";
pub const SESSION_JSON: &str = "agentd/session.json";

/// Entries of `session/` kept in one record by default.
pub const MAX_ENTRIES: u64 = 100_000;
/// Folder levels of `session/` kept in one record.
pub const MAX_DEPTH: usize = 256;
/// Cut paths named in `session.json` (the counts cover all of them).
const CUT_PATHS_SHOWN: usize = 20;

/// What one record may hold of `session/`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of `session/` files hashed and kept (`--audit-max-bytes`).
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_depth: usize,
}

impl Limits {
    pub fn with_max_bytes(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_entries: MAX_ENTRIES,
            max_depth: MAX_DEPTH,
        }
    }
}

/// How a record is sealed.
#[derive(Debug, Clone, Copy)]
pub struct SealOptions {
    pub limits: Limits,
    /// The session user: the only owner whose multi-linked files are touched.
    pub session_uid: u32,
}

/// How sealing ended (failures are `SealError`, and are retried).
#[derive(Debug, Clone, PartialEq)]
pub enum Sealed {
    /// Sealed; `cut` names what was over budget and left out.
    Sealed { cut: Option<Cut> },
    /// Deliberately left unsealed and incomplete (a multi-linked file); the
    /// session folder was still taken back. `why` is for the status message.
    Refused { why: String, cut: Option<Cut> },
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err<E: Into<io::Error>>(path: &Path) -> impl FnOnce(E) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hex sha256 of what `r` yields, at most `limit` bytes: `(hash, bytes,
/// over)`; `over` means there was more than `limit` (the hash is then void).
fn hash_reader(mut r: impl Read, limit: u64) -> io::Result<(String, u64, bool)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            return Ok((hex(&h.finalize()), n, false));
        }
        n += got as u64;
        if n > limit {
            return Ok((String::new(), n, true));
        }
        h.update(&buf[..got]);
    }
}

/// Hex sha256 of a file's content, streamed (a path the caller trusts).
pub fn hash_file(path: &Path) -> io::Result<String> {
    hash_reader(fs::File::open(path)?, u64::MAX).map(|(h, _, _)| h)
}

/// What a walk does to what it finds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Walk {
    /// Only hash (verify): nothing changes; a level past the cap is an error.
    Read,
    /// Take back and budget (seal): re-own to root, normalize modes, cut
    /// what is over budget.
    TakeBack { uid: u32 },
}

/// What was left out of a record, as it accumulates.
#[derive(Debug, Default)]
struct CutSoFar {
    entries: u64,
    bytes: u64,
    reasons: BTreeSet<String>,
    paths: Vec<String>,
}

/// One folder gone down from.
struct Frame {
    st: FileStat,
    names: Names,
    rel_len: usize,
}

struct Walker {
    mode: Walk,
    limits: Limits,
    /// `(path relative to the record, hash)` of every regular file hashed.
    files: Vec<(Vec<u8>, String)>,
    entries: u64,
    bytes: u64,
    cut: CutSoFar,
    /// The first file with several hard links, and their number.
    multi_linked: Option<(Vec<u8>, u64)>,
}

fn join(rel: &[u8], name: &CStr) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.to_bytes());
    p
}

/// Who taken-back files belong to: the daemon's user (root when rootful;
/// rootless, the user whose uid the session's files already have).
fn root_ids() -> (Option<Uid>, Option<Gid>) {
    (Some(nix::unistd::geteuid()), Some(nix::unistd::getegid()))
}

fn moved() -> io::Error {
    io::Error::other("an entry was replaced while the record was being sealed")
}

impl Walker {
    fn new(mode: Walk, limits: Limits) -> Walker {
        Walker {
            mode,
            limits,
            files: Vec::new(),
            entries: 0,
            bytes: 0,
            cut: CutSoFar::default(),
            multi_linked: None,
        }
    }

    fn taking_back(&self) -> bool {
        matches!(self.mode, Walk::TakeBack { .. })
    }

    fn cut_one(&mut self, path: &[u8], bytes: u64, reason: String) {
        self.cut.entries += 1;
        self.cut.bytes = self.cut.bytes.saturating_add(bytes);
        self.cut.reasons.insert(reason);
        if self.cut.paths.len() < CUT_PATHS_SHOWN {
            self.cut.paths.push(manifest::display(path));
        }
    }

    fn cut(&self) -> Option<Cut> {
        (self.cut.entries > 0).then(|| Cut {
            entries: self.cut.entries,
            bytes: self.cut.bytes,
            reason: self
                .cut
                .reasons
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            paths: self.cut.paths.clone(),
        })
    }

    fn own_uid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Make a folder root's and 0700 through its descriptor, before its
    /// entries are looked at: from then on nobody else can change them.
    fn lock_down(&self, dir: &Dir) -> io::Result<()> {
        if self.taking_back() {
            let (u, g) = root_ids();
            fchown(dir, u, g)?;
            fchmod(dir, Mode::from_bits_truncate(0o700))?;
        }
        Ok(())
    }

    /// The names of `dir`, sorted to pop in ascending order. Entries past
    /// the entry budget are removed (taking back) and counted as cut.
    fn list(&mut self, dir: &mut Dir, rel: &[u8]) -> io::Result<Names> {
        let budget = if self.taking_back() {
            usize::try_from(self.limits.max_entries.saturating_sub(self.entries))
                .unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let (mut names, more) = read_names(dir, budget, &Default::default())?;
        if more {
            let keep = names.iter().map(|(n, _)| n.clone()).collect();
            loop {
                let (batch, _) = read_names(dir, 4096, &keep)?;
                if batch.is_empty() {
                    break;
                }
                for (name, _) in batch {
                    let size = fstatat(&*dir, &*name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .ok()
                        .filter(|st| file_kind(st) == SFlag::S_IFREG)
                        .map_or(0, |st| st.st_size as u64);
                    remove_tree_at(dir, &name)?;
                    let reason = format!("entries past the first {}", self.limits.max_entries);
                    self.cut_one(&join(rel, &name), size, reason);
                }
            }
        }
        self.entries += names.len() as u64;
        names.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(names)
    }

    /// Walk the folder `start` (already open), whose path in the record is
    /// `prefix`, depth-first.
    fn walk(&mut self, start: Dir, prefix: &[u8]) -> io::Result<()> {
        let mut cur = start;
        self.lock_down(&cur)?;
        let mut rel = prefix.to_vec();
        let mut names = self.list(&mut cur, &rel)?;
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            let Some((name, _)) = names.pop() else {
                if self.taking_back() {
                    fchmod(&cur, Mode::from_bits_truncate(0o555))?;
                }
                let Some(frame) = stack.pop() else {
                    return Ok(());
                };
                cur = open_parent(&cur, &frame.st)?;
                rel.truncate(frame.rel_len);
                names = frame.names;
                continue;
            };
            let path = join(&rel, &name);
            let st = match fstatat(&cur, &*name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match file_kind(&st) {
                SFlag::S_IFDIR => {
                    if stack.len() + 1 > self.limits.max_depth {
                        if !self.taking_back() {
                            return Err(io::Error::other(format!(
                                "{}: deeper than {} levels",
                                manifest::display(&path),
                                self.limits.max_depth
                            )));
                        }
                        remove_tree_at(&cur, &name)?;
                        let reason =
                            format!("folders deeper than {} levels", self.limits.max_depth);
                        self.cut_one(&path, 0, reason);
                        continue;
                    }
                    let mut child = open_dir_at(&cur, &name)?;
                    if !same_file(&fstat(&child)?, &st) {
                        return Err(moved());
                    }
                    self.lock_down(&child)?;
                    let child_names = self.list(&mut child, &path)?;
                    stack.push(Frame {
                        st: fstat(&cur)?,
                        names: std::mem::replace(&mut names, child_names),
                        rel_len: rel.len(),
                    });
                    rel = path;
                    cur = child;
                }
                SFlag::S_IFREG => self.file(&cur, &name, &st, path)?,
                SFlag::S_IFLNK => {
                    if self.taking_back() {
                        let (u, g) = root_ids();
                        fchownat(&cur, &*name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                    }
                }
                _ => self.special(&cur, &name, &st, path)?,
            }
        }
    }

    /// A regular file: hash it within the byte budget, take it back.
    fn file(&mut self, dir: &Dir, name: &CStr, st: &FileStat, path: Vec<u8>) -> io::Result<()> {
        let size = st.st_size as u64;
        let room = match self.mode {
            Walk::Read => u64::MAX,
            Walk::TakeBack { .. } => self.limits.max_bytes.saturating_sub(self.bytes),
        };
        let over_reason = || {
            format!(
                "files past the byte budget of {} bytes (--audit-max-bytes)",
                self.limits.max_bytes
            )
        };
        if size > room {
            // Never read: a sparse file may claim terabytes.
            let reason = over_reason();
            remove_tree_at(dir, name)?;
            self.cut_one(&path, size, reason);
            return Ok(());
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            // Rootless: no CAP_DAC_OVERRIDE, and the agent may have left its
            // file unreadable to its owner (mode 0000). The daemon owns it.
            // Pin the inode first (O_PATH needs no permission), check it is
            // the single-linked regular file listed, and only then make it
            // exactly 0400 through that descriptor: a swap in between
            // changes no other file's mode, and a multi-linked file is
            // refused without gaining a bit.
            Err(Errno::EACCES) if self.taking_back() && st.st_uid == self.own_uid() => {
                let pin = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let pinned = openat(dir, name, pin, Mode::empty())?;
                let pst = fstat(&pinned)?;
                if !same_file(&pst, st) || file_kind(&pst) != SFlag::S_IFREG {
                    return Err(moved());
                }
                if pst.st_nlink > 1 {
                    self.multi_linked.get_or_insert((path, pst.st_nlink));
                    return Ok(());
                }
                // The magic link names the pinned inode itself.
                let by_fd = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
                fs::set_permissions(&by_fd, fs::Permissions::from_mode(0o400))?;
                nix::fcntl::open(&by_fd, flags & !OFlag::O_NOFOLLOW, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        let fst = fstat(&fd)?;
        if !same_file(&fst, st) || file_kind(&fst) != SFlag::S_IFREG {
            return Err(moved());
        }
        if let Walk::TakeBack { uid } = self.mode
            && fst.st_nlink > 1
        {
            if fst.st_uid == uid {
                let (u, g) = root_ids();
                fchown(&fd, u, g)?;
                fchmod(&fd, Mode::from_bits_truncate(fst.st_mode & 0o444))?;
            }
            self.multi_linked.get_or_insert((path, fst.st_nlink));
            return Ok(());
        }
        let file = fs::File::from(fd);
        let (hash, n, over) = hash_reader(&file, room)?;
        if over {
            let reason = over_reason();
            remove_tree_at(dir, name)?;
            self.cut_one(&path, n, reason);
            return Ok(());
        }
        if self.taking_back() {
            self.bytes += n;
            let (u, g) = root_ids();
            fchown(&file, u, g)?;
            fchmod(&file, Mode::from_bits_truncate(0o444))?;
        }
        self.files.push((path, hash));
        Ok(())
    }

    /// A FIFO, socket or device: never opened (a FIFO would block); re-owned
    /// and made 0444 with no-follow semantics.
    fn special(&mut self, dir: &Dir, name: &CStr, st: &FileStat, path: Vec<u8>) -> io::Result<()> {
        let Walk::TakeBack { uid } = self.mode else {
            return Ok(());
        };
        if st.st_nlink > 1 {
            self.multi_linked.get_or_insert((path, st.st_nlink));
            if st.st_uid != uid {
                return Ok(());
            }
        }
        let (u, g) = root_ids();
        fchownat(dir, name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(0o444 & st.st_mode);
        match fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The record's regular files as `(relative path, hash)`, sorted, without
/// the manifest itself and `session.json`; walked by descriptor, read only.
pub fn hash_record(dir: &Path) -> io::Result<Vec<(Vec<u8>, String)>> {
    let root = open_dir(dir)?;
    let mut w = Walker::new(
        Walk::Read,
        Limits {
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
            max_depth: MAX_DEPTH + 2,
        },
    );
    w.walk(root, b"")?;
    let mut files = w.files;
    files.retain(|(p, _)| p != MANIFEST.as_bytes() && p != SESSION_JSON.as_bytes());
    files.sort();
    Ok(files)
}

impl Record {
    /// Finalize: take `session/` back (within `opts.limits`), write the
    /// manifest, seal, then publish `rec` as the final `session.json`. A
    /// failure or a refusal leaves the start form in place: the record
    /// stays incomplete and never claims an end it did not reach.
    pub fn seal(&self, rec: &SessionRecord, opts: &SealOptions) -> Result<Sealed, SealError> {
        let root = open_dir(&self.dir).map_err(io_err(&self.dir))?;
        let session = self.session_dir();
        let mut w = Walker::new(
            Walk::TakeBack {
                uid: opts.session_uid,
            },
            opts.limits,
        );
        let start = open_dir_at(&root, c"session").map_err(io_err(&session))?;
        w.walk(start, b"session").map_err(io_err(&session))?;
        let cut = w.cut();
        if let Some((path, links)) = &w.multi_linked {
            return Ok(Sealed::Refused {
                why: format!(
                    "{} has {links} hard links; the record is left unsealed and incomplete (sealing it would change the other names too)",
                    self.dir.join(OsStr::from_bytes(path)).display()
                ),
                cut,
            });
        }
        let mut rec = rec.clone();
        rec.cut = cut.clone();
        // Hashed into the manifest before it is written: an error here
        // fails this sealing attempt (retried), never seals an empty file.
        let session_json = self.dir.join(SESSION_JSON);
        let final_bytes = crate::fsutil::json_pretty(&rec).map_err(io_err(&session_json))?;

        let agentd = self.dir.join("agentd");
        let mut r = Walker::new(Walk::Read, Limits::with_max_bytes(u64::MAX));
        let start = open_dir_at(&root, c"agentd").map_err(io_err(&agentd))?;
        r.walk(start, b"agentd").map_err(io_err(&agentd))?;
        r.files
            .retain(|(p, _)| p != MANIFEST.as_bytes() && p != SESSION_JSON.as_bytes());
        for (p, _) in &r.files {
            // The daemon's own files: nothing of the agent's is in agentd/.
            let path = self.dir.join(OsStr::from_bytes(p));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io_err(&path))?;
        }
        let mut lines = r.files;
        lines.append(&mut w.files);
        lines.push((
            SESSION_JSON.as_bytes().to_vec(),
            hex(&Sha256::digest(&final_bytes)),
        ));
        lines.sort();
        let text: Vec<u8> = lines
            .iter()
            .flat_map(|(p, h)| manifest::line(h, p))
            .collect();
        let manifest_path = self.dir.join(MANIFEST);
        write_atomic(&manifest_path, &text, 0o444).map_err(io_err(&manifest_path))?;
        crate::fault::point("seal-before-session-json");
        write_atomic(&session_json, &final_bytes, 0o444).map_err(io_err(&session_json))?;
        for d in [&agentd, &self.dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o555)).map_err(io_err(d))?;
            sync_dir(d).map_err(io_err(d))?;
        }
        Ok(Sealed::Sealed { cut })
    }
}

#[cfg(test)]
mod tests;
