//! Seeded fault simulation of one Raft group on 3 or 5 nodes: message delay, loss,
//! duplication and reordering, partitions and heals, crashes and restarts, while a client
//! proposes commands and makes linearizable reads. Invariants checked:
//!
//! 1. Every acknowledged proposal is applied on every replica once the faults stop, and the
//!    replicas end byte-identical.
//! 2. Replicas at equal applied index have byte-identical state, at every step.
//! 3. No proposal is applied twice on any replica.
//! 4. An acknowledged result is what applying the log in order computes.
//! 5. A linearizable read (ReadIndex, served once applied reaches the read index) sees every
//!    proposal acknowledged before the read was asked.
//! 6. The healed cluster makes progress (a final proposal is acknowledged).
//! 7. Nothing panics.
//! 8. At most one leader per term; nodes are crashed right after granting votes to catch
//!    votes that do not survive a restart.
//!
//! Now and then a node of a healthy group loses its disk and comes back empty: it is rebuilt
//! from the others (re-added as a learner, then promoted), and all of the above must still
//! hold: nothing acknowledged with its lost copy may disappear.
//!
//! The group's members move meanwhile, as placement changes would move them (3 to 5 members,
//! one move about every 2 s): a fresh node joins with an empty replica, a member is removed,
//! one is replaced by a fresh node, or the preferred leader (the first member) moves. A node
//! that is no longer a member is decommissioned (no longer hosted) once the leader and every
//! member replica that is up leave it out. Also checked, at every step:
//!
//! 9. The leader never has fewer than 3 voters (members are never fewer), but for nodes that
//!    lost their disk (a rebuild removes the replica and adds it back; the node may stop
//!    being a member, and be decommissioned, meanwhile): each allows one voter fewer.
//! 10. A majority of the leader's voters are hosted (not decommissioned): the group keeps a
//!     quorum it can reach once crashes and partitions heal.
//!
//! and at the end, that the leader's voters are exactly the members.
//!
//! `cargo test` runs [`DEFAULT_SEEDS`] seeds from 0; `LEAKBLOOM_SIM_SEEDS=N` runs N seeds
//! (from `LEAKBLOOM_SIM_FIRST_SEED`, default 0), `LEAKBLOOM_SIM_SEED=S` replays seed S (a
//! failing seed prints the command).

use std::collections::{BTreeMap, BTreeSet};

use leakbloom_raft::sim::{Cluster, ClusterConfig, FaultCounts, Register};
use leakbloom_raft::{NodeId, Output, StateMachine as _};
use leakbloom_testkit::seeds::Seeds;
use leakbloom_testkit::{scratch, AppliedStates, Reads};
use raft::eraftpb::MessageType;
use raft::StateRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds `cargo test` runs by default: every fault and member move shows up in each few seeds,
/// and 200 seeds take about 30 s in a debug build, inside the crate's ~2 min test budget.
const DEFAULT_SEEDS: u64 = 200;
/// Logical ms of faults and client traffic per seed (about 5 crashes and 5 partitions).
const FAULT_MS: u64 = 10_000;
/// Logical ms allowed for the healed cluster to converge; generous against election storms.
const SETTLE_MS: u64 = 10_000;
/// Probability per logical ms of a member move: about one every 2 s.
const MOVE_RATE: f64 = 0.0005;
/// Bounds on the member count the moves keep to.
const MIN_MEMBERS: usize = 3;
const MAX_MEMBERS: usize = 5;

/// Member moves made and nodes decommissioned.
#[derive(Debug, Default)]
struct Moves {
    joins: u64,
    removals: u64,
    replacements: u64,
    leader_moves: u64,
    decommissioned: u64,
}

#[derive(Debug, Default)]
struct Stats {
    faults: FaultCounts,
    crashes_after_vote: u64,
    leader_changes: u64,
    snapshots_sent: u64,
    failed_proposals: u64,
    reads_checked: u64,
    moves: Moves,
}

