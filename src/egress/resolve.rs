//! Resolving a listed name on the host and connecting to exactly the
//! address that was checked (issue 19).
//!
//! `getaddrinfo` blocks, so it runs on tokio's blocking pool, never on a
//! runtime worker; a semaphore bounds how many run at once (a hostile
//! agent asking for many slow names holds at most that many threads), and
//! the permit travels into the blocking closure, so a lookup that outlives
//! its timeout still counts until it really ends. With the addresses comes
//! the list of the host's own (those on its interfaces), read in the same
//! blocking call: a name must not reach the host through its public
//! address either (`policy::admit`). Each session also has
//! its [`Share`]: at most a few of those lookups at once, so a session
//! whose names resolve slowly (a wildcard entry lets the agent pick any
//! name under it, and so its DNS latency) cannot hold every slot while
//! other sessions' lookups time out. The proxy then connects
//! to the `SocketAddr`s it admitted (`policy::admit`), never to the name:
//! nothing resolves twice, so DNS cannot answer differently in between.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Resolves names on the blocking pool, a bounded number at once.
#[derive(Debug, Clone)]
pub struct Resolver {
    permits: Arc<Semaphore>,
    per_session: usize,
    timeout: Duration,
    system: SystemLookup,
}

/// The blocking lookup itself (`getaddrinfo`; tests put a slow one in).
pub type SystemLookup = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn getaddrinfo(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (name, port)
        .to_socket_addrs()
        .map(Iterator::collect::<Vec<_>>)
}

/// What a lookup found: the name's addresses, and the host's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every address of the name, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
    /// Every address on the host's interfaces: connecting to one of them
    /// reaches the host itself, whatever range it is in.
    pub host: Vec<IpAddr>,
}

/// The addresses on the host's interfaces (`getifaddrs`).
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(a) = ifa.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// One session's part of the resolver: how many of its lookups may run at
/// once (each holds its slot until it really ends, timed out or not).
#[derive(Debug, Clone)]
pub struct Share(Arc<Semaphore>);

impl Resolver {
    /// `concurrent` lookups at once over all sessions, `per_session` of
    /// them for one session, each bounded by `timeout`.
    pub fn new(concurrent: usize, per_session: usize, timeout: Duration) -> Resolver {
        Resolver::with_lookup(concurrent, per_session, timeout, getaddrinfo)
    }

    /// The same with another blocking lookup.
    pub fn with_lookup(
        concurrent: usize,
        per_session: usize,
        timeout: Duration,
        system: SystemLookup,
    ) -> Resolver {
        let concurrent = concurrent.max(1);
        Resolver {
            permits: Arc::new(Semaphore::new(concurrent)),
            per_session: per_session.clamp(1, concurrent),
            timeout,
            system,
        }
    }

    /// A new session's share.
    pub fn share(&self) -> Share {
        Share(Arc::new(Semaphore::new(self.per_session)))
    }

    /// Every address of `name` for `port`, in the resolver's order, and
    /// the host's own addresses, as part of `share` (waiting for a slot
    /// counts against the timeout).
    pub async fn lookup(&self, share: &Share, name: &str, port: u16) -> io::Result<Resolved> {
        let work = async {
            let mine = Arc::clone(&share.0)
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let name = name.to_string();
            let system = self.system;
            tokio::task::spawn_blocking(move || {
                let _held = (permit, mine);
                let addrs = system(name.as_str(), port)?;
                let host = host_addresses().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot list the host's own addresses: {e}"),
                    )
                })?;
                Ok(Resolved { addrs, host })
            })
            .await
            .map_err(io::Error::other)?
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name lookup timed out"))?
    }
}

/// Connect to the first of `addrs` that answers, each attempt bounded by
/// `timeout`; the address connected to is returned with the stream. The
/// last error when none answers.
pub async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for a in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, *a));
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {a} timed out"),
                )
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_on_the_host_and_connects_to_the_checked_address_issue_19() {
        let r = Resolver::new(2, 1, Duration::from_secs(5));
        let Resolved { addrs, host } = r
            .lookup(&r.share(), "localhost", 8080)
            .await
            .expect("localhost resolves");
        assert!(host.contains(&IpAddr::from([127, 0, 0, 1])), "{host:?}");
        assert!(
            addrs
                .iter()
                .any(|a| a.ip().is_loopback() && a.port() == 8080),
            "{addrs:?}"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // The first address refuses (nothing listens on port 1 here): the
        // next one is tried, and the one that answered is reported.
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let closed: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let (_s, got) = connect(&[closed, target], Duration::from_secs(2))
            .await
            .expect("connects");
        assert_eq!(got, target);
        let err = connect(&[closed], Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connect(&[], Duration::from_secs(1))
                .await
                .expect_err("none")
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    /// A lookup that takes a while for names starting `slow`.
    fn slow_or_loopback(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if name.starts_with("slow") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_with_slow_names_cannot_hold_every_lookup_slot_issue_19() {
        let r = Resolver::with_lookup(4, 2, Duration::from_secs(10), slow_or_loopback);
        // A hostile session asks for four slow names at once (as many as
        // the whole resolver runs): two run, two wait in its own share.
        let hostile = r.share();
        let mut slow = Vec::new();
        for i in 0..4 {
            let (r, share) = (r.clone(), hostile.clone());
            slow.push(tokio::spawn(async move {
                r.lookup(&share, &format!("slow{i}.example.com"), 443).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another session's lookup does not queue behind them.
        let t = std::time::Instant::now();
        let other = r
            .lookup(&r.share(), "fast.example.com", 443)
            .await
            .expect("resolves");
        assert_eq!(other.addrs, [SocketAddr::from(([127, 0, 0, 1], 443))]);
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "another session waited {:?} behind the slow lookups",
            t.elapsed()
        );
        // The hostile session's own lookups all end, two at a time.
        for s in slow {
            assert!(s.await.expect("task").is_ok());
        }
    }
}
