//! Placement as membership changes: which nodes hold each shard's replicas while nodes join,
//! decommission and die, and the planner ([`plan`]) that moves them there one step at a time.
//!
//! The catalog leader calls [`plan`] about once a second with the facts it has (every node's
//! [`NodeState`], the placement, which shards' Raft groups match their placement) and carries
//! out the [`Moves`] it returns; the planner owns no clock and remembers nothing between
//! calls, so the same facts always give the same moves.
//!
//! # What is planned, in order
//! 1. **Repair**: a shard with fewer replicas on live nodes ([`NodeState::live`]) than the
//!    replication gets a replica on the least-loaded [`Active`](NodeState::Active) node not
//!    holding it, in place of one on a node that is gone (dead, decommissioned, joining,
//!    unknown), or added when there is none. The shards with the fewest live replicas go
//!    first.
//! 2. **Shed**: a shard with more replicas than the replication drops one (gone first, then
//!    decommissioning, then the most loaded active node); a replica on a decommissioning node
//!    is replaced like a gone one.
//! 3. **Spread**: while an active node holds two replicas more than another, one replica
//!    moves from the most loaded node to the least loaded one not holding that shard,
//!    preferring shards the giving node does not lead. At rest the replicas per active node
//!    are within one of each other.
//! 4. **Leaders**: the first replica of a list is the shard's preferred leader. It is moved to
//!    an active replica whenever it is on a node that is not active; and while an active node
//!    leads two shards more than another, a few shards per call ([`reorders`]) put another of
//!    their replicas first (along a chain of shards when no shard the one leads has a replica
//!    on the other).
//!
//! # Steps
//! Each change of a shard is one step: one node replaced by another in the same position,
//! one dropped, or one added at the end (with, where the first replica would otherwise not be
//! active, an active one moved to the front). So a group gains and loses at most one member
//! per change, and a live replica is only removed when another live one takes its place or
//! the shard keeps `replication` live replicas without it. Only settled shards (no move in
//! flight) change, and membership changes are bounded: after the plan at most `max_moves`
//! shards are unsettled (or as many as before, when more were already). Reorders move no data
//! and are not counted.
//!
//! # Caveats
//! - A list naming a node twice is read as its distinct nodes (a Raft group is a set of
//!   voters); a settled shard's list is written back without the repeat.
//! - `replication` 0 is read as 1: the planner never plans a shard down to no replica.
//! - A replica on a joining node (which should hold nothing) counts as gone, like one on a
//!   node the catalog does not know.
//! - With fewer active nodes than the replication, replicas stay where they are (a live one is
//!   never removed to make room) and new ones are added where a node is free.
//! - A replacement takes the position of the node it replaces, the first one too: the new
//!   replica is then the preferred leader while it still catches up. The node layer should
//!   not hand leadership to a replica that lags.
//! - Cost: each membership move scans the shards once per candidate node, each leadership
//!   chain is a breadth-first search over the active nodes. 4096 shards x 3 replicas on 20
//!   nodes, one dead: about 150 ms for the first call (16 moves, ~1100 leadership changes),
//!   6-7 ms for later ones, in the test profile (opt-level 1) on a 2-core machine.

use std::collections::{BTreeMap, BTreeSet};

use crate::key::{NodeId, ShardId};

/// Where a node is in its life in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Known but not yet taking replicas; holds nothing.
    Joining,
    /// Holds replicas and takes new ones: the only state placement moves replicas to.
    Active,
    /// Still holds and serves its replicas, which are being moved away.
    Decommissioning,
    /// Has left: whatever it held must be placed elsewhere.
    Decommissioned,
    /// Gone without leaving: its replicas are lost and are re-created first.
    Dead,
}

impl NodeState {
    /// Whether a replica on a node in this state holds the shard's data and votes in its
    /// group: active and decommissioning nodes. A shard counts as fully replicated by these.
    pub fn live(self) -> bool {
        matches!(self, NodeState::Active | NodeState::Decommissioning)
    }

    /// Whether a node in this state takes part in the cluster: it holds a replica of the
    /// cluster's metadata and its limits count (joining, active, decommissioning). A
    /// decommissioned or dead node does not, and never comes back under its id.
    pub fn in_cluster(self) -> bool {
        matches!(
            self,
            NodeState::Joining | NodeState::Active | NodeState::Decommissioning
        )
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Decommissioning => "decommissioning",
            NodeState::Decommissioned => "decommissioned",
            NodeState::Dead => "dead",
        })
    }
}

/// A node and its state, as the catalog records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node.
    pub id: NodeId,
    /// Its state.
    pub state: NodeState,
}

/// Shard -> replicas, indexed by shard; the first replica is the shard's preferred leader.
pub type Placement = Vec<Vec<NodeId>>;

/// What one call of [`plan`] changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// The shards whose replica list changes, ascending, each with its new list.
    pub changes: Vec<(ShardId, Vec<NodeId>)>,
}

impl Moves {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Writes the new lists into `placement` (shards it does not have are skipped).
    pub fn apply(&self, placement: &mut [Vec<NodeId>]) {
        for (shard, replicas) in &self.changes {
            if let Some(list) = placement.get_mut(*shard as usize) {
                list.clone_from(replicas);
            }
        }
    }
}

