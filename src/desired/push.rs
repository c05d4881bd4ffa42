//! A profile's `push` and `results_max_bytes` (issue 20): where the
//! agent's new commits go, and how much of what it changed a record keeps.
//!
//! PURE. The branch template's placeholders (`{profile}`, `{session_id}`,
//! `{request}`, `{work_unit}`) are filled at session start, each value
//! mapped to `[A-Za-z0-9._-]` (anything else becomes `-`), so a request id
//! or work unit can never steer the push to another ref namespace. The
//! token takes every secret source form but a Podman secret (git uses it
//! on the host, and Podman cannot hand a secret's value back). A push goes
//! over https with the token, or to a local repository without one; never
//! over plain http.

use super::model::Repo;
use super::rules::Problem;
use super::sources;
use super::wire::PushWire;
use crate::observed::Outcome;

pub use super::model::DEFAULT_RESULTS_MAX_BYTES;

/// Largest `results_max_bytes` accepted (1 TiB): a record is not a backup.
pub const MAX_RESULTS_MAX_BYTES: u64 = 1 << 40;

/// `push.branch` when a profile does not set it.
pub const DEFAULT_PUSH_BRANCH: &str = "agentd/{profile}/{session_id}";

/// The placeholders a branch template may use.
pub const PLACEHOLDERS: [&str; 4] = ["profile", "session_id", "request", "work_unit"];

pub use super::model::Push;

/// The values a branch template is filled with.
#[derive(Debug, Clone, Copy)]
pub struct BranchVars<'a> {
    pub profile: &'a str,
    pub session_id: &'a str,
    pub request: &'a str,
    /// `none` when the request has no work unit.
    pub work_unit: Option<&'a str>,
}

/// `value` with every character outside `[A-Za-z0-9._-]` replaced by `-`.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The template's literal pieces and placeholder names, or the first
/// problem (an unknown placeholder, an unbalanced brace).
fn pieces(template: &str) -> Result<Vec<(bool, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a `}` without its `{`".into());
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("a `{` without its `}`".into());
        };
        let name = &rest[open + 1..open + close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!("unknown placeholder `{{{name}}}`"));
        }
        out.push((false, &rest[..open]));
        out.push((true, name));
        rest = &rest[open + close + 1..];
    }
    out.push((false, rest));
    Ok(out)
}

/// The branch a template names for one session (not yet checked as a ref).
pub fn expand_branch(template: &str, vars: &BranchVars<'_>) -> String {
    let Ok(parts) = pieces(template) else {
        return template.to_string();
    };
    parts
        .into_iter()
        .map(|(placeholder, text)| {
            if !placeholder {
                return text.to_string();
            }
            sanitize(match text {
                "profile" => vars.profile,
                "session_id" => vars.session_id,
                "request" => vars.request,
                _ => vars.work_unit.unwrap_or("none"),
            })
        })
        .collect()
}

