//! Which repositories a profile lets a session clone, and which of them get
//! the profile's clone token (issue 13; docs/desired-dir.md and
//! docs/security.md, "Repositories a request may name").
//!
//! A request is less trusted than its profile: its `repo` must be the
//! profile's own `repo` or match one of the profile's `allowed_repos`
//! patterns. Both sides are compared in one normalized form, so a local path
//! and the `file://` URL of the same path are the same repository, a host
//! name's case does not matter, and a URL's path is compared percent-decoded,
//! as the server reads it (issue 17): `team/my%20repo` is `team/my repo`.
//! `rules::repo` has already refused what would make the comparison lie:
//! dot segments (`..` would climb out of a pattern's folder), escapes that
//! decode to a separator or a dot segment (`%2e%2e%2f`, see `url_path`),
//! empty segments, percent escapes in local paths and `file://` URLs,
//! queries and fragments.
//!
//! Patterns: `*` matches one or more characters within one path segment
//! (not `/`), `**` one or more whole segments; everything else is literal,
//! an escaped `%2a` too. Matching is on bytes, in O(pattern × repo) time,
//! and both lengths are capped by validation.
//!
//! The clone itself (`execute/clone.rs`) uses the URL as written, and keys
//! its mirror by it: two spellings of one decoded path are two mirrors of
//! what the server serves for each, never one mirror shared between them.

use super::model::{Profile, Repo, RepoPattern, Tok};
use super::rules::{self, Problem};
use super::url_path;

pub use super::rules::MAX_REPO_LEN;

impl RepoPattern {
    /// Whether `repo` is matched by this pattern.
    pub fn matches(&self, repo: &Repo) -> bool {
        glob(&self.toks, normalize(repo).as_bytes())
    }
}

/// Parse one `allowed_repos` entry. It must read as a repository once its
/// wildcards are filled in, and must start with a literal scheme or `/`, so
/// a pattern never spans kinds of repository (`**` alone is refused).
pub fn pattern(text: &str) -> Result<RepoPattern, Problem> {
    if text.len() > MAX_REPO_LEN {
        return Err((
            format!("pattern is longer than {MAX_REPO_LEN} bytes"),
            Some("shorten it; `**` matches across folders".into()),
        ));
    }
    if text.starts_with('*') || text.split_once("://").is_some_and(|(s, _)| s.contains('*')) {
        return Err((
            format!("pattern `{text}` must start with a scheme (`https://`) or `/`"),
            Some(
                "wildcards may stand only after the scheme, e.g. `https://git.example.com/team/*`"
                    .into(),
            ),
        ));
    }
    double_star_placement(text)?;
    // Filled in, the pattern must be a valid repository (no credentials, a
    // supported scheme, a host, no dot segments, no escape that decodes to
    // a separator).
    let filled = text.replace('*', "x");
    let repo = rules::repo(&filled).map_err(|(m, h)| (format!("pattern `{text}`: {m}"), h))?;
    // Normalize the pattern the way the repo would be, keeping the wildcards
    // and the escapes (decoded by `tokens`, so an escape is never a
    // wildcard): normalization only lower-cases the scheme and authority
    // and trims, so it maps the filled-in pattern and the pattern position
    // for position, except for the `file://` prefix, which is dropped.
    let norm = match repo {
        Repo::Local(_) => trim_slash(text).to_string(),
        Repo::Url(_) if text.starts_with("file://") => {
            trim_slash(&text["file://".len()..]).to_string()
        }
        Repo::Url(_) => normalize_url(text, false),
    };
    Ok(RepoPattern {
        text: text.to_string(),
        toks: tokens(&norm),
    })
}

/// `**` only as a whole path segment: in a host name it would reach across
/// into the path (`https://git**.example.com/x` would match any host), and
/// within a segment it would not be "whole segments".
fn double_star_placement(text: &str) -> Result<(), Problem> {
    let path = match text.split_once("://") {
        Some((_, rest)) => {
            let authority = rest.split('/').next().unwrap_or("");
            if authority.contains("**") {
                return Err(double_star(text));
            }
            &rest[authority.len()..]
        }
        None => text,
    };
    if path
        .split('/')
        .any(|seg| seg.contains("**") && seg.bytes().any(|c| c != b'*'))
    {
        return Err(double_star(text));
    }
    Ok(())
}

fn double_star(text: &str) -> Problem {
    (
        format!("pattern `{text}`: `**` must be a whole path segment"),
        Some("write `**` between slashes (`https://git.example.com/team/**`, `/srv/**/x.git`); within a segment or a host name, use `*`".into()),
    )
}

