//! The node's Raft loop: one thread that drives every replica the node hosts.
//!
//! [`Poller::start`] spawns the loop, [`Poller::add`] hosts a [`GroupNode`] on it and returns
//! its [`GroupHandle`]. The loop runs one `select!` over a tick interval, raft messages from
//! peers, callers' proposals and reads, and control (reports, replicas added and removed,
//! finished snapshots, stop). After every wake-up it takes what else is queued (up to
//! [`MAX_BATCH`] of each), starts the ReadIndex rounds that may start, and runs
//! [`host::pass`](crate::host::pass_with) until no replica has a Ready: every replica's
//! entries and hard state go to the store in **one write with one `fdatasync`**, each
//! replica's early messages go to the [`Transport`] before that write and the rest after it,
//! and callers are answered. Proposals that arrive while the loop waits for a write queue up
//! and share the next one, so a busy node does one fsync per pass however many replicas and
//! proposals it serves.
//!
//! # Snapshots
//! A replica whose snapshot is due hands out a [`SnapshotJob`] (its
//! state machine's bytes, copied on the loop). The loop passes it to the node's snapshot
//! thread, which writes and syncs the file and reports back; the replica then compacts its
//! log in a later write, and the snapshot thread purges log files no replica needs, at most
//! every [`PURGE_INTERVAL`]. The loop never waits for a snapshot file.
//!
//! # Why one loop
//! A thread per replica cost a cross-thread wake-up per request and replica, context
//! switches between replica threads that dominated at 1000-key batches, and an fsync per
//! replica per Ready. One loop costs one thread and one fsync per pass; the price is that
//! replicas share the loop's CPU (applying inserts is cheap: bits in memory) and that one
//! failed write stops every replica of the node (a failed fsync makes raft-engine panic
//! anyway: the process must restart from disk).
//!
//! # Errors
//! A stopped loop, a removed replica, a timed-out read and a dropped proposal all fail with
//! [`Error::NotLeader`](crate::Error::NotLeader) (retryable, with the leader the replica
//! last knew, if any): in every case the caller's remedy is the same, retry on the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::sync::{mpsc, watch};

use crate::group::{Group, Hosted};
use crate::handle::{GroupHandle, Inbound};
use crate::msg::{Control, Request};
use crate::node::{GroupNode, SnapshotJob, StateMachine};
use crate::storage::Store;
use crate::{host, GroupId};

/// Raft messages queued for the loop before [`GroupHandle::step`] drops new ones: raft
/// retransmits anything lost, and a bounded queue keeps a slow disk from growing memory.
const MESSAGES: usize = 16 * 1024;
/// Proposals and reads queued for the loop before callers wait: backpressure on clients.
const REQUESTS: usize = 4096;
/// Events of each kind taken per wake-up before a pass: many proposals and messages share one
/// fsync, and ticks are not starved by a flood.
pub const MAX_BATCH: usize = 1024;
/// Passes per wake-up before the loop looks at its queues again: a pass's light ready may
/// leave more to do (committed entries of a single-replica group), but new events must not
/// wait behind a long chain.
const MAX_PASSES: usize = 8;

/// Carries the replicas' outbound messages to their peers.
///
/// `send` must not block (it is called from the loop between writes): queue and return.
/// Delivery is best effort; raft retransmits. The transport must report back through the
/// sending group's [`GroupHandle`]: [`GroupHandle::report_unreachable`] for a peer it could
/// not reach, and [`GroupHandle::report_snapshot`] for every snapshot message, delivered or not
/// (until then the leader sends that peer nothing else).
pub trait Transport: Send + Sync + 'static {
    /// Sends `messages` (in order, each to `message.to`) for group `group`.
    fn send(&self, group: GroupId, messages: Vec<Message>);
}

/// Work for the snapshot thread.
enum Work {
    Snapshot(SnapshotJob),
    Purge(Arc<Store>),
}

/// A handle to a node's Raft loop. Cheap to clone; the loop runs until [`shutdown`]
/// (or until every handle to it and to its replicas is dropped).
///
/// [`shutdown`]: Poller::shutdown
#[derive(Debug, Clone)]
pub struct Poller {
    inbound: Inbound,
    tick: Duration,
    stopped: watch::Receiver<bool>,
}

