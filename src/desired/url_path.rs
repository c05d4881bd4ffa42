//! PURE: a repository's path the way the server that serves it reads it
//! (issue 17). A forge, or the proxy in front of it, percent-decodes the
//! request path and resolves `.`, `..` and empty segments before it looks
//! for a repository: `team/%2e%2e%2fother` is `other` to it. `allowed_repos`
//! patterns are matched against the decoded path (`repos.rs`), and a path
//! is refused when its decoded form would have other segments than the ones
//! written: an escaped separator (`%2f`, `%5c`), a segment that is only dots
//! (also escaped, or followed by `;…` or spaces, which some servers drop),
//! an empty segment, an escaped `%` (a server that decodes twice), an
//! escaped control character, a malformed escape or bytes that are not
//! UTF-8. What is left decodes segment for segment, so the written and the
//! decoded path name the same folders, and a pattern's `*` cannot be walked
//! out of.
//!
//! Local paths and `file://` URLs are not decoded (the file system takes
//! `%` literally); `rules::repo` refuses `%` in them, so both spellings of a
//! local repository compare alike.

use super::diag::Problem;

/// The value of the hex digits `hi` and `lo`, either case.
pub fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let v = |c: u8| (c as char).to_digit(16);
    u8::try_from(v(hi)? * 16 + v(lo)?).ok()
}

/// `s` with every `%XX` (two hex digits) replaced by that byte; `None` when
/// a `%` is not followed by two hex digits.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(hex_pair(*b.get(i + 1)?, *b.get(i + 2)?)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `s` decoded; where it is not well formed (which validation has refused
/// already), as written.
pub fn decode_lossy(s: &str) -> String {
    decode(s)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| s.to_string())
}

/// Check a repository's path (for a URL: `host/path`, the host counting as
/// the first segment) segment by segment; `escapes` says whether a server
/// percent-decodes it. One leading and one trailing `/` are not segments.
pub fn check(path: &str, shown: &str, escapes: bool) -> Result<(), Problem> {
    let inner = path.strip_prefix('/').unwrap_or(path);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if inner.is_empty() {
        return Ok(());
    }
    for seg in inner.split('/') {
        segment(seg, shown, escapes)?;
    }
    Ok(())
}

fn segment(seg: &str, shown: &str, escapes: bool) -> Result<(), Problem> {
    let problem = |msg: String, hint: &str| (msg, Some(hint.to_string()));
    if seg.is_empty() {
        return Err(problem(
            format!("repo `{shown}` has an empty path segment (`//`)"),
            "write one `/` between path segments: a server reads `a//b` as `a/b`, and no pattern's `*` stands for an empty segment",
        ));
    }
    let text = if escapes {
        let bytes = decode(seg).ok_or_else(|| {
            problem(
                format!("repo `{shown}`: path segment `{seg}` has a `%` that is not followed by two hex digits"),
                "escape a character as `%` and two hex digits, e.g. `%20` for a space",
            )
        })?;
        String::from_utf8(bytes).map_err(|_| {
            problem(
                format!("repo `{shown}`: path segment `{seg}` does not decode to UTF-8"),
                "escape a character as its UTF-8 bytes, e.g. `%C3%A9` for `é`",
            )
        })?
    } else {
        seg.to_string()
    };
    // Raw control characters are refused before; these came from escapes.
    if text.chars().any(char::is_control) {
        return Err(problem(
            format!("repo `{shown}`: path segment `{seg}` decodes to a control character"),
            "name the repository without escaped control characters",
        ));
    }
    if escapes && text.contains(['/', '\\']) {
        return Err(problem(
            format!(
                "repo `{shown}`: path segment `{seg}` decodes to `{text}`, which holds a path separator (`/` or `\\`)"
            ),
            "a server that decodes the path reads it as other folders (`%2f` is `/`, `%5c` is `\\`); write the repository's plain path",
        ));
    }
    if escapes && text.contains('%') {
        return Err(problem(
            format!("repo `{shown}`: path segment `{seg}` decodes to `{text}`, which holds a `%`"),
            "a server that decodes twice would read another escape there; write the repository's plain path",
        ));
    }
    // What some servers keep of a segment: `..;x` is `..` to servers that
    // drop `;` parameters, `.. ` to those that trim spaces.
    let head = text.split(';').next().unwrap_or("").trim();
    if !head.is_empty() && head.bytes().all(|c| c == b'.') {
        let msg = if seg == head {
            format!("repo `{shown}` has a `.` or `..` path segment")
        } else if seg == text {
            format!(
                "repo `{shown}`: path segment `{seg}` is `{head}` to a server that drops `;` parameters or spaces"
            )
        } else {
            format!("repo `{shown}`: path segment `{seg}` decodes to `{head}`")
        };
        return Err(problem(
            msg,
            "write the path without dot segments (`.`, `..`, also escaped as `%2e`): they would climb out of the folder a pattern names",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_exact_about_escapes() {
        assert_eq!(decode("a%20b%2F%2e").as_deref(), Some(&b"a b/."[..]));
        assert_eq!(decode("%C3%A9").as_deref(), Some("é".as_bytes()));
        for bad in ["%", "%2", "%zz", "a%g0", "%%41"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode_lossy("x%2"), "x%2");
        assert_eq!(decode_lossy("my%20repo"), "my repo");
    }

    #[test]
    fn only_segments_that_decode_to_themselves_shapewise_pass() {
        let ok = |p: &str| check(p, p, true).is_ok();
        assert!(ok("h/team/my%20repo.git") && ok("/") && ok("") && ok("h/.git"));
        assert!(ok("h/a;b") && ok("h/...x") && ok("h/%20"));
        for bad in [
            "h//x", "h/%2e", "h/.%2E", "h/..;v=1", "h/..%20", "h/...", "h/a%2fb", "h/a%5Cb",
            "h/%2525", "h/%0a", "h/%c3", "h/%",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        // Without escapes, `%` is an ordinary character.
        assert!(check("/srv/a%2fb", "x", false).is_ok());
        assert!(check("/srv/..", "x", false).is_err());
    }
}
