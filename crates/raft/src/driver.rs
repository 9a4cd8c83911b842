//! The async shell around a [`GroupNode`]: clock, channels and transport, no Raft logic.
//!
//! [`Driver::spawn`] moves a node onto its own thread, which runs one `select!` loop over a
//! tick interval, inbound messages and reports, proposals, reads and shutdown. After every
//! event it handles Readies until there are none: messages go to the [`Transport`], results
//! answer proposals, read states answer reads, and leadership is published on a
//! [`watch`] channel. Callers hold a cheap, cloneable [`GroupHandle`].
//!
//! # Why a thread per group
//! [`GroupNode::handle_ready`] blocks on `fdatasync`. Each group gets a dedicated std thread
//! running a current-thread tokio runtime, so the blocking write stalls only that group and
//! callers may use any runtime flavour (`block_in_place` would panic on the current-thread
//! runtime, which design.md measured to be faster for the client API). The cost: one OS thread
//! (and its stack) per hosted replica, a cross-thread wake-up per request, and no write
//! batching across groups (each group fsyncs on its own).
//!
//! # Reads
//! Linearizable reads are batched: every read that arrives while a ReadIndex round is in
//! flight waits for the next round, so one round (one heartbeat round trip) serves them all.
//! A read is answered once the local applied index reaches the round's read index. raft-rs
//! drops a round silently when no leader is known or the leader has not yet committed in its
//! term: a round unanswered after [`ROUND_RETRY_TICKS`] gets a second round beside it (the
//! first still answers the reads it covers if it completes after all), and a read not
//! answered (round and local apply) within [`READ_TIMEOUT_TICKS`] fails with the retryable
//! [`Error::NotLeader`].
//!
//! # Errors
//! A stopped driver, a timed-out read and a dropped proposal all fail with
//! [`Error::NotLeader`] (retryable, with the leader this replica last knew, if any): in every
//! case the caller's remedy is the same, retry on the leader. A failed write stops the group
//! (logged at error level); restart it from its store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use raft::StateRole;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::node::{GroupNode, Leadership, Output, StateMachine};
use crate::{GroupId, NodeId};

/// Inbound raft messages queued per group before [`GroupHandle::step`] drops new ones: raft
/// retransmits anything lost, and a bounded queue keeps a slow disk from growing memory.
const INBOX: usize = 4096;
/// Proposals and reads queued per group before callers wait: backpressure on clients.
const REQUESTS: usize = 1024;
/// Events taken per wake-up before handling a Ready: many proposals and messages share one
/// fsync, and ticks are not starved by a flood.
const MAX_BATCH: usize = 256;
/// Ticks a ReadIndex round may go unanswered before a second round starts beside it: a round
/// needs one heartbeat round trip (milliseconds), so 3 ticks means raft-rs or the network
/// dropped it. The first round stays valid for its reads, so a slow one still counts.
pub const ROUND_RETRY_TICKS: u32 = 3;
/// Ticks a read may wait before failing retryably: longer than an election (10-20 ticks by
/// default), so a read survives one leader change.
pub const READ_TIMEOUT_TICKS: u32 = 30;

/// Carries a group's outbound messages to their peers.
///
/// `send` must not block (it is called from the group's thread between Readies): queue and
/// return. Delivery is best effort; raft retransmits. The transport must report back through
/// the sending group's [`GroupHandle`]: [`GroupHandle::report_unreachable`] for a peer it could
/// not reach, and [`GroupHandle::report_snapshot`] for every snapshot message, delivered or not
/// (until then the leader sends that peer nothing else).
pub trait Transport: Send + Sync + 'static {
    /// Sends `messages` (in order, each to `message.to`) for group `group`.
    fn send(&self, group: GroupId, messages: Vec<Message>);
}

/// Something for the group other than a raft message, never dropped.
#[derive(Debug)]
enum Report {
    Unreachable(NodeId),
    Snapshot(NodeId, bool),
    /// The leader re-added this rebuilt replica at this index.
    Rejoined(u64),
}