/// How many shards may have their preferred leader moved for balance in one call over
/// `shards` shards: a quarter and one, so leadership settles within a few calls without
/// every shard changing leader at once. A call's first chain of moves (module docs, point 4)
/// is made even when longer, so one call makes at most this many or one fewer than the
/// active nodes. Moves off nodes that are not active are not counted.
pub fn reorders(shards: usize) -> usize {
    shards / 4 + 1
}

/// The next changes towards a placement with every shard fully replicated on active nodes,
/// replicas and preferred leaders spread evenly (see the module docs for the order and the
/// rules). `placement[s]` is shard s's replicas, `settled[s]` whether its Raft group matches
/// them (missing entries: not settled); only settled shards change, and at most `max_moves`
/// shards are unsettled once the changes are made. Nodes missing from `nodes` are read as
/// dead; of two entries for one node the first counts. Ties go to the lower node id, then
/// the lower shard id.
pub fn plan(
    nodes: &[NodeEntry],
    placement: &[Vec<NodeId>],
    replication: usize,
    settled: &[bool],
    max_moves: usize,
) -> Moves {
    let mut planner = Planner::new(nodes, placement, replication, settled, max_moves);
    planner.repair();
    planner.shed();
    planner.spread();
    planner.lead();
    Moves {
        changes: (0..placement.len())
            .filter(|&s| planner.settled[s] && planner.lists[s] != placement[s])
            .map(|s| (s as ShardId, planner.lists[s].clone()))
            .collect(),
    }
}

/// Replicas per node: every node in `nodes` (0 when it holds none) and every other node the
/// placement names. A node named twice in one shard counts once.
pub fn replicas_per_node(
    nodes: &[NodeEntry],
    placement: &[Vec<NodeId>],
) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (node.id, 0)).collect();
    for list in placement {
        for node in distinct(list) {
            *counts.entry(node).or_default() += 1;
        }
    }
    counts
}

/// Preferred leaders per node (the first replica of each shard): every node in `nodes` (0 when
/// it leads none) and every other node the placement puts first.
pub fn leaders_per_node(nodes: &[NodeEntry], placement: &[Vec<NodeId>]) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (node.id, 0)).collect();
    for first in placement.iter().filter_map(|list| list.first()) {
        *counts.entry(*first).or_default() += 1;
    }
    counts
}

/// Whether [`plan`] would change nothing with every shard settled, whatever the bound: every
/// shard fully replicated, nothing left on nodes that are not active, replicas and leaders per
/// active node within one of each other, as far as any step can get there.
pub fn balanced(nodes: &[NodeEntry], placement: &[Vec<NodeId>], replication: usize) -> bool {
    // One move allowed is enough to tell: the first move any phase finds is made.
    let settled = vec![true; placement.len()];
    plan(nodes, placement, replication, &settled, 1).is_empty()
}

/// The bootstrap placement, as nodes lay it out when a cluster is created: the nodes sorted by
/// id (repeats dropped), shard s on nodes `(s + i) mod N` for `i < replication`, the first
/// being its preferred leader. The replication is capped at the node count; with no node,
/// every shard's list is empty.
pub fn initial(nodes: &[NodeId], shards: u32, replication: u32) -> Placement {
    let nodes: Vec<NodeId> = nodes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let count = nodes.len();
    let replication = (replication as usize).min(count);
    (0..shards as usize)
        .map(|s| (0..replication).map(|i| nodes[(s + i) % count]).collect())
        .collect()
}

/// `list` without repeats, in order of first appearance.
fn distinct(list: &[NodeId]) -> Vec<NodeId> {
    let mut seen = BTreeSet::new();
    list.iter()
        .copied()
        .filter(|node| seen.insert(*node))
        .collect()
}

/// The state of one [`plan`] call: the lists as planned so far and the load they put on the
/// active nodes.
struct Planner {
    /// Each node's state; nodes not in it are dead.
    states: BTreeMap<NodeId, NodeState>,
    /// Replication, at least 1.
    replication: usize,
    /// The lists as read (repeats dropped).
    before: Vec<Vec<NodeId>>,
    /// The lists as planned.
    lists: Vec<Vec<NodeId>>,
    /// Which shards may change.
    settled: Vec<bool>,
    /// Which shards' membership changed in this call (each changes once at most).
    moved: Vec<bool>,
    /// Which shards changed in this call in any way, reorders included.
    changed: Vec<bool>,
    /// Replicas per active node, as planned.
    load: BTreeMap<NodeId, usize>,
    /// Membership changes left in this call.
    budget: usize,
}

impl Planner {
    fn new(
        nodes: &[NodeEntry],
        placement: &[Vec<NodeId>],
        replication: usize,
        settled: &[bool],
        max_moves: usize,
    ) -> Planner {
        let mut states = BTreeMap::new();
        for node in nodes {
            states.entry(node.id).or_insert(node.state);
        }
        let lists: Vec<Vec<NodeId>> = placement.iter().map(|list| distinct(list)).collect();
        let settled: Vec<bool> = (0..lists.len())
            .map(|s| settled.get(s).copied().unwrap_or(false))
            .collect();
        let unsettled = settled.iter().filter(|s| !**s).count();
        let mut load: BTreeMap<NodeId, usize> = states
            .iter()
            .filter(|(_, state)| **state == NodeState::Active)
            .map(|(id, _)| (*id, 0))
            .collect();
        for node in lists.iter().flatten() {
            if let Some(count) = load.get_mut(node) {
                *count += 1;
            }
        }
        Planner {
            states,
            replication: replication.max(1),
            before: lists.clone(),
            moved: vec![false; lists.len()],
            changed: vec![false; lists.len()],
            lists,
            settled,
            load,
            budget: max_moves.saturating_sub(unsettled),
        }
    }

