//! PURE: an `agentd.toml` of the system agentd is modelled on, as text, to
//! profile files (as text) and notes. No IO: the caller resolves nothing on
//! disk, checks which named paths exist and writes the files.
//!
//! Both of that project's formats are read: `[[profiles]]` with a `command`
//! array (its README's example), and the later `[[agents]]` with
//! `[agents.command] argv = [...]`. Fields are mapped one by one; anything
//! without an equivalent becomes a note rather than being dropped silently.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use toml::{Table, Value};

/// What one config converts to.
#[derive(Debug, Default)]
pub struct Conversion {
    /// `profiles` or `agents` (both when the file has both).
    pub format: Vec<&'static str>,
    pub profiles: Vec<Converted>,
    /// Entries that could not become a profile: `(label, why)`.
    pub rejected: Vec<(String, String)>,
    /// Fields with no equivalent, and what to do instead: `(field, note)`.
    pub unmapped: Vec<(String, String)>,
    /// `[daemon]` settings that are daemon flags here: `(field, advice)`.
    pub daemon_flags: Vec<(String, String)>,
    /// Names of the profiles made, to refuse a name listed twice.
    names: std::collections::BTreeSet<String>,
}

/// One profile file to write.
#[derive(Debug)]
pub struct Converted {
    pub name: String,
    /// `profiles[0]` or `agents[1]`: where the entry sat in the config.
    pub label: String,
    /// The profile file's text (TOML).
    pub text: String,
    /// Fields carried over, in file order.
    pub mapped: Vec<&'static str>,
    /// Host paths the profile names, `(field, path)`, to check for existence.
    pub host_paths: Vec<(String, PathBuf)>,
}

/// The profile file as written: the field names of docs/desired-dir.md,
/// "Profile fields".
#[derive(Debug, Serialize)]
struct Out {
    name: String,
    base_image: String,
    command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    methodology_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo_token_source: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<Credential>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<Mount>,
}

#[derive(Debug, Serialize)]
struct Credential {
    name: String,
    source: String,
}

#[derive(Debug, Serialize)]
struct Mount {
    source: String,
    target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
}

/// Largest config read: the original's `agentd.toml` is a few KiB, and
/// every profile made from it must fit the profile limit anyway. Bounds
/// what a stray file costs: a 1 MiB config took up to 94 MiB to convert
/// (issue 17).
pub const MAX_CONFIG_BYTES: usize = crate::desired::MAX_FILE_BYTES;

/// Why a config cannot be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "too large ({0} bytes; the limit is {limit} KiB); hint: `agentd import` reads the agentd.toml of the system agentd is modelled on, a small file",
        limit = MAX_CONFIG_BYTES / 1024
    )]
    TooLarge(usize),
    #[error("not TOML: {0}")]
    Toml(String),
    #[error(
        "neither a `[[profiles]]` nor an `[[agents]]` array; hint: `agentd import` reads the agentd.toml of the system agentd is modelled on; profile files of this agentd go straight into profiles/"
    )]
    NoEntries,
}

/// Convert `text`, an `agentd.toml` whose folder is `base_dir` (absolute;
/// relative paths in the file start there, as in the original). `origin` is
/// how the generated files name their source.
pub fn convert(text: &str, base_dir: &Path, origin: &str) -> Result<Conversion, ConvertError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConvertError::TooLarge(text.len()));
    }
    let top: Table = toml::from_str(text).map_err(|e| ConvertError::Toml(one_line(&e)))?;
    let mut c = Conversion::default();
    for (key, value) in &top {
        match (key.as_str(), value) {
            ("profiles" | "agents", Value::Array(entries)) => {
                c.format.push(if key == "profiles" {
                    "profiles"
                } else {
                    "agents"
                });
                for (i, e) in entries.iter().enumerate() {
                    let label = format!("{key}[{i}]");
                    match e {
                        Value::Table(t) => entry(&mut c, &label, t, base_dir, origin),
                        _ => c.rejected.push((label, "is not a table".into())),
                    }
                }
            }
            ("daemon", Value::Table(d)) => daemon(&mut c, d, base_dir),
            _ => c
                .unmapped
                .push((key.clone(), "unknown top-level key; left out".into())),
        }
    }
    if c.format.is_empty() {
        return Err(ConvertError::NoEntries);
    }
    Ok(c)
}

fn daemon(c: &mut Conversion, d: &Table, base_dir: &Path) {
    for (k, v) in d {
        let field = format!("daemon.{k}");
        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        match k.as_str() {
            "audit_root" => c.daemon_flags.push((
                field,
                format!(
                    "start the daemon with `--audit-root {}` (or AGENTD_AUDIT_ROOT)",
                    resolve(base_dir, &shown).display()
                ),
            )),
            "socket_path" | "pid_file" => c.unmapped.push((
                field,
                format!(
                    "`{shown}`: agentd has no control socket or pid file; its CLI reads the state dir (--state, AGENTD_STATE), which also holds the daemon's lock; left out"
                ),
            )),
            _ => c.unmapped.push((field, format!("`{shown}`: left out"))),
        }
    }
}