/// What a proposal asks the group to commit.
#[derive(Debug)]
enum Request {
    /// A state-machine command.
    Command(Vec<u8>),
    /// Re-adding a rebuilt replica of this node (see [`GroupNode::propose_rejoin`]).
    Rejoin(NodeId),
}

/// A proposal and where to answer it.
#[derive(Debug)]
struct Proposal {
    request: Request,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

/// A read waiting for a read index.
#[derive(Debug)]
struct Read {
    deadline: Instant,
    reply: oneshot::Sender<Result<u64>>,
}

/// State shared by the handles and the group's thread.
#[derive(Debug)]
struct Shared {
    group: GroupId,
    id: NodeId,
    inbox: mpsc::Sender<Message>,
    reports: mpsc::UnboundedSender<Report>,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<oneshot::Sender<Result<u64>>>,
    stop: mpsc::Sender<()>,
    leadership: watch::Receiver<Leadership>,
    /// Why the replica is stalled, while it is.
    stall: watch::Receiver<Option<String>>,
    stopped: watch::Receiver<bool>,
    counters: Arc<Counters>,
}

/// What the loop publishes for handles to read. Kept apart from [`Shared`] so the loop holds
/// no sender of its own channels (dropping every handle closes them and stops it).
#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    /// The durable commit index (the hard state's).
    committed: AtomicU64,
    /// Times the role or the known leader changed.
    leader_changes: AtomicU64,
    rounds: AtomicU64,
    /// The node's rejoin mark, [`NOT_REJOINING`] when it has none.
    rejoin: AtomicU64,
}

/// [`Counters::rejoin`] of a replica that is not rejoining.
const NOT_REJOINING: u64 = u64::MAX;

/// A cheap, cloneable handle to a running group replica. Dropping every handle stops it.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    shared: Arc<Shared>,
}

/// Spawns group drivers (see the [module docs](self)).
#[derive(Debug)]
pub struct Driver;

impl Driver {
    /// Starts driving `node` on a thread of its own, ticking it every `tick` and sending its
    /// messages through `transport`. Needs no ambient runtime.
    pub fn spawn<M>(
        node: GroupNode<M>,
        transport: Arc<dyn Transport>,
        tick: Duration,
    ) -> GroupHandle
    where
        M: StateMachine + Send + 'static,
    {
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let (proposals, proposals_rx) = mpsc::channel(REQUESTS);
        let (reads, reads_rx) = mpsc::channel(REQUESTS);
        let (stop, stop_rx) = mpsc::channel(1);
        let (leadership_tx, leadership) = watch::channel(node.leadership());
        let (stall_tx, stall) = watch::channel(node.stalled().map(str::to_string));
        let (stopped_tx, stopped) = watch::channel(false);
        let counters = Arc::new(Counters {
            applied: AtomicU64::new(node.applied()),
            committed: AtomicU64::new(node.storage().hard_state().commit),
            leader_changes: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            rejoin: AtomicU64::new(node.rejoin().unwrap_or(NOT_REJOINING)),
        });
        let shared = Arc::new(Shared {
            group: node.group(),
            id: node.id(),
            inbox,
            reports,
            proposals,
            reads,
            stop,
            leadership,
            stall,
            stopped,
            counters: counters.clone(),
        });
        let handle = GroupHandle { shared };
        let group = Group {
            node,
            transport,
            counters,
            tick,
            leadership: leadership_tx,
            stall: stall_tx,
            next_proposal: 1,
            proposals: HashMap::new(),
            pending: BTreeMap::new(),
            next_read: 0,
            rounds: VecDeque::new(),
            next_round: 1,
            applying: BTreeMap::new(),
        };
        let channels = Channels {
            inbox: inbox_rx,
            reports: reports_rx,
            proposals: proposals_rx,
            reads: reads_rx,
            stop: stop_rx,
        };
        let name = format!("raft-g{}-n{}", group.node.group(), group.node.id());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime for a raft group");
                runtime.block_on(group.run(channels));
                // The node (and its store) is dropped by now: a restart may reopen the store.
                stopped_tx.send_replace(true);
            })
            .expect("spawning a raft group thread");
        handle
    }
}

