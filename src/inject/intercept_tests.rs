//! The interception against real TLS servers on 127.0.0.1 (issue 21):
//! the value reaches the host and nothing else, responses stream, no
//! fronting, keep-alive, bounded heads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::desired::Inject;
use crate::egress::policy;
use crate::inject::SecretValue;
use crate::inject::testkit::{self, FakeApi, Interceptor, STREAM_CHUNKS, STREAM_GAP};

fn injection(name: &str, header: &str, prefix: &str, value: &str) -> Arc<Injection> {
    let inject = Inject {
        hosts: Vec::new(),
        header: header.into(),
        prefix: prefix.into(),
        suffix: String::new(),
    };
    Arc::new(
        Injection::new(
            name,
            Placeholder::generate().expect("random"),
            &inject,
            SecretValue::new(value.as_bytes().to_vec()),
        )
        .expect("injection"),
    )
}

/// The daemon's side: its CA, and an upstream trusting `api`'s CA as the
/// operator's extra CA.
struct Daemon {
    _dir: tempfile::TempDir,
    ca: Arc<DaemonCa>,
    upstream: Arc<rustls::ClientConfig>,
}

fn daemon(apis: &[&FakeApi]) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(DaemonCa::load_or_create(&dir.path().join("ca")).expect("daemon CA"));
    let extra: Vec<_> = apis.iter().map(|a| a.ca.cert_der().clone()).collect();
    let upstream = crate::inject::ca::upstream_config(&[], &extra).expect("upstream");
    Daemon {
        _dir: dir,
        ca,
        upstream,
    }
}

impl Daemon {
    async fn intercept(
        &self,
        target: &str,
        own: &[Arc<Injection>],
        all: &[Placeholder],
        api: &FakeApi,
    ) -> Interceptor {
        let job = Arc::new(Job {
            target: policy::parse_authority(target).expect("target"),
            own: own.to_vec(),
            all: all.to_vec().into(),
        });
        let ctx = Ctx {
            tls: Tls {
                ca: Arc::clone(&self.ca),
                upstream: Arc::clone(&self.upstream),
            },
            limits: Limits::default(),
            cancel: CancellationToken::new(),
            meter: Arc::new(Meter::default()),
        };
        testkit::interceptor(job, ctx, api.addr).await
    }

    /// The agent's TLS: trusts the daemon CA only.
    fn agent_tls(&self) -> Arc<rustls::ClientConfig> {
        testkit::agent_tls(std::slice::from_ref(self.ca.cert_der()))
    }
}

async fn api(dir: &tempfile::TempDir, name: &str) -> FakeApi {
    testkit::fake_api(
        &dir.path().join(name),
        &policy::parse_host(name).expect("host"),
    )
    .await
}

#[tokio::test]
async fn the_host_receives_the_value_and_a_stream_arrives_chunk_by_chunk_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let d = daemon(&[&a]);
    let key = injection("KEY", "x-api-key", "", "sk-real-A");
    let all = [key.placeholder.clone()];
    let icpt = d
        .intercept("api.a.test:443", std::slice::from_ref(&key), &all, &a)
        .await;
    let mut agent = testkit::agent(icpt.addr, "api.a.test", d.agent_tls())
        .await
        .expect("agent connects");
    let ph = key.placeholder.as_str();
    let hdrs = [("host", "api.a.test"), ("x-api-key", ph)];
    let (status, body) = testkit::send(
        &mut agent,
        testkit::request("POST", "/v1/messages", &hdrs, b"hello"),
    )
    .await
    .expect("response");
    assert_eq!((status, body.as_str()), (200, "ok 5\n"));
    // Same connection (keep-alive): a streamed response, timed per chunk.
    agent.ready().await.expect("ready");
    let resp = agent
        .send_request(testkit::request("GET", "/stream", &hdrs, b""))
        .await
        .expect("stream response");
    assert_eq!(resp.status(), 200);
    let began = Instant::now();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            arrivals.push((began.elapsed(), String::from_utf8_lossy(data).into_owned()));
        }
    }
    let text: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert!(
        arrivals.len() >= STREAM_CHUNKS,
        "chunks arrived one by one: {arrivals:?}"
    );
    let first = arrivals[0].0;
    let last = arrivals[arrivals.len() - 1].0;
    let whole = STREAM_GAP * (STREAM_CHUNKS as u32 - 1);
    // Buffered, every chunk would arrive at once, after the last was sent.
    assert!(
        last.saturating_sub(first) >= whole - Duration::from_millis(50),
        "the chunks arrived as the server sent them, {STREAM_GAP:?} apart: {arrivals:?}"
    );
    drop(agent);
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("x-api-key"), Some(&b"sk-real-A"[..]));
        assert!(
            !s.headers
                .iter()
                .any(|(_, v)| v.windows(ph.len()).any(|w| w == ph.as_bytes()))
        );
    }
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(
        a.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one upstream connection for both"
    );
    let sums = icpt.summaries(1).await;
    assert_eq!(sums.len(), 1);
    assert_eq!(
        (sums[0].requests, sums[0].injected, &sums[0].refused),
        (2, 2, &None)
    );
}

