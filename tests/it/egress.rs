//! Sessions with `egress` (issue 19), end to end: real daemon, real
//! Podman, servers on the host's 127.0.0.1 only. A session reaches exactly
//! the listed destinations through the daemon's proxy, nothing directly,
//! and every connection is a line of its sealed record. Runs rootful, and
//! rootless in scripts/test's second pass.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::git_server::{GitServer, bare_repo, self_signed};
use crate::util::{World, require_podman, test_image, toml_string};

/// A plain HTTP server on 127.0.0.1: answers every request with `body`,
/// counts connections and keeps each request head.
pub struct HttpServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    pub fn start(body: &'static str) -> HttpServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (Arc::clone(&connections), Arc::clone(&heads));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        HttpServer {
            port,
            connections,
            heads,
        }
    }

    pub fn seen(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A profile on the test image running `script` with bash, with `egress`.
pub fn egress_profile(w: &World, name: &str, script: &str, egress: &str, extra: &str) {
    let body = format!(
        "base_image = \"{}\"\ncommand = [\"/bin/bash\", \"-c\", {}]\nrepo = \"{}\"\negress = {egress}\n{extra}\n",
        test_image(),
        toml_string(script),
        w.repo_url
    );
    w.profile(name, &body);
}

/// Shell functions for scripts: `proxy_port`, and `ask HEAD` which sends
/// a raw request head to the proxy and prints the first line of the answer.
pub const SH_LIB: &str = r#"
proxy_port() { local p=${HTTP_PROXY##*:}; echo "${p%/}"; }
ask() {
  exec 7<>/dev/tcp/127.0.0.1/$(proxy_port) || return 1
  printf '%b' "$1" >&7
  head -n1 <&7 | tr -d '\r'
  exec 7<&-
}
"#;

/// The record's egress lines, parsed.
pub fn egress_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("agentd/egress.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn a_session_reaches_exactly_its_listed_destinations_and_records_them_issue_19() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // A TLS git forge, a plain HTTP server (both listed) and a server
    // that is not listed, all on the host's loopback.
    let srv = w.path().join("srv");
    bare_repo(&srv.join("r.git"), "served over TLS");
    let (cert, key) = self_signed(w.path());
    let git = GitServer::start(&w.path().join("git"), &srv, Some((&cert, &key)), None);
    let plain = HttpServer::start("hello\n");
    let other = HttpServer::start("nobody should read this\n");
    let script = format!(
        r#"{SH_LIB}
set -u
env | grep -i _proxy= | sort
# Through CONNECT: git over TLS (NO_PROXY cleared: the destination is on
# the host's loopback, which the session's own loopback is not).
NO_PROXY= no_proxy= git ls-remote https://127.0.0.1:{git}/r.git | grep -q refs/heads/main && echo GIT_OK
# Absolute-form plain HTTP, as HTTP_PROXY clients send it.
exec 3<>/dev/tcp/127.0.0.1/$(proxy_port)
printf 'GET http://127.0.0.1:{plain}/hello HTTP/1.1\r\nHost: x\r\n\r\n' >&3
tr -d '\r' <&3 | grep -q '^hello$' && echo HTTP_OK
# Not listed.
echo "OTHER: $(ask 'CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n')"
echo "OTHER_GET: $(ask 'GET http://127.0.0.1:{other}/ HTTP/1.1\r\n\r\n')"
# No way around the proxy: the host's servers are not on this loopback,
# and there is no route anywhere.
if (exec 5<>/dev/tcp/127.0.0.1/{plain}) 2>/dev/null; then echo DIRECT_REACHED; else echo DIRECT_REFUSED; fi
echo "ROUTES: $(tail -n +2 /proc/net/route | wc -l)"
"#,
        git = git.port,
        plain = plain.port,
        other = other.port,
    );
    let ca = "/etc/agentd-test-ca.pem";
    egress_profile(
        &w,
        "net",
        &script,
        &format!("[\"127.0.0.1:{}\", \"127.0.0.1:{}\"]", git.port, plain.port),
        &format!(
            "mounts = [{{ source = \"{}\", target = \"{ca}\" }}]\nenv = {{ GIT_SSL_CAINFO = \"{ca}\" }}",
            cert.display()
        ),
    );
    w.request("r", "profile = \"net\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    let console = w.console("r");
    assert_eq!(s["outcome"], "success", "{s}\n{console}");
    for want in [
        "HTTPS_PROXY=http://127.0.0.1:880",
        "https_proxy=http://127.0.0.1:880",
        "HTTP_PROXY=http://127.0.0.1:880",
        "http_proxy=http://127.0.0.1:880",
        "ALL_PROXY=http://127.0.0.1:880",
        "all_proxy=http://127.0.0.1:880",
        "NO_PROXY=localhost,127.0.0.1,::1",
        "no_proxy=localhost,127.0.0.1,::1",
        "GIT_OK",
        "HTTP_OK",
        "OTHER: HTTP/1.1 403 Forbidden",
        "OTHER_GET: HTTP/1.1 403 Forbidden",
        "DIRECT_REFUSED",
        "ROUTES: 0",
    ] {
        assert!(
            console.lines().any(|l| l == want),
            "missing {want:?} in:\n{console}"
        );
    }
    assert_eq!(other.seen(), 0, "the unlisted server saw nothing");
    assert_eq!(
        plain.seen(),
        1,
        "the listed server saw only the proxied request"
    );
    let heads = plain.heads.lock().expect("heads").clone();
    assert!(heads[0].starts_with("GET /hello HTTP/1.1\r\n"), "{heads:?}");
    assert!(
        git.requests().contains("GET /r.git/info/refs"),
        "{}",
        git.requests()
    );

    let dir = w.audit_dir("r");
    let lines = egress_lines(&dir);
    let find = |port: u16, decision: &str| {
        lines
            .iter()
            .filter(|l| l["port"] == port && l["decision"] == decision)
            .collect::<Vec<_>>()
    };
    let git_lines = find(git.port, "allowed");
    assert!(!git_lines.is_empty(), "{lines:?}");
    for l in git_lines.iter().chain(find(plain.port, "allowed").iter()) {
        assert_eq!(l["host"], "127.0.0.1");
        assert!(l["bytes_out"].as_u64().unwrap_or(0) > 0, "{l}");
        assert!(l["bytes_in"].as_u64().unwrap_or(0) > 0, "{l}");
        assert!(
            l["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"))
        );
        assert!(l["time"].is_string() && l["ms"].is_u64());
    }
    assert_eq!(find(plain.port, "allowed").len(), 1);
    let denied = find(other.port, "denied");
    assert_eq!(denied.len(), 2, "{lines:?}");
    assert!(denied.iter().all(|l| {
        l["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with("is not in the profile's egress list"))
    }));
    // Sealed into the record: the manifest covers it, verify is clean.
    let manifest = std::fs::read_to_string(dir.join("agentd/MANIFEST.sha256")).expect("manifest");
    assert!(manifest.contains(" agentd/egress.jsonl\n"), "{manifest}");
    let verify = w
        .agentd()
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // `agentd logs --egress` prints the same lines.
    let logs = w
        .agentd()
        .args(["logs", "r", "--egress"])
        .output()
        .expect("logs");
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout).lines().count(),
        lines.len()
    );
}
