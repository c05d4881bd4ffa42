//! Issue 17, "never panics on input": the profile and request loaders
//! return diagnostics, never panic, and stay under 1 s of CPU and 64 MiB
//! for hostile documents up to 1 MiB, under and over the size guard
//! (measured by `crate::testkit`, which also runs each load on a 2 MiB
//! stack, so a parser that recurses per nesting level fails here).

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::testkit::corpus::{self, Case};
use crate::testkit::{MAX_INPUT, assert_none, within_budget};

/// A host where every path exists and is a folder; no file can be read.
struct Everything;

impl HostView for Everything {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn read(&self, _: &Path) -> Option<Vec<u8>> {
        None
    }
}

/// A profile the requests below can name: requests are validated against
/// it, so their cross-file rules run too.
const PROFILE_P: &[u8] = b"base_image = \"img\"\ncommand = [\"run\"]\nrepo = \"https://git.example.com/team/a.git\"\nallowed_repos = [\"https://git.example.com/team/*\", \"/srv/forks/**\"]\nmethodology_dir = \"/srv/meth\"\n";

/// Load `bytes` as the file at `path` (next to profile `p`), within the
/// issue's budget; the diagnostics about that file, rendered.
fn load_one(what: &str, path: &str, bytes: &[u8]) -> Result<Vec<String>, String> {
    let kind = if path.contains("/profiles/") {
        Kind::Profile
    } else {
        Kind::Request
    };
    within_budget(
        what,
        || {
            load(
                &[
                    (Kind::Profile, Path::new("d/profiles/p.toml"), PROFILE_P),
                    (kind, Path::new(path), bytes),
                ],
                &Everything,
            )
        },
        |(_, diags)| {
            diags
                .iter()
                .filter(|d| d.path == Path::new(path))
                .map(|d| d.to_string())
                .collect()
        },
    )
}

/// Makes a corpus of hostile documents of a size.
type Maker = fn(usize) -> Vec<Case>;

