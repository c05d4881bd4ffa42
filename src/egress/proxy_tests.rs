//! The proxy against local servers on 127.0.0.1 (issue 19): what it
//! forwards, what it refuses and how, what it records, and what a client
//! that misbehaves can cost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::desired::{EgressHost, EgressPolicy, EgressRule};

#[derive(Default)]
struct Counted {
    allowed: AtomicU64,
    denied: AtomicU64,
    out: AtomicU64,
    inn: AtomicU64,
}

impl Observer for Counted {
    fn connection(&self, d: Decision) {
        match d {
            Decision::Allowed => self.allowed.fetch_add(1, Ordering::Relaxed),
            Decision::Denied => self.denied.fetch_add(1, Ordering::Relaxed),
        };
    }
    fn bytes(&self, dir: Direction, n: u64) {
        match dir {
            Direction::Out => self.out.fetch_add(n, Ordering::Relaxed),
            Direction::In => self.inn.fetch_add(n, Ordering::Relaxed),
        };
    }
}

fn rule(host: &str, port: u16, allow_private: bool) -> EgressRule {
    EgressRule {
        host: match host.parse() {
            Ok(ip) => EgressHost::Ip(ip),
            Err(_) => EgressHost::Name(host.into()),
        },
        port,
        allow_private,
    }
}

fn test_limits() -> Limits {
    Limits {
        head_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        per_session: 8,
        ..Limits::default()
    }
}

struct Setup {
    proxy: SocketAddr,
    running: Running,
    observer: Arc<Counted>,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(rules: Vec<EgressRule>, limits: Limits) -> Setup {
        Setup::on(&Hub::new(limits), rules).await
    }

