//! The hedge delay: how long an any-replica check part waits for its node before it is also
//! sent to another replica (see "Hedged reads" in [`crate::routing`]).
//!
//! The delay is the p99 of the router's recent healthy node calls for any-replica checks plus a
//! fixed margin (`--hedge-ms`, [`DEFAULT_MARGIN`]), because no one constant fits every batch.
//! Measured here through a router (`benches/scripts/router-latency.sh`, debug build, 3 nodes,
//! 2 cores, once quiet and once shared with other builds; latency as the client sees it, an
//! upper bound for the node call), healthy checks' p99 was 1.0-7.9 ms for single keys and
//! 1000-key batches (1 to 50 in flight) but 10-56 ms for 65 536-key batches (1 to 4 in
//! flight). A constant short enough for single keys would hedge most large batches and double
//! the load just when the nodes are busiest; one long enough for large batches would make every
//! check on a frozen node wait tens of milliseconds. Tied to the p99, only calls slower than the
//! recent p99 by the margin are hedged, whatever the load (18 parts in the whole 30 s busy run,
//! none in the quiet one; no shape's throughput or p99 moved beyond noise); calls to a frozen
//! node never complete, so they never raise the delay.
//!
//! Samples are the durations of node calls that answered: a first call (from when it was
//! sent, also when it answered after being hedged and won), and each hedge call (from when
//! the hedge was sent, not from the first call's start, so a frozen node's hedges do not
//! ratchet the delay up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Default margin over the recent p99: healthy calls' p999 was 1.2-2.5x their p99 here (a few
/// ms for batches up to 1000 keys), so 10 ms above the p99 leaves the ordinary tail alone and
/// still hedges a frozen node's checks within ~10-20 ms.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(10);

/// Node calls remembered: enough for a stable p99 (10 samples above it), few enough to follow
/// a change of load within a second at a few thousand calls per second.
const WINDOW: usize = 1024;

/// The p99 is recomputed every this many samples (a selection over [`WINDOW`] values), not on
/// every call.
const RECOMPUTE_EVERY: u32 = 64;

/// The current hedge delay, learned from recent node calls. Shared by all of a router's calls.
#[derive(Debug)]
pub struct HedgeDelay {
    margin: Duration,
    /// The recent p99 in microseconds, read on every call without a lock.
    p99_micros: AtomicU64,
    window: Mutex<Window>,
}

/// The last [`WINDOW`] call durations in microseconds, oldest overwritten first.
#[derive(Debug, Default)]
struct Window {
    micros: Vec<u32>,
    next: usize,
    since_recompute: u32,
}

impl HedgeDelay {
    /// A delay of `margin` above the recent p99 (just `margin` until calls are recorded).
    pub fn new(margin: Duration) -> HedgeDelay {
        HedgeDelay {
            margin,
            p99_micros: AtomicU64::new(0),
            window: Mutex::default(),
        }
    }

    /// How long a part waits for its node before it is hedged.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.p99_micros.load(Ordering::Relaxed)) + self.margin
    }

    /// Records the duration of a node call that answered.
    pub fn record(&self, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut window = self.window.lock().expect("hedge window lock");
        if window.micros.len() < WINDOW {
            window.micros.push(micros);
        } else {
            let next = window.next;
            window.micros[next] = micros;
        }
        window.next = (window.next + 1) % WINDOW;
        window.since_recompute += 1;
        // Recompute often while the window fills, then every RECOMPUTE_EVERY samples.
        if window.since_recompute >= RECOMPUTE_EVERY || window.micros.len() < WINDOW {
            window.since_recompute = 0;
            let p99 = p99(&window.micros);
            self.p99_micros.store(u64::from(p99), Ordering::Relaxed);
        }
    }
}

/// The 99th percentile of `samples` (the value at rank ⌊0.99 (n − 1)⌋ in ascending order); 0
/// when there are none.
fn p99(samples: &[u32]) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    let mut sorted = samples.to_vec();
    let rank = (sorted.len() - 1) * 99 / 100;
    *sorted.select_nth_unstable(rank).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn p99_is_the_value_below_which_99_percent_lie() {
        let table: [(&[u32], u32); 5] = [
            (&[], 0),
            (&[7], 7),
            (&[3, 1, 2], 2),
            (&(1..=100).collect::<Vec<_>>(), 99),
            (&(1..=1000).rev().collect::<Vec<_>>(), 990),
        ];
        for (samples, expected) in table {
            assert_eq!(p99(samples), expected, "{samples:?}");
        }
    }

    #[test]
    fn the_delay_follows_recent_calls_plus_the_margin() {
        let delay = HedgeDelay::new(ms(10));
        assert_eq!(delay.delay(), ms(10), "no calls yet: the margin alone");
        // A window of healthy 2 ms calls with a 1 % tail at 30 ms.
        for i in 0..WINDOW {
            delay.record(if i % 100 == 0 { ms(30) } else { ms(2) });
        }
        assert_eq!(delay.delay(), ms(12));
        // Load grows: a window of 40 ms calls replaces them, and the delay follows.
        for _ in 0..WINDOW {
            delay.record(ms(40));
        }
        assert_eq!(delay.delay(), ms(50));
        // Load falls again: within one window the delay is back down.
        for _ in 0..WINDOW {
            delay.record(ms(1));
        }
        assert_eq!(delay.delay(), ms(11));
    }
}
