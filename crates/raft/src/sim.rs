//! A deterministic in-process cluster for testing Raft behaviour.
//!
//! One group replicated on N nodes, each with its own [`Store`] directory. A seeded
//! [`Network`] delivers messages with random delay (hence reordering), drops, duplicates and
//! partitions; a logical clock in milliseconds drives ticks. Nodes crash (the [`GroupNode`]
//! and its store are dropped: everything not yet synced — unstable entries, queued messages,
//! the in-memory state machine — is lost) and restart from their directory. Given the seed,
//! a run is fully reproducible: nothing reads the wall clock, thread scheduling or a global
//! random source.
//!
//! A node can also lose its disk ([`Cluster::lose_disk`]): it comes back empty and rejoining,
//! and the cluster plays the caller's part of a rebuild (see the [`node`](crate::node) docs):
//! each tick a rejoining node asks the current leader to re-add it, and the leader's answer
//! reaches it at once, like a request and reply over a peer RPC that happened to succeed.
//!
//! The group's members can change while it runs, as the node layer changes a shard's placement
//! ([`Cluster::set_members`], told to every replica, as the node layer does): a node can
//! [`join`](Cluster::join) with an empty replica (a new replica of an existing group, which
//! waits for the leader to add it and send it a snapshot), and a node that is no longer a
//! member can be [`decommission`](Cluster::decommission)ed once the leader removed it.
//!
//! A crash here closes raft-engine cleanly (its `Drop` runs); the torn tail a real crash
//! leaves behind is covered by the storage tests.
//!
//! Every node's store is read on the one thread that runs the cluster, unlike a real node,
//! whose groups each read their own store on their own thread. raft-engine 0.4.2 caches the
//! last entries block a thread read, keyed by file, offset and length but not by engine, and
//! replicas write alike: without a guard, one node would now and then be served another node's
//! block (a raft-engine panic on the entry index, or silently another node's entry). The
//! store fences that cache whenever the reading store changes on a thread (see "Caveat:
//! raft-engine's block cache" in [`storage`](crate::storage)): the cluster stays on one thread,
//! sequential and reproducible, for one small extra read per switch (a few percent of a run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::host;
use crate::node::{ApplyError, GroupNode, NodeConfig, Output, SnapshotJob, StateMachine};
use crate::storage::Store;
use crate::{GroupId, NodeId};

/// The group every simulated node replicates.
pub const GROUP: GroupId = 1;

/// Logical milliseconds between ticks; with the default 10-tick election timeout an election
/// takes 100-200 ms of simulated time, the scale of a real deployment's 100 ms ticks / 10.
pub const TICK_MS: u64 = 10;

/// How often a rejoining node asks the leader to re-add it (a few ticks, like a node's retry
/// of the peer call).
const REJOIN_ASK_MS: u64 = 5 * TICK_MS;

/// Proposal ids at or above this are the cluster's own rejoin requests, never a caller's.
const REJOIN_PROPOSALS: u64 = 1 << 63;
/// Most ms a snapshot job takes to write its file (drawn per job from the seed): long enough
/// for entries to apply and messages to flow while it is written.
const SNAPSHOT_WRITE_MS: u64 = 30;

/// Network fault rates of a [`Network`].
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay in logical ms, uniform in `1..=max_delay`; spread means reordering.
    pub max_delay: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            drop: 0.05,
            duplicate: 0.02,
            max_delay: 20,
        }
    }
}

/// A seeded message scheduler with partitions.
#[derive(Debug)]
pub struct Network {
    rng: StdRng,
    faults: Faults,
    /// Messages in flight by (delivery time, send sequence): a total, seeded order.
    queue: BTreeMap<(u64, u64), Message>,
    sent: u64,
    /// Directed links that are cut.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Snapshot messages lost since the last [`Network::lost_snapshots`]: a real transport
    /// knows when a snapshot stream fails, and the leader must be told.
    lost: Vec<Message>,
}

impl Network {
    /// A network with its own random stream.
    pub fn new(seed: u64, faults: Faults) -> Network {
        Network {
            rng: StdRng::seed_from_u64(seed),
            faults,
            queue: BTreeMap::new(),
            sent: 0,
            cut: BTreeSet::new(),
            lost: Vec::new(),
        }
    }

    fn connected(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    fn lose(&mut self, message: Message) {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            self.lost.push(message);
        }
    }

