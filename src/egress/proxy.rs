//! The proxy server (issue 19): one accept loop per session on the
//! daemon's runtime, serving the listening socket placed in the session's
//! network namespace. A connection is one request head (read within the
//! head timeout, into a buffer of at most `max_head` bytes), one decision,
//! and then either a refusal (`4xx`/`5xx` with a one-line reason) or one
//! upstream connection relayed until it ends; every connection is one
//! line of the session's `egress.jsonl`.
//!
//! What a hostile agent can cost the daemon is bounded: `per_session`
//! connections at once (then `503`), `descriptors` sockets over all
//! sessions (a session's accept waits while they are taken, so the daemon
//! never runs out of descriptors for its own git and podman), at most
//! `session_descriptors` of them for one session (so one session's flood
//! never leaves another without), fixed
//! buffers, and timeouts on a silent client, a slow upstream and an idle
//! tunnel.
//!
//! A session with injected credentials (issue 21) hands in an
//! [`Interception`] (implemented by the `inject` module, which this one does
//! not know): a `CONNECT` to exactly one of their hosts is served by it
//! instead of tunnelled, and the head of an absolute-form request it
//! refuses (one holding a placeholder) is answered `403` before anything
//! is resolved or sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::head::{self, Bad, Head};
use super::log::{Decision, EgressLog, Line, escape_host};
use super::policy::{self, Host, Target};
use super::relay::{self, Counts};
use super::resolve::{self, Resolver, Share};
use super::{Direction, Observer};
use crate::desired::{EgressPolicy, split_host_port};

/// The proxy's bounds; one set for the whole daemon.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The request head must arrive within this (a silent client is closed).
    pub head_timeout: Duration,
    /// Largest request head (then `431`).
    pub max_head: usize,
    /// A tunnel with no byte either way for this long is closed (model
    /// APIs stream for minutes between bursts).
    pub idle_timeout: Duration,
    /// Connecting to a destination (per address tried).
    pub connect_timeout: Duration,
    /// Resolving a name.
    pub lookup_timeout: Duration,
    /// Name lookups running at once, all sessions together.
    pub lookups: usize,
    /// Of those, the most one session may hold (a session's slow names
    /// never hold them all).
    pub lookups_per_session: usize,
    /// Connections of one session at once (then `503`).
    pub per_session: usize,
    /// Descriptors of all the proxies together: an agent's connection and
    /// its upstream are two, and the two pipes a relay splices through four
    /// more (a relay without them copies instead).
    pub descriptors: usize,
    /// Of those, the most one session holds: a session's connections wait
    /// (or relay without pipes) rather than take another session's share.
    pub session_descriptors: usize,
    /// Largest relay buffer per direction of a connection that copies (no
    /// pipes to splice through); each starts at 16 KiB and doubles while
    /// reads fill it.
    pub buffer: usize,
    /// Writing a refusal to a client that does not read.
    pub reply_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(10),
            max_head: 16 * 1024,
            idle_timeout: Duration::from_secs(15 * 60),
            connect_timeout: Duration::from_secs(10),
            lookup_timeout: Duration::from_secs(10),
            lookups: 16,
            lookups_per_session: 4,
            per_session: 64,
            descriptors: 4096,
            // 64 connections of six descriptors each, and the one the
            // accept loop holds while it waits.
            session_descriptors: 64 * 6 + 1,
            buffer: 64 * 1024,
            reply_timeout: Duration::from_secs(5),
        }
    }
}

/// What every session's proxy shares: the bounds, the resolver, the
/// descriptor budget.
pub struct Hub {
    limits: Limits,
    resolver: Resolver,
    descriptors: Arc<Semaphore>,
}

impl Hub {
    pub fn new(limits: Limits) -> Arc<Hub> {
        Arc::new(Hub {
            resolver: Resolver::new(
                limits.lookups,
                limits.lookups_per_session,
                limits.lookup_timeout,
            ),
            descriptors: Arc::new(Semaphore::new(limits.descriptors.max(2))),
            limits,
        })
    }
}

