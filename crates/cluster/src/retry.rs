//! When a routed call tries again: which failures are retried, how long it pauses between
//! tries, and when it gives up. The callers own the clock and the sleeping; [`Retry`] only
//! says whether and how long.
//!
//! Inserts are idempotent (bits only get set) and checks read-only, so a part retried after an
//! ambiguous failure (its first try may have committed) is harmless.

use std::time::{Duration, Instant};

/// How a call to a node failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The node answered with this gRPC status code.
    Status(i32),
    /// The connection failed (refused, reset, GOAWAY, an HTTP/2 protocol error): whatever code
    /// the client library gave it, the node never answered.
    Connection,
}

/// gRPC status codes a node sends when trying again (later, or elsewhere) can succeed:
/// CANCELLED (1), UNKNOWN (2), DEADLINE_EXCEEDED (4), ABORTED (10), UNAVAILABLE (14: no
/// leader yet, not the leader, restarting, stalled).
const RETRYABLE_CODES: [i32; 5] = [1, 2, 4, 10, 14];

impl Failure {
    /// Whether the failure may go away on retry: a broken connection always, a node's answer
    /// by its code. Everything else (a bad request, a missing set, a full node) fails the
    /// same way again and is the caller's to see.
    pub fn retryable(self) -> bool {
        match self {
            Failure::Connection => true,
            Failure::Status(code) => RETRYABLE_CODES.contains(&code),
        }
    }
}

/// The backoff schedule: the first pause, doubled per retry up to the longest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First pause before a retry: a new leader usually answers within a tick.
    pub first_backoff: Duration,
    /// Longest pause: elections take 1-2 s, so retry several times within one.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// A call started at `started` that gives up at `deadline`.
    pub fn start(self, started: Instant, deadline: Instant) -> Retry {
        Retry {
            policy: self,
            started,
            deadline,
            backoff: self.first_backoff,
            attempts: 0,
        }
    }
}

/// One call's retries.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    policy: RetryPolicy,
    started: Instant,
    deadline: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Retry {
    /// Counts an attempt.
    pub fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the call started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// After a retryable failure at `now`: the pause before the next try, or `None` when the
    /// pause would reach the deadline (give up). Each pause is twice the last, up to the
    /// policy's longest.
    pub fn pause(&mut self, now: Instant) -> Option<Duration> {
        if now + self.backoff >= self.deadline {
            return None;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_a_retry_can_fix_are_retried() {
        for code in [1, 2, 4, 10, 14] {
            assert!(Failure::Status(code).retryable(), "{code}");
        }
        // INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
        // OUT_OF_RANGE, INTERNAL: the same again.
        for code in [3, 5, 6, 8, 9, 11, 13] {
            assert!(!Failure::Status(code).retryable(), "{code}");
        }
        assert!(Failure::Connection.retryable());
    }

    #[test]
    fn pauses_double_up_to_the_longest_and_stop_at_the_deadline() {
        let now = Instant::now();
        let policy = RetryPolicy {
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(35),
        };
        let mut retry = policy.start(now, now + Duration::from_millis(100));
        let pauses: Vec<u64> = std::iter::from_fn(|| retry.pause(now))
            .take(5)
            .map(|pause| pause.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 35, 35, 35]);
        // Close to the deadline, no pause fits: give up.
        assert_eq!(retry.pause(now + Duration::from_millis(70)), None);
        retry.attempt();
        assert_eq!(retry.attempts(), 1);
    }
}
