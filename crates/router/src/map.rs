//! The shard map: which nodes hold each shard's replicas, which leads it, and where each node
//! listens; merged from the nodes' own views (`leakbloom.v1.Cluster/GetShardMap`). And the
//! plan of a batch over it: which node gets which keys. Pure code, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use leakbloom_filter::{shard_of, KEY_LEN};
use leakbloom_proto::v1::ShardMap;

/// A node id, as the nodes number themselves (1 or more).
pub type NodeId = u64;

/// One shard's replicas and leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Nodes holding a replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader, when some node knows it.
    pub leader: Option<NodeId>,
    /// The Raft term the leader was seen in (0: a hint from a node without a replica).
    pub term: u64,
}

/// The cluster as the router last learned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    /// Shard count of the key space.
    pub shards: u32,
    /// Keys the nodes accept per request.
    pub max_batch: usize,
    /// Client address of every node whose address is known.
    pub addresses: BTreeMap<NodeId, String>,
    /// Nodes that answered the last refresh (the others are skipped where a choice exists).
    pub up: BTreeSet<NodeId>,
    /// Indexed by shard.
    pub shard: Vec<Shard>,
}

/// Why answers could not be merged into a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No node answered.
    #[error("no node answered")]
    NoAnswer,
    /// Nodes disagree on the shard count: they belong to different clusters.
    #[error(
        "nodes disagree on the shard count ({0} and {1}): --nodes lists nodes of different \
         clusters"
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

impl Map {
    /// Merges the nodes' answers: each node's own address as it gives it (else as another node
    /// heard it), each shard's leader from the answer with the highest term. `up` is every node
    /// that answered.
    pub fn merge(answers: &[ShardMap]) -> Result<Map, MapError> {
        let first = answers.first().ok_or(MapError::NoAnswer)?;
        let mut map = Map {
            shards: first.shards,
            max_batch: usize::MAX,
            addresses: BTreeMap::new(),
            up: BTreeSet::new(),
            shard: Vec::new(),
        };
        for answer in answers {
            if answer.shards != map.shards {
                return Err(MapError::Shards(map.shards, answer.shards));
            }
            if answer.shard_replicas.len() != answer.shards as usize || answer.shards == 0 {
                return Err(MapError::Malformed {
                    node: answer.node,
                    reason: format!(
                        "{} shard entries for {} shards",
                        answer.shard_replicas.len(),
                        answer.shards
                    ),
                });
            }
            map.up.insert(answer.node);
            map.max_batch = map.max_batch.min(answer.max_batch.max(1) as usize);
            for node in &answer.nodes {
                if node.address.is_empty() {
                    continue;
                }
                // A node's word on its own address beats what others heard.
                if node.id == answer.node || !map.addresses.contains_key(&node.id) {
                    map.addresses.insert(node.id, node.address.clone());
                }
            }
        }
        map.shard = (0..map.shards as usize)
            .map(|shard| {
                let views = answers.iter().map(|answer| &answer.shard_replicas[shard]);
                let best = views
                    .clone()
                    .filter(|view| view.leader != 0)
                    .max_by_key(|view| view.term);
                let replicas = views
                    .map(|view| view.replicas.clone())
                    .find(|replicas| !replicas.is_empty())
                    .unwrap_or_default();
                Shard {
                    replicas,
                    leader: best.map(|view| view.leader),
                    term: best.map_or(0, |view| view.term),
                }
            })
            .collect();
        Ok(map)
    }

    /// Every node with a known address.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.addresses.keys().copied()
    }

    /// Whether `node` can be sent to: its address is known and it answered the last refresh.
    fn reachable(&self, node: NodeId) -> bool {
        self.addresses.contains_key(&node) && self.up.contains(&node)
    }

    /// The node to send shard `shard`'s writes and linearizable reads to: its leader when that
    /// node is reachable, else the first reachable replica (which forwards to the leader, or
    /// answers UNAVAILABLE while there is none).
    pub fn leader_target(&self, shard: u32) -> Option<NodeId> {
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
    pub fn replica_target(&self, shard: u32, spread: usize) -> Option<NodeId> {
        self.replica_target_avoiding(shard, spread, &[])
    }

    /// [`replica_target`](Self::replica_target), never one of the nodes in `avoid`; `None`
    /// when every replica of the shard is avoided or has no known address.
    pub fn replica_target_avoiding(
        &self,
        shard: u32,
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
    fn rotated(&self, spread: usize) -> impl Iterator<Item = NodeId> + '_ {
        let nodes: Vec<NodeId> = self.nodes().collect();
        let count = nodes.len();
        (0..count).map(move |i| nodes[(spread + i) % count])
    }
}

/// Which node reads or writes which keys of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per target node, the positions (in the request) of its keys, ascending.
    pub parts: BTreeMap<NodeId, Vec<u32>>,
}