    fn state(&self, node: NodeId) -> NodeState {
        self.states.get(&node).copied().unwrap_or(NodeState::Dead)
    }

    fn active(&self, node: NodeId) -> bool {
        self.state(node) == NodeState::Active
    }

    fn live_count(&self, shard: usize) -> usize {
        let live = |node: &&NodeId| self.state(**node).live();
        self.lists[shard].iter().filter(live).count()
    }

    /// The first position in shard `shard`'s list whose node matches `which`.
    fn position(&self, shard: usize, which: impl Fn(NodeState) -> bool) -> Option<usize> {
        self.lists[shard]
            .iter()
            .position(|node| which(self.state(*node)))
    }

    /// Whether shard `shard` may take a membership change now.
    fn movable(&self, shard: usize) -> bool {
        self.budget > 0 && self.settled[shard] && !self.moved[shard]
    }

    /// The least-loaded active node not holding shard `shard` (ties: the lower id).
    fn target(&self, shard: usize) -> Option<NodeId> {
        let list = &self.lists[shard];
        self.load
            .iter()
            .filter(|(node, _)| !list.contains(node))
            .min_by_key(|(_, load)| **load)
            .map(|(node, _)| *node)
    }

    /// Records a membership change of shard `shard`: `added` takes a replica, `removed` loses
    /// one.
    fn step(&mut self, shard: usize, added: Option<NodeId>, removed: Option<NodeId>) {
        self.moved[shard] = true;
        self.changed[shard] = true;
        self.budget -= 1;
        if let Some(count) = added.and_then(|node| self.load.get_mut(&node)) {
            *count += 1;
        }
        if let Some(count) = removed.and_then(|node| self.load.get_mut(&node)) {
            *count -= 1;
        }
    }

    fn replace(&mut self, shard: usize, position: usize, node: NodeId) {
        let old = std::mem::replace(&mut self.lists[shard][position], node);
        self.step(shard, Some(node), Some(old));
    }

    fn remove(&mut self, shard: usize, position: usize) {
        let old = self.lists[shard].remove(position);
        self.step(shard, None, Some(old));
    }

    fn add(&mut self, shard: usize, node: NodeId) {
        self.lists[shard].push(node);
        self.step(shard, Some(node), None);
    }

    /// Phase 1: under-replicated shards, the fewest live replicas first, get a replica in place
    /// of a gone one, or an added one.
    fn repair(&mut self) {
        let mut urgent: Vec<(usize, usize)> = (0..self.lists.len())
            .map(|s| (self.live_count(s), s))
            .filter(|&(live, _)| live < self.replication)
            .collect();
        urgent.sort_unstable();
        for (_, shard) in urgent {
            if !self.movable(shard) {
                continue;
            }
            let Some(target) = self.target(shard) else {
                continue;
            };
            match self.position(shard, |state| !state.live()) {
                Some(gone) => self.replace(shard, gone, target),
                None => self.add(shard, target),
            }
        }
    }

    /// Phase 2: shards with more replicas than the replication drop one; replicas on
    /// decommissioning nodes are replaced.
    fn shed(&mut self) {
        for shard in 0..self.lists.len() {
            if !self.movable(shard) {
                continue;
            }
            if self.lists[shard].len() > self.replication {
                let victim = self.victim(shard);
                self.remove(shard, victim);
            } else if let Some(leaving) =
                self.position(shard, |state| state == NodeState::Decommissioning)
            {
                if let Some(target) = self.target(shard) {
                    self.replace(shard, leaving, target);
                }
            }
        }
    }

    /// The replica to drop from an over-replicated shard: one on a gone node, else on a
    /// decommissioning one, else on the most loaded active node (not the leader on a tie,
    /// then the lower id). With more replicas than the replication, either some node is gone
    /// or more than `replication` are live: no live replica the shard needs is dropped.
    fn victim(&self, shard: usize) -> usize {
        let rank = |(position, node): (usize, &NodeId)| {
            let class = match self.state(*node) {
                NodeState::Active => 2,
                NodeState::Decommissioning => 1,
                _ => 0,
            };
            let load = self.load.get(node).copied().unwrap_or(0);
            (
                class,
                std::cmp::Reverse(load),
                position == 0,
                *node,
                position,
            )
        };
        self.lists[shard]
            .iter()
            .enumerate()
            .min_by_key(|&entry| rank(entry))
            .map_or(0, |(position, _)| position)
    }

    /// Phase 3: replicas move from the most loaded active node to the least loaded while the
    /// two differ by two or more.
    fn spread(&mut self) {
        while self.budget > 0 {
            let Some((shard, position, to)) = self.spread_move() else {
                return;
            };
            self.replace(shard, position, to);
        }
    }