/// What the client saw, and what the checks compare against.
struct History {
    seed: u64,
    /// Fault and traffic counts, printed per seed so a run shows what it exercised.
    stats: Stats,
    /// Every proposal a leader accepted: id -> command.
    proposed: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged proposals: id -> result.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Replicas' states (snapshot bytes) by applied index.
    states: AppliedStates,
    /// Linearizable reads in flight, with the proposals acknowledged before each was asked.
    reads: Reads<Vec<u64>>,
    /// The leader of each term seen.
    leaders: BTreeMap<u64, NodeId>,
}

impl History {
    fn new(seed: u64) -> History {
        History {
            seed,
            stats: Stats::default(),
            proposed: BTreeMap::new(),
            acked: BTreeMap::new(),
            states: AppliedStates::default(),
            reads: Reads::default(),
            leaders: BTreeMap::new(),
        }
    }

    /// Steps the cluster once and records what came out. Returns the nodes that just granted
    /// a vote (a crash right after voting is where a lost vote would show).
    fn step(&mut self, cluster: &mut Cluster<Register>) -> Vec<NodeId> {
        let seed = self.seed;
        let mut voted = Vec::new();
        for (node, out) in cluster.step().expect("step") {
            self.count(&out);
            // 8. At most one leader per term (election safety).
            if let Some(l) = out.leadership.filter(|l| l.role == StateRole::Leader) {
                let first = *self.leaders.entry(l.term).or_insert(node);
                assert_eq!(
                    first, node,
                    "seed {seed}: nodes {first} and {node} both lead term {}",
                    l.term
                );
            }
            if out
                .messages
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject)
            {
                voted.push(node);
            }
            for (id, result) in out.results {
                match result {
                    Ok(result) => {
                        self.acked.insert(id, result);
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "seed {seed}: proposal {id} failed: {e}");
                        self.stats.failed_proposals += 1;
                    }
                }
            }
            for (context, index) in out.reads {
                self.reads
                    .answered(node, &context, index)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            }
        }
        self.observe(cluster);
        voted
    }

    fn count(&mut self, out: &Output) {
        self.stats.leader_changes +=
            u64::from(out.leadership.is_some_and(|l| l.role == StateRole::Leader));
        self.stats.snapshots_sent += out
            .messages
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count() as u64;
    }

    /// Asks node `node` for a linearizable read.
    fn read(&mut self, cluster: &mut Cluster<Register>, node: NodeId) {
        let context = self.reads.next_context();
        if let Some(n) = cluster.node_mut(node) {
            n.read_index(context.clone());
            let acked = self.acked.keys().copied().collect();
            self.reads.asked(&context, node, acked);
        }
    }

    /// Checks the per-step invariants (2, 3, 5).
    fn observe(&mut self, cluster: &Cluster<Register>) {
        let seed = self.seed;
        for id in cluster.live() {
            let node = cluster.node(id).unwrap();
            let machine = node.machine();
            // 2. Equal applied index, byte-identical state.
            let compared = self
                .states
                .compare(id, node.applied(), || machine.snapshot())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            if !compared {
                continue;
            }
            // 3. No proposal applied twice.
            let unique: BTreeSet<_> = machine.ids.iter().collect();
            assert_eq!(
                unique.len(),
                machine.ids.len(),
                "seed {seed}: node {id} applied a proposal twice"
            );
        }
        if let Some(leader) = cluster.leader() {
            let voters = cluster.node(leader).unwrap().membership().voters;
            // 9. Never fewer than 3 voters, but for members being rebuilt.
            let rebuilding = (cluster.lost_disks().into_iter())
                .filter(|id| !voters.contains(id))
                .count();
            assert!(
                voters.len() + rebuilding >= MIN_MEMBERS,
                "seed {seed} at {} ms: leader {leader} has voters {voters:?} (members {:?}, \
                 rebuilding {:?})",
                cluster.now(),
                cluster.members(),
                cluster.lost_disks()
            );
            // 10. A majority of the voters are hosted.
            let hosted = cluster.ids();
            let reachable = voters.iter().filter(|id| hosted.contains(id)).count();
            assert!(
                reachable > voters.len() / 2,
                "seed {seed} at {} ms: leader {leader} has voters {voters:?}, hosted only \
                 {hosted:?}",
                cluster.now()
            );
        }
        // 5. Reads served once their node applied the read index.
        let applied = |node| cluster.node(node).map(|n| n.applied());
        for read in self.reads.answerable(applied) {
            let (context, node) = (read.context, read.node);
            let seen: BTreeSet<_> = cluster.node(node).unwrap().machine().ids.iter().collect();
            for id in read.asked {
                assert!(
                    seen.contains(&id),
                    "seed {seed}: read {context} on node {node} misses proposal {id}, \
                     acknowledged before the read"
                );
            }
            self.stats.reads_checked += 1;
        }
    }
}

