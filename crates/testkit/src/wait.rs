//! Waiting for something to happen, with a deadline and a failure that says what never did.
//!
//! [`eventually`] polls a condition until it holds; the condition returns `bool`, `Option<T>`
//! (the value it waited for) or `Result<T, E>` (the error says what was seen instead, and ends
//! up in the failure message). [`within`] puts a deadline on a future. [`blocking`] has the
//! same for tests that wait on plain threads.
//!
//! Polls come soon at first and then less often (from [`FIRST_POLL`] doubling up to
//! [`LAST_POLL`]): a condition that holds at once costs a few milliseconds, and one that takes
//! seconds (an election, a replica catching up over gRPC) is not hammered meanwhile.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between polls: short against 10 ms Raft ticks.
pub const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest pause between polls: a condition that took seconds is seen at most this late,
/// and a poll that costs a gRPC round trip with thousands of keys stays rare.
pub const LAST_POLL: Duration = Duration::from_millis(100);

/// What a condition polled by [`eventually`] returns: done (with a value), or not yet (maybe
/// with what was seen instead).
pub trait Outcome {
    /// What [`eventually`] returns once the condition holds.
    type Value;
    /// The value, or what was seen instead (`None` when the condition cannot say).
    fn done(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();

    fn done(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;

    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Polls `check` until it holds and returns its value; panics once `limit` has passed,
/// naming `what` never happened (a clause: "node 2 leads") and what `check` saw last.
pub async fn eventually<O: Outcome>(
    what: impl Display,
    limit: Duration,
    mut check: impl AsyncFnMut() -> O,
) -> O::Value {
    let mut polls = Polls::new(limit);
    loop {
        match check().await.done() {
            Ok(value) => return value,
            Err(seen) => match polls.next() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => timed_out(&what, limit, seen),
            },
        }
    }
}

/// Awaits `future` (`what` it is, a noun: "a commit"); panics naming it if it takes longer
/// than `limit`.
pub async fn within<T>(what: impl Display, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The same waits for code on plain threads (process tests, which drive no runtime).
pub mod blocking {
    use super::*;

    /// [`eventually`](super::eventually) with a synchronous condition, sleeping the thread
    /// between polls.
    pub fn eventually<O: Outcome>(
        what: impl Display,
        limit: Duration,
        mut check: impl FnMut() -> O,
    ) -> O::Value {
        let mut polls = Polls::new(limit);
        loop {
            match check().done() {
                Ok(value) => return value,
                Err(seen) => match polls.next() {
                    Some(pause) => std::thread::sleep(pause),
                    None => timed_out(&what, limit, seen),
                },
            }
        }
    }
}

/// The pauses between polls until a deadline: doubling from [`FIRST_POLL`] to [`LAST_POLL`],
/// the last one cut to end at the deadline, so the condition is polled once more there.
struct Polls {
    deadline: Instant,
    pause: Duration,
}

impl Polls {
    fn new(limit: Duration) -> Polls {
        Polls {
            deadline: Instant::now() + limit,
            pause: FIRST_POLL,
        }
    }

    /// The next pause, or `None` once the deadline has passed.
    fn next(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(LAST_POLL);
        Some(pause)
    }
}

fn timed_out(what: &dyn Display, limit: Duration, seen: Option<String>) -> ! {
    match seen {
        Some(seen) => panic!("timed out after {limit:?} waiting until {what}; last seen: {seen}"),
        None => panic!("timed out after {limit:?} waiting until {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn panic_message(run: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let panic = std::panic::catch_unwind(run).expect_err("it panics");
        match panic.downcast::<String>() {
            Ok(message) => *message,
            Err(panic) => panic.downcast_ref::<&str>().unwrap().to_string(),
        }
    }

    #[tokio::test]
    async fn eventually_returns_the_value_once_the_condition_holds() {
        let polls = Cell::new(0);
        let value = eventually("the third poll", Duration::from_secs(5), async || {
            polls.set(polls.get() + 1);
            (polls.get() == 3).then_some("done")
        })
        .await;
        assert_eq!((value, polls.get()), ("done", 3));
        eventually("true", Duration::ZERO, async || true).await;
    }

    #[test]
    fn a_condition_that_never_holds_fails_naming_it_and_what_was_seen() {
        let message = panic_message(|| {
            blocking::eventually("the moon is square", Duration::from_millis(30), || {
                Err::<(), _>("round")
            })
        });
        assert_eq!(
            message,
            "timed out after 30ms waiting until the moon is square; last seen: round"
        );
        let message = panic_message(|| {
            blocking::eventually("never", Duration::from_millis(10), || false);
        });
        assert_eq!(message, "timed out after 10ms waiting until never");
    }

    #[test]
    fn polls_back_off_and_end_at_the_deadline() {
        let polls = Cell::new(0u32);
        let started = Instant::now();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            blocking::eventually("never", Duration::from_millis(400), || {
                polls.set(polls.get() + 1);
                false
            })
        }));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        // 5, 10, 20, 40, 80, then every 100 ms: about 8 polls, not 80.
        assert!((5..=12).contains(&polls.get()), "{} polls", polls.get());
    }

    #[tokio::test]
    async fn within_fails_a_future_that_takes_too_long() {
        assert_eq!(
            within("ready", Duration::from_secs(1), async { 7 }).await,
            7
        );
        let slow = tokio::spawn(within(
            "a slow future",
            Duration::from_millis(10),
            tokio::time::sleep(Duration::from_secs(5)),
        ));
        let panic = slow.await.unwrap_err().into_panic();
        let message = panic.downcast::<String>().unwrap();
        assert_eq!(*message, "timed out after 10ms waiting for a slow future");
    }
}
