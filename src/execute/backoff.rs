//! Retry bookkeeping, one type for every operation that is retried after a
//! failure: a request's failing operation, a work folder that cannot be
//! removed, an audit record that cannot be sealed. The first retry comes
//! after 1 s, each next one after twice as long, at most 5 minutes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One operation's failures so far and when it may run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub until: Instant,
}

impl Backoff {
    /// The wait after the `attempts`-th failure: 1 s doubling to 5 min.
    pub fn delay(attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.saturating_sub(1).min(8)).min(Duration::from_secs(300))
    }

    /// It may run again at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.until <= now
    }
}

/// Backoffs by key (a request id, a session id).
#[derive(Debug, Default)]
pub struct Backoffs(BTreeMap<String, Backoff>);

impl Backoffs {
    /// One more failure of `key` at `now`; its backoff after it.
    pub fn failed(&mut self, key: &str, now: Instant) -> Backoff {
        let b = self.0.entry(key.to_string()).or_insert(Backoff {
            attempts: 0,
            until: now,
        });
        b.attempts += 1;
        b.until = now + Backoff::delay(b.attempts);
        *b
    }

    /// `key` succeeded: forget its failures (what they were, if any).
    pub fn clear(&mut self, key: &str) -> Option<Backoff> {
        self.0.remove(key)
    }

    pub fn get(&self, key: &str) -> Option<&Backoff> {
        self.0.get(key)
    }

    #[cfg(test)]
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Backoff> {
        self.0.get_mut(key)
    }

    /// The keys still waiting at `now`.
    pub fn waiting(&self, now: Instant) -> impl Iterator<Item = &String> {
        self.0
            .iter()
            .filter(move |(_, b)| !b.due(now))
            .map(|(k, _)| k)
    }

    /// When the next retry is due.
    pub fn earliest(&self) -> Option<Instant> {
        self.0.values().map(|b| b.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_one_second_doubling_to_five_minutes_issue_18() {
        let delays: Vec<u64> = (1..=11).map(|a| Backoff::delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        assert_eq!(Backoff::delay(0).as_secs(), 1);
        let now = Instant::now();
        let mut b = Backoffs::default();
        assert_eq!(b.failed("r", now).attempts, 1);
        let second = b.failed("r", now);
        assert_eq!(
            (second.attempts, second.until),
            (2, now + Duration::from_secs(2))
        );
        b.failed("s", now);
        assert_eq!(b.waiting(now).count(), 2);
        assert_eq!(b.waiting(now + Duration::from_secs(3)).count(), 0);
        assert_eq!(b.earliest(), Some(now + Duration::from_secs(1)));
        assert_eq!(b.clear("r").map(|b| b.attempts), Some(2));
        assert!(b.get("r").is_none());
    }
}
