//! Console capture. Conmon writes the container's output in the k8s-file
//! format (`<time> <stream> <F|P> <text>`), which survives daemon restarts;
//! the audit record keeps the plain bytes the agent printed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Append the plain text of one k8s-file line to `out`.
fn line_to_raw(line: &str, out: &mut Vec<u8>) {
    let mut parts = line.splitn(4, ' ');
    let (_time, _stream, tag) = (parts.next(), parts.next(), parts.next());
    let text = parts.next().unwrap_or("");
    out.extend_from_slice(text.as_bytes());
    if tag != Some("P") {
        out.push(b'\n');
    }
}

/// Convert a whole k8s-file log into plain bytes at `dest`; returns bytes written.
/// `cap` bounds the output; past it a marker line is appended.
/// `head_dropped`: the source lost its beginning (conmon's own cap), so the
/// capture starts with a marker saying so.
pub fn k8s_to_raw(
    src: &Path,
    dest: &Path,
    cap: u64,
    head_dropped: bool,
) -> io::Result<(u64, bool)> {
    // Open the source first: when it is gone (a re-run after the work
    // folder was removed) an existing capture must not be truncated.
    let reader = match File::open(src) {
        Ok(f) => BufReader::new(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !dest.exists() {
                File::create(dest)?;
            }
            return Ok((0, false));
        }
        Err(e) => return Err(e),
    };
    let mut out = File::create(dest)?;
    let mut written = 0u64;
    if head_dropped {
        let marker = format!(
            "[agentd: console output passed {} bytes; earlier output was dropped, the tail follows]\n",
            cap
        );
        out.write_all(marker.as_bytes())?;
        written += marker.len() as u64;
    }
    let mut buf = Vec::new();
    for line in reader.split(b'\n') {
        let line = line?;
        buf.clear();
        line_to_raw(&String::from_utf8_lossy(&line), &mut buf);
        if written + buf.len() as u64 > cap {
            let marker = format!("\n[agentd: console output truncated at {cap} bytes]\n");
            out.write_all(marker.as_bytes())?;
            out.sync_all()?;
            return Ok((written, true));
        }
        out.write_all(&buf)?;
        written += buf.len() as u64;
    }
    out.sync_all()?;
    Ok((written, head_dropped))
}

/// Incremental reader for `agentd logs -f`: returns the plain text of the
/// complete lines appended since the last call.
pub struct K8sLogReader {
    file: File,
    pending: Vec<u8>,
}

impl K8sLogReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(K8sLogReader {
            file: File::open(path)?,
            pending: Vec::new(),
        })
    }

    pub fn read_new(&mut self) -> io::Result<Vec<u8>> {
        let pos = self.file.stream_position()?;
        let mut chunk = Vec::new();
        self.file.read_to_end(&mut chunk)?;
        if chunk.is_empty() {
            self.file.seek(SeekFrom::Start(pos))?;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = Vec::new();
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            line_to_raw(&String::from_utf8_lossy(&line[..line.len() - 1]), &mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_partial_lines_become_plain_text() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("k8s.log");
        std::fs::write(
            &src,
            "2026-11-22T08:50:36.1Z stdout F hello world\n2026-11-22T08:50:36.2Z stderr P part \n2026-11-22T08:50:36.3Z stderr F two\n2026-11-22T08:50:36.4Z stdout F \n",
        )
        .expect("write");
        let dest = d.path().join("console.log");
        let (n, truncated) = k8s_to_raw(&src, &dest, 1 << 20, false).expect("convert");
        assert_eq!(
            std::fs::read_to_string(&dest).expect("read"),
            "hello world\npart two\n\n"
        );
        assert_eq!((n, truncated), (22, false));
        let (_, truncated) = k8s_to_raw(&src, &dest, 5, false).expect("convert");
        assert!(truncated);
        assert!(
            std::fs::read_to_string(&dest)
                .expect("read")
                .contains("truncated at 5 bytes")
        );
        let mut r = K8sLogReader::open(&src).expect("open");
        assert_eq!(r.read_new().expect("read"), b"hello world\npart two\n\n");
        assert_eq!(r.read_new().expect("read"), b"");
    }
}
