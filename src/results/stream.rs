//! The texts results capture exchanges with git (issue 20): the tree
//! listing it reads (`ls-tree -r -l -z`), the `fast-import` stream it
//! writes (the agent's work tree as a commit, built from bytes agentd read
//! itself), `diff --shortstat` and `push --porcelain` lines. PURE: no IO.

/// An entry of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// Git's mode: 0o100644, 0o100755, 0o120000 (symlink), 0o160000
    /// (submodule), ...
    pub mode: u32,
    /// Object id (hex).
    pub oid: String,
    /// Blob size; `None` for a submodule.
    pub size: Option<u64>,
}

/// Git's file modes agentd writes.
pub const MODE_FILE: u32 = 0o100644;
pub const MODE_EXEC: u32 = 0o100755;
pub const MODE_LINK: u32 = 0o120000;
pub const MODE_GITLINK: u32 = 0o160000;

/// Parse `git ls-tree -r -l -z --full-tree` output into `(path, entry)`.
/// Malformed records are skipped.
pub fn parse_ls_tree(out: &[u8]) -> Vec<(Vec<u8>, Tracked)> {
    out.split(|b| *b == 0)
        .filter_map(|rec| {
            let tab = rec.iter().position(|b| *b == b'\t')?;
            let (meta, path) = (std::str::from_utf8(&rec[..tab]).ok()?, &rec[tab + 1..]);
            let mut f = meta.split_ascii_whitespace();
            let mode = u32::from_str_radix(f.next()?, 8).ok()?;
            let _kind = f.next()?;
            let oid = f.next()?.to_string();
            let size = f.next()?.parse().ok();
            (!path.is_empty()).then(|| (path.to_vec(), Tracked { mode, oid, size }))
        })
        .collect()
}

/// A path as a C-style quoted string, which `fast-import` reads back
/// byte for byte whatever the name holds (newlines, quotes, non-UTF-8).
pub fn quote_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 2);
    out.push(b'"');
    for &b in path {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
        }
    }
    out.push(b'"');
    out
}

/// One change to the tree, as `fast-import` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The path is gone (or is about to become another kind of entry).
    Delete(Vec<u8>),
    /// The path holds blob `mark` (written earlier in the stream).
    Mark { path: Vec<u8>, mode: u32, mark: u64 },
    /// The path holds an existing blob (a mode change only).
    Oid {
        path: Vec<u8>,
        mode: u32,
        oid: String,
    },
}

/// A `blob` command's header for data of `len` bytes (the data and a
/// newline follow it).
pub fn blob_header(mark: u64, len: usize) -> Vec<u8> {
    format!("blob\nmark :{mark}\ndata {len}\n").into_bytes()
}

