//! A session's console, as Podman captures it: conmon writes the
//! container's output to `<runtime dir>/console.k8s.log` in the k8s-file
//! format (`<time> <stream> <F|P> <text>`), which survives daemon restarts,
//! and replaces the file (dropping its head) when it passes its size cap.
//! The audit record keeps the plain bytes the agent printed; `agentd logs`
//! reads the live file.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The capture conmon writes, in a session's runtime folder.
pub fn capture_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("console.k8s.log")
}

/// The inode (and birth time) of the capture as created, to tell conmon's
/// replacement of it apart.
fn noted_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("console.ino")
}

/// A file's identity across replacement: the inode number alone can be
/// reused at once by a file created right after the old one was removed,
/// so the birth time (statx) goes with it where the filesystem records one.
fn identity(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{born}", meta.ino())
}

/// Create the empty capture before `podman run` and note its identity:
/// conmon appends to it, and replaces it (a new inode) when it passes its
/// size cap. A capture of an earlier attempt is replaced.
pub fn prepare(runtime_dir: &Path) -> io::Result<()> {
    let path = capture_path(runtime_dir);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let console = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    fs::write(noted_path(runtime_dir), identity(&console.metadata()?))
}

/// Whether conmon replaced the capture (dropping its head) because the
/// output passed the size cap.
pub fn rotated(runtime_dir: &Path) -> bool {
    let noted = fs::read_to_string(noted_path(runtime_dir)).ok();
    let now = fs::metadata(capture_path(runtime_dir))
        .ok()
        .map(|m| identity(&m));
    matches!((noted, now), (Some(a), Some(b)) if a.trim() != b)
}

/// The capture of the session in `runtime_dir` as plain bytes at `dest`,
/// cut at `cap` (see `k8s_to_raw`).
pub fn collect(runtime_dir: &Path, dest: &Path, cap: u64) -> io::Result<(u64, bool)> {
    k8s_to_raw(&capture_path(runtime_dir), dest, cap, rotated(runtime_dir))
}

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
    /// The live capture of the session whose runtime folder is `runtime_dir`.
    pub fn open_session(runtime_dir: &Path) -> io::Result<Self> {
        Self::open(&capture_path(runtime_dir))
    }

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