#[tokio::test]
async fn a_placeholder_sent_to_another_credentials_host_is_refused_and_recorded_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let b = api(&dir, "api.b.test").await;
    let d = daemon(&[&a, &b]);
    let ka = injection("A_KEY", "x-api-key", "", "sk-real-A");
    let kb = injection("B_KEY", "authorization", "Bearer ", "sk-real-B");
    let all = [ka.placeholder.clone(), kb.placeholder.clone()];
    let to_b = d
        .intercept("api.b.test:443", std::slice::from_ref(&kb), &all, &b)
        .await;
    let mut agent = testkit::agent(to_b.addr, "api.b.test", d.agent_tls())
        .await
        .expect("agent");
    let a_ph = ka.placeholder.as_str();
    let bearer_a = format!("Bearer {a_ph}");
    // A's placeholder in B's own header, and in a header B does not use.
    for hdrs in [
        [("host", "api.b.test"), ("authorization", bearer_a.as_str())],
        [("host", "api.b.test"), ("x-api-key", a_ph)],
    ] {
        let (status, body) = testkit::send(&mut agent, testkit::request("GET", "/", &hdrs, b""))
            .await
            .expect("refusal");
        assert_eq!(
            (status, body.as_str()),
            (403, "credential placeholder sent to api.b.test:443\n")
        );
        // The refusal ended the connection.
        assert!(agent.ready().await.is_err(), "closed after a refusal");
        agent = testkit::agent(to_b.addr, "api.b.test", d.agent_tls())
            .await
            .expect("agent");
    }
    let sums = to_b.summaries(2).await;
    assert_eq!(sums.len(), 2);
    for s in &sums {
        assert_eq!(
            s.refused.as_ref().map(Refusal::reason).as_deref(),
            Some("credential placeholder sent to api.b.test:443")
        );
        assert!(s.refused.as_ref().is_some_and(Refusal::is_denial));
        assert_eq!(s.requests, 0);
    }
    assert!(b.seen().is_empty(), "B's server saw no request");
    // B's own placeholder still works on B, and A's value went nowhere.
    let (status, _) = testkit::send(
        &mut agent,
        testkit::request(
            "GET",
            "/",
            &[
                ("host", "api.b.test"),
                (
                    "authorization",
                    &format!("Bearer {}", kb.placeholder.as_str()),
                ),
            ],
            b"",
        ),
    )
    .await
    .expect("response");
    assert_eq!(status, 200);
    assert_eq!(
        b.seen()[0].header("authorization"),
        Some(&b"Bearer sk-real-B"[..])
    );
    for server in [&a, &b] {
        assert!(
            !server.received(b"sk-real-A"),
            "A's value reached no server"
        );
        assert!(!server.received(a_ph.as_bytes()));
    }
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_host_header_or_server_name_for_another_host_is_refused_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let d = daemon(&[&a]);
    let key = injection("KEY", "x-api-key", "", "sk-real-A");
    let all = [key.placeholder.clone()];
    let icpt = d
        .intercept("api.a.test:443", std::slice::from_ref(&key), &all, &a)
        .await;
    // SNI for another host: no handshake at all.
    let tls = d.agent_tls();
    let e = testkit::agent(icpt.addr, "evil.test", Arc::clone(&tls))
        .await
        .err();
    assert!(e.is_some_and(|e| e.starts_with("TLS")), "handshake refused");
    // SNI right, Host another: 421.
    let mut agent = testkit::agent(icpt.addr, "api.a.test", tls)
        .await
        .expect("agent");
    let hdrs = [
        ("host", "evil.test"),
        ("x-api-key", key.placeholder.as_str()),
    ];
    let (status, body) = testkit::send(&mut agent, testkit::request("GET", "/", &hdrs, b""))
        .await
        .expect("refusal");
    assert_eq!(
        (status, body.as_str()),
        (421, "Host `evil.test` is not api.a.test:443\n")
    );
    let sums = icpt.summaries(2).await;
    let reasons: Vec<String> = sums
        .iter()
        .filter_map(|s| s.refused.as_ref().map(Refusal::reason))
        .collect();
    assert_eq!(
        reasons,
        [
            "TLS server name `evil.test` is not api.a.test:443",
            "Host `evil.test` is not api.a.test:443"
        ]
    );
    assert!(a.seen().is_empty() && !a.received(b"sk-real-A"));
}