fn entry(c: &mut Conversion, label: &str, t: &Table, base_dir: &Path, origin: &str) {
    let name = match t.get("name").and_then(Value::as_str) {
        Some(n) if safe_file_stem(n) => n.to_string(),
        Some(n) => {
            return c.rejected.push((
                label.into(),
                format!("name `{n}` cannot be a file name (use letters, digits, _ and -)"),
            ));
        }
        None => {
            return c
                .rejected
                .push((label.into(), "has no string `name`".into()));
        }
    };
    let label = format!("{label} `{name}`");
    // A set, not a search of the profiles so far: thousands of entries
    // would cost their square (issue 17).
    if c.names.contains(&name) {
        return c.rejected.push((
            label,
            "the name is listed twice; the first one was kept".into(),
        ));
    }
    let mut mapped = vec!["name"];
    let mut host_paths = Vec::new();
    let mut notes: Vec<(String, String)> = Vec::new();
    let mut unmapped = |field: String, note: &str| notes.push((field, note.to_string()));
    let str_field = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);

    let Some(base_image) = str_field("base_image") else {
        return c
            .rejected
            .push((label, "has no string `base_image`".into()));
    };
    mapped.push("base_image");
    let command = match t.get("command") {
        Some(Value::Array(a)) => strings(a),
        Some(Value::Table(ct)) => {
            for k in ct.keys().filter(|k| *k != "argv") {
                unmapped(
                    format!("{label}: command.{k}"),
                    "the command is an argv list only; left out",
                );
            }
            ct.get("argv")
                .and_then(Value::as_array)
                .and_then(|a| strings(a))
        }
        _ => None,
    };
    let Some(command) = command.filter(|c| !c.is_empty()) else {
        return c.rejected.push((
            label,
            "has no `command` array of strings (or `[command] argv`)".into(),
        ));
    };
    mapped.push("command");
    let methodology_dir = str_field("methodology_dir").map(|m| {
        let p = resolve(base_dir, &m);
        host_paths.push(("methodology_dir".to_string(), p.clone()));
        p.display().to_string()
    });
    let mut credentials = Vec::new();
    for (i, ct) in tables(t.get("credentials")).iter().enumerate() {
        let get = |k: &str| ct.get(k).and_then(Value::as_str).map(str::to_string);
        match (get("name"), get("source")) {
            (Some(name), Some(source)) => credentials.push(Credential { name, source }),
            _ => unmapped(
                format!("{label}: credentials[{i}]"),
                "needs string `name` and `source`; left out",
            ),
        }
        for k in ct
            .keys()
            .filter(|k| !matches!(k.as_str(), "name" | "source"))
        {
            unmapped(format!("{label}: credentials[{i}].{k}"), "left out");
        }
    }
    let mut mounts = Vec::new();
    for (i, mt) in tables(t.get("mounts")).iter().enumerate() {
        let get = |k: &str| mt.get(k).and_then(Value::as_str).map(str::to_string);
        match (get("source"), get("target")) {
            (Some(source), Some(target)) => {
                host_paths.push((format!("mounts[{i}].source"), PathBuf::from(&source)));
                mounts.push(Mount {
                    source,
                    target,
                    read_only: mt.get("read_only").and_then(Value::as_bool),
                });
            }
            _ => unmapped(
                format!("{label}: mounts[{i}]"),
                "needs string `source` and `target`; left out",
            ),
        }
        for k in mt
            .keys()
            .filter(|k| !matches!(k.as_str(), "source" | "target" | "read_only"))
        {
            unmapped(format!("{label}: mounts[{i}].{k}"), "left out");
        }
    }
    let known = [
        "name",
        "base_image",
        "command",
        "repo",
        "schedule",
        "methodology_dir",
        "repo_token_source",
        "credentials",
        "mounts",
    ];
    for k in t.keys().filter(|k| !known.contains(&k.as_str())) {
        unmapped(format!("{label}: {k}"), "left out");
    }
    let out = Out {
        name: name.clone(),
        base_image,
        command,
        repo: str_field("repo"),
        schedule: str_field("schedule"),
        methodology_dir,
        repo_token_source: str_field("repo_token_source").filter(|s| !s.is_empty()),
        credentials,
        mounts,
    };
    for (field, present) in [
        ("repo", out.repo.is_some()),
        ("schedule", out.schedule.is_some()),
        ("methodology_dir", out.methodology_dir.is_some()),
        ("repo_token_source", out.repo_token_source.is_some()),
        ("credentials", !out.credentials.is_empty()),
        ("mounts", !out.mounts.is_empty()),
    ] {
        if present {
            mapped.push(field);
        }
    }
    let body = match toml::to_string(&out) {
        Ok(b) => b,
        Err(e) => {
            return c
                .rejected
                .push((label, format!("cannot be written as TOML: {e}")));
        }
    };
    c.unmapped.extend(notes);
    c.names.insert(name.clone());
    c.profiles.push(Converted {
        text: format!(
            "# imported by `agentd import` from {} ({})\n{body}",
            comment_text(origin),
            comment_text(&label)
        ),
        name,
        label,
        mapped,
        host_paths,
    });
}