/// What a session's injected credentials do to its connections (issue
/// 21); the `inject` module implements it.
pub trait Interception: Send + Sync {
    /// A `CONNECT` to exactly `target` is served by [`Interception::serve`].
    fn intercepts(&self, target: &Target) -> bool;
    /// The head of an absolute-form request to `target`, as forwarded:
    /// `Err(reason)` refuses it (`403`, a `denied` line).
    fn check_plaintext(&self, head: &[u8], target: &Target) -> Result<(), String>;
    /// Serve an intercepted connection to its end, after the proxy
    /// answered `200`: `rest` holds bytes read past the `CONNECT` head,
    /// `upstream` is connected to the checked address.
    fn serve<'a>(
        &'a self,
        client: &'a mut TcpStream,
        rest: Vec<u8>,
        upstream: TcpStream,
        target: &'a Target,
        how: Serving,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Intercepted> + Send + 'a>>;
}

/// What an interception runs with besides its connection.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The session's end.
    pub cancel: CancellationToken,
    /// Nothing moved on the agent's side for this long: the connection ends.
    pub idle: Duration,
}

/// How an intercepted connection went, for its line.
#[derive(Debug, Clone)]
pub struct Intercepted {
    /// Bytes from and to the agent (its TLS records).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// A request on it was refused by policy: the line is `denied`.
    pub denied: bool,
    /// The line's reason.
    pub reason: String,
}

/// One session's proxy as it runs; [`Running::stop`] ends it.
pub struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
    log: Arc<EgressLog>,
}

/// What one session's connections need.
struct Ctx {
    hub: Arc<Hub>,
    policy: EgressPolicy,
    log: Arc<EgressLog>,
    observer: Arc<dyn Observer>,
    per_session: Arc<Semaphore>,
    /// The session's part of the hub's descriptors.
    fds: Arc<Semaphore>,
    /// The session's part of the hub's name lookups.
    lookups: Share,
    cancel: CancellationToken,
    inject: Option<Arc<dyn Interception>>,
}

/// Serve `listener` (already listening, in the session's namespace) with
/// `policy`, recording into `log`, intercepting for `inject` (if any).
/// Must be called on the runtime.
pub fn serve(
    hub: &Arc<Hub>,
    listener: std::net::TcpListener,
    policy: EgressPolicy,
    log: Arc<EgressLog>,
    observer: Arc<dyn Observer>,
    inject: Option<Arc<dyn Interception>>,
) -> std::io::Result<Running> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        hub: Arc::clone(hub),
        policy,
        log: Arc::clone(&log),
        observer,
        per_session: Arc::new(Semaphore::new(hub.limits.per_session.max(1))),
        fds: Arc::new(Semaphore::new(hub.limits.session_descriptors.max(2))),
        lookups: hub.resolver.share(),
        cancel: cancel.clone(),
        inject,
    });
    tracker.spawn(accept_loop(ctx, listener, tracker.clone()));
    Ok(Running {
        cancel,
        tracker,
        log,
    })
}

impl Running {
    /// Stop accepting, end every connection (each writes its line), and
    /// flush the log. Bounded: connections end at once on cancellation.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("egress connections did not end within 10s of their session");
        }
        let log = Arc::clone(&self.log);
        let synced = tokio::task::spawn_blocking(move || log.sync()).await;
        if let Ok(Err(e)) = synced {
            tracing::warn!(error = %e, "cannot flush egress.jsonl");
        }
    }
}

/// Descriptors held by one connection: from the session's share and from
/// the hub's budget together, released together.
struct Fds {
    _session: OwnedSemaphorePermit,
    _hub: OwnedSemaphorePermit,
}

