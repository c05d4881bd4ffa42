//! Moving bytes between an agent's connection and its destination (issue
//! 19): both directions at once, counted for the record and the metrics, a
//! half-close passed on, and ended when nothing moved for the idle timeout
//! (a peer that stops reading stalls its direction, which then counts as
//! idle), or when the session ends.
//!
//! Bytes move with `splice(2)` through a pipe per direction: the kernel
//! hands the pages on, the daemon never copies them (a relay that copies
//! ran a 256 MiB download at a third of the host's direct speed). Without
//! pipes (descriptors short), each direction copies through one bounded
//! buffer instead: 16 KiB, doubled while reads fill it, up to the limit.
//! Either way memory never grows with what either side sends.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Direction, Observer};

/// The first buffer of each direction.
const START_BUFFER: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their direction.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The session ended.
    Cancelled,
    /// A read or write failed (a reset, most often).
    Failed(io::Error),
}

impl End {
    /// The record's `reason` for an allowed connection that ended so.
    pub fn reason(&self, idle: Duration) -> String {
        match self {
            End::Closed => "closed".into(),
            End::Idle => format!("closed after {} idle", span(idle)),
            End::Cancelled => "closed: the session ended".into(),
            End::Failed(e) => format!("closed: {e}"),
        }
    }
}

/// Bytes moved so far, by direction.
#[derive(Debug, Default)]
pub struct Counts {
    pub out: AtomicU64,
    pub inn: AtomicU64,
}

struct Pump<'a> {
    counts: &'a Counts,
    observer: &'a dyn Observer,
    /// Milliseconds since `start` at the last byte moved, either way.
    last: &'a AtomicU64,
    start: Instant,
}

/// Bytes asked of one `splice`: a pipe's default capacity (larger pipes
/// count against the user's pipe-pages limit, which rootless matters).
const PIPE_CHUNK: usize = 64 * 1024;

/// The two ends of one direction's pipe.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

fn pipe() -> io::Result<Pipe> {
    use nix::fcntl::OFlag;
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    Ok(Pipe { r, w })
}

impl Pump<'_> {
    fn moved(&self, dir: Direction, n: usize) {
        let counter = match dir {
            Direction::Out => &self.counts.out,
            Direction::In => &self.counts.inn,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.observer.bytes(dir, n as u64);
        self.last
            .store(millis(self.start.elapsed()), Ordering::Relaxed);
    }

    /// One direction by `splice`: socket to pipe, then the pipe drained
    /// into the other socket, until the source ends.
    async fn splice(
        &self,
        from: &TcpStream,
        to: &TcpStream,
        pipe: Pipe,
        dir: Direction,
    ) -> io::Result<()> {
        use nix::fcntl::{SpliceFFlags, splice};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            // The pipe is empty here, so `WouldBlock` means the socket has
            // nothing to read yet.
            let n = loop {
                from.readable().await?;
                let r = from.try_io(Interest::READABLE, || {
                    splice(from, None, &pipe.w, None, PIPE_CHUNK, flags).map_err(io::Error::from)
                });
                match r {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                // Pass the half-close on; the other direction goes on.
                let _ =
                    nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
                return Ok(());
            }
            // The pipe holds `n` bytes, so `WouldBlock` means the socket is full.
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                let r = to.try_io(Interest::WRITABLE, || {
                    splice(&pipe.r, None, to, None, left, flags).map_err(io::Error::from)
                });
                match r {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            self.moved(dir, n);
        }
    }

    /// One direction through a buffer (no pipes to splice through).
    async fn copy(
        &self,
        mut from: tokio::net::tcp::ReadHalf<'_>,
        mut to: tokio::net::tcp::WriteHalf<'_>,
        max: usize,
        dir: Direction,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; START_BUFFER.min(max)];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // Pass the half-close on; the other direction goes on.
                return to.shutdown().await.or(Ok(()));
            }
            to.write_all(&buf[..n]).await?;
            if n == buf.len() && buf.len() < max {
                buf.resize((buf.len() * 2).min(max), 0);
            }
            self.moved(dir, n);
        }
    }
}

