//! `MANIFEST.sha256` lines, in GNU `sha256sum` format, safe for any file
//! name: a name with a backslash, newline or carriage return is written as
//! `sha256sum` writes it (the line starts with `\` and the name carries
//! `\\`, `\n`, `\r`), so a name can never end a line early and inject one.
//! Names are bytes (a file name need not be UTF-8). Pure: no IO.

use std::collections::BTreeMap;

/// Whether `name` must be written in the escaped form.
fn needs_escape(name: &[u8]) -> bool {
    name.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'))
}

/// `name` with `\`, newline and carriage return escaped as `sha256sum` does.
pub fn escape(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out
}

fn unescape(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut it = name.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// A name as people should read it: escaped like the manifest, so control
/// characters that end lines never reach a terminal raw.
pub fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(&escape(name)).into_owned()
}

/// One manifest line (with its newline).
pub fn line(hash: &str, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 68);
    if needs_escape(name) {
        out.push(b'\\');
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"  ");
        out.extend_from_slice(&escape(name));
    } else {
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"  ");
        out.extend_from_slice(name);
    }
    out.push(b'\n');
    out
}

/// Parse `sha256sum` lines (`<64 hex>  <name>`, or `\<64 hex>  <escaped
/// name>`; ` *` for binary mode is accepted too) into name -> hash.
pub fn parse(text: &[u8]) -> Result<BTreeMap<Vec<u8>, String>, String> {
    let mut out = BTreeMap::new();
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    if body.is_empty() {
        return Ok(out);
    }
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (hash, rest) = line
            .split_at_checked(64)
            .ok_or_else(|| format!("line {n}: not `<hash>  <path>`"))?;
        if !hash.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("line {n}: bad hash"));
        }
        let name = rest
            .strip_prefix(b"  ")
            .or_else(|| rest.strip_prefix(b" *"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("line {n}: not `<hash>  <path>`"))?;
        let name = if escaped {
            unescape(name).ok_or_else(|| format!("line {n}: bad escape in the file name"))?
        } else {
            name.to_vec()
        };
        let hash = String::from_utf8_lossy(hash).to_ascii_lowercase();
        if out.insert(name, hash).is_some() {
            return Err(format!("line {n}: a file is listed twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_names_round_trip_and_cannot_inject_lines() {
        let h = "a".repeat(64);
        let evil = format!("session/x\n{}  session/forged", "b".repeat(64));
        let names: Vec<&[u8]> = vec![
            b"session/plain name.txt",
            evil.as_bytes(),
            b"session/back\\slash",
            b"session/cr\rname",
            b"session/\xff-not-utf8",
        ];
        let text: Vec<u8> = names.iter().flat_map(|n| line(&h, n)).collect();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), names.len());
        let m = parse(&text).expect("parses");
        assert_eq!(m.len(), names.len());
        for n in &names {
            assert_eq!(m.get(*n), Some(&h), "{}", display(n));
        }
        assert!(!m.contains_key(b"session/forged".as_slice()));
        assert_eq!(
            String::from_utf8_lossy(&line(&h, evil.as_bytes())),
            format!("\\{h}  session/x\\n{}  session/forged\n", "b".repeat(64))
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        let h = "a".repeat(64);
        assert!(parse(b"nothash  x\n").is_err());
        assert!(parse(format!("{h} x\n").as_bytes()).is_err());
        assert!(parse(format!("\\{h}  bad\\q\n").as_bytes()).is_err());
        assert!(parse(format!("{h}  x\n{h}  x\n").as_bytes()).is_err());
        assert_eq!(parse(b"").expect("empty").len(), 0);
    }
}