/// The form repositories are compared in: a local path or `file://` URL as
/// its absolute path, a remote URL with its scheme and authority lower-cased
/// and its path percent-decoded; a trailing `/` dropped in all.
pub fn normalize(repo: &Repo) -> String {
    match repo {
        Repo::Local(p) => trim_slash(&p.to_string_lossy()).to_string(),
        Repo::Url(u) => match u.strip_prefix("file://") {
            Some(path) => trim_slash(path).to_string(),
            None => normalize_url(u, true),
        },
    }
}

fn trim_slash(s: &str) -> &str {
    match s.strip_suffix('/') {
        Some(t) if !t.is_empty() => t,
        _ => s,
    }
}

fn normalize_url(u: &str, decode: bool) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return trim_slash(u).to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = trim_slash(path);
    let path = if decode {
        url_path::decode_lossy(path)
    } else {
        path.to_string()
    };
    format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    )
}

/// A normalized pattern as tokens: `*` within a segment, `**` across
/// segments, `%XX` the byte it escapes, everything else literal.
fn tokens(pattern: &str) -> Vec<Tok> {
    let p = pattern.as_bytes();
    let mut toks = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                // Any run of stars of length two or more is one `**`.
                while p.get(i) == Some(&b'*') {
                    i += 1;
                }
                toks.push(Tok::DoubleStar);
                continue;
            }
            b'*' => toks.push(Tok::Star),
            b'%' => {
                if let Some(b) = p
                    .get(i + 1..i + 3)
                    .and_then(|h| url_path::hex_pair(h[0], h[1]))
                {
                    toks.push(Tok::Lit(b));
                    i += 3;
                    continue;
                }
                toks.push(Tok::Lit(b'%'));
            }
            c => toks.push(Tok::Lit(c)),
        }
        i += 1;
    }
    toks
}

/// Whether `toks` match all of `text`.
fn glob(toks: &[Tok], text: &[u8]) -> bool {
    // ok[j]: the tokens so far match text[..j].
    let mut ok = vec![false; text.len() + 1];
    ok[0] = true;
    for &t in toks {
        let mut next = vec![false; text.len() + 1];
        match t {
            Tok::Lit(c) => {
                for j in 0..text.len() {
                    next[j + 1] = ok[j] && text[j] == c;
                }
            }
            Tok::Star | Tok::DoubleStar => {
                // At least one byte: the wildcard either starts at j or
                // continues a match that already took bytes.
                let across = t == Tok::DoubleStar;
                for j in 0..text.len() {
                    next[j + 1] = (ok[j] || next[j]) && (across || text[j] != b'/');
                }
            }
        }
        ok = next;
    }
    ok[text.len()]
}

impl Profile {
    /// Whether a session of this profile may clone `repo`: the profile's own
    /// repository, or one its `allowed_repos` match.
    pub fn allows_repo(&self, repo: &Repo) -> bool {
        let own = self
            .repo
            .as_ref()
            .is_some_and(|r| normalize(r) == normalize(repo));
        own || self.allowed_repos.iter().any(|p| p.matches(repo))
    }