impl Plan {
    /// Splits keys `positions` of `keys` (packed 32-byte keys) over nodes: each key goes where
    /// `target` sends its shard. `None` when some shard has no node to go to.
    pub fn new(
        keys: &[[u8; KEY_LEN]],
        positions: impl Iterator<Item = u32>,
        shards: u32,
        mut target: impl FnMut(u32) -> Option<NodeId>,
    ) -> Option<Plan> {
        let mut by_shard: Vec<Option<Option<NodeId>>> = vec![None; shards as usize];
        let mut parts: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for position in positions {
            let shard = shard_of(&keys[position as usize], shards);
            let node = *by_shard[shard as usize].get_or_insert_with(|| target(shard));
            parts.entry(node?).or_default().push(position);
        }
        Some(Plan { parts })
    }

    /// The hedge of an any-replica read part: keys `positions` of `keys`, first sent to
    /// `slow`, planned again over the other nodes (with `spread` as for the first plan). One
    /// node takes them all when one holds every shard (then no key's shard is computed);
    /// otherwise each key goes to another replica of its shard. `None` when some key's shard
    /// has no replica but `slow` (with replication 1 there is nothing to hedge with).
    pub fn hedge(
        map: &Map,
        keys: &[[u8; KEY_LEN]],
        positions: &[u32],
        slow: NodeId,
        spread: usize,
    ) -> Option<Plan> {
        let avoid = [slow];
        if let Some(node) = map.whole_target_avoiding(spread, &avoid) {
            return Some(Plan {
                parts: [(node, positions.to_vec())].into(),
            });
        }
        Plan::new(keys, positions.iter().copied(), map.shards, |shard| {
            map.replica_target_avoiding(shard, spread, &avoid)
        })
    }
}

#[cfg(test)]
mod tests {
    use leakbloom_proto::v1::{NodeAddress, ShardReplicas};

    use super::*;

    fn answer(node: NodeId, leaders: &[(NodeId, u64)]) -> ShardMap {
        ShardMap {
            node,
            shards: leaders.len() as u32,
            replication: 3,
            max_batch: 1000,
            nodes: (1..=3)
                .map(|id| NodeAddress {
                    id,
                    address: if id == node || id == 3 {
                        format!("n{id}:{}", 50000 + node)
                    } else {
                        String::new()
                    },
                })
                .collect(),
            shard_replicas: leaders
                .iter()
                .map(|&(leader, term)| ShardReplicas {
                    replicas: vec![1, 2, 3],
                    leader,
                    term,
                })
                .collect(),
        }
    }

    #[test]
    fn merge_takes_own_addresses_and_newest_leaders() {
        let map =
            Map::merge(&[answer(1, &[(1, 5), (0, 0)]), answer(2, &[(2, 6), (3, 2)])]).unwrap();
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
    }

    #[test]
    fn merge_refuses_mixed_clusters_and_nothing() {
        assert_eq!(Map::merge(&[]), Err(MapError::NoAnswer));
        let other = answer(2, &[(1, 1), (1, 1), (1, 1)]);
        assert_eq!(
            Map::merge(&[answer(1, &[(1, 1)]), other]),
            Err(MapError::Shards(1, 3))
        );
    }

    #[test]
    fn targets_skip_nodes_that_did_not_answer() {
        let map = Map::merge(&[answer(1, &[(3, 4)]), answer(2, &[(3, 4)])]).unwrap();
        // The leader, node 3, is down: the first reachable replica takes it.
        assert_eq!(map.leader_target(0), Some(1));
        assert_eq!(map.replica_target(0, 0), Some(1));
        assert_eq!(map.replica_target(0, 1), Some(2));
        // Position 2 is node 3, down: the next one.
        assert_eq!(map.replica_target(0, 2), Some(1));
        assert_eq!(map.whole_target(1), Some(2));
        assert_eq!(map.whole_target(2), Some(1));
        let mut partial = map.clone();
        partial.shard[0].replicas = vec![2, 3];
        assert_eq!(partial.whole_target(0), Some(2));
    }

    #[test]
    fn plan_groups_keys_by_target_node() {
        let keys: Vec<[u8; KEY_LEN]> = (0..8u8).map(|i| [i * 32; KEY_LEN]).collect();
        // Four shards: prefix bytes 0, 32 -> shard 0; 64, 96 -> 1; 128, 160 -> 2; 192, 224 -> 3.
        let plan = Plan::new(&keys, 0..8, 4, |shard| Some(u64::from(shard % 2) + 1)).unwrap();
        assert_eq!(plan.parts[&1], vec![0, 1, 4, 5]);
        assert_eq!(plan.parts[&2], vec![2, 3, 6, 7]);
        assert!(Plan::new(&keys, 0..8, 4, |shard| (shard != 3).then_some(1)).is_none());
    }

