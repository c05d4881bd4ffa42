//! Issue 17, "never panics on input": `agentd import`'s reader turns any
//! config up to 1 MiB into a conversion or an error, never a panic, within
//! 1 s of CPU and 64 MiB (measured by `crate::testkit`).

use std::path::Path;

use proptest::prelude::*;

use super::convert::{MAX_CONFIG_BYTES, convert};
use crate::testkit::corpus;
use crate::testkit::{MAX_INPUT, assert_none, within_budget};

/// Convert `bytes` within budget; how many profiles it made, or the
/// error. Text over the limit goes to `convert` as it is (lossily decoded),
/// to check its own guard; `run` refuses such a file before decoding it.
fn import(what: &str, bytes: &[u8]) -> Result<Result<usize, String>, String> {
    within_budget(
        what,
        || {
            let text = if bytes.len() > MAX_CONFIG_BYTES {
                String::from_utf8_lossy(bytes)
            } else {
                std::str::from_utf8(bytes)
                    .map_err(|e| e.to_string())?
                    .into()
            };
            convert(&text, Path::new("/etc/agentd"), "/etc/agentd/agentd.toml")
                .map_err(|e| e.to_string())
        },
        |r| match r {
            Ok(c) => Ok(c.profiles.len()),
            Err(e) => Err(e.clone()),
        },
    )
}

/// Whether `import`'s outcome is the size guard's refusal.
fn refused_as_too_large(r: &Result<usize, String>) -> bool {
    r.as_ref().is_err_and(|e| e.starts_with("too large ("))
}