#[tokio::test]
async fn keep_alive_carries_many_requests_with_both_body_framings_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let d = daemon(&[&a]);
    let key = injection("KEY", "authorization", "Bearer ", "sk-real-A");
    let all = [key.placeholder.clone()];
    let icpt = d
        .intercept("api.a.test:443", std::slice::from_ref(&key), &all, &a)
        .await;
    let mut agent = testkit::agent(icpt.addr, "api.a.test", d.agent_tls())
        .await
        .expect("agent");
    let bearer = format!("Bearer {}", key.placeholder.as_str());
    for i in 0..5 {
        let body = vec![b'x'; 1000 * i + 1];
        let mut hdrs = vec![("host", "api.a.test"), ("authorization", bearer.as_str())];
        if i % 2 == 1 {
            hdrs.push(("transfer-encoding", "chunked"));
        }
        let (status, text) = testkit::send(
            &mut agent,
            testkit::request("POST", "/upload", &hdrs, &body),
        )
        .await
        .expect("response");
        assert_eq!((status, text), (200, format!("ok {}\n", body.len())));
    }
    let seen = a.seen();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some(&b"Bearer sk-real-A"[..]))
    );
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(agent);
    let sums = icpt.summaries(1).await;
    assert_eq!((sums[0].requests, sums[0].injected), (5, 5));
}

#[tokio::test]
async fn a_megabyte_of_header_is_refused_within_the_head_bound_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let d = daemon(&[&a]);
    let key = injection("KEY", "x-api-key", "", "sk-real-A");
    let all = [key.placeholder.clone()];
    let icpt = d
        .intercept("api.a.test:443", std::slice::from_ref(&key), &all, &a)
        .await;
    let tcp = tokio::net::TcpStream::connect(icpt.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("api.a.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(d.agent_tls())
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let mut head = b"GET / HTTP/1.1\r\nhost: api.a.test\r\nx-big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 1 << 20));
        head.extend_from_slice(b"\r\n\r\n");
        // The proxy stops reading long before the end: errors expected.
        let _ = wr.write_all(&head).await;
        wr
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "answered and closed in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    writer.abort();
    assert!(a.seen().is_empty(), "the host saw no request");
    let sums = icpt.summaries(1).await;
    assert_eq!(sums[0].requests, 0);
    let meter_note = &sums[0].end;
    assert!(meter_note.starts_with("closed"), "{meter_note}");
}

#[tokio::test]
async fn a_host_that_closes_its_side_is_connected_to_again_for_the_next_request_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = api(&dir, "api.a.test").await;
    let d = daemon(&[&a]);
    let key = injection("KEY", "x-api-key", "", "sk-real-A");
    let all = [key.placeholder.clone()];
    let icpt = d
        .intercept("api.a.test:443", std::slice::from_ref(&key), &all, &a)
        .await;
    let mut agent = testkit::agent(icpt.addr, "api.a.test", d.agent_tls())
        .await
        .expect("agent");
    let hdrs = [
        ("host", "api.a.test"),
        ("x-api-key", key.placeholder.as_str()),
    ];
    for path in ["/close", "/close", "/after"] {
        let (status, _) = testkit::send(&mut agent, testkit::request("GET", path, &hdrs, b""))
            .await
            .expect("response");
        assert_eq!(status, 200, "{path}");
    }
    let seen = a.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.header("x-api-key") == Some(&b"sk-real-A"[..]))
    );
    assert_eq!(
        a.connections.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "one host connection per close"
    );
    drop(agent);
    let sums = icpt.summaries(1).await;
    assert_eq!((sums[0].requests, &sums[0].failed), (3, &None));
}