impl Poller {
    /// Starts a loop on a thread of its own named `name`, ticking every replica every `tick`
    /// and sending their messages through `transport`. Needs no ambient runtime.
    pub fn start(name: &str, transport: Arc<dyn Transport>, tick: Duration) -> Poller {
        let (messages, messages_rx) = mpsc::channel(MESSAGES);
        let (requests, requests_rx) = mpsc::channel(REQUESTS);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let inbound = Inbound {
            messages,
            requests,
            control: control.clone(),
        };
        let weak_control = control.downgrade();
        drop(control);
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("raft-{name}"))
            .spawn(move || {
                let (work, work_rx) = std::sync::mpsc::channel::<Work>();
                let worker = std::thread::Builder::new()
                    .name(format!("snap-{name}"))
                    .spawn(move || snapshot_thread(work_rx, weak_control))
                    .expect("spawning a snapshot thread");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime for the raft loop");
                let lp = Loop {
                    groups: BTreeMap::new(),
                    transport,
                    tick,
                    work,
                    purges: Purges::default(),
                };
                runtime.block_on(lp.run(messages_rx, requests_rx, control_rx));
                // The loop dropped every replica and the work sender: the snapshot thread
                // ends after its current job; then nothing holds the store.
                let _ = worker.join();
                stopped_tx.send_replace(true);
            })
            .expect("spawning the raft loop thread");
        Poller {
            inbound,
            tick,
            stopped,
        }
    }

    /// Hosts `node` on this loop from now on and returns its handle.
    pub fn add<M>(&self, node: GroupNode<M>) -> GroupHandle
    where
        M: StateMachine + Send + 'static,
    {
        let (group_id, id) = (node.group(), node.id());
        let (group, published) = Group::new(node, self.tick);
        // If the loop is gone, the group is dropped here and its handle reads as stopped.
        let _ = self.inbound.control.send(Control::Add(Box::new(group)));
        GroupHandle::new(group_id, id, self.inbound.clone(), published)
    }

    /// Whether the loop has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Stops every replica and the loop, and waits until they, the snapshot thread and their
    /// store handles are gone. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inbound.control.send(Control::Stop);
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|&stopped| stopped).await;
    }
}

/// Writes snapshot files and purges logs, off the loop, until the loop drops its sender.
fn snapshot_thread(
    work: std::sync::mpsc::Receiver<Work>,
    control: mpsc::WeakUnboundedSender<Control>,
) {
    while let Ok(job) = work.recv() {
        match job {
            Work::Snapshot(job) => {
                let group = job.group();
                let written = job.run();
                match control.upgrade() {
                    Some(control) => {
                        let _ = control.send(Control::SnapshotWritten(group, written));
                    }
                    None => return,
                }
            }
            Work::Purge(store) => {
                if let Err(error) = store.purge() {
                    tracing::error!(%error, "purging the raft log failed");
                }
            }
        }
    }
}

/// The loop's state.
struct Loop {
    groups: BTreeMap<GroupId, Box<dyn Hosted>>,
    transport: Arc<dyn Transport>,
    tick: Duration,
    work: std::sync::mpsc::Sender<Work>,
    purges: Purges,
}

/// The shortest time between two purges of a node's log.
///
/// A purge that finds the log over its threshold asks the groups holding its oldest files to
/// compact, and after nine such purges copies their entries itself (raft-engine's rewrite:
/// hundreds of MB for large shards, while entry reads, and with them the loop, wait for the
/// purge). Compactions come one per shard per log budget, so purging after each would count
/// nine asks in a fraction of a shard's snapshot interval; one purge per interval gives every
/// shard its own snapshot first, and frees files no later than an interval after they could go.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(3);

/// When the log was last purged, and the store to purge when a compaction came since.
#[derive(Default)]
struct Purges {
    last: Option<Instant>,
    pending: Option<Arc<Store>>,
}

