//! Cross-file rules: duplicate stems, a request's profile, its repository and
//! its artifact schema. Per-file results go in (no parsing happens here);
//! entries come out one name at a time, so the daemon's cache can update
//! just the names a change touched, and `assemble` builds everything at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::HostView;
use super::diag::{Diagnostic, locate_key};
use super::model::{DEFAULT_TIMEOUT, Desired, Input, Profile, Rejected, Request, RequestEntry};
use super::validate::stem;

/// One file's own validation result.
pub type FileResult<T> = (PathBuf, Result<T, Vec<Diagnostic>>);

/// A borrowed file result: the daemon's cache keeps owning it.
pub type FileRef<'a, T> = (&'a PathBuf, &'a Result<T, Vec<Diagnostic>>);

/// The entry of one profile name, from every file with that stem.
pub enum ProfileEntry {
    Valid(Box<Profile>),
    Invalid(Rejected),
    /// No file has that stem (any more).
    Absent,
}

/// Decide one profile from the files that share its stem (borrowed: the
/// daemon's cache keeps owning them).
pub fn profile_entry(name: &str, files: &[FileRef<'_, Profile>]) -> ProfileEntry {
    match files {
        [] => ProfileEntry::Absent,
        [(_, Ok(p))] => ProfileEntry::Valid(Box::new(p.clone())),
        [(path, Err(d))] => ProfileEntry::Invalid(Rejected {
            path: (*path).clone(),
            diagnostics: d.clone(),
            sha256: None,
        }),
        _ => ProfileEntry::Invalid(duplicate(name, "profile", files)),
    }
}

/// Decide one request id from the files that share its stem, checking the
/// cross-file rules against the profiles already in `desired`. `None` when
/// no file has that stem.
pub fn request_entry(
    id: &str,
    files: &[FileRef<'_, Arc<Request>>],
    desired: &Desired,
    host: &dyn HostView,
) -> Option<RequestEntry> {
    match files {
        [] => None,
        [(path, Err(d))] => Some(RequestEntry::Invalid(Box::new(Rejected {
            path: (*path).clone(),
            diagnostics: d.clone(),
            sha256: None,
        }))),
        [(path, Ok(r))] => Some(match cross_check(r, desired, host) {
            Ok(()) => RequestEntry::Valid(Arc::clone(r)),
            Err(d) => RequestEntry::Invalid(Box::new(Rejected {
                path: (*path).clone(),
                diagnostics: d,
                sha256: Some(r.spec_sha256.clone()),
            })),
        }),
        _ => Some(RequestEntry::Invalid(Box::new(duplicate(
            id, "request", files,
        )))),
    }
}

/// Build the whole desired state from per-file results (the one-shot path
/// of `agentd validate` and `agentd plan`; the daemon updates entries
/// incrementally with the two functions above).
pub fn assemble(
    profiles: Vec<FileResult<Profile>>,
    requests: Vec<FileResult<Arc<Request>>>,
    host: &dyn HostView,
) -> (Desired, Vec<Diagnostic>) {
    let mut desired = Desired::default();
    for (name, files) in by_stem(&profiles) {
        match profile_entry(&name, &files) {
            ProfileEntry::Valid(p) => {
                desired.profiles.insert(name, *p);
            }
            ProfileEntry::Invalid(r) => {
                desired.invalid_profiles.insert(name, r);
            }
            ProfileEntry::Absent => {}
        }
    }
    for (id, files) in by_stem(&requests) {
        if let Some(e) = request_entry(&id, &files, &desired, host) {
            desired.requests.insert(id, e);
        }
    }
    let diags = desired.diagnostics();
    (desired, diags)
}

fn by_stem<T>(files: &[FileResult<T>]) -> BTreeMap<String, Vec<FileRef<'_, T>>> {
    let mut map: BTreeMap<String, Vec<FileRef<'_, T>>> = BTreeMap::new();
    for (path, result) in files {
        map.entry(stem(path)).or_default().push((path, result));
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| a.0.cmp(b.0));
    }
    map
}

/// Files sharing a stem: every one rejected, each diagnostic naming all of
/// them, plus each file's own problems (so one run shows everything).
fn duplicate<T>(name: &str, kind: &str, files: &[FileRef<'_, T>]) -> Rejected {
    let paths: Vec<String> = files.iter().map(|f| f.0.display().to_string()).collect();
    let mut diagnostics: Vec<Diagnostic> = files
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
        .collect();
    diagnostics.extend(
        files
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .flatten()
            .cloned(),
    );
    Rejected {
        path: files[0].0.clone(),
        diagnostics,
        sha256: None,
    }
}

/// A duration as the files write it: `24h`, `1h30m`, `1m30s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, n) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    out
}