    /// Schedules `message` sent at `now` (or loses it).
    pub fn send(&mut self, now: u64, message: Message) {
        if !self.connected(message.from, message.to) || self.rng.gen_bool(self.faults.drop) {
            self.lose(message);
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now + self.rng.gen_range(1..=self.faults.max_delay.max(1));
            self.sent += 1;
            self.queue.insert((at, self.sent), message.clone());
        }
    }

    /// Takes the messages due at or before `now`, in delivery order; those on a link cut
    /// meanwhile are lost.
    pub fn deliver(&mut self, now: u64) -> Vec<Message> {
        let later = self.queue.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.queue, later);
        let mut delivered = Vec::with_capacity(due.len());
        for message in due.into_values() {
            if self.connected(message.from, message.to) {
                delivered.push(message);
            } else {
                self.lose(message);
            }
        }
        delivered
    }

    /// Takes the snapshot messages lost since the last call.
    pub fn lost_snapshots(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.lost)
    }

    /// Cuts every link between `side` and the other `nodes`, both ways.
    pub fn partition(&mut self, side: &[NodeId], nodes: &[NodeId]) {
        for &a in side {
            for &b in nodes.iter().filter(|n| !side.contains(n)) {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }
}

/// How many faults [`Cluster::inject_faults`] injected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    /// Nodes crashed.
    pub crashes: u64,
    /// Crashed nodes restarted.
    pub restarts: u64,
    /// Nodes whose disk was lost (see [`Cluster::lose_disk`]).
    pub disks_lost: u64,
    /// Partitions made.
    pub partitions: u64,
}

/// Configuration of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Node ids are `1..=nodes`.
    pub nodes: u64,
    /// Network faults.
    pub faults: Faults,
    /// Node tunables; a small `snapshot_entries` exercises compaction and snapshot sending.
    pub node: NodeConfig,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nodes: 3,
            faults: Faults::default(),
            node: NodeConfig {
                snapshot_entries: 25,
                ..NodeConfig::default()
            },
        }
    }
}

/// N replicas of [`GROUP`] over a [`Network`], driven by a logical clock.
pub struct Cluster<M> {
    config: ClusterConfig,
    dir: PathBuf,
    /// Every hosted node; `None` while crashed.
    nodes: BTreeMap<NodeId, Option<GroupNode<M>>>,
    /// The group's first voters (`1..=nodes`): a rebuilt replica of one of them bootstraps
    /// with them, a node that joined later with nothing.
    bootstrap: Vec<NodeId>,
    /// The replicas the group should have, the preferred leader first.
    members: Vec<NodeId>,
    /// Nodes whose disk was lost (see [`lost_disks`](Self::lost_disks)).
    lost: BTreeSet<NodeId>,
    new_machine: fn() -> M,
    /// The simulated network.
    pub net: Network,
    now: u64,
    /// Drives what raft-rs would randomise from the thread's random source.
    rng: StdRng,
    /// Per node, the ms offset of its ticks, so nodes do not tick in lockstep.
    phase: BTreeMap<NodeId, u64>,
    /// Snapshot jobs being written in the background: node, due time (ms), job.
    snapshots: Vec<(NodeId, u64, SnapshotJob)>,
}