    /// The next spreading move: from the most loaded active node that has one, the shard and
    /// position to move and the node to move it to. The receiver is the least loaded node
    /// possible; a shard the donor does not lead is preferred.
    fn spread_move(&self) -> Option<(usize, usize, NodeId)> {
        let mut donors: Vec<(NodeId, usize)> = self.load.iter().map(|(n, l)| (*n, *l)).collect();
        donors.sort_by_key(|&(node, load)| (std::cmp::Reverse(load), node));
        donors.into_iter().find_map(|(donor, load)| {
            (0..self.lists.len())
                .filter(|&s| self.movable(s))
                .filter_map(|s| {
                    let position = self.lists[s].iter().position(|n| *n == donor)?;
                    let to = self.target(s)?;
                    let to_load = self.load[&to];
                    (to_load + 2 <= load).then_some(((to_load, position == 0, to, s), position))
                })
                .min()
                .map(|((_, _, to, shard), position)| (shard, position, to))
        })
    }

    /// Phase 4: no settled shard is led from a node that is not active when an active replica
    /// exists; then up to [`reorders`] shards move their leadership from the active node that
    /// leads the most to one that leads two fewer or less, directly or along a chain.
    fn lead(&mut self) {
        let mut leads: BTreeMap<NodeId, usize> = self.load.keys().map(|n| (*n, 0)).collect();
        for first in self.lists.iter().filter_map(|list| list.first()) {
            if let Some(count) = leads.get_mut(first) {
                *count += 1;
            }
        }
        for shard in 0..self.lists.len() {
            let list = &self.lists[shard];
            if !self.settled[shard] || list.first().is_none_or(|n| self.active(*n)) {
                continue;
            }
            // Prefer a replica that held the shard before this call (it has the data).
            let fresh = |node: &NodeId| !self.before[shard].contains(node);
            let best = (1..list.len())
                .filter(|&i| self.active(list[i]))
                .min_by_key(|&i| (fresh(&list[i]), leads[&list[i]], list[i]));
            if let Some(position) = best {
                *leads.get_mut(&list[position]).expect("active") += 1;
                self.promote(shard, position);
            }
        }
        // One chain is taken whatever its length (at most one step per active node), so
        // that a chain longer than the bound still happens; after it, only within the bound.
        let mut left = reorders(self.lists.len());
        let mut first = true;
        while let Some(path) = self.lead_path(&leads) {
            if !std::mem::take(&mut first) && path.len() > left {
                return;
            }
            left = left.saturating_sub(path.len());
            for &(shard, position) in &path {
                // Along a path only its two ends change their count.
                *leads.get_mut(&self.lists[shard][0]).expect("active") -= 1;
                *leads.get_mut(&self.lists[shard][position]).expect("active") += 1;
                self.promote(shard, position);
            }
        }
    }

    /// The next leadership balancing: reorders (shard, position of the new first replica)
    /// that take one leadership from the active node leading the most that can give one, and
    /// hand one to a node leading at least two fewer. Where no shard the giver leads has a
    /// replica on such a node, leadership passes along a chain: the giver's shard to a
    /// replica leading one fewer, one of that node's shards onwards, and so on. The shortest
    /// chain wins, then the receiver leading the fewest (ties: the lower node id, then the
    /// chain found first, through lower node ids and shard ids).
    fn lead_path(&self, leads: &BTreeMap<NodeId, usize>) -> Option<Vec<(usize, usize)>> {
        // Who may hand leadership to whom: shard s led by u with v among its replicas.
        let mut edges: BTreeMap<NodeId, Vec<(NodeId, usize, usize)>> = BTreeMap::new();
        for (s, list) in self.lists.iter().enumerate() {
            if !self.settled[s] || self.changed[s] || !list.first().is_some_and(|n| self.active(*n))
            {
                continue;
            }
            for (i, to) in list.iter().enumerate().skip(1) {
                if leads.contains_key(to) {
                    edges.entry(list[0]).or_default().push((*to, s, i));
                }
            }
        }
        let mut givers: Vec<(NodeId, usize)> = leads.iter().map(|(n, c)| (*n, *c)).collect();
        givers.sort_by_key(|&(node, count)| (std::cmp::Reverse(count), node));
        givers.into_iter().find_map(|(giver, count)| {
            // Breadth first from the giver: how each node was first reached.
            let mut reached: BTreeMap<NodeId, Option<(NodeId, usize, usize)>> =
                BTreeMap::from([(giver, None)]);
            let mut frontier = vec![giver];
            let mut best: Option<(usize, NodeId)> = None;
            while !frontier.is_empty() && best.is_none() {
                let mut next = Vec::new();
                for from in frontier {
                    for &(to, s, i) in edges.get(&from).into_iter().flatten() {
                        if reached.contains_key(&to) {
                            continue;
                        }
                        reached.insert(to, Some((from, s, i)));
                        next.push(to);
                        let candidate = (leads[&to], to);
                        if candidate.0 + 2 <= count && best.is_none_or(|best| candidate < best) {
                            best = Some(candidate);
                        }
                    }
                }
                frontier = next;
            }
            let (_, mut node) = best?;
            let mut path = Vec::new();
            while let Some(&Some((from, s, i))) = reached.get(&node) {
                path.push((s, i));
                node = from;
            }
            path.reverse();
            Some(path)
        })
    }

