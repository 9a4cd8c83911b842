//! Lease-based linearizable reads on the leader (an option: [`NodeConfig::lease_reads`](crate::NodeConfig::lease_reads)).
//!
//! A ReadIndex round costs a heartbeat round trip to a quorum for every batch of reads. With a
//! lease, the leader answers reads from its own commit index for a while after a round: no
//! message at all. The argument, and what it assumes:
//!
//! - When a round that the leader *started* at instant `s` completes, a quorum acknowledged
//!   heartbeats sent at or after `s`, and each of those followers reset its election timer on
//!   receipt.
//! - With `check_quorum` (always on here), a follower that heard from a leader less than an
//!   election timeout (`election_ticks` of its ticks) ago refuses to vote or pre-vote for
//!   anyone else, and the leader itself refuses while it leads; any quorum that could elect a
//!   new leader contains one of those followers. So no other leader can exist before
//!   `s + election timeout`, and every write acknowledged before a read arrives is in the
//!   leader's commit index.
//! - **Clock assumption**: a follower's ticks are never shorter than the configured tick (its
//!   loop's ticker only ever falls behind, never bursts), and the leader's monotonic clock runs
//!   at most 10 % slow against followers' (the lease is 90 % of an election timeout). Real
//!   clock drift is parts per million.
//! - A leadership transfer elects its target at once, ignoring those refusals (raft-rs's
//!   `CAMPAIGN_TRANSFER`): no lease read is answered from the moment a transfer starts, and
//!   none from a lease older than a term change. A transfer whose `MsgTimeoutNow` is delayed
//!   longer than the transfer's own timeout (an election timeout) could still elect its target
//!   under a lease granted after the transfer gave up; that needs a message held back for over
//!   a second on the private peer network, and is the remaining assumption.
//!
//! The leader keeps the lease fresh with a round in the background once half of it is used
//! and reads keep coming; followers never read by lease (they ask the leader by ReadIndex).
//! The loop publishes the lease (`Published`) so that a read on the leader is answered by
//! its handle at once, without a trip through the loop: with the applied index, once the
//! granting round's read index is applied (every write acknowledged by this leader was applied
//! before its acknowledgement, every earlier one is below that read index). The loop withdraws
//! it before it sends anything that starts a transfer, and on any change of leadership.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use raft::StateRole;

/// A lease as the loop publishes it for [`crate::GroupHandle::read_index`] to answer reads
/// without a trip through the loop: the holder's term, the read index of the round that
/// granted it (reads wait until that is applied) and its end. All zero when there is none.
#[derive(Debug, Default)]
pub(crate) struct Published {
    term: AtomicU64,
    floor: AtomicU64,
    /// Nanoseconds after [`epoch`]; 0: no lease.
    until: AtomicU64,
    /// When the lease is half used (nanoseconds after [`epoch`]): a renewal is due after it.
    renew_after: AtomicU64,
    /// A handle asked the loop for a renewal since the lease was published.
    renew_asked: AtomicBool,
}

/// The instant published lease ends are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Published {
    /// Publishes `lease` (granted by a round whose read index was `floor`), or no lease.
    pub(crate) fn set(&self, lease: Option<(Lease, u64)>) {
        // Invalid first, so that a reader never combines the old end with the new fields.
        self.until.store(0, Ordering::Release);
        if let Some((lease, floor)) = lease {
            self.term.store(lease.term, Ordering::Release);
            self.floor.store(floor, Ordering::Release);
            self.renew_after
                .store(nanos(lease.until - lease.duration / 2), Ordering::Release);
            self.renew_asked.store(false, Ordering::Release);
            self.until
                .store(nanos(lease.until).max(1), Ordering::Release);
        }
    }

    /// Whether a read at `now` should ask the loop to renew the lease: it is half used and no
    /// read asked yet. Asking twice is harmless, just wasted.
    pub(crate) fn ask_renewal(&self, now: Instant) -> bool {
        nanos(now) >= self.renew_after.load(Ordering::Acquire)
            && !self.renew_asked.swap(true, Ordering::AcqRel)
    }

    /// The read point a read arriving `now` may use without the loop: `applied`, if a lease
    /// of the leader's current `term` covers `now` and its round's read index is applied.
    pub(crate) fn read_point(&self, now: Instant, term: u64, applied: u64) -> Option<u64> {
        let until = self.until.load(Ordering::Acquire);
        let (lease_term, floor) = (
            self.term.load(Ordering::Acquire),
            self.floor.load(Ordering::Acquire),
        );
        // A lease replaced meanwhile is read again by the caller's next read, not mixed.
        let valid = until != 0
            && self.until.load(Ordering::Acquire) == until
            && nanos(now) < until
            && lease_term == term
            && applied >= floor;
        valid.then_some(applied)
    }
}