impl GroupHandle {
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

    /// Feeds a message from a peer. Never blocks; returns whether it was queued (`false` when
    /// the inbox is full or the group stopped: the message is dropped and raft retransmits).
    pub fn step(&self, message: Message) -> bool {
        self.shared.inbox.try_send(message).is_ok()
    }

    /// Tells the group that `peer` could not be reached (the leader then probes it gently).
    pub fn report_unreachable(&self, peer: NodeId) {
        // A stopped group needs no reports.
        let _ = self.shared.reports.send(Report::Unreachable(peer));
    }

    /// Tells the group whether the snapshot it sent to `peer` was delivered. The transport must
    /// call it for every snapshot message.
    pub fn report_snapshot(&self, peer: NodeId, delivered: bool) {
        let _ = self.shared.reports.send(Report::Snapshot(peer, delivered));
    }

    /// Proposes `command` and returns the state machine's result once it is applied here.
    /// Fails with the retryable [`Error::NotLeader`] (with a leader hint when known) if this
    /// replica is not leader, loses leadership before the entry commits, or stops.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        self.request(Request::Command(command)).await
    }

    async fn request(&self, request: Request) -> Result<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal { request, reply };
        if self.shared.proposals.send(proposal).await.is_err() {
            return Err(self.not_leader());
        }
        answer.await.unwrap_or_else(|_| Err(self.not_leader()))
    }

    /// On the leader: re-adds node `node`'s rebuilt replica (see
    /// [`GroupNode::propose_rejoin`]) and returns the index the replica must apply before it
    /// votes again. Fails like [`propose`](Self::propose) off the leader.
    pub async fn rejoin(&self, node: NodeId) -> Result<u64> {
        let index = self.request(Request::Rejoin(node)).await?;
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
        let _ = self.shared.reports.send(Report::Rejoined(index));
    }

    /// This replica's rejoin mark (see [`GroupNode::rejoin`]): while it is set, its state is
    /// incomplete and must not answer reads.
    pub fn rejoin_mark(&self) -> Option<u64> {
        match self.shared.counters.rejoin.load(Ordering::Acquire) {
            NOT_REJOINING => None,
            index => Some(index),
        }
    }

    /// A linearizable read point: returns an index once this replica has applied at least it,
    /// so its state machine reflects every write acknowledged before the call. Concurrent
    /// calls share ReadIndex rounds. Fails with the retryable [`Error::NotLeader`] when it is
    /// not answered within [`READ_TIMEOUT_TICKS`] (no leader, or this replica cannot catch up)
    /// or the group stops.
    pub async fn read_index(&self) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        if self.shared.reads.send(reply).await.is_err() {
            return Err(self.not_leader());
        }
        answer.await.unwrap_or_else(|_| Err(self.not_leader()))
    }

    /// Index of the last entry applied here.
    pub fn applied(&self) -> u64 {
        self.shared.counters.applied.load(Ordering::Acquire)
    }

    /// The commit index this replica has made durable (known right after a restart, before
    /// anything is applied again): above 0 once the group has committed anything.
    pub fn committed(&self) -> u64 {
        self.shared.counters.committed.load(Ordering::Acquire)
    }

    /// The role and known leader, as of the last Ready.
    pub fn leadership(&self) -> Leadership {
        *self.shared.leadership.borrow()
    }

    /// Why the replica cannot apply committed entries, while it is stalled (see
    /// `leakbloom_raft::node`, "Stalled replicas"): it then answers no reads and leads nothing
    /// for long. `None` when it applies normally.
    pub fn stalled(&self) -> Option<String> {
        self.shared.stall.borrow().clone()
    }

    /// A receiver of leadership changes, to wait for a leader or follow hints.
    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.shared.leadership.clone()
    }

    /// How often this replica's role or known leader changed since it started (for metrics).
    pub fn leader_changes(&self) -> u64 {
        self.shared.counters.leader_changes.load(Ordering::Relaxed)
    }

    /// ReadIndex rounds started so far (each serves every read queued before it): a measure of
    /// read batching, for tests and metrics.
    pub fn rounds(&self) -> u64 {
        self.shared.counters.rounds.load(Ordering::Relaxed)
    }

    /// Whether the driver has stopped (shut down, or a write failed).
    pub fn is_stopped(&self) -> bool {
        *self.shared.stopped.borrow()
    }

    /// Stops the group and waits until its node and store handle are dropped; pending
    /// proposals and reads fail with [`Error::NotLeader`]. Idempotent.
    pub async fn shutdown(&self) {
        // Full means a stop is already queued; closed means the driver is gone.
        let _ = self.shared.stop.try_send(());
        let mut stopped = self.shared.stopped.clone();
        // An error means the thread is gone without saying so (it panicked): stopped too.
        let _ = stopped.wait_for(|&stopped| stopped).await;
    }
}