/// Moves the group's members one step at random (see the module docs), between
/// [`MIN_MEMBERS`] and [`MAX_MEMBERS`]; a fresh node id `next_node` joins when needed.
fn move_members(
    cluster: &mut Cluster<Register>,
    rng: &mut StdRng,
    next_node: &mut NodeId,
    moves: &mut Moves,
) {
    let mut members = cluster.members().to_vec();
    let mut join = |cluster: &mut Cluster<Register>| {
        let id = *next_node;
        *next_node += 1;
        cluster.join(id).expect("join");
        id
    };
    match rng.gen_range(0..4) {
        0 if members.len() < MAX_MEMBERS => {
            members.push(join(cluster));
            moves.joins += 1;
        }
        1 if members.len() > MIN_MEMBERS => {
            members.remove(rng.gen_range(0..members.len()));
            moves.removals += 1;
        }
        2 => {
            let at = rng.gen_range(0..members.len());
            members[at] = join(cluster);
            moves.replacements += 1;
        }
        3 => {
            let to = rng.gen_range(1..members.len());
            members.swap(0, to);
            moves.leader_moves += 1;
        }
        _ => return,
    }
    cluster.set_members(members);
}

/// Decommissions every hosted node that is not a member, once the leader's membership and
/// every member replica that is up leave it out (a replica that never learnt it was removed
/// still counts itself in).
fn decommission_removed(cluster: &mut Cluster<Register>, moves: &mut Moves) {
    let Some(leader) = cluster.leader() else {
        return;
    };
    let members = cluster.members().to_vec();
    for id in cluster.ids() {
        if members.contains(&id) {
            continue;
        }
        let listed = (members.iter().chain([&leader]))
            .filter_map(|&m| cluster.node(m))
            .any(|n| n.membership().contains(id));
        if !listed {
            cluster.decommission(id);
            moves.decommissioned += 1;
        }
    }
}

