//! Moving bytes between an agent's connection and its destination (issue
//! 19): both directions at once, each through one bounded buffer (16 KiB,
//! doubled while reads fill it, up to the limit: bulk transfers move in
//! large chunks, everything else stays small; memory never grows with
//! what either side sends beyond that), a half-close passed on,
//! counted for the record and the metrics, and ended when nothing moved
//! for the idle timeout (a peer that stops reading stalls its direction,
//! which then counts as idle), or when the session ends.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

impl Pump<'_> {
    async fn run(
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
            let counter = match dir {
                Direction::Out => &self.counts.out,
                Direction::In => &self.counts.inn,
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            self.observer.bytes(dir, n as u64);
            self.last
                .store(millis(self.start.elapsed()), Ordering::Relaxed);
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

/// How one relay runs.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub until: Until,
    /// Largest buffer of each direction.
    pub buffer: usize,
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
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let both = async {
        let out = pump.run(cr, uw, buffer, Direction::Out);
        let inn = pump.run(ur, cw, buffer, Direction::In);
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
