//! Diagnostics: one problem in one file, with where and what to do.
//!
//! Rendered as `path:line:col: message` (line and column when known) so
//! editors and `grep` can jump to it; the hint follows after `; hint: `.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem of a value: the message and, when there is one, a hint.
pub type Problem = (String, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based position, when the parser or the field locator knows it.
    pub pos: Option<Pos>,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Diagnostic {
    pub fn new(path: &Path, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_path_buf(),
            pos,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn pos_of_offset(text: &str, offset: usize) -> Pos {
    let offset = offset.min(text.len());
    // Back off to a char boundary so slicing cannot panic on odd spans.
    let mut end = offset;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        col: u32::try_from(col).unwrap_or(u32::MAX),
    }
}

/// Where a field is written in a TOML or YAML file, found textually so it
/// works for both formats: the `nth` (0-based) line whose first token (after
/// indentation, `- ` list markers, `[[`/`{`) is `key` followed by `=` or `:`.
/// Used for semantic errors, which the parsers cannot place. One call scans
/// the text; to place many problems in one file use [`KeyIndex`].
pub fn locate_key(text: &str, key: &str, nth: usize) -> Option<Pos> {
    let mut seen = 0;
    for (lineno, line) in text.lines().enumerate() {
        for (col, quoted, bare) in key_starts(line) {
            let Some(after) = bare.strip_prefix(key) else {
                continue;
            };
            let after = if quoted {
                after.strip_prefix('"').unwrap_or("")
            } else {
                after
            };
            if !after.trim_start().starts_with(['=', ':']) {
                continue;
            }
            if seen == nth {
                return Some(pos(lineno, line[..col].chars().count()));
            }
            seen += 1;
        }
    }
    None
}

/// Where keys may start in `line`: `(byte column, quoted, text after the
/// opening quote)`, in order. Keys start a line (after indentation and `- `
/// list markers) or, in inline tables and flow mappings, follow a `{` or a
/// `,`.
fn key_starts(line: &str) -> impl Iterator<Item = (usize, bool, &str)> {
    let braces = line.contains('{');
    std::iter::once(0)
        .chain(
            line.match_indices(['{', ','])
                .filter(move |_| braces)
                .map(|(i, _)| i + 1),
        )
        .map(move |start| {
            let rest = &line[start..];
            let trimmed = rest.trim_start_matches([' ', '\t', '-']);
            let col = start + rest.len() - trimmed.len();
            match trimmed.strip_prefix('"') {
                Some(b) => (col, true, b),
                None => (col, false, trimmed),
            }
        })
}

fn pos(lineno: usize, chars_before: usize) -> Pos {
    Pos {
        line: u32::try_from(lineno + 1).unwrap_or(u32::MAX),
        col: u32::try_from(chars_before + 1).unwrap_or(u32::MAX),
    }
}

/// Whether `c` ends an unquoted key in [`KeyIndex`]: a key holding such a
/// character is looked up by scanning instead.
fn ends_key(c: char) -> bool {
    c.is_whitespace() || matches!(c, '=' | ':' | '"')
}

/// At most this many scans per file for keys [`KeyIndex`] cannot hold
/// (env keys with spaces or colons); later ones go unplaced.
const MAX_SCANS: usize = 16;

/// Every place a key is written in one file, found in one pass, so placing
/// thousands of problems costs one scan of the text rather than one each
/// (issue 17: 6,000 wrong mounts, each placed by rescanning the file, took
/// minutes). [`KeyIndex::locate`] answers as [`locate_key`] does.
pub struct KeyIndex<'t> {
    text: &'t str,
    at: std::collections::HashMap<&'t str, Vec<Pos>>,
    scans: std::cell::Cell<usize>,
}

impl<'t> KeyIndex<'t> {
    pub fn new(text: &'t str) -> KeyIndex<'t> {
        let mut at: std::collections::HashMap<&str, Vec<Pos>> = Default::default();
        for (lineno, line) in text.lines().enumerate() {
            // Columns in characters, counted once along the line.
            let (mut byte, mut chars) = (0, 0);
            for (col, quoted, bare) in key_starts(line) {
                chars += line[byte..col].chars().count();
                byte = col;
                let (key, after) = if quoted {
                    match bare.split_once('"') {
                        Some(split) => split,
                        None => continue,
                    }
                } else {
                    bare.split_at(bare.find(ends_key).unwrap_or(bare.len()))
                };
                if !key.is_empty() && after.trim_start().starts_with(['=', ':']) {
                    at.entry(key).or_default().push(pos(lineno, chars));
                }
            }
        }
        KeyIndex {
            text,
            at,
            scans: Default::default(),
        }
    }

    /// Where the `nth` (0-based) `key` is written, as [`locate_key`] says.
    pub fn locate(&self, key: &str, nth: usize) -> Option<Pos> {
        if key.is_empty() || key.contains(ends_key) {
            let n = self.scans.get();
            self.scans.set(n + 1);
            return (n < MAX_SCANS)
                .then(|| locate_key(self.text, key, nth))
                .flatten();
        }
        self.at.get(key)?.get(nth).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_positions() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(pos_of_offset(t, 0), Pos { line: 1, col: 1 });
        assert_eq!(pos_of_offset(t, 6), Pos { line: 2, col: 1 });
        assert_eq!(pos_of_offset(t, 9), Pos { line: 2, col: 3 });
        assert_eq!(pos_of_offset(t, 999).line, 3);
        // Inside a multi-byte char: no panic.
        assert_eq!(pos_of_offset(t, 8), Pos { line: 2, col: 2 });
    }

    #[test]
    fn keys_are_found_in_toml_and_yaml() {
        let toml = "base_image = \"x\"\nmounts = [\n  { source = \"/a\", target = \"/b\" },\n  { source = \"/c\", target = \"/d\" },\n]\n";
        assert_eq!(
            locate_key(toml, "base_image", 0),
            Some(Pos { line: 1, col: 1 })
        );
        assert_eq!(
            locate_key(toml, "target", 1),
            Some(Pos { line: 4, col: 20 })
        );
        let yaml = "mounts:\n  - source: /a\n    target: /b\n  - target: /d\n";
        assert_eq!(locate_key(yaml, "target", 1), Some(Pos { line: 4, col: 5 }));
        assert_eq!(locate_key(yaml, "targ", 0), None);
        assert_eq!(
            locate_key("\"repo\" = 1", "repo", 0),
            Some(Pos { line: 1, col: 1 })
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The one-pass index places every key where the scan does
        /// (issue 17), in TOML and YAML shapes, odd spacing and quoting.
        #[test]
        fn key_index_places_keys_as_locate_key_does_issue_17(
            text in "((source|target|a b|é|x:y|\"|-|=|:|\\{|,|\\[|\\]| |\t|\u{3000}|\r|\n|1)){0,60}",
            nth in 0usize..4,
        ) {
            let index = KeyIndex::new(&text);
            for key in ["source", "target", "a", "x", "é", "1", "a b", "x:y", "sou"] {
                proptest::prop_assert_eq!(
                    index.locate(key, nth),
                    locate_key(&text, key, nth),
                    "{:?} in {:?}", key, text
                );
            }
        }
    }

    #[test]
    fn key_index_finds_keys_in_toml_and_yaml_issue_17() {
        let toml = "base_image = \"x\"\nmounts = [\n  { source = \"/a\", target = \"/b\" },\n  { source = \"/c\", target = \"/d\" },\n]\n";
        let i = KeyIndex::new(toml);
        assert_eq!(i.locate("base_image", 0), Some(Pos { line: 1, col: 1 }));
        assert_eq!(i.locate("target", 1), Some(Pos { line: 4, col: 20 }));
        assert_eq!(i.locate("target", 2), None);
        let yaml = "mounts:\n  - source: /a\n    target: /b\n  - target: /d\n\"a b\": 1\n";
        let i = KeyIndex::new(yaml);
        assert_eq!(i.locate("target", 1), Some(Pos { line: 4, col: 5 }));
        assert_eq!(i.locate("targ", 0), None);
        assert_eq!(i.locate("a b", 0), Some(Pos { line: 5, col: 1 }));
    }

    #[test]
    fn display_is_path_line_col_message() {
        let d = Diagnostic::new(Path::new("p/x.toml"), Some(Pos { line: 3, col: 7 }), "bad")
            .hint("fix it");
        assert_eq!(d.to_string(), "p/x.toml:3:7: bad; hint: fix it");
        let d = Diagnostic::new(Path::new("p/x.toml"), None, "empty file");
        assert_eq!(d.to_string(), "p/x.toml: empty file");
    }
}
