//! Issue 17, "never panics on input": the session-record readers
//! (`session.json` as the daemon reads it back, `agentd audit verify` with
//! its `MANIFEST.sha256` parser) return a value or a finding for any file
//! up to 1 MiB, never a panic, within 1 s of CPU and 64 MiB (measured by
//! `crate::testkit`).

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::seal::MANIFEST;
use super::verify::{Finding, verify};
use super::*;
use crate::testkit::corpus::{self, Case};
use crate::testkit::{MAX_INPUT, assert_none, within_budget};

/// A final `session.json`: verify goes on to the manifest.
const FINAL: &str = r#"{"schema_version":1,"session_id":"0123456789abcdef","profile":"p","request":"r","spec_sha256":"0","repo":"file:///x","work_unit":null,"start_timestamp":"2026-01-01T00:00:00Z","end_timestamp":"2026-01-01T00:01:00Z","outcome":"success","exit_code":0,"image":"img","image_id":null,"image_digest":null}"#;

/// A record folder with `session.json` and `MANIFEST.sha256` as given.
fn record(root: &Path, session: &[u8], manifest: Option<&[u8]>) -> Record {
    let dir = root.join("p/0123456789abcdef");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("agentd")).expect("mkdir");
    fs::create_dir_all(dir.join("session")).expect("mkdir");
    fs::write(dir.join(seal::SESSION_JSON), session).expect("write");
    if let Some(m) = manifest {
        fs::write(dir.join(MANIFEST), m).expect("write");
    }
    Record { dir }
}

/// Read the record back both ways, within budget.
fn read_back(what: &str, r: &Record) -> Result<(bool, Vec<Finding>), String> {
    within_budget(what, || r.read_session().is_some(), |ok| *ok)
        .and_then(|ok| within_budget(what, || verify(&r.dir), Vec::clone).map(|f| (ok, f)))
}

/// Session-record-shaped files: a final record with one field huge.
fn session_shaped(size: usize) -> Vec<Case> {
    let n = |unit: &str| (size - FINAL.len() - 128) / unit.len();
    let message = |v: String| {
        FINAL
            .replacen(
                "\"image_digest\":null",
                &format!("\"image_digest\":null,\"message\":{v}"),
                1,
            )
            .into_bytes()
    };
    vec![
        Case {
            name: "session.json: a huge message".into(),
            bytes: message(format!("\"{}\"", "x".repeat(n("x")))),
        },
        Case {
            name: "session.json: a cut naming many paths".into(),
            bytes: FINAL
                .replacen(
                    "\"image_digest\":null",
                    &format!(
                        "\"image_digest\":null,\"cut\":{{\"entries\":1,\"bytes\":1,\"reason\":\"r\",\"paths\":[{}\"p\"]}}",
                        "\"p\",".repeat(n("\"p\","))
                    ),
                    1,
                )
                .into_bytes(),
        },
        Case {
            name: "session.json: deep nesting in an unknown field".into(),
            bytes: corpus::nest("{\"x\":", "[", "", "]", &format!(",{}", &FINAL[1..]), size),
        },
        Case {
            name: "session.json: a huge timestamp".into(),
            bytes: FINAL
                .replacen("2026-01-01T00:01:00Z", &format!("2026-01-01T00:01:00.{}Z", "9".repeat(n("9"))), 1)
                .into_bytes(),
        },
    ]
}

