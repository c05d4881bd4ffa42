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
        "cron.rs",
        "plan",
        "observed.rs",
        "results/model.rs",
        "results/refs.rs",
        "results/stream.rs",
        "egress/policy.rs",
        "egress/addr.rs",
        "egress/head.rs",
        "inject/check.rs",
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

/// The words of Podman's mechanisms: only the Podman backend knows them.
const PODMAN_MECHANISMS: [&str; 6] = [
    "conmon",
    "podman events",
    "keep-id",
    "pidfile",
    "pid_file",
    "images.json",
];

/// Where one of those words means something else, and why.
const NOT_PODMAN: [(&str, &str); 1] = [(
    // `agentd import` reads another tool's config, whose key this is.
    "src/cli/import/convert.rs",
    r#""socket_path" | "pid_file""#,
)];

#[test]
fn podman_mechanisms_live_only_in_the_podman_backend_issue_18() {
    let root = repo_root();
    let backend = root.join("src/runtime/podman");
    let mut found = Vec::new();
    for f in rust_files(&root.join("src")) {
        if f.starts_with(&backend) {
            continue;
        }
        let rel = f.strip_prefix(&root).expect("inside the repo");
        let text = std::fs::read_to_string(&f).expect("read");
        for (n, line) in text.lines().enumerate() {
            let allowed = NOT_PODMAN
                .iter()
                .any(|(file, what)| rel == Path::new(file) && line.contains(what));
            let lower = line.to_lowercase();
            for word in PODMAN_MECHANISMS {
                if lower.contains(word) && !allowed {
                    found.push(format!("{}:{}: `{word}`", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "Podman mechanisms outside src/runtime/podman/:\n{}",
        found.join("\n")
    );
}

/// The modules `crate::...` paths in `text` name (`crate::{a, b}` too).
fn crate_modules(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(|p| ident(p.trim())));
            }
            None => out.push(ident(rest)),
        }
    }
    out
}

#[test]
fn the_runtime_imports_neither_executor_daemon_nor_metrics_issue_18() {
    assert_eq!(
        crate_modules("use crate::{execute::x, sync};\ncrate::metrics::get()"),
        ["execute", "sync", "metrics"]
    );
    let mut found = Vec::new();
    for f in rust_files(&repo_root().join("src/runtime")) {
        let text = std::fs::read_to_string(&f).expect("read");
        for m in crate_modules(&text) {
            if ["execute", "daemon", "metrics"].contains(&m.as_str()) {
                found.push(format!("{}: crate::{m}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The module a file under `src/` belongs to, one level below `within`
/// (`src/execute/start.rs` -> `execute` within `src`).
fn module_of(file: &Path, within: &Path) -> Option<String> {
    let rel = file.strip_prefix(within).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Edges `from -> to` between the modules under `dir` (named by
/// `module_of`), from `prefix` paths (`crate::`, `super::`) in non-test
/// code; only targets in `known` count.
fn module_edges(
    dir: &Path,
    prefix: &str,
    known: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for f in rust_files(dir) {
        let is_test = f.file_name().is_some_and(|n| n == "tests.rs")
            || f.components().any(|c| c.as_os_str() == "tests");
        let Some(from) = module_of(&f, dir).filter(|_| !is_test) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        // A folder module's mod.rs sits at `dir`'s level.
        let level = match f.file_name().is_some_and(|n| n == "mod.rs") {
            true => f.parent().and_then(Path::parent),
            false => f.parent(),
        };
        let nested_super = level != Some(dir);
        for m in crate_modules(&code.replace(prefix, "crate::")) {
            // `super::` inside a module's own folder names its siblings
            // inside that folder, not the modules under `dir`.
            if prefix == "super::" && nested_super {
                continue;
            }
            if m != from && known.contains(&m) {
                edges.entry(from.clone()).or_default().insert(m);
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn a_cycle(
    edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = Default::default();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_each_other_in_one_direction_issue_18() {
    let src = repo_root().join("src");
    let names = |dir: &Path| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read src")
            .flatten()
            .filter_map(|e| module_of(&e.path(), dir))
            .collect()
    };
    let top = module_edges(&src, "crate::", &names(&src));
    assert!(top.contains_key("execute"), "{top:?}");
    assert_eq!(a_cycle(&top), None, "a cycle between src/ modules");
    let desired = src.join("desired");
    let inner = module_edges(&desired, "super::", &names(&desired));
    assert!(inner.contains_key("repos"), "{inner:?}");
    assert_eq!(a_cycle(&inner), None, "a cycle inside src/desired/");
    // The check finds one where there is one.
    let mut looped = top.clone();
    looped
        .entry("runtime".into())
        .or_default()
        .insert("execute".into());
    assert!(a_cycle(&looped).is_some());
}