/// Import each case of `size` bytes: over the limit it must be refused as
/// too large, under it converted or refused, always in budget.
fn check_all(cases: Vec<(String, Vec<u8>)>, problems: &mut Vec<String>) {
    for (name, bytes) in cases {
        let what = format!("import of {name} ({} bytes)", bytes.len());
        match import(&what, &bytes) {
            Ok(r) if bytes.len() > MAX_CONFIG_BYTES && !refused_as_too_large(&r) => {
                problems.push(format!("{what}: not refused as too large: {r:?}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
}

/// Deep nesting, huge arrays, long keys and strings, NUL and invalid UTF-8
/// inside a `[[profiles]]` entry (where the converter does the most), as
/// large as the limit lets through and at 1 MiB.
#[test]
fn hostile_configs_up_to_1_mib_are_imported_or_refused_in_budget_issue_17() {
    let entry = "[[profiles]]\nname = \"a\"\nbase_image = \"i\"\n";
    let mut problems = Vec::new();
    for size in [MAX_CONFIG_BYTES, MAX_INPUT] {
        let cases = corpus::toml(size, entry, "command", "credentials");
        check_all(
            cases.into_iter().map(|c| (c.name, c.bytes)).collect(),
            &mut problems,
        );
    }
    assert_none(&problems);
}

/// The same at the top level and in an `[[agents]]` entry, at 64 KiB (the
/// parser is the same; what differs is the converter's walk).
#[test]
fn hostile_configs_in_other_shapes_are_imported_or_refused_in_budget_issue_17() {
    let mut problems = Vec::new();
    let cases = [
        corpus::toml(64 * 1024, "", "profiles", "profiles"),
        corpus::toml(
            64 * 1024,
            "[[agents]]\nname = \"a\"\n",
            "command.argv",
            "daemon",
        ),
    ];
    let cases = cases.into_iter().flatten().map(|c| (c.name, c.bytes));
    check_all(cases.collect(), &mut problems);
    assert_none(&problems);
}

/// Configs that parse and hold thousands of entries, fields or notes.
#[test]
fn configs_with_thousands_of_entries_are_imported_in_budget_issue_17() {
    let mut problems = Vec::new();
    for size in [MAX_CONFIG_BYTES, MAX_INPUT] {
        check_all(storms(size), &mut problems);
    }
    assert_none(&problems);
}

/// Configs of `size` bytes that parse and hold thousands of entries,
/// fields or notes.
fn storms(size: usize) -> Vec<(String, Vec<u8>)> {
    let storms: Vec<(&str, Vec<u8>)> = vec![
        (
            "profiles with distinct names",
            corpus::repeat(
                "",
                |i| format!("[[profiles]]\nname=\"p{i}\"\nbase_image=\"i\"\ncommand=[\"x\"]\n"),
                "",
                size,
            ),
        ),
        (
            "profiles with one name",
            corpus::repeat(
                "",
                |_| "[[profiles]]\nname=\"p\"\nbase_image=\"i\"\ncommand=[\"x\"]\n".into(),
                "",
                size,
            ),
        ),
        (
            "profiles without a name",
            corpus::repeat("", |_| "[[profiles]]\n".into(), "", size),
        ),
        (
            "one profile with many unknown fields",
            corpus::repeat(
                "[[profiles]]\nname=\"p\"\nbase_image=\"i\"\ncommand=[\"x\"]\n",
                |i| format!("k{i}=1\n"),
                "",
                size,
            ),
        ),
        (
            "one profile with many mounts",
            corpus::repeat(
                "[[profiles]]\nname=\"p\"\nbase_image=\"i\"\ncommand=[\"x\"]\nmounts=[",
                |i| format!("{{source=\"/s{i}\",target=\"/t\",x=1}},"),
                "]\n",
                size,
            ),
        ),
        (
            "one profile with many credentials",
            corpus::repeat(
                "[[profiles]]\nname=\"p\"\nbase_image=\"i\"\ncommand=[\"x\"]\ncredentials=[",
                |i| format!("{{name=\"N{i}\",source=\"S\"}},"),
                "]\n",
                size,
            ),
        ),
        (
            "agents with long argv",
            corpus::repeat(
                "[[agents]]\nname=\"a\"\nbase_image=\"i\"\n[agents.command]\nargv=[",
                |_| "\"x\",".into(),
                "]\n",
                size,
            ),
        ),
        (
            "many daemon settings",
            corpus::repeat(
                "[[profiles]]\n[daemon]\n",
                |i| format!("k{i}=[[1,2],[3]]\n"),
                "",
                size,
            ),
        ),
    ];
    storms
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}

/// Regression: 19,000 profiles with distinct names took 3.8 s to convert
/// (each name was looked for among the profiles made so far), and a 1 MiB
/// config up to 94 MiB. Now the config is refused over 256 KiB, and names
/// are checked in a set; a name listed twice is still refused, and an
/// entry refused for another reason does not take its name.
#[test]
fn many_profiles_convert_in_budget_and_a_name_listed_twice_is_refused_issue_17() {
    let text = corpus::repeat(
        "",
        |i| format!("[[profiles]]\nname=\"p{i}\"\nbase_image=\"i\"\ncommand=[\"x\"]\n"),
        "",
        MAX_CONFIG_BYTES,
    );
    let n = text.windows(12).filter(|w| w == b"[[profiles]]").count();
    assert!(n > 4_000, "{n}");
    assert_eq!(import("distinct names", &text), Ok(Ok(n)));
    let twice = "[[profiles]]\nname=\"a\"\n[[profiles]]\nname=\"a\"\nbase_image=\"i\"\ncommand=[\"x\"]\n[[profiles]]\nname=\"a\"\nbase_image=\"j\"\ncommand=[\"y\"]\n";
    let c = convert(twice, Path::new("/etc"), "cfg").expect("converts");
    assert_eq!(c.profiles.len(), 1);
    assert_eq!(c.profiles[0].label, "profiles[1] `a`");
    assert_eq!(
        c.rejected,
        [
            (
                "profiles[0] `a`".to_string(),
                "has no string `base_image`".to_string()
            ),
            (
                "profiles[2] `a`".to_string(),
                "the name is listed twice; the first one was kept".to_string()
            ),
        ]
    );
    let big = corpus::repeat("", |_| "# comment\n".into(), "", MAX_INPUT);
    assert_eq!(
        import("1 MiB", &big),
        Ok(Err(format!(
            "too large ({} bytes; the limit is 256 KiB); hint: `agentd import` reads the agentd.toml of the system agentd is modelled on, a small file",
            big.len()
        )))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Config-like text: converted or refused, in budget.
    #[test]
    fn config_like_text_is_imported_or_refused_in_budget_issue_17(
        text in "(\\[\\[(profiles|agents)\\]\\]\n|\\[daemon\\]\n|\\[agents.command\\]\n|(name|base_image|command|argv|mounts|credentials|audit_root|x) = |\"[a-z/.]{0,6}\"|\\[|\\]|\\{|\\}|, |[0-9]|true|\n){0,200}"
    ) {
        let _ = import("import of config-like text", text.as_bytes()).map_err(TestCaseError::fail)?;
    }
}
