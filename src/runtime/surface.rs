//! The daemon's control surface on the host (issue 17 item 6): the files and
//! folders no profile mount and no `methodology_dir` may hold or lie inside.
//! The daemon names its own folders (`DaemonFolders`); the runtime adds its
//! own (`Runtime::control_surface`; Podman's: `podman/surface.rs`).
//! `refuse` is the check `execute::start` runs on every host path a
//! profile names.

use std::path::{Path, PathBuf};

/// One guarded path: what it is, for the message, and why no session may
/// see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: &'static str,
}

/// The daemon's own folders, which every runtime guards first.
#[derive(Debug, Clone, Default)]
pub struct DaemonFolders {
    pub state: PathBuf,
    pub audit_root: PathBuf,
    pub desired: PathBuf,
}

/// `Err(message)` when the host path `p` that the profile field `field`
/// names holds or lies inside any guarded path: every such path is named,
/// each group with its reason.
pub fn refuse(field: &str, p: &Path, guarded: &[Guarded]) -> Result<(), String> {
    let hits: Vec<&Guarded> = guarded.iter().filter(|g| overlaps(p, &g.path)).collect();
    if hits.is_empty() {
        return Ok(());
    }
    // One reason per group of paths that share it, in the surface's order.
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for g in hits {
        let named = format!("{} `{}`", g.what, g.path.display());
        match groups.iter_mut().find(|(why, _)| *why == g.why) {
            Some((_, names)) => names.push(named),
            None => groups.push((g.why, vec![named])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, names)| format!("{} ({why})", names.join(", ")))
        .collect();
    Err(format!(
        "{field} `{}` overlaps the daemon's {}; no session may see these, read-only or not; hint: mount a folder that neither holds nor lies inside any of them (see docs/security.md)",
        p.display(),
        parts.join("; the daemon's ")
    ))
}

/// `a` and `b` are the same path or one holds the other, as written or
/// resolved.
fn overlaps(a: &Path, b: &Path) -> bool {
    let forms = |p: &Path| [Some(p.to_path_buf()), std::fs::canonicalize(p).ok()];
    forms(a).iter().flatten().any(|a| {
        forms(b)
            .iter()
            .flatten()
            .any(|b| a.starts_with(b) || b.starts_with(a))
    })
}
