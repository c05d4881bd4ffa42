//! Reading a clone's refs as bytes (issue 20): `HEAD`, `packed-refs` and
//! loose ref files are parsed here, never by git running in the clone, so
//! nothing the agent wrote into `.git` (config, hooks, includes) is ever
//! interpreted. Only SHA-1 object ids and names that pass git's ref-name
//! rules are kept; anything else is ignored. PURE: no IO.

use super::model::RefTip;
use crate::desired::valid_ref_name;

/// Length of a SHA-1 object id in hex. Repositories in SHA-256 format are
/// not captured (their ids are 64 characters; see `capture`).
pub const OID_HEX: usize = 40;

/// What `HEAD` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// `ref: refs/heads/<name>`.
    Symbolic(String),
    /// A bare object id: a detached HEAD.
    Detached(String),
}

/// Whether `s` is a lower-case hex SHA-1 object id.
pub fn is_oid(s: &str) -> bool {
    s.len() == OID_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The one line of a small ref file, without its newline.
fn one_line(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    (!line.contains('\n')).then_some(line)
}

/// Parse a `HEAD` file.
pub fn parse_head(bytes: &[u8]) -> Option<Head> {
    let line = one_line(bytes)?;
    if let Some(target) = line.strip_prefix("ref: ") {
        let target = target.trim();
        return valid_ref_name(target).then(|| Head::Symbolic(target.to_string()));
    }
    is_oid(line).then(|| Head::Detached(line.to_string()))
}

/// Parse a loose ref file: its object id (a symbolic ref gives `None`).
pub fn parse_loose(bytes: &[u8]) -> Option<String> {
    let line = one_line(bytes)?;
    is_oid(line).then(|| line.to_string())
}

/// The refs of a `packed-refs` file whose names start with `prefix`.
/// Comment and peeled (`^`) lines are skipped, as are malformed lines.
pub fn parse_packed(bytes: &[u8], prefix: &str) -> Vec<RefTip> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (oid, name) = line.split_once(' ')?;
            (is_oid(oid) && name.starts_with(prefix) && valid_ref_name(name)).then(|| RefTip {
                name: name.to_string(),
                oid: oid.to_string(),
            })
        })
        .collect()
}

/// Merge packed and loose refs: a loose ref overrides its packed entry.
/// Sorted by name.
pub fn merge(packed: Vec<RefTip>, loose: Vec<RefTip>) -> Vec<RefTip> {
    let mut by_name: std::collections::BTreeMap<String, String> =
        packed.into_iter().map(|r| (r.name, r.oid)).collect();
    for r in loose {
        by_name.insert(r.name, r.oid);
    }
    by_name
        .into_iter()
        .map(|(name, oid)| RefTip { name, oid })
        .collect()
}

/// What HEAD names given the refs: `(commit, branch)`.
pub fn resolve_head(head: Option<&Head>, refs: &[RefTip]) -> (Option<String>, Option<String>) {
    match head {
        Some(Head::Detached(oid)) => (Some(oid.clone()), None),
        Some(Head::Symbolic(name)) => (
            refs.iter().find(|r| &r.name == name).map(|r| r.oid.clone()),
            Some(name.clone()),
        ),
        None => (None, None),
    }
}

/// The tips that may hold new commits: each current branch, and HEAD
/// (as `HEAD`), whose object is not one a base ref named. A tip equal to
/// a base tip holds nothing new; one that differs may (or may point back
/// into the base's history, which git sorts out).
pub fn candidate_tips(
    branches: &[RefTip],
    head: Option<&str>,
    base_tips: &[String],
) -> Vec<RefTip> {
    let known = |oid: &str| base_tips.binary_search_by(|t| t.as_str().cmp(oid)).is_ok();
    let mut out: Vec<RefTip> = branches
        .iter()
        .filter(|r| !known(&r.oid))
        .cloned()
        .collect();
    if let Some(h) = head.filter(|h| !known(h)) {
        out.push(RefTip {
            name: "HEAD".into(),
            oid: h.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn tip(name: &str, oid: &str) -> RefTip {
        RefTip {
            name: name.into(),
            oid: oid.into(),
        }
    }

    #[test]
    fn head_is_a_branch_or_an_object_id_and_nothing_else_issue_20() {
        assert_eq!(
            parse_head(b"ref: refs/heads/main\n"),
            Some(Head::Symbolic("refs/heads/main".into()))
        );
        assert_eq!(
            parse_head(format!("{A}\n").as_bytes()),
            Some(Head::Detached(A.into()))
        );
        for bad in [
            &b"ref: refs/heads/../x\n"[..],
            b"ref: main\n",
            b"1111\n",
            b"",
            b"ref: refs/heads/a\nref: refs/heads/b\n",
            b"\xff\xfe",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
        ] {
            assert_eq!(parse_head(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn packed_refs_keep_valid_lines_under_the_prefix_issue_20() {
        let text = format!(
            "# pack-refs with: peeled fully-peeled sorted \n{A} refs/heads/main\n^{B}\n{B} refs/tags/v1\n\
             {B} refs/heads/bad..name\nnonsense\n{A} refs/heads/feature/x\n"
        );
        let heads = parse_packed(text.as_bytes(), "refs/heads/");
        assert_eq!(
            heads,
            vec![tip("refs/heads/main", A), tip("refs/heads/feature/x", A)]
        );
        assert_eq!(parse_packed(text.as_bytes(), "refs/").len(), 3);
    }

    #[test]
    fn loose_refs_override_packed_and_head_resolves_issue_20() {
        let merged = merge(
            vec![tip("refs/heads/main", A), tip("refs/heads/x", A)],
            vec![tip("refs/heads/main", B)],
        );
        assert_eq!(
            merged,
            vec![tip("refs/heads/main", B), tip("refs/heads/x", A)]
        );
        let head = Head::Symbolic("refs/heads/main".into());
        assert_eq!(
            resolve_head(Some(&head), &merged),
            (Some(B.into()), Some("refs/heads/main".into()))
        );
        let unborn = Head::Symbolic("refs/heads/none".into());
        assert_eq!(
            resolve_head(Some(&unborn), &merged),
            (None, Some("refs/heads/none".into()))
        );
        assert_eq!(parse_loose(b"ref: refs/heads/main\n"), None);
        assert_eq!(parse_loose(format!("{A}\n").as_bytes()), Some(A.into()));
    }

    #[test]
    fn only_tips_unknown_to_the_base_are_candidates_issue_20() {
        let base = vec![A.to_string()];
        let branches = vec![tip("refs/heads/main", A), tip("refs/heads/new", B)];
        assert_eq!(
            candidate_tips(&branches, Some(A), &base),
            vec![tip("refs/heads/new", B)]
        );
        assert_eq!(
            candidate_tips(&branches, Some(B), &base),
            vec![tip("refs/heads/new", B), tip("HEAD", B)]
        );
        assert!(candidate_tips(&[tip("refs/heads/main", A)], Some(A), &base).is_empty());
    }
}
