//! One intercepted connection (issue 21): the egress proxy allowed a
//! `CONNECT` to a host that a credential is injected on, connected to the
//! checked address and answered `200`; from there this owns the client
//! stream until it ends.
//!
//! The agent's TLS is terminated with the daemon CA's leaf for the host,
//! once its ClientHello named the host (SNI). HTTP/1.1 is served by hyper
//! (bounded head buffer and header count, head timeout): each request is
//! checked (`check::request`), gets the value where its placeholder was,
//! and goes to the host over TLS verified with the host's roots and the
//! operator's CA file, on one upstream connection kept alive across the
//! agent's requests. Request bodies and responses stream frame by frame
//! (server-sent events reach the agent as the host sends them). A refused
//! request is answered (`403`, `421` or `400`, `Connection: close`) and ends
//! the connection; the first refusal is in the [`Summary`] for the record.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::http::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::ca::DaemonCa;
use super::check::{self, Refusal};
use super::io::{Meter, Metered, Rewind};
use super::{Injection, Placeholder};
use crate::egress::policy::{Host, Target};
use crate::sync::lock;

/// Bounds of one intercepted connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// For each TLS handshake (the agent's, the host's).
    pub handshake: Duration,
    /// For a request head, once it has begun.
    pub head: Duration,
    /// Nothing moved on the agent's side for this long: the connection ends.
    pub idle: Duration,
    /// Largest request head, in bytes (hyper's read buffer; at least 8 KiB).
    pub max_head: usize,
    /// Most header lines in one request head.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake: Duration::from_secs(10),
            head: Duration::from_secs(10),
            idle: Duration::from_secs(600),
            max_head: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// The daemon's TLS material for interceptions.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: Arc<DaemonCa>,
    /// Verifies the host (its roots and the operator's CA file).
    pub upstream: Arc<rustls::ClientConfig>,
}

/// What one connection intercepts for.
#[derive(Debug)]
pub struct Job {
    /// The destination of the `CONNECT` (an `inject` host).
    pub target: Target,
    /// The credentials injected on this host.
    pub own: Vec<Arc<Injection>>,
    /// Every placeholder of the session (a stray one is refused).
    pub all: Arc<[Placeholder]>,
}

/// What an interception runs with besides its connection.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub tls: Tls,
    pub limits: Limits,
    /// The session's end.
    pub cancel: CancellationToken,
    /// Counts the agent's side (a fresh one per connection).
    pub meter: Arc<Meter>,
}

/// How an intercepted connection went, for the egress record.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Requests forwarded to the host.
    pub requests: u64,
    /// Values put in (a request may carry several credentials).
    pub injected: u64,
    /// The refusal that ended the connection, if one did.
    pub refused: Option<Refusal>,
    /// The first failure to reach the host (answered `502`), if any.
    pub failed: Option<String>,
    /// How the connection ended (the record's reason when not refused).
    pub end: String,
}

/// The host's side: its TLS and HTTP handshake runs while the agent's TLS
/// handshake does (so the two cost one round of latency, not two); used
/// once a request passes; connected again (to the same checked address)
/// when the host closed an idle kept-alive connection.
enum Upstream {
    Pending(tokio::task::JoinHandle<Result<Sender, String>>),
    Ready(Sender),
    Gone,
}