/// Manifests that parse, or nearly, as large as asked.
fn manifests(size: usize) -> Vec<Case> {
    let h = "a".repeat(64);
    let case = |name: &str, bytes: Vec<u8>| Case {
        name: format!("manifest: {name}"),
        bytes,
    };
    let mut out = vec![
        case(
            "many lines",
            corpus::repeat("", |i| format!("{h}  session/f{i}\n"), "", size),
        ),
        case(
            "many escaped lines",
            corpus::repeat("", |i| format!("\\{h}  session/a\\\\b\\nc{i}\n"), "", size),
        ),
        case(
            "one very long name",
            corpus::nest(&format!("{h}  session/"), "x", "\n", "", "", size),
        ),
        case(
            "one name of escapes",
            corpus::nest(&format!("\\{h}  session/"), "\\n", "\n", "", "", size),
        ),
        case(
            "one name listed many times",
            corpus::repeat("", |_| format!("{h}  session/f\n"), "", size),
        ),
        case(
            "a bad escape at the end",
            corpus::repeat(
                "",
                |i| format!("\\{h}  session/f{i}\\n\n"),
                &format!("\\{h}  x\\q\n"),
                size,
            ),
        ),
        case(
            "a bad line at the end",
            corpus::repeat("", |i| format!("{h}  session/f{i}\n"), "nothash\n", size),
        ),
        case("empty lines", vec![b'\n'; size]),
        case(
            "carriage returns",
            corpus::repeat("", |i| format!("{h}  f{i}\r\n"), "", size),
        ),
        case(
            "hash only",
            corpus::repeat("", |_| format!("{h}\n"), "", size),
        ),
        case(
            "binary mode marks",
            corpus::repeat("", |i| format!("{h} *session/f{i}\n"), "", size),
        ),
        case(
            "multi-byte characters across the hash",
            corpus::repeat("", |_| format!("{}\u{e9}  x\n", "a".repeat(63)), "", size),
        ),
    ];
    out.extend(corpus::junk(size));
    out
}

/// `session.json` of every hostile kind, read back by the daemon's reader
/// and by `agentd audit verify`: a value or `incomplete`, in budget.
#[test]
fn hostile_session_json_up_to_1_mib_is_read_or_found_incomplete_in_budget_issue_17() {
    let t = tempfile::tempdir().expect("tempdir");
    let listed = format!(
        "{}  {}\n",
        crate::desired::sha256_hex(FINAL.as_bytes()),
        seal::SESSION_JSON
    );
    let r = record(t.path(), FINAL.as_bytes(), Some(listed.as_bytes()));
    assert_eq!(read_back("the template", &r), Ok((true, vec![])));
    let mut cases = corpus::json(MAX_INPUT, FINAL);
    cases.extend(session_shaped(MAX_INPUT));
    let mut problems = Vec::new();
    for c in cases {
        assert!(c.bytes.len() <= MAX_INPUT, "{}", c.name);
        let r = record(t.path(), &c.bytes, Some(b""));
        let what = format!("{} ({} bytes)", c.name, c.bytes.len());
        if let Err(e) = read_back(&what, &r) {
            problems.push(e);
        }
    }
    assert_none(&problems);
}

/// `MANIFEST.sha256` of every hostile kind next to a final session.json:
/// verify reports findings, in budget.
#[test]
fn hostile_manifests_up_to_1_mib_get_findings_in_budget_issue_17() {
    let t = tempfile::tempdir().expect("tempdir");
    let mut problems = Vec::new();
    for c in manifests(MAX_INPUT) {
        assert!(c.bytes.len() <= MAX_INPUT, "{}", c.name);
        let r = record(t.path(), FINAL.as_bytes(), Some(&c.bytes));
        let what = format!("{} ({} bytes)", c.name, c.bytes.len());
        match read_back(&what, &r) {
            Ok((true, findings)) if !findings.is_empty() => {}
            Ok(other) => problems.push(format!("{what}: no finding: {other:?}")),
            Err(e) => problems.push(e),
        }
    }
    assert_none(&problems);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Manifest-like bytes: parsed or refused, never a panic, in budget.
    #[test]
    fn manifest_like_bytes_are_parsed_or_refused_in_budget_issue_17(
        lines in proptest::collection::vec(
            ("\\\\?", "[0-9a-fA-F]{60,66}", "( |  | \\*|\t)?", proptest::collection::vec(prop_oneof![Just(b'\\'), Just(b'n'), Just(b'r'), Just(b'\r'), Just(0xff), Just(b'a')], 0..12)),
            0..24,
        )
    ) {
        let mut text = Vec::new();
        for (esc, hash, sep, name) in lines {
            text.extend_from_slice(esc.as_bytes());
            text.extend_from_slice(hash.as_bytes());
            text.extend_from_slice(sep.as_bytes());
            text.extend_from_slice(&name);
            text.push(b'\n');
        }
        within_budget("manifest", || verify::parse_manifest(&text), |r| r.is_ok())
            .map_err(TestCaseError::fail)?;
    }
}
