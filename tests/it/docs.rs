//! The reference ships with the code (issue 11): `docs/` names every field a
//! profile or request file may hold, every command, flag and environment
//! variable of the CLI, and README.md and `docs/` link only to files that
//! exist in the repository. These tests read the sources of truth (the
//! checked-in JSON Schemas, which `cli::checked_in_schemas_match_the_code`
//! keeps equal to `src/desired/wire.rs`, and the clap command tree itself),
//! so a new field or flag without a line in the reference fails here.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use clap::CommandFactory;

use crate::util::repo_root;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every key of every `properties` object anywhere in a JSON Schema: the top
/// level, `$defs` (credential items, mounts, the artifact) and any variant
/// nested under `oneOf`/`anyOf`/`items`.
fn property_names(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == "properties"
                    && let Some(props) = child.as_object()
                {
                    out.extend(props.keys().cloned());
                }
                property_names(child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for i in items {
                property_names(i, out);
            }
        }
        _ => {}
    }
}

fn schema_fields(file: &str) -> BTreeSet<String> {
    let path = repo_root().join("schemas").join(file);
    let json: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let mut out = BTreeSet::new();
    property_names(&json, &mut out);
    out
}

/// Fields of `schema` that `doc` does not mention as `` `field` ``.
fn unmentioned_fields(schema: &BTreeSet<String>, doc: &str) -> Vec<String> {
    schema
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .cloned()
        .collect()
}

#[test]
fn every_profile_and_request_field_is_in_the_reference_issue_11() {
    let doc = read(&repo_root().join("docs/desired-dir.md"));
    let profile = schema_fields("profile.schema.json");
    let request = schema_fields("request.schema.json");
    // Not vacuous: the walk reaches top-level and nested fields alike.
    for f in ["base_image", "allowed_repos", "read_only", "target"] {
        assert!(
            profile.contains(f),
            "profile schema walk misses {f}: {profile:?}"
        );
    }
    for f in ["profile", "work_unit", "artifact", "json", "type"] {
        assert!(
            request.contains(f),
            "request schema walk misses {f}: {request:?}"
        );
    }
    let missing_p = unmentioned_fields(&profile, &doc);
    let missing_r = unmentioned_fields(&request, &doc);
    assert!(
        missing_p.is_empty() && missing_r.is_empty(),
        "docs/desired-dir.md does not mention (as `field`) these profile fields: {missing_p:?} \
         and these request fields: {missing_r:?}; document each with its type, default and meaning"
    );
}

#[test]
fn every_status_object_field_is_in_the_reference_issue_11() {
    let doc = read(&repo_root().join("docs/sessions.md"));
    let mut status = agentd::Status::new("r", "p");
    // Serialized only while set: give it a value so its key shows.
    status.stop_reason = Some(agentd::StopReason::Cancelled);
    let json = serde_json::to_value(&status).expect("serialize");
    let keys: Vec<&String> = json.as_object().expect("an object").keys().collect();
    assert!(keys.len() >= 17, "status keys: {keys:?}");
    let missing: Vec<_> = keys
        .into_iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/sessions.md does not mention these status object fields: {missing:?}"
    );
}

/// Every subcommand path (`audit verify`), long flag and environment
/// variable of the clap command tree.
fn cli_surface() -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    fn walk(
        cmd: &clap::Command,
        prefix: &str,
        subs: &mut BTreeSet<String>,
        flags: &mut BTreeSet<String>,
        envs: &mut BTreeSet<String>,
    ) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                flags.insert(format!("--{l}"));
            }
            for l in a.get_all_aliases().into_iter().flatten() {
                flags.insert(format!("--{l}"));
            }
            if let Some(e) = a.get_env() {
                envs.insert(e.to_string_lossy().into_owned());
            }
        }
        for s in cmd.get_subcommands() {
            if s.get_name() == "help" {
                continue;
            }
            let path = format!("{prefix} {}", s.get_name());
            subs.insert(path.trim().to_string());
            walk(s, &path, subs, flags, envs);
        }
    }
    let mut cmd = agentd::Cli::command();
    cmd.build();
    let (mut subs, mut flags, mut envs) = Default::default();
    walk(&cmd, "", &mut subs, &mut flags, &mut envs);
    (subs, flags, envs)
}

/// `needle` occurs in `hay` not followed by another name character, so
/// `--state` is not found inside `--state-dir` and `agentd audit` not
/// inside `agentd auditx`.
fn mentions(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        !before.is_some_and(name) && !after.is_some_and(name)
    })
}

