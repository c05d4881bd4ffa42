//! The per-file cache of the desired dir: every candidate file's last
//! validation, grouped by kind and stem (a file's identity), so that
//! re-deciding a name finds its files in one lookup.
//!
//! Memory matters here: the cache holds every request file the desired dir
//! has ever kept, finished ones included (10,000 of them is a normal day,
//! issue 12). So there is one map per kind, keyed by stem, whose value is
//! the (almost always single) file of that stem; no second index by path
//! (the stem is computed from the path) and none by profile (a profile
//! change walks the request files, which re-deciding them costs anyway).
//! A valid request is an `Arc` shared with the assembled `Desired`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::FileKey;
use crate::desired::{self, Diagnostic, Kind, Profile, Request};

/// One candidate file's last validation. A profile is boxed so that each of
/// the (many) request files does not pay for a profile's size.
pub(super) enum Parsed {
    Profile(Box<Result<Profile, Vec<Diagnostic>>>),
    Request(Result<Arc<Request>, Vec<Diagnostic>>),
}

impl Parsed {
    pub(super) fn profile(&self) -> Option<&Result<Profile, Vec<Diagnostic>>> {
        match self {
            Parsed::Profile(r) => Some(r),
            Parsed::Request(_) => None,
        }
    }

    pub(super) fn request(&self) -> Option<&Result<Arc<Request>, Vec<Diagnostic>>> {
        match self {
            Parsed::Request(r) => Some(r),
            Parsed::Profile(_) => None,
        }
    }
}

/// One file: the identity it had when it was read, and what it held.
pub(super) struct FileState {
    pub(super) key: FileKey,
    pub(super) parsed: Parsed,
    /// The scan generation that last saw the file (see `Source::walk`).
    pub(super) seen: u32,
}

/// The files of one stem, sorted by path. More than one is a duplicate.
pub(super) type Stem = Vec<(PathBuf, FileState)>;

/// Every cached file, by kind, then stem.
#[derive(Default)]
pub(super) struct Files {
    profiles: HashMap<String, Stem>,
    requests: HashMap<String, Stem>,
}

impl Files {
    fn map(&self, kind: Kind) -> &HashMap<String, Stem> {
        match kind {
            Kind::Profile => &self.profiles,
            Kind::Request => &self.requests,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> &mut HashMap<String, Stem> {
        match kind {
            Kind::Profile => &mut self.profiles,
            Kind::Request => &mut self.requests,
        }
    }

    /// The key `path` had when it was last read, if it is cached.
    pub(super) fn key(&self, kind: Kind, path: &Path) -> Option<FileKey> {
        self.map(kind)
            .get(&desired::stem(path))?
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, s)| s.key)
    }

    /// If `path` is cached with `key` (unchanged), mark it seen by scan
    /// `generation` and say so.
    pub(super) fn mark_seen(
        &mut self,
        kind: Kind,
        path: &Path,
        key: FileKey,
        generation: u32,
    ) -> bool {
        let Some(files) = self.map_mut(kind).get_mut(&desired::stem(path)) else {
            return false;
        };
        match files.iter_mut().find(|(p, s)| p == path && s.key == key) {
            Some((_, s)) => {
                s.seen = generation;
                true
            }
            None => false,
        }
    }

    /// The cached paths of one kind not seen by scan `generation`.
    pub(super) fn unseen(&self, kind: Kind, generation: u32) -> Vec<PathBuf> {
        self.map(kind)
            .values()
            .flatten()
            .filter(|(_, s)| s.seen != generation)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Cache `state` for `path` (replacing what it held).
    pub(super) fn insert(&mut self, kind: Kind, path: &Path, state: FileState) {
        // Capacity 1, not `Vec`'s default 4: a second file is a rare mistake.
        let files = self
            .map_mut(kind)
            .entry(desired::stem(path))
            .or_insert_with(|| Vec::with_capacity(1));
        match files.binary_search_by(|(p, _)| p.as_path().cmp(path)) {
            Ok(at) => files[at].1 = state,
            Err(at) => files.insert(at, (path.to_path_buf(), state)),
        }
    }

    /// Forget `path`; whether it was cached.
    pub(super) fn remove(&mut self, kind: Kind, path: &Path) -> bool {
        let stem = desired::stem(path);
        let map = self.map_mut(kind);
        let Some(files) = map.get_mut(&stem) else {
            return false;
        };
        let before = files.len();
        files.retain(|(p, _)| p != path);
        let removed = files.len() != before;
        if files.is_empty() {
            map.remove(&stem);
        }
        removed
    }

    /// The files of one stem (empty when none).
    pub(super) fn stem(&self, kind: Kind, name: &str) -> &[(PathBuf, FileState)] {
        self.map(kind).get(name).map_or(&[], Vec::as_slice)
    }

    /// The request ids with a file that names `profile` (valid on its own).
    pub(super) fn naming(&self, profile: &str) -> impl Iterator<Item = &String> {
        self.requests.iter().filter_map(move |(id, files)| {
            files
                .iter()
                .any(|(_, s)| matches!(s.parsed.request(), Some(Ok(r)) if r.profile == profile))
                .then_some(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey {
            ino,
            dev: 1,
            len: 1,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }

    fn request(profile: &str) -> FileState {
        let r = Request {
            id: "x".into(),
            path: "x".into(),
            profile: profile.into(),
            repo: None,
            input: desired::Input::None,
            timeout: None,
            scheduled_for: None,
            spec_sha256: "s".into(),
        };
        FileState {
            key: key(1),
            parsed: Parsed::Request(Ok(Arc::new(r))),
            seen: 0,
        }
    }

    #[test]
    fn files_are_found_by_stem_and_path_and_duplicates_stay_sorted() {
        let mut f = Files::default();
        let (a, b) = (
            Path::new("d/requests/z/r.toml"),
            Path::new("d/requests/r.yaml"),
        );
        f.insert(Kind::Request, a, request("p"));
        f.insert(Kind::Request, b, request("q"));
        let paths: Vec<&PathBuf> = f.stem(Kind::Request, "r").iter().map(|(p, _)| p).collect();
        assert_eq!(paths, [b, a]);
        assert_eq!(f.key(Kind::Request, a), Some(key(1)));
        assert_eq!(f.key(Kind::Profile, a), None, "kinds are apart");
        let mut naming: Vec<&String> = f.naming("q").collect();
        naming.sort();
        assert_eq!(naming, ["r"]);
        // Re-inserting a path replaces it.
        f.insert(Kind::Request, b, request("p"));
        assert_eq!(f.stem(Kind::Request, "r").len(), 2);
        assert_eq!(f.naming("q").count(), 0);
        // Marks: only an unchanged file is seen; the others are unseen.
        assert!(!f.mark_seen(Kind::Request, a, key(2), 1), "changed");
        assert!(f.mark_seen(Kind::Request, b, key(1), 1));
        assert_eq!(f.unseen(Kind::Request, 1), [a.to_path_buf()]);
        assert!(f.remove(Kind::Request, a));
        assert!(!f.remove(Kind::Request, a));
        assert!(f.remove(Kind::Request, b));
        assert!(f.stem(Kind::Request, "r").is_empty());
        assert!(f.unseen(Kind::Request, 9).is_empty());
    }
}