impl Ctx {
    /// `n` descriptors now, or `None` when the session's share or the
    /// hub's budget is short.
    fn try_fds(&self, n: u32) -> Option<Fds> {
        let session = Arc::clone(&self.fds).try_acquire_many_owned(n).ok()?;
        let hub = Arc::clone(&self.hub.descriptors)
            .try_acquire_many_owned(n)
            .ok()?;
        Some(Fds {
            _session: session,
            _hub: hub,
        })
    }

    /// One descriptor, waiting for the session's share first (a session
    /// at its share waits without holding any of the hub's), then for
    /// the hub's budget. `None` once the semaphores are closed.
    async fn fd(&self) -> Option<Fds> {
        let session = Arc::clone(&self.fds).acquire_owned().await.ok()?;
        let hub = Arc::clone(&self.hub.descriptors)
            .acquire_owned()
            .await
            .ok()?;
        Some(Fds {
            _session: session,
            _hub: hub,
        })
    }
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, tracker: TaskTracker) {
    loop {
        // A descriptor for the agent's socket before accepting it: with
        // the session's share or the budget spent, connections wait in the
        // listen backlog.
        let fd = tokio::select! {
            p = ctx.fd() => match p {
                Some(p) => p,
                None => return,
            },
            () = ctx.cancel.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = ctx.cancel.cancelled() => return,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "egress proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let time = jiff::Timestamp::now();
        let Ok(slot) = Arc::clone(&ctx.per_session).try_acquire_owned() else {
            over_cap(&ctx, client, time);
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            connection(&ctx, client, time).await;
            drop((slot, fd));
        });
    }
}

/// A connection past the session's cap: `503` at once (never waiting on
/// the client) and a line.
fn over_cap(ctx: &Ctx, client: TcpStream, time: jiff::Timestamp) {
    let reason = format!(
        "too many connections at once (the limit is {})",
        ctx.hub.limits.per_session
    );
    let _ = client.try_write(&reply_bytes(503, &reason));
    ctx.observer.connection(Decision::Denied);
    ctx.log.write(&Line {
        time,
        host: None,
        port: None,
        addr: None,
        decision: Decision::Denied,
        reason,
        bytes_out: 0,
        bytes_in: 0,
        ms: 0,
    });
}

/// A refusal or failure: the status and its one-line reason.
struct Reply {
    status: u16,
    reason: String,
}

fn reply(status: u16, reason: impl Into<String>) -> Reply {
    Reply {
        status,
        reason: reason.into(),
    }
}

