//! Cluster stories as golden scripts: each file in `tests/scripts/` tells one story as commands
//! run against the seeded simulation ([`leakbloom_raft::sim::Cluster`]: real raft-rs replicas
//! of one group, real stores, a logical clock), each followed by the output it must give (the
//! format: [`leakbloom_testkit::golden`]). A run is deterministic given the script's seed, so
//! the output is exact; when behaviour changes on purpose, `UPDATE_GOLDEN=1 cargo test -p
//! leakbloom-raft --test scripts` rewrites the outputs, and the diff shows the story's change.
//!
//! Commands:
//! - `cluster N seed=S [delay=MS]`: N replicas (nodes 1..=N; node 1, the first member, is the
//!   preferred leader) over a network that loses nothing and delivers each message within
//!   `delay` logical ms (default 10).
//! - `propose [COUNT]`: COUNT proposals (default 1) on the current leader, numbered on from 1.
//! - `partition NODE...`: cuts the nodes named off from the others (replacing any partition);
//!   `heal` restores every link.
//! - `crash NODE`, `restart NODE`, `lose-disk NODE` (crashed, its directory wiped: it restarts
//!   empty and rejoins, see `leakbloom_raft::node`'s "Rebuilding a replica").
//! - `join NODE`: hosts a new node with an empty replica (it waits to be added);
//!   `members NODE...`: the group's members from now on, the preferred leader first (every
//!   replica is told; the leader moves the group there); `decommission NODE`: stops hosting a
//!   node for good.
//! - `stabilize`: steps until the leader's side of the network has settled (every live member
//!   there knows the leader, is a voter, has applied the leader's whole log and is not
//!   rejoining, and the leader has removed every node that is not a member), printing what
//!   happened on the way.
//! - `run MS`: steps MS logical ms, printing what happened.
//! - `status`: every node's role, term, indexes, membership and the proposals it holds.
//! - `check`: every live replica holds every acknowledged proposal, all in one order. A failure
//!   fails the test whatever the script says: no rewrite can bless lost data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use leakbloom_raft::sim::{Cluster, ClusterConfig, Faults, Register};
use leakbloom_raft::NodeId;
use leakbloom_testkit::golden::{self, Command};
use raft::eraftpb::MessageType;
use raft::StateRole;

/// Logical ms `stabilize` may take before the script fails: many elections' worth.
const SETTLE_MS: u64 = 10_000;

/// Runs the script `tests/scripts/{name}.txt`.
fn tell(name: &str) {
    let path = format!("{}/tests/scripts/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let mut story = Story::default();
    golden::run(path, |command| story.execute(command));
}

#[test]
fn rebuild_after_lost_disk() {
    tell("rebuild_after_lost_disk");
}

#[test]
fn leader_handback() {
    tell("leader_handback");
}

#[test]
fn replace_a_member() {
    tell("replace_a_member");
}

/// The state of one story: the cluster, and what has been seen of it.
#[derive(Default)]
struct Story {
    /// The nodes' directories.
    _dir: Option<tempfile::TempDir>,
    cluster: Option<Cluster<Register>>,
    /// The next proposal's number.
    next: u64,
    /// Proposals acknowledged to the client.
    acked: BTreeSet<u64>,
    /// Nodes cut off from the others by `partition`.
    cut: BTreeSet<NodeId>,
    /// Per live node, its rejoin mark when last looked at.
    rejoin: BTreeMap<NodeId, Option<u64>>,
    /// The leader's voters and learners when last looked at.
    members: Option<(Vec<u64>, Vec<u64>)>,
}

/// What stepping the cluster showed: events in order, and the proposals answered.
#[derive(Default)]
struct Seen {
    events: Vec<String>,
    acked: Vec<u64>,
    failed: BTreeMap<String, Vec<u64>>,
}

impl Seen {
    fn render(self) -> String {
        let mut out = self.events.join("\n");
        let mut line = |text: String| {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&text);
        };
        if !self.acked.is_empty() {
            line(format!("acknowledged: {}", ranges(&self.acked)));
        }
        for (error, ids) in self.failed {
            line(format!("failed: {} ({error})", ranges(&ids)));
        }
        out
    }
}