impl Loop {
    async fn run(
        mut self,
        mut messages: mpsc::Receiver<(GroupId, Message)>,
        mut requests: mpsc::Receiver<(GroupId, Request)>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut ticker = tokio::time::interval(self.tick);
        // After a long fsync, tick on rather than in a burst: a burst of ticks would make
        // followers campaign against a healthy leader.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Replicas left with a Ready after the last passes: go on without waiting for an event.
        let mut more = false;
        loop {
            // Control first: a replica added before a request to it is hosted by then.
            tokio::select! {
                biased;
                event = control.recv() => match event {
                    // Every handle is gone.
                    None | Some(Control::Stop) => break,
                    Some(event) => self.control(event),
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    for group in self.groups.values_mut() {
                        group.tick(now);
                    }
                    self.maybe_purge(now);
                }
                Some((group, message)) = messages.recv() => self.step(group, message),
                Some((group, request)) = requests.recv() => {
                    self.request(group, request, Instant::now());
                }
                () = std::future::ready(()), if more => {}
            }
            // Whatever else is queued shares this pass's write.
            let mut stop = false;
            while let Ok(event) = control.try_recv() {
                if matches!(event, Control::Stop) {
                    stop = true;
                    break;
                }
                self.control(event);
            }
            if stop {
                break;
            }
            for _ in 0..MAX_BATCH {
                let Ok((group, message)) = messages.try_recv() else {
                    break;
                };
                self.step(group, message);
            }
            let now = Instant::now();
            for _ in 0..MAX_BATCH {
                let Ok((group, request)) = requests.try_recv() else {
                    break;
                };
                self.request(group, request, now);
            }
            match self.passes() {
                Ok(left) => more = left,
                Err(error) => {
                    tracing::error!(
                        %error,
                        "raft loop stopped after a failed write; restart the node from its store"
                    );
                    break;
                }
            }
        }
        tracing::debug!("raft loop stopped");
        // Dropping the groups drops every pending reply: their callers get `NotLeader`.
    }

    /// Has the snapshot thread purge the log if a compaction came since the last purge and
    /// that was at least [`PURGE_INTERVAL`] ago.
    fn maybe_purge(&mut self, now: Instant) {
        let due = self
            .purges
            .last
            .is_none_or(|last| now.duration_since(last) >= PURGE_INTERVAL);
        if due {
            if let Some(store) = self.purges.pending.take() {
                self.purges.last = Some(now);
                // The snapshot thread lives as long as the loop.
                let _ = self.work.send(Work::Purge(store));
            }
        }
    }

    fn control(&mut self, event: Control) {
        match event {
            Control::Add(group) => {
                self.groups.insert(group.group(), group);
            }
            Control::Remove(group) => {
                self.groups.remove(&group);
            }
            Control::Report(group, report) => {
                if let Some(group) = self.groups.get_mut(&group) {
                    group.report(report);
                }
            }
            Control::SnapshotWritten(id, written) => {
                if let Some(group) = self.groups.get_mut(&id) {
                    if let Err(error) = group.snapshot_written(written) {
                        tracing::error!(
                            group = id,
                            %error,
                            "writing a snapshot failed; the replica stops (restart the node \
                             from its store)"
                        );
                        self.groups.remove(&id);
                    }
                }
            }
            Control::Stop => unreachable!("handled by the loop"),
        }
    }

    fn step(&mut self, group: GroupId, message: Message) {
        if let Some(group) = self.groups.get_mut(&group) {
            group.step(message);
        }
    }

    fn request(&mut self, group: GroupId, request: Request, now: Instant) {
        match self.groups.get_mut(&group) {
            Some(group) => group.request(request, now),
            // Removed meanwhile: dropping the reply fails the caller retryably.
            None => drop(request),
        }
    }

    /// Runs passes until no replica has a Ready (or [`MAX_PASSES`]); returns whether one is
    /// left with a Ready.
    fn passes(&mut self) -> crate::Result<bool> {
        for _ in 0..MAX_PASSES {
            for group in self.groups.values_mut() {
                group.start_round();
            }
            let mut replicas: Vec<&mut dyn host::Replica> =
                self.groups.values_mut().map(|g| g.replica()).collect();
            let transport = &self.transport;
            let outputs = host::pass_with(&mut replicas, |group, out| {
                // Followers start their writes while we do ours.
                let early = std::mem::take(&mut out.messages);
                if !early.is_empty() {
                    transport.send(group, early);
                }
            })?;
            drop(replicas);
            if outputs.is_empty() {
                return Ok(false);
            }
            for (id, mut out) in outputs {
                let messages = std::mem::take(&mut out.messages);
                if !messages.is_empty() {
                    self.transport.send(id, messages);
                }
                if let Some(job) = out.snapshot.take() {
                    // The snapshot thread lives as long as the loop.
                    let _ = self.work.send(Work::Snapshot(job));
                }
                let group = self.groups.get_mut(&id).expect("a group in the pass");
                if std::mem::take(&mut out.compacted) {
                    self.purges.pending = Some(group.replica().store().clone());
                }
                group.output(out);
            }
        }
        Ok(self.groups.values_mut().any(|g| g.replica().has_ready()))
    }
}
