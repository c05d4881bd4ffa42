//! Test support for the interception (issue 21), shared by its unit tests
//! and the latency benchmark: a fake API server with TLS on 127.0.0.1 that
//! records what it receives, an interceptor listening on 127.0.0.1, a raw
//! TCP relay (what a plain `CONNECT` tunnel does) and an agent-side
//! HTTP/1.1 client. Everything listens on 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::http::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::DaemonCa;
use super::intercept::{self, Ctx, Job, Summary};
use super::io::Meter;
use crate::egress::policy::Host;

/// What the fake API server received in one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (lower-case), if sent.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A TLS API server on 127.0.0.1 whose certificate names `host`, issued by
/// its own CA (what `--egress-ca-file` would hold).
pub struct FakeApi {
    pub addr: SocketAddr,
    pub ca: Arc<DaemonCa>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether any byte sequence it received anywhere contains `needle`.
    pub fn received(&self, needle: &[u8]) -> bool {
        let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        self.seen().iter().any(|s| {
            has(s.path.as_bytes())
                || has(&s.body)
                || s.headers.iter().any(|(n, v)| has(n.as_bytes()) || has(v))
        })
    }
}

/// Gap between the chunks of `/stream`.
pub const STREAM_GAP: Duration = Duration::from_millis(150);
/// Chunks of `/stream`.
pub const STREAM_CHUNKS: usize = 4;

async fn respond(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let path = parts.uri.to_string();
    let len = body.len();
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Seen {
            path: path.clone(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        });
    if path == "/stream" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tokio::spawn(async move {
            for i in 0..STREAM_CHUNKS {
                if i > 0 {
                    tokio::time::sleep(STREAM_GAP).await;
                }
                let chunk = Bytes::from(format!("data: {i}\n\n"));
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(BodyExt::boxed(Channel(rx)));
        r.headers_mut().insert(
            "content-type",
            hyper::http::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(r);
    }
    let text = format!("ok {len}\n");
    let mut r = Response::new(BodyExt::boxed(
        Full::new(Bytes::from(text)).map_err(|never| match never {}),
    ));
    if path == "/close" {
        // The host ends its side after this response (an idle timeout).
        r.headers_mut()
            .insert("connection", hyper::http::HeaderValue::from_static("close"));
    }
    Ok(r)
}

/// A response body fed frame by frame through a channel.
struct Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Start a fake API for `host` (its CA made in `dir`).
pub async fn fake_api(dir: &Path, host: &Host) -> FakeApi {
    let ca = Arc::new(DaemonCa::load_or_create(dir).expect("fake API CA"));
    let config = ca.server_config(host).expect("fake API leaf");
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicU64::new(0));
    let (s, c) = (Arc::clone(&seen), Arc::clone(&connections));
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&s);
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req| respond(req, Arc::clone(&seen)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeApi {
        addr,
        ca,
        seen,
        connections,
        task: task.abort_handle(),
    }
}

/// An interceptor on 127.0.0.1: each accepted connection is intercepted
/// for `job`, its upstream connected to `upstream`; summaries in order.
pub struct Interceptor {
    pub addr: SocketAddr,
    pub summaries: Arc<Mutex<Vec<Summary>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Interceptor {
    /// The summaries of the connections that ended, waiting up to 5 s for
    /// `n` of them.
    pub async fn summaries(&self, n: usize) -> Vec<Summary> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self
                .summaries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn interceptor(job: Arc<Job>, ctx: Ctx, upstream: SocketAddr) -> Interceptor {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&summaries);
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (job, out) = (Arc::clone(&job), Arc::clone(&out));
            let mut ctx = ctx.clone();
            ctx.meter = Arc::new(Meter::default());
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                // Borrowed, as the proxy holds it.
                let s = intercept::intercept(&mut client, Vec::new(), up, job, ctx).await;
                out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(s);
            });
        }
    });
    Interceptor {
        addr,
        summaries,
        task: task.abort_handle(),
    }
}

/// A raw TCP relay on 127.0.0.1 to `upstream`: a plain tunnel.
pub async fn relay(upstream: SocketAddr) -> (SocketAddr, tokio::task::AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
        }
    });
    (addr, task.abort_handle())
}

/// The agent's TLS client configuration: trusts `roots` only.
pub fn agent_tls(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    super::ca::upstream_config(&[], roots).expect("agent TLS config")
}

/// An agent-side HTTP/1.1 connection over TLS to `addr`, naming `sni`.
pub async fn agent(
    addr: SocketAddr,
    sni: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A request from the agent: `headers` then `body`.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request")
}

/// Send `req` and read the whole response: status and body.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
