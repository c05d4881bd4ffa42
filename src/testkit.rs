//! Test-only: what one call of a loader costs, measured so a test can fail
//! on it (issue 17, "never panics on input": every loader returns
//! diagnostics or an error, in under 1 s and 64 MiB, for any input up to
//! 1 MiB), plus the hostile inputs the loaders' tests feed them.
//!
//! How it measures, and why that is sound:
//! - **Memory**: the unit-test binary's global allocator counts, per
//!   thread, the heap bytes that thread holds and the peak since the
//!   measurement began. Each byte is charged as glibc's malloc charges it
//!   (a chunk of at least 32 bytes, the request plus an 8-byte header
//!   rounded up to 16), so many small allocations are not under-counted.
//!   The call runs alone on a thread made for it, so no other test's
//!   allocations mix in; the loaders are single-threaded, so the thread
//!   sees all of their allocations. What the call leaves behind (its
//!   result) is dropped on that thread too, inside the measurement.
//! - **Time**: the CPU time of that thread (`getrusage(RUSAGE_THREAD)`,
//!   user + system), the work the call did. Wall time on this shared
//!   machine also counts waiting for other processes' turn, which says
//!   nothing about the loader; it is reported next to it.
//! - **Stack**: the thread has a 2 MiB stack, the size of the daemon's
//!   tokio worker and blocking threads, the smallest a loader runs on. A
//!   recursive parser that overflows it aborts the whole test binary,
//!   loudly.
//! - A runaway call is stopped: past 1 GiB of heap its next allocation
//!   fails (the test binary aborts, naming the input on stderr) instead of
//!   taking the memory of a machine shared with others.
//!
//! agentd's own code is unoptimised in the unit-test build (the parser
//! crates are built optimised, see `Cargo.toml`), so both figures are
//! upper bounds of what the release daemon spends.
//! `AGENTD_TEST_COSTS=1 cargo test --lib -- --nocapture` prints every cost.
//! Also [`git`], the one host git of the unit tests.

pub mod corpus;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The issue's bound on time per input.
pub const MAX_CPU: Duration = Duration::from_secs(1);
/// The issue's bound on memory per input.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// The largest input the bound is promised for.
pub const MAX_INPUT: usize = 1024 * 1024;
/// The stack of the thread a measured call runs on (tokio's default).
const STACK: usize = 2 * 1024 * 1024;

/// The system allocator, counting what each thread holds.
struct Counting;

/// A measured call holding this much is far past the bound: its next
/// allocation fails (the process aborts) rather than let one runaway input
/// take the memory of a machine shared with others.
const HARD_CAP: isize = 16 * 64 * 1024 * 1024;

thread_local! {
    // `const` initialisers without destructors: reading them never
    // allocates and never fails, even while a thread is being torn down.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// Set on a measuring thread: what it measures (a `&'static`-free
    /// pointer to the caller's name, alive while the call runs) and the
    /// heap it held before, for the hard cap.
    static ARMED: Cell<Option<(*const u8, usize, isize)>> = const { Cell::new(None) };
}

/// What glibc's malloc takes for a request of `size` bytes.
fn charge(size: usize) -> isize {
    let chunk = size.saturating_add(8 + 15) & !15;
    isize::try_from(chunk.max(32)).unwrap_or(isize::MAX)
}

/// Whether `extra` more bytes would take a measured call past the hard
/// cap; if so, say which call on stderr (without allocating).
fn over_hard_cap(extra: isize) -> bool {
    let Ok(Some((name, len, base))) = ARMED.try_with(Cell::get) else {
        return false;
    };
    let live = LIVE.try_with(Cell::get).unwrap_or(0);
    if live.saturating_add(extra) - base <= HARD_CAP {
        return false;
    }
    // SAFETY: `measure` sets ARMED from a `&str` it keeps alive (and
    // unmoved) until after the call, and clears it before that `&str` goes.
    let what = unsafe { std::slice::from_raw_parts(name, len) };
    let stderr = std::io::stderr();
    for part in [
        &b"testkit: over 1 GiB of heap in "[..],
        what,
        b"; aborting\n",
    ] {
        let _ = nix::unistd::write(&stderr, part);
    }
    true
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every method forwards to `System` with the caller's own
// arguments, so `System`'s guarantees are the caller's, or returns null
// (an allocation failure, which `GlobalAlloc` allows) past the hard cap;
// the bookkeeping touches only thread-local `Cell`s with const
// initialisers and writes to fd 2 (no allocation, no lock, no reentry
// into the allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_hard_cap(charge(layout.size())) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(charge(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_hard_cap(charge(layout.size())) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(charge(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `System`)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        account(-charge(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_hard_cap(charge(new_size) - charge(layout.size())) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(charge(new_size) - charge(layout.size()));
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one call cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub cpu: Duration,
    pub wall: Duration,
    /// Most heap bytes held at once during the call, beyond what the
    /// thread held before it.
    pub peak_bytes: usize,
}

