//! Real git remotes for integration tests: bare repositories served on
//! 127.0.0.1 by `tests/support/git-http-server.py` (git http-backend behind
//! Python's http.server, optionally HTTPS with a throw-away certificate and
//! basic auth), started per test on a free port and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util::{git, repo_root};

/// A bare repository at `dir` whose README.md holds `readme`.
pub fn bare_repo(dir: &Path, readme: &str) {
    let src = dir.with_extension("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    std::fs::write(src.join("README.md"), format!("{readme}\n")).expect("write");
    git(&src, &["add", "."]);
    git(&src, &["commit", "-qm", "first"]);
    let parent = dir.parent().expect("parent");
    git(
        parent,
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().expect("utf8"),
            dir.to_str().expect("utf8"),
        ],
    );
}

/// The test git server, killed on drop.
pub struct GitServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    scheme: &'static str,
}

impl GitServer {
    /// Serve the bare repos under `root`; HTTPS with `tls` (cert, key), basic
    /// auth with `token`.
    pub fn start(
        dir: &Path,
        root: &Path,
        tls: Option<(&Path, &Path)>,
        token: Option<&str>,
    ) -> Self {
        Self::start_with(dir, root, tls, token, &[])
    }

    /// [`GitServer::start`] with more flags of the server script, such as
    /// `--decode-paths` (a forge that decodes and normalises request paths).
    pub fn start_with(
        dir: &Path,
        root: &Path,
        tls: Option<(&Path, &Path)>,
        token: Option<&str>,
        flags: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let port_file = dir.join("port");
        let log = dir.join("requests.log");
        let mut c = Command::new("python3");
        c.arg(repo_root().join("tests/support/git-http-server.py"))
            .arg("--root")
            .arg(root)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log);
        if let Some((cert, key)) = tls {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(t) = token {
            let f = dir.join("token");
            std::fs::write(&f, t).expect("token file");
            c.arg("--token-file").arg(f);
        }
        c.args(flags);
        let child = c.spawn().expect("python3 runs the test git server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the test git server did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        GitServer {
            child,
            port,
            log,
            scheme: if tls.is_some() { "https" } else { "http" },
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("{}://127.0.0.1:{}/{repo}", self.scheme, self.port)
    }

    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1: (cert, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
