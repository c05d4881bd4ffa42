//! `agentd/egress.jsonl` (issue 19): one JSON line per tunnel and per
//! absolute-form request (and per connection refused before either), in
//! the session's audit record, where sealing hashes it into the manifest.
//!
//! Capped: after [`MAX_LINES`] lines, connections are only counted, in one
//! final line `{"omitted": {"allowed": N, "denied": M}}` written when the
//! cap is reached and rewritten in place (fixed width) as the counts grow,
//! so a daemon killed at any moment leaves a current count, and a restarted
//! one picks it up and goes on. The host text an agent sent is kept cut and
//! escaped (`escape_default`): no control character or bidi override
//! reaches the file raw, whatever prints it later.

use std::fs::File;
use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Lines written before connections are only counted.
pub const MAX_LINES: u64 = 10_000;

/// Width of each count in the `omitted` line: any u64, padded with spaces
/// (JSON allows whitespace before a comma or brace, not leading zeros).
const COUNT_WIDTH: usize = 20;

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }
}

/// One connection, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// When the connection was accepted (RFC 3339).
    pub time: jiff::Timestamp,
    /// The destination host as the agent wrote it, cut and escaped; `None`
    /// when it never said (no head in time, a connection over the cap).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The address connected to, when a connection was made.
    pub addr: Option<SocketAddr>,
    pub decision: Decision,
    /// Why (denied), or how it ended (allowed).
    pub reason: String,
    /// Bytes from the agent to the destination (request heads included).
    pub bytes_out: u64,
    /// Bytes from the destination to the agent.
    pub bytes_in: u64,
    /// From accept to close, in milliseconds.
    pub ms: u64,
}

/// The agent's host text as the record keeps it.
pub fn escape_host(text: &str) -> String {
    super::policy::host_text(text).escape_default().to_string()
}

struct State {
    file: File,
    /// Where the next line goes (every write is positioned: `O_APPEND`
    /// would make Linux ignore the offset of the in-place rewrite).
    end: u64,
    lines: u64,
    allowed: u64,
    denied: u64,
    /// Offset of the `omitted` line once written.
    omitted_at: Option<u64>,
    /// Written since opened (what `sync` has to flush).
    dirty: bool,
}

/// A session's egress log, shared by its connections.
pub struct EgressLog {
    state: Mutex<State>,
}

fn omitted_line(allowed: u64, denied: u64) -> String {
    format!(
        "{{\"omitted\": {{\"allowed\": {allowed:<COUNT_WIDTH$}, \"denied\": {denied:<COUNT_WIDTH$}}}}}\n"
    )
}

/// The counts of an `omitted` line, if `line` is one.
fn parse_omitted(line: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let o = v.get("omitted")?;
    Some((o.get("allowed")?.as_u64()?, o.get("denied")?.as_u64()?))
}