/// The `commit` command that makes `refname` the tree of `from` (or an
/// empty tree) with `changes` applied: deletions first, so a path can
/// change from a file into a folder and back.
pub fn commit(refname: &str, from: Option<&str>, changes: &[Change]) -> Vec<u8> {
    let mut out =
        format!("commit {refname}\ncommitter agentd <agentd@localhost> 0 +0000\ndata 0\n")
            .into_bytes();
    if let Some(f) = from {
        out.extend_from_slice(format!("from {f}\n").as_bytes());
    }
    for c in changes.iter().filter(|c| matches!(c, Change::Delete(_))) {
        if let Change::Delete(p) = c {
            out.extend_from_slice(b"D ");
            out.extend_from_slice(&quote_path(p));
            out.push(b'\n');
        }
    }
    for c in changes {
        match c {
            Change::Delete(_) => continue,
            Change::Mark { path, mode, mark } => {
                out.extend_from_slice(format!("M {mode:o} :{mark} ").as_bytes());
                out.extend_from_slice(&quote_path(path));
            }
            Change::Oid { path, mode, oid } => {
                out.extend_from_slice(format!("M {mode:o} {oid} ").as_bytes());
                out.extend_from_slice(&quote_path(path));
            }
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"done\n");
    out
}

/// `(files, insertions, deletions)` from `git diff --shortstat` (C locale).
pub fn parse_shortstat(out: &str) -> (u64, u64, u64) {
    let mut r = (0, 0, 0);
    for part in out.trim().split(", ") {
        let mut w = part.split_whitespace();
        let (Some(n), Some(what)) = (w.next().and_then(|n| n.parse().ok()), w.next()) else {
            continue;
        };
        if what.starts_with("file") {
            r.0 = n;
        } else if what.starts_with("insertion") {
            r.1 = n;
        } else if what.starts_with("deletion") {
            r.2 = n;
        }
    }
    r
}

/// What `git push --porcelain` said about `dst`: its flag character and
/// summary (`=` up to date, `*` new, ` ` fast-forward, `!` rejected).
pub fn porcelain_status(out: &str, dst: &str) -> Option<(char, String)> {
    out.lines().find_map(|line| {
        let mut f = line.splitn(3, '\t');
        let flag = f.next()?.chars().next()?;
        let refs = f.next()?;
        let summary = f.next().unwrap_or("").to_string();
        (refs.rsplit_once(':')?.1 == dst).then_some((flag, summary))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_tree_records_parse_with_any_path_bytes_issue_20() {
        let out = b"100644 blob 1111111111111111111111111111111111111111      12\tREADME.md\0\
160000 commit 2222222222222222222222222222222222222222       -\tsub\0\
120000 blob 3333333333333333333333333333333333333333       4\ta\tb\n\xff\0garbage\0";
        let t = parse_ls_tree(out);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].0, b"README.md");
        assert_eq!(t[0].1.mode, MODE_FILE);
        assert_eq!(t[0].1.size, Some(12));
        assert_eq!(t[1].1.mode, MODE_GITLINK);
        assert_eq!(t[1].1.size, None);
        assert_eq!(t[2].0, b"a\tb\n\xff");
    }

    #[test]
    fn quoted_paths_survive_any_byte_issue_20() {
        assert_eq!(quote_path(b"a b/c.txt"), b"\"a b/c.txt\"");
        assert_eq!(
            quote_path(b"q\"\\\n\t\x01\xff"),
            b"\"q\\\"\\\\\\n\\t\\001\\377\""
        );
    }

    #[test]
    fn a_commit_deletes_first_then_sets_issue_20() {
        let text = commit(
            "refs/agentd/worktree",
            Some("1111111111111111111111111111111111111111"),
            &[
                Change::Mark {
                    path: b"a/x".to_vec(),
                    mode: MODE_FILE,
                    mark: 1,
                },
                Change::Delete(b"a".to_vec()),
                Change::Oid {
                    path: b"run.sh".to_vec(),
                    mode: MODE_EXEC,
                    oid: "2222222222222222222222222222222222222222".into(),
                },
            ],
        );
        let text = String::from_utf8(text).unwrap_or_default();
        assert_eq!(
            text,
            "commit refs/agentd/worktree\ncommitter agentd <agentd@localhost> 0 +0000\ndata 0\n\
             from 1111111111111111111111111111111111111111\nD \"a\"\nM 100644 :1 \"a/x\"\n\
             M 100755 2222222222222222222222222222222222222222 \"run.sh\"\ndone\n"
        );
        assert_eq!(blob_header(3, 10), b"blob\nmark :3\ndata 10\n");
    }

    #[test]
    fn shortstat_and_porcelain_lines_parse_issue_20() {
        assert_eq!(
            parse_shortstat(" 3 files changed, 10 insertions(+), 1 deletion(-)\n"),
            (3, 10, 1)
        );
        assert_eq!(
            parse_shortstat(" 1 file changed, 2 deletions(-)"),
            (1, 0, 2)
        );
        assert_eq!(parse_shortstat(""), (0, 0, 0));
        let out = "To /srv/x.git\n=\t1111:refs/heads/agentd/p/s\t[up to date]\nDone\n";
        assert_eq!(
            porcelain_status(out, "refs/heads/agentd/p/s"),
            Some(('=', "[up to date]".into()))
        );
        let out = "To x\n!\t2222:refs/heads/a\t[rejected] (non-fast-forward)\nDone\n";
        assert_eq!(
            porcelain_status(out, "refs/heads/a"),
            Some(('!', "[rejected] (non-fast-forward)".into()))
        );
        assert_eq!(porcelain_status(out, "refs/heads/b"), None);
    }
}
