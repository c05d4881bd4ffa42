//! `agentd audit verify`: re-hash sealed records and compare them with their
//! manifests. Pure comparison logic plus a thin reader.

use std::collections::BTreeMap;
use std::path::Path;

use super::seal::{MANIFEST, SESSION_JSON, hash_file, hash_record};

/// What verifying one record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No final session.json: the session never finished cleanly. Not a
    /// tampering sign by itself, so it is reported apart.
    Incomplete,
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

/// Parse `sha256sum` lines: `<64 hex>  <path>`.
pub fn parse_manifest(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let (hash, path) = line
            .split_once("  ")
            .ok_or_else(|| format!("line {}: not `<hash>  <path>`", i + 1))?;
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("line {}: bad hash", i + 1));
        }
        out.insert(path.to_string(), hash.to_string());
    }
    Ok(out)
}

/// Compare a manifest with what is on disk (both as path -> hash).
pub fn compare(
    manifest: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (p, h) in manifest {
        match actual.get(p) {
            None => out.push(Finding::Missing(p.clone())),
            Some(a) if a != h => out.push(Finding::Changed(p.clone())),
            Some(_) => {}
        }
    }
    for p in actual.keys() {
        if !manifest.contains_key(p) {
            out.push(Finding::Extra(p.clone()));
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
    let manifest = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(t) => match parse_manifest(&t) {
            Ok(m) => m,
            Err(e) => return vec![Finding::BadManifest(e)],
        },
        Err(_) => return vec![Finding::Missing(MANIFEST.to_string())],
    };
    let mut actual: BTreeMap<String, String> = match hash_record(dir) {
        Ok(v) => v.into_iter().collect(),
        Err(e) => return vec![Finding::BadManifest(e.to_string())],
    };
    if let Ok(h) = hash_file(&dir.join(SESSION_JSON)) {
        actual.insert(SESSION_JSON.to_string(), h);
    }
    compare(&manifest, &actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_round_trip_and_differences_are_named() {
        let h = "a".repeat(64);
        let m = parse_manifest(&format!("{h}  agentd/console.log\n{h}  session/x y.txt\n"))
            .expect("parses");
        assert_eq!(m.len(), 2);
        assert!(parse_manifest("nothash  x\n").is_err());
        let mut actual = m.clone();
        actual.insert("session/x y.txt".into(), "b".repeat(64));
        actual.remove("agentd/console.log");
        actual.insert("session/new".into(), h.clone());
        assert_eq!(
            compare(&m, &actual),
            vec![
                Finding::Missing("agentd/console.log".into()),
                Finding::Changed("session/x y.txt".into()),
                Finding::Extra("session/new".into())
            ]
        );
    }
}