impl<M> std::fmt::Debug for Cluster<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("now", &self.now)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl<M: StateMachine> Cluster<M> {
    /// Starts `config.nodes` fresh nodes with directories under `dir`.
    pub fn new(
        seed: u64,
        dir: impl Into<PathBuf>,
        config: ClusterConfig,
        new_machine: fn() -> M,
    ) -> Result<Cluster<M>> {
        let bootstrap: Vec<NodeId> = (1..=config.nodes).collect();
        let mut cluster = Cluster {
            members: bootstrap.clone(),
            bootstrap,
            lost: BTreeSet::new(),
            net: Network::new(seed, config.faults.clone()),
            config,
            dir: dir.into(),
            nodes: BTreeMap::new(),
            new_machine,
            now: 0,
            rng: StdRng::seed_from_u64(seed.rotate_left(17) ^ 0x0c1u64),
            phase: BTreeMap::new(),
            snapshots: Vec::new(),
        };
        for id in cluster.bootstrap.clone() {
            cluster.nodes.insert(id, None);
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// Every hosted node's id (up or crashed): `1..=nodes` until members change.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The replicas the group should have, the preferred leader first.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Sets the replicas the group should have (see [`GroupNode::set_members`]) and tells
    /// every node that is up; a node that restarts is told again.
    pub fn set_members(&mut self, members: Vec<NodeId>) {
        for node in self.nodes.values_mut().flatten() {
            node.set_members(members.clone());
        }
        self.members = members;
    }

    /// Hosts node `id` (not hosted yet) with an empty replica: a new replica of the group,
    /// which waits until the leader adds it. Make it a member with
    /// [`set_members`](Self::set_members).
    pub fn join(&mut self, id: NodeId) -> Result<()> {
        if self.nodes.contains_key(&id) {
            return Err(Error::Rejected(format!("node {id} is hosted already")));
        }
        self.nodes.insert(id, None);
        self.restart(id)
    }

    /// Stops hosting node `id` for good (a node removed from the group): it is dropped with
    /// its snapshots in flight, and its messages are no longer delivered.
    pub fn decommission(&mut self, id: NodeId) {
        self.crash(id);
        self.nodes.remove(&id);
        self.phase.remove(&id);
    }

    /// Nodes that lost their disk at some point (decommissioned since or not). Rebuilding a
    /// replica removes it and adds it back (see the [`node`](crate::node) docs), and a rejoin
    /// proposal that commits after a leader change can do so again later: the group may lack
    /// such a voter for a while, also once the node is no longer a member.
    pub fn lost_disks(&self) -> Vec<NodeId> {
        self.lost.iter().copied().collect()
    }

    /// Ids of the nodes that are up.
    pub fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The logical time in ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Node `id`, if it is up.
    pub fn node(&self, id: NodeId) -> Option<&GroupNode<M>> {
        self.nodes.get(&id).and_then(Option::as_ref)
    }

    /// Node `id` mutably, if it is up.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut GroupNode<M>> {
        self.nodes.get_mut(&id).and_then(Option::as_mut)
    }

    /// Crashes node `id`: drops it with everything it had not synced, and the snapshots it
    /// was writing.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(slot) = self.nodes.get_mut(&id) {
            *slot = None;
        }
        self.snapshots.retain(|(node, _, _)| *node != id);
    }

    /// Whether every member is up with its replica whole (none rejoining) and the leader's
    /// voters are exactly the members: only then may a test lose a disk (two lost copies of
    /// three is data loss no protocol prevents).
    pub fn is_whole(&self) -> bool {
        let whole =
            (self.members.iter()).all(|&id| self.node(id).is_some_and(|n| n.rejoin().is_none()));
        whole && self.is_settled()
    }

    /// Whether the leader's applied membership is exactly the members, all voters.
    pub fn is_settled(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let membership = self.node(leader).expect("the leader is up").membership();
        let mut members = self.members.clone();
        members.sort_unstable();
        membership.voters == members && membership.learners.is_empty()
    }

    /// Crashes node `id` and wipes its directory, as when its disk is replaced; it stays down
    /// until [`restart`](Self::restart)ed, then rejoins empty and is rebuilt from the others.
    /// It must be a member: the group rebuilds only its members' replicas.
    pub fn lose_disk(&mut self, id: NodeId) -> Result<()> {
        self.crash(id);
        let dir = self.dir.join(format!("node-{id}"));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    context: "remove",
                    path: dir,
                    source,
                })
            }
        }
        let store = Store::open(&dir)?;
        store.group(GROUP)?.set_rejoin(Some(0))?;
        self.lost.insert(id);
        Ok(())
    }

    /// One millisecond of the simulations' fault schedule, drawn from `rng`: about one crash
    /// (at most `max_down` nodes down at once) and one partition every 2 s, each lasting about
    /// 0.5-1 s, and now and then a lost disk (of a member) while the group is whole. Counts go
    /// to `counts`.
    pub fn inject_faults(
        &mut self,
        rng: &mut StdRng,
        max_down: usize,
        counts: &mut FaultCounts,
    ) -> Result<()> {
        let ids = self.ids();
        if rng.gen_bool(0.0005) {
            let live = self.live();
            if ids.len() - live.len() < max_down {
                self.crash(live[rng.gen_range(0..live.len())]);
                counts.crashes += 1;
            }
        }
        if rng.gen_bool(0.002) {
            let down: Vec<_> = ids
                .iter()
                .copied()
                .filter(|&id| self.node(id).is_none())
                .collect();
            if !down.is_empty() {
                self.restart(down[rng.gen_range(0..down.len())])?;
                counts.restarts += 1;
            }
        }
        if rng.gen_bool(0.0003) && self.is_whole() {
            let members = &self.members;
            self.lose_disk(members[rng.gen_range(0..members.len())])?;
            counts.disks_lost += 1;
        }
        if rng.gen_bool(0.0005) {
            // One partition at a time: a random side against the rest.
            let side: Vec<_> = ids.iter().copied().filter(|_| rng.gen_bool(0.4)).collect();
            self.net.heal();
            self.net.partition(&side, &ids);
            counts.partitions += 1;
        }
        if rng.gen_bool(0.001) {
            self.net.heal();
        }
        Ok(())
    }

    /// (Re)starts node `id` from its directory (a no-op if it is up or not hosted), and tells
    /// it the members.
    pub fn restart(&mut self, id: NodeId) -> Result<()> {
        if self.node(id).is_some() || !self.nodes.contains_key(&id) {
            return Ok(());
        }
        let store = Store::open(self.dir.join(format!("node-{id}")))?;
        let storage = store.group(GROUP)?;
        // Only a first voter's empty replica bootstraps (a rebuilt one); a node that joined
        // later waits for a snapshot.
        let voters = match self.bootstrap.contains(&id) {
            true => self.bootstrap.clone(),
            false => Vec::new(),
        };
        // A seeded election timeout per start (raft-rs's own draw is not reproducible).
        let mut config = self.config.node.clone();
        config.election_ticks += self.rng.gen_range(0..config.election_ticks.max(1));
        config.max_election_ticks = config.election_ticks + 1;
        self.phase.insert(id, self.rng.gen_range(0..TICK_MS));
        let mut node = GroupNode::new(id, storage, &voters, (self.new_machine)(), config)?;
        node.set_members(self.members.clone());
        self.nodes.insert(id, Some(node));
        Ok(())
    }

    /// The node that is leader at the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .flatten()
            .filter(|n| n.leadership().role == StateRole::Leader)
            .max_by_key(|n| n.leadership().term)
            .map(|n| n.id())
    }

    /// Proposes `command` as proposal `id` on the current leader.
    pub fn propose(&mut self, id: u64, command: Vec<u8>) -> Result<NodeId> {
        let leader = self.leader().ok_or(Error::NotLeader {
            group: GROUP,
            leader: None,
        })?;
        let node = self.node_mut(leader).expect("the leader is up");
        node.propose(id, command)?;
        Ok(leader)
    }

    /// Advances the clock by 1 ms: ticks on tick boundaries, delivers due messages, handles
    /// every node's Ready and sends what it produced. Returns each node's output (its
    /// messages are already sent).
    pub fn step(&mut self) -> Result<Vec<(NodeId, Output)>> {
        self.now += 1;
        let mut snapshot_reports = Vec::new();
        for message in self.net.deliver(self.now) {
            let (from, to) = (message.from, message.to);
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = match self.node_mut(to) {
                // Stale responses and messages from removed peers are refused; harmless.
                Some(node) => node.step(message).is_ok(),
                None => false,
            };
            if snapshot {
                snapshot_reports.push((from, to, delivered));
            }
        }
        for lost in self.net.lost_snapshots() {
            snapshot_reports.push((lost.from, lost.to, false));
        }
        for (from, to, delivered) in snapshot_reports {
            if let Some(node) = self.node_mut(from) {
                node.report_snapshot(to, delivered);
            }
        }
        let now = self.now;
        let due: Vec<_>;
        (due, self.snapshots) = std::mem::take(&mut self.snapshots)
            .into_iter()
            .partition(|(_, at, _)| *at <= now);
        for (id, _, job) in due {
            if let Some(node) = self.node_mut(id) {
                node.snapshot_written(job.run())?;
            }
        }
        let mut outputs = Vec::new();
        let mut rejoining = Vec::new();
        let mut rejoined = Vec::new();
        for (&id, slot) in &mut self.nodes {
            let Some(node) = slot else { continue };
            if (now + self.phase[&id]).is_multiple_of(TICK_MS) {
                node.tick();
            }
            if (now + self.phase[&id]).is_multiple_of(REJOIN_ASK_MS) && node.rejoin() == Some(0) {
                rejoining.push(id);
            }
            // The node's Raft loop does this pass over all its replicas; here it has one.
            for (_, mut out) in host::pass(&mut [node as &mut dyn host::Replica])? {
                if let Some(job) = out.snapshot.take() {
                    // Written in the background: done a seeded while later (or lost with a
                    // crash), while the replica goes on.
                    let due = now + self.rng.gen_range(1..=SNAPSHOT_WRITE_MS);
                    self.snapshots.push((id, due, job));
                }
                if out.compacted {
                    node.storage().store().purge()?;
                }
                for message in &out.messages {
                    self.net.send(now, message.clone());
                }
                out.results.retain(|(proposal, result)| {
                    if *proposal < REJOIN_PROPOSALS {
                        return true;
                    }
                    if let Ok(index) = result {
                        let index = u64::from_be_bytes(index.as_slice().try_into().unwrap());
                        rejoined.push((proposal - REJOIN_PROPOSALS, index));
                    }
                    false
                });
                outputs.push((id, out));
            }
        }
        for (id, index) in rejoined {
            if let Some(node) = self.node_mut(id) {
                node.rejoined(index)?;
            }
        }
        if let Some(leader) = self.leader() {
            for id in rejoining {
                // Refused while another membership change is in flight: asked again next tick.
                let _ = self
                    .node_mut(leader)
                    .expect("the leader is up")
                    .propose_rejoin(REJOIN_PROPOSALS + id, id);
            }
        }
        Ok(outputs)
    }
}

