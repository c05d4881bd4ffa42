//! Resolving a listed name on the host and connecting to exactly the
//! address that was checked (issue 19).
//!
//! `getaddrinfo` blocks, so it runs on tokio's blocking pool, never on a
//! runtime worker; a semaphore bounds how many run at once (a hostile
//! agent asking for many slow names holds at most that many threads), and
//! the permit travels into the blocking closure, so a lookup that outlives
//! its timeout still counts until it really ends. The proxy then connects
//! to the `SocketAddr`s it admitted (`policy::admit`), never to the name:
//! nothing resolves twice, so DNS cannot answer differently in between.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Resolves names on the blocking pool, a bounded number at once.
#[derive(Debug, Clone)]
pub struct Resolver {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Resolver {
    /// At most `concurrent` lookups at once, each given up after `timeout`.
    pub fn new(concurrent: usize, timeout: Duration) -> Resolver {
        Resolver {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            timeout,
        }
    }

    /// Every address of `name` for `port`, in the resolver's order.
    pub async fn lookup(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let work = async {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let name = name.to_string();
            tokio::task::spawn_blocking(move || {
                let _held = permit;
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect::<Vec<_>>)
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
        let r = Resolver::new(2, Duration::from_secs(5));
        let addrs = r
            .lookup("localhost", 8080)
            .await
            .expect("localhost resolves");
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
}
