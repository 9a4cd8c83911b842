//! The shard map: which nodes hold each shard's replicas, which one leads it, and where each
//! node listens, merged from the nodes' own views ([`NodeView`], what a node answers to
//! `leakbloom.v1.Cluster/GetShardMap`); and the choice of the node a shard's keys go to.
//!
//! # Epochs
//! Every map carries the **epoch** of its placement (which nodes exist, which replicas each
//! shard has). It grows with every placement change, so of two views the one with the higher
//! epoch is right about placement; leaders move within an epoch and are compared by the Raft
//! term they were seen in. A map is never replaced by one of a lower epoch
//! ([`ShardMap::is_newer_than`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::key::{NodeId, ShardId};

/// One node's view of the cluster, as it answers `GetShardMap`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeView {
    /// The node that answered.
    pub node: NodeId,
    /// Its placement epoch.
    pub epoch: u64,
    /// Shards of the key space.
    pub shards: u32,
    /// Most keys the node accepts per request.
    pub max_batch: usize,
    /// Client addresses it knows (empty: not heard yet).
    pub addresses: Vec<(NodeId, String)>,
    /// One entry per shard, in shard order.
    pub shard: Vec<ShardView>,
}

/// One shard as one node sees it, or as a merged map holds it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShardView {
    /// Nodes holding a replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader the node knows.
    pub leader: Option<NodeId>,
    /// The Raft term that knowledge is from (0: a hint from a node without a replica).
    pub term: u64,
}

/// The cluster as a router or client last learned it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMap {
    /// The placement epoch: the highest of the views merged.
    pub epoch: u64,
    /// Shard count of the key space.
    pub shards: u32,
    /// Keys the nodes accept per request (the smallest limit any node gave).
    pub max_batch: usize,
    /// Client address of every node whose address is known.
    pub addresses: BTreeMap<NodeId, String>,
    /// Nodes that answered the last refresh (the others are skipped where a choice exists).
    pub up: BTreeSet<NodeId>,
    /// Indexed by shard.
    pub shard: Vec<ShardView>,
}

/// Why views could not be merged into a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No node answered.
    #[error("no node answered")]
    NoAnswer,
    /// Nodes disagree on the shard count: they belong to different clusters.
    #[error(
        "nodes disagree on the shard count ({0} and {1}): the addresses given name nodes of \
         different clusters"
    )]
    Shards(u32, u32),
    /// A node's answer is malformed.
    #[error("node {node} answered a malformed shard map: {reason}")]
    Malformed {
        /// The node.
        node: NodeId,
        /// What is wrong.
        reason: String,
    },
}

impl ShardMap {
    /// Merges the nodes' views: placement (replicas) from the views of the highest epoch,
    /// each node's own address as it gives it (else as another node heard it), each shard's
    /// leader from the view with the highest term. `up` is every node that answered.
    pub fn merge(views: &[NodeView]) -> Result<ShardMap, MapError> {
        let first = views.first().ok_or(MapError::NoAnswer)?;
        let epoch = views.iter().map(|view| view.epoch).max().unwrap_or(0);
        let mut map = ShardMap {
            epoch,
            shards: first.shards,
            max_batch: usize::MAX,
            addresses: BTreeMap::new(),
            up: BTreeSet::new(),
            shard: Vec::new(),
        };
        for view in views {
            if view.shards != map.shards {
                return Err(MapError::Shards(map.shards, view.shards));
            }
            if view.shard.len() != view.shards as usize || view.shards == 0 {
                return Err(MapError::Malformed {
                    node: view.node,
                    reason: format!(
                        "{} shard entries for {} shards",
                        view.shard.len(),
                        view.shards
                    ),
                });
            }
            map.up.insert(view.node);
            map.max_batch = map.max_batch.min(view.max_batch.max(1));
            for (id, address) in &view.addresses {
                if address.is_empty() {
                    continue;
                }
                // A node's word on its own address beats what others heard.
                if *id == view.node || !map.addresses.contains_key(id) {
                    map.addresses.insert(*id, address.clone());
                }
            }
        }
        map.shard = (0..map.shards as usize)
            .map(|shard| {
                let best = views
                    .iter()
                    .map(|view| &view.shard[shard])
                    .filter(|view| view.leader.is_some())
                    .max_by_key(|view| view.term);
                let replicas = views
                    .iter()
                    .filter(|view| view.epoch == epoch)
                    .map(|view| &view.shard[shard].replicas)
                    .find(|replicas| !replicas.is_empty())
                    .cloned()
                    .unwrap_or_default();
                ShardView {
                    replicas,
                    leader: best.and_then(|view| view.leader),
                    term: best.map_or(0, |view| view.term),
                }
            })
            .collect();
        Ok(map)
    }

