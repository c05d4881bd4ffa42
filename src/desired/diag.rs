//! Diagnostics: one problem in one file, with where and what to do.
//!
//! Rendered as `path:line:col: message` (line and column when known) so
//! editors and `grep` can jump to it; the hint follows after `; hint: `.

use std::fmt;
use std::path::{Path, PathBuf};

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
/// Used for semantic errors, which the parsers cannot place.
pub fn locate_key(text: &str, key: &str, nth: usize) -> Option<Pos> {
    let mut seen = 0;
    for (lineno, line) in text.lines().enumerate() {
        // Keys start a line (after indentation and `- ` list markers) or, in
        // inline tables and flow mappings, follow a `{` or a `,`.
        let starts = std::iter::once(0).chain(
            line.match_indices(['{', ','])
                .filter(|_| line.contains('{'))
                .map(|(i, _)| i + 1),
        );
        for start in starts {
            let rest = &line[start..];
            let trimmed = rest.trim_start_matches([' ', '\t', '-']);
            let col = start + rest.len() - trimmed.len();
            let (bare, quoted) = match trimmed.strip_prefix('"') {
                Some(b) => (b, true),
                None => (trimmed, false),
            };
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
                return Some(Pos {
                    line: u32::try_from(lineno + 1).unwrap_or(u32::MAX),
                    col: u32::try_from(line[..col].chars().count() + 1).unwrap_or(u32::MAX),
                });
            }
            seen += 1;
        }
    }
    None
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

    #[test]
    fn display_is_path_line_col_message() {
        let d = Diagnostic::new(Path::new("p/x.toml"), Some(Pos { line: 3, col: 7 }), "bad")
            .hint("fix it");
        assert_eq!(d.to_string(), "p/x.toml:3:7: bad; hint: fix it");
        let d = Diagnostic::new(Path::new("p/x.toml"), None, "empty file");
        assert_eq!(d.to_string(), "p/x.toml: empty file");
    }
}
