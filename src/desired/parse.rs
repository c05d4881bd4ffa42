//! Bytes to wire structs, for either format, with positioned diagnostics.
//!
//! Guards come first so hostile input cannot hang or exhaust the daemon: a
//! size cap, a NUL-byte (binary) check and UTF-8, then the format parser
//! (toml refuses nesting deeper than about 80 levels; serde-saphyr enforces
//! its own event and depth budgets, and aliases replay a bounded number of
//! events: `YAML_MAX_REPLAYED_EVENTS`).

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
        Format::Yaml => {
            serde_saphyr::from_str_with_options::<T>(text, yaml_options()).map_err(|e| {
                let pos = e.location().and_then(|l| {
                    let line = u32::try_from(l.line()).ok()?;
                    let col = u32::try_from(l.column()).ok()?;
                    (line > 0).then_some(Pos {
                        line,
                        col: col.max(1),
                    })
                });
                let d = Diagnostic::new(path, pos, clean_message(&yaml_message(&e)));
                if matches!(
                    original(&e),
                    serde_saphyr::Error::AliasReplayLimitExceeded { .. }
                ) {
                    d.hint(format!(
                        "aliases may repeat at most {YAML_MAX_REPLAYED_EVENTS} parsed items per file; write the values out, or alias less"
                    ))
                } else {
                    d
                }
            })
        }
    }
}

/// Parser events YAML aliases may replay in one file, in total. Anchors and
/// aliases are for reusing a snippet in a small file; serde-saphyr's
/// default (a million) lets a 450-byte "billion laughs" in a request's
/// `artifact.json` expand into 150 MiB of JSON value (issue 17). Ten
/// thousand replayed events cost well under 2 MiB.
const YAML_MAX_REPLAYED_EVENTS: usize = 10_000;

/// serde-saphyr's defaults (depth, node and event budgets) with the alias
/// replay bounded to what a small file needs.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: YAML_MAX_REPLAYED_EVENTS,
        },
    }
}

/// The error behind serde-saphyr's wrappers (snippet, alias location).
fn original(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = e
    {
        e = error;
    }
    e
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