/// Each loader (profile, request; TOML, YAML) with the maker of its
/// corpus of hostile documents of a size.
fn loaders() -> [(&'static str, Maker); 4] {
    [
        ("d/profiles/x.toml", |size| {
            corpus::toml(size, "base_image = \"img\"\n", "command", "command")
        }),
        ("d/requests/x.toml", |size| {
            corpus::toml(
                size,
                "profile = \"p\"\nartifact.type = \"t\"\n",
                "repo",
                "artifact.json",
            )
        }),
        ("d/profiles/x.yaml", |size| {
            corpus::yaml(size, "base_image: img\n", "command", "command")
        }),
        ("d/requests/x.yaml", |size| {
            corpus::yaml(
                size,
                "profile: p\nartifact:\n  type: t\n",
                "  json",
                "  json",
            )
        }),
    ]
}

/// Every hostile document for the loader of `path`, as large as the size
/// guard lets through: each loads (a few are valid) or gets diagnostics,
/// in budget.
fn under_the_guard(path: &str) {
    let mut problems = Vec::new();
    for (_, make) in loaders().into_iter().filter(|(p, _)| *p == path) {
        for c in make(MAX_FILE_BYTES) {
            assert!(c.bytes.len() <= MAX_FILE_BYTES, "{}", c.name);
            let what = format!("{path} with {} ({} bytes)", c.name, c.bytes.len());
            if let Err(e) = load_one(&what, path, &c.bytes) {
                problems.push(e);
            }
        }
    }
    assert_none(&problems);
}

// Deep nesting, huge arrays, anchors and aliases, very long keys and
// strings, NUL and invalid UTF-8: one test per loader, so they run in
// parallel.

#[test]
fn hostile_toml_profiles_under_the_size_guard_get_diagnostics_in_budget_issue_17() {
    under_the_guard("d/profiles/x.toml");
}

#[test]
fn hostile_toml_requests_under_the_size_guard_get_diagnostics_in_budget_issue_17() {
    under_the_guard("d/requests/x.toml");
}

#[test]
fn hostile_yaml_profiles_under_the_size_guard_get_diagnostics_in_budget_issue_17() {
    under_the_guard("d/profiles/x.yaml");
}

#[test]
fn hostile_yaml_requests_under_the_size_guard_get_diagnostics_in_budget_issue_17() {
    under_the_guard("d/requests/x.yaml");
}

/// The same documents just over the size guard, and at 1 MiB, are refused
/// by the guard, whatever they hold.
#[test]
fn hostile_documents_over_the_size_guard_are_refused_in_budget_issue_17() {
    let mut problems = Vec::new();
    for (path, make) in loaders() {
        let mut cases = make(MAX_FILE_BYTES + 1024);
        cases.extend(corpus::junk(MAX_INPUT));
        for c in cases.into_iter().filter(|c| c.bytes.len() > MAX_FILE_BYTES) {
            let what = format!("{path} with {} ({} bytes)", c.name, c.bytes.len());
            match load_one(&what, path, &c.bytes) {
                Ok(d) if d.len() == 1 && d[0].contains("file is too large") => {}
                Ok(d) => problems.push(format!("{what}: {d:?}")),
                Err(e) => problems.push(e),
            }
        }
    }
    assert_none(&problems);
}

/// Profiles that parse and hold one field many thousand times: every entry
/// wrong, or all valid and overlapping. Validation's per-entry work (the
/// position of each problem, the overlap of mount targets) must not grow
/// with the square of the entries.
#[test]
fn profiles_with_thousands_of_entries_are_validated_in_budget_issue_17() {
    let size = MAX_FILE_BYTES;
    let head = "base_image = \"img\"\ncommand = [\"run\"]\n";
    let storms: Vec<(&str, Vec<u8>)> = vec![
        (
            "mounts with one target",
            corpus::repeat(
                &format!("{head}mounts = ["),
                |_| "{source=\"/s\",target=\"/t\"},".into(),
                "]\n",
                size,
            ),
        ),
        (
            "mounts nested in each other",
            corpus::repeat(
                &format!("{head}mounts = ["),
                |i| format!("{{source=\"/s\",target=\"/t{}\"}},", "/a".repeat(i % 50)),
                "]\n",
                size,
            ),
        ),
        (
            "mounts each on a line, every one wrong",
            corpus::repeat(
                head,
                |_| "[[mounts]]\nsource = \"rel\"\ntarget = \"rel\"\n".into(),
                "",
                size,
            ),
        ),
        (
            "credentials each on a line, every one wrong",
            corpus::repeat(
                head,
                |_| "[[credentials]]\nname = \"1\"\nsource = \"A\"\nfile = \"rel\"\n".into(),
                "",
                size,
            ),
        ),
        (
            "credentials listed twice",
            corpus::repeat(
                &format!("{head}credentials = ["),
                |_| "{name=\"A\",source=\"B\"},".into(),
                "]\n",
                size,
            ),
        ),
        (
            "env keys, every one wrong",
            corpus::repeat(
                &format!("{head}[env]\n"),
                |i| format!("\"{i}\" = \"v\"\n"),
                "",
                size,
            ),
        ),
        (
            "allowed_repos, every one wrong",
            corpus::repeat(
                &format!("{head}allowed_repos = ["),
                |_| "\"rel\",".into(),
                "]\n",
                size,
            ),
        ),
        (
            "allowed_repos, every one empty",
            corpus::repeat(
                &format!("{head}allowed_repos = ["),
                |_| "\"\",".into(),
                "]\n",
                size,
            ),
        ),
        (
            "env keys, every one empty",
            corpus::repeat(
                &format!("{head}env = {{"),
                |_| "\"\"=\"\",".into(),
                "}\n",
                size,
            ),
        ),
        (
            "command entries, every one empty",
            corpus::repeat(
                "base_image = \"img\"\ncommand = [",
                |_| "\"\",".into(),
                "]\n",
                size,
            ),
        ),
        (
            "allowed_repos, all valid",
            corpus::repeat(
                &format!("{head}repo = \"https://h/r\"\nallowed_repos = ["),
                |i| format!("\"https://h/t{i}/*\","),
                "]\n",
                size,
            ),
        ),
        (
            "a huge command",
            corpus::repeat(
                "base_image = \"img\"\ncommand = [",
                |_| "\"x\",".into(),
                "]\n",
                size,
            ),
        ),
    ];
    let mut problems = Vec::new();
    for (name, bytes) in storms {
        assert!(bytes.len() <= MAX_FILE_BYTES);
        let what = format!("profile with {name} ({} bytes)", bytes.len());
        if let Err(e) = load_one(&what, "d/profiles/x.toml", &bytes) {
            problems.push(e);
        }
    }
    assert_none(&problems);
}

/// Requests that parse and carry the most they can: many entries are not
/// possible in a request, so the large parts are its texts and artifact.
#[test]
fn requests_with_huge_fields_are_validated_in_budget_issue_17() {
    let size = MAX_FILE_BYTES;
    let storms: Vec<(&str, Vec<u8>)> = vec![
        (
            "a huge inline artifact",
            corpus::repeat(
                "profile = \"p\"\n[artifact]\ntype = \"t\"\njson = [",
                |i| format!("{{k{i} = [1, 2, \"x\"]}},"),
                "]\n",
                size,
            ),
        ),
        (
            "deep JSON text as the artifact",
            corpus::nest(
                "profile = \"p\"\n[artifact]\ntype = \"t\"\njson = '",
                "[",
                "",
                "]",
                "'\n",
                size,
            ),
        ),
        (
            "a huge request text",
            corpus::nest("profile = \"p\"\nrequest = \"", "x", "\"", "", "\n", size),
        ),
        (
            "a huge repo",
            corpus::nest(
                "profile = \"p\"\nrepo = \"https://git.example.com/team/",
                "a",
                ".git\"",
                "",
                "\n",
                size,
            ),
        ),
        (
            "a repo of many dot segments",
            corpus::nest(
                "profile = \"p\"\nrepo = \"/srv/forks/",
                "./",
                "x\"",
                "",
                "\n",
                size,
            ),
        ),
        (
            "a huge work unit",
            corpus::nest("profile = \"p\"\nwork_unit = \"", "x", "\"", "", "\n", size),
        ),
    ];
    let mut problems = Vec::new();
    for (name, bytes) in storms {
        assert!(bytes.len() <= MAX_FILE_BYTES);
        let what = format!("request with {name} ({} bytes)", bytes.len());
        if let Err(e) = load_one(&what, "d/requests/x.toml", &bytes) {
            problems.push(e);
        }
    }
    assert_none(&problems);
}

/// A host where every path exists, the artifact schema of type `t` is
/// `SCHEMA`, and every artifact file holds `artifact`.
struct ArtifactHost {
    artifact: Vec<u8>,
}

/// An operator's schema of the usual kind: required fields, types and a
/// pattern for whatever else the artifact holds.
const SCHEMA: &str = r#"{"type":"object","required":["pr"],"properties":{"pr":{"type":"integer"}},"additionalProperties":{"type":"array","items":{"type":"string","pattern":"^[a-z]+$"}}}"#;

impl HostView for ArtifactHost {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        path.ends_with("schemas/t.schema.json")
            .then(|| SCHEMA.as_bytes().to_vec())
    }
    fn read_beneath(&self, _: &Path, _: &Path, cap: usize) -> Result<Vec<u8>, String> {
        Ok(self.artifact[..self.artifact.len().min(cap + 1)].to_vec())
    }
}