impl Story {
    fn execute(&mut self, command: &Command) -> Result<String, String> {
        if command.name == "cluster" {
            return self.start(command);
        }
        let cluster = self
            .cluster
            .as_mut()
            .ok_or("no cluster yet: start with `cluster`")?;
        let ids = cluster.ids();
        let node = |command: &Command| -> Result<NodeId, String> {
            let id = command.single()?;
            if ids.contains(&id) {
                Ok(id)
            } else {
                Err(format!("there is no node {id}"))
            }
        };
        match command.name.as_str() {
            "propose" => {
                let count: u64 = command.positional()?.first().copied().unwrap_or(1);
                let Some(leader) = cluster.leader() else {
                    return Ok("no leader: nothing proposed".into());
                };
                let first = self.next;
                for id in first..first + count {
                    cluster
                        .propose(id, Register::command(id, b""))
                        .map_err(|e| e.to_string())?;
                }
                self.next += count;
                let proposed: Vec<u64> = (first..first + count).collect();
                Ok(format!("proposals {} on node {leader}", ranges(&proposed)))
            }
            "partition" => {
                let side: Vec<NodeId> = command.positional()?;
                cluster.net.heal();
                cluster.net.partition(&side, &ids);
                self.cut = side.iter().copied().collect();
                let others: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|id| !self.cut.contains(id))
                    .collect();
                Ok(format!(
                    "nodes {} cut off from nodes {}",
                    words(&side),
                    words(&others)
                ))
            }
            "heal" => {
                cluster.net.heal();
                self.cut.clear();
                Ok("network healed".into())
            }
            "join" => {
                let id: NodeId = command.single()?;
                cluster.join(id).map_err(|e| e.to_string())?;
                self.rejoin.insert(id, None);
                Ok(format!(
                    "node {id} joins with an empty replica: it waits to be added"
                ))
            }
            "members" => {
                let members: Vec<NodeId> = command.positional()?;
                if let Some(id) = members.iter().find(|id| !ids.contains(id)) {
                    return Err(format!("there is no node {id}: join it first"));
                }
                cluster.set_members(members.clone());
                Ok(format!(
                    "members {}; node {} is the preferred leader",
                    words(&members),
                    members.first().ok_or("no members")?
                ))
            }
            "decommission" => {
                let id = node(command)?;
                cluster.decommission(id);
                self.rejoin.remove(&id);
                Ok(format!("node {id} is no longer hosted"))
            }
            "crash" => {
                let id = node(command)?;
                cluster.crash(id);
                self.rejoin.remove(&id);
                Ok(format!("node {id} crashed"))
            }
            "lose-disk" => {
                let id = node(command)?;
                cluster.lose_disk(id).map_err(|e| e.to_string())?;
                self.rejoin.remove(&id);
                Ok(format!("node {id} crashed and lost its disk"))
            }
            "restart" => {
                let id = node(command)?;
                cluster.restart(id).map_err(|e| e.to_string())?;
                let restarted = cluster.node(id).expect("just restarted");
                self.rejoin.insert(id, restarted.rejoin());
                Ok(match restarted.rejoin() {
                    Some(_) => {
                        format!("node {id} restarts empty, rejoining: it asks to be re-added")
                    }
                    None => format!(
                        "node {id} restarts at applied index {}",
                        restarted.applied()
                    ),
                })
            }
            "stabilize" => {
                let mut seen = Seen::default();
                let start = self.cluster().now();
                while !self.settled() {
                    if self.cluster().now() - start >= SETTLE_MS {
                        let status = self.status();
                        return Err(format!("not settled after {SETTLE_MS} ms:\n{status}"));
                    }
                    self.step(&mut seen)?;
                }
                Ok(seen.render())
            }
            "run" => {
                let ms: u64 = command.single()?;
                let mut seen = Seen::default();
                for _ in 0..ms {
                    self.step(&mut seen)?;
                }
                Ok(seen.render())
            }
            "status" => Ok(self.status()),
            "check" => self.check(),
            other => Err(format!("unknown command {other:?}")),
        }
    }

    fn cluster(&self) -> &Cluster<Register> {
        self.cluster.as_ref().expect("a cluster")
    }

    /// `cluster N seed=S [delay=MS]`.
    fn start(&mut self, command: &Command) -> Result<String, String> {
        let nodes: u64 = command.single()?;
        let seed: u64 = command.option("seed", 0)?;
        let config = ClusterConfig {
            nodes,
            faults: Faults {
                drop: 0.0,
                duplicate: 0.0,
                max_delay: command.option("delay", 10)?,
            },
            ..ClusterConfig::default()
        };
        let dir = leakbloom_testkit::scratch();
        let cluster =
            Cluster::new(seed, dir.path(), config, Register::default).map_err(|e| e.to_string())?;
        *self = Story {
            rejoin: cluster.live().into_iter().map(|id| (id, None)).collect(),
            _dir: Some(dir),
            cluster: Some(cluster),
            next: 1,
            ..Story::default()
        };
        let ids = self.cluster().ids();
        Ok(format!(
            "nodes {}; node 1 is the preferred leader",
            words(&ids)
        ))
    }

    /// Steps the clock by 1 ms; notes what happened in `seen`.
    fn step(&mut self, seen: &mut Seen) -> Result<(), String> {
        let cluster = self.cluster.as_mut().expect("a cluster");
        let outputs = cluster.step().map_err(|e| e.to_string())?;
        let at = |text: String| format!("[{} ms] {text}", cluster.now());
        for (node, out) in outputs {
            if let Some(leadership) = out.leadership.filter(|l| l.role == StateRole::Leader) {
                seen.events
                    .push(at(format!("node {node} leads term {}", leadership.term)));
            }
            for message in &out.messages {
                let (from, to) = (message.from, message.to);
                match message.get_msg_type() {
                    MessageType::MsgSnapshot => {
                        let index = message.get_snapshot().get_metadata().index;
                        seen.events.push(at(format!(
                            "node {from} sends node {to} a snapshot at index {index}"
                        )));
                    }
                    MessageType::MsgTimeoutNow => seen
                        .events
                        .push(at(format!("node {from} hands leadership to node {to}"))),
                    _ => {}
                }
            }
            for (id, result) in out.results {
                match result {
                    Ok(_) => {
                        self.acked.insert(id);
                        seen.acked.push(id);
                    }
                    Err(error) => seen.failed.entry(error.to_string()).or_default().push(id),
                }
            }
        }
        for id in cluster.live() {
            let now = cluster.node(id).expect("live").rejoin();
            let before = self.rejoin.insert(id, now).flatten();
            match (before, now) {
                (Some(0), Some(index)) if index > 0 => seen.events.push(at(format!(
                    "node {id} is re-added as a learner; it votes again once it has applied \
                     index {index}"
                ))),
                (Some(index), None) => seen.events.push(at(format!(
                    "node {id} has applied index {index}: it votes again"
                ))),
                _ => {}
            }
        }
        if let Some(leader) = cluster.leader() {
            let conf = cluster
                .node(leader)
                .expect("the leader is up")
                .storage()
                .conf_state();
            let mut members = (conf.voters.clone(), conf.learners.clone());
            members.0.sort_unstable();
            members.1.sort_unstable();
            let before = self.members.replace(members.clone());
            if before.is_some_and(|before| before != members) {
                let learners = match members.1.as_slice() {
                    [] => String::new(),
                    learners => format!(", learners {}", words(learners)),
                };
                seen.events.push(at(format!(
                    "members: voters {}{learners}",
                    words(&members.0)
                )));
            }
        }
        Ok(())
    }

    /// Whether the leader's side of the network has settled (see `stabilize`).
    fn settled(&self) -> bool {
        let cluster = self.cluster();
        let Some(leader) = cluster.leader() else {
            return false;
        };
        let leading = cluster.node(leader).expect("the leader is up");
        let conf = leading.storage().conf_state();
        let side = |id: &NodeId| self.cut.contains(id) == self.cut.contains(&leader);
        let members = cluster.members();
        let removed = (cluster.ids().iter())
            .filter(|id| !members.contains(id))
            .all(|&id| !leading.membership().contains(id));
        let member = |id: &NodeId| members.contains(id);
        removed
            && leading.applied() == leading.last_index()
            && cluster
                .live()
                .iter()
                .filter(|id| side(id) && member(id))
                .all(|&id| {
                    let node = cluster.node(id).expect("live");
                    node.leadership().leader == Some(leader)
                        && node.applied() == leading.applied()
                        && node.rejoin().is_none()
                        && conf.voters.contains(&id)
                })
    }

    /// One line per node.
    fn status(&self) -> String {
        let cluster = self.cluster();
        let mut out = String::new();
        for id in cluster.ids() {
            let Some(node) = cluster.node(id) else {
                let _ = writeln!(out, "node {id}: down");
                continue;
            };
            let leadership = node.leadership();
            let role = match (leadership.role, leadership.leader) {
                (StateRole::Leader, _) => "leader".to_string(),
                (StateRole::Follower, Some(leader)) => format!("follower of node {leader}"),
                (StateRole::Follower, None) => "follower, no leader known".to_string(),
                (StateRole::Candidate, _) => "candidate".to_string(),
                (StateRole::PreCandidate, _) => "pre-candidate".to_string(),
            };
            let conf = node.storage().conf_state();
            let member = if conf.voters.contains(&id) {
                "voter"
            } else if conf.learners.contains(&id) {
                "learner"
            } else {
                "not a member"
            };
            let rejoin = match node.rejoin() {
                None => String::new(),
                Some(0) => ", rejoining: waits to be re-added".to_string(),
                Some(index) => format!(", rejoining until it has applied index {index}"),
            };
            let held = &node.machine().ids;
            let holds = if held.is_empty() {
                "nothing".to_string()
            } else {
                ranges(held)
            };
            let _ = writeln!(
                out,
                "node {id}: {role}, term {}, applied {}, last index {}, {member}{rejoin}, holds \
                 {holds}",
                leadership.term,
                node.applied(),
                node.last_index(),
            );
        }
        out
    }

    /// Every live replica holds every acknowledged proposal, and all in one order.
    fn check(&self) -> Result<String, String> {
        let cluster = self.cluster();
        let live = cluster.live();
        let held: Vec<&Vec<u64>> = live
            .iter()
            .map(|&id| &cluster.node(id).unwrap().machine().ids)
            .collect();
        let longest = held
            .iter()
            .max_by_key(|ids| ids.len())
            .ok_or("no live node")?;
        for (&id, ids) in live.iter().zip(&held) {
            let missing: Vec<u64> = self
                .acked
                .iter()
                .copied()
                .filter(|a| !ids.contains(a))
                .collect();
            if !missing.is_empty() {
                panic!(
                    "node {id} misses acknowledged proposals {}",
                    ranges(&missing)
                );
            }
            if !longest.starts_with(ids) {
                panic!("node {id} applied proposals in another order: {ids:?} against {longest:?}");
            }
        }
        Ok(format!(
            "nodes {} hold all {} acknowledged proposals, in one order",
            words(&live),
            self.acked.len()
        ))
    }
}

/// `1 2 3`.
fn words(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
}

/// Runs of consecutive numbers, in the order given: `1-30 32`.
fn ranges(ids: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == id => *last = id,
            _ => runs.push((id, id)),
        }
    }
    runs.iter()
        .map(|&(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}-{last}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
