//! Wire structs to domain types: every rule of docs/desired-dir.md ("Profile
//! fields", "Request fields") that concerns one file, a profile's in
//! `profile.rs` and a request's in `request.rs`; what both use is here.
//! Problems are collected, not short-circuited, so an operator sees all of
//! them at once. Cross-file rules live in `assemble.rs`.

mod profile;
mod request;

pub use profile::profile;
pub use request::request;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::HostView;
use super::diag::{Diagnostic, KeyIndex};
use super::model::{
    ConcurrencyPolicy, Credential, Input, MAX_ARTIFACT_BYTES, MAX_REQUEST_TEXT_BYTES,
    MAX_WORK_UNIT_BYTES, Mount, Network, Profile, Repo, Request, Schedule,
};
use super::parse::{self, Format};
use super::repos;
use super::rules::{self, Problem};
use super::sources;
use super::wire::{ConcurrencyPolicyWire, CredentialWire, ProfileFile, RequestFile};
use crate::cron;

/// Collects diagnostics for one file, placing each at its field when the
/// field can be found in the text.
struct Sink<'a> {
    path: &'a Path,
    text: &'a str,
    out: Vec<Diagnostic>,
    /// Where the file's keys are, built at the first problem to place.
    keys: std::cell::OnceCell<KeyIndex<'a>>,
    /// Problems past [`MAX_LISTED`], counted only.
    unlisted: usize,
}

/// Problems listed per file; past it they are counted, so a file with
/// tens of thousands of wrong entries costs no more than a few (issue 17:
/// 87,000 empty `allowed_repos` entries made 87 MiB of diagnostics).
const MAX_LISTED: usize = 100;

impl Sink<'_> {
    fn at(&mut self, key: &str, nth: usize, (msg, hint): Problem) {
        if self.out.len() >= MAX_LISTED {
            self.unlisted += 1;
            return;
        }
        let pos = self
            .keys
            .get_or_init(|| KeyIndex::new(self.text))
            .locate(key, nth);
        let mut d = Diagnostic::new(self.path, pos, msg);
        d.hint = hint;
        self.out.push(d);
    }

    /// A problem already placed (`egress.rs` places its own), within the cap.
    fn push(&mut self, d: Diagnostic) {
        if self.out.len() >= MAX_LISTED {
            self.unlisted += 1;
        } else {
            self.out.push(d);
        }
    }

    fn field(&mut self, key: &str, msg: impl Into<String>, hint: impl Into<String>) {
        self.at(key, 0, (msg.into(), Some(hint.into())));
    }

    /// The problems, with a last line counting those not listed.
    fn finish(mut self) -> Vec<Diagnostic> {
        if self.unlisted > 0 {
            self.out.push(
                Diagnostic::new(
                    self.path,
                    None,
                    format!("{} more problem(s) in this file not listed", self.unlisted),
                )
                .hint(format!(
                    "at most {MAX_LISTED} are listed per file; fix these and validate again"
                )),
            );
        }
        self.out
    }
}

/// The file stem: a profile's name or a request's id.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Lower-case hex of sha256(bytes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn read_text<'a, T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(&'a str, T), Vec<Diagnostic>> {
    let format = Format::of(path).ok_or_else(|| {
        vec![Diagnostic::new(
            path,
            None,
            "not a .toml, .yaml or .yml file",
        )]
    })?;
    let text = parse::as_text(path, bytes).map_err(|d| vec![d])?;
    let wire = parse::parse::<T>(path, format, text).map_err(|d| vec![d])?;
    Ok((text, wire))
}

/// Resolve a path written in a file: absolute as is, relative to the file's folder.
fn resolve(file: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// The message of a field over its size cap.
fn too_big(field: &str, len: usize, cap: usize) -> String {
    format!("{field} is too large ({len} bytes; the limit is {cap} bytes)")
}

/// A relative path that stays below its base folder.
fn relative_inside(p: &str) -> bool {
    let p = Path::new(p);
    !p.as_os_str().is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}
