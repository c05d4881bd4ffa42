//! The agent's work tree as a commit, built from bytes agentd reads itself
//! (issue 20). Git never sees the work tree: no `.gitattributes` filter,
//! no fsmonitor, no nested repository's `.git` file is ever looked at by
//! it. agentd walks the clone by descriptor (`O_NOFOLLOW`, a FIFO never
//! opened, a symlink recorded as the link it is), compares each file with
//! the tracked blob (size, then the blob's SHA-1), honours `.gitignore`
//! files (read by descriptor too) and the clone's `info/exclude` for
//! untracked files, and writes what changed as a `git fast-import` stream
//! into the daemon's own folder. `capture` then imports it into the
//! quarantine repository and diffs it against HEAD.
//!
//! Bounded: at most [`MAX_ENTRIES`] entries and [`MAX_DEPTH`] levels (past
//! either, no patch: the work tree is not captured), changed content up to
//! the results budget (a file past it is left out and named), unchanged
//! files read only up to their tracked size, and a deadline. Skipped and
//! named: nested repositories (a folder holding `.git`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, OsStr};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{SFlag, fstatat};
use sha1::{Digest, Sha1};

use super::clone_files::{open_file, read_small};
use super::stream::{Change, MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK, Tracked, blob_header};
use crate::fdtree::{file_kind, open_dir_at, read_names};

/// Entries of the work tree looked at, at most (ignored folders that hold
/// nothing tracked are not entered, so `node_modules` costs one entry).
pub const MAX_ENTRIES: usize = 100_000;
/// Folder levels of the work tree.
pub const MAX_DEPTH: usize = 64;
/// Largest `.gitignore` read.
const IGNORE_FILE_CAP: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The work tree is past a limit: not captured.
    #[error("{0}")]
    Limit(String),
}

impl From<Errno> for WalkError {
    fn from(e: Errno) -> Self {
        WalkError::Io(e.into())
    }
}

/// The work tree compared with the tracked tree.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// What to apply to the tracked tree (blobs are in the stream file).
    pub changes: Vec<Change>,
    /// Bytes of changed content written to the stream.
    pub fed: u64,
    /// What was left out (over budget), for the record: the first few.
    pub cut: Vec<String>,
    /// How many more were left out.
    pub cut_more: u64,
    /// What was skipped on purpose (nested repositories), for the record.
    pub skipped: Vec<String>,
}

/// How a walk is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of changed content kept.
    pub budget: u64,
    /// Entries looked at ([`MAX_ENTRIES`] in a session).
    pub max_entries: usize,
    pub deadline: Instant,
}

/// One `.gitignore` in force, and the folder it applies below.
struct Rules {
    dir: Vec<u8>,
    matcher: Gitignore,
}

struct Walker<'a> {
    tracked: &'a BTreeMap<Vec<u8>, Tracked>,
    /// Folders that hold tracked paths.
    tracked_dirs: BTreeSet<Vec<u8>>,
    /// Tracked paths accounted for (unchanged, changed, or left as they were).
    seen: BTreeSet<Vec<u8>>,
    rules: Vec<Rules>,
    /// The clone's `info/exclude`, lowest precedence.
    exclude: Option<Gitignore>,
    entries: usize,
    next_mark: u64,
    out: BufWriter<std::fs::File>,
    limits: Limits,
    snap: Snapshot,
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn show(path: &[u8]) -> String {
    crate::audit::manifest::display(path)
}

fn matcher(root: &[u8], text: &[u8]) -> Option<Gitignore> {
    let mut b = GitignoreBuilder::new(PathBuf::from(OsStr::from_bytes(root)));
    for line in text.split(|b| *b == b'\n') {
        if let Ok(l) = std::str::from_utf8(line) {
            // A bad pattern is skipped, as git skips what it cannot use.
            let _ = b.add_line(None, l);
        }
    }
    b.build().ok()
}

