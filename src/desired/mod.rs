//! The desired state: profile and request files, parsed and validated.
//!
//! PURE: no IO and no panics on any input. The few facts validation needs
//! from the host (does a mount source exist, what does an artifact file or
//! schema hold) come through [`HostView`], so tests pass a fake and the
//! daemon passes the real filesystem. Finding files is `source`'s job.

mod assemble;
mod diag;
mod egress;
mod inject;
mod model;
mod parse;
mod push;
mod repos;
mod rules;
mod sources;
mod url_path;
mod validate;
pub mod wire;

use std::path::Path;

pub use assemble::{FileRef, ProfileEntry, assemble, profile_entry, request_entry};
pub use diag::Diagnostic;
pub use egress::{
    EgressHost, EgressPolicy, EgressRule, PROXY_VARS, dns_name, ip_literal, split_host_port,
};
pub use model::*;
pub use parse::{Format, MAX_FILE_BYTES};
pub use push::{BranchVars, expand_branch, valid_ref_name};
#[cfg(test)]
pub use push::{DEFAULT_RESULTS_MAX_BYTES, Push};
pub use rules::{duration as parse_duration, request_id as check_request_id};
pub use validate::{profile as validate_profile, request as validate_request, sha256_hex, stem};

/// What validation may ask of the host. Implementations must not panic.
pub trait HostView {
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    /// The bytes of a small file (schema, the file being validated), or
    /// `None` if unreadable.
    fn read(&self, path: &Path) -> Option<Vec<u8>>;
    /// The bytes of the regular file `rel` below the folder `base`, read
    /// with one resolution that never leaves `base` (symlinks included) and
    /// never blocks (a FIFO is refused), at most `cap + 1` bytes. `Err`
    /// says why, worded for an operator. Request artifacts are read this
    /// way: a request may not make the daemon read host files outside the
    /// desired dir, and what was read is what gets frozen.
    fn read_beneath(&self, base: &Path, rel: &Path, cap: usize) -> Result<Vec<u8>, String> {
        let _ = cap;
        self.read(&base.join(rel))
            .ok_or_else(|| "cannot be read".to_string())
    }
    /// The path with every symlink resolved, when it exists. Host folders a
    /// profile names (methodology_dir, mount sources) are resolved once at
    /// validation; the session starts from the resolved path, and the
    /// start re-checks that no component of it has become a symlink.
    fn canonical(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.exists(path).then(|| path.to_path_buf())
    }
    /// Whether a profile may set `network = "host"`: only when the operator
    /// said so (`--allow-host-network`, issue 17), since the session then
    /// reaches every service on the host's loopback.
    fn allows_host_network(&self) -> bool {
        false
    }
}

/// `host` with `network = "host"` allowed (`--allow-host-network`).
pub struct AllowHostNetwork<H>(pub H);

impl<H: HostView> HostView for AllowHostNetwork<H> {
    fn exists(&self, path: &Path) -> bool {
        self.0.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.0.is_dir(path)
    }
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.0.read(path)
    }
    fn read_beneath(&self, base: &Path, rel: &Path, cap: usize) -> Result<Vec<u8>, String> {
        self.0.read_beneath(base, rel, cap)
    }
    fn canonical(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.0.canonical(path)
    }
    fn allows_host_network(&self) -> bool {
        true
    }
}

/// Which kind of desired file a path is, from the folder it lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Profile,
    Request,
}

/// Whether a file name is one agentd reads: not hidden, not an editor or temp
/// file, and ending in `.toml`, `.yaml` or `.yml`.
pub fn is_candidate(name: &str) -> bool {
    !(name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.starts_with('#')
        || name.chars().all(|c| c.is_ascii_digit()))
        && Format::of(Path::new(name)).is_some()
}

/// Validate a set of files already read into memory. `files` holds each
/// file's kind, path and bytes; the result is the model plus every problem.
pub fn load(files: &[(Kind, &Path, &[u8])], host: &dyn HostView) -> (Desired, Vec<Diagnostic>) {
    let mut profiles = Vec::new();
    let mut requests = Vec::new();
    for (kind, path, bytes) in files {
        match kind {
            Kind::Profile => {
                profiles.push((path.to_path_buf(), validate_profile(path, bytes, host)))
            }
            Kind::Request => requests.push((
                path.to_path_buf(),
                validate_request(path, bytes, host).map(std::sync::Arc::new),
            )),
        }
    }
    assemble(profiles, requests, host)
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
