//! Which repositories a profile lets a session clone, and which of them get
//! the profile's clone token (issue 13; docs/desired-dir.md and
//! docs/security.md, "Repositories a request may name").
//!
//! A request is less trusted than its profile: its `repo` must be the
//! profile's own `repo` or match one of the profile's `allowed_repos`
//! patterns. Both sides are compared in one normalized form, so a local path
//! and the `file://` URL of the same path are the same repository, and a
//! host name's case does not matter. `rules::repo` has already refused what
//! would make the comparison lie: dot segments (`..` would climb out of a
//! pattern's folder), percent escapes in `file://` URLs, queries and
//! fragments.
//!
//! Patterns: `*` matches any run of characters within one path segment (not
//! `/`), `**` any run across segments; everything else is literal. Matching
//! is on bytes, in O(pattern × repo) time, and both lengths are capped by
//! validation.

use super::model::{Profile, Repo};
use super::rules::{self, Problem};

/// Longest repo string or pattern accepted, in bytes.
pub const MAX_REPO_LEN: usize = 4096;

/// A validated `allowed_repos` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    /// As the operator wrote it (for messages).
    pub text: String,
    /// Normalized like a repo, wildcards kept.
    norm: String,
}

impl RepoPattern {
    /// Whether `repo` is matched by this pattern.
    pub fn matches(&self, repo: &Repo) -> bool {
        glob(self.norm.as_bytes(), normalize(repo).as_bytes())
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
    // Filled in, the pattern must be a valid repository (no credentials, a
    // supported scheme, a host, no dot segments).
    let filled = text.replace('*', "x");
    let repo = rules::repo(&filled).map_err(|(m, h)| (format!("pattern `{text}`: {m}"), h))?;
    // Normalize the pattern the way the repo would be, keeping the wildcards:
    // normalization only lower-cases the scheme and authority and trims, so
    // it maps the filled-in pattern and the pattern position for position,
    // except for the `file://` prefix, which is dropped.
    let norm = match repo {
        Repo::Local(_) => trim_slash(text).to_string(),
        Repo::Url(_) if text.starts_with("file://") => {
            trim_slash(&text["file://".len()..]).to_string()
        }
        Repo::Url(_) => normalize_url(text),
    };
    Ok(RepoPattern {
        text: text.to_string(),
        norm,
    })
}

/// The form repositories are compared in: a local path or `file://` URL as
/// its absolute path, a remote URL with its scheme and authority lower-cased;
/// a trailing `/` dropped in both.
pub fn normalize(repo: &Repo) -> String {
    match repo {
        Repo::Local(p) => trim_slash(&p.to_string_lossy()).to_string(),
        Repo::Url(u) => match u.strip_prefix("file://") {
            Some(path) => trim_slash(path).to_string(),
            None => normalize_url(u),
        },
    }
}

fn trim_slash(s: &str) -> &str {
    match s.strip_suffix('/') {
        Some(t) if !t.is_empty() => t,
        _ => s,
    }
}

fn normalize_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return trim_slash(u).to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    trim_slash(&format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
    .to_string()
}

/// `*` within a segment, `**` across segments, everything else literal.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    #[derive(Clone, Copy)]
    enum Tok {
        Lit(u8),
        Star,
        DoubleStar,
    }
    let mut toks = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        if pattern[i] == b'*' {
            if pattern.get(i + 1) == Some(&b'*') {
                // Any run of stars of length two or more is one `**`.
                while pattern.get(i) == Some(&b'*') {
                    i += 1;
                }
                toks.push(Tok::DoubleStar);
                continue;
            }
            toks.push(Tok::Star);
        } else {
            toks.push(Tok::Lit(pattern[i]));
        }
        i += 1;
    }
    // ok[j]: the tokens so far match text[..j].
    let mut ok = vec![false; text.len() + 1];
    ok[0] = true;
    for t in toks {
        let mut next = vec![false; text.len() + 1];
        match t {
            Tok::Lit(c) => {
                for j in 0..text.len() {
                    next[j + 1] = ok[j] && text[j] == c;
                }
            }
            Tok::Star | Tok::DoubleStar => {
                let across = matches!(t, Tok::DoubleStar);
                next[0] = ok[0];
                for j in 0..text.len() {
                    next[j + 1] = ok[j + 1] || (next[j] && (across || text[j] != b'/'));
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

    #[test]
    fn glob_is_exact_about_wildcards() {
        let g = |p: &str, t: &str| glob(p.as_bytes(), t.as_bytes());
        assert!(g("a*c", "abc") && g("a*c", "ac") && !g("a*c", "a/c"));
        assert!(g("a**c", "a/b/c") && g("a***c", "a/c"));
        assert!(!g("a*", "b") && g("", "") && !g("", "a"));
        // Many stars over a long text stay polynomial.
        let long = "a".repeat(MAX_REPO_LEN);
        assert!(!g(&"*a".repeat(64).replace("a", "*b"), &long));
    }
}
