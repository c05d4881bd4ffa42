//! Container runtimes. Only `podman` exists; it is the only code that knows
//! Podman's command line and JSON.

pub mod podman;