/// A request's artifact file (request-controlled, up to 1 MiB) is parsed
/// and checked against the profile's schema: every hostile JSON document
/// gets a value or a diagnostic, in budget.
#[test]
fn request_artifact_files_up_to_1_mib_are_validated_in_budget_issue_17() {
    let request = b"profile = \"p\"\n[artifact]\ntype = \"t\"\npath = \"a.json\"\n";
    let ok = ArtifactHost {
        artifact: br#"{"pr": 7, "labels": ["a"]}"#.to_vec(),
    };
    let load_with = |host: &ArtifactHost| {
        load(
            &[
                (Kind::Profile, Path::new("d/profiles/p.toml"), PROFILE_P),
                (Kind::Request, Path::new("d/requests/x.toml"), request),
            ],
            host,
        )
    };
    let (_, diags) = load_with(&ok);
    assert!(diags.is_empty(), "the template is valid: {diags:?}");
    let mut problems = Vec::new();
    let entry = r#"{"pr": 7, "labels": ["a", "b", "NOT"]}"#;
    let mut cases = corpus::json(MAX_ARTIFACT_BYTES, entry);
    cases.push(Case {
        name: "an array every item of which the schema refuses".into(),
        bytes: corpus::repeat(
            "{\"pr\":7,\"x\":[0",
            |_| ",0".into(),
            "]}",
            MAX_ARTIFACT_BYTES,
        ),
    });
    cases.push(Case {
        name: "many properties the schema refuses".into(),
        bytes: corpus::repeat(
            "{\"pr\":7",
            |i| format!(",\"{i}\":0"),
            "}",
            MAX_ARTIFACT_BYTES,
        ),
    });
    for c in cases {
        let host = ArtifactHost { artifact: c.bytes };
        let what = format!(
            "artifact file of {} ({} bytes)",
            c.name,
            host.artifact.len()
        );
        if let Err(e) = within_budget(&what, || load_with(&host), |(_, d)| d.len()) {
            problems.push(e);
        }
    }
    assert_none(&problems);
}