    /// A map of nodes `1..=nodes`, shard `s` on `replicas[s]`, with only `up` answering.
    fn placed(nodes: u64, replicas: &[&[NodeId]], up: &[NodeId]) -> Map {
        Map {
            shards: replicas.len() as u32,
            max_batch: 1000,
            addresses: (1..=nodes).map(|id| (id, format!("n{id}:1"))).collect(),
            up: up.iter().copied().collect(),
            shard: replicas
                .iter()
                .map(|replicas| Shard {
                    replicas: replicas.to_vec(),
                    leader: replicas.first().copied(),
                    term: 1,
                })
                .collect(),
        }
    }

    /// One row of the hedge planning table.
    struct Case {
        what: &'static str,
        /// Shard `s`'s replicas.
        replicas: &'static [&'static [NodeId]],
        /// Nodes that answered the last refresh (of nodes 1, 2, 3).
        up: &'static [NodeId],
        /// The part first sent to `slow`.
        positions: &'static [u32],
        slow: NodeId,
        spread: usize,
        /// The expected hedge: node and positions of each part.
        hedge: Option<&'static [(NodeId, &'static [u32])]>,
    }

    #[test]
    fn hedges_plan_a_slow_part_over_the_other_replicas() {
        // Four shards: key i has prefix byte i * 32, so keys 0-1 are in shard 0, 2-3 in
        // shard 1, 4-5 in shard 2, 6-7 in shard 3.
        let keys: Vec<[u8; KEY_LEN]> = (0..8u8).map(|i| [i * 32; KEY_LEN]).collect();
        const EVERYWHERE: &[&[NodeId]] = &[&[1, 2, 3], &[2, 3, 1], &[3, 1, 2], &[1, 2, 3]];
        const TWO_EACH: &[&[NodeId]] = &[&[1, 2], &[2, 3], &[3, 1], &[1, 2]];
        #[rustfmt::skip]
        let table = [
            Case { what: "every node holds every shard: the next node in the rotation takes it all",
                   replicas: EVERYWHERE, up: &[1, 2, 3], positions: &[0, 1, 2, 3, 4, 5, 6, 7],
                   slow: 2, spread: 1, hedge: Some(&[(3, &[0, 1, 2, 3, 4, 5, 6, 7])]) },
            Case { what: "the rotation wraps around past the slow node",
                   replicas: EVERYWHERE, up: &[1, 2, 3], positions: &[3, 6],
                   slow: 3, spread: 2, hedge: Some(&[(1, &[3, 6])]) },
            Case { what: "a node that did not answer the last refresh is skipped",
                   replicas: EVERYWHERE, up: &[2, 3], positions: &[0, 5],
                   slow: 2, spread: 0, hedge: Some(&[(3, &[0, 5])]) },
            Case { what: "two replicas per shard: each key goes to its shard's other replica",
                   replicas: TWO_EACH, up: &[1, 2, 3], positions: &[0, 1, 2, 3, 6, 7],
                   slow: 2, spread: 0, hedge: Some(&[(1, &[0, 1, 6, 7]), (3, &[2, 3])]) },
            Case { what: "the spread picks among the other replicas as in the first plan",
                   replicas: EVERYWHERE, up: &[1, 2, 3], positions: &[4],
                   slow: 1, spread: 1, hedge: Some(&[(2, &[4])]) },
            Case { what: "the only other replica did not answer the refresh: it is tried anyway",
                   replicas: TWO_EACH, up: &[1, 2], positions: &[2],
                   slow: 2, spread: 0, hedge: Some(&[(3, &[2])]) },
            Case { what: "one replica per shard: nothing to hedge with",
                   replicas: &[&[1], &[2], &[3], &[1]], up: &[1, 2, 3], positions: &[0, 1, 6],
                   slow: 1, spread: 0, hedge: None },
            Case { what: "some key's shard has no other replica: no hedge at all",
                   replicas: &[&[1, 2], &[2], &[3, 1], &[1, 2]], up: &[1, 2, 3], positions: &[0, 2],
                   slow: 2, spread: 0, hedge: None },
        ];
        for case in table {
            let map = placed(3, case.replicas, case.up);
            let plan = Plan::hedge(&map, &keys, case.positions, case.slow, case.spread);
            let expected = case.hedge.map(|parts| Plan {
                parts: parts.iter().map(|&(node, p)| (node, p.to_vec())).collect(),
            });
            assert_eq!(plan, expected, "{}", case.what);
            if let Some(plan) = plan {
                assert!(
                    !plan.parts.contains_key(&case.slow),
                    "{}: sent to the slow node",
                    case.what
                );
            }
        }
    }
}
