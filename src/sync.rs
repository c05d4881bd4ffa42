//! Small synchronisation helpers shared by the daemon's parts.

use std::sync::{Mutex, MutexGuard};

/// Lock a std mutex, recovering from poisoning (a panicked task must not
/// wedge the daemon; the data is plain records).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