/// Brackets, braces and block markers opened to a random depth, closed or
/// not, in the fields a loader reads deepest.
fn nested_document() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let toml_tokens = [("[", "]"), ("{a=", "}"), ("[{a=", "}]"), ("[[", "]]")];
    let yaml_tokens = [
        ("[", "]"),
        ("{a: ", "}"),
        ("- ", ""),
        ("? ", ""),
        ("[{a: ", "}]"),
    ];
    (
        0usize..4,
        proptest::collection::vec((0usize..5, 1usize..40_000), 1..4),
        any::<bool>(),
    )
        .prop_map(move |(file, runs, close)| {
            let (path, head, toml) = [
                ("d/profiles/x.toml", "base_image = \"i\"\ncommand = ", true),
                (
                    "d/requests/x.toml",
                    "profile = \"p\"\nartifact.type = \"t\"\nartifact.json = ",
                    true,
                ),
                ("d/profiles/x.yaml", "base_image: i\ncommand: ", false),
                (
                    "d/requests/x.yaml",
                    "profile: p\nartifact:\n  type: t\n  json: ",
                    false,
                ),
            ][file];
            let mut open = head.to_string();
            let mut closing = String::new();
            for (t, n) in runs {
                let (o, c) = if toml {
                    toml_tokens[t % toml_tokens.len()]
                } else {
                    yaml_tokens[t]
                };
                open += &o.repeat(n);
                closing = c.repeat(n) + &closing;
            }
            open += "1";
            if close {
                open += &closing;
            }
            open.truncate(MAX_FILE_BYTES);
            (path, open.into_bytes())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Nesting of every kind and depth gets diagnostics, in budget.
    #[test]
    fn nested_documents_get_diagnostics_in_budget_issue_17((path, bytes) in nested_document()) {
        let what = format!("{path} nested ({} bytes)", bytes.len());
        let diags = load_one(&what, path, &bytes).map_err(TestCaseError::fail)?;
        prop_assert!(!diags.is_empty(), "{}: accepted", what);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any bytes of any length up to 1 MiB: under the guard they are
    /// parsed, over it refused, within budget either way.
    #[test]
    fn any_bytes_up_to_1_mib_get_diagnostics_in_budget_issue_17(
        len in prop_oneof![0usize..4096, (MAX_FILE_BYTES - 64)..(MAX_FILE_BYTES + 64), 0..=MAX_INPUT],
        seed in any::<u64>(),
        alphabet in prop_oneof![Just(&b"[]{}=:-?&*!\"' \nax,.#"[..]), Just(&b"\0\xff\xc3abc \n"[..])],
        file in 0usize..4,
    ) {
        let path = ["d/profiles/x.toml", "d/requests/x.toml", "d/profiles/x.yaml", "d/requests/x.yml"][file];
        let mut x = seed | 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[usize::try_from(x % alphabet.len() as u64).unwrap_or(0)]
            })
            .collect();
        let what = format!("{path} with {len} random bytes (seed {seed})");
        let diags = load_one(&what, path, &bytes).map_err(TestCaseError::fail)?;
        prop_assert!(!diags.is_empty(), "{}: accepted", what);
        if len > MAX_FILE_BYTES {
            prop_assert!(diags[0].contains("file is too large"), "{}: {:?}", what, diags);
        }
    }
}

// --- Regression cases: inputs that failed on the base commit ---

/// Nine nested anchors of nine aliases each in a request's inline artifact
/// (a JSON value of any shape): 450 bytes that serde-saphyr's default alias
/// budget expanded into 150 MiB of value in 0.7 s. Now refused at the
/// alias replay limit, with the file's position.
#[test]
fn a_billion_laughs_in_a_request_artifact_is_refused_in_budget_issue_17() {
    let mut nested = format!("&a0 [{}]", ["\"lol\""; 9].join(","));
    for i in 1..10 {
        nested = format!(
            "&a{i} [{nested}, {}]",
            vec![format!("*a{}", i - 1); 8].join(",")
        );
    }
    let text = format!("profile: p\nartifact:\n  type: t\n  json: {nested}\n");
    assert!(text.len() < 500);
    let diags = load_one("billion laughs", "d/requests/x.yaml", text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].starts_with("d/requests/x.yaml:4:"), "{diags:?}");
    assert!(
        diags[0].contains(": alias replay limit exceeded: ")
            && diags[0].ends_with("; hint: aliases may repeat at most 10000 parsed items per file; write the values out, or alias less"),
        "{diags:?}"
    );
}