/// `s` fit for the rest of a TOML comment line: every control character
/// escaped (issue 17: a newline in the config's path or folder name would
/// end the comment and start keys of the generated profile; TOML refuses
/// the other controls in a comment), and the bidirectional overrides that
/// would make the line read differently from what it holds.
fn comment_text(s: &str) -> std::borrow::Cow<'_, str> {
    crate::cli::escape::text(s)
}

fn strings(a: &[Value]) -> Option<Vec<String>> {
    a.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

fn tables(v: Option<&Value>) -> Vec<Table> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_table).cloned().collect(),
        _ => Vec::new(),
    }
}

/// A name that is safe as a file stem (the real name rules are checked by
/// validation; this only keeps the file inside profiles/).
fn safe_file_stem(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `written` against `base` (absolute when `base` is), with `.` and `..`
/// folded lexically: the folder may not exist yet, so nothing is resolved on
/// disk (a symlinked `..` is taken literally, as the original does).
pub fn resolve(base: &Path, written: &str) -> PathBuf {
    let joined = base.join(written);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c.as_os_str());
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_folds_dots_lexically() {
        let b = Path::new("/etc/agentd");
        assert_eq!(resolve(b, "../groundwork"), Path::new("/etc/groundwork"));
        assert_eq!(resolve(b, "./m/."), Path::new("/etc/agentd/m"));
        assert_eq!(resolve(b, "/srv/g"), Path::new("/srv/g"));
    }

    #[test]
    fn agents_command_table_maps_argv_and_notes_the_rest() {
        let text = r#"
[[agents]]
name = "a"
base_image = "img"
methodology_dir = "m"
color = "blue"
[agents.command]
argv = ["x", "y"]
shell = true
"#;
        let c = convert(text, Path::new("/cfg"), "cfg").expect("converts");
        assert_eq!(c.format, ["agents"]);
        let p = &c.profiles[0];
        assert!(p.text.contains("command = [\"x\", \"y\"]"), "{}", p.text);
        assert!(
            p.text.contains("methodology_dir = \"/cfg/m\""),
            "{}",
            p.text
        );
        let fields: Vec<&str> = c.unmapped.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["agents[0] `a`: command.shell", "agents[0] `a`: color"]
        );
    }

    #[test]
    fn the_origin_cannot_add_lines_to_the_profile_issue_17() {
        let text = "[[profiles]]\nname = \"a\"\nbase_image = \"i\"\ncommand = [\"x\"]\n";
        let origin =
            "/tmp/x\nnetwork = \"host\"\r\nallowed_repos = [\"\\u002f**\"]\u{1b}[2J\u{202e}#.toml";
        let c = convert(text, Path::new("/tmp"), origin).expect("converts");
        let out = &c.profiles[0].text;
        let table: Table = toml::from_str(out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        assert_eq!(keys, ["base_image", "command", "name"], "{out}");
        let first = out.lines().next().unwrap_or("");
        assert!(
            first.contains(r#"/tmp/x\nnetwork = "host"\r\nallowed_repos"#)
                && first.contains(r"\e[2J\u{202e}#.toml"),
            "{first}"
        );
    }

    #[test]
    fn unusable_entries_are_rejected_not_guessed() {
        let text = r#"
[[profiles]]
name = "../evil"
base_image = "i"
command = ["x"]
[[profiles]]
name = "b"
command = ["x"]
[[profiles]]
name = "c"
base_image = "i"
command = []
"#;
        let c = convert(text, Path::new("/"), "cfg").expect("converts");
        assert!(c.profiles.is_empty());
        assert_eq!(c.rejected.len(), 3, "{:?}", c.rejected);
        assert!(matches!(
            convert("[daemon]\n", Path::new("/"), "cfg"),
            Err(ConvertError::NoEntries)
        ));
        assert!(matches!(
            convert("not = [toml", Path::new("/"), "cfg"),
            Err(ConvertError::Toml(_))
        ));
    }
}