/// The receiving ends, owned by the loop.
struct Channels {
    inbox: mpsc::Receiver<Message>,
    reports: mpsc::UnboundedReceiver<Report>,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<oneshot::Sender<Result<u64>>>,
    stop: mpsc::Receiver<()>,
}

/// A ReadIndex round in flight. It answers the pending reads up to `last` (those that had
/// arrived when it started): its read index is at least the commit index of that moment.
struct Round {
    context: Vec<u8>,
    started: Instant,
    last: u64,
}

/// The loop's state: the node and everything waiting on it.
struct Group<M> {
    node: GroupNode<M>,
    transport: Arc<dyn Transport>,
    counters: Arc<Counters>,
    tick: Duration,
    leadership: watch::Sender<Leadership>,
    stall: watch::Sender<Option<String>>,
    /// Proposal ids are unique per driver; the node matches them by index and term too, so
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
}

impl<M: StateMachine> Group<M> {
    async fn run(mut self, mut ch: Channels) {
        let mut ticker = tokio::time::interval(self.tick);
        // After a long fsync, tick on rather than in a burst: a burst of ticks would make
        // followers campaign against a healthy leader.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Branches are polled in random order, so no flood starves the others.
            tokio::select! {
                // `None` means every handle is gone: stop too.
                _ = ch.stop.recv() => break,
                _ = ticker.tick() => {
                    self.node.tick();
                    self.expire_reads(Instant::now());
                }
                Some(report) = ch.reports.recv() => {
                    self.report(report);
                    while let Ok(report) = ch.reports.try_recv() {
                        self.report(report);
                    }
                }
                Some(message) = ch.inbox.recv() => {
                    self.step(message);
                    for _ in 1..MAX_BATCH {
                        let Ok(message) = ch.inbox.try_recv() else { break };
                        self.step(message);
                    }
                }
                Some(proposal) = ch.proposals.recv() => {
                    self.propose(proposal);
                    for _ in 1..MAX_BATCH {
                        let Ok(proposal) = ch.proposals.try_recv() else { break };
                        self.propose(proposal);
                    }
                }
                Some(reply) = ch.reads.recv() => {
                    let deadline = Instant::now() + self.tick * READ_TIMEOUT_TICKS;
                    self.queue_read(Read { deadline, reply });
                    for _ in 1..MAX_BATCH {
                        let Ok(reply) = ch.reads.try_recv() else { break };
                        self.queue_read(Read { deadline, reply });
                    }
                }
            }
            if let Err(error) = self.ready() {
                tracing::error!(
                    group = self.node.group(),
                    node = self.node.id(),
                    %error,
                    "raft group stopped after a failed Ready; restart it from its store"
                );
                break;
            }
        }
        tracing::debug!(
            group = self.node.group(),
            node = self.node.id(),
            "raft group stopped"
        );
        // Dropping `self` drops every pending reply: their callers get `NotLeader`.
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Unreachable(peer) => self.node.report_unreachable(peer),
            Report::Snapshot(peer, delivered) => self.node.report_snapshot(peer, delivered),
            Report::Rejoined(index) => {
                if let Err(error) = self.node.rejoined(index) {
                    // The next Ready's write fails alike and stops the group.
                    tracing::error!(group = self.node.group(), %error, "recording rejoin failed");
                }
                self.publish_rejoin();
            }
        }
    }

    fn step(&mut self, message: Message) {
        // Stale responses and messages from unknown peers are refused; harmless.
        if let Err(error) = self.node.step(message) {
            tracing::trace!(group = self.node.group(), %error, "message refused");
        }
    }

    fn propose(&mut self, proposal: Proposal) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        let proposed = match proposal.request {
            Request::Command(command) => self.node.propose(id, command),
            Request::Rejoin(node) => self.node.propose_rejoin(id, node),
        };
        match proposed {
            Ok(()) => {
                self.proposals.insert(id, proposal.reply);
            }
            // raft-rs drops proposals during a leadership transfer: retry on the leader.
            Err(Error::Raft(raft::Error::ProposalDropped)) => {
                let _ = proposal.reply.send(Err(self.not_leader()));
            }
            Err(error) => {
                let _ = proposal.reply.send(Err(error));
            }
        }
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            group: self.node.group(),
            leader: self.node.leadership().leader,
        }
    }

    fn publish_rejoin(&self) {
        let mark = self.node.rejoin().unwrap_or(NOT_REJOINING);
        self.counters.rejoin.store(mark, Ordering::Release);
    }

    /// Handles Readies until there are none, starting a read round whenever one can start.
    fn ready(&mut self) -> Result<()> {
        loop {
            while self.node.has_ready() {
                let out = self.node.handle_ready()?;
                self.output(out);
            }
            if !self.start_round() {
                return Ok(());
            }
        }
    }

    fn output(&mut self, out: Output) {
        let Output {
            messages,
            results,
            reads,
            leadership,
        } = out;
        // Messages first: followers start their writes while we answer callers.
        if !messages.is_empty() {
            self.transport.send(self.node.group(), messages);
        }
        let applied = self.node.applied();
        self.counters.applied.store(applied, Ordering::Release);
        let committed = self.node.storage().hard_state().commit;
        self.counters.committed.store(committed, Ordering::Release);
        self.publish_rejoin();
        let stalled = self.node.stalled();
        self.stall.send_if_modified(|published| {
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
                let last = self.rounds[at].last;
                self.rounds.drain(..=at);
                let later = self.pending.split_off(&(last + 1));
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
            self.counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            // Rounds asked of the old leader will not be answered by the new one: their reads
            // stay pending for a new round.
            self.rounds.clear();
            self.leadership.send_replace(now);
        }
    }

    /// Queues a read for the next round.
    fn queue_read(&mut self, read: Read) {
        self.pending.insert(self.next_read, read);
        self.next_read += 1;
    }

    /// Starts a ReadIndex round for every pending read unless a round younger than
    /// [`ROUND_RETRY_TICKS`] is in flight; returns whether it did.
    fn start_round(&mut self) -> bool {
        let Some(&last) = self.pending.keys().next_back() else {
            return false;
        };
        // One round in flight at a time, unless it looks dropped: reads pile up meanwhile.
        if let Some(newest) = self.rounds.back() {
            if newest.started.elapsed() < self.tick * ROUND_RETRY_TICKS {
                return false;
            }
        }
        // A follower that knows no leader would have raft-rs drop the request: wait for a
        // leader (a tick re-checks) rather than count a round that cannot complete.
        let leadership = self.node.leadership();
        if leadership.role != StateRole::Leader && leadership.leader.is_none() {
            return false;
        }
        let context = self.next_round.to_be_bytes().to_vec();
        self.next_round += 1;
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        self.node.read_index(context.clone());
        self.rounds.push_back(Round {
            context,
            started: Instant::now(),
            last,
        });
        true
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
