//! The egress proxy with a session's injected credentials (issue 21):
//! a `CONNECT` to the credential's host is intercepted and gets the value,
//! a placeholder anywhere else is refused and recorded. Servers on
//! 127.0.0.1 only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Injecting;
use crate::desired::{Credential, EgressHost, EgressPolicy, EgressRule, Inject, SecretSource};
use crate::egress::log::EgressLog;
use crate::egress::policy;
use crate::egress::proxy::{Hub, Limits, serve};
use crate::egress::{Decision, Direction, Observer};
use crate::inject::ca::{DaemonCa, upstream_config};
use crate::inject::intercept::Tls;
use crate::inject::session::SessionInjections;
use crate::inject::{Placeholder, SecretValue, testkit};

#[derive(Default)]
struct Counted {
    denied: std::sync::atomic::AtomicU64,
}

impl Observer for Counted {
    fn connection(&self, d: Decision) {
        if d == Decision::Denied {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn bytes(&self, _: Direction, _: u64) {}
}

fn rule(ip: &str, port: u16) -> EgressRule {
    EgressRule {
        host: EgressHost::Ip(ip.parse().expect("ip")),
        port,
        allow_private: false,
    }
}

/// A server that counts its connections and never answers.
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, seen)
}

/// Send `head` to the proxy and read its answer until it closes.
async fn request(proxy: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const VALUE: &str = "sk-real-value-of-a";

/// `CONNECT target`, then TLS (trusting `ca`, no SNI: an IP) and
/// HTTP/1.1 on the tunnel.
async fn agent_through(
    proxy: SocketAddr,
    target: SocketAddr,
    ca: &DaemonCa,
) -> SendRequest<Full<Bytes>> {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.expect("read"), 1, "proxy closed");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let tls = testkit::agent_tls(std::slice::from_ref(ca.cert_der()));
    let name = ServerName::IpAddress(target.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, s)
        .await
        .expect("TLS with the daemon CA's leaf");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

#[tokio::test]
async fn through_the_proxy_an_inject_host_gets_the_value_streams_and_a_placeholder_elsewhere_is_refused_issue_21()
 {
    let dir = tempfile::tempdir().expect("tmp");
    let ip: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let api = testkit::fake_api(&dir.path().join("api"), &policy::Host::Ip(ip)).await;
    let (plain, plain_seen) = counting_server().await;
    let api_rule = rule("127.0.0.1", api.addr.port());
    let cred = Credential {
        name: "A".into(),
        source: SecretSource::Env("HOST_A".into()),
        inject: Some(Inject {
            hosts: vec![api_rule.clone()],
            header: "x-api-key".into(),
            prefix: String::new(),
            suffix: String::new(),
        }),
    };
    let ph = Placeholder::generate().expect("random");
    let phs = BTreeMap::from([("A".to_string(), ph.clone())]);
    let sessions = SessionInjections::new(std::slice::from_ref(&cred), &phs, |_| {
        Ok(SecretValue::new(VALUE.as_bytes().to_vec()))
    })
    .expect("injections");
    let ca = Arc::new(DaemonCa::load_or_create(&dir.path().join("ca")).expect("ca"));
    let upstream = upstream_config(&[], std::slice::from_ref(api.ca.cert_der())).expect("upstream");
    let inject = Arc::new(Injecting {
        sessions,
        tls: Tls {
            ca: Arc::clone(&ca),
            upstream,
        },
    });
    let log_path = dir.path().join("egress.jsonl");
    let log = Arc::new(EgressLog::open(&log_path).expect("log"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = listener.local_addr().expect("addr");
    let observer = Arc::new(Counted::default());
    let running = serve(
        &Hub::new(Limits::default()),
        listener,
        EgressPolicy {
            rules: vec![api_rule, rule("127.0.0.1", plain.port())],
        },
        log,
        Arc::clone(&observer) as Arc<dyn Observer>,
        Some(inject as Arc<dyn crate::egress::proxy::Interception>),
    )
    .expect("serve");

    // Its own header on its own host: the host gets the value.
    let mut a = agent_through(proxy, api.addr, &ca).await;
    let req = testkit::request(
        "GET",
        "/v1",
        &[("host", &api.addr.to_string()), ("x-api-key", ph.as_str())],
        b"",
    );
    let (status, _) = testkit::send(&mut a, req).await.expect("send");
    assert_eq!(status, 200);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key"), Some(VALUE.as_bytes()));
    // A streamed response through the proxy arrives as the host sends it.
    a.ready().await.expect("ready");
    let resp = a
        .send_request(testkit::request(
            "GET",
            "/stream",
            &[("host", &api.addr.to_string()), ("x-api-key", ph.as_str())],
            b"",
        ))
        .await
        .expect("stream response");
    assert_eq!(resp.status(), 200);
    let began = std::time::Instant::now();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Some(data) = frame.expect("frame").data_ref() {
            arrivals.push((began.elapsed(), data.len()));
        }
    }
    assert!(arrivals.len() >= testkit::STREAM_CHUNKS, "{arrivals:?}");
    let spread = arrivals[arrivals.len() - 1].0 - arrivals[0].0;
    let whole = testkit::STREAM_GAP * (testkit::STREAM_CHUNKS as u32 - 1);
    assert!(
        spread >= whole - Duration::from_millis(50),
        "buffered, the chunks would arrive at once: {arrivals:?}"
    );
    drop(a);
    // In another header of the same host: refused, never forwarded.
    let mut b = agent_through(proxy, api.addr, &ca).await;
    let req = testkit::request(
        "GET",
        "/v1",
        &[("host", &api.addr.to_string()), ("x-other", ph.as_str())],
        b"",
    );
    let (status, _) = testkit::send(&mut b, req).await.expect("send");
    assert_eq!(status, 403);
    assert_eq!(
        api.seen().len(),
        2,
        "the refused request never reached the host"
    );
    drop(b);
    // In plain HTTP to another listed host: refused before connecting.
    let answer = request(
        proxy,
        &format!(
            "GET http://127.0.0.1:{}/ HTTP/1.1\r\nHost: x\r\nX-Leak: {}\r\n\r\n",
            plain.port(),
            ph.as_str()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("credential placeholder sent to 127.0.0.1:"),
        "{answer}"
    );
    assert_eq!(plain_seen.load(Ordering::SeqCst), 0);

    running.stop().await;
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        !text.contains(VALUE) && !text.contains(ph.as_str()),
        "{text}"
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let want = format!(
        "credential placeholder sent to 127.0.0.1:{}",
        api.addr.port()
    );
    let denied: Vec<_> = lines.iter().filter(|l| l["decision"] == "denied").collect();
    assert_eq!(denied.len(), 2, "{text}");
    assert!(
        denied.iter().any(|l| l["reason"] == want.as_str()),
        "{text}"
    );
    let want = format!("credential placeholder sent to 127.0.0.1:{}", plain.port());
    assert!(
        denied.iter().any(|l| l["reason"] == want.as_str()),
        "{text}"
    );
    let ok: Vec<_> = lines
        .iter()
        .filter(|l| l["decision"] == "allowed")
        .collect();
    assert_eq!(ok.len(), 1, "{text}");
    assert_eq!(ok[0]["port"], api.addr.port());
    assert!(ok[0]["bytes_out"].as_u64() > Some(0), "{text}");
    assert_eq!(observer.denied.load(Ordering::Relaxed), 2);
}