/// `90s`, or `300ms` under a second: durations in reasons.
pub fn span(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How the relay ends besides errors, idleness and cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Both directions closed (a `CONNECT` tunnel: a half-close is passed
    /// on and the other direction goes on).
    BothClosed,
    /// The destination closed (one forwarded request with `Connection:
    /// close`: its response is complete, nothing more can go to it).
    UpstreamClosed,
}

/// The two directions run to the end `until` says.
async fn both_until(
    out: impl std::future::Future<Output = io::Result<()>>,
    inn: impl std::future::Future<Output = io::Result<()>>,
    until: Until,
) -> io::Result<()> {
    match until {
        Until::BothClosed => tokio::try_join!(out, inn).map(|_| ()),
        Until::UpstreamClosed => {
            tokio::pin!(out);
            tokio::pin!(inn);
            tokio::select! {
                r = &mut out => match r {
                    // The agent finished sending; the response goes on.
                    Ok(()) => inn.await,
                    Err(e) => Err(e),
                },
                r = &mut inn => r,
            }
        }
    }
}

/// How one relay runs.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub until: Until,
    /// Largest buffer of each direction (when copying).
    pub buffer: usize,
    /// Move bytes with `splice` (the caller has the four descriptors of
    /// two pipes to spare); copying if pipes cannot be made.
    pub splice: bool,
    /// Nothing moved for this long: the relay ends.
    pub idle: Duration,
}

/// Relay between `client` and `upstream` until it ends; `counts` holds
/// what moved (the caller may have counted a forwarded head already).
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    Opts {
        until,
        buffer,
        idle,
        splice,
    }: Opts,
    cancel: &CancellationToken,
    observer: &dyn Observer,
    counts: &Counts,
) -> End {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let pump = Pump {
        counts,
        observer,
        last: &last,
        start,
    };
    let pipes = if splice {
        pipe().and_then(|a| pipe().map(|b| (a, b))).ok()
    } else {
        None
    };
    let both = async {
        match pipes {
            Some((a, b)) => {
                let (client, upstream) = (&*client, &*upstream);
                let out = pump.splice(client, upstream, a, Direction::Out);
                let inn = pump.splice(upstream, client, b, Direction::In);
                both_until(out, inn, until).await
            }
            None => {
                let (cr, cw) = client.split();
                let (ur, uw) = upstream.split();
                let out = pump.copy(cr, uw, buffer, Direction::Out);
                let inn = pump.copy(ur, cw, buffer, Direction::In);
                both_until(out, inn, until).await
            }
        }
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = start.elapsed().saturating_sub(since);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Failed(e),
        },
        () = watchdog => End::Idle,
        () = cancel.cancelled() => End::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Observer for Nothing {
        fn connection(&self, _: super::super::Decision) {}
        fn bytes(&self, _: Direction, _: u64) {}
    }

    /// Two connected sockets on 127.0.0.1.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    async fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut v = Vec::new();
        s.read_to_end(&mut v).await.expect("read");
        v
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_by_splice_or_copy_half_close_included_issue_19() {
        for splice in [true, false] {
            let (mut agent, mut client) = pair().await;
            let (mut upstream, mut server) = pair().await;
            let up: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
            let down: Vec<u8> = (0..2_000_017u32).map(|i| (i % 241) as u8).collect();
            let counts = Counts::default();
            let opts = Opts {
                until: Until::BothClosed,
                buffer: 64 * 1024,
                idle: Duration::from_secs(10),
                splice,
            };
            let cancel = CancellationToken::new();
            let run = relay(&mut client, &mut upstream, opts, &cancel, &Nothing, &counts);
            let (up2, down2) = (up.clone(), down.clone());
            let peers = async {
                let agent_side = async {
                    agent.write_all(&up2).await.expect("write");
                    // Half-close: the answer still comes back.
                    agent.shutdown().await.expect("shutdown");
                    read_all(&mut agent).await
                };
                let server_side = async {
                    let got = read_all(&mut server).await;
                    server.write_all(&down2).await.expect("write");
                    server.shutdown().await.expect("shutdown");
                    got
                };
                tokio::join!(agent_side, server_side)
            };
            let (end, (at_agent, at_server)) = tokio::join!(run, peers);
            assert!(matches!(end, End::Closed), "splice {splice}: {end:?}");
            assert!(at_server == up, "splice {splice}: the upload arrived whole");
            assert!(
                at_agent == down,
                "splice {splice}: the download arrived whole"
            );
            assert_eq!(counts.out.load(Ordering::Relaxed), up.len() as u64);
            assert_eq!(counts.inn.load(Ordering::Relaxed), down.len() as u64);
        }
    }
}