#[test]
fn every_command_flag_and_env_var_is_in_the_cli_reference_issue_11() {
    let doc = read(&repo_root().join("docs/cli.md"));
    let (subs, flags, envs) = cli_surface();
    for s in ["daemon", "run", "status", "audit verify", "validate"] {
        assert!(subs.contains(s), "clap walk misses `{s}`: {subs:?}");
    }
    for f in [
        "--desired",
        "--max-sessions",
        "--wait",
        "--help",
        "--version",
    ] {
        assert!(flags.contains(f), "clap walk misses {f}: {flags:?}");
    }
    let missing_subs: Vec<_> = subs
        .iter()
        .filter(|s| !mentions(&doc, &format!("agentd {s}")))
        .collect();
    let missing_flags: Vec<_> = flags.iter().filter(|f| !mentions(&doc, f)).collect();
    let missing_envs: Vec<_> = envs.iter().filter(|e| !mentions(&doc, e)).collect();
    assert!(
        missing_subs.is_empty() && missing_flags.is_empty() && missing_envs.is_empty(),
        "docs/cli.md does not mention: commands {missing_subs:?} (as `agentd <command>`), \
         flags {missing_flags:?}, environment variables {missing_envs:?}"
    );
}

/// Markdown link targets in `text`: inline `[..](target)` and reference
/// definitions `[..]: target`. Code spans and fenced blocks are skipped.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: `[x](y)` inside backticks is not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let t = plain.trim_start();
        if t.starts_with('[')
            && let Some(end) = t.find("]:")
        {
            if let Some(target) = t[end + 2..].split_whitespace().next() {
                out.push(target.to_string());
            }
            continue;
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(['<', '>']).to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to `-`.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

/// Problems with the links of one markdown file of the repository.
fn link_problems(root: &Path, file: &Path) -> Vec<String> {
    let text = read(file);
    let dir = file.parent().unwrap_or(root);
    let rel = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut problems = Vec::new();
    if text.contains("../shared") || text.contains("shared/CONTRACT") {
        problems.push(format!(
            "{rel}: mentions ../shared (outside the repository)"
        ));
    }
    for target in link_targets(&text) {
        if target.is_empty()
            || target.starts_with("http://")
            || target.starts_with("https://")
            || target.starts_with("mailto:")
        {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let resolved: PathBuf = if path.is_empty() {
            file.to_path_buf()
        } else if path.starts_with('/') {
            problems.push(format!(
                "{rel}: link `{target}` is absolute; link relative to the file"
            ));
            continue;
        } else {
            dir.join(path)
        };
        // Lexically inside the repository (no `..` climbing out of it).
        let mut normal = PathBuf::new();
        for c in resolved.components() {
            match c {
                Component::ParentDir => {
                    normal.pop();
                }
                Component::CurDir => {}
                other => normal.push(other),
            }
        }
        if !normal.starts_with(root) {
            problems.push(format!("{rel}: link `{target}` leaves the repository"));
            continue;
        }
        if !normal.exists() {
            problems.push(format!("{rel}: link `{target}` names a missing file"));
            continue;
        }
        if let Some(a) = anchor
            && normal.extension().is_some_and(|e| e == "md")
            && !anchors(&read(&normal)).contains(a)
        {
            problems.push(format!(
                "{rel}: link `{target}`: no heading with that anchor"
            ));
        }
    }
    problems
}

fn reference_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn readme_and_docs_link_only_to_files_in_the_repository_issue_11() {
    let root = repo_root();
    let files = reference_files(&root);
    for page in [
        "README.md",
        "desired-dir.md",
        "cli.md",
        "sessions.md",
        "audit.md",
        "credentials.md",
        "service.md",
        "metrics.md",
        "rootless.md",
        "security.md",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(page)),
            "the reference lacks {page}: {files:?}"
        );
    }
    let problems: Vec<String> = files.iter().flat_map(|f| link_problems(&root, f)).collect();
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    // The index links every page of the reference.
    let index = read(&root.join("docs/README.md"));
    for f in files
        .iter()
        .filter(|f| f.parent() == Some(&root.join("docs")))
    {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name != "README.md" {
            assert!(
                index.contains(&format!("]({name})")),
                "docs/README.md does not link {name}"
            );
        }
    }
    assert!(
        read(&root.join("README.md")).contains("](docs/README.md)"),
        "README.md does not link the reference index docs/README.md"
    );
}

#[test]
fn the_link_check_catches_what_it_claims_to_issue_11() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::create_dir_all(root.join("docs")).expect("mkdir");
    std::fs::write(root.join("docs/a.md"), "# Title here\n\n## Sub: part\n").expect("write");
    let page = root.join("README.md");
    let check = |text: &str| {
        std::fs::write(&page, text).expect("write");
        link_problems(root, &page)
    };
    assert!(
        check(
            "[a](docs/a.md) [b](docs/a.md#title-here) [c](docs/a.md#sub-part) [w](https://x.y/z)"
        )
        .is_empty()
    );
    assert!(check("`[a](nope.md)`\n```\n[b](nope.md)\n```\n").is_empty());
    assert_eq!(check("[c](../shared/CONTRACT.md)").len(), 2);
    assert_eq!(check("[a](docs/missing.md)").len(), 1);
    assert_eq!(check("[a](docs/a.md#nope)").len(), 1);
    assert_eq!(check("[a](/etc/passwd)").len(), 1);
    assert_eq!(check("[ref]: ../../outside.md\n").len(), 1);
}
