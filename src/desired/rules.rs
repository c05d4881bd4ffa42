//! Small pure checks shared by profile and request validation: names,
//! durations, repository URLs, environment variable names, mount paths.
//! Each returns `Err(message)` worded for an operator, or `Err((message, hint))`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::model::Repo;
use super::url_path;

/// Longest repo string or pattern accepted, in bytes.
pub const MAX_REPO_LEN: usize = 4096;

pub use super::diag::Problem;

fn problem(msg: impl Into<String>, hint: impl Into<String>) -> Problem {
    (msg.into(), Some(hint.into()))
}

/// `^[a-z_][a-z0-9_-]{0,31}$`, not `root`/`nobody`: also a Unix user name.
pub fn profile_name(name: &str) -> Result<(), Problem> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'));
    if !ok {
        return Err(problem(
            format!("invalid profile name `{name}`"),
            "a profile name is also the session's Unix user name: start with a-z or _, then up to 31 of a-z 0-9 _ -",
        ));
    }
    if name == "root" || name == "nobody" {
        return Err(problem(
            format!("profile name `{name}` is reserved"),
            "it is the in-container user name; pick another file name",
        ));
    }
    Ok(())
}

/// `^[a-z0-9][a-z0-9._-]{0,127}$`, or the name the scheduler gives a fire,
/// `<profile>-<YYYYMMDDTHHMM>` (docs/desired-dir.md, "Scheduled profiles").
/// Those fire names carry an upper-case `T` (and a profile may start with
/// `_`), which the general pattern of "Names" would reject; the fire form is
/// accepted as the one exception so both rules hold.
pub fn request_id(id: &str) -> Result<(), Problem> {
    let mut chars = id.chars();
    let ok = matches!(chars.next(), Some('a'..='z' | '0'..='9'))
        && id.len() <= 128
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'));
    let fire = id.len() > 14
        && id.is_char_boundary(id.len() - 14)
        && profile_name(&id[..id.len() - 14]).is_ok()
        && crate::cron::is_fire_id(&id[..id.len() - 14], id);
    if ok || fire {
        Ok(())
    } else {
        Err(problem(
            format!("invalid request id `{id}` (the file name)"),
            "rename the file: start with a-z or 0-9, then up to 127 of a-z 0-9 . _ -",
        ))
    }
}

