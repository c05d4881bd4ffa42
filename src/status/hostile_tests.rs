//! Issue 17, "never panics on input": the status-file reader returns a
//! record or a problem for any file up to 1 MiB, never a panic, within 1 s
//! of CPU and 64 MiB (measured by `crate::testkit`).

use crate::testkit::corpus::{self, Case};
use crate::testkit::{MAX_INPUT, assert_none, within_budget};

use super::*;

const STATUS: &str = r#"{"request":"r","profile":"p","phase":"done","outcome":"success","exit_code":0,"session_id":null,"container":null,"repo":null,"work_unit":null,"origin":"file","spec_sha256":null,"created_at":null,"started_at":null,"finished_at":null,"audit_dir":null,"message":null}"#;

/// `STATUS` with `key` (null there) set to `value`.
fn with(key: &str, value: &str) -> Vec<u8> {
    STATUS
        .replacen(&format!("\"{key}\":null"), &format!("\"{key}\":{value}"), 1)
        .into_bytes()
}

/// Status-shaped files that parse, or nearly, about `size` bytes each.
fn status_shaped(size: usize) -> Vec<Case> {
    let n = |unit: &str| (size - STATUS.len() - 8) / unit.len();
    let rest = &STATUS[1..];
    let case = |name: &str, bytes: Vec<u8>| Case {
        name: format!("status: {name}"),
        bytes,
    };
    vec![
        case(
            "a huge message",
            with("message", &format!("\"{}\"", "x".repeat(n("x")))),
        ),
        case(
            "a message of escapes",
            with(
                "message",
                &format!("\"{}\"", "\\u00e9".repeat(n("\\u00e9"))),
            ),
        ),
        case(
            "a message of lone surrogates",
            with(
                "message",
                &format!("\"{}\"", "\\ud800".repeat(n("\\ud800"))),
            ),
        ),
        case(
            "a huge audit_dir",
            with("audit_dir", &format!("\"/{}\"", "a/".repeat(n("a/")))),
        ),
        case(
            "deep nesting in an unknown field",
            corpus::nest("{\"x\":", "[", "", "]", &format!(",{rest}"), size),
        ),
        case(
            "a huge array in an unknown field",
            corpus::repeat("{\"x\":[0", |_| ",0".into(), &format!("],{rest}"), size),
        ),
        case(
            "many unknown fields",
            corpus::repeat("{", |i| format!("\"k{i}\":[0,{{}}],"), rest, size),
        ),
        case(
            "the request repeated",
            corpus::repeat("{", |_| "\"request\":\"r\",".into(), rest, size),
        ),
    ]
}

/// Every hostile file read as `<state>/status/x.json` by the reader the
/// daemon's start-up and the CLI use.
#[test]
fn hostile_status_files_up_to_1_mib_are_read_or_reported_in_budget_issue_17() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("status");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("x.json");
    std::fs::write(&file, STATUS).expect("write");
    let (ok, bad) = read_dir(&dir).expect("read");
    assert_eq!(
        (ok.len(), bad.len()),
        (1, 0),
        "the template is a status: {bad:?}"
    );
    let mut cases = corpus::json(MAX_INPUT, STATUS);
    cases.extend(status_shaped(MAX_INPUT));
    let mut problems = Vec::new();
    for c in cases {
        assert!(c.bytes.len() <= MAX_INPUT, "{}", c.name);
        std::fs::write(&file, &c.bytes).expect("write");
        let what = format!("status file with {} ({} bytes)", c.name, c.bytes.len());
        let read = within_budget(
            &what,
            || read_dir(&dir),
            |r| {
                r.as_ref()
                    .map(|(ok, bad)| (ok.len(), bad.len()))
                    .map_err(|e| e.to_string())
            },
        );
        match read {
            Ok(Ok((ok, bad))) if ok + bad == 1 => {}
            Ok(r) => problems.push(format!("{what}: neither read nor reported: {r:?}")),
            Err(e) => problems.push(e),
        }
    }
    assert_none(&problems);
}
