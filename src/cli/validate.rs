//! `agentd validate [PATH...]`: check a desired dir, or single files, without
//! Podman. Output is one `path:line:col: message` line per problem.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::desired::{self, Diagnostic, Kind};
use crate::source::{self, FOLDERS, SourceError};

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Desired dirs (holding profiles/ and requests/) or single profile or
    /// request files [default: the --desired dir].
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    host_network: super::HostNetworkArg,
}

pub fn run(global: &GlobalArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![global.desired.clone()]
    } else {
        args.paths.clone()
    };
    let mut files: Vec<(Kind, PathBuf)> = Vec::new();
    let mut diags: Vec<Diagnostic> = Vec::new();
    for p in &paths {
        collect(p, &mut files, &mut diags);
    }
    let contents: Vec<(Kind, &Path, Vec<u8>)> = files
        .iter()
        .filter_map(
            |(k, p)| match source::read_capped(p, desired::MAX_FILE_BYTES) {
                Ok(b) => Some((*k, p.as_path(), b)),
                Err(e) => {
                    diags.push(Diagnostic::new(p, None, format!("cannot read file: {e}")));
                    None
                }
            },
        )
        .collect();
    let borrowed: Vec<(Kind, &Path, &[u8])> = contents
        .iter()
        .map(|(k, p, b)| (*k, *p, b.as_slice()))
        .collect();
    let host = source::real_host(args.host_network.allow_host_network);
    let (model, found) = desired::load(&borrowed, host);
    // A config of the system agentd is modelled on, dropped among profiles:
    // one diagnostic that names the converter instead of its first unknown field.
    let foreign: Vec<&Path> = borrowed
        .iter()
        .filter(|(_, _, b)| foreign_config(b).is_some())
        .map(|(_, p, _)| *p)
        .collect();
    diags.extend(
        found
            .into_iter()
            .filter(|d| !foreign.contains(&d.path.as_path())),
    );
    diags.extend(foreign.iter().filter_map(|p| {
        let bytes = borrowed.iter().find(|(_, q, _)| q == p)?.2;
        Some(import_hint(p, foreign_config(bytes)?))
    }));
    diags.sort();
    diags.dedup();

    let mut out = super::out::Lines::new(std::io::stdout().lock());
    // Paths and quoted file content are untrusted: one escaped line each.
    for d in &diags {
        out.line(super::escape::text(&d.to_string()))?;
    }
    let files_with_errors = diags
        .iter()
        .map(|d| &d.path)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!(
        "{} profile(s), {} request(s) checked: {}",
        model.profiles.len() + model.invalid_profiles.len(),
        model.requests.len(),
        if diags.is_empty() {
            "no problems".to_string()
        } else {
            format!("{} problem(s) in {files_with_errors} file(s)", diags.len())
        }
    );
    Ok(if diags.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Gather the files `path` stands for: a desired dir's candidates, or one file.
fn collect(path: &Path, files: &mut Vec<(Kind, PathBuf)>, diags: &mut Vec<Diagnostic>) {
    if path.is_file() {
        if let Ok(b) = source::read_capped(path, desired::MAX_FILE_BYTES)
            && let Some(which) = foreign_config(&b)
            && kind_of_file(path).is_none()
        {
            diags.push(import_hint(path, which));
            return;
        }
        match kind_of_file(path) {
            Some(k) => files.push((k, path.to_path_buf())),
            None => diags.push(
                Diagnostic::new(
                    path,
                    None,
                    "cannot tell whether this is a profile or a request",
                )
                .hint("keep it under a `profiles/` or `requests/` folder"),
            ),
        }
        return;
    }
    if !path.is_dir() {
        diags.push(Diagnostic::new(path, None, "no such file or folder"));
        return;
    }
    let mut any_folder = false;
    for (folder, kind) in FOLDERS {
        match source::scan(path, folder, kind) {
            Ok(scan) => {
                any_folder = true;
                for f in scan.found {
                    match f.problem {
                        Some(why) => diags.push(Diagnostic::new(&f.path, None, why)),
                        None => files.push((f.kind, f.path)),
                    }
                }
                diags.extend(
                    scan.skipped
                        .into_iter()
                        .map(|s| Diagnostic::new(&s.path, None, s.why)),
                );
            }
            // A desired dir may lack one folder (git keeps no empty folders).
            Err(SourceError::Unavailable { .. }) => {}
        }
    }
    if !any_folder {
        diags.push(
            Diagnostic::new(
                path,
                None,
                "not a desired dir: it has neither profiles/ nor requests/",
            )
            .hint("point at the folder holding profiles/ and requests/"),
        );
    }
}

/// A file's kind from the nearest `profiles` or `requests` folder above it.
fn kind_of_file(path: &Path) -> Option<Kind> {
    path.ancestors()
        .skip(1)
        .find_map(|a| match a.file_name()?.to_str()? {
            "profiles" => Some(Kind::Profile),
            "requests" => Some(Kind::Request),
            _ => None,
        })
}

/// `Some("profiles")` or `Some("agents")` when `bytes` are TOML with that
/// top-level array: the `agentd.toml` of the system agentd is modelled on.
fn foreign_config(bytes: &[u8]) -> Option<&'static str> {
    let table: toml::Table = toml::from_str(std::str::from_utf8(bytes).ok()?).ok()?;
    ["profiles", "agents"]
        .into_iter()
        .find(|k| table.get(*k).is_some_and(toml::Value::is_array))
}

fn import_hint(path: &Path, which: &str) -> Diagnostic {
    Diagnostic::new(
        path,
        None,
        format!(
            "this is an `agentd.toml` of the system agentd is modelled on (`[[{which}]]`), not a profile or request"
        ),
    )
    .hint(format!(
        "convert it with `agentd import {} --into DIR` (keep the config itself out of profiles/ and requests/)",
        path.display()
    ))
}