    /// Whether the clone of `repo` gets the profile's token: the profile has
    /// one, the repo is one the profile allows, and it is reached over
    /// `https://` (the token never travels in clear text; other schemes have
    /// no use for it).
    pub fn token_goes_to(&self, repo: &Repo) -> bool {
        self.repo_token.is_some()
            && matches!(repo, Repo::Url(u) if u.starts_with("https://"))
            && self.allows_repo(repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> Repo {
        rules::repo(s).expect("valid repo")
    }

    fn profile(own: Option<&str>, patterns: &[&str]) -> Profile {
        let mut p = Profile::minimal("p", "img", &["x"]);
        p.repo = own.map(repo);
        p.allowed_repos = patterns
            .iter()
            .map(|t| pattern(t).expect("valid pattern"))
            .collect();
        p
    }

    #[test]
    fn local_paths_and_file_urls_are_the_same_repository() {
        assert_eq!(normalize(&repo("/srv/git/a")), "/srv/git/a");
        assert_eq!(normalize(&repo("file:///srv/git/a/")), "/srv/git/a");
        let p = profile(Some("file:///srv/git/a"), &[]);
        assert!(p.allows_repo(&repo("/srv/git/a")));
        assert!(p.allows_repo(&repo("/srv/git/a/")));
        assert!(!p.allows_repo(&repo("/srv/git/ab")));
        let p = profile(None, &["file:///srv/git/*"]);
        assert!(p.allows_repo(&repo("/srv/git/b")));
        let p = profile(None, &["/srv/git/*"]);
        assert!(p.allows_repo(&repo("file:///srv/git/b")));
    }

    #[test]
    fn single_star_stays_within_a_segment_double_star_crosses() {
        let p = profile(None, &["https://git.example.com/team/*"]);
        assert!(p.allows_repo(&repo("https://git.example.com/team/site.git")));
        assert!(p.allows_repo(&repo("https://GIT.Example.com/team/site.git")));
        assert!(!p.allows_repo(&repo("https://git.example.com/team/a/b")));
        assert!(!p.allows_repo(&repo("https://git.example.com/team")));
        assert!(!p.allows_repo(&repo("https://git.example.com/other/x")));
        assert!(!p.allows_repo(&repo("http://git.example.com/team/x")));
        assert!(!p.allows_repo(&repo("https://git.example.com.evil.org/team/x")));
        let p = profile(None, &["https://git.example.com/team/**"]);
        assert!(p.allows_repo(&repo("https://git.example.com/team/a/b/c.git")));
        assert!(!p.allows_repo(&repo("https://git.example.com/teams/a")));
        let p = profile(None, &["https://*.example.com/*/x.git"]);
        assert!(p.allows_repo(&repo("https://git.example.com/a/x.git")));
        assert!(!p.allows_repo(&repo("https://example.com/a/x.git")));
    }

    #[test]
    fn without_patterns_only_the_profiles_own_repo_is_allowed() {
        let p = profile(Some("https://example.com/r.git"), &[]);
        assert!(p.allows_repo(&repo("https://example.com/r.git")));
        assert!(p.allows_repo(&repo("https://Example.com/r.git/")));
        assert!(!p.allows_repo(&repo("https://example.com/r2.git")));
        assert!(!p.allows_repo(&repo("/etc")));
        assert!(!profile(None, &[]).allows_repo(&repo("/srv/x")));
    }

    #[test]
    fn dot_segments_cannot_climb_out_of_a_pattern() {
        assert!(rules::repo("/srv/git/../../root/.ssh").is_err());
        assert!(rules::repo("file:///srv/git/./x").is_err());
        assert!(rules::repo("https://h/team/%2e%2E/other").is_err());
        assert!(rules::repo("https://h/team/x?a=b").is_err());
        assert!(rules::repo("file:///srv/git/%61").is_err());
    }

    #[test]
    fn the_token_goes_only_to_allowed_https_repositories() {
        let mut p = profile(
            Some("https://git.example.com/a.git"),
            &[
                "https://git.example.com/team/*",
                "http://mirror.example.com/*",
                "/srv/*",
            ],
        );
        p.repo_token = Some(crate::desired::SecretSource::Env("TOK".into()));
        assert!(p.token_goes_to(&repo("https://git.example.com/a.git")));
        assert!(p.token_goes_to(&repo("https://git.example.com/team/b")));
        assert!(!p.token_goes_to(&repo("http://mirror.example.com/b")));
        assert!(!p.token_goes_to(&repo("https://git.example.com/b.git")));
        assert!(!p.token_goes_to(&repo("/srv/x")));
        // Every form of the token follows the same rule (issue 11).
        p.repo_token = Some(crate::desired::SecretSource::File("/etc/agentd/tok".into()));
        assert!(p.token_goes_to(&repo("https://git.example.com/a.git")));
        assert!(!p.token_goes_to(&repo("http://mirror.example.com/b")));
        p.repo_token = None;
        assert!(!p.token_goes_to(&repo("https://git.example.com/a.git")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "**",
            "*://h/x",
            "relative/*",
            "https://user:pw@h/*",
            "ftp://h/*",
            "https:///*",
            "/srv/../*",
        ] {
            assert!(pattern(bad).is_err(), "{bad}");
        }
        assert!(pattern(&format!("/{}", "a".repeat(MAX_REPO_LEN))).is_err());
        for good in [
            "/**",
            "/srv/git/*",
            "file:///srv/*/x",
            "https://*.example.com/**",
        ] {
            assert!(pattern(good).is_ok(), "{good}");
        }
    }

    /// Issue 17, item 2: patterns see the path as a server that decodes it
    /// would, so an escape neither hides a repository from a pattern nor
    /// smuggles a wildcard into one.
    #[test]
    fn patterns_match_the_decoded_path_issue_17() {
        let p = profile(None, &["https://git.example.com/team/*"]);
        assert!(p.allows_repo(&repo("https://git.example.com/team/my%20repo.git")));
        assert!(p.allows_repo(&repo("https://git.example.com/te%61m/x.git")));
        assert!(!p.allows_repo(&repo("https://git.example.com/other%20team/x.git")));
        assert_eq!(
            normalize(&repo("https://Git.Example.com/team/my%20repo.git/")),
            "https://git.example.com/team/my repo.git"
        );
        // A pattern may be written with escapes too; they match the same.
        let p = profile(None, &["https://git.example.com/team/my%20*"]);
        assert!(p.allows_repo(&repo("https://git.example.com/team/my%20repo.git")));
        assert!(p.allows_repo(&repo("https://git.example.com/team/my%20x")));
        assert!(!p.allows_repo(&repo("https://git.example.com/team/myrepo")));
        // An escaped star in a pattern is a literal star, not a wildcard.
        let p = profile(None, &["https://git.example.com/team/%2a"]);
        assert!(p.allows_repo(&repo("https://git.example.com/team/%2A")));
        assert!(!p.allows_repo(&repo("https://git.example.com/team/x")));
        // What decodes to another folder is refused before any matching.
        for bad in [
            "https://git.example.com/team/%2e%2e%2fother%2fsecret.git",
            "https://git.example.com/team/..%2fother",
        ] {
            assert!(rules::repo(bad).is_err(), "{bad}");
        }
        for bad in [
            "https://git.example.com/team%2f*",
            "https://git.example.com/team/*%2f..",
            "https://git.example.com/team/%2e%2e/*",
        ] {
            assert!(pattern(bad).is_err(), "{bad}");
        }
    }

    /// Issue 17, item 10: `*` is one or more characters of one segment,
    /// `**` one or more whole segments; neither matches an empty segment.
    #[test]
    fn wildcards_never_match_an_empty_segment_issue_17() {
        // (pattern, repo, allowed)
        let table = [
            ("/srv/forks/*", "/srv/forks/a", true),
            ("/srv/forks/*", "/srv/forks/a/", true),
            ("/srv/forks/*", "/srv/forks", false),
            ("/srv/forks/*", "/srv/forks/", false),
            ("/srv/forks/*", "/srv/forks/a/b", false),
            ("/srv/forks/*.git", "/srv/forks/.git", false),
            ("/srv/forks/*.git", "/srv/forks/x.git", true),
            ("/srv/forks/**", "/srv/forks/a/b/c", true),
            ("/srv/forks/**", "/srv/forks", false),
            ("/srv/forks/**", "/srv/forks/", false),
            ("/srv/**/x.git", "/srv/a/b/x.git", true),
            ("/srv/**/x.git", "/srv/x.git", false),
            ("/**", "/", false),
            ("/**", "/srv", true),
            ("https://h/team/*", "https://h/team/", false),
            ("https://h/team/*", "https://h/team", false),
            ("https://h/team/*", "https://h/team/x", true),
            ("https://h/team/**", "https://h/team/", false),
            ("https://*.example.com/x", "https://.example.com/x", false),
            ("https://*.example.com/x", "https://git.example.com/x", true),
        ];
        for (pat, r, want) in table {
            let p = profile(None, &[pat]);
            assert_eq!(p.allows_repo(&repo(r)), want, "{pat} vs {r}");
        }
        // A doubled slash is no repository at all (a server would collapse
        // it), so it cannot stand for the folder above.
        for bad in ["/srv/forks//", "https://h/team//", "https://h/team//x"] {
            assert!(rules::repo(bad).is_err(), "{bad}");
        }
        // `**` is a whole path segment, never part of one or of the host,
        // where it could reach across into the path.
        for bad in [
            "https://git**.example.com/team/*",
            "https://**/x",
            "/srv/a**",
            "/srv/**b/x",
        ] {
            assert!(pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn glob_is_exact_about_wildcards() {
        let g = |p: &str, t: &str| glob(&tokens(p), t.as_bytes());
        // A wildcard stands for at least one byte (issue 17, item 10: this
        // line asserted `g("a*c", "ac")` before).
        assert!(g("a*c", "abc") && !g("a*c", "ac") && !g("a*c", "a/c"));
        assert!(g("a%2ac", "a*c") && !g("a%2ac", "abc"));
        assert!(g("a**c", "a/b/c") && g("a***c", "a/c"));
        assert!(!g("a*", "b") && g("", "") && !g("", "a"));
        // Many stars over a long text stay polynomial.
        let long = "a".repeat(MAX_REPO_LEN);
        assert!(!g(&"*a".repeat(64).replace("a", "*b"), &long));
    }
}
