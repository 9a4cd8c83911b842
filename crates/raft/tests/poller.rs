//! A node's Raft loop hosting one replica per node, with real tokio, real on-disk stores and an in-memory transport: elections
//! and commits, leader hints, ordering under concurrent proposals, batched linearizable reads,
//! leader failure and restart from disk, a member replaced through the handles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use leakbloom_raft::sim::Register;
use leakbloom_raft::{
    ApplyError, Error, GroupHandle, GroupId, GroupNode, NodeConfig, NodeId, Poller, StateMachine,
    Store, Transport,
};
use leakbloom_testkit::{eventually, scratch, within};
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

/// The one group every test runs.
const GROUP: GroupId = 3;
/// A fast clock keeps elections (10-20 ticks) around 100-200 ms, so the tests stay short.
const TICK: Duration = Duration::from_millis(10);
/// How long any awaited condition may take before the test fails: many elections' worth.
const PATIENCE: Duration = Duration::from_secs(10);

/// A [`Register`] the test can inspect while the driver's thread applies to it.
#[derive(Debug, Clone, Default)]
struct Probe(Arc<Mutex<Register>>);

impl Probe {
    fn register(&self) -> Register {
        self.0.lock().unwrap().clone()
    }
}

impl StateMachine for Probe {
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, ApplyError> {
        self.0.lock().unwrap().apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.lock().unwrap().snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ApplyError> {
        self.0.lock().unwrap().restore(snapshot)
    }
}

/// Delivers through the target's [`GroupHandle::step`]; drops everything to or from a node in
/// `cut` and log appends to a node in `stall`, and reports unreachable peers and snapshot
/// delivery back to the sender.
#[derive(Debug, Default)]
struct Net {
    handles: Mutex<BTreeMap<NodeId, GroupHandle>>,
    cut: Mutex<BTreeSet<NodeId>>,
    stall: Mutex<BTreeSet<NodeId>>,
    /// A node whose Raft loop blocks in `send` until it is thawed (set back to `None` and
    /// `thawed` notified): a frozen node.
    frozen: Mutex<Option<NodeId>>,
    thawed: Condvar,
}

impl Net {
    fn freeze(&self, node: Option<NodeId>) {
        *self.frozen.lock().unwrap() = node;
        self.thawed.notify_all();
    }
}

impl Transport for Net {
    fn send(&self, group: GroupId, messages: Vec<Message>) {
        assert_eq!(group, GROUP);
        let mut frozen = self.frozen.lock().unwrap();
        while messages.iter().any(|m| Some(m.from) == *frozen) {
            frozen = self.thawed.wait(frozen).unwrap();
        }
        drop(frozen);
        let handles = self.handles.lock().unwrap().clone();
        let cut = self.cut.lock().unwrap().clone();
        let stall = self.stall.lock().unwrap().clone();
        for message in messages {
            let (from, to) = (message.from, message.to);
            let kind = message.get_msg_type();
            let snapshot = kind == MessageType::MsgSnapshot;
            let stalled = stall.contains(&to) && (kind == MessageType::MsgAppend || snapshot);
            let delivered = match handles.get(&to) {
                Some(target) if !cut.contains(&from) && !cut.contains(&to) && !stalled => {
                    target.step(message)
                }
                _ => false,
            };
            if let Some(sender) = handles.get(&from) {
                if !delivered {
                    sender.report_unreachable(to);
                }
                if snapshot {
                    sender.report_snapshot(to, delivered);
                }
            }
        }
    }
}

/// A group of three replicas, each with its own store directory.
struct Cluster {
    dir: tempfile::TempDir,
    net: Arc<Net>,
    probes: BTreeMap<NodeId, Probe>,
    pollers: BTreeMap<NodeId, Poller>,
    /// Replicas started from now on read by lease.
    lease_reads: bool,
}

const VOTERS: [NodeId; 3] = [1, 2, 3];

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            // tmpfs when there is one: the tests check the driver, not the disk.
            dir: scratch(),
            net: Arc::new(Net::default()),
            probes: BTreeMap::new(),
            pollers: BTreeMap::new(),
            lease_reads: false,
        }
    }

    /// Starts (or restarts) node `id` from its directory.
    fn start(&mut self, id: NodeId) -> GroupHandle {
        self.start_with(id, &VOTERS)
    }

    /// Starts node `id` with `voters` (none: a new replica of the running group).
    fn start_with(&mut self, id: NodeId, voters: &[NodeId]) -> GroupHandle {
        let store = Store::open(self.dir.path().join(format!("node-{id}"))).unwrap();
        let probe = Probe::default();
        let config = NodeConfig {
            // Small, so a restarted node may need a snapshot and the log gets compacted.
            snapshot_entries: 50,
            lease_reads: self.lease_reads,
            ..NodeConfig::default()
        };
        let node = GroupNode::new(
            id,
            store.group(GROUP).unwrap(),
            voters,
            probe.clone(),
            config,
        )
        .unwrap();
        let poller = Poller::start(&format!("n{id}"), self.net.clone(), TICK);
        let handle = poller.add(node);
        self.pollers.insert(id, poller);
        self.net.handles.lock().unwrap().insert(id, handle.clone());
        self.probes.insert(id, probe);
        handle
    }

    fn start_all() -> (Cluster, BTreeMap<NodeId, GroupHandle>) {
        let mut cluster = Cluster::new();
        let handles = VOTERS.iter().map(|&id| (id, cluster.start(id))).collect();
        (cluster, handles)
    }

    /// Shuts node `id` down and takes it off the network.
    async fn kill(&mut self, id: NodeId) {
        let handle = self.net.handles.lock().unwrap().remove(&id).unwrap();
        handle.shutdown().await;
        assert!(handle.is_stopped());
        // The store closes with the loop (a snapshot may be in writing).
        self.pollers.remove(&id).unwrap().shutdown().await;
    }

    fn handle(&self, id: NodeId) -> GroupHandle {
        self.net.handles.lock().unwrap()[&id].clone()
    }

    fn live(&self) -> Vec<GroupHandle> {
        self.net.handles.lock().unwrap().values().cloned().collect()
    }

    /// Stops every live replica.
    async fn shutdown(&self) {
        for handle in self.live() {
            handle.shutdown().await;
        }
    }

    /// The leader every live replica (outside `cut`) agrees on.
    async fn leader(&self) -> GroupHandle {
        eventually(
            "every live replica knows one leader",
            PATIENCE,
            async || {
                let cut = self.net.cut.lock().unwrap().clone();
                let live: Vec<_> = self
                    .live()
                    .into_iter()
                    .filter(|h| !cut.contains(&h.id()))
                    .collect();
                let leader = live
                    .iter()
                    .find(|h| h.leadership().role == StateRole::Leader)?;
                let known = live
                    .iter()
                    .all(|h| h.leadership().leader == Some(leader.id()));
                known.then(|| leader.clone())
            },
        )
        .await
    }

    /// Waits until every live replica applied as far as `handle` and they hold equal state.
    async fn converged(&self, index: u64) -> Register {
        eventually(
            "the replicas applied the same entries",
            PATIENCE,
            async || {
                let live = self.live();
                if live.iter().any(|h| h.applied() < index) {
                    return None;
                }
                let applied = live[0].applied();
                if live.iter().any(|h| h.applied() != applied) {
                    return None;
                }
                let registers: Vec<Register> = live
                    .iter()
                    .map(|h| self.probes[&h.id()].register())
                    .collect();
                // Equal applied index must mean equal bytes; re-check the index in case an entry
                // was applied between the reads.
                if live.iter().any(|h| h.applied() != applied) {
                    return None;
                }
                for r in &registers[1..] {
                    assert_eq!(r, &registers[0], "replicas diverged at index {applied}");
                }
                Some(registers[0].clone())
            },
        )
        .await
    }
}

