//! Bytes to wire structs, for either format, with positioned diagnostics.
//!
//! Guards come first so hostile input cannot hang or exhaust the daemon: a
//! size cap, a NUL-byte (binary) check and UTF-8, then the format parser
//! (serde-saphyr additionally enforces its own event and depth budgets).

use std::path::Path;

use serde::de::DeserializeOwned;

use super::diag::{Diagnostic, Pos, pos_of_offset};

/// Largest profile or request file accepted. Real ones are a few KiB; the cap
/// keeps a stray multi-megabyte file from costing anything.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// The format of a file by its extension; `None` for files agentd ignores.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Check the raw bytes and return them as text, or the one diagnostic that
/// says why they are not a config file.
pub fn as_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, Diagnostic> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::new(
            path,
            None,
            format!(
                "file is too large ({} bytes; the limit is {} KiB)",
                bytes.len(),
                MAX_FILE_BYTES / 1024
            ),
        )
        .hint("profiles and requests are small; put large inputs in an artifact file or methodology_dir"));
    }
    if bytes.contains(&0) {
        return Err(
            Diagnostic::new(path, None, "file is binary (contains NUL bytes)")
                .hint("only UTF-8 TOML or YAML text is read here"),
        );
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Diagnostic::new(
            path,
            Some(pos_of_offset(
                &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                e.valid_up_to(),
            )),
            "file is not valid UTF-8",
        )
    })?;
    if text.trim().is_empty() {
        return Err(Diagnostic::new(path, None, "file is empty")
            .hint("delete it, or write the required fields"));
    }
    Ok(text)
}

/// Parse `text` in `format` into `T`, mapping parser errors to a diagnostic.
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    format: Format,
    text: &str,
) -> Result<T, Diagnostic> {
    match format {
        Format::Toml => toml::from_str::<T>(text).map_err(|e| {
            let pos = e.span().map(|s| pos_of_offset(text, s.start));
            Diagnostic::new(path, pos, clean_message(e.message()))
        }),
        Format::Yaml => serde_saphyr::from_str::<T>(text).map_err(|e| {
            let pos = e.location().and_then(|l| {
                let line = u32::try_from(l.line()).ok()?;
                let col = u32::try_from(l.column()).ok()?;
                (line > 0).then_some(Pos {
                    line,
                    col: col.max(1),
                })
            });
            Diagnostic::new(path, pos, clean_message(&yaml_message(&e)))
        }),
    }
}

/// serde-saphyr's Display embeds a source snippet; the message alone is wanted
/// here because the diagnostic carries the position itself.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    // Drop a trailing " at line X column Y" the Display may add: the
    // diagnostic prints the position in `path:line:col` form already.
    match full.find(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// One line, lower-case start, no trailing period (house style for messages).
fn clean_message(m: &str) -> String {
    let one_line = m.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = one_line.trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(c) if c.is_uppercase() && !chars.clone().next().is_some_and(char::is_uppercase) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => trimmed.to_string(),
    }
}
