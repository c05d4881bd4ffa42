//! Added latency of an injected HTTPS request (issue 21): the same TLS API
//! server on 127.0.0.1 reached through the interception (the agent's TLS
//! terminated, the head checked, the key put in, TLS again to the server)
//! and through a raw TCP relay (what a plain `CONNECT` tunnel does), the two
//! interleaved in one run, 200 requests each, p50 and p99. Two shapes: a
//! new connection per request (handshakes included), and requests on one
//! kept-alive connection. Run with `cargo bench --bench inject_latency`
//! (`-- --quick` for 20 requests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd::inject_bench::{
    Ctx, DaemonCa, Inject, Injection, Job, Limits, Meter, Placeholder, SecretValue, Tls, policy,
    testkit, upstream_config,
};
use tokio_util::sync::CancellationToken;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn show(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
    println!(
        "{name:<34} n={:<4} p50={:>8.3} ms  p99={:>8.3} ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 20 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = policy::parse_host("api.bench.test").expect("host");
    let api = testkit::fake_api(&dir.path().join("api"), &host).await;
    let ca = Arc::new(DaemonCa::load_or_create(&dir.path().join("ca")).expect("daemon CA"));
    let upstream = upstream_config(&[], std::slice::from_ref(api.ca.cert_der())).expect("upstream");
    let inject = Inject {
        hosts: Vec::new(),
        header: "x-api-key".into(),
        prefix: String::new(),
        suffix: String::new(),
    };
    let ph = Placeholder::generate().expect("random");
    let key = Arc::new(
        Injection::new(
            "KEY",
            ph.clone(),
            &inject,
            SecretValue::new(b"sk-bench".to_vec()),
        )
        .expect("injection"),
    );
    let job = Arc::new(Job {
        target: policy::parse_authority("api.bench.test:443").expect("target"),
        own: vec![key],
        all: vec![ph.clone()].into(),
    });
    let ctx = Ctx {
        tls: Tls {
            ca: Arc::clone(&ca),
            upstream,
        },
        limits: Limits::default(),
        cancel: CancellationToken::new(),
        meter: Arc::new(Meter::default()),
    };
    let icpt = testkit::interceptor(job, ctx, api.addr).await;
    let (relay, _relay_task) = testkit::relay(api.addr).await;
    let via_proxy = testkit::agent_tls(std::slice::from_ref(ca.cert_der()));
    let direct = testkit::agent_tls(std::slice::from_ref(api.ca.cert_der()));
    let tunnel_hdrs = [("host", "api.bench.test"), ("x-api-key", "sk-bench")];
    let inject_hdrs = [("host", "api.bench.test"), ("x-api-key", ph.as_str())];
    let req = |h: &[(&str, &str)]| testkit::request("POST", "/v1/messages", h, b"{\"hello\":1}");

    // Warm up both paths (leaf made, code paths paged in).
    for _ in 0..5 {
        let mut a = testkit::agent(relay, "api.bench.test", Arc::clone(&direct))
            .await
            .expect("tunnel");
        testkit::send(&mut a, req(&tunnel_hdrs))
            .await
            .expect("tunnel request");
        let mut b = testkit::agent(icpt.addr, "api.bench.test", Arc::clone(&via_proxy))
            .await
            .expect("inject");
        testkit::send(&mut b, req(&inject_hdrs))
            .await
            .expect("injected request");
    }

    println!("inject_latency: {n} requests per path, interleaved, one run");
    let (mut t_new, mut i_new) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let began = Instant::now();
        let mut a = testkit::agent(relay, "api.bench.test", Arc::clone(&direct))
            .await
            .expect("tunnel");
        let (s, _) = testkit::send(&mut a, req(&tunnel_hdrs))
            .await
            .expect("tunnel request");
        t_new.push(began.elapsed());
        assert_eq!(s, 200);
        drop(a);
        let began = Instant::now();
        let mut b = testkit::agent(icpt.addr, "api.bench.test", Arc::clone(&via_proxy))
            .await
            .expect("inject");
        let (s, _) = testkit::send(&mut b, req(&inject_hdrs))
            .await
            .expect("injected request");
        i_new.push(began.elapsed());
        assert_eq!(s, 200);
    }
    let (tp50, _) = show("tunnel, new connection", t_new);
    let (ip50, _) = show("injected, new connection", i_new);
    println!(
        "  added p50: {:.3} ms",
        (ip50.as_secs_f64() - tp50.as_secs_f64()) * 1e3
    );

    let mut a = testkit::agent(relay, "api.bench.test", Arc::clone(&direct))
        .await
        .expect("tunnel");
    let mut b = testkit::agent(icpt.addr, "api.bench.test", Arc::clone(&via_proxy))
        .await
        .expect("inject");
    let (mut t_ka, mut i_ka) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let began = Instant::now();
        testkit::send(&mut a, req(&tunnel_hdrs))
            .await
            .expect("tunnel request");
        t_ka.push(began.elapsed());
        let began = Instant::now();
        testkit::send(&mut b, req(&inject_hdrs))
            .await
            .expect("injected request");
        i_ka.push(began.elapsed());
    }
    let (tp50, _) = show("tunnel, kept-alive connection", t_ka);
    let (ip50, _) = show("injected, kept-alive connection", i_ka);
    println!(
        "  added p50: {:.3} ms",
        (ip50.as_secs_f64() - tp50.as_secs_f64()) * 1e3
    );
    let seen = api.seen();
    let injected = seen
        .iter()
        .filter(|s| s.header("x-api-key") == Some(&b"sk-bench"[..]))
        .count();
    assert_eq!(
        injected,
        seen.len(),
        "every request reached the server with the key"
    );
}