/// Proposes command `id` through `handle` and waits (up to [`PATIENCE`]) for its result.
async fn propose(handle: &GroupHandle, id: u64) -> leakbloom_raft::Result<Vec<u8>> {
    let proposal = handle.propose(Register::command(id, b"p"));
    within(format_args!("proposal {id}'s result"), PATIENCE, proposal).await
}

/// The checksum the register returns after applying `ids` in order.
fn checksums(ids: &[u64]) -> BTreeMap<u64, Vec<u8>> {
    let mut register = Register::default();
    ids.iter()
        .map(|&id| (id, register.apply(0, &Register::command(id, b"p")).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_commits_and_redirects_followers() {
    let (cluster, _) = Cluster::start_all();
    let leader = cluster.leader().await;
    let result = propose(&leader, 1).await;
    assert_eq!(result.unwrap(), checksums(&[1])[&1]);
    let register = cluster.converged(leader.applied()).await;
    assert_eq!(register.ids, vec![1]);

    let follower = cluster
        .live()
        .into_iter()
        .find(|h| h.id() != leader.id())
        .unwrap();
    let error = follower
        .propose(Register::command(2, b"p"))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        matches!(error, Error::NotLeader { leader: Some(l), .. } if l == leader.id()),
        "{error}"
    );
    // A rejection by the state machine is an answer, not a retryable failure.
    let error = leader.propose(b"short".to_vec()).await.unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_apply_in_one_order() {
    let (cluster, _) = Cluster::start_all();
    let leader = cluster.leader().await;
    let tasks: Vec<_> = (1..=200u64)
        .map(|id| {
            let leader = leader.clone();
            tokio::spawn(async move { (id, leader.propose(Register::command(id, b"p")).await) })
        })
        .collect();
    let mut results = BTreeMap::new();
    for task in tasks {
        let (id, result) = within("200 proposals", PATIENCE, task).await.unwrap();
        results.insert(id, result.unwrap());
    }
    let register = cluster.converged(leader.applied()).await;
    // Each proposal applied once, and each caller got the result of its own entry.
    let mut ids = register.ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    assert_eq!(results, checksums(&register.ids));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_share_rounds_and_see_acknowledged_writes() {
    let (cluster, _) = Cluster::start_all();
    let leader = cluster.leader().await;
    let follower = cluster
        .live()
        .into_iter()
        .find(|h| h.id() != leader.id())
        .unwrap();
    for id in 1..=5u64 {
        propose(&leader, id).await.unwrap();
        // Read on the follower right after the acknowledgement: it must see the write.
        let index = within("a read", PATIENCE, follower.read_index())
            .await
            .unwrap();
        assert!(follower.applied() >= index);
        assert!(
            cluster.probes[&follower.id()].register().ids.contains(&id),
            "read at {index} misses write {id}"
        );
    }

    // Starve the follower of log entries: a write commits on the other two, and a read on the
    // follower completes its round but must wait until the follower applied the write.
    cluster.net.stall.lock().unwrap().insert(follower.id());
    propose(&leader, 6).await.unwrap();
    let read = tokio::spawn({
        let follower = follower.clone();
        async move { follower.read_index().await }
    });
    // Long enough for the round (a few ms), well inside the read timeout (30 ticks).
    tokio::time::sleep(TICK * 10).await;
    assert!(
        !read.is_finished(),
        "a read was answered before the write it must see was applied"
    );
    cluster.net.stall.lock().unwrap().clear();
    let index = within("a read after the stall", PATIENCE, read)
        .await
        .unwrap()
        .unwrap();
    assert!(follower.applied() >= index);
    assert!(cluster.probes[&follower.id()].register().ids.contains(&6));

    // A replica that cannot catch up fails the read retryably rather than hang.
    cluster.net.stall.lock().unwrap().insert(follower.id());
    propose(&leader, 7).await.unwrap();
    let error = within("a read timeout", PATIENCE, follower.read_index())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(!cluster.probes[&follower.id()].register().ids.contains(&7));
    cluster.net.stall.lock().unwrap().clear();

    // 100 concurrent reads per node. The node is cut off for a few ticks (less than an
    // election timeout) while they are issued, so its first round cannot finish while the rest
    // are still being queued, however the threads happen to be scheduled.
    for handle in [&leader, &follower] {
        let before = handle.rounds();
        cluster.net.cut.lock().unwrap().insert(handle.id());
        let reads: Vec<_> = (0..100)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.read_index().await })
            })
            .collect();
        tokio::time::sleep(TICK * 3).await;
        cluster.net.cut.lock().unwrap().clear();
        for read in reads {
            within("100 reads", PATIENCE, read).await.unwrap().unwrap();
        }
        let rounds = handle.rounds() - before;
        assert!(
            (1..=10).contains(&rounds),
            "100 concurrent reads on node {} took {rounds} rounds",
            handle.id()
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_without_a_leader_times_out_retryably() {
    let mut cluster = Cluster::new();
    // Alone, node 1 can never elect a leader: its read round cannot start or complete.
    let lonely = cluster.start(1);
    let start = Instant::now();
    let error = within("a read timeout", PATIENCE, lonely.read_index())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        start.elapsed() >= TICK * leakbloom_raft::group::READ_TIMEOUT_TICKS,
        "failed before the timeout: {:?}",
        start.elapsed()
    );
    lonely.shutdown().await;
    // A stopped group answers at once, retryably.
    let error = lonely
        .propose(Register::command(1, b"p"))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        !lonely.step(Message::default()),
        "a stopped group accepts no messages"
    );

    // Dropping every handle of the loop and its replicas stops it too: the replica's leadership
    // channel closes.
    let restarted = cluster.start(1);
    let mut leadership = restarted.watch_leadership();
    cluster.net.handles.lock().unwrap().clear();
    cluster.pollers.clear();
    drop(restarted);
    within("the group to stop", PATIENCE, async {
        while leadership.changed().await.is_ok() {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_loss_fails_pending_and_failover_keeps_committing() {
    let (mut cluster, _) = Cluster::start_all();
    let old = cluster.leader().await;
    propose(&old, 1).await.unwrap();

    // Cut the leader off: its proposal cannot commit, and check_quorum makes it step down.
    cluster.net.cut.lock().unwrap().insert(old.id());
    let error = propose(&old, 2).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let new = cluster.leader().await;
    assert_ne!(new.id(), old.id());
    cluster.net.cut.lock().unwrap().clear();

    // Kill the current leader: the other two elect another and keep committing.
    let killed = new.id();
    cluster.kill(killed).await;
    drop(new);
    let next = cluster.leader().await;
    assert_ne!(next.id(), killed);
    for id in 3..=60u64 {
        propose(&next, id).await.unwrap();
    }
    let register = cluster.converged(next.applied()).await;
    assert!(register.ids.contains(&1) && register.ids.contains(&60));

    // Restart the killed node from its directory: it catches up (by log or snapshot).
    let restarted = cluster.start(killed);
    let register = cluster.converged(next.applied()).await;
    assert_eq!(cluster.probes[&killed].register(), register);
    assert!(restarted.applied() >= next.applied());
    // And it follows the current leader.
    eventually(
        "the restarted node knows the leader",
        PATIENCE,
        async || cluster.handle(killed).leadership().leader == Some(next.id()),
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_skip_rounds_and_a_cut_off_leader_stops_before_another_commits() {
    let mut cluster = Cluster::new();
    cluster.lease_reads = true;
    for id in VOTERS {
        cluster.start(id);
    }
    let old = cluster.leader().await;
    propose(&old, 1).await.unwrap();

    // The first read takes a round and grants a lease; the next ones take none (at most a
    // renewal in the background).
    within("a first read", PATIENCE, old.read_index())
        .await
        .unwrap();
    let rounds = old.rounds();
    for _ in 0..100 {
        within("a lease read", PATIENCE, old.read_index())
            .await
            .unwrap();
    }
    let taken = old.rounds() - rounds;
    assert!(taken <= 2, "100 lease reads took {taken} rounds");

    // Cut the leader off and freeze its loop (it blocks at its next send, before its next
    // check of the quorum could make it step down), and read on it as fast as it answers: its
    // handle answers by the published lease without the loop. The others elect a leader and
    // commit a write the old one cannot see; the old leader must have stopped answering by
    // then (its lease ran out in real time), and must answer nothing more once thawed.
    cluster.net.freeze(Some(old.id()));
    cluster.net.cut.lock().unwrap().insert(old.id());
    let reader = tokio::spawn({
        let old = old.clone();
        async move {
            let mut last_answer = None;
            while old.read_index().await.is_ok() {
                last_answer = Some(Instant::now());
                tokio::task::yield_now().await;
            }
            last_answer
        }
    });
    let new = cluster.leader().await;
    assert_ne!(new.id(), old.id());
    propose(&new, 2).await.unwrap();
    let committed = Instant::now();
    cluster.net.freeze(None);
    let last_answer = within("the cut-off leader's reads to fail", PATIENCE, reader)
        .await
        .unwrap();
    assert!(
        last_answer.is_none_or(|answered| answered < committed),
        "the cut-off leader answered a read {:?} after another leader committed",
        last_answer.map(|answered| answered - committed)
    );
    cluster.net.cut.lock().unwrap().clear();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_members_replaces_a_member_and_the_handles_report_it() {
    let (mut cluster, handles) = Cluster::start_all();
    let leader = cluster.leader().await;
    for id in 1..=3 {
        propose(&leader, id).await.unwrap();
    }
    // A new replica: in no configuration until the leader adds it.
    let new = cluster.start_with(4, &[]);
    assert!(new.membership().is_empty());
    assert!(!new.removed());
    for handle in cluster.live() {
        handle.set_members(vec![1, 2, 4]);
    }
    let old = handles[&3].clone();
    eventually("node 3 learns it was removed", PATIENCE, async || {
        let voters = new.membership().voters;
        (voters == [1, 2, 4] && old.removed()).then_some(())
    })
    .await;
    cluster.kill(3).await;
    let leader = cluster.leader().await;
    propose(&leader, 4).await.unwrap();
    let register = cluster.converged(leader.applied()).await;
    assert_eq!(register.ids, vec![1, 2, 3, 4]);
    assert!(!new.removed());
    cluster.shutdown().await;
}
