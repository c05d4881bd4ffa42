//! Serving the registry: `--metrics-listen` on its own thread with its own
//! current-thread runtime, loopback unless allowed otherwise, a cap on
//! connections (the oldest that has sent nothing makes room), and
//! timeouts on every part of a request.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use super::Metrics;

/// Past this many scrape connections, a new one makes room: it closes the
/// oldest connection that has sent nothing for `IDLE_GRACE` (all clients
/// may be 127.0.0.1, so a per-peer cap would not help). When none has had
/// its grace yet, or every open one is being answered, the newcomer is
/// held as well, up to `MAX_HELD`. There, the oldest that has not sent a
/// byte is closed whatever its age, else the oldest that has not finished
/// its request head, else (every one being answered) the newcomer itself.
/// A scraper that has connected but not yet written (descheduled on a busy
/// machine) is thus pushed out neither by the next few idle connections
/// nor, below `MAX_HELD`, within its grace; a client that keeps 8 requests
/// unanswered (by not reading) holds no one else out. At `MAX_HELD` the
/// grace no longer applies: a flood of idle connections pushes a silent
/// scraper out after `MAX_HELD - 1` newer ones.
pub const MAX_CONNECTIONS: usize = 8;
/// The hard cap on open scrape connections: two descriptors each (the
/// socket and its peek duplicate) and a parked task; only those being
/// answered cost more.
pub const MAX_HELD: usize = 64;
/// How long a connection past `MAX_CONNECTIONS` may stay silent before a
/// newcomer may close it.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);
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
    /// When it was accepted.
    opened: std::time::Instant,
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

/// Make room for a new connection among `conns` (oldest first) at `now`:
/// forget the ended ones; past `MAX_CONNECTIONS`, close the oldest silent
/// one older than `IDLE_GRACE`, else hold the newcomer too; at `MAX_HELD`,
/// close the oldest silent one, else the oldest still waiting for its
/// request head. `false` (close the newcomer) at `MAX_HELD` when every
/// open connection is being answered.
fn make_room(conns: &mut std::collections::VecDeque<Conn>, now: std::time::Instant) -> bool {
    conns.retain(|c| !c.task.is_finished());
    if conns.len() < MAX_CONNECTIONS {
        return true;
    }
    let waiting = |c: &Conn| !c.answered.load(std::sync::atomic::Ordering::Relaxed);
    let silent = |c: &Conn| waiting(c) && c.sent_nothing();
    let full = conns.len() >= MAX_HELD;
    let victim = if full {
        conns
            .iter()
            .position(silent)
            .or_else(|| conns.iter().position(waiting))
    } else {
        // The age first: a peek is a system call.
        conns
            .iter()
            .position(|c| now.saturating_duration_since(c.opened) >= IDLE_GRACE && silent(c))
    };
    match victim.and_then(|i| conns.remove(i)) {
        Some(c) => {
            c.task.abort();
            true
        }
        None => !full,
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
    let mut conns = std::collections::VecDeque::with_capacity(MAX_HELD);
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
        let now = std::time::Instant::now();
        if !make_room(&mut conns, now) {
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
            opened: now,
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
    use std::time::Instant;

    /// A moment at which every connection opened so far has had its grace.
    fn after_grace() -> Instant {
        Instant::now() + IDLE_GRACE
    }

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
            opened: Instant::now(),
            task: tokio::spawn(std::future::pending()),
            answered: Arc::new(AtomicBool::new(answered)),
            probe: None,
        };
        // The two oldest are being answered; the third is the oldest idle.
        let mut conns: std::collections::VecDeque<Conn> =
            (0..MAX_CONNECTIONS).map(|i| conn(i < 2)).collect();
        let victim = conns[2].task.abort_handle();
        assert!(make_room(&mut conns, after_grace()));
        assert_eq!(conns.len(), MAX_CONNECTIONS - 1);
        tokio::task::yield_now().await;
        assert!(victim.is_finished());
        assert!(conns.iter().all(|c| !c.task.is_finished()));
        // Below the cap nothing is closed.
        let open: Vec<_> = conns.iter().map(|c| c.task.abort_handle()).collect();
        assert!(make_room(&mut conns, after_grace()));
        tokio::task::yield_now().await;
        assert!(open.iter().all(|h| !h.is_finished()));
        assert_eq!(conns.len(), MAX_CONNECTIONS - 1);
        // Every one answered: the newcomer is held too (a client that
        // does not read its answers holds no one out), up to the hard cap,
        // where it is the one refused.
        for c in &conns {
            c.answered.store(true, Ordering::Relaxed);
        }
        while conns.len() < MAX_HELD {
            assert!(make_room(&mut conns, after_grace()), "{}", conns.len());
            conns.push_back(conn(true));
        }
        assert!(!make_room(&mut conns, after_grace()));
        assert_eq!(conns.len(), MAX_HELD);
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
                opened: Instant::now(),
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
        assert!(make_room(&mut conns, after_grace()));
        tokio::task::yield_now().await;
        assert!(!scraper.is_finished(), "the waiting scraper was closed");
        assert!(first_idle.is_finished(), "the oldest idle one stays open");
        // With every other one being answered, the waiting scraper is held
        // up to the hard cap; there, it is the one to go.
        for c in conns.iter_mut().skip(1) {
            c.probe = None;
            c.answered.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        while conns.len() < MAX_HELD {
            assert!(make_room(&mut conns, after_grace()));
            conns.push_back(Conn {
                opened: Instant::now(),
                task: tokio::spawn(std::future::pending()),
                answered: Arc::new(AtomicBool::new(true)),
                probe: None,
            });
        }
        tokio::task::yield_now().await;
        assert!(!scraper.is_finished(), "held below the hard cap");
        assert!(make_room(&mut conns, after_grace()));
        tokio::task::yield_now().await;
        assert!(scraper.is_finished());
        for c in conns {
            c.task.abort();
        }
    }

    #[tokio::test]
    async fn past_the_cap_silent_connections_within_their_grace_are_held_up_to_the_hard_cap() {
        let silent = || Conn {
            opened: Instant::now(),
            task: tokio::spawn(std::future::pending()),
            answered: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            probe: None,
        };
        let now = Instant::now();
        let mut conns: std::collections::VecDeque<Conn> = std::iter::repeat_with(silent)
            .take(MAX_CONNECTIONS)
            .collect();
        let handles: Vec<_> = conns.iter().map(|c| c.task.abort_handle()).collect();
        // A scraper that connected but has not written yet (the oldest) is
        // not pushed out by the newer idle ones while its grace lasts.
        while conns.len() < MAX_HELD {
            assert!(make_room(&mut conns, now));
            conns.push_back(silent());
        }
        tokio::task::yield_now().await;
        assert!(handles.iter().all(|h| !h.is_finished()), "none closed");
        assert_eq!(conns.len(), MAX_HELD);
        // At the hard cap the oldest silent one goes, whatever its age.
        assert!(make_room(&mut conns, now));
        tokio::task::yield_now().await;
        assert!(handles[0].is_finished());
        assert!(handles[1..].iter().all(|h| !h.is_finished()));
        assert_eq!(conns.len(), MAX_HELD - 1);
        // Past the cap, once its grace is over, the oldest silent one goes
        // without waiting for the hard cap.
        conns.truncate(MAX_CONNECTIONS + 1);
        assert!(make_room(&mut conns, after_grace()));
        tokio::task::yield_now().await;
        assert!(handles[1].is_finished());
        assert_eq!(conns.len(), MAX_CONNECTIONS);
        for c in conns {
            c.task.abort();
        }
    }
}