/// A ready HTTP/1.1 connection to the host and its driver task.
struct Sender {
    send: SendRequest<Incoming>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// TLS (verified for the target's name or IP) and HTTP/1.1 over `tcp`.
async fn handshake(
    tcp: TcpStream,
    target: Target,
    config: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<Sender, String> {
    let shown = check::target_text(&target);
    let name = match &target.host {
        Host::Name(n) => ServerName::try_from(n.clone())
            .map_err(|e| format!("{shown} is not a TLS server name: {e}"))?,
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    let tls = tokio::time::timeout(limit, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake with {shown} within {limit:?}"))?
        .map_err(|e| format!("TLS with {shown}: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {shown}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    })
    .abort_handle();
    Ok(Sender { send, driver })
}

struct State {
    job: Arc<Job>,
    /// The address the proxy checked and connected to; the only one used.
    addr: std::net::SocketAddr,
    tls: Tls,
    limits: Limits,
    upstream: tokio::sync::Mutex<Upstream>,
    summary: Mutex<Summary>,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Aborts a task when the interception returns early.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response of the proxy's own: a one-line reason, then close.
fn answer(status: u16, reason: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Drop the headers that describe one hop's connection (RFC 9110
/// 7.6.1): each side of the proxy manages its own, so a host closing its
/// connection does not close the agent's, and the reverse.
fn hop_by_hop(headers: &mut header::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        // Framing stays (hyper re-frames the body from it), and so does Host.
        if !matches!(
            name.as_str(),
            "transfer-encoding" | "content-length" | "host"
        ) {
            headers.remove(name.as_str());
        }
    }
    for name in ["connection", "keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

impl State {
    /// The connection to the host: the one begun with the interception,
    /// or a new one to the same address when the host closed it.
    async fn sender(&self) -> Result<tokio::sync::MutexGuard<'_, Upstream>, String> {
        let mut up = self.upstream.lock().await;
        if let Upstream::Pending(task) = &mut *up {
            let done = task
                .await
                .map_err(|e| format!("the connection to the host: {e}"))
                .and_then(|r| r);
            *up = Upstream::Gone;
            *up = Upstream::Ready(done?);
        }
        let closed = match &*up {
            Upstream::Ready(s) => s.send.is_closed(),
            Upstream::Gone => true,
            Upstream::Pending(_) => false,
        };
        if closed {
            *up = Upstream::Gone;
            let limit = self.limits.handshake;
            let tcp = tokio::time::timeout(limit, TcpStream::connect(self.addr))
                .await
                .map_err(|_| format!("cannot connect to {} again: timed out", self.addr))?
                .map_err(|e| format!("cannot connect to {} again: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            let config = Arc::clone(&self.tls.upstream);
            *up = Upstream::Ready(handshake(tcp, self.job.target.clone(), config, limit).await?);
        }
        Ok(up)
    }

    fn refuse(&self, r: Refusal) -> Response<Body> {
        let resp = answer(r.status(), &r.reason());
        let mut s = lock(&self.summary);
        if s.refused.is_none() {
            s.refused = Some(r);
        }
        resp
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let injected =
            match check::request(&mut parts, &self.job.target, &self.job.own, &self.job.all) {
                Ok(n) => n,
                Err(r) => return self.refuse(r),
            };
        // A kept-alive connection the host is closing is found either
        // before (`is_closed`) or by `ready`: then once more, afresh.
        hop_by_hop(&mut parts.headers);
        let mut tries = 0;
        let sent = loop {
            tries += 1;
            let mut up = match self.sender().await {
                Ok(up) => up,
                Err(why) => return self.fail(why),
            };
            let Upstream::Ready(sender) = &mut *up else {
                return self.fail("the connection to the host is gone".into());
            };
            match sender.send.ready().await {
                Ok(()) => break sender.send.send_request(Request::from_parts(parts, body)),
                Err(_) if tries < 2 => *up = Upstream::Gone,
                Err(e) => return self.fail(format!("the host closed the connection: {e}")),
            }
        };
        {
            let mut s = lock(&self.summary);
            s.requests += 1;
            s.injected += injected as u64;
        }
        match sent.await {
            Ok(mut resp) => {
                hop_by_hop(resp.headers_mut());
                resp.map(BodyExt::boxed)
            }
            Err(e) => self.fail(format!("forwarding to the host: {e}")),
        }
    }

    /// A `502` to the agent; the first one is kept for the record.
    fn fail(&self, why: String) -> Response<Body> {
        let resp = answer(502, &why);
        lock(&self.summary).failed.get_or_insert(why);
        resp
    }
}

/// Serve one intercepted connection to its end. `prefix` holds bytes the
/// proxy read past the `CONNECT` head; `upstream` is connected to the
/// checked address; `meter` counts the agent's side.
pub async fn intercept<C>(
    client: C,
    prefix: Vec<u8>,
    upstream: TcpStream,
    job: Arc<Job>,
    ctx: Ctx,
) -> Summary
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Ctx {
        tls,
        limits,
        cancel,
        meter,
    } = ctx;
    let io = Metered::new(Rewind::new(prefix, client), Arc::clone(&meter));
    let ended = |end: String| Summary {
        end,
        ..Summary::default()
    };
    let start = tokio::select! {
        r = tokio::time::timeout(limits.handshake, LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)) => r,
        () = cancel.cancelled() => return ended("closed: the session ended".into()),
    };
    let start = match start {
        Err(_) => return ended(format!("no TLS handshake within {:?}", limits.handshake)),
        Ok(Err(e)) => return ended(format!("closed: TLS: {e}")),
        Ok(Ok(s)) => s,
    };
    let addr = match upstream.peer_addr() {
        Ok(a) => a,
        Err(e) => return ended(format!("closed: the connection to the host: {e}")),
    };
    if let Err(r) = check::server_name(start.client_hello().server_name(), &job.target) {
        return Summary {
            end: r.reason(),
            refused: Some(r),
            ..Summary::default()
        };
    }
    // The host's handshake runs alongside the agent's from here.
    let pending = tokio::spawn(handshake(
        upstream,
        job.target.clone(),
        Arc::clone(&tls.upstream),
        limits.handshake,
    ));
    let abort = pending.abort_handle();
    let _pending_guard = AbortOnDrop(abort);
    let config = match tls.ca.server_config(&job.target.host) {
        Ok(c) => c,
        Err(e) => return ended(format!("closed: {e}")),
    };
    let stream = match tokio::time::timeout(limits.handshake, start.into_stream(config)).await {
        Err(_) => return ended(format!("no TLS handshake within {:?}", limits.handshake)),
        Ok(Err(e)) => return ended(format!("closed: TLS: {e}")),
        Ok(Ok(s)) => s,
    };
    let state = Arc::new(State {
        job,
        addr,
        tls,
        limits: limits.clone(),
        upstream: tokio::sync::Mutex::new(Upstream::Pending(pending)),
        summary: Mutex::new(Summary::default()),
    });
    let service = {
        let state = Arc::clone(&state);
        hyper::service::service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(state.serve(req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(limits.max_head.max(8192))
        .max_headers(limits.max_headers)
        .preserve_header_case(true)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let end = loop {
        let left = limits.idle.saturating_sub(meter.idle());
        tokio::select! {
            r = &mut conn => break match r {
                Ok(()) => "closed".to_string(),
                Err(e) if e.is_timeout() => format!("closed: no complete request head within {:?}", limits.head),
                Err(e) => format!("closed: {e}"),
            },
            () = cancel.cancelled() => break "closed: the session ended".to_string(),
            () = tokio::time::sleep(left) => {
                if meter.idle() >= limits.idle {
                    break crate::egress::relay::End::Idle.reason(limits.idle);
                }
            }
        }
    };
    // The host's side ends with the agent's (a pending handshake too).
    if let Ok(mut up) = state.upstream.try_lock() {
        if let Upstream::Pending(task) = &*up {
            task.abort();
        }
        *up = Upstream::Gone;
    }
    let mut summary = lock(&state.summary).clone();
    summary.end = match &summary.refused {
        Some(r) => r.reason(),
        None => end,
    };
    summary
}

#[cfg(test)]
#[path = "intercept_tests.rs"]
mod tests;