/// The git blob id of `len` bytes read from `r`.
fn blob_oid(len: u64, mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        n += got as u64;
        h.update(&buf[..got]);
    }
    Ok((hex(&h.finalize()), n))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Walker<'_> {
    fn ignored(&self, path: &[u8], is_dir: bool) -> bool {
        for r in self.rules.iter().rev() {
            let rel = if r.dir.is_empty() {
                path
            } else {
                match path.strip_prefix(r.dir.as_slice()) {
                    Some(rest) => rest.strip_prefix(b"/").unwrap_or(rest),
                    None => continue,
                }
            };
            match r.matcher.matched(Path::new(OsStr::from_bytes(rel)), is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        self.exclude.as_ref().is_some_and(|m| {
            matches!(
                m.matched(Path::new(OsStr::from_bytes(path)), is_dir),
                Match::Ignore(_)
            )
        })
    }

    /// Mark every tracked path at or below `prefix` as left as it was.
    fn keep_below(&mut self, prefix: &[u8]) {
        let mut below = prefix.to_vec();
        below.push(b'/');
        let keys: Vec<Vec<u8>> = self
            .tracked
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .map(|(k, _)| k.clone())
            .collect();
        self.seen.extend(keys);
        if self.tracked.contains_key(prefix) {
            self.seen.insert(prefix.to_vec());
        }
    }

    fn count(&mut self, n: usize) -> Result<(), WalkError> {
        self.entries += n;
        if self.entries > self.limits.max_entries {
            return Err(WalkError::Limit(format!(
                "the work tree has more than {} entries",
                self.limits.max_entries
            )));
        }
        if Instant::now() >= self.limits.deadline {
            return Err(WalkError::Limit(
                "reading the work tree did not finish in time".into(),
            ));
        }
        Ok(())
    }

    fn walk(
        &mut self,
        dir: &mut Dir,
        rel: &[u8],
        depth: usize,
        ignored_dir: bool,
    ) -> Result<(), WalkError> {
        let cap = self.limits.max_entries.saturating_sub(self.entries);
        let (mut names, more) = read_names(dir, cap, &Default::default())?;
        if more {
            return Err(WalkError::Limit(format!(
                "the work tree has more than {} entries",
                self.limits.max_entries
            )));
        }
        self.count(names.len())?;
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let pushed = match read_small(dir, c".gitignore", IGNORE_FILE_CAP)? {
            Some(text) => match matcher(rel, &text) {
                Some(m) => {
                    self.rules.push(Rules {
                        dir: rel.to_vec(),
                        matcher: m,
                    });
                    true
                }
                None => false,
            },
            None => false,
        };
        for (name, _) in names {
            let nb = name.as_bytes();
            if nb.eq_ignore_ascii_case(b".git") {
                continue;
            }
            let path = join(rel, nb);
            let st = match fstatat(&*dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match file_kind(&st) {
                SFlag::S_IFDIR => self.dir(dir, &name, path, depth, ignored_dir)?,
                SFlag::S_IFREG => {
                    let exec = st.st_mode & 0o111 != 0;
                    self.file(dir, &name, path, st.st_size as u64, exec, ignored_dir)?
                }
                SFlag::S_IFLNK => self.link(dir, &name, path, ignored_dir)?,
                // FIFOs, sockets, devices: git tracks none of them, and a
                // FIFO is never opened. A tracked path turned into one is
                // gone as far as git is concerned.
                _ => {}
            }
        }
        if pushed {
            self.rules.pop();
        }
        Ok(())
    }

    fn dir(
        &mut self,
        parent: &Dir,
        name: &CStr,
        path: Vec<u8>,
        depth: usize,
        ignored_dir: bool,
    ) -> Result<(), WalkError> {
        if self
            .tracked
            .get(&path)
            .is_some_and(|t| t.mode == MODE_GITLINK)
        {
            // A submodule: what it points at is recorded as it was.
            self.seen.insert(path);
            return Ok(());
        }
        let has_tracked = self.tracked_dirs.contains(&path);
        let ignored = ignored_dir || self.ignored(&path, true);
        if ignored && !has_tracked {
            return Ok(());
        }
        if depth + 1 > MAX_DEPTH {
            return Err(WalkError::Limit(format!(
                "the work tree is deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut sub = match open_dir_at(parent, name) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // A folder holding `.git` is a repository of its own: git would
        // record it as a submodule by reading its `.git`, which may point
        // anywhere. Skipped, and named.
        let nested = match fstatat(&sub, c".git", AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => true,
            Err(Errno::ENOENT) => false,
            Err(e) => return Err(e.into()),
        };
        if nested {
            self.keep_below(&path);
            if self.snap.skipped.len() < super::model::CUT_SHOWN {
                self.snap.skipped.push(format!(
                    "{}: a nested repository, not captured",
                    show(&path)
                ));
            } else {
                self.snap.cut_more += 1;
            }
            return Ok(());
        }
        self.walk(&mut sub, &path, depth + 1, ignored)
    }

    fn file(
        &mut self,
        dir: &Dir,
        name: &CStr,
        path: Vec<u8>,
        size: u64,
        exec: bool,
        ignored_dir: bool,
    ) -> Result<(), WalkError> {
        let mode = if exec { MODE_EXEC } else { MODE_FILE };
        let tracked = self.tracked.get(&path).cloned();
        let blob = tracked
            .as_ref()
            .filter(|t| matches!(t.mode, MODE_FILE | MODE_EXEC));
        if tracked.is_none() && (ignored_dir || self.ignored(&path, false)) {
            return Ok(());
        }
        if let Some(t) = blob
            && t.size == Some(size)
        {
            let Some((f, _)) = open_file(dir, name)? else {
                return Ok(());
            };
            let (oid, _) = blob_oid(size, f.take(size))?;
            if oid == t.oid {
                self.seen.insert(path.clone());
                if mode != t.mode {
                    self.snap.changes.push(Change::Oid { path, mode, oid });
                }
                return Ok(());
            }
        }
        let room = self.limits.budget.saturating_sub(self.snap.fed);
        if size > room {
            return self.cut(path, size, tracked.is_some());
        }
        let Some((f, _)) = open_file(dir, name)? else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        f.take(room + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > room {
            return self.cut(path, bytes.len() as u64, tracked.is_some());
        }
        self.blob(path, mode, &bytes, tracked.is_some())
    }

    fn link(
        &mut self,
        dir: &Dir,
        name: &CStr,
        path: Vec<u8>,
        ignored_dir: bool,
    ) -> Result<(), WalkError> {
        let tracked = self.tracked.get(&path).cloned();
        if tracked.is_none() && (ignored_dir || self.ignored(&path, false)) {
            return Ok(());
        }
        let target = match nix::fcntl::readlinkat(dir, name) {
            Ok(t) => t.as_bytes().to_vec(),
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (oid, _) = blob_oid(target.len() as u64, target.as_slice())?;
        if let Some(t) = &tracked
            && t.mode == MODE_LINK
            && t.oid == oid
        {
            self.seen.insert(path);
            return Ok(());
        }
        self.blob(path, MODE_LINK, &target, tracked.is_some())
    }

    /// Write `bytes` as a blob and set `path` to it.
    fn blob(
        &mut self,
        path: Vec<u8>,
        mode: u32,
        bytes: &[u8],
        tracked: bool,
    ) -> Result<(), WalkError> {
        self.next_mark += 1;
        let mark = self.next_mark;
        self.out.write_all(&blob_header(mark, bytes.len()))?;
        self.out.write_all(bytes)?;
        self.out.write_all(b"\n")?;
        self.snap.fed += bytes.len() as u64;
        if tracked {
            self.seen.insert(path.clone());
        }
        self.snap.changes.push(Change::Mark { path, mode, mark });
        Ok(())
    }

    /// Leave `path` out: over budget. A tracked file keeps its old content.
    fn cut(&mut self, path: Vec<u8>, size: u64, tracked: bool) -> Result<(), WalkError> {
        if self.snap.cut.len() < super::model::CUT_SHOWN {
            self.snap.cut.push(format!(
                "{} ({size} bytes) is past the results budget of {} bytes",
                show(&path),
                self.limits.budget
            ));
        } else {
            self.snap.cut_more += 1;
        }
        if tracked {
            self.seen.insert(path);
        }
        Ok(())
    }
}

/// Compare the work tree (`worktree`, the clone's top folder) with
/// `tracked` (HEAD's tree), writing changed content to `stream` (a new
/// file in the daemon's folder) as `fast-import` blobs. `exclude` is the
/// clone's `info/exclude`, when it has one.
pub fn snapshot(
    worktree: &mut Dir,
    tracked: &BTreeMap<Vec<u8>, Tracked>,
    exclude: Option<&[u8]>,
    stream: &Path,
    limits: Limits,
) -> Result<Snapshot, WalkError> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(stream)?;
    let mut tracked_dirs = BTreeSet::new();
    for path in tracked.keys() {
        let mut p = path.as_slice();
        while let Some(i) = p.iter().rposition(|b| *b == b'/') {
            p = &p[..i];
            if !tracked_dirs.insert(p.to_vec()) {
                break;
            }
        }
    }
    let mut w = Walker {
        tracked,
        tracked_dirs,
        seen: BTreeSet::new(),
        rules: Vec::new(),
        exclude: exclude.and_then(|t| matcher(b"", t)),
        entries: 0,
        next_mark: 0,
        out: BufWriter::new(out),
        limits,
        snap: Snapshot::default(),
    };
    w.walk(worktree, b"", 0, false)?;
    let gone: Vec<Vec<u8>> = tracked
        .keys()
        .filter(|k| !w.seen.contains(*k))
        .cloned()
        .collect();
    w.snap.changes.extend(gone.into_iter().map(Change::Delete));
    // Read back by `git fast-import` in this same capture: a scratch file
    // of the work folder, not synced.
    w.out.flush()?;
    Ok(w.snap)
}

#[cfg(test)]
#[path = "worktree_tests.rs"]
mod tests;
