//! Small synchronisation helpers shared by the daemon's parts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Lock a std mutex, recovering from poisoning (a panicked task must not
/// wedge the daemon; the data is plain records).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Async locks by name: work on one name takes turns, different names never
/// wait for each other. Entries are never removed (a task may hold a clone
/// of an `Arc` while it waits, and a second lock for the same name would let
/// two in at once): one entry per name used since the daemon started.
#[derive(Debug, Default, Clone)]
pub struct KeyedLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl KeyedLocks {
    /// The lock of `key`.
    pub fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.locks).entry(key.to_string()).or_default())
    }
}