/// Anchors and aliases used as intended still work.
#[test]
fn yaml_aliases_within_the_replay_budget_still_load_issue_17() {
    let profile = "base_image: img\ncommand: &c [run, \"--fast\"]\nenv: {A: &v x, B: *v}\n";
    let diags = load_one("profile", "d/profiles/x.yaml", profile.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diags, Vec::<String>::new());
    // An artifact reusing one 1,000-event list 9 times: 9,000 replays.
    let list = format!("[{}]", vec!["1"; 998].join(","));
    let request = format!(
        "profile: p\nartifact:\n  type: t\n  json: {{a: &l {list}, b: [{}]}}\n",
        ["*l"; 9].join(",")
    );
    let diags = load_one("request", "d/requests/x.yaml", request.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(diags.iter().all(|d| !d.contains("alias")), "{diags:?}");
}

/// 10,000 mounts at one target: every pair was compared and reported
/// (50 million diagnostics: past 1 GiB of heap on the base commit). Now
/// each mount inside or equal to another is named once, with the nearest
/// enclosing one, and at most `MAX_LISTED` problems are listed.
#[test]
fn thousands_of_overlapping_mounts_are_reported_once_each_in_budget_issue_17() {
    let text = corpus::repeat(
        "base_image = \"img\"\ncommand = [\"run\"]\nmounts = [",
        |_| "{source=\"/s\",target=\"/t\"},".into(),
        "]\n",
        MAX_FILE_BYTES,
    );
    let n = text.windows(7).filter(|w| w == b"{source").count();
    assert!(n > 9_000, "{n}");
    let diags =
        load_one("one target", "d/profiles/x.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    // The 100 listed are one and the same line (identical lines are shown once).
    assert_eq!(
        diags,
        [
            format!(
                "d/profiles/x.toml: {} more problem(s) in this file not listed; hint: at most 100 are listed per file; fix these and validate again",
                n - 1 - 100
            ),
            "d/profiles/x.toml:3:1: mount targets `/t` and `/t` overlap; hint: targets must not be equal or nested".to_string(),
        ]
    );

    // Which pairs: each inner mount once, with the nearest enclosing one.
    let text = "base_image = \"img\"\ncommand = [\"run\"]\nmounts = [\n{source=\"/s\",target=\"/a/b/c\"},\n{source=\"/s\",target=\"/a\"},\n{source=\"/s\",target=\"/a/b\"},\n{source=\"/s\",target=\"/x\"},\n{source=\"/s\",target=\"/a.b\"},\n{source=\"/s\",target=\"/x\"},\n]\n";
    let diags =
        load_one("nested", "d/profiles/x.toml", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut pairs: Vec<&str> = diags
        .iter()
        .filter_map(|d| d.split_once(": ")?.1.split_once("; hint")?.0.into())
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            "mount targets `/a/b/c` and `/a/b` overlap",
            "mount targets `/a` and `/a/b` overlap",
            "mount targets `/x` and `/x` overlap",
        ],
        "{diags:?}"
    );
}

/// Every wrong entry of a long list is a problem, but only the first
/// `MAX_LISTED` are listed, then how many more: 87,000 empty
/// `allowed_repos` entries made 87 MiB of diagnostics before.
#[test]
fn a_file_lists_at_most_100_problems_then_counts_the_rest_issue_17() {
    let text = format!(
        "base_image = \"img\"\ncommand = [\"run\"]\nallowed_repos = [{}]\n",
        vec!["\"\""; 1000].join(",")
    );
    let diags = load_one("1000 wrong", "d/profiles/x.toml", text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diags.len(), 101);
    // Sorted for output: the count (no position) comes first.
    assert_eq!(
        diags[0],
        "d/profiles/x.toml: 900 more problem(s) in this file not listed; hint: at most 100 are listed per file; fix these and validate again"
    );
    assert!(
        diags[1].starts_with("d/profiles/x.toml:3:1: allowed_repos["),
        "{}",
        diags[1]
    );
    assert!(diags.iter().any(|d| d.contains("allowed_repos[99]: ")));
    assert!(!diags.iter().any(|d| d.contains("allowed_repos[100]: ")));
}
