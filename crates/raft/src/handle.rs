//! [`GroupHandle`]: a cheap, cloneable handle to one replica hosted by a node's Raft loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::msg::{Control, Report, Request};
use crate::node::{Leadership, Membership};
use crate::{GroupId, NodeId};

/// The loop's inbound channels, shared by every handle of the node.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// Raft messages from peers: bounded, never waited on (raft retransmits what is dropped).
    pub(crate) messages: mpsc::Sender<(GroupId, Message)>,
    /// Proposals and reads: bounded, callers wait (backpressure on clients).
    pub(crate) requests: mpsc::Sender<(GroupId, Request)>,
    /// Reports and the loop's own control: never dropped.
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

/// What the loop publishes about one replica for its handles to read.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    /// The durable commit index (the hard state's).
    pub(crate) committed: AtomicU64,
    /// Times the role or the known leader changed.
    pub(crate) leader_changes: AtomicU64,
    pub(crate) rounds: AtomicU64,
    /// The node's rejoin mark, [`NOT_REJOINING`] when it has none.
    pub(crate) rejoin: AtomicU64,
    /// The lease the replica holds as leader, when it reads by lease.
    pub(crate) lease: crate::lease::Published,
}

/// [`Counters::rejoin`] of a replica that is not rejoining.
pub(crate) const NOT_REJOINING: u64 = u64::MAX;

/// The receiving ends of what the loop publishes about one replica.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) leadership: watch::Receiver<Leadership>,
    /// The membership the replica last applied.
    pub(crate) membership: watch::Receiver<Membership>,
    /// Why the replica is stalled, while it is.
    pub(crate) stall: watch::Receiver<Option<String>>,
    /// Set once the loop dropped the replica (and its store handle).
    pub(crate) stopped: watch::Receiver<bool>,
    pub(crate) counters: Arc<Counters>,
}

#[derive(Debug)]
struct Shared {
    group: GroupId,
    id: NodeId,
    inbound: Inbound,
    published: Published,
}

/// A cheap, cloneable handle to a replica hosted by a [`Poller`](crate::Poller). The replica
/// runs until [`shutdown`](Self::shutdown) or the poller stops.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    shared: Arc<Shared>,
}