    /// Whether this map may replace `old`: its placement epoch is not older.
    pub fn is_newer_than(&self, old: &ShardMap) -> bool {
        self.epoch >= old.epoch
    }

    /// Every node with a known address.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.addresses.keys().copied()
    }

    /// Whether `node` can be sent to: its address is known and it answered the last refresh.
    pub fn reachable(&self, node: NodeId) -> bool {
        self.addresses.contains_key(&node) && self.up.contains(&node)
    }

    /// The node to send shard `shard`'s writes and linearizable reads to: its leader when that
    /// node is reachable, else the first reachable replica (which forwards to the leader, or
    /// answers UNAVAILABLE while there is none).
    pub fn leader_target(&self, shard: ShardId) -> Option<NodeId> {
        let entry = &self.shard[shard as usize];
        entry
            .leader
            .filter(|&leader| self.reachable(leader))
            .or_else(|| self.replica_target(shard, 0))
    }

    /// A node that can take an any-replica read of every shard at once: the first reachable
    /// node at or after position `spread` that holds a replica of every shard (with
    /// replication equal to the node count, every node).
    pub fn whole_target(&self, spread: usize) -> Option<NodeId> {
        self.whole_target_avoiding(spread, &[])
    }

    /// [`whole_target`](Self::whole_target), never one of the nodes in `avoid`.
    pub fn whole_target_avoiding(&self, spread: usize, avoid: &[NodeId]) -> Option<NodeId> {
        self.rotated(spread).find(|&node| {
            !avoid.contains(&node)
                && self.reachable(node)
                && self.shard.iter().all(|s| s.replicas.contains(&node))
        })
    }

    /// The node to send shard `shard`'s any-replica reads to: the first reachable replica
    /// at or after position `spread` in the node order, so that different `spread` values
    /// share the load, and one value sends every shard a node holds to that node.
    pub fn replica_target(&self, shard: ShardId, spread: usize) -> Option<NodeId> {
        self.replica_target_avoiding(shard, spread, &[])
    }

    /// [`replica_target`](Self::replica_target), never one of the nodes in `avoid`; `None`
    /// when every replica of the shard is avoided or has no known address.
    pub fn replica_target_avoiding(
        &self,
        shard: ShardId,
        spread: usize,
        avoid: &[NodeId],
    ) -> Option<NodeId> {
        let entry = &self.shard[shard as usize];
        let candidate = |node: &NodeId| entry.replicas.contains(node) && !avoid.contains(node);
        let reachable = self
            .rotated(spread)
            .find(|node| candidate(node) && self.reachable(*node));
        // Nothing reachable: try a replica anyway (the refresh may be stale).
        reachable.or_else(|| {
            entry
                .replicas
                .iter()
                .copied()
                .find(|node| candidate(node) && self.addresses.contains_key(node))
        })
    }

    /// Every node with a known address, starting at position `spread` (modulo the count).
    pub fn rotated(&self, spread: usize) -> impl Iterator<Item = NodeId> + '_ {
        let nodes: Vec<NodeId> = self.nodes().collect();
        let count = nodes.len();
        (0..count).map(move |i| nodes[(spread + i) % count])
    }

    /// Every node with a known address, those that answered the last refresh first, starting
    /// at position `spread`: the order to try nodes in for a call any node serves.
    pub fn any_node_order(&self, spread: usize) -> Vec<NodeId> {
        let mut order: Vec<NodeId> = self.rotated(spread).collect();
        order.sort_by_key(|node| !self.up.contains(node));
        order
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Node `node`'s view of three nodes, shard `s` led by `leaders[s].0` seen in term
    /// `leaders[s].1`; it knows its own address and node 3's.
    pub fn view(node: NodeId, leaders: &[(NodeId, u64)]) -> NodeView {
        NodeView {
            node,
            epoch: 1,
            shards: leaders.len() as u32,
            max_batch: 1000,
            addresses: (1..=3)
                .map(|id| {
                    let known = id == node || id == 3;
                    (
                        id,
                        if known {
                            format!("n{id}:{}", 50000 + node)
                        } else {
                            String::new()
                        },
                    )
                })
                .collect(),
            shard: leaders
                .iter()
                .map(|&(leader, term)| ShardView {
                    replicas: vec![1, 2, 3],
                    leader: (leader != 0).then_some(leader),
                    term,
                })
                .collect(),
        }
    }

    #[test]
    fn merge_takes_own_addresses_and_newest_leaders() {
        let map =
            ShardMap::merge(&[view(1, &[(1, 5), (0, 0)]), view(2, &[(2, 6), (3, 2)])]).unwrap();
        assert_eq!(map.shards, 2);
        assert_eq!(map.addresses[&1], "n1:50001");
        assert_eq!(map.addresses[&2], "n2:50002");
        // Node 3 did not answer: the first address heard for it stays.
        assert_eq!(map.addresses[&3], "n3:50001");
        assert_eq!(map.shard[0].leader, Some(2));
        assert_eq!(map.shard[0].term, 6);
        assert_eq!(map.shard[1].leader, Some(3));
        assert_eq!(map.up, BTreeSet::from([1, 2]));
        assert_eq!(map.max_batch, 1000);
        assert_eq!(map.epoch, 1);
    }

    #[test]
    fn merge_refuses_mixed_clusters_and_nothing() {
        assert_eq!(ShardMap::merge(&[]), Err(MapError::NoAnswer));
        let other = view(2, &[(1, 1), (1, 1), (1, 1)]);
        assert_eq!(
            ShardMap::merge(&[view(1, &[(1, 1)]), other]),
            Err(MapError::Shards(1, 3))
        );
    }

    #[test]
    fn placement_comes_from_the_newest_epoch() {
        let old = view(1, &[(1, 5)]);
        let mut new = view(2, &[(2, 4)]);
        new.epoch = 2;
        new.shard[0].replicas = vec![2, 3, 4];
        let map = ShardMap::merge(&[old.clone(), new]).unwrap();
        assert_eq!(map.epoch, 2);
        assert_eq!(map.shard[0].replicas, vec![2, 3, 4]);
        // Leaders still come from the highest term, whatever the epoch.
        assert_eq!(map.shard[0].leader, Some(1));
        let stale = ShardMap::merge(&[old]).unwrap();
        assert!(map.is_newer_than(&stale) && !stale.is_newer_than(&map));
    }

    #[test]
    fn targets_skip_nodes_that_did_not_answer() {
        let map = ShardMap::merge(&[view(1, &[(3, 4)]), view(2, &[(3, 4)])]).unwrap();
        // The leader, node 3, is down: the first reachable replica takes it.
        assert_eq!(map.leader_target(0), Some(1));
        assert_eq!(map.replica_target(0, 0), Some(1));
        assert_eq!(map.replica_target(0, 1), Some(2));
        // Position 2 is node 3, down: the next one.
        assert_eq!(map.replica_target(0, 2), Some(1));
        assert_eq!(map.whole_target(1), Some(2));
        assert_eq!(map.whole_target(2), Some(1));
        assert_eq!(map.any_node_order(2), vec![1, 2, 3]);
        let mut partial = map.clone();
        partial.shard[0].replicas = vec![2, 3];
        assert_eq!(partial.whole_target(0), Some(2));
    }
}
