//! Cross-file rules: duplicate stems, a request's profile, its repository and
//! its artifact schema. Per-file results go in, the whole `Desired` plus
//! every diagnostic comes out. Cheap by design (no parsing happens here) so
//! the daemon can re-run it every pass over its cache of per-file results.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::HostView;
use super::diag::{Diagnostic, locate_key};
use super::model::{Desired, Input, Profile, Rejected, Request, RequestEntry};
use super::validate::stem;

/// One file's own validation result.
pub type FileResult<T> = (PathBuf, Result<T, Vec<Diagnostic>>);

pub fn assemble(
    profiles: Vec<FileResult<Profile>>,
    requests: Vec<FileResult<Request>>,
    host: &dyn HostView,
) -> (Desired, Vec<Diagnostic>) {
    let mut desired = Desired::default();
    let mut diags = Vec::new();

    for (name, mut files) in by_stem(profiles) {
        if files.len() > 1 {
            let d = duplicate(&name, "profile", &files);
            diags.extend(d.iter().cloned());
            diags.extend(own_problems(&files));
            desired.invalid_profiles.insert(
                name,
                Rejected {
                    path: files.swap_remove(0).0,
                    diagnostics: d,
                    sha256: None,
                },
            );
            continue;
        }
        let Some((path, result)) = files.pop() else {
            continue;
        };
        match result {
            Ok(p) => {
                desired.profiles.insert(name, p);
            }
            Err(d) => {
                diags.extend(d.iter().cloned());
                desired.invalid_profiles.insert(
                    name,
                    Rejected {
                        path,
                        diagnostics: d,
                        sha256: None,
                    },
                );
            }
        }
    }

    for (id, mut files) in by_stem(requests) {
        if files.len() > 1 {
            let d = duplicate(&id, "request", &files);
            diags.extend(d.iter().cloned());
            diags.extend(own_problems(&files));
            desired.requests.insert(
                id,
                RequestEntry::Invalid(Rejected {
                    path: files.swap_remove(0).0,
                    diagnostics: d,
                    sha256: None,
                }),
            );
            continue;
        }
        let Some((path, result)) = files.pop() else {
            continue;
        };
        let (result, sha256) = match result {
            Ok(r) => {
                let sha = r.spec_sha256.clone();
                (cross_check(r, &desired, host), Some(sha))
            }
            Err(d) => (Err(d), None),
        };
        let entry = match result {
            Ok(r) => RequestEntry::Valid(r),
            Err(d) => {
                diags.extend(d.iter().cloned());
                RequestEntry::Invalid(Rejected {
                    path,
                    diagnostics: d,
                    sha256,
                })
            }
        };
        desired.requests.insert(id, entry);
    }
    diags.sort();
    (desired, diags)
}

fn by_stem<T>(files: Vec<FileResult<T>>) -> BTreeMap<String, Vec<FileResult<T>>> {
    let mut map: BTreeMap<String, Vec<FileResult<T>>> = BTreeMap::new();
    for f in files {
        map.entry(stem(&f.0)).or_default().push(f);
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| a.0.cmp(&b.0));
    }
    map
}

/// The problems each of a set of files has on its own (reported even when
/// the set is rejected as duplicates, so one run shows everything).
fn own_problems<T>(files: &[FileResult<T>]) -> Vec<Diagnostic> {
    files
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .flatten()
        .cloned()
        .collect()
}

fn duplicate<T>(name: &str, kind: &str, files: &[FileResult<T>]) -> Vec<Diagnostic> {
    let paths: Vec<String> = files.iter().map(|f| f.0.display().to_string()).collect();
    files
        .iter()
        .map(|(path, _)| {
            Diagnostic::new(
                path,
                None,
                format!(
                    "duplicate {kind} `{name}`: defined by {}",
                    paths.join(" and ")
                ),
            )
            .hint("the file stem is the identity; rename or delete all but one")
        })
        .collect()
}

/// Rules of a request that need the profiles: the profile exists, a repo is
/// known, and an artifact matches its schema when the profile ships one.
/// A request whose profile exists but is invalid stays valid here: the
/// planner holds it back with the profile's own message.
fn cross_check(
    r: Request,
    desired: &Desired,
    host: &dyn HostView,
) -> Result<Request, Vec<Diagnostic>> {
    // Only error paths need the text (to place the diagnostic): read it lazily.
    let at = |key: &str| {
        locate_key(
            &String::from_utf8_lossy(&host.read(&r.path).unwrap_or_default()),
            key,
            0,
        )
    };
    let profile = match desired.profiles.get(&r.profile) {
        Some(p) => p,
        None if desired.invalid_profiles.contains_key(&r.profile) => return Ok(r),
        None => {
            return Err(vec![
                Diagnostic::new(
                    &r.path,
                    at("profile"),
                    format!("profile `{}` not found", r.profile),
                )
                .hint(format!(
                    "add profiles/{}.toml (or .yaml), or fix the name",
                    r.profile
                )),
            ]);
        }
    };
    if r.repo.is_none() && profile.repo.is_none() {
        return Err(vec![
            Diagnostic::new(
                &r.path,
                None,
                format!(
                    "no repository: neither this request nor profile `{}` sets `repo`",
                    profile.name
                ),
            )
            .hint("add `repo` to the request or to the profile"),
        ]);
    }
    if let (Input::Artifact { kind, json, .. }, Some(dir)) = (&r.input, &profile.methodology_dir) {
        let schema_path = dir.join("schemas").join(format!("{kind}.schema.json"));
        if let Some(bytes) = host.read(&schema_path) {
            let problem = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Err(e) => Some(format!(
                    "schema `{}` is not valid JSON: {e}",
                    schema_path.display()
                )),
                Ok(schema) => match jsonschema::validator_for(&schema) {
                    Err(e) => Some(format!(
                        "schema `{}` is not a valid JSON Schema: {e}",
                        schema_path.display()
                    )),
                    Ok(v) => {
                        let errs: Vec<String> = v
                            .iter_errors(json)
                            .take(3)
                            .map(|e| {
                                let at = e.instance_path().to_string();
                                format!(
                                    "{} {e}",
                                    if at.is_empty() {
                                        "(root)".to_string()
                                    } else {
                                        at
                                    }
                                )
                            })
                            .collect();
                        (!errs.is_empty()).then(|| {
                            format!(
                                "artifact does not match `{}`: {}",
                                schema_path.display(),
                                errs.join("; ")
                            )
                        })
                    }
                },
            };
            if let Some(msg) = problem {
                return Err(vec![
                    Diagnostic::new(&r.path, at("artifact"), msg)
                        .hint("fix the artifact or the schema"),
                ]);
            }
        }
    }
    Ok(r)
}