impl GroupHandle {
    pub(crate) fn new(
        group: GroupId,
        id: NodeId,
        inbound: Inbound,
        published: Published,
    ) -> GroupHandle {
        GroupHandle {
            shared: Arc::new(Shared {
                group,
                id,
                inbound,
                published,
            }),
        }
    }

    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.shared.group
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            group: self.shared.group,
            leader: self.leadership().leader.filter(|&l| l != self.shared.id),
        }
    }

    fn report(&self, report: Report) {
        // A stopped loop needs no reports.
        let _ = (self.shared.inbound.control).send(Control::Report(self.shared.group, report));
    }

    /// Feeds a message from a peer. Never blocks; returns whether it was queued (`false` when
    /// the loop's inbox is full or it stopped: the message is dropped and raft retransmits).
    pub fn step(&self, message: Message) -> bool {
        !self.is_stopped()
            && (self.shared.inbound.messages)
                .try_send((self.shared.group, message))
                .is_ok()
    }

    /// Tells the group that `peer` could not be reached (the leader then probes it gently).
    pub fn report_unreachable(&self, peer: NodeId) {
        self.report(Report::Unreachable(peer));
    }

    /// Tells the group whether the snapshot it sent to `peer` was delivered. The transport must
    /// call it for every snapshot message.
    pub fn report_snapshot(&self, peer: NodeId, delivered: bool) {
        self.report(Report::Snapshot(peer, delivered));
    }

    /// Proposes `command` and returns the state machine's result once it is applied here.
    /// Fails with the retryable [`Error::NotLeader`] (with a leader hint when known) if this
    /// replica is not leader, loses leadership before the entry commits, or stops.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Command(command, reply), answer).await
    }

    async fn request<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        let sent = (self.shared.inbound.requests)
            .send((self.shared.group, request))
            .await;
        if sent.is_err() {
            return Err(self.not_leader());
        }
        answer.await.unwrap_or_else(|_| Err(self.not_leader()))
    }

    /// On the leader: re-adds node `node`'s rebuilt replica (see
    /// [`GroupNode::propose_rejoin`](crate::GroupNode::propose_rejoin)) and returns the index
    /// the replica must apply before it votes again. Fails like [`propose`](Self::propose) off
    /// the leader.
    pub async fn rejoin(&self, node: NodeId) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        let index = self.request(Request::Rejoin(node, reply), answer).await?;
        let index: [u8; 8] = index.as_slice().try_into().map_err(|_| {
            Error::Rejected(format!(
                "a membership change returned {} bytes, not its index",
                index.len()
            ))
        })?;
        Ok(u64::from_be_bytes(index))
    }

    /// On this (rebuilt) replica: the leader re-added it at `index` (what
    /// [`rejoin`](Self::rejoin) returned there).
    pub fn rejoined(&self, index: u64) {
        self.report(Report::Rejoined(index));
    }

    /// This replica's rejoin mark (see [`GroupNode::rejoin`](crate::GroupNode::rejoin)):
    /// while it is set, its state is incomplete and must not answer reads.
    pub fn rejoin_mark(&self) -> Option<u64> {
        match self.counters().rejoin.load(Ordering::Acquire) {
            NOT_REJOINING => None,
            index => Some(index),
        }
    }

    /// A linearizable read point: returns an index once this replica has applied at least it,
    /// so its state machine reflects every write acknowledged before the call. Concurrent
    /// calls share ReadIndex rounds. Fails with the retryable [`Error::NotLeader`] when it is
    /// not answered within [`READ_TIMEOUT_TICKS`](crate::group::READ_TIMEOUT_TICKS) (no
    /// leader, or this replica cannot catch up) or the group stops.
    pub async fn read_index(&self) -> Result<u64> {
        let leadership = self.leadership();
        if leadership.role == raft::StateRole::Leader {
            let (now, applied) = (std::time::Instant::now(), self.applied());
            let lease = &self.counters().lease;
            if let Some(index) = lease.read_point(now, leadership.term, applied) {
                if lease.ask_renewal(now) {
                    // Full: the loop is busy; a read that finds the lease run out renews it.
                    let renew = (self.shared.group, Request::RenewLease);
                    let _ = self.shared.inbound.requests.try_send(renew);
                }
                return Ok(index);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.request(Request::Read(reply), answer).await
    }

    fn counters(&self) -> &Counters {
        &self.shared.published.counters
    }

    /// Index of the last entry applied here.
    pub fn applied(&self) -> u64 {
        self.counters().applied.load(Ordering::Acquire)
    }

    /// The commit index this replica has made durable (known right after a restart, before
    /// anything is applied again): above 0 once the group has committed anything.
    pub fn committed(&self) -> u64 {
        self.counters().committed.load(Ordering::Acquire)
    }

    /// The role and known leader, as of the last Ready.
    pub fn leadership(&self) -> Leadership {
        *self.shared.published.leadership.borrow()
    }

    /// Why the replica cannot apply committed entries, while it is stalled (see
    /// `leakbloom_raft::node`, "Stalled replicas"): it then answers no reads and leads nothing
    /// for long. `None` when it applies normally.
    pub fn stalled(&self) -> Option<String> {
        self.shared.published.stall.borrow().clone()
    }

    /// Sets the replicas the group should have, the preferred leader first (see
    /// [`GroupNode::set_members`](crate::GroupNode::set_members)): call it on every replica of
    /// the group; the leader moves the group there, one membership change at a time (adding
    /// before removing). Never dropped; returns at once.
    pub fn set_members(&self, members: Vec<NodeId>) {
        self.report(Report::Members(members));
    }

    /// The group's membership as this replica last applied it, without entering the loop:
    /// empty for a new replica that has not received its first snapshot.
    pub fn membership(&self) -> Membership {
        self.shared.published.membership.borrow().clone()
    }

    /// Whether this replica is a voter of its group as it last applied its membership (not a
    /// learner, not new, not removed): the replica holds the group's state. Cheap enough for
    /// every read.
    pub fn is_voter(&self) -> bool {
        self.shared
            .published
            .membership
            .borrow()
            .voters
            .contains(&self.shared.id)
    }

    /// Whether this replica was removed from its group: its applied membership, not empty,
    /// leaves it out (see [`GroupNode::removed`](crate::GroupNode::removed); a removed
    /// replica may never learn it, so `false` proves nothing: ask the leader).
    pub fn removed(&self) -> bool {
        let membership = self.shared.published.membership.borrow();
        !membership.is_empty() && !membership.contains(self.shared.id)
    }

    /// A receiver of leadership changes, to wait for a leader or follow hints.
    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.shared.published.leadership.clone()
    }

    /// How often this replica's role or known leader changed since it started (for metrics).
    pub fn leader_changes(&self) -> u64 {
        self.counters().leader_changes.load(Ordering::Relaxed)
    }

    /// ReadIndex rounds started so far (each serves every read queued before it): a measure of
    /// read batching, for tests and metrics.
    pub fn rounds(&self) -> u64 {
        self.counters().rounds.load(Ordering::Relaxed)
    }

    /// Whether the replica has stopped (shut down, its poller stopped, or a write failed).
    pub fn is_stopped(&self) -> bool {
        *self.shared.published.stopped.borrow()
    }

    /// Stops the replica and waits until the loop dropped it (and its store handle); pending
    /// proposals and reads fail with [`Error::NotLeader`]. Idempotent.
    pub async fn shutdown(&self) {
        // An error means the loop is gone: stopped too.
        let _ = (self.shared.inbound.control).send(Control::Remove(self.shared.group));
        let mut stopped = self.shared.published.stopped.clone();
        // An error means the loop dropped the replica's publisher without saying so.
        let _ = stopped.wait_for(|&stopped| stopped).await;
    }
}