    /// A session's proxy on a hub other sessions share.
    async fn on(hub: &Arc<Hub>, rules: Vec<EgressRule>) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let log_path = dir.path().join("egress.jsonl");
        let log = Arc::new(EgressLog::open(&log_path).expect("log"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let observer = Arc::new(Counted::default());
        let running = serve(
            hub,
            listener,
            EgressPolicy { rules },
            log,
            Arc::clone(&observer) as Arc<dyn Observer>,
            None,
        )
        .expect("serve");
        Setup {
            proxy,
            running,
            observer,
            log_path,
            _dir: dir,
        }
    }

    /// Wait (bounded) until the log holds `n` lines: connections write
    /// theirs when they end, which the client cannot observe directly.
    async fn wait_lines(&self, n: usize) {
        for _ in 0..500 {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if text.lines().count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the log never had {n} lines");
    }

    /// The log's lines once the proxy has stopped (every line written).
    async fn stop(self) -> (Vec<serde_json::Value>, Arc<Counted>) {
        self.running.stop().await;
        let text = std::fs::read_to_string(&self.log_path).expect("log");
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        (lines, self.observer)
    }
}

/// An upstream that counts its connections, echoes what it gets with a
/// prefix, and closes when the client does.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0
                        || s.write_all(b"echo:").await.is_err()
                        || s.write_all(&buf[..n]).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Read until the peer closes or `want` bytes came (bounded in time).
async fn read_some(s: &mut TcpStream, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while out.len() < want {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn request(proxy: SocketAddr, head: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.write_all(head.as_bytes()).await.expect("write");
    let got = read_some(&mut s, usize::MAX).await;
    (s, got)
}

#[tokio::test]
async fn an_allowed_connect_tunnels_and_is_recorded_with_its_bytes_issue_19() {
    let (up, seen) = echo_server().await;
    let t = Setup::new(vec![rule("127.0.0.1", up.port(), false)], test_limits()).await;
    let mut s = TcpStream::connect(t.proxy).await.expect("connect");
    s.write_all(
        format!(
            "CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: x\r\n\r\nhello",
            up.port()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let got = read_some(&mut s, 39 + 10).await;
    assert_eq!(got, "HTTP/1.1 200 Connection established\r\n\r\necho:hello");
    s.write_all(b"again").await.expect("write");
    assert_eq!(read_some(&mut s, 10).await, "echo:again");
    drop(s);
    t.wait_lines(1).await;
    let (lines, obs) = t.stop().await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["decision"], "allowed");
    assert_eq!(l["host"], "127.0.0.1");
    assert_eq!(l["port"], up.port());
    assert_eq!(l["addr"], up.to_string());
    assert_eq!(l["bytes_out"], 10);
    assert_eq!(l["bytes_in"], 20);
    assert_eq!(l["reason"], "closed");
    assert_eq!(obs.allowed.load(Ordering::Relaxed), 1);
    assert_eq!(obs.out.load(Ordering::Relaxed), 10);
    assert_eq!(obs.inn.load(Ordering::Relaxed), 20);
}

#[tokio::test]
async fn an_absolute_form_request_is_forwarded_in_origin_form_issue_19() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = l.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await
            .expect("write");
        String::from_utf8_lossy(&head).into_owned()
    });
    let t = Setup::new(vec![rule("127.0.0.1", up.port(), false)], test_limits()).await;
    let (_s, got) = request(
        t.proxy,
        &format!("GET http://127.0.0.1:{}/x?y HTTP/1.1\r\nHost: elsewhere\r\nProxy-Connection: keep-alive\r\n\r\n", up.port()),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"),
        "{got}"
    );
    let head = server.await.expect("server");
    assert_eq!(
        head,
        format!(
            "GET /x?y HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            up.port()
        )
    );
    let (lines, _) = t.stop().await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["decision"], "allowed");
    assert_eq!(lines[0]["bytes_out"], head.len());
    assert!(lines[0]["bytes_in"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn an_unlisted_destination_gets_403_and_the_server_sees_nothing_issue_19() {
    let (listed, _) = echo_server().await;
    let (other, seen) = echo_server().await;
    let t = Setup::new(vec![rule("127.0.0.1", listed.port(), false)], test_limits()).await;
    for head in [
        format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", other.port()),
        format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n\r\n", other.port()),
        format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", listed.port()),
    ] {
        let (_s, got) = request(t.proxy, &head).await;
        assert!(got.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{got}");
        let body = got.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            body.starts_with("agentd egress: ")
                && body.ends_with(" is not in the profile's egress list\n"),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1);
    }
    let (lines, obs) = t.stop().await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the unlisted server saw nothing"
    );
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["decision"] == "denied" && l["addr"].is_null())
    );
    assert_eq!(lines[2]["host"], "localhost");
    assert_eq!(obs.denied.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_listed_name_resolving_to_loopback_is_denied_unless_private_is_allowed_issue_19() {
    let (up, seen) = echo_server().await;
    let t = Setup::new(vec![rule("localhost", up.port(), false)], test_limits()).await;
    let (_s, got) = request(
        t.proxy,
        &format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", up.port()),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 403 "), "{got}");
    assert!(got.ends_with("agentd egress: resolves to 127.0.0.1 (a loopback address); the entry needs allow_private = true\n"), "{got}");
    let (lines, _) = t.stop().await;
    assert_eq!(lines[0]["decision"], "denied");
    assert_eq!(seen.load(Ordering::SeqCst), 0);

    let t = Setup::new(vec![rule("localhost", up.port(), true)], test_limits()).await;
    let mut s = TcpStream::connect(t.proxy).await.expect("connect");
    s.write_all(format!("CONNECT LOCALHOST.:{} HTTP/1.1\r\n\r\nhi", up.port()).as_bytes())
        .await
        .expect("write");
    assert!(read_some(&mut s, 39 + 7).await.ends_with("echo:hi"));
    drop(s);
    let (lines, _) = t.stop().await;
    assert_eq!(lines[0]["decision"], "allowed");
    assert_eq!(lines[0]["addr"], format!("127.0.0.1:{}", up.port()));
}

#[tokio::test]
async fn malformed_silent_and_oversized_heads_are_refused_in_bounded_time_issue_19() {
    let t = Setup::new(vec![], test_limits()).await;
    let started = std::time::Instant::now();
    // Never sends a byte: 408 after the head timeout.
    let (_s, got) = request(t.proxy, "").await;
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A megabyte of header: 431 once the buffer is full, not a megabyte read.
    let mut s = TcpStream::connect(t.proxy).await.expect("connect");
    let junk = format!(
        "GET http://a.example.com/ HTTP/1.1\r\nX: {}",
        "a".repeat(1 << 20)
    );
    let writer = tokio::spawn(async move {
        let _ = s.write_all(junk.as_bytes()).await;
        s
    });
    let mut s = writer.await.expect("writer");
    let got = read_some(&mut s, usize::MAX).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    for (head, status) in [
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        ("\u{16}\u{3}\u{1}junk\r\n\r\n", "400"),
        ("CONNECT 2130706433:443 HTTP/1.1\r\n\r\n", "400"),
        (
            "CONNECT evil\u{202e}moc.example.com:443 HTTP/1.1\r\n\r\n",
            "400",
        ),
    ] {
        let (_s, got) = request(t.proxy, head).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{head:?}: {got}"
        );
    }
    let (lines, obs) = t.stop().await;
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["decision"] == "denied"));
    assert_eq!(lines[0]["reason"], "no complete request head within 500ms");
    assert!(lines[0]["host"].is_null());
    // The agent's text is kept escaped, never raw.
    assert_eq!(lines[5]["host"], "evil\\u{202e}moc.example.com");
    assert_eq!(obs.denied.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn connections_over_the_session_cap_get_503_at_once_issue_19() {
    let limits = Limits {
        per_session: 2,
        head_timeout: Duration::from_secs(5),
        ..test_limits()
    };
    let t = Setup::new(vec![], limits).await;
    let a = TcpStream::connect(t.proxy).await.expect("a");
    let b = TcpStream::connect(t.proxy).await.expect("b");
    // Let the proxy accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (_c, got) = request(t.proxy, "").await;
    assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
    assert!(
        got.contains("too many connections at once (the limit is 2)"),
        "{got}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop((a, b));
    let (lines, obs) = t.stop().await;
    assert_eq!(lines.len(), 3);
    assert_eq!(
        obs.denied.load(Ordering::Relaxed),
        3,
        "every refusal is counted"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("too many")))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_flooding_session_leaves_another_its_descriptors_issue_19() {
    let (up, _) = echo_server().await;
    let hub = Hub::new(Limits {
        descriptors: 40,
        session_descriptors: 20,
        per_session: 64,
        head_timeout: Duration::from_secs(5),
        ..test_limits()
    });
    let rules = vec![rule("127.0.0.1", up.port(), false)];
    let flood = Setup::on(&hub, rules.clone()).await;
    let other = Setup::on(&hub, rules).await;
    // As many silent connections as the whole budget.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(flood.proxy).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(other.proxy).await.expect("connect");
    s.write_all(format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\nhi", up.port()).as_bytes())
        .await
        .expect("write");
    let want = "HTTP/1.1 200 Connection established\r\n\r\necho:hi";
    let got = read_some(&mut s, want.len()).await;
    assert_eq!(got, want);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the other session waited {:?} for a descriptor",
        started.elapsed()
    );
    drop((held, s));
    flood.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_a_refused_connect_is_502_issue_19() {
    let (up, _) = echo_server().await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let t = Setup::new(
        vec![
            rule("127.0.0.1", up.port(), false),
            rule("127.0.0.1", refused_port, false),
        ],
        limits,
    )
    .await;
    let started = std::time::Instant::now();
    let (_s, got) = request(
        t.proxy,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", up.port()),
    )
    .await;
    assert_eq!(got, "HTTP/1.1 200 Connection established\r\n\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed by the idle timeout"
    );
    let (_s, got) = request(
        t.proxy,
        &format!("CONNECT 127.0.0.1:{refused_port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 502 ") && got.contains("cannot connect"),
        "{got}"
    );
    let (lines, _) = t.stop().await;
    assert_eq!(lines[0]["reason"], "closed after 300ms idle");
    assert_eq!(lines[1]["decision"], "allowed");
    assert!(
        lines[1]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("cannot connect")
    );
}

#[tokio::test]
async fn stopping_ends_live_tunnels_and_records_them_issue_19() {
    let (up, _) = echo_server().await;
    let t = Setup::new(vec![rule("127.0.0.1", up.port(), false)], test_limits()).await;
    let mut s = TcpStream::connect(t.proxy).await.expect("connect");
    s.write_all(format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", up.port()).as_bytes())
        .await
        .expect("write");
    assert!(read_some(&mut s, 39).await.starts_with("HTTP/1.1 200"));
    let proxy = t.proxy;
    let started = std::time::Instant::now();
    let (lines, _) = t.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "closed: the session ended");
    // The client sees its tunnel closed, and nothing listens any more.
    assert_eq!(read_some(&mut s, usize::MAX).await, "");
    assert!(TcpStream::connect(proxy).await.is_err());
}