fn run(seed: u64) {
    let dir = scratch();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut config = ClusterConfig {
        nodes: if seed % 4 == 3 { 5 } else { 3 },
        ..ClusterConfig::default()
    };
    config.faults.drop = rng.gen_range(0.0..0.15);
    config.faults.duplicate = rng.gen_range(0.0..0.05);
    config.faults.max_delay = rng.gen_range(1..40);
    let mut next_node: NodeId = config.nodes + 1;
    let mut cluster =
        Cluster::new(seed, dir.path(), config, Register::default).expect("cluster starts");
    let mut history = History::new(seed);
    let mut next_id = 1u64;
    // Nodes crashed right after voting, restarted soon after: at (time, node).
    let mut quick_restarts: BTreeSet<(u64, NodeId)> = BTreeSet::new();

    for _ in 0..FAULT_MS {
        // Up to a majority down at once: the group stalls, and must recover afterwards.
        let max_down = cluster.members().len() / 2 + 1;
        cluster
            .inject_faults(&mut rng, max_down, &mut history.stats.faults)
            .expect("faults");
        if rng.gen_bool(MOVE_RATE) {
            move_members(
                &mut cluster,
                &mut rng,
                &mut next_node,
                &mut history.stats.moves,
            );
        }
        decommission_removed(&mut cluster, &mut history.stats.moves);
        let ids = cluster.ids();
        // A client proposing, and reading from any node, now and then.
        if rng.gen_bool(0.05) {
            let payload = vec![rng.gen::<u8>(); rng.gen_range(0..64)];
            let command = Register::command(next_id, &payload);
            if cluster.propose(next_id, command.clone()).is_ok() {
                history.proposed.insert(next_id, command);
                next_id += 1;
            }
        }
        if rng.gen_bool(0.01) {
            let node = ids[rng.gen_range(0..ids.len())];
            history.read(&mut cluster, node);
        }
        while let Some(&(at, id)) = quick_restarts.first() {
            if at > cluster.now() {
                break;
            }
            quick_restarts.pop_first();
            cluster.restart(id).expect("restart");
        }
        for voter in history.step(&mut cluster) {
            // Crash a node right after it granted a vote, and bring it back within the
            // election: a vote that did not survive would let it vote twice in one term.
            if rng.gen_bool(0.3) && ids.len() - cluster.live().len() < max_down {
                cluster.crash(voter);
                history.stats.crashes_after_vote += 1;
                quick_restarts.insert((cluster.now() + rng.gen_range(1..30), voter));
            }
        }
    }

    // Faults stop: heal, restart everyone, let the group converge. A final proposal proves
    // the healed group makes progress; retried under new ids until one is acknowledged.
    cluster.net.heal();
    for id in cluster.ids() {
        cluster.restart(id).expect("restart");
    }
    let final_ids = next_id;
    let mut settled = false;
    for _ in 0..SETTLE_MS {
        let final_acked = history.acked.range(final_ids..).next().is_some();
        if !final_acked && cluster.now() % 50 == 0 {
            let command = Register::command(next_id, b"final");
            if cluster.propose(next_id, command.clone()).is_ok() {
                history.proposed.insert(next_id, command);
                next_id += 1;
            }
        }
        history.step(&mut cluster);
        decommission_removed(&mut cluster, &mut history.stats.moves);
        let applied: BTreeSet<_> = (cluster.members().iter())
            .map(|&id| cluster.node(id).map(|n| n.applied()))
            .collect();
        if final_acked && applied.len() == 1 && cluster.is_settled() {
            settled = true;
            break;
        }
    }
    let ids = cluster.members().to_vec();
    // 6. Progress after healing.
    assert!(
        settled,
        "seed {seed}: the healed cluster did not converge in {SETTLE_MS} ms (nodes: {:?})",
        cluster
            .ids()
            .into_iter()
            .filter_map(|id| cluster.node(id))
            .map(|n| (
                n.id(),
                n.applied(),
                n.last_index(),
                n.leadership(),
                n.rejoin(),
                n.storage().conf_state()
            ))
            .collect::<Vec<_>>()
    );

    // 1. Every acknowledged proposal is on every replica, and replicas are identical.
    let reference = cluster.node(ids[0]).unwrap().machine().clone();
    for &id in &ids {
        let machine = cluster.node(id).unwrap().machine();
        assert_eq!(
            machine.snapshot(),
            reference.snapshot(),
            "seed {seed}: node {id} differs at the end"
        );
    }
    let applied: BTreeSet<_> = reference.ids.iter().copied().collect();
    for id in history.acked.keys() {
        assert!(
            applied.contains(id),
            "seed {seed}: acknowledged proposal {id} was lost"
        );
    }
    // 4. Acknowledged results are what applying the log in order computes.
    let mut replay = Register::default();
    for (position, id) in reference.ids.iter().enumerate() {
        let command = history
            .proposed
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: applied proposal {id} was never proposed"));
        let result = replay.apply(position as u64 + 1, command).unwrap();
        if let Some(acked) = history.acked.get(id) {
            assert_eq!(
                acked, &result,
                "seed {seed}: proposal {id} acknowledged with a result the log does not give"
            );
        }
    }
    assert_eq!(replay, reference);
    eprintln!(
        "seed {seed}: {} nodes, {} acknowledged, applied index {}, {:?}",
        ids.len(),
        history.acked.len(),
        cluster.node(ids[0]).unwrap().applied(),
        history.stats
    );
}

#[test]
fn seeds() {
    let seeds = Seeds {
        prefix: "LEAKBLOOM_SIM",
        default_count: DEFAULT_SEEDS,
        replay: "cargo test -p leakbloom-raft --test simulation",
    };
    seeds.run(run);
}
