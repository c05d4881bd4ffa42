//! Conventions checked as tests: every module says what it owns, and the
//! pure core does no IO.

use std::path::Path;

use crate::util::repo_root;

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    for f in rust_files(&repo_root().join("src")) {
        let text = std::fs::read_to_string(&f).expect("read");
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let is_test_file = f.file_name().is_some_and(|n| n == "tests.rs");
        assert!(
            first.starts_with("//!") || is_test_file,
            "{} must start with a `//!` module doc",
            f.display()
        );
    }
}

#[test]
fn pure_modules_do_no_io() {
    let root = repo_root().join("src");
    let pure: Vec<_> = [
        "desired",
        "schedule.rs",
        "plan",
        "observed.rs",
        "results/model.rs",
        "results/refs.rs",
        "results/stream.rs",
    ]
    .iter()
    .map(|p| root.join(p))
    .filter(|p| p.exists())
    .flat_map(|p| if p.is_dir() { rust_files(&p) } else { vec![p] })
    .collect();
    assert!(!pure.is_empty());
    let forbidden = [
        "std::fs",
        "std::process",
        "std::net",
        "tokio",
        "std::env",
        "SystemTime::now",
        "Timestamp::now",
        "Zoned::now",
        "Instant::now",
    ];
    for f in pure.iter().filter(|f| !f.ends_with("tests.rs")) {
        let text = std::fs::read_to_string(f).expect("read");
        // Unit tests of pure code may time themselves.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for word in forbidden {
            assert!(
                !code.contains(word),
                "{} is pure but mentions `{word}`",
                f.display()
            );
        }
    }
}

#[test]
fn no_source_file_cites_contract_md_which_is_not_in_the_repository_issue_17() {
    // The user-facing reference is docs/*.md; a comment citing a file a
    // reader of the repository cannot open says nothing.
    let citing: Vec<_> = rust_files(&repo_root().join("src"))
        .into_iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .contains("CONTRACT.md")
        })
        .collect();
    assert!(
        citing.is_empty(),
        "cite the docs/ page instead of CONTRACT.md in: {citing:?}"
    );
}
