//! The egress proxy (issue 19): a session with `egress` has no network but
//! a listening socket on `127.0.0.1:<port>` inside its own network
//! namespace, served from the daemon by an HTTP proxy that allows exactly
//! the destinations of the profile's `egress` list and records every
//! connection in the session's audit record (`agentd/egress.jsonl`).
//!
//! - `policy`, `addr`: PURE: what is allowed, which addresses are refused.
//! - `head`: PURE: the request head (`CONNECT`, absolute-form HTTP).
//! - `resolve`: names resolved on the host, connections to the checked address.
//! - `proxy`, `relay`: the server on the daemon's runtime, and its tunnels.
//! - `log`: `egress.jsonl`, capped.
//! - `netns`, `helper`: the listening socket placed in the session's namespace.
//!
//! Metrics go through an [`Observer`] the caller hands in: nothing here
//! reaches for a process-wide registry.

pub mod addr;
pub mod head;
pub mod helper;
pub mod log;
pub mod netns;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod resolve;

pub use log::Decision;

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the agent to the destination.
    Out,
    /// From the destination to the agent.
    In,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// What the proxy reports of one session as it happens (the daemon's
/// metrics; tests count).
pub trait Observer: Send + Sync {
    /// A connection was decided.
    fn connection(&self, decision: Decision);
    /// `n` bytes moved.
    fn bytes(&self, direction: Direction, n: u64);
}

use crate::sync::lock;