/// A test state machine: an append-only register of commands with a running checksum.
///
/// Each command is 8 bytes of proposal id and any payload. Applying records the id and folds
/// the command into the checksum; the result is the checksum after it. Replicas with equal
/// checksums applied the same commands in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Register {
    /// Proposal ids in apply order.
    pub ids: Vec<u64>,
    /// Running CRC32 over every applied command.
    pub checksum: u32,
}

impl Register {
    /// A command for proposal `id`.
    pub fn command(id: u64, payload: &[u8]) -> Vec<u8> {
        [&id.to_be_bytes()[..], payload].concat()
    }
}

impl StateMachine for Register {
    fn apply(&mut self, _index: u64, command: &[u8]) -> std::result::Result<Vec<u8>, ApplyError> {
        let Some(id) = command
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        else {
            return Err(ApplyError::Rejected(format!(
                "command of {} bytes has no id",
                command.len()
            )));
        };
        let mut hasher = crc32fast::Hasher::new_with_initial(self.checksum);
        hasher.update(command);
        self.checksum = hasher.finalize();
        self.ids.push(id);
        Ok(self.checksum.to_be_bytes().to_vec())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.checksum.to_be_bytes().to_vec();
        for id in &self.ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), ApplyError> {
        if snapshot.len() < 4 || !(snapshot.len() - 4).is_multiple_of(8) {
            return Err(ApplyError::Rejected(format!(
                "register snapshot of {} bytes",
                snapshot.len()
            )));
        }
        self.checksum = u32::from_be_bytes(snapshot[..4].try_into().unwrap());
        self.ids = snapshot[4..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_deterministic_and_respects_partitions() {
        let run = |seed| {
            let mut net = Network::new(seed, Faults::default());
            for i in 0..200u64 {
                let m = Message {
                    from: 1 + i % 3,
                    to: 1 + (i + 1) % 3,
                    index: i,
                    ..Default::default()
                };
                net.send(i / 10, m);
            }
            (0..60)
                .flat_map(|t| net.deliver(t))
                .map(|m| m.index)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let delivered = run(7);
        assert!(delivered.len() < 200 + 20, "too many duplicates");
        assert!(
            delivered.windows(2).any(|w| w[0] > w[1]),
            "expected reordering"
        );

        let mut net = Network::new(1, Faults::default());
        net.partition(&[1], &[1, 2, 3]);
        for _ in 0..50 {
            let m = Message {
                from: 2,
                to: 1,
                ..Default::default()
            };
            net.send(0, m);
        }
        assert!(net.deliver(100).is_empty());
        net.heal();
        assert!(!net.is_partitioned());
    }

    #[test]
    fn register_snapshot_round_trip() {
        let mut r = Register::default();
        r.apply(1, &Register::command(5, b"x")).unwrap();
        r.apply(2, &Register::command(9, b"")).unwrap();
        assert!(r.apply(3, b"short").is_err());
        let mut s = Register::default();
        s.restore(&r.snapshot()).unwrap();
        assert_eq!(r, s);
        assert!(s.restore(&[1, 2, 3]).is_err());
    }
}