/// The share of an election timeout a lease lasts: margin for clock rate differences.
const LEASE_SHARE: (u32, u32) = (9, 10);

/// How long a lease lasts after the round that granted it started: 90 % of the minimum
/// election timeout.
pub fn duration(tick: Duration, election_ticks: usize) -> Duration {
    tick * u32::try_from(election_ticks).unwrap_or(u32::MAX) * LEASE_SHARE.0 / LEASE_SHARE.1
}

/// A lease held by a leader: valid in `term` until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub term: u64,
    pub until: Instant,
    /// How long it lasts from the round that granted it.
    pub duration: Duration,
}

impl Lease {
    /// The lease a ReadIndex round started at `started` in `term` grants.
    pub fn granted(term: u64, started: Instant, duration: Duration) -> Lease {
        Lease {
            term,
            until: started + duration,
            duration,
        }
    }
}

/// What the replica is, at the moment a read arrives.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub now: Instant,
    pub role: StateRole,
    pub term: u64,
    /// A leadership transfer is in progress.
    pub transferring: bool,
    /// The leader's commit index.
    pub commit: u64,
}

/// The read index a lease read may use now, if the lease covers it: the leader's commit
/// index. `None` means the read takes a ReadIndex round.
pub fn read_point(lease: Option<Lease>, facts: Facts) -> Option<u64> {
    let lease = lease?;
    let valid = facts.role == StateRole::Leader
        && !facts.transferring
        && lease.term == facts.term
        && facts.now < lease.until;
    valid.then_some(facts.commit)
}

/// Whether a round should start now to renew `lease` before it runs out (half of it is used),
/// for a leader that serves reads by lease.
pub fn renew_due(lease: Option<Lease>, now: Instant, duration: Duration) -> bool {
    lease.is_none_or(|lease| lease.until.saturating_duration_since(now) < duration / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn facts(now: Instant) -> Facts {
        Facts {
            now,
            role: StateRole::Leader,
            term: 4,
            transferring: false,
            commit: 77,
        }
    }

    #[test]
    fn a_lease_lasts_nine_tenths_of_an_election_timeout() {
        assert_eq!(duration(TICK, 10), Duration::from_millis(900));
    }

    #[test]
    fn a_leader_in_its_lease_reads_at_its_commit_index() {
        let start = Instant::now();
        let lease = Lease::granted(4, start, duration(TICK, 10));
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(read_point(Some(lease), facts(at(0))), Some(77));
        assert_eq!(read_point(Some(lease), facts(at(899))), Some(77));
        assert_eq!(read_point(Some(lease), facts(at(900))), None, "expired");
        assert_eq!(read_point(None, facts(at(0))), None, "no lease");
    }

    #[test]
    fn no_lease_read_off_the_leader_in_another_term_or_during_a_transfer() {
        let start = Instant::now();
        let lease = Some(Lease::granted(4, start, duration(TICK, 10)));
        let cases = [
            (StateRole::Follower, 4, false),
            (StateRole::Candidate, 4, false),
            (StateRole::PreCandidate, 4, false),
            (StateRole::Leader, 5, false),
            (StateRole::Leader, 4, true),
        ];
        for (role, term, transferring) in cases {
            let facts = Facts {
                role,
                term,
                transferring,
                ..facts(start)
            };
            assert_eq!(read_point(lease, facts), None, "{facts:?}");
        }
    }

    #[test]
    fn a_published_lease_answers_with_the_applied_index_once_its_floor_is_applied() {
        let start = Instant::now();
        let published = Published::default();
        assert_eq!(published.read_point(start, 4, 10), None, "none published");
        published.set(Some((Lease::granted(4, start, duration(TICK, 10)), 12)));
        assert_eq!(
            published.read_point(start, 4, 11),
            None,
            "floor not applied"
        );
        assert_eq!(published.read_point(start, 4, 12), Some(12));
        assert_eq!(published.read_point(start, 5, 12), None, "another term");
        let late = start + Duration::from_millis(900);
        assert_eq!(published.read_point(late, 4, 12), None, "expired");
        assert!(!published.ask_renewal(start), "fresh");
        let half = start + Duration::from_millis(450);
        assert!(published.ask_renewal(half), "half used");
        assert!(!published.ask_renewal(half), "asked once");
        published.set(None);
        assert_eq!(published.read_point(start, 4, 12), None, "withdrawn");
    }

    #[test]
    fn renewal_is_due_once_half_the_lease_is_used() {
        let start = Instant::now();
        let d = duration(TICK, 10);
        let lease = Some(Lease::granted(4, start, d));
        assert!(!renew_due(lease, start + Duration::from_millis(400), d));
        assert!(renew_due(lease, start + Duration::from_millis(500), d));
        assert!(renew_due(None, start, d));
    }
}