fn reply_bytes(status: u16, reason: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("agentd egress: {reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve one accepted connection and write its line.
async fn connection(ctx: &Ctx, mut client: TcpStream, time: jiff::Timestamp) {
    let began = Instant::now();
    let mut line = Line {
        time,
        host: None,
        port: None,
        addr: None,
        decision: Decision::Denied,
        reason: String::new(),
        bytes_out: 0,
        bytes_in: 0,
        ms: 0,
    };
    let counts = Counts::default();
    match serve_one(ctx, &mut client, &mut line, &counts).await {
        Ok(reason) => line.reason = reason,
        Err(r) => {
            if line.decision == Decision::Denied {
                ctx.observer.connection(Decision::Denied);
            }
            let bytes = reply_bytes(r.status, &r.reason);
            let _ =
                tokio::time::timeout(ctx.hub.limits.reply_timeout, client.write_all(&bytes)).await;
            line.reason = r.reason;
        }
    }
    line.bytes_out = counts.out.load(std::sync::atomic::Ordering::Relaxed);
    line.bytes_in = counts.inn.load(std::sync::atomic::Ordering::Relaxed);
    line.ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    ctx.log.write(&line);
}

/// Read the request head within the head timeout and the size bound.
async fn read_head(ctx: &Ctx, client: &mut TcpStream) -> Result<(Head, Vec<u8>), Reply> {
    let limits = &ctx.hub.limits;
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(limits.max_head));
    let read = async {
        loop {
            if let Some((head, len)) = head::parse(&buf).map_err(|b| match b {
                Bad::TooLarge => reply(431, "the request head is too large"),
                Bad::Malformed(why) => reply(400, why),
            })? {
                return Ok((head, buf[len..].to_vec()));
            }
            if buf.len() >= limits.max_head {
                return Err(reply(
                    431,
                    format!("the request head is larger than {} bytes", limits.max_head),
                ));
            }
            buf.reserve((limits.max_head - buf.len()).min(4096));
            let room = limits.max_head - buf.len();
            let n = (&mut *client)
                .take(room as u64)
                .read_buf(&mut buf)
                .await
                .map_err(|e| reply(400, format!("reading the request: {e}")))?;
            if n == 0 {
                return Err(reply(
                    400,
                    "the connection closed before a complete request head",
                ));
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(limits.head_timeout, read) => r.unwrap_or_else(|_| Err(reply(
            408,
            format!("no complete request head within {}", relay::span(limits.head_timeout)),
        ))),
        () = ctx.cancel.cancelled() => Err(reply(503, "the session ended")),
    }
}

/// The connection up to its end: `Ok(how it ended)` for a relayed one.
async fn serve_one(
    ctx: &Ctx,
    client: &mut TcpStream,
    line: &mut Line,
    counts: &Counts,
) -> Result<String, Reply> {
    let (head, rest) = read_head(ctx, client).await?;
    let (authority, forward) = match head {
        Head::Connect { authority } => (authority, None),
        Head::Absolute { authority, forward } => (authority, Some(forward)),
    };
    match split_host_port(&authority) {
        Ok((host, port)) => {
            line.host = Some(escape_host(host));
            line.port = Some(port);
        }
        Err(_) => line.host = Some(escape_host(&authority)),
    }
    let target = policy::parse_authority(&authority).map_err(|r| reply(400, r.0))?;
    let rule = policy::find(&ctx.policy, &target).map_err(|r| reply(403, r.0))?;
    // Plain HTTP never gets a value: a placeholder in its head only leaks.
    if let (Some(head), Some(inject)) = (&forward, &ctx.inject) {
        inject
            .check_plaintext(head, &target)
            .map_err(|why| reply(403, why))?;
    }
    let (addrs, host) = match &target.host {
        Host::Ip(ip) => (vec![SocketAddr::new(*ip, target.port)], Vec::new()),
        Host::Name(name) => {
            let looked = tokio::select! {
                r = ctx.hub.resolver.lookup(&ctx.lookups, name, target.port) => r,
                () = ctx.cancel.cancelled() => return Err(reply(503, "the session ended")),
            };
            match looked {
                Ok(r) => (r.addrs, r.host),
                Err(e) => {
                    line.decision = Decision::Allowed;
                    ctx.observer.connection(Decision::Allowed);
                    return Err(reply(502, format!("cannot resolve {name}: {e}")));
                }
            }
        }
    };
    let addrs = policy::admit(rule, &addrs, &host).map_err(|r| reply(403, r.0))?;
    line.decision = Decision::Allowed;
    ctx.observer.connection(Decision::Allowed);
    match route(ctx, forward.is_some(), &target) {
        Route::Tunnel => tunnel(ctx, client, &addrs, forward, rest, line, counts).await,
        Route::Intercept(inject) => {
            intercepted(ctx, client, &addrs, rest, (inject, &target), line, counts).await
        }
    }
}

/// What happens to an allowed connection's client stream: a plain tunnel
/// (CONNECT) or forward (absolute form), or, for a `CONNECT` to exactly an
/// injected credential's host, an interception.
enum Route {
    Tunnel,
    Intercept(Arc<dyn Interception>),
}

/// Chosen by the target the agent asked for, never by the rule that
/// admitted it (`SessionInjections::job`).
fn route(ctx: &Ctx, absolute: bool, target: &Target) -> Route {
    match &ctx.inject {
        Some(inject) if !absolute && inject.intercepts(target) => {
            Route::Intercept(Arc::clone(inject))
        }
        _ => Route::Tunnel,
    }
}

/// Connect to the first admitted address that answers, answer `200`, and
/// serve the connection as an interception to its end. A request refused
/// on it makes the line `denied` with the refusal's reason.
async fn intercepted(
    ctx: &Ctx,
    client: &mut TcpStream,
    addrs: &[SocketAddr],
    rest: Vec<u8>,
    (inject, target): (Arc<dyn Interception>, &Target),
    line: &mut Line,
    counts: &Counts,
) -> Result<String, Reply> {
    let limits = &ctx.hub.limits;
    let (_fd, upstream, _) = connect(ctx, addrs, line).await?;
    let _ = upstream.set_nodelay(true);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(|e| reply(400, format!("writing to the client: {e}")))?;
    let how = Serving {
        cancel: ctx.cancel.clone(),
        idle: limits.idle_timeout,
    };
    let done = inject.serve(client, rest, upstream, target, how).await;
    use std::sync::atomic::Ordering::Relaxed;
    counts.out.fetch_add(done.bytes_out, Relaxed);
    counts.inn.fetch_add(done.bytes_in, Relaxed);
    ctx.observer.bytes(Direction::Out, done.bytes_out);
    ctx.observer.bytes(Direction::In, done.bytes_in);
    if done.denied {
        line.decision = Decision::Denied;
        ctx.observer.connection(Decision::Denied);
    }
    Ok(done.reason)
}

/// The upstream connection of an allowed client, tunnelled or intercepted:
/// one descriptor of the session's share and of the hub's budget (held
/// while the connection lives), then the first admitted address that
/// answers, recorded in the line.
async fn connect(
    ctx: &Ctx,
    addrs: &[SocketAddr],
    line: &mut Line,
) -> Result<(Fds, TcpStream, SocketAddr), Reply> {
    let fd = ctx
        .try_fds(1)
        .ok_or_else(|| reply(503, "the proxy is at its limit of open connections"))?;
    let connected = tokio::select! {
        c = resolve::connect(addrs, ctx.hub.limits.connect_timeout) => c,
        () = ctx.cancel.cancelled() => return Err(reply(503, "the session ended")),
    };
    let (upstream, addr) = connected.map_err(|e| reply(502, format!("cannot connect: {e}")))?;
    line.addr = Some(addr);
    Ok((fd, upstream, addr))
}

/// Connect to the first admitted address that answers, answer a CONNECT
/// with `200` (or send the absolute-form request's head), and relay.
async fn tunnel(
    ctx: &Ctx,
    client: &mut TcpStream,
    addrs: &[SocketAddr],
    forward: Option<Vec<u8>>,
    rest: Vec<u8>,
    line: &mut Line,
    counts: &Counts,
) -> Result<String, Reply> {
    let limits = &ctx.hub.limits;
    let (_fd, mut upstream, addr) = connect(ctx, addrs, line).await?;
    let until = match forward {
        None => relay::Until::BothClosed,
        Some(_) => relay::Until::UpstreamClosed,
    };
    let first: Vec<u8> = match forward {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(|e| reply(400, format!("writing to the client: {e}")))?;
            rest
        }
        Some(mut head) => {
            head.extend_from_slice(&rest);
            head
        }
    };
    if !first.is_empty() {
        upstream
            .write_all(&first)
            .await
            .map_err(|e| reply(502, format!("writing to {addr}: {e}")))?;
        counts
            .out
            .fetch_add(first.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ctx.observer.bytes(Direction::Out, first.len() as u64);
    }
    // Two pipes to splice through, when the descriptor budget has them.
    let pipes = ctx.try_fds(4);
    let opts = relay::Opts {
        until,
        buffer: limits.buffer,
        idle: limits.idle_timeout,
        splice: pipes.is_some(),
    };
    let end = relay::relay(
        client,
        &mut upstream,
        opts,
        &ctx.cancel,
        ctx.observer.as_ref(),
        counts,
    )
    .await;
    Ok(end.reason(limits.idle_timeout))
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
