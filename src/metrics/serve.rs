//! Serving the registry: `--metrics-listen` on its own thread with its own
//! current-thread runtime, loopback unless allowed otherwise, a cap on
//! connections (the oldest that has sent nothing makes room), and
//! timeouts on every part of a request.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use super::Metrics;

/// At most this many scrape connections at once. A new connection past it
/// closes the oldest one that has not sent a byte yet, else the oldest one
/// that has not finished its request head (all clients may be 127.0.0.1, so
/// a per-peer cap would not help); when every one has (they are being
/// answered), the new one is closed instead. A scraper whose request is
/// waiting to be read is thus never pushed out by idle connections opened
/// after it, however busy the machine.
pub const MAX_CONNECTIONS: usize = 8;
/// A client must send its first byte within this time (issue 17).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client must send its whole request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing (a
/// scraper that does not read its response included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read (hyper's smallest buffer limit).
pub const MAX_REQUEST_BYTES: usize = 8192;

/// Why `--metrics-listen` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "--metrics-listen {addr} is not a loopback address: metrics name profiles and show activity to anyone who can reach it; hint: use 127.0.0.1:{port} or [::1]:{port}, or pass --metrics-allow-remote (AGENTD_METRICS_ALLOW_REMOTE=true) to serve them on {addr} on purpose"
    )]
    NotLoopback { addr: SocketAddr, port: u16 },
    #[error(
        "cannot listen for metrics on {addr} (--metrics-listen): {source}; hint: choose a free port"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the metrics server: {0}")]
    Start(std::io::Error),
}

/// Check the address against the loopback policy and bind it.
pub fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, ListenError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ListenError::NotLoopback {
            addr,
            port: addr.port(),
        });
    }
    let l = TcpListener::bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ListenError::Bind { addr, source })?;
    Ok(l)
}

/// Serve `/metrics` on `listener` from a thread of its own (with its own
/// single-threaded runtime): scrapers, however slow or hostile, never take
/// a worker of the daemon's runtime.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> Result<(), ListenError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ListenError::Start)?;
    std::thread::Builder::new()
        .name("agentd-metrics".into())
        .spawn(move || rt.block_on(accept_loop(listener, metrics)))
        .map_err(ListenError::Start)?;
    Ok(())
}

/// One open scrape connection, as the accept loop tracks it.
struct Conn {
    task: tokio::task::JoinHandle<()>,
    /// Set once its request head was read (the request is being answered).
    answered: Arc<std::sync::atomic::AtomicBool>,
    /// A second descriptor of the same socket (non-blocking, shared with
    /// the task's), only to peek: has the client sent anything yet? The
    /// task shuts the socket down when it ends, so this descriptor never
    /// keeps a connection open.
    probe: Option<Arc<std::net::TcpStream>>,
}

impl Conn {
    /// True unless bytes from the client are waiting to be read.
    fn sent_nothing(&self) -> bool {
        let Some(probe) = &self.probe else {
            return true;
        };
        let mut b = [0u8; 1];
        !matches!(probe.peek(&mut b), Ok(n) if n > 0)
    }
}

/// Make room for a new connection among `conns` (oldest first): forget the
/// ended ones; at the cap, close the oldest one that has sent nothing, else
/// the oldest one still waiting for its request head. `false` when every
/// open connection is being answered.
fn make_room(conns: &mut std::collections::VecDeque<Conn>) -> bool {
    conns.retain(|c| !c.task.is_finished());
    if conns.len() < MAX_CONNECTIONS {
        return true;
    }
    let waiting = |c: &Conn| !c.answered.load(std::sync::atomic::Ordering::Relaxed);
    let idle = conns
        .iter()
        .position(|c| waiting(c) && c.sent_nothing())
        .or_else(|| conns.iter().position(waiting));
    match idle.and_then(|i| conns.remove(i)) {
        Some(c) => {
            c.task.abort();
            true
        }
        None => false,
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable; metrics are not served");
            return;
        }
    };
    let mut conns = std::collections::VecDeque::with_capacity(MAX_CONNECTIONS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !make_room(&mut conns) {
            tracing::debug!(%peer, "metrics: every connection is being answered; closing");
            drop(stream);
            continue;
        }
        let probe = probe_of(&stream);
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(serve_connection(
            stream,
            ShutdownOnDrop(probe.clone()),
            peer,
            Arc::clone(&answered),
            Arc::clone(&metrics),
        ));
        conns.push_back(Conn {
            task,
            answered,
            probe,
        });
        // Let the connections just accepted read their heads before the
        // next accept can push them out (the yield waits for the I/O
        // driver, which tells them their bytes arrived).
        tokio::task::yield_now().await;
    }
}

/// A duplicate of the connection's descriptor to peek with (`None` when
/// the process is out of descriptors: the connection then counts as having
/// sent nothing, as before its first byte).
fn probe_of(stream: &tokio::net::TcpStream) -> Option<Arc<std::net::TcpStream>> {
    let fd = std::os::fd::AsFd::as_fd(stream).try_clone_to_owned().ok()?;
    let probe = std::net::TcpStream::from(fd);
    // Already so (tokio's sockets are), and it must be: a peek that
    // blocked would stop the accept loop.
    probe.set_nonblocking(true).ok()?;
    Some(Arc::new(probe))
}

