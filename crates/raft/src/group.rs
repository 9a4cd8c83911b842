//! One hosted replica's loop state: the [`GroupNode`] and everything waiting on it (proposals
//! by id, reads and their ReadIndex rounds), and what it publishes for its handles. The
//! [`crate::poller`] owns one per replica and drives them all through [`crate::host::pass`].
//!
//! # Reads
//! Linearizable reads are batched: every read that arrives while a ReadIndex round is in
//! flight waits for the next round, so one round (one heartbeat round trip) serves them all.
//! A read is answered once the local applied index reaches the round's read index. raft-rs
//! drops a round silently when no leader is known or the leader has not yet committed in its
//! term: a round unanswered after [`ROUND_RETRY_TICKS`] gets a second round beside it (the
//! first still answers the reads it covers if it completes after all), and a read not
//! answered (round and local apply) within [`READ_TIMEOUT_TICKS`] fails with the retryable
//! [`Error::NotLeader`]. The rounds of all the node's replicas start in the same pass, so
//! their heartbeats travel to each peer node in one batch (the transport queues per node).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, SnapshotMetadata};
use raft::StateRole;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::handle::{Counters, Published, NOT_REJOINING};
use crate::host::Replica;
use crate::lease::{self, Lease};
use crate::msg::{Report, Request};
use crate::node::{GroupNode, Leadership, Membership, Output, StateMachine};
use crate::GroupId;

/// Ticks a ReadIndex round may go unanswered before a second round starts beside it: a round
/// needs one heartbeat round trip (milliseconds), so 3 ticks means raft-rs or the network
/// dropped it. The first round stays valid for its reads, so a slow one still counts.
pub const ROUND_RETRY_TICKS: u32 = 3;
/// Ticks a read may wait before failing retryably: longer than an election (10-20 ticks by
/// default), so a read survives one leader change.
pub const READ_TIMEOUT_TICKS: u32 = 30;

/// A hosted replica as the loop sees it, whatever its state machine.
pub(crate) trait Hosted: Send {
    fn group(&self) -> GroupId;
    /// The replica, for a pass.
    fn replica(&mut self) -> &mut dyn Replica;
    fn tick(&mut self, now: Instant);
    fn step(&mut self, message: Message);
    fn request(&mut self, request: Request, now: Instant);
    fn report(&mut self, report: Report);
    /// A snapshot job finished; an error stops the replica.
    fn snapshot_written(&mut self, written: Result<SnapshotMetadata>) -> Result<()>;
    /// Starts a ReadIndex round for the pending reads if one may start.
    fn start_round(&mut self);
    /// Answers callers and publishes state from a pass's output (its messages, snapshot job
    /// and compaction are the loop's to handle, taken out before).
    fn output(&mut self, out: Output);
}

/// A read waiting for a read index.
#[derive(Debug)]
struct Read {
    deadline: Instant,
    reply: oneshot::Sender<Result<u64>>,
}

/// A ReadIndex round in flight. It answers the pending reads before `upto` (those that had
/// arrived when it started): its read index is at least the commit index of that moment. On a
/// leader reading by lease, its completion grants a lease from `started` in `term`.
struct Round {
    context: Vec<u8>,
    started: Instant,
    term: u64,
    upto: u64,
}

