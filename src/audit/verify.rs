//! `agentd audit verify`: re-hash sealed records and compare them with their
//! manifests. Pure comparison logic plus a thin reader.

use std::collections::BTreeMap;
use std::path::Path;

use super::manifest;
use super::seal::{MANIFEST, SESSION_JSON, hash_file, hash_record};

/// What verifying one record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No final session.json: the session never finished cleanly. Not a
    /// tampering sign by itself, so it is reported apart.
    Incomplete,
    /// The file names below are shown escaped as in the manifest
    /// (`manifest::display`): a newline in a name never reaches the output.
    Missing(String),
    Changed(String),
    Extra(String),
    /// The manifest cannot be read or parsed.
    BadManifest(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Incomplete => write!(f, "incomplete (no final session.json; never sealed)"),
            Finding::Missing(p) => write!(f, "missing {p}"),
            Finding::Changed(p) => write!(f, "changed {p}"),
            Finding::Extra(p) => write!(f, "extra {p}"),
            Finding::BadManifest(why) => write!(f, "bad manifest: {why}"),
        }
    }
}

/// Parse `sha256sum` lines (see `manifest::parse`: escaped names too).
pub fn parse_manifest(text: &[u8]) -> Result<BTreeMap<Vec<u8>, String>, String> {
    manifest::parse(text)
}

/// Compare a manifest with what is on disk (both as path -> hash).
pub fn compare(
    listed: &BTreeMap<Vec<u8>, String>,
    actual: &BTreeMap<Vec<u8>, String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (p, h) in listed {
        match actual.get(p) {
            None => out.push(Finding::Missing(manifest::display(p))),
            Some(a) if a != h => out.push(Finding::Changed(manifest::display(p))),
            Some(_) => {}
        }
    }
    for p in actual.keys() {
        if !listed.contains_key(p) {
            out.push(Finding::Extra(manifest::display(p)));
        }
    }
    out
}

/// Verify the record in `dir`.
pub fn verify(dir: &Path) -> Vec<Finding> {
    let complete = std::fs::read(dir.join(SESSION_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| {
            v.get("outcome").is_some_and(|o| !o.is_null())
                && v.get("end_timestamp").is_some_and(|t| !t.is_null())
        });
    if !complete {
        return vec![Finding::Incomplete];
    }
    let listed = match std::fs::read(dir.join(MANIFEST)) {
        Ok(t) => match parse_manifest(&t) {
            Ok(m) => m,
            Err(e) => return vec![Finding::BadManifest(e)],
        },
        Err(_) => return vec![Finding::Missing(MANIFEST.to_string())],
    };
    let mut actual: BTreeMap<Vec<u8>, String> = match hash_record(dir) {
        Ok(v) => v.into_iter().collect(),
        Err(e) => return vec![Finding::BadManifest(format!("cannot read the record: {e}"))],
    };
    if let Ok(h) = hash_file(&dir.join(SESSION_JSON)) {
        actual.insert(SESSION_JSON.as_bytes().to_vec(), h);
    }
    compare(&listed, &actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_round_trip_and_differences_are_named() {
        let h = "a".repeat(64);
        let m = parse_manifest(
            format!("{h}  agentd/console.log\n{h}  session/x y.txt\n\\{h}  session/a\\nb\n")
                .as_bytes(),
        )
        .expect("parses");
        assert_eq!(m.len(), 3);
        assert!(parse_manifest(b"nothash  x\n").is_err());
        let mut actual = m.clone();
        actual.insert(b"session/x y.txt".to_vec(), "b".repeat(64));
        actual.insert(b"session/a\nb".to_vec(), "b".repeat(64));
        actual.remove(b"agentd/console.log".as_slice());
        actual.insert(b"session/new".to_vec(), h.clone());
        assert_eq!(
            compare(&m, &actual),
            vec![
                Finding::Missing("agentd/console.log".into()),
                Finding::Changed("session/a\\nb".into()),
                Finding::Changed("session/x y.txt".into()),
                Finding::Extra("session/new".into())
            ]
        );
    }
}