/// Whether `name` (a full ref such as `refs/heads/x`) passes git's
/// `check-ref-format` rules.
pub fn valid_ref_name(name: &str) -> bool {
    if name.is_empty()
        || name == "@"
        || name.ends_with('/')
        || name.ends_with('.')
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || !name.contains('/')
    {
        return false;
    }
    let bad_char = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    if name.chars().any(bad_char) {
        return false;
    }
    name.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

/// Validate `push` against the profile's repository. Problems come with
/// the key they are about (`branch`, `when`, `token`, or `push` itself).
pub fn validate(w: &PushWire, repo: Option<&Repo>) -> Result<Push, Vec<(&'static str, Problem)>> {
    let mut problems = Vec::new();
    let branch = w
        .branch
        .clone()
        .unwrap_or_else(|| DEFAULT_PUSH_BRANCH.to_string());
    let sample = BranchVars {
        profile: "profile",
        session_id: "0123456789abcdef",
        request: "request",
        work_unit: None,
    };
    match pieces(&branch) {
        Err(why) => problems.push((
            "branch",
            (
                format!("push.branch `{branch}`: {why}"),
                Some(format!("placeholders are {{{}}}", PLACEHOLDERS.join("}, {"))),
            ),
        )),
        Ok(_) if branch.starts_with("refs/") => problems.push((
            "branch",
            (
                format!("push.branch `{branch}` is a branch name, not a ref"),
                Some("drop `refs/heads/`: agentd pushes to refs/heads/<branch>".into()),
            ),
        )),
        Ok(_) if !valid_ref_name(&format!("refs/heads/{}", expand_branch(&branch, &sample))) => {
            problems.push((
                "branch",
                (
                    format!("push.branch `{branch}` does not make a valid branch name"),
                    Some("use letters, digits, `/`, `.`, `_`, `-` and placeholders; no `..`, no component starting with `.` or ending in `.lock`".into()),
                ),
            ))
        }
        Ok(_) => {}
    }
    let mut when = Vec::new();
    match &w.when {
        None => when.push(Outcome::Success),
        Some(list) if list.is_empty() => problems.push((
            "when",
            (
                "push.when is empty: nothing would ever be pushed".into(),
                Some("list outcomes such as [\"success\"], or remove `push`".into()),
            ),
        )),
        Some(list) => {
            for label in list {
                match serde_json::from_value::<Outcome>(serde_json::Value::String(label.clone())) {
                    Ok(Outcome::StartFailed) => problems.push((
                        "when",
                        (
                            "push.when: `start_failed` never has commits to push (no session ran)".into(),
                            Some("remove it".into()),
                        ),
                    )),
                    Ok(o) if !when.contains(&o) => when.push(o),
                    Ok(_) => {}
                    Err(_) => problems.push((
                        "when",
                        (
                            format!("push.when: `{label}` is not an outcome"),
                            Some("use outcome labels such as success, blocked, nothing_ready, work_failed, timed_out".into()),
                        ),
                    )),
                }
            }
        }
    }
    let token = w.token.as_ref().and_then(|t| {
        if t.podman_secret.is_some()
            && t.source.is_none()
            && t.systemd_credential.is_none()
            && t.file.is_none()
        {
            problems.push((
                "token",
                (
                    "push.token cannot come from a Podman secret".into(),
                    Some("git uses the token on the host, and Podman (4.3) cannot hand a secret's value back to agentd; use systemd_credential, file or source".into()),
                ),
            ));
            return None;
        }
        let g = sources::Given {
            source: t.source.as_deref(),
            systemd_credential: t.systemd_credential.as_deref(),
            podman_secret: t.podman_secret.as_deref(),
            file: t.file.as_deref(),
        };
        sources::source("push.token", g, true)
            .map_err(|ps| problems.extend(ps.into_iter().map(|(_, p)| ("token", p))))
            .ok()
    });
    if let Some(Repo::Url(u)) = repo {
        if u.starts_with("http://") {
            problems.push((
                "push",
                (
                    format!("push would send the agent's commits (and the token) over plain http:// (repo `{u}`)"),
                    Some("use an https:// repo URL, or remove `push`".into()),
                ),
            ));
        } else if u.starts_with("https://") && w.token.is_none() {
            problems.push((
                "push",
                (
                    format!("push to `{u}` needs push.token"),
                    Some(
                        "add `token = { systemd_credential = \"...\" }` (or file, source) to push"
                            .into(),
                    ),
                ),
            ));
        } else if !u.starts_with("https://") && !u.starts_with("file://") {
            problems.push((
                "push",
                (
                    format!("push goes only to https:// or local repositories, not `{u}`"),
                    Some("use the repository's https:// URL, or remove `push`".into()),
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(Push {
            branch,
            when,
            token,
        })
    } else {
        Err(problems)
    }
}

/// Validate `results_max_bytes`.
pub fn results_max_bytes(given: Option<u64>) -> Result<u64, Problem> {
    match given {
        None => Ok(DEFAULT_RESULTS_MAX_BYTES),
        Some(0) => Err((
            "results_max_bytes must be at least 1".into(),
            Some("omit it for the default of 100 MiB (104857600)".into()),
        )),
        Some(n) if n > MAX_RESULTS_MAX_BYTES => Err((
            format!("results_max_bytes {n} is over the limit of {MAX_RESULTS_MAX_BYTES} (1 TiB)"),
            Some("a record keeps what the agent changed, not a repository's history".into()),
        )),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::SecretSource;

    fn vars<'a>(request: &'a str, work_unit: Option<&'a str>) -> BranchVars<'a> {
        BranchVars {
            profile: "rev",
            session_id: "00ff00ff00ff00ff",
            request,
            work_unit,
        }
    }

    #[test]
    fn placeholders_are_filled_and_mapped_to_a_safe_alphabet_issue_20() {
        assert_eq!(
            expand_branch(DEFAULT_PUSH_BRANCH, &vars("r", None)),
            "agentd/rev/00ff00ff00ff00ff"
        );
        assert_eq!(
            expand_branch(
                "x/{request}/{work_unit}",
                &vars("a b/../c", Some("PR#12:é"))
            ),
            "x/a-b-..-c/PR-12--"
        );
        assert_eq!(expand_branch("{work_unit}", &vars("r", None)), "none");
        // The mapped values can still make an invalid ref; the push then
        // says so (checked where it is used).
        assert!(!valid_ref_name("refs/heads/x/a-b-..-c"));
    }

    #[test]
    fn ref_names_follow_check_ref_format_issue_20() {
        for ok in [
            "refs/heads/main",
            "refs/heads/agentd/p/0a",
            "refs/heads/a-b_c.d",
        ] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "refs/heads/a..b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/a b",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a*",
            "refs/heads/a[",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            "refs/heads/",
            "refs/heads//a",
            "refs/heads/a.",
            "main",
            "@",
            "refs/heads/a\u{7f}",
        ] {
            assert!(!valid_ref_name(bad), "{bad}");
        }
    }

    fn wire(branch: Option<&str>, when: Option<&[&str]>, token: bool) -> PushWire {
        PushWire {
            branch: branch.map(str::to_string),
            when: when.map(|w| w.iter().map(|s| (*s).to_string()).collect()),
            token: token.then(|| super::super::wire::TokenSourceWire {
                source: Some("PUSH_TOKEN".into()),
                systemd_credential: None,
                podman_secret: None,
                file: None,
            }),
        }
    }

    #[test]
    fn push_defaults_and_refusals_issue_20() {
        let https = Repo::Url("https://git.example.com/a.git".into());
        let p = validate(&wire(None, None, true), Some(&https)).expect("valid");
        assert_eq!(p.branch, DEFAULT_PUSH_BRANCH);
        assert_eq!(p.when, vec![Outcome::Success]);
        assert_eq!(p.token, Some(SecretSource::Env("PUSH_TOKEN".into())));
        let local = Repo::Local("/srv/git/a".into());
        assert!(
            validate(
                &wire(None, Some(&["success", "blocked"]), false),
                Some(&local)
            )
            .is_ok()
        );

        let msgs = |w: PushWire, repo: &Repo| -> Vec<String> {
            validate(&w, Some(repo))
                .expect_err("invalid")
                .into_iter()
                .map(|(k, p)| format!("{k}: {}", p.0))
                .collect()
        };
        assert_eq!(
            msgs(wire(None, None, false), &https),
            ["push: push to `https://git.example.com/a.git` needs push.token"]
        );
        let http = Repo::Url("http://git.example.com/a.git".into());
        assert!(msgs(wire(None, None, true), &http)[0].contains("plain http://"));
        let git = Repo::Url("git://git.example.com/a.git".into());
        assert!(msgs(wire(None, None, false), &git)[0].contains("only to https://"));
        assert_eq!(
            msgs(wire(Some("x/{nope}"), None, false), &local),
            ["branch: push.branch `x/{nope}`: unknown placeholder `{nope}`"]
        );
        assert!(msgs(wire(Some("x/{profile"), None, false), &local)[0].contains("without its `}`"));
        assert!(msgs(wire(Some("refs/heads/x"), None, false), &local)[0].contains("not a ref"));
        assert!(msgs(wire(Some("a..b"), None, false), &local)[0].contains("valid branch name"));
        assert!(msgs(wire(None, Some(&[]), false), &local)[0].contains("is empty"));
        assert!(
            msgs(wire(None, Some(&["sucess"]), false), &local)[0]
                .contains("`sucess` is not an outcome")
        );
        assert!(
            msgs(wire(None, Some(&["start_failed"]), false), &local)[0].contains("start_failed")
        );
        let mut podman = wire(None, None, false);
        podman.token = Some(super::super::wire::TokenSourceWire {
            source: None,
            systemd_credential: None,
            podman_secret: Some("tok".into()),
            file: None,
        });
        assert!(msgs(podman, &https)[0].contains("cannot come from a Podman secret"));
    }

    #[test]
    fn results_max_bytes_has_a_default_and_bounds_issue_20() {
        assert_eq!(results_max_bytes(None), Ok(DEFAULT_RESULTS_MAX_BYTES));
        assert_eq!(results_max_bytes(Some(4096)), Ok(4096));
        assert!(results_max_bytes(Some(0)).is_err());
        assert!(results_max_bytes(Some(MAX_RESULTS_MAX_BYTES + 1)).is_err());
    }
}