/// Sets the replica's `stopped` flag when dropped: the last field of [`Group`], so the node
/// (and its store handle) is gone by then.
struct StoppedOnDrop(watch::Sender<bool>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The publishing ends of a replica's state.
pub(crate) struct Publishers {
    pub(crate) leadership: watch::Sender<Leadership>,
    pub(crate) membership: watch::Sender<Membership>,
    pub(crate) stall: watch::Sender<Option<String>>,
    pub(crate) counters: Arc<Counters>,
}

/// One hosted replica (see the [module docs](self)).
pub(crate) struct Group<M> {
    node: GroupNode<M>,
    publish: Publishers,
    tick: Duration,
    /// Proposal ids are unique per hosting; the node matches them by index and term too, so
    /// restarting from 1 after a restart is safe.
    next_proposal: u64,
    proposals: HashMap<u64, oneshot::Sender<Result<Vec<u8>>>>,
    /// Reads waiting for a round to complete, by arrival (read id).
    pending: BTreeMap<u64, Read>,
    next_read: u64,
    /// Rounds in flight, oldest first. Normally at most one, so that reads pile up and share
    /// the next; one unanswered for [`ROUND_RETRY_TICKS`] gets a successor covering every
    /// pending read, and whichever completes first answers the reads both cover.
    rounds: VecDeque<Round>,
    next_round: u64,
    /// Reads whose round completed, by read index, waiting for `applied` to reach it.
    applying: BTreeMap<u64, Vec<Read>>,
    /// How long a lease lasts, when this replica reads by lease (see [`crate::lease`]).
    lease_duration: Option<Duration>,
    /// The lease this replica holds as leader, if any.
    lease: Option<Lease>,
    /// A round is due to renew the lease even without pending reads.
    renew: bool,
    _stopped: StoppedOnDrop,
}

impl<M: StateMachine> Group<M> {
    /// Hosts `node`, ticking every `tick`; returns the group and what handles read.
    pub(crate) fn new(node: GroupNode<M>, tick: Duration) -> (Group<M>, Published) {
        let (leadership_tx, leadership) = watch::channel(node.leadership());
        let (stall_tx, stall) = watch::channel(node.stalled().map(str::to_string));
        let (membership_tx, membership) = watch::channel(node.membership());
        let (stopped_tx, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        counters.applied.store(node.applied(), Ordering::Release);
        let committed = node.storage().hard_state().commit;
        counters.committed.store(committed, Ordering::Release);
        let rejoin = node.rejoin().unwrap_or(NOT_REJOINING);
        counters.rejoin.store(rejoin, Ordering::Release);
        let published = Published {
            leadership,
            membership,
            stall,
            stopped,
            counters: counters.clone(),
        };
        let lease_duration = node.lease_duration(tick);
        let group = Group {
            lease_duration,
            node,
            publish: Publishers {
                leadership: leadership_tx,
                membership: membership_tx,
                stall: stall_tx,
                counters,
            },
            tick,
            next_proposal: 1,
            proposals: HashMap::new(),
            pending: BTreeMap::new(),
            next_read: 0,
            rounds: VecDeque::new(),
            next_round: 1,
            applying: BTreeMap::new(),
            lease: None,
            renew: false,
            _stopped: StoppedOnDrop(stopped_tx),
        };
        (group, published)
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            group: self.node.group(),
            leader: self.node.leadership().leader,
        }
    }

    fn propose(&mut self, proposed: Result<()>, id: u64, reply: oneshot::Sender<Result<Vec<u8>>>) {
        match proposed {
            Ok(()) => {
                self.proposals.insert(id, reply);
            }
            // raft-rs drops proposals during a leadership transfer: retry on the leader.
            Err(Error::Raft(raft::Error::ProposalDropped)) => {
                let _ = reply.send(Err(self.not_leader()));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Holds and publishes a lease (with its round's read index), or none.
    fn set_lease(&mut self, lease: Option<(Lease, u64)>) {
        self.lease = lease.map(|(lease, _)| lease);
        self.publish.counters.lease.set(lease);
    }

    /// A transfer elects its target at once: no lease from before it may answer again. Called
    /// after whatever can start one (a tick, a message), before the pass that sends the
    /// transfer's message.
    fn end_lease_if_transferring(&mut self) {
        if self.lease.is_some() && self.node.lease_facts(Instant::now()).transferring {
            self.set_lease(None);
        }
    }

    fn publish_rejoin(&self) {
        let mark = self.node.rejoin().unwrap_or(NOT_REJOINING);
        self.publish.counters.rejoin.store(mark, Ordering::Release);
    }

    /// Fails reads past their deadline and forgets rounds too old to matter (their reads have
    /// timed out).
    fn expire_reads(&mut self, now: Instant) {
        let timeout = self.tick * READ_TIMEOUT_TICKS;
        self.rounds
            .retain(|round| now.duration_since(round.started) < timeout);
        let (group, leader) = (self.node.group(), self.node.leadership().leader);
        let expire = |reads: Vec<Read>| -> Vec<Read> {
            let (expired, kept): (Vec<Read>, Vec<Read>) =
                reads.into_iter().partition(|read| read.deadline <= now);
            for read in expired {
                let _ = read.reply.send(Err(Error::NotLeader { group, leader }));
            }
            kept
        };
        let late: Vec<u64> = (self.pending.iter())
            .filter(|(_, read)| read.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        let late: Vec<Read> = late
            .into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .collect();
        expire(late);
        // A replica cut off after its round completed may not apply for a long time: its
        // reads time out too rather than wait for the partition to heal.
        for reads in self.applying.values_mut() {
            *reads = expire(std::mem::take(reads));
        }
        self.applying.retain(|_, reads| !reads.is_empty());
    }
}

impl<M: StateMachine + Send + 'static> Hosted for Group<M> {
    fn group(&self) -> GroupId {
        self.node.group()
    }

    fn replica(&mut self) -> &mut dyn Replica {
        &mut self.node
    }

    fn tick(&mut self, now: Instant) {
        self.node.tick();
        self.end_lease_if_transferring();
        self.expire_reads(now);
    }

    fn step(&mut self, message: Message) {
        // Stale responses and messages from unknown peers are refused; harmless.
        if let Err(error) = self.node.step(message) {
            tracing::trace!(group = self.node.group(), %error, "message refused");
        }
        self.end_lease_if_transferring();
    }

    fn request(&mut self, request: Request, now: Instant) {
        let id = self.next_proposal;
        match request {
            Request::Command(command, reply) => {
                self.next_proposal += 1;
                let proposed = self.node.propose(id, command);
                self.propose(proposed, id, reply);
            }
            Request::Rejoin(node, reply) => {
                self.next_proposal += 1;
                let proposed = self.node.propose_rejoin(id, node);
                self.propose(proposed, id, reply);
            }
            Request::Read(reply) => {
                let deadline = now + self.tick * READ_TIMEOUT_TICKS;
                let read = Read { deadline, reply };
                if let Some(duration) = self.lease_duration {
                    let facts = self.node.lease_facts(now);
                    if let Some(index) = lease::read_point(self.lease, facts) {
                        self.renew |= lease::renew_due(self.lease, now, duration);
                        if index <= self.node.applied() {
                            let _ = read.reply.send(Ok(index));
                        } else {
                            self.applying.entry(index).or_default().push(read);
                        }
                        return;
                    }
                }
                self.pending.insert(self.next_read, read);
                self.next_read += 1;
            }
            Request::RenewLease => self.renew = true,
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Unreachable(peer) => self.node.report_unreachable(peer),
            Report::Snapshot(peer, delivered) => self.node.report_snapshot(peer, delivered),
            Report::Rejoined(index) => {
                if let Err(error) = self.node.rejoined(index) {
                    // The next write fails alike and stops the loop.
                    tracing::error!(group = self.node.group(), %error, "recording rejoin failed");
                }
                self.publish_rejoin();
            }
            Report::Members(members) => self.node.set_members(members),
        }
    }

    fn snapshot_written(&mut self, written: Result<SnapshotMetadata>) -> Result<()> {
        self.node.snapshot_written(written)
    }

    /// Starts a ReadIndex round for every pending read unless a round younger than
    /// [`ROUND_RETRY_TICKS`] is in flight.
    fn start_round(&mut self) {
        if self.pending.is_empty() && !self.renew {
            return;
        }
        // One round in flight at a time, unless it looks dropped: reads pile up meanwhile.
        if let Some(newest) = self.rounds.back() {
            if newest.started.elapsed() < self.tick * ROUND_RETRY_TICKS {
                return;
            }
        }
        // A follower that knows no leader would have raft-rs drop the request: wait for a
        // leader (a tick re-checks) rather than count a round that cannot complete.
        let leadership = self.node.leadership();
        if leadership.role != StateRole::Leader && leadership.leader.is_none() {
            return;
        }
        let context = self.next_round.to_be_bytes().to_vec();
        self.next_round += 1;
        self.renew = false;
        self.publish.counters.rounds.fetch_add(1, Ordering::Relaxed);
        self.node.read_index(context.clone());
        self.rounds.push_back(Round {
            context,
            started: Instant::now(),
            term: leadership.term,
            upto: self.next_read,
        });
    }

    fn output(&mut self, out: Output) {
        let Output {
            results,
            reads,
            leadership,
            ..
        } = out;
        let applied = self.node.applied();
        let counters = &self.publish.counters;
        counters.applied.store(applied, Ordering::Release);
        let committed = self.node.storage().hard_state().commit;
        counters.committed.store(committed, Ordering::Release);
        self.publish_rejoin();
        let membership = self.node.membership();
        self.publish.membership.send_if_modified(|published| {
            let changed = *published != membership;
            if changed {
                *published = membership;
            }
            changed
        });
        let stalled = self.node.stalled();
        self.publish.stall.send_if_modified(|published| {
            let changed = published.as_deref() != stalled;
            if changed {
                *published = stalled.map(str::to_string);
            }
            changed
        });
        for (id, result) in results {
            if let Some(reply) = self.proposals.remove(&id) {
                // The caller may have given up; nothing to do then.
                let _ = reply.send(result);
            }
        }
        for (context, index) in reads {
            // A round dropped after a leader change or a timeout may still complete: ignore
            // it. Rounds older than this one cover no read it does not: drop them too.
            if let Some(at) = self.rounds.iter().position(|r| r.context == context) {
                let round = &self.rounds[at];
                let upto = round.upto;
                if let Some(duration) = self.lease_duration {
                    let facts = self.node.lease_facts(round.started);
                    let current = facts.term == round.term && !facts.transferring;
                    if facts.role == StateRole::Leader && current {
                        let lease = Lease::granted(round.term, round.started, duration);
                        self.set_lease(Some((lease, index)));
                    }
                }
                self.rounds.drain(..=at);
                let later = self.pending.split_off(&upto);
                let answered = std::mem::replace(&mut self.pending, later);
                self.applying
                    .entry(index)
                    .or_default()
                    .extend(answered.into_values());
            }
        }
        while let Some(entry) = self.applying.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let index = *entry.key();
            for read in entry.remove() {
                let _ = read.reply.send(Ok(index));
            }
        }
        if let Some(now) = leadership {
            self.publish
                .counters
                .leader_changes
                .fetch_add(1, Ordering::Relaxed);
            // Rounds asked of the old leader will not be answered by the new one: their reads
            // stay pending for a new round. A lease never outlives a leadership change.
            self.rounds.clear();
            self.set_lease(None);
            self.publish.leadership.send_replace(now);
        }
    }
}