/// `90s`, `30m`, `2h`, `1d`, or concatenations such as `1h30m`; never zero.
pub fn duration(text: &str) -> Result<Duration, Problem> {
    let bad = || {
        problem(
            format!("invalid duration `{text}`"),
            "write a number with a unit: `90s`, `30m`, `2h` (units s, m, h, d; may be combined as `1h30m`)",
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    if total == 0 {
        return Err(problem(
            format!("duration `{text}` is zero"),
            "omit the field for no limit",
        ));
    }
    Ok(Duration::from_secs(total))
}

/// A repository: allowed URL scheme without embedded credentials, or an
/// absolute path. The message never repeats what stood before `@`.
pub fn repo(text: &str) -> Result<Repo, Problem> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(problem(
            "repo contains whitespace or control characters",
            "write the URL or path without spaces",
        ));
    }
    if text.len() > MAX_REPO_LEN {
        return Err(problem(
            format!("repo is longer than {} bytes", MAX_REPO_LEN),
            "name the repository by a shorter URL or path",
        ));
    }
    if text.starts_with('/') {
        if text.contains('%') {
            return Err(problem(
                format!("local path `{text}` contains `%`"),
                "a local path is taken literally, as a `file://` URL is (neither is percent-decoded): write the path plainly",
            ));
        }
        url_path::check(text, text, false)?;
        return Ok(Repo::Local(PathBuf::from(text)));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(problem(
            format!("repo `{text}` is neither a URL nor an absolute path"),
            "use https://, http://, git://, file:// or an absolute local path",
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if let Some(at) = authority.rfind('@') {
        let redacted = format!("{scheme}://***@{}", &rest[at + 1..]);
        return Err(problem(
            format!("repo URL embeds credentials ({redacted})"),
            "remove them from the URL and name where the token is kept in `repo_token_source` or `repo_token`",
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(problem(
            format!("repo URL `{text}` has a query or fragment"),
            "name the repository by scheme, host and path only",
        ));
    }
    if rest.contains('\\') {
        return Err(problem(
            format!("repo URL `{text}` contains a backslash"),
            "some servers read `\\` as `/`; write the URL with `/` only",
        ));
    }
    if authority.contains('%') {
        return Err(problem(
            format!("repo URL `{text}` has a percent escape in its host"),
            "write the host name plainly",
        ));
    }
    // The host is checked as the first segment (it may not be `..` either).
    url_path::check(rest, text, true)?;
    match scheme {
        "https" | "http" | "git" => {
            if authority.is_empty() {
                return Err(problem(
                    format!("repo URL `{text}` has no host"),
                    "write it as scheme://host/path",
                ));
            }
            Ok(Repo::Url(text.to_string()))
        }
        "file" => {
            if rest.contains('%') {
                return Err(problem(
                    format!("file URL `{text}` contains a percent escape"),
                    "write the path plainly, or as an absolute path without `file://`",
                ));
            }
            if !rest.starts_with('/') {
                return Err(problem(
                    format!("file URL `{text}` must name an absolute path"),
                    "write it as file:///absolute/path",
                ));
            }
            Ok(Repo::Url(text.to_string()))
        }
        other => Err(problem(
            format!("repo URL scheme `{other}` is not supported"),
            "use https://, http://, git://, file:// or an absolute local path",
        )),
    }
}

/// A POSIX environment variable name.
pub fn env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names the daemon sets itself; a profile may not set them.
pub fn reserved_env(name: &str) -> bool {
    // `agentd_*` in any case: the session's credentials file uses such
    // shell variables itself while it reads Podman secrets.
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("agentd_"))
        || matches!(name, "HOME" | "USER" | "LOGNAME")
}

/// A lexically clean absolute path: starts at `/`, no `.` or `..` parts.
///
/// Commas and control characters are refused too: Podman's `--mount`
/// option is comma-separated, so such a path cannot be passed safely.
pub fn clean_absolute(text: &str) -> Option<PathBuf> {
    let p = Path::new(text);
    if !p.is_absolute() || text.contains(',') || text.chars().any(char::is_control) {
        return None;
    }
    let clean = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    clean.then(|| p.components().collect())
}

/// Why a mount target is reserved for agentd, if it is.
pub fn reserved_target(target: &Path, profile: &str) -> Option<String> {
    let home = PathBuf::from(format!("/home/{profile}"));
    let below_forbidden = [
        PathBuf::from("/agentd"),
        home.join("repo"),
        home.join(".agentd"),
    ];
    for r in &below_forbidden {
        if target.starts_with(r) {
            return Some(format!(
                "`{}` and below are reserved for agentd",
                r.display()
            ));
        }
    }
    for r in below_forbidden.iter().chain([&home]) {
        if r.starts_with(target) {
            return Some(format!(
                "it would cover `{}`, which agentd provides",
                r.display()
            ));
        }
    }
    None
}

/// Podman memory syntax: a number with an optional b/k/m/g unit.
pub fn memory(text: &str) -> bool {
    let t = text.trim_end_matches(['b', 'k', 'm', 'g', 'B', 'K', 'M', 'G']);
    let unit_len = text.len() - t.len();
    unit_len <= 1 && !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) && t != "0"
}

/// A Podman network name (no leading `-`, which podman would read as a flag).
pub fn network_name(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && text.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An image reference podman will read as an image, not a flag.
pub fn image_ref(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with('-')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A safe single path component for artifact types and file stems.
pub fn path_component(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(duration("30m").ok(), Some(Duration::from_secs(1800)));
        assert_eq!(duration("1h30m").ok(), Some(Duration::from_secs(5400)));
        for bad in [
            "",
            "10",
            "m",
            "1x",
            "0s",
            "-5s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repos() {
        assert!(matches!(repo("/srv/git/x"), Ok(Repo::Local(_))));
        assert!(repo("file:///srv/x").is_ok());
        assert!(repo("https://github.com/a/b").is_ok());
        assert!(repo("git://h/x").is_ok());
        let (msg, _) = repo("https://alice:s3cret@github.com/a/b").unwrap_err();
        assert!(!msg.contains("s3cret") && !msg.contains("alice"), "{msg}");
        assert!(repo("https://tok@github.com/a").is_err());
        assert!(repo("ssh://h/x").is_err());
        assert!(repo("relative/x").is_err());
        assert!(repo("file://relative").is_err());
        assert!(repo("https:///nohost").is_err());
    }

    /// Issue 17, item 2: what a server that percent-decodes and normalises
    /// the path would read as another folder is refused, with the reason.
    #[test]
    fn escapes_that_decode_to_a_separator_or_a_dot_segment_are_refused_issue_17() {
        let refused = [
            ("https://h/team/%2e%2e%2fother%2fsecret.git", "separator"),
            ("https://h/team/..%2fother", "separator"),
            ("https://h/team/%2E%2E%2Fother", "separator"),
            ("https://h/team/x%2f..%2f..%2fother", "separator"),
            ("https://h/team/%2e%2e%5cother", "separator"),
            ("https://h/team/..%5Cother", "separator"),
            ("https://h/team/%2e%2e", "dot"),
            ("https://h/team/%2e", "dot"),
            ("https://h/team/.%2e/other", "dot"),
            ("https://h/team/..;x/other", "dot"),
            ("git://h/team/%2e%2e/x", "dot"),
            ("https://h/team/%00x", "control"),
            ("https://h/team/a%0ab", "control"),
            ("https://h/team/%252e%252e/x", "`%`"),
            ("https://h/team/%zz", "two hex digits"),
            ("https://h/team/x%2", "two hex digits"),
            ("https://h/team/%ff", "UTF-8"),
            ("https://h/team\\..\\other", "backslash"),
            ("https://h%2eevil.org/team/x", "host"),
            ("https://h/team//x", "empty"),
            ("/srv/forks//", "empty"),
            ("/srv//x", "empty"),
            ("/srv/%2e%2e/x", "`%`"),
        ];
        for (bad, why) in refused {
            let (msg, hint) = repo(bad).expect_err(bad);
            let all = format!("{msg}; {}", hint.unwrap_or_default());
            assert!(all.contains(why), "{bad}: {all}");
        }
        // Escapes of ordinary characters stay legitimate.
        for good in [
            "https://h/team/my%20repo.git",
            "https://h/team/caf%C3%A9.git",
            "https://h/team/a%2Bb",
            "https://h/team/.git",
            "https://h/team/x.git/",
            "https://h",
            "https://h/",
            "/srv/git/x/",
            "/",
        ] {
            assert!(repo(good).is_ok(), "{good}: {:?}", repo(good));
        }
    }

    #[test]
    fn mounts_reserved() {
        let r = |t: &str| reserved_target(Path::new(t), "bob");
        assert!(r("/agentd").is_some());
        assert!(r("/agentd/x").is_some());
        assert!(r("/home/bob").is_some());
        assert!(r("/home").is_some());
        assert!(r("/").is_some());
        assert!(r("/home/bob/repo/x").is_some());
        assert!(r("/home/bob/.agentd/audit").is_some());
        assert!(r("/home/bob/.cache").is_none());
        assert!(r("/data").is_none());
        assert!(r("/agentdata").is_none());
    }

    #[test]
    fn names() {
        assert!(profile_name("site-builder").is_ok());
        assert!(profile_name("_x").is_ok());
        for bad in ["Site", "1abc", "root", "nobody", "", &"a".repeat(33)] {
            assert!(profile_name(bad).is_err(), "{bad}");
        }
        assert!(request_id("fix.123_a-b").is_ok());
        assert!(request_id("nightly-20261101T0130").is_ok());
        assert!(request_id("_x-20261101T0130").is_ok());
        assert!(request_id("nightly-20261101T013").is_err());
        assert!(request_id("Nightly-20261101T0130").is_err());
        for bad in ["", ".x", "A", "a b", &"a".repeat(129)] {
            assert!(request_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_syntaxes() {
        assert!(memory("512m") && memory("2G") && memory("1024"));
        assert!(!memory("lots") && !memory("") && !memory("1mb") && !memory("0"));
        assert!(network_name("my-net") && !network_name("-x") && !network_name(""));
        assert!(env_name("GH_TOKEN") && !env_name("1X") && !env_name("A-B"));
        assert!(clean_absolute("/a/b").is_some() && clean_absolute("/a/../b").is_none());
        assert!(clean_absolute("a/b").is_none());
        assert!(clean_absolute("/a,b").is_none() && clean_absolute("/a\nb").is_none());
    }
}