/// Shuts the connection's socket down when the connection's task ends or
/// is aborted, whatever other descriptor of it is still open.
struct ShutdownOnDrop(Option<Arc<std::net::TcpStream>>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One connection: its first byte within `FIRST_BYTE_TIMEOUT`, its head
/// within `HEADER_TIMEOUT`, all of it within `CONNECTION_TIMEOUT`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    _shutdown: ShutdownOnDrop,
    peer: SocketAddr,
    answered: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(%peer, "metrics: no request within the first-byte timeout; closing");
            return;
        }
    }
    let service = hyper::service::service_fn(move |req| {
        answered.store(true, std::sync::atomic::Ordering::Relaxed);
        respond(req, Arc::clone(&metrics))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
        Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    // Prometheus asks for OpenMetrics first; anything else gets 0.0.4.
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.contains("application/openmetrics-text"))
        });
    Ok(response(
        &metrics,
        req.method(),
        req.uri().path(),
        openmetrics,
    ))
}

fn response(
    metrics: &Metrics,
    method: &hyper::Method,
    path: &str,
    openmetrics: bool,
) -> hyper::Response<Body> {
    let (status, ctype, body) = if path != "/metrics" {
        (
            hyper::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_string(),
        )
    } else if method != hyper::Method::GET && method != hyper::Method::HEAD {
        (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
        )
    } else if openmetrics {
        (
            hyper::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        )
    } else {
        (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode_text(),
        )
    };
    let mut r = hyper::Response::new(Body::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_addresses_need_the_explicit_flag_issue_11() {
        let e = bind("0.0.0.0:0".parse().expect("addr"), false).expect_err("refused");
        assert!(e.to_string().contains("--metrics-allow-remote"), "{e}");
        assert!(bind("127.0.0.1:0".parse().expect("addr"), false).is_ok());
        assert!(bind("0.0.0.0:0".parse().expect("addr"), true).is_ok());
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_connection_without_a_request_head_is_closed_issue_17() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let conn = |answered: bool| Conn {
            task: tokio::spawn(std::future::pending()),
            answered: Arc::new(AtomicBool::new(answered)),
            probe: None,
        };
        // The two oldest are being answered; the third is the oldest idle.
        let mut conns: std::collections::VecDeque<Conn> =
            (0..MAX_CONNECTIONS).map(|i| conn(i < 2)).collect();
        let victim = conns[2].task.abort_handle();
        assert!(make_room(&mut conns));
        assert_eq!(conns.len(), MAX_CONNECTIONS - 1);
        tokio::task::yield_now().await;
        assert!(victim.is_finished());
        assert!(conns.iter().all(|c| !c.task.is_finished()));
        // Below the cap nothing is closed.
        let open: Vec<_> = conns.iter().map(|c| c.task.abort_handle()).collect();
        assert!(make_room(&mut conns));
        tokio::task::yield_now().await;
        assert!(open.iter().all(|h| !h.is_finished()));
        assert_eq!(conns.len(), MAX_CONNECTIONS - 1);
        // Every one answered: the newcomer is the one refused.
        for c in &conns {
            c.answered.store(true, Ordering::Relaxed);
        }
        conns.push_back(conn(true));
        assert!(!make_room(&mut conns));
        assert_eq!(conns.len(), MAX_CONNECTIONS);
        for c in conns {
            c.task.abort();
        }
    }

    #[tokio::test]
    async fn at_the_cap_a_client_whose_request_waits_is_not_pushed_out_by_newer_idle_ones_issue_17()
    {
        use std::io::Write;
        use std::sync::atomic::AtomicBool;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        let mut conns = std::collections::VecDeque::new();
        for i in 0..MAX_CONNECTIONS {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            if i == 0 {
                // The oldest: a scraper whose request is not read yet.
                c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                    .expect("write");
            }
            clients.push(c);
            let (server_side, _) = listener.accept().expect("accept");
            server_side.set_nonblocking(true).expect("nonblocking");
            let stream = tokio::net::TcpStream::from_std(server_side).expect("tokio");
            conns.push_back(Conn {
                probe: probe_of(&stream),
                task: tokio::spawn(async move {
                    let _keep = stream;
                    std::future::pending::<()>().await
                }),
                answered: Arc::new(AtomicBool::new(false)),
            });
        }
        // Its bytes have arrived (loopback), so it is skipped.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let scraper = conns[0].task.abort_handle();
        let first_idle = conns[1].task.abort_handle();
        assert!(conns[1].sent_nothing() && !conns[0].sent_nothing());
        assert!(make_room(&mut conns));
        tokio::task::yield_now().await;
        assert!(!scraper.is_finished(), "the waiting scraper was closed");
        assert!(first_idle.is_finished(), "the oldest idle one stays open");
        // With every waiting one having sent bytes, the oldest goes.
        for c in conns.iter_mut().skip(1) {
            c.probe = None;
            c.answered.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        conns.push_back(Conn {
            task: tokio::spawn(std::future::pending()),
            answered: Arc::new(AtomicBool::new(true)),
            probe: None,
        });
        assert!(make_room(&mut conns));
        tokio::task::yield_now().await;
        assert!(scraper.is_finished());
        for c in conns {
            c.task.abort();
        }
    }
}
