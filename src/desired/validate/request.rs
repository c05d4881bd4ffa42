//! One request file, validated into a `Request` (or every problem in it).

use super::*;

/// The folder an artifact must stay below, and its path relative to it:
/// the nearest `requests` folder above it (the desired dir's request
/// folder, whatever it links to), else the request file's own folder.
/// Nothing above that is reachable, through `..` (refused earlier) or
/// through a symlink (refused by [`HostView::read_beneath`]).
fn artifact_base(request_file: &Path, full: &Path) -> (PathBuf, PathBuf) {
    let mut base = request_file.parent().unwrap_or(Path::new("."));
    let mut cur = base;
    while let Some(parent) = cur.parent() {
        if cur.file_name().is_some_and(|n| n == "requests") {
            base = cur;
            break;
        }
        cur = parent;
    }
    let rel = full.strip_prefix(base).unwrap_or(full).to_path_buf();
    (base.to_path_buf(), rel)
}

/// Validate one request file (everything that does not need the profile).
pub fn request(path: &Path, bytes: &[u8], host: &dyn HostView) -> Result<Request, Vec<Diagnostic>> {
    let (text, w) =
        read_text::<RequestFile>(path, bytes).map_err(super::super::egress::explain_request)?;
    let mut s = Sink {
        path,
        text,
        out: Vec::new(),
        keys: Default::default(),
        unlisted: 0,
    };
    let id = stem(path);
    if let Err(p) = rules::request_id(&id) {
        s.out
            .push(Diagnostic::new(path, None, p.0).hint(p.1.unwrap_or_default()));
    }
    if w.profile.is_empty() {
        s.field("profile", "profile is empty", "name the profile to run");
    }
    let repo = w
        .repo
        .as_deref()
        .and_then(|r| rules::repo(r).map_err(|p| s.at("repo", 0, p)).ok());
    let timeout = w
        .timeout
        .as_deref()
        .and_then(|t| rules::duration(t).map_err(|p| s.at("timeout", 0, p)).ok());
    let scheduled_for = w.scheduled_for.as_deref().and_then(|t| {
        t.parse::<jiff::Timestamp>()
            .map_err(|e| {
                s.field(
                    "scheduled_for",
                    format!("scheduled_for `{t}` is not an RFC 3339 time: {e}"),
                    "e.g. 2026-01-31T09:00:00+01:00",
                )
            })
            .ok()
    });
    let given: Vec<&str> = [
        w.work_unit.as_ref().map(|_| "work_unit"),
        w.request.as_ref().map(|_| "request"),
        w.artifact.as_ref().map(|_| "artifact"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut input = Input::None;
    if given.len() > 1 {
        s.field(
            given[1],
            format!("{} are mutually exclusive", given.join(" and ")),
            "a request carries at most one of work_unit, request, artifact",
        );
    } else if let Some(wu) = w.work_unit {
        if wu.len() > MAX_WORK_UNIT_BYTES {
            s.field(
                "work_unit",
                too_big("work_unit", wu.len(), MAX_WORK_UNIT_BYTES),
                "a work unit is an identifier (it becomes $AGENTD_WORK_UNIT); pass data as `request` text or an `artifact`",
            );
        }
        input = Input::WorkUnit(wu);
    } else if let Some(t) = w.request {
        if t.len() > MAX_REQUEST_TEXT_BYTES {
            s.field(
                "request",
                too_big("request", t.len(), MAX_REQUEST_TEXT_BYTES),
                "shorten the text, or pass a larger input as an `artifact` file",
            );
        }
        input = Input::Text(t);
    } else if let Some(a) = w.artifact {
        if !rules::path_component(&a.kind) {
            s.field(
                "type",
                format!("artifact type `{}` is not a plain name", a.kind),
                "use letters, digits, . _ -; it names a folder under /agentd/input",
            );
        }
        let value = match (a.path, a.json) {
            (Some(_), Some(_)) | (None, None) => {
                s.field("artifact", "artifact needs exactly one of `path` and `json`",
                    "`path` names a JSON file (relative to this file's folder), `json` holds it inline");
                None
            }
            (Some(p), None) if !relative_inside(&p) => {
                s.field("path", format!("artifact path `{p}` must be relative to the request file's folder, without `..`"),
                    "put the JSON file next to the request (or in a folder below it)");
                None
            }
            (Some(p), None) => {
                let full = resolve(path, &p);
                let stem = stem(&full);
                let (base, rel) = artifact_base(path, &full);
                match host.read_beneath(&base, &rel, MAX_ARTIFACT_BYTES) {
                    Err(why) => {
                        s.field(
                            "path",
                            format!("artifact file `{}` {why}", full.display()),
                            format!("the artifact must be a regular file below `{}`, reached without leaving it (symlinks included); relative paths start at the request file's folder", base.display()),
                        );
                        None
                    }
                    Ok(bytes) if bytes.len() > MAX_ARTIFACT_BYTES => {
                        s.field(
                            "path",
                            format!(
                                "artifact file `{}` is too large (over {} KiB)",
                                full.display(),
                                MAX_ARTIFACT_BYTES / 1024
                            ),
                            "artifacts are capped; pass large data through the repository or methodology_dir",
                        );
                        None
                    }
                    Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(v) => Some((stem, v)),
                        Err(e) => {
                            s.field(
                                "path",
                                format!(
                                    "artifact file `{}` is not valid JSON: {e}",
                                    full.display()
                                ),
                                "fix the JSON",
                            );
                            None
                        }
                    },
                }
            }
            (None, Some(serde_json::Value::String(t))) => match serde_json::from_str(&t) {
                Ok(v) => Some((id.clone(), v)),
                Err(e) => {
                    s.field(
                        "json",
                        format!("artifact json is not valid JSON: {e}"),
                        "fix the JSON text, or write it as a structured value",
                    );
                    None
                }
            },
            (None, Some(v)) => Some((id.clone(), v)),
        };
        if let Some((stem, json)) = value {
            let size = serde_json::to_vec(&json).map_or(0, |v| v.len());
            if size > MAX_ARTIFACT_BYTES {
                s.field(
                    "artifact",
                    too_big("artifact", size, MAX_ARTIFACT_BYTES),
                    "artifacts are capped; pass large data through the repository or methodology_dir",
                );
            }
            if !rules::path_component(&stem) {
                s.field(
                    "path",
                    format!("artifact file name `{stem}` is not a plain name"),
                    "rename the file: letters, digits, . _ -",
                );
            }
            input = Input::Artifact {
                kind: a.kind,
                stem,
                json,
            };
        }
    }
    if !s.out.is_empty() {
        return Err(s.finish());
    }
    Ok(Request {
        id,
        path: path.to_path_buf(),
        profile: w.profile,
        repo,
        input,
        timeout,
        scheduled_for,
        spec_sha256: sha256_hex(bytes),
    })
}
