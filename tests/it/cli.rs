//! CLI shape: help, version, usage errors, schemas in sync with the code.

use crate::util::{agentd, repo_root};

#[test]
fn help_and_version_work_everywhere() {
    let out = agentd().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("agentd "));
    for cmd in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
        vec!["validate", "--version"],
    ] {
        let out = agentd().args(&cmd).output().expect("run");
        assert!(out.status.success(), "{cmd:?}");
        assert!(!out.stdout.is_empty(), "{cmd:?}");
    }
    let help =
        String::from_utf8_lossy(&agentd().arg("--help").output().expect("run").stdout).into_owned();
    for flag in [
        "--desired",
        "--state",
        "--audit-root",
        "--max-sessions",
        "AGENTD_DESIRED",
        "AGENTD_STATE",
        "AGENTD_AUDIT_ROOT",
        "AGENTD_MAX_SESSIONS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--no-such-flag"],
        vec!["validate", "--bogus"],
        vec!["no-such-command"],
        vec!["--max-sessions", "0", "validate"],
    ] {
        let out = agentd().args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn checked_in_schemas_match_the_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = agentd()
        .args(["schema", "--write"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    for name in ["profile.schema.json", "request.schema.json"] {
        let fresh = std::fs::read_to_string(dir.path().join(name)).expect("generated");
        let checked_in =
            std::fs::read_to_string(repo_root().join("schemas").join(name)).unwrap_or_default();
        assert!(
            fresh == checked_in,
            "schemas/{name} is out of date with src/desired/wire.rs: regenerate with `cargo run -- schema --write schemas`"
        );
    }
}

#[test]
fn schemas_accept_the_examples() {
    // The JSON Schemas are what editors check against: every shipped file
    // must pass them, read through the same YAML/TOML parsers.
    let root = repo_root();
    let load = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(root.join("schemas").join(name)).expect("schema"),
        )
        .expect("json")
    };
    let profile = jsonschema::validator_for(&load("profile.schema.json")).expect("valid schema");
    let request = jsonschema::validator_for(&load("request.schema.json")).expect("valid schema");
    for entry in walkdir::WalkDir::new(root.join("examples"))
        .into_iter()
        .chain(walkdir::WalkDir::new(root.join("desired")))
    {
        let entry = entry.expect("walk");
        let path = entry.path();
        let text = match path.extension().and_then(|e| e.to_str()) {
            Some("toml" | "yaml" | "yml") => std::fs::read_to_string(path).expect("read"),
            _ => continue,
        };
        let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).expect("toml")
        } else {
            serde_saphyr::from_str(&text).expect("yaml")
        };
        let v = if path.to_string_lossy().contains("/profiles/") {
            &profile
        } else {
            &request
        };
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}
