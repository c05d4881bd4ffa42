//! `agentd import CONFIG [--into DIR]`: the imperative shell around
//! [`convert`]. Reads the `agentd.toml` of the system agentd is modelled on,
//! writes one profile file per entry into `DIR/profiles/` (never over an
//! existing file), then says what was mapped, which named host paths are
//! missing and which fields have no equivalent.

mod convert;
#[cfg(test)]
mod hostile_tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalArgs;
use super::escape::text as esc;
use crate::desired::{self, HostView, Kind};

pub const LONG_ABOUT: &str = "\
Convert an `agentd.toml` of the agentd this one is modelled on into profile files.

Reads either of that project's formats: `[[profiles]]` with a `command` array,
or `[[agents]]` with `[agents.command] argv = [...]`. Each entry becomes
DIR/profiles/<name>.toml. A relative `methodology_dir` is resolved against the
config file's folder, as the original does, and written as an absolute path.
`[daemon] audit_root` becomes advice to start the daemon with --audit-root.

An existing profile with the same name is never overwritten: that entry is
skipped. The summary lists every file written, every host path the profiles
name that does not exist yet (methodology_dir, mount sources), every field
without an equivalent here, and any other problem `agentd validate` would
report. Exit 0 when every entry was written, 1 when any entry was skipped or
could not be converted, 2 when the config cannot be read.";

pub const EXAMPLES: &str = "\
Examples:
  agentd import /etc/agentd/agentd.toml                  # into the --desired dir
  agentd import ~/agentd.toml --into /srv/agentd/desired
  agentd validate /srv/agentd/desired                     # then check the result";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `agentd.toml` to convert.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// The desired dir to write profiles/ into [default: the --desired dir].
    #[arg(long, value_name = "DIR")]
    into: Option<PathBuf>,
}

/// Validation's view of the host with every path present, so the only
/// problems it reports are the ones a missing folder would not explain
/// (those are listed separately, by name).
struct PathsExist;

impl HostView for PathsExist {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn read(&self, _: &Path) -> Option<Vec<u8>> {
        None
    }
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = &args.config;
    // Capped: a config over the limit is refused without reading the rest.
    let bytes = crate::source::read_capped(cfg, convert::MAX_CONFIG_BYTES)
        .with_context(|| format!("reading {}", shown(cfg)))?;
    if bytes.len() > convert::MAX_CONFIG_BYTES {
        let size = std::fs::metadata(cfg).map_or(bytes.len(), |m| {
            usize::try_from(m.len()).unwrap_or(usize::MAX)
        });
        return Err(convert::ConvertError::TooLarge(size)).with_context(|| shown(cfg));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| e.utf8_error())
        .with_context(|| format!("reading {}", shown(cfg)))?;
    let abs = std::path::absolute(cfg).with_context(|| format!("resolving {}", shown(cfg)))?;
    let base_dir = abs.parent().unwrap_or(Path::new("/"));
    let conv = convert::convert(&text, base_dir, &abs.display().to_string())
        .with_context(|| shown(cfg))?;

    let into = args.into.as_ref().unwrap_or(&global.desired);
    let dir = into.join("profiles");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", shown(&dir)))?;
    let existing: BTreeMap<String, PathBuf> =
        crate::source::scan_folder(into, "profiles", Kind::Profile)
            .with_context(|| format!("reading {}", shown(&dir)))?
            .into_iter()
            .map(|f| (desired::stem(&f.path), f.path))
            .collect();

    let mut out = std::io::stdout().lock();
    let (mut written, mut skipped, mut missing) = (0, 0, 0);
    for p in &conv.profiles {
        let path = dir.join(format!("{}.toml", p.name));
        if let Some(there) = existing.get(&p.name) {
            skipped += 1;
            writeln!(
                out,
                "skipped {}: {} exists, not overwritten; hint: remove it to import again",
                esc(&p.label),
                shown(there)
            )?;
            continue;
        }
        match create_new(&path, p.text.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                skipped += 1;
                writeln!(
                    out,
                    "skipped {}: {} exists, not overwritten",
                    esc(&p.label),
                    shown(&path)
                )?;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("writing {}", shown(&path))),
        }
        written += 1;
        writeln!(
            out,
            "wrote {} from {} ({})",
            shown(&path),
            esc(&p.label),
            p.mapped.join(", ")
        )?;
        for (field, host) in &p.host_paths {
            let there = if field == "methodology_dir" {
                host.is_dir()
            } else {
                host.exists()
            };
            if !there {
                missing += 1;
                writeln!(
                    out,
                    "missing: {} {field} `{}` does not exist; hint: create it (or edit {}) before the profile is used",
                    esc(&p.name),
                    esc(&host.display().to_string()),
                    shown(&path)
                )?;
            }
        }
        if let Err(diags) = desired::validate_profile(&path, p.text.as_bytes(), &PathsExist) {
            for d in diags {
                writeln!(out, "check: {}", esc(&d.to_string()))?;
            }
        }
    }
    for (label, why) in &conv.rejected {
        writeln!(out, "not imported: {}: {}", esc(label), esc(why))?;
    }
    for (field, advice) in &conv.daemon_flags {
        writeln!(out, "daemon setting: {}: {}", esc(field), esc(advice))?;
    }
    for (field, note) in &conv.unmapped {
        writeln!(out, "no equivalent: {}: {}", esc(field), esc(note))?;
    }
    out.flush()?;
    eprintln!(
        "{} ([[{}]]): {written} profile(s) written to {}, {skipped} skipped, {} not imported; {missing} named path(s) missing; {} daemon setting(s) to pass as flags; {} field(s) without equivalent",
        shown(cfg),
        conv.format.join("]], [["),
        shown(&dir),
        conv.rejected.len(),
        conv.daemon_flags.len(),
        conv.unmapped.len()
    );
    Ok(if skipped == 0 && conv.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A path as the summary prints it: the config's path and the desired dir
/// are the operator's, but a folder or file name may hold a newline or an
/// escape sequence (issue 17), which must not start a line of its own.
fn shown(p: &Path) -> String {
    esc(&p.display().to_string()).into_owned()
}

/// Write a new file; fails with `AlreadyExists` rather than replace one.
fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
