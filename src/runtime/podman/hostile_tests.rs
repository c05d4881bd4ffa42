//! Issue 17, "never panics on input": the parsers of Podman's JSON
//! (`ps`, `container inspect`, `image inspect`, `info`, one `events` line,
//! an exit file) return a value or an error for any output up to 1 MiB,
//! never a panic, within 1 s of CPU and 64 MiB (measured by
//! `crate::testkit`).

use proptest::prelude::*;

use super::events::parse_event;
use super::exits::parse_exit_code;
use super::host::Host;
use super::images::parse_image_inspect;
use super::json::{parse_inspect, parse_ps};
use crate::testkit::corpus::{self, Case};
use crate::testkit::{MAX_INPUT, assert_none, within_budget};

const PS: &str = r#"{"Id":"6f5a","Names":["agentd-x-r1"],"Labels":{"io.agentd.request":"r1","io.agentd.session":"00ff","io.agentd.deadline":"1795337999"},"State":"exited","ExitCode":3,"StartedAt":1795337436}"#;
const INSPECT: &str = r#"{"Id":"6f5a","Image":"0e25","ImageDigest":"sha256:5f5b","State":{"Status":"exited","ExitCode":137,"StartedAt":"2026-11-22T08:50:36.070637712Z","FinishedAt":"0001-01-01T00:00:00Z","OOMKilled":true},"Config":{"Labels":{"io.agentd.deadline":"1795337999000"}}}"#;
const IMAGE: &str = r#"{"Id":"e375","Digest":"sha256:30c0","RepoTags":["localhost/x:1"]}"#;
const INFO: &str = r#"{"host":{"cgroupManager":"cgroupfs","cgroupVersion":"v1","cgroupControllers":["memory"],"networkBackend":"netavark","idMappings":{"uidmap":[{"size":1},{"size":65536}],"gidmap":[{"size":1},{"size":65536}]},"security":{"rootless":true}},"store":{"graphDriverName":"overlay","graphRoot":"/g"},"version":{"Version":"4.3.1"}}"#;
const EVENT: &str = r#"{"ContainerExitCode":3,"ID":"6f5a","Name":"agentd-x-r1","Status":"died","Type":"container","Attributes":{"io.agentd.request":"r1","io.agentd.deadline":"1795337999"}}"#;

/// One parser: its name, its well-formed entry, and the call.
type Parser = (&'static str, &'static str, fn(&str) -> bool);

fn parsers() -> [Parser; 6] {
    [
        ("ps", PS, |s| parse_ps(s).is_ok()),
        ("container inspect", INSPECT, |s| parse_inspect(s).is_ok()),
        ("image inspect", IMAGE, |s| parse_image_inspect(s).is_ok()),
        ("info", INFO, |s| Host::parse(s).is_ok()),
        ("events line", EVENT, |s| parse_event(s).is_some()),
        ("exit file", "137\n", |s| parse_exit_code(s).is_some()),
    ]
}

/// Podman-shaped output with the entry's numbers and lists pushed to their
/// extremes.
fn shaped(size: usize) -> Vec<Case> {
    let n = |unit: &str| size.saturating_sub(INFO.len() + 16) / unit.len();
    let case = |name: &str, text: String| Case {
        name: format!("podman: {name}"),
        bytes: text.into_bytes(),
    };
    let max = u64::MAX;
    vec![
        case(
            "info: id maps summing past u64",
            INFO.replace("\"size\":65536", &format!("\"size\":{max}")),
        ),
        case(
            "info: many id maps",
            INFO.replace(
                "{\"size\":65536}",
                "{\"size\":4294967296},"
                    .repeat(n("{\"size\":4294967296},"))
                    .trim_end_matches(','),
            ),
        ),
        case(
            "info: many controllers",
            INFO.replace(
                "[\"memory\"]",
                &format!("[{}\"memory\"]", "\"x\",".repeat(n("\"x\","))),
            ),
        ),
        case(
            "info: a huge version",
            INFO.replace("4.3.1", &"4.".repeat(n("4."))),
        ),
        case(
            "ps: labels of every size",
            format!("[{}]", PS.replace("1795337999", &"9".repeat(n("9")))),
        ),
        case(
            "ps: exit codes and times out of range",
            format!(
                "[{}]",
                PS.replace("\"ExitCode\":3", &format!("\"ExitCode\":{max}"))
                    .replace("1795337436", &max.to_string())
            ),
        ),
        case(
            "inspect: many entries",
            corpus::repeat("[", |_| format!("{INSPECT},"), &format!("{INSPECT}]"), size)
                .into_iter()
                .map(char::from)
                .collect(),
        ),
        case(
            "inspect: times of every size",
            format!(
                "[{}]",
                INSPECT.replace(
                    "2026-11-22T08:50:36.070637712Z",
                    &format!("2026-11-22T08:50:36.{}Z", "7".repeat(n("7")))
                )
            ),
        ),
        case(
            "event: huge attributes",
            corpus::repeat(
                "{\"Type\":\"container\",\"Attributes\":{",
                |i| format!("\"k{i}\":\"v\","),
                "\"io.agentd.deadline\":\"-9223372036854775809\"}}",
                size,
            )
            .into_iter()
            .map(char::from)
            .collect(),
        ),
        case("exit file: a huge number", "9".repeat(size)),
    ]
}

/// Every parser with every hostile output of up to 1 MiB (invalid UTF-8
/// reaches them replaced, as the runner hands them lossily decoded text).
#[test]
fn hostile_podman_output_up_to_1_mib_is_parsed_or_refused_in_budget_issue_17() {
    let mut problems = Vec::new();
    let shaped = shaped(MAX_INPUT);
    for (name, entry, parse) in parsers() {
        let wrapped = if matches!(name, "events line" | "info" | "exit file") {
            entry.to_string()
        } else {
            format!("[{entry}]")
        };
        assert!(parse(&wrapped), "{name}: the template parses");
        let mut cases = corpus::json(MAX_INPUT, entry);
        cases.extend(shaped.iter().cloned());
        for c in cases {
            // Lossy decoding can grow the text: cut it back to 1 MiB.
            let mut text = String::from_utf8_lossy(&c.bytes).into_owned();
            let mut end = text.len().min(MAX_INPUT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            let what = format!("{name} of {} ({} bytes)", c.name, text.len());
            if let Err(e) = within_budget(&what, || parse(&text), |_| ()) {
                problems.push(e);
            }
        }
    }
    assert_none(&problems);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A well-formed output cut anywhere, or with one byte changed: parsed
    /// or refused, never a panic, in budget.
    #[test]
    fn damaged_podman_output_is_parsed_or_refused_in_budget_issue_17(
        which in 0usize..6,
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in prop_oneof![Just(b'"'), Just(b'['), Just(b'{'), Just(b'9'), Just(b'-'), Just(b'\\'), Just(b' '), any::<u8>()],
    ) {
        let (name, entry, parse) = parsers()[which];
        let mut bytes = format!("[{entry},{entry}]").into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        within_budget(name, || parse(&text), |_| ()).map_err(TestCaseError::fail)?;
        within_budget(name, || parse(text.get(1..).unwrap_or("")), |_| ()).map_err(TestCaseError::fail)?;
    }
}
