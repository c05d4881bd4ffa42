//! Placeholders (issue 21): what an injected credential's variable holds in
//! the session instead of its value. Random per session and per credential
//! (128 bits from the kernel, never derived from the value, so holding one
//! tells nothing about the key), kept in a 0600 file of the state dir so a
//! restarted daemon's proxy keeps recognising the ones its sessions hold.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What every placeholder starts with: the proxy finds them by it.
pub const PREFIX: &str = "agentd-ph-";

/// Hex digits after the prefix (128 bits).
const HEX_LEN: usize = 32;

/// Length of a placeholder in bytes.
pub const LEN: usize = PREFIX.len() + HEX_LEN;

/// Largest placeholder file read back (a profile has at most a few
/// hundred credentials).
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// `agentd-ph-` and 32 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placeholder(String);

impl Placeholder {
    /// A new random placeholder; `Err` when the kernel's random source
    /// cannot be read (never a weaker fallback).
    pub fn generate() -> io::Result<Placeholder> {
        let mut bytes = [0u8; HEX_LEN / 2];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let mut s = String::with_capacity(LEN);
        s.push_str(PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Ok(Placeholder(s))
    }

    /// A placeholder as written in the store.
    pub fn parse(text: &str) -> Option<Placeholder> {
        let hex = text.strip_prefix(PREFIX)?;
        (hex.len() == HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Placeholder(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the placeholders of a session cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    #[error("reading placeholders `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "placeholders `{path}` {why} (hint: it is agentd's own file in the state dir; remove it to end the sessions that use it)"
    )]
    Bad { path: PathBuf, why: String },
    #[error("writing placeholders `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("drawing a placeholder: {0}")]
    Random(io::Error),
}

/// The placeholders of one session by credential name: those in the store
/// at `path` are kept, missing ones drawn and written (0600) before this
/// returns, so what the session is given is what a restarted daemon finds.
pub fn load_or_create(
    path: &Path,
    names: &[&str],
) -> Result<BTreeMap<String, Placeholder>, PlaceholderError> {
    let mut map = read(path)?;
    let before = map.len();
    for name in names {
        if !map.contains_key(*name) {
            let p = Placeholder::generate().map_err(PlaceholderError::Random)?;
            map.insert((*name).to_string(), p);
        }
    }
    if map.len() != before {
        let text: String = map
            .iter()
            .map(|(n, p)| format!("{n}={}\n", p.as_str()))
            .collect();
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| {
            PlaceholderError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(map)
}

/// The store at `path` (empty when absent). A store that is not a regular
/// file of ours with mode 0600 is refused: the placeholders are what the
/// proxy trusts to mark its own credentials.
pub fn read(path: &Path) -> Result<BTreeMap<String, Placeholder>, PlaceholderError> {
    let bad = |why: &str| PlaceholderError::Bad {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let file = match File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(PlaceholderError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| PlaceholderError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(bad("is not owned by agentd's user with mode 0600"));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| PlaceholderError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(bad("is too large"));
    }
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((name, p)) = line.split_once('=') else {
            return Err(bad("has a line without `=`"));
        };
        let Some(p) = Placeholder::parse(p) else {
            return Err(bad("has a malformed placeholder"));
        };
        map.insert(name.to_string(), p);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn placeholders_are_random_per_credential_and_survive_a_reload_issue_21() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s1.placeholders");
        let first = load_or_create(&path, &["A", "B"]).expect("create");
        assert_ne!(first["A"], first["B"]);
        for p in first.values() {
            assert_eq!(Placeholder::parse(p.as_str()).as_ref(), Some(p));
            assert_eq!(p.as_str().len(), LEN);
        }
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restarted daemon reads the same ones back, and adds a new one.
        let again = load_or_create(&path, &["A", "B", "C"]).expect("reload");
        assert_eq!((&again["A"], &again["B"]), (&first["A"], &first["B"]));
        assert_eq!(read(&path).expect("read"), again);
        // Another session draws its own.
        let other = load_or_create(&dir.path().join("s2.placeholders"), &["A"]).expect("s2");
        assert_ne!(other["A"], first["A"]);
    }

    #[test]
    fn a_store_others_could_read_or_a_link_is_refused_issue_21() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.placeholders");
        load_or_create(&path, &["A"]).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read(&path).expect_err("0644 refused").to_string();
        assert!(e.contains("mode 0600"), "{e}");
        let link = dir.path().join("link.placeholders");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(read(&link).is_err(), "a symlink is not followed");
        std::fs::write(dir.path().join("bad"), "A=agentd-ph-XYZ\n").expect("write");
        std::fs::set_permissions(
            dir.path().join("bad"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let e = read(&dir.path().join("bad"))
            .expect_err("malformed")
            .to_string();
        assert!(e.contains("malformed placeholder"), "{e}");
    }
}
