//! Unit tests of the work tree walk: limits, sparse files, ignore rules,
//! blob ids (issue 20).

use super::*;

#[test]
fn blob_ids_match_git_issue_20() {
    // `printf 'hello\n' | git hash-object --stdin`
    let (oid, n) = blob_oid(6, &b"hello\n"[..]).expect("hash");
    assert_eq!(oid, "ce013625030ba8dba906f756967f9e9ca394464a");
    assert_eq!(n, 6);
    let (empty, _) = blob_oid(0, &b""[..]).expect("hash");
    assert_eq!(empty, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
}

fn walk(root: &Path, limits: Limits) -> Result<Snapshot, WalkError> {
    let mut dir = crate::fdtree::open_dir(root).expect("open");
    let stream = root
        .parent()
        .expect("parent")
        .join(format!("s-{}", crate::fsutil::random_hex()));
    snapshot(&mut dir, &BTreeMap::new(), None, &stream, limits)
}

fn limits(budget: u64, max_entries: usize) -> Limits {
    Limits {
        budget,
        max_entries,
        deadline: Instant::now() + std::time::Duration::from_secs(30),
    }
}

#[test]
fn a_work_tree_past_its_entry_cap_is_not_captured_issue_20() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("w");
    std::fs::create_dir_all(root.join("many")).expect("mkdir");
    for i in 0..60 {
        std::fs::write(root.join("many").join(i.to_string()), "x").expect("write");
    }
    let e = walk(&root, limits(1 << 20, 50)).expect_err("over");
    assert_eq!(e.to_string(), "the work tree has more than 50 entries");
    // An ignored folder costs one entry, whatever it holds.
    std::fs::write(root.join(".gitignore"), "many/\n").expect("write");
    let s = walk(&root, limits(1 << 20, 50)).expect("within");
    assert_eq!(s.changes.len(), 1, "{:?}", s.changes);
}

#[test]
fn a_huge_sparse_file_is_named_never_read_issue_20() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("w");
    std::fs::create_dir_all(&root).expect("mkdir");
    let f = std::fs::File::create(root.join("sparse")).expect("create");
    f.set_len(1 << 40).expect("a 1 TiB hole");
    std::fs::write(root.join("small"), "fits").expect("write");
    let began = Instant::now();
    let s = walk(&root, limits(1 << 20, 1000)).expect("walk");
    assert!(began.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(s.cut.len(), 1);
    assert!(
        s.cut[0].starts_with("sparse (1099511627776 bytes) is past the results budget"),
        "{:?}",
        s.cut
    );
    assert_eq!(s.fed, 4);
}

#[test]
fn ignore_rules_apply_below_their_folder_and_whitelist_wins_issue_20() {
    let root = matcher(b"", b"*.log\nbuild/\n!keep.log\n").expect("rules");
    let sub = matcher(b"a/b", b"secret\n").expect("rules");
    let d = tempfile::tempdir().expect("tempdir");
    let w = Walker {
        tracked: &BTreeMap::new(),
        tracked_dirs: BTreeSet::new(),
        seen: BTreeSet::new(),
        rules: vec![
            Rules {
                dir: Vec::new(),
                matcher: root,
            },
            Rules {
                dir: b"a/b".to_vec(),
                matcher: sub,
            },
        ],
        exclude: matcher(b"", b"local-only\n"),
        entries: 0,
        next_mark: 0,
        out: BufWriter::new(std::fs::File::create(d.path().join("s")).expect("file")),
        limits: Limits {
            budget: 0,
            max_entries: MAX_ENTRIES,
            deadline: Instant::now(),
        },
        snap: Snapshot::default(),
    };
    assert!(w.ignored(b"x.log", false));
    assert!(w.ignored(b"a/x.log", false));
    assert!(!w.ignored(b"keep.log", false));
    assert!(w.ignored(b"build", true));
    assert!(!w.ignored(b"build", false));
    assert!(w.ignored(b"a/b/secret", false));
    assert!(w.ignored(b"a/b/c/secret", false));
    assert!(!w.ignored(b"a/secret", false));
    assert!(w.ignored(b"local-only", false));
    assert!(!w.ignored(b"src/main.rs", false));
}