impl EgressLog {
    /// Open (or create) the log at `path` for appending: the lines and any
    /// `omitted` counts already there (a restart) carry on. The path is in
    /// the daemon's own part of the record; a link there is refused.
    pub fn open(path: &Path) -> io::Result<EgressLog> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)?;
        let (mut lines, mut offset, mut omitted) = (0u64, 0u64, None);
        let mut reader = io::BufReader::new(&file);
        let mut buf = Vec::new();
        let mut ends_in_newline = true;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            ends_in_newline = buf.ends_with(b"\n");
            if let Some(counts) = parse_omitted(&buf) {
                omitted = Some((offset, counts));
            } else {
                lines += 1;
            }
            offset += n as u64;
        }
        drop(reader);
        if !ends_in_newline {
            // A line cut short (the disk filled up): the next one starts afresh.
            file.write_all_at(b"\n", offset)?;
            offset += 1;
        }
        let (omitted_at, (allowed, denied)) = match omitted {
            Some((at, c)) => (Some(at), c),
            None => (None, (0, 0)),
        };
        Ok(EgressLog {
            state: Mutex::new(State {
                file,
                end: offset,
                lines,
                allowed,
                denied,
                omitted_at,
                dirty: false,
            }),
        })
    }

    /// Record one connection: a line, or past the cap a count.
    pub fn write(&self, line: &Line) {
        let mut st = super::lock(&self.state);
        st.dirty = true;
        let result = if st.lines < MAX_LINES && st.omitted_at.is_none() {
            let mut bytes = serde_json::to_vec(line).unwrap_or_default();
            bytes.push(b'\n');
            let at = st.end;
            st.file.write_all_at(&bytes, at).map(|()| {
                st.end += bytes.len() as u64;
                st.lines += 1;
            })
        } else {
            match line.decision {
                Decision::Allowed => st.allowed += 1,
                Decision::Denied => st.denied += 1,
            }
            let text = omitted_line(st.allowed, st.denied);
            let end = st.end;
            let at = *st.omitted_at.get_or_insert(end);
            st.file.write_all_at(text.as_bytes(), at)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write to egress.jsonl");
        }
    }

    /// Lines written so far (not counting the `omitted` line).
    #[cfg(test)]
    pub fn lines(&self) -> u64 {
        super::lock(&self.state).lines
    }

    /// Flush what was written to disk (before the record is sealed, which
    /// syncs the folder). Nothing written since opening: nothing to flush.
    pub fn sync(&self) -> io::Result<()> {
        let mut st = super::lock(&self.state);
        if st.dirty {
            st.file.sync_data()?;
            st.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(host: &str, decision: Decision) -> Line {
        Line {
            time: "2026-01-01T00:00:00Z".parse().expect("time"),
            host: Some(escape_host(host)),
            port: Some(443),
            addr: None,
            decision,
            reason: "r".into(),
            bytes_out: 1,
            bytes_in: 2,
            ms: 3,
        }
    }

    #[test]
    fn lines_carry_the_contract_keys_and_escaped_hosts_issue_19() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("egress.jsonl");
        let log = EgressLog::open(&path).expect("open");
        log.write(&line("a.example.com", Decision::Allowed));
        log.write(&line("evil\u{202e}moc.\n\u{1b}[31m\"", Decision::Denied));
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let keys: Vec<&String> = lines[0].as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "addr",
                "bytes_in",
                "bytes_out",
                "decision",
                "host",
                "ms",
                "port",
                "reason",
                "time"
            ]
        );
        assert_eq!(lines[0]["decision"], "allowed");
        assert_eq!(lines[1]["decision"], "denied");
        assert_eq!(lines[1]["host"], "evil\\u{202e}moc.\\n\\u{1b}[31m\\\"");
        assert!(!text.contains('\u{202e}') && !text.contains('\u{1b}'));
    }

    #[test]
    fn past_the_cap_one_omitted_line_counts_and_survives_a_reopen_issue_19() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("egress.jsonl");
        let log = EgressLog::open(&path).expect("open");
        for i in 0..MAX_LINES {
            log.write(&line(&format!("h{i}.example.com"), Decision::Allowed));
        }
        log.write(&line("x.example.com", Decision::Allowed));
        log.write(&line("y.example.com", Decision::Denied));
        log.write(&line("z.example.com", Decision::Denied));
        drop(log);
        let count = |path: &Path| {
            let text = std::fs::read_to_string(path).expect("read");
            let last = text.lines().last().unwrap_or("").to_string();
            (text.lines().count(), last)
        };
        let (n, last) = count(&path);
        assert_eq!(n as u64, MAX_LINES + 1);
        let v: serde_json::Value = serde_json::from_str(&last).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"omitted": {"allowed": 1, "denied": 2}})
        );
        // A restarted daemon appends to the same file and keeps counting.
        let log = EgressLog::open(&path).expect("reopen");
        assert_eq!(log.lines(), MAX_LINES);
        log.write(&line("w.example.com", Decision::Allowed));
        let (n, last) = count(&path);
        assert_eq!(n as u64, MAX_LINES + 1);
        let v: serde_json::Value = serde_json::from_str(&last).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"omitted": {"allowed": 2, "denied": 2}})
        );
    }

    #[test]
    fn a_reopened_log_appends_after_its_lines_issue_19() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("egress.jsonl");
        EgressLog::open(&path)
            .expect("open")
            .write(&line("a.example.com", Decision::Allowed));
        let log = EgressLog::open(&path).expect("reopen");
        assert_eq!(log.lines(), 1);
        log.write(&line("b.example.com", Decision::Denied));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        std::os::unix::fs::symlink(&path, dir.path().join("link")).expect("link");
        assert!(
            EgressLog::open(&dir.path().join("link")).is_err(),
            "links are refused"
        );
    }
}