/// Rules of a request that need the profiles: the profile exists, a repo is
/// known, its timeout only shortens the profile's, and an artifact matches its schema when the profile ships one.
/// A request whose profile exists but is invalid stays valid here: the
/// planner holds it back with the profile's own message.
/// The profile whose fire name `id` is, if it has that form.
fn fire_owner(id: &str) -> Option<&str> {
    let cut = id.len().checked_sub(14)?;
    let owner = id.get(..cut)?;
    crate::cron::is_fire_id(owner, id).then_some(owner)
}

fn cross_check(r: &Request, desired: &Desired, host: &dyn HostView) -> Result<(), Vec<Diagnostic>> {
    // Only error paths need the text (to place the diagnostic): read it lazily.
    let at = |key: &str| {
        locate_key(
            &String::from_utf8_lossy(&host.read(&r.path).unwrap_or_default()),
            key,
            0,
        )
    };
    // A fire's name (`<profile>-YYYYMMDDTHHMM`) is the scheduler's: a
    // request that takes one must be that profile's scheduled request, or a
    // request writer could squat the name and stop the fire (issue 13).
    if let Some(owner) = fire_owner(&r.id)
        && (r.profile != owner || r.scheduled_for.is_none())
    {
        return Err(vec![
            Diagnostic::new(
                &r.path,
                at("profile"),
                format!(
                    "request id `{}` is the name of a scheduled fire of profile `{owner}`; only that profile's scheduled requests (with `scheduled_for`) may take it",
                    r.id
                ),
            )
            .hint("rename the file: ids of the form <profile>-YYYYMMDDTHHMM are reserved for the scheduler"),
        ]);
    }
    let profile = match desired.profiles.get(&r.profile) {
        Some(p) => p,
        None if desired.invalid_profiles.contains_key(&r.profile) => return Ok(()),
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
    // A request is less trusted than its profile: it may only name a
    // repository the profile names or allows (issue 13).
    if let Some(repo) = &r.repo
        && !profile.allows_repo(repo)
    {
        let (name, none) = (&profile.name, profile.allowed_repos.is_empty());
        let why = match (&profile.repo, none) {
            (Some(o), true) => format!(
                "differs from profile `{name}`'s repo `{}`, and the profile has no allowed_repos",
                o.as_str()
            ),
            (Some(o), false) => format!(
                "differs from profile `{name}`'s repo `{}` and matches none of its allowed_repos",
                o.as_str()
            ),
            (None, true) => format!("is not allowed: profile `{name}` has no allowed_repos"),
            (None, false) => format!("matches none of profile `{name}`'s allowed_repos"),
        };
        return Err(vec![
            Diagnostic::new(&r.path, at("repo"), format!("repo: `{}` {why}", repo.as_str()))
                .hint(format!(
                    "add a pattern to allowed_repos in profile {} ({}), or remove `repo` from the request",
                    profile.name,
                    profile.path.display()
                )),
        ]);
    }
    if let Some(t) = r.timeout {
        let (limit, whose) = match profile.timeout {
            Some(p) => (p, format!("profile `{}`'s timeout", profile.name)),
            None => (DEFAULT_TIMEOUT, "the default timeout".to_string()),
        };
        if t > limit {
            return Err(vec![
                Diagnostic::new(
                    &r.path,
                    at("timeout"),
                    format!(
                        "timeout {} is longer than {whose} ({}); a request may only shorten it",
                        human_duration(t),
                        human_duration(limit)
                    ),
                )
                .hint("lower the request's `timeout`, or raise the profile's"),
            ]);
        }
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
                    // The first error only: `iter_errors` collects every
                    // one before it yields any, and a 1 MiB artifact of
                    // wrong array items made 200 MiB of them (issue 17).
                    Ok(v) => v.validate(json).err().map(|e| {
                        let at = e.instance_path().to_string();
                        format!(
                            "artifact does not match `{}`: {} {e}",
                            schema_path.display(),
                            if at.is_empty() { "(root)" } else { &at }
                        )
                    }),
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
    Ok(())
}