impl Cost {
    /// Why this cost is over the issue's bounds, if it is.
    pub fn over_budget(&self) -> Option<String> {
        (self.cpu >= MAX_CPU || self.peak_bytes >= MAX_BYTES).then(|| {
            format!(
                "{:?} CPU ({:?} wall) and {} KiB at peak; the bounds are {:?} and {} KiB",
                self.cpu,
                self.wall,
                self.peak_bytes / 1024,
                MAX_CPU,
                MAX_BYTES / 1024
            )
        })
    }
}

fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// Run `f` on a fresh 2 MiB thread and measure it; `f`'s result is
/// dropped inside the measurement, `keep` of it is returned. A panic in
/// `f` is returned as `Err`, naming `what`.
pub fn measure<R, K: Send>(
    what: &str,
    f: impl FnOnce() -> R + Send,
    keep: impl FnOnce(&R) -> K + Send,
) -> Result<(K, Cost), String> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(format!("measure {what}"))
            .stack_size(STACK)
            .spawn_scoped(scope, || {
                let base = LIVE.with(Cell::get);
                PEAK.with(|p| p.set(base));
                ARMED.with(|a| a.set(Some((what.as_ptr(), what.len(), base))));
                let (cpu0, wall0) = (thread_cpu(), Instant::now());
                let r = f();
                let kept = keep(&r);
                drop(r);
                ARMED.with(|a| a.set(None));
                let (cpu, wall) = (thread_cpu().saturating_sub(cpu0), wall0.elapsed());
                let peak = PEAK.with(Cell::get) - base;
                let peak_bytes = usize::try_from(peak).unwrap_or(0);
                (
                    kept,
                    Cost {
                        cpu,
                        wall,
                        peak_bytes,
                    },
                )
            })
            .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
        handle.join().map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?");
            format!("{what}: panicked: {why}")
        })
    })
}

/// Run `f` as [`measure`] does; `Err` if it panicked or went over 1 s of
/// CPU or 64 MiB at peak, else `keep` of its result.
pub fn within_budget<R, K: Send>(
    what: &str,
    f: impl FnOnce() -> R + Send,
    keep: impl FnOnce(&R) -> K + Send,
) -> Result<K, String> {
    let (kept, cost) = measure(what, f, keep)?;
    if std::env::var_os("AGENTD_TEST_COSTS").is_some() {
        eprintln!(
            "cost: {:>9.3} ms CPU {:>9.3} ms wall {:>8} KiB peak: {what}",
            cost.cpu.as_secs_f64() * 1e3,
            cost.wall.as_secs_f64() * 1e3,
            cost.peak_bytes / 1024
        );
    }
    match cost.over_budget() {
        Some(why) => Err(format!("{what}: {why}")),
        None => Ok(kept),
    }
}

/// Fail the test with every problem collected, one a line.
pub fn assert_none(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} input(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// One source for the unit tests and the integration tests (`tests/it`
// includes the same file by path: a crate's test module and its
// integration tests cannot share a function otherwise).
mod host_git;
pub use host_git::git;

#[cfg(test)]
mod tests {
    use super::*;

    /// The measurement can fail: an allocation over the bound and a burst
    /// of work are both seen, and a panic is reported, not swallowed.
    #[test]
    fn the_budget_check_sees_memory_time_and_panics_issue_17() {
        let (n, cost) =
            measure("a large buffer", || vec![1u8; MAX_BYTES + 1], |v| v.len()).expect("no panic");
        assert_eq!(n, MAX_BYTES + 1);
        assert!(cost.peak_bytes > MAX_BYTES, "{cost:?}");
        assert!(cost.over_budget().is_some(), "{cost:?}");

        // Many small allocations are charged as malloc charges them.
        let (_, cost) = measure(
            "small boxes",
            || (0..100_000).map(Box::new).collect::<Vec<_>>(),
            |_| (),
        )
        .expect("no panic");
        assert!(cost.peak_bytes >= 100_000 * 32, "{cost:?}");

        // A fixed amount of work takes CPU time whatever else runs.
        let (_, cost) = measure(
            "some work",
            || {
                let mut x = 0u64;
                for i in 0..5_000_000u64 {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                x
            },
            |_| (),
        )
        .expect("no panic");
        assert!(cost.cpu > Duration::ZERO, "{cost:?}");
        assert!(cost.over_budget().is_none(), "{cost:?}");

        let err = measure("a panic", || -> u8 { panic!("boom") }, |_| ()).expect_err("reported");
        assert_eq!(err, "a panic: panicked: boom");
        let err =
            within_budget("a large buffer", || vec![1u8; MAX_BYTES], |_| ()).expect_err("over");
        assert!(err.starts_with("a large buffer: "), "{err}");
    }
}
