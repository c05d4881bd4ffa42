//! The egress proxy (issue 19): a session with `egress` has no network but
//! a listening socket on `127.0.0.1:<port>` inside its own network
//! namespace, served from the daemon by an HTTP proxy that allows exactly
//! the destinations of the profile's `egress` list and records every
//! connection in the session's audit record (`agentd/egress.jsonl`).
//!
//! - `policy`, `addr`: PURE: what is allowed, which addresses are refused.
//! - `resolve`: names resolved on the host, connections to the checked address.

pub mod addr;
pub mod policy;
pub mod resolve;
