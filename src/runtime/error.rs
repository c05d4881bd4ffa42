//! What goes wrong in a runtime call, classified by what the caller does
//! next. The message is the backend's own (which call, what it said); the
//! kind is what `execute` decides on, never the text.

use std::fmt;

/// What the caller does about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The image is not in local storage (agentd never pulls): the start
    /// fails for good.
    ImageMissing,
    /// A container of that name exists already (an earlier attempt's):
    /// look before deciding.
    NameInUse,
    /// The runtime could not be reached or did not answer in time: the
    /// call may have gone through; look, then retry.
    Transient,
    /// The session's network cannot start on this host (rootless Podman's
    /// user-mode network); the cause in a few words. Fails the start.
    HostNetwork(&'static str),
    /// Anything else: the runtime refused. Fails a start; other verbs retry.
    Failed,
}

/// A failed runtime call.
#[derive(Debug)]
pub struct RuntimeError {
    kind: ErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync>,
}

impl RuntimeError {
    pub fn new(
        kind: ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        RuntimeError {
            kind,
            inner: inner.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The runtime could not be reached or did not answer in time.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for RuntimeError {}