    /// Moves shard `shard`'s replica at `position` to the front, the others keeping their order.
    fn promote(&mut self, shard: usize, position: usize) {
        let node = self.lists[shard].remove(position);
        self.lists[shard].insert(0, node);
        self.changed[shard] = true;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use NodeState::{Active, Dead, Decommissioned, Decommissioning, Joining};

    /// Nodes `ids`, all in `state`.
    fn all(ids: impl IntoIterator<Item = NodeId>, state: NodeState) -> Vec<NodeEntry> {
        ids.into_iter().map(|id| NodeEntry { id, state }).collect()
    }

    /// `nodes` with node `id` put in `state`.
    fn with(mut nodes: Vec<NodeEntry>, id: NodeId, state: NodeState) -> Vec<NodeEntry> {
        for node in nodes.iter_mut().filter(|node| node.id == id) {
            node.state = state;
        }
        nodes
    }

    /// A node's state as the planner reads it: the first entry, else dead.
    fn state_of(nodes: &[NodeEntry], id: NodeId) -> NodeState {
        nodes
            .iter()
            .find(|node| node.id == id)
            .map_or(Dead, |node| node.state)
    }

    fn unsettled(placement: &[Vec<NodeId>], settled: &[bool]) -> usize {
        (0..placement.len())
            .filter(|&s| settled.get(s) != Some(&true))
            .count()
    }

    /// Whether `moves` keeps the planner's promises for these facts; returns how many of the
    /// changes move data (change membership).
    fn check(
        nodes: &[NodeEntry],
        placement: &[Vec<NodeId>],
        replication: usize,
        settled: &[bool],
        max_moves: usize,
        moves: &Moves,
    ) -> usize {
        let rf = replication.max(1);
        let live = |list: &[NodeId]| list.iter().filter(|n| state_of(nodes, **n).live()).count();
        let mut membership = 0;
        let mut last = None;
        for (shard, new) in &moves.changes {
            let s = *shard as usize;
            assert!(
                last < Some(*shard),
                "shards ascending, each once: {moves:?}"
            );
            last = Some(*shard);
            assert!(settled.get(s) == Some(&true), "shard {s} is not settled");
            assert_ne!(
                &placement[s], new,
                "shard {s}: a change that changes nothing"
            );
            assert_eq!(distinct(new), *new, "shard {s}: a node twice in {new:?}");
            let old = distinct(&placement[s]);
            let added: Vec<_> = new.iter().filter(|n| !old.contains(n)).collect();
            let removed: Vec<_> = old.iter().filter(|n| !new.contains(n)).collect();
            let step = format!("shard {s}: {old:?} -> {new:?}");
            assert!(
                added.len() <= 1 && removed.len() <= 1,
                "more than one step: {step}"
            );
            assert!(
                added.iter().all(|n| state_of(nodes, **n) == Active),
                "{step}"
            );
            if added.is_empty() && !removed.is_empty() {
                assert!(
                    old.len() > rf,
                    "dropped at or below the replication: {step}"
                );
            }
            if removed.is_empty() && !added.is_empty() {
                assert!(old.len() < rf, "added at or above the replication: {step}");
            }
            assert!(
                live(new) >= live(&old).min(rf),
                "lost a live replica: {step}"
            );
            if new.iter().any(|n| state_of(nodes, *n) == Active) {
                assert_eq!(state_of(nodes, new[0]), Active, "leader not active: {step}");
            }
            if !added.is_empty() || !removed.is_empty() {
                membership += 1;
            }
        }
        // Settled shards left as they are already have an active leader where they can.
        for (s, list) in placement.iter().enumerate() {
            let kept = !moves.changes.iter().any(|(shard, _)| *shard as usize == s);
            if kept
                && settled.get(s) == Some(&true)
                && list.iter().any(|n| state_of(nodes, *n) == Active)
            {
                assert_eq!(state_of(nodes, list[0]), Active, "shard {s}: {list:?} kept");
            }
        }
        let before = unsettled(placement, settled);
        assert!(
            before + membership <= max_moves.max(before),
            "{membership} moves with {before} in flight and at most {max_moves}"
        );
        membership
    }

    /// Plans and applies rounds, every shard settled between them, until nothing changes;
    /// checks every round. Returns the rounds that changed something and the most moves in
    /// one round.
    fn converge(
        nodes: &[NodeEntry],
        placement: &mut Placement,
        replication: usize,
        max_moves: usize,
        rounds: usize,
    ) -> (usize, usize) {
        let settled = vec![true; placement.len()];
        let mut most = 0;
        for round in 0..rounds {
            let moves = plan(nodes, placement, replication, &settled, max_moves);
            if moves.is_empty() {
                assert!(balanced(nodes, placement, replication));
                return (round, most);
            }
            most = most.max(check(
                nodes,
                placement,
                replication,
                &settled,
                max_moves,
                &moves,
            ));
            moves.apply(placement);
        }
        panic!("no rest after {rounds} rounds: {placement:?}");
    }

    /// The spread of the non-zero counts of active `nodes`: (fewest, most).
    fn spread_of(counts: &BTreeMap<NodeId, usize>, nodes: &[NodeEntry]) -> (usize, usize) {
        let active = nodes.iter().filter(|n| n.state == Active);
        let counts: Vec<usize> = active.map(|n| counts[&n.id]).collect();
        (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        )
    }

    #[test]
    fn initial_reproduces_the_bootstrap_layout() {
        assert_eq!(
            initial(&[3, 1, 2], 4, 2),
            [vec![1, 2], vec![2, 3], vec![3, 1], vec![1, 2]]
        );
        let five = initial(&[5, 4, 3, 2, 1, 1], 16, 3);
        for (s, list) in five.iter().enumerate() {
            let expected: Vec<NodeId> = (0..3).map(|i| (s + i) as NodeId % 5 + 1).collect();
            assert_eq!(*list, expected, "shard {s}");
        }
        // More replicas than nodes: each node once; no node: empty lists.
        assert_eq!(initial(&[7, 9], 2, 3), [vec![7, 9], vec![9, 7]]);
        assert_eq!(initial(&[], 2, 3), [Vec::<NodeId>::new(), Vec::new()]);
    }

    #[test]
    fn the_bootstrap_layout_is_balanced_and_counted() {
        let nodes = all(1..=5, Active);
        let placement = initial(&[1, 2, 3, 4, 5], 16, 3);
        assert!(balanced(&nodes, &placement, 3));
        let replicas = replicas_per_node(&nodes, &placement);
        assert_eq!(
            replicas.values().collect::<Vec<_>>(),
            [&10, &10, &10, &9, &9]
        );
        let leaders = leaders_per_node(&nodes, &placement);
        assert_eq!(leaders.values().collect::<Vec<_>>(), [&4, &3, &3, &3, &3]);
        // A joining node counts, with nothing; a node only the placement names too.
        let mut joining = with(nodes.clone(), 5, Joining);
        joining.push(NodeEntry {
            id: 6,
            state: Joining,
        });
        let placement = [vec![1, 9, 9], vec![]];
        let replicas = replicas_per_node(&joining, &placement);
        assert_eq!((replicas[&6], replicas[&9], replicas[&1]), (0, 1, 1));
        let leaders = leaders_per_node(&joining, &placement);
        assert_eq!((leaders[&1], leaders[&6], leaders.get(&9)), (1, 0, None));
    }

    #[test]
    fn three_nodes_grow_to_five_with_even_replicas_and_leaders() {
        let mut placement = initial(&[1, 2, 3], 16, 3);
        let settled = [true; 16];
        // Nodes 4 and 5 join: nothing moves until they are active.
        let joining = [all(1..=3, Active), all(4..=5, Joining)].concat();
        assert!(plan(&joining, &placement, 3, &settled, 4).is_empty());
        assert!(balanced(&joining, &placement, 3));

        let nodes = all(1..=5, Active);
        assert!(!balanced(&nodes, &placement, 3));
        let (rounds, most) = converge(&nodes, &mut placement, 3, 4, 20);
        // 48 replicas, 9.6 per node: 19 move, 4 per round, leaders settling meanwhile.
        assert!(rounds <= 6, "{rounds} rounds");
        assert_eq!(most, 4);
        assert!(placement.iter().all(|list| list.len() == 3));
        let replicas = replicas_per_node(&nodes, &placement);
        assert_eq!(spread_of(&replicas, &nodes), (9, 10), "{replicas:?}");
        let leaders = leaders_per_node(&nodes, &placement);
        assert_eq!(spread_of(&leaders, &nodes), (3, 4), "{leaders:?}");
    }

    #[test]
    fn decommissioning_two_of_five_leaves_three_nodes_holding_everything() {
        let mut placement = initial(&[1, 2, 3, 4, 5], 16, 3);
        let nodes = with(
            with(all(1..=5, Active), 2, Decommissioning),
            4,
            Decommissioning,
        );
        // 19 replicas to move off, 3 per round.
        let (rounds, _) = converge(&nodes, &mut placement, 3, 3, 30);
        assert!(rounds <= 8, "{rounds} rounds");
        let replicas = replicas_per_node(&nodes, &placement);
        assert_eq!(
            replicas.values().collect::<Vec<_>>(),
            [&16, &0, &16, &0, &16]
        );
        let leaders = leaders_per_node(&nodes, &placement);
        assert_eq!(spread_of(&leaders, &nodes), (5, 6), "{leaders:?}");
        // They are gone for good: nothing left to do.
        let gone = with(with(nodes, 2, Decommissioned), 4, Decommissioned);
        assert!(balanced(&gone, &placement, 3));
    }

    #[test]
    fn a_dead_nodes_replicas_are_recreated_first() {
        let mut placement = initial(&[1, 2, 3, 4, 5, 6], 12, 3);
        // Shard 0 is on 1, 2, 3: with 2 and 3 dead it has one live replica left.
        let nodes = with(
            with(with(all(1..=6, Active), 2, Dead), 3, Dead),
            5,
            Decommissioning,
        );
        let settled = [true; 12];
        let moves = plan(&nodes, &placement, 3, &settled, 2);
        assert_eq!(check(&nodes, &placement, 3, &settled, 2, &moves), 2);
        // The shards with one live replica (0 and 1: on 1, 2, 3 and 2, 3, 4) go first, and
        // each gets one replica back in place of a dead one, on the least loaded nodes.
        let (moved, reordered): (Vec<_>, Vec<_>) = moves.changes.iter().partition(|(s, new)| {
            let old = &placement[*s as usize];
            new.iter().any(|n| !old.contains(n))
        });
        assert_eq!(moved, [&(0, vec![1, 4, 3]), &(1, vec![1, 3, 4])]);
        // The others only move their preferred leader: off the dead and leaving nodes, and
        // a few for balance.
        for (s, new) in reordered {
            let old = &placement[*s as usize];
            assert!(old.iter().all(|n| new.contains(n)), "shard {s}");
        }

        // Until no replica is on a dead node, no replica leaves the decommissioning one.
        let mut settled = settled.to_vec();
        for _ in 0..20 {
            let moves = plan(&nodes, &placement, 3, &settled, 2);
            check(&nodes, &placement, 3, &settled, 2, &moves);
            let on_dead = |p: &Placement| p.iter().flatten().any(|n| [2, 3].contains(n));
            let dead_before = on_dead(&placement);
            let held_by_5 = replicas_per_node(&nodes, &placement)[&5];
            moves.apply(&mut placement);
            if dead_before {
                assert_eq!(replicas_per_node(&nodes, &placement)[&5], held_by_5);
            }
            settled = vec![true; 12];
        }
        assert!(balanced(&nodes, &placement, 3));
        assert!(placement.iter().flatten().all(|n| [1, 4, 6].contains(n)));
    }

    #[test]
    fn a_larger_cluster_grows_loses_a_node_and_shrinks() {
        let mut placement = initial(&[1, 2, 3, 4, 5], 256, 3);
        let mut nodes = all(1..=9, Active);
        // 768 replicas: about 341 move to the four new nodes, 8 per round.
        let (rounds, most) = converge(&nodes, &mut placement, 3, 8, 100);
        assert!(rounds <= 45 && most == 8, "{rounds} rounds");
        for (what, id, state) in [("dies", 3, Dead), ("leaves", 7, Decommissioning)] {
            nodes = with(nodes, id, state);
            // About 85 replicas to re-create or move off, and the rest to even out.
            let (rounds, _) = converge(&nodes, &mut placement, 3, 8, 100);
            assert!(rounds <= 15, "node {id} {what}: {rounds} rounds");
            assert!(
                placement.iter().flatten().all(|n| *n != id),
                "node {id} {what}"
            );
            let replicas = replicas_per_node(&nodes, &placement);
            let leaders = leaders_per_node(&nodes, &placement);
            assert!(matches!(spread_of(&replicas, &nodes), (lo, hi) if hi - lo <= 1));
            assert!(matches!(spread_of(&leaders, &nodes), (lo, hi) if hi - lo <= 1));
        }
    }

    #[test]
    fn moves_in_flight_are_bounded_and_unsettled_shards_wait() {
        let placement = initial(&[1, 2, 3], 8, 3);
        let nodes = all(1..=4, Active);
        // Two shards are moving already: with at most three, one more may start.
        let mut settled = [true; 8];
        settled[0] = false;
        settled[5] = false;
        let moves = plan(&nodes, &placement, 3, &settled, 3);
        assert_eq!(check(&nodes, &placement, 3, &settled, 3, &moves), 1);
        assert!(moves.changes.iter().all(|(s, _)| *s != 0 && *s != 5));
        // Already over the bound: no new move; a settled list shorter than the placement
        // counts the rest as unsettled.
        let moves = plan(&nodes, &placement, 3, &settled, 1);
        assert_eq!(check(&nodes, &placement, 3, &settled, 1, &moves), 0);
        let moves = plan(&nodes, &placement, 3, &[true; 6], 3);
        assert_eq!(check(&nodes, &placement, 3, &[true; 6], 3, &moves), 1);
    }

    #[test]
    fn a_leader_on_a_leaving_node_moves_without_moving_data() {
        // Node 1 is leaving and every node is full: no move is possible or allowed, yet
        // shards it leads get an active leader (the one leading the fewest).
        let placement = vec![vec![1, 2, 3], vec![1, 3, 2], vec![2, 1, 3]];
        let nodes = with(all(1..=3, Active), 1, Decommissioning);
        let moves = plan(&nodes, &placement, 3, &[true; 3], 0);
        check(&nodes, &placement, 3, &[true; 3], 0, &moves);
        assert_eq!(moves.changes, [(0, vec![3, 1, 2]), (1, vec![2, 1, 3])]);
        // An unsettled shard keeps its list, whatever its leader.
        let moves = plan(&nodes, &placement, 3, &[false, true, true], 0);
        assert_eq!(moves.changes, [(1, vec![3, 1, 2])]);
    }

    #[test]
    fn fewer_active_nodes_than_the_replication_keep_every_live_replica() {
        // Two active nodes, three replicas wanted: the decommissioning node keeps its
        // replica, the dead one's is replaced, the short list grows, and a shard that
        // would need a third active node keeps its two.
        let nodes = [all(1..=2, Active), all([3], Decommissioning)].concat();
        let placement = vec![vec![1, 2, 3], vec![2, 9], vec![3]];
        let settled = [true; 3];
        let moves = plan(&nodes, &placement, 3, &settled, 10);
        check(&nodes, &placement, 3, &settled, 10, &moves);
        assert_eq!(moves.changes, [(1, vec![2, 1]), (2, vec![1, 3])]);
        let mut placement = placement;
        converge(&nodes, &mut placement, 3, 10, 10);
        assert_eq!(placement, [vec![1, 2, 3], vec![2, 1], vec![1, 3, 2]]);
    }

    #[test]
    fn extra_replicas_are_dropped_the_gone_ones_first() {
        let nodes = [all(1..=4, Active), all([5], Decommissioning)].concat();
        let placement = vec![vec![1, 2, 3, 4], vec![5, 2, 8, 3, 4], vec![5, 1, 2, 3]];
        let settled = [true; 3];
        let moves = plan(&nodes, &placement, 3, &settled, 10);
        check(&nodes, &placement, 3, &settled, 10, &moves);
        // Shard 0: the most loaded non-leader (2, 3, 4 hold three each: the lowest id);
        // shard 1: the unknown node 8; shard 2: the decommissioning node, once the leader.
        assert_eq!(
            moves.changes,
            [
                (0, vec![1, 3, 4]),
                (1, vec![2, 5, 3, 4]),
                (2, vec![1, 2, 3]),
            ]
        );
    }

    #[test]
    fn degenerate_inputs_plan_without_panicking() {
        let some = all(1..=3, Active);
        // No node, no shard, no replication, placement shorter than settled.
        assert!(plan(&[], &[], 3, &[true], 5).is_empty());
        assert!(plan(&[], &[vec![1, 2]], 3, &[true], 5).is_empty());
        assert!(plan(&some, &[], 0, &[], 0).is_empty());
        // Replication 0 is 1: an empty shard gets a replica, others keep one.
        let moves = plan(&some, &[vec![], vec![2, 3]], 0, &[true, true, true], 5);
        assert_eq!(moves.changes, [(0, vec![1]), (1, vec![2])]);
        // A node twice is read once, and written back once.
        let moves = plan(&some, &[vec![1, 1, 2, 3]], 3, &[true], 0);
        assert_eq!(moves.changes, [(0, vec![1, 2, 3])]);
        // Two entries for one node: the first counts.
        let twice = [some.clone(), all([1], Dead)].concat();
        assert!(balanced(&twice, &initial(&[1, 2, 3], 3, 3), 3));
    }

    /// Random facts: up to 8 nodes in random states, placements naming unknown nodes and
    /// repeats, random settled flags of any length.
    fn random_facts(rng: &mut StdRng) -> (Vec<NodeEntry>, Placement, usize, Vec<bool>, usize) {
        let states = [
            Joining,
            Active,
            Active,
            Active,
            Decommissioning,
            Decommissioned,
            Dead,
        ];
        let nodes: Vec<NodeEntry> = (1..=rng.gen_range(0..=8u64))
            .filter_map(|id| {
                let state = states[rng.gen_range(0..states.len())];
                rng.gen_bool(0.9).then_some(NodeEntry { id, state })
            })
            .collect();
        let shards = rng.gen_range(0..24);
        let placement: Placement = (0..shards)
            .map(|_| {
                (0..rng.gen_range(0..6))
                    .map(|_| rng.gen_range(1..=10))
                    .collect()
            })
            .collect();
        let replication = rng.gen_range(0..5);
        let settled: Vec<bool> = (0..rng.gen_range(0..=shards + 2))
            .map(|_| rng.gen_bool(0.8))
            .collect();
        (nodes, placement, replication, settled, rng.gen_range(0..8))
    }

    #[test]
    fn any_facts_give_distinct_one_step_changes_of_settled_shards_within_the_bound_and_the_same_twice(
    ) {
        for seed in 0..10000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (nodes, placement, replication, settled, max_moves) = random_facts(&mut rng);
            let moves = plan(&nodes, &placement, replication, &settled, max_moves);
            check(&nodes, &placement, replication, &settled, max_moves, &moves);
            let again = plan(&nodes, &placement, replication, &settled, max_moves);
            assert_eq!(moves, again, "seed {seed}: not deterministic");
            let everything = vec![true; placement.len()];
            let unbounded = plan(&nodes, &placement, replication, &everything, usize::MAX);
            assert_eq!(
                balanced(&nodes, &placement, replication),
                unbounded.is_empty(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn any_placement_comes_to_rest_fully_replicated_and_even() {
        for seed in 0..1000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut nodes, mut placement, replication, _, max_moves) = random_facts(&mut rng);
            let replication = replication.max(1);
            // Enough active nodes for the replication.
            let ids = 20..20 + replication as NodeId + rng.gen_range(0..3);
            nodes.extend(all(ids, Active));
            converge(&nodes, &mut placement, replication, max_moves.max(1), 400);
            let active: Vec<NodeId> = nodes
                .iter()
                .filter(|n| n.state == Active)
                .map(|n| n.id)
                .collect();
            for list in &placement {
                assert_eq!(list.len(), replication, "seed {seed}: {placement:?}");
                assert!(list.iter().all(|n| active.contains(n)), "seed {seed}");
            }
            let replicas = replicas_per_node(&nodes, &placement);
            let (fewest, most) = spread_of(&replicas, &nodes);
            assert!(most - fewest <= 1, "seed {seed}: {replicas:?}");
            let leaders = leaders_per_node(&nodes, &placement);
            let (fewest, most) = spread_of(&leaders, &nodes);
            assert!(
                most - fewest <= 1,
                "seed {seed}: leaders {leaders:?} {placement:?}"
            );
        }
    }
}
