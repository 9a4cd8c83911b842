//! A batch over the cluster: which node reads or writes which of its keys ([`Plan`]), the
//! keys of each part, and the parts' answers merged back in request order ([`Merge`]).
//!
//! Positions are the keys' indices in the request; a part keeps them ascending, so a part's
//! key j is the request's key `positions[j]` and its answer's bit j is the request's bit
//! `positions[j]`.

use std::collections::BTreeMap;

use crate::bitmap::{self, Bitmap};
use crate::key::{shard_of, Key, NodeId, ShardId, KEY_LEN};
use crate::map::ShardMap;

/// Which node reads or writes which keys of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Per target node, the positions (in the request) of its keys, ascending.
    pub parts: BTreeMap<NodeId, Vec<u32>>,
}

impl Plan {
    /// Splits keys `positions` of `keys` over nodes: each key goes where `target` sends its
    /// shard (asked once per shard). `None` when some shard has no node to go to.
    pub fn new(
        keys: &[Key],
        positions: impl Iterator<Item = u32>,
        shards: u32,
        mut target: impl FnMut(ShardId) -> Option<NodeId>,
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

    /// Every key at `positions` to one node.
    pub fn whole(node: NodeId, positions: Vec<u32>) -> Plan {
        Plan {
            parts: [(node, positions)].into(),
        }
    }

    /// The hedge of an any-replica read part: keys `positions` of `keys`, first sent to
    /// `slow`, planned again over the other nodes (with `spread` as for the first plan). One
    /// node takes them all when one holds every shard (then no key's shard is computed);
    /// otherwise each key goes to another replica of its shard. `None` when some key's shard
    /// has no replica but `slow` (with replication 1 there is nothing to hedge with).
    pub fn hedge(
        map: &ShardMap,
        keys: &[Key],
        positions: &[u32],
        slow: NodeId,
        spread: usize,
    ) -> Option<Plan> {
        let avoid = [slow];
        if let Some(node) = map.whole_target_avoiding(spread, &avoid) {
            return Some(Plan::whole(node, positions.to_vec()));
        }
        Plan::new(keys, positions.iter().copied(), map.shards, |shard| {
            map.replica_target_avoiding(shard, spread, &avoid)
        })
    }
}

/// The positions of `keys` split by shard, each shard's ascending, shards in order (only
/// those with keys): how a node splits a batch into one command or check per shard.
pub fn by_shard(keys: &[Key], shards: u32) -> Vec<(ShardId, Vec<u32>)> {
    group_by_shard(keys.iter().map(|key| shard_of(key, shards)), shards)
}

/// [`by_shard`] for keys whose shards are known already: `shard_ids[i]` is key i's shard.
pub fn group_by_shard(
    shard_ids: impl IntoIterator<Item = ShardId>,
    shards: u32,
) -> Vec<(ShardId, Vec<u32>)> {
    let mut parts: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
    for (position, shard) in shard_ids.into_iter().enumerate() {
        parts[shard as usize].push(position as u32);
    }
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, positions)| !positions.is_empty())
        .map(|(shard, positions)| (shard as ShardId, positions))
        .collect()
}

/// The keys at `positions`, packed as the wire carries them.
pub fn gather(keys: &[Key], positions: &[u32]) -> Vec<u8> {
    let mut part = Vec::with_capacity(positions.len() * KEY_LEN);
    for &i in positions {
        part.extend_from_slice(&keys[i as usize]);
    }
    part
}

/// Why a part's answer cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A check of every set was answered for different sets by different parts (a set was
    /// being created or dropped): ask again for the sets carried here, by name.
    #[error("the sets changed while the check ran: retry it")]
    SetsChanged(Vec<String>),
    /// A part answered other sets than the request named.
    #[error("answered other sets than asked")]
    OtherSets,
    /// A part's bitmap is too short for its keys.
    #[error("a bitmap of {bytes} bytes for {keys} keys")]
    ShortBitmap {
        /// The bitmap's length.
        bytes: usize,
        /// The part's keys.
        keys: usize,
    },
}

/// A check's answer while its parts come in: one bitmap per set over the request's keys.
/// `B` is the answer's bitmap type (`Vec<u8>`, `bytes::Bytes`): a part holding every key is
/// the answer as it is, without a copy.
#[derive(Debug)]
pub struct Merge<'a, B> {
    keys: usize,
    asked: &'a [String],
    state: State<B>,
}

#[derive(Debug)]
enum State<B> {
    Empty,
    Whole(Vec<(String, B)>),
    Scattered(Vec<String>, Vec<Bitmap>),
}

impl<'a, B: AsRef<[u8]> + From<Vec<u8>>> Merge<'a, B> {
    /// A merge of a check of `keys` keys naming `asked` sets (empty: every set).
    pub fn new(keys: usize, asked: &'a [String]) -> Merge<'a, B> {
        Merge {
            keys,
            asked,
            state: State::Empty,
        }
    }

    /// Adds a part's answer (per set, its name and bitmap) for its keys at `positions`.
    pub fn add(&mut self, positions: &[u32], answer: Vec<(String, B)>) -> Result<(), MergeError> {
        let named = |names: &[String]| {
            answer.len() == names.len() && answer.iter().zip(names).all(|((set, _), n)| set == n)
        };
        if !self.asked.is_empty() && !named(self.asked) {
            return Err(MergeError::OtherSets);
        }
        for (_, bits) in &answer {
            if bits.as_ref().len() < bitmap::bytes_for(positions.len()) {
                return Err(MergeError::ShortBitmap {
                    bytes: bits.as_ref().len(),
                    keys: positions.len(),
                });
            }
        }
        if matches!(self.state, State::Empty) {
            if positions.len() == self.keys {
                self.state = State::Whole(answer);
                return Ok(());
            }
            let names = answer.iter().map(|(set, _)| set.clone()).collect();
            let bitmaps = vec![Bitmap::new(self.keys); answer.len()];
            self.state = State::Scattered(names, bitmaps);
        }
        let State::Scattered(names, bitmaps) = &mut self.state else {
            unreachable!("a part of every key is the only part");
        };
        if !named(names) {
            return Err(MergeError::SetsChanged(names.clone()));
        }
        for ((_, bits), bitmap) in answer.iter().zip(bitmaps) {
            bitmap.scatter(bits.as_ref(), positions);
        }
        Ok(())
    }

    /// The merged answer: per set, its name and bitmap over the request's keys.
    pub fn finish(self) -> Vec<(String, B)> {
        match self.state {
            State::Empty => Vec::new(),
            State::Whole(answer) => answer,
            State::Scattered(names, bitmaps) => names
                .into_iter()
                .zip(bitmaps)
                .map(|(set, bitmap)| (set, B::from(bitmap.into_bytes())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::map::tests::view;

    #[test]
    fn plan_groups_keys_by_target_node() {
        let keys: Vec<Key> = (0..8u8).map(|i| [i * 32; KEY_LEN]).collect();
        // Four shards: prefix bytes 0, 32 -> shard 0; 64, 96 -> 1; 128, 160 -> 2; 192, 224 -> 3.
        let plan = Plan::new(&keys, 0..8, 4, |shard| Some(u64::from(shard % 2) + 1)).unwrap();
        assert_eq!(plan.parts[&1], vec![0, 1, 4, 5]);
        assert_eq!(plan.parts[&2], vec![2, 3, 6, 7]);
        assert!(Plan::new(&keys, 0..8, 4, |shard| (shard != 3).then_some(1)).is_none());
        assert_eq!(
            gather(&keys, &[7, 0]),
            [[224; KEY_LEN], [0; KEY_LEN]].concat()
        );
        let split = by_shard(&keys, 4);
        assert_eq!(
            split,
            [
                (0, vec![0, 1]),
                (1, vec![2, 3]),
                (2, vec![4, 5]),
                (3, vec![6, 7])
            ]
        );
        assert_eq!(by_shard(&keys[2..4], 4), [(1, vec![0, 1])]);
    }

    /// A map of nodes `1..=nodes`, shard `s` on `replicas[s]`, with only `up` answering.
    fn placed(nodes: u64, replicas: &[&[NodeId]], up: &[NodeId]) -> ShardMap {
        let mut map = ShardMap::merge(&[view(1, &vec![(1, 1); replicas.len()])]).unwrap();
        map.addresses = (1..=nodes).map(|id| (id, format!("n{id}:1"))).collect();
        map.up = up.iter().copied().collect();
        for (shard, replicas) in map.shard.iter_mut().zip(replicas) {
            shard.replicas = replicas.to_vec();
            shard.leader = replicas.first().copied();
        }
        map
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
        let keys: Vec<Key> = (0..8u8).map(|i| [i * 32; KEY_LEN]).collect();
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

    /// What one node holding every shard answers: whether `key` may be in set `set`, a fixed
    /// function of both, so that any node computes the same bit.
    fn present(set: usize, key: &Key) -> bool {
        (key[9] as usize + set * 7).is_multiple_of(3)
    }

    /// A node's answer for the keys at `positions`, for `sets`.
    fn answer(sets: &[String], keys: &[Key], positions: &[u32]) -> Vec<(String, Vec<u8>)> {
        sets.iter()
            .enumerate()
            .map(|(s, name)| {
                let mut bits = Bitmap::new(positions.len());
                for (j, &i) in positions.iter().enumerate() {
                    if present(s, &keys[i as usize]) {
                        bits.set(j);
                    }
                }
                (name.clone(), bits.into_bytes())
            })
            .collect()
    }

    #[test]
    fn any_split_and_any_order_of_answers_merge_to_the_single_node_answer() {
        for seed in 0..500u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let count = rng.gen_range(1..300usize);
            let keys: Vec<Key> = (0..count).map(|_| rng.gen()).collect();
            let shards = rng.gen_range(1..40u32);
            let nodes = rng.gen_range(1..6u64);
            let sets: Vec<String> = (0..rng.gen_range(1..4)).map(|s| format!("s{s}")).collect();
            let targets: Vec<NodeId> = (0..shards).map(|_| rng.gen_range(1..=nodes)).collect();
            let all: Vec<u32> = (0..count as u32).collect();
            let single = answer(&sets, &keys, &all);

            let plan = Plan::new(&keys, all.iter().copied(), shards, |s| {
                Some(targets[s as usize])
            })
            .unwrap();
            // Every key in exactly one part, in ascending order, on its shard's node.
            let mut seen = vec![false; count];
            for (node, positions) in &plan.parts {
                assert!(positions.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
                for &i in positions {
                    assert!(
                        !std::mem::replace(&mut seen[i as usize], true),
                        "seed {seed}"
                    );
                    assert_eq!(targets[shard_of(&keys[i as usize], shards) as usize], *node);
                }
            }
            assert!(seen.iter().all(|s| *s), "seed {seed}: a key in no part");

            let mut parts: Vec<Vec<u32>> = plan.parts.into_values().collect();
            parts.shuffle(&mut rng);
            let asked = if rng.gen() { sets.clone() } else { Vec::new() };
            let mut merge = Merge::<Vec<u8>>::new(count, &asked);
            for positions in &parts {
                merge
                    .add(positions, answer(&sets, &keys, positions))
                    .unwrap();
            }
            assert_eq!(merge.finish(), single, "seed {seed}");
        }
    }

    #[test]
    fn answers_for_other_sets_or_too_few_keys_are_refused() {
        let keys: Vec<Key> = (0..10u8).map(|i| [i; KEY_LEN]).collect();
        let sets = vec!["a".to_string(), "b".to_string()];
        // Named sets: an answer for other sets is malformed.
        let mut merge = Merge::<Vec<u8>>::new(10, &sets);
        let wrong = answer(&["a".to_string()], &keys, &[0, 1]);
        assert_eq!(merge.add(&[0, 1], wrong), Err(MergeError::OtherSets));
        // Every set: a later part naming other sets means they changed meanwhile.
        let mut merge = Merge::<Vec<u8>>::new(10, &[]);
        merge.add(&[0, 1], answer(&sets, &keys, &[0, 1])).unwrap();
        let fewer = answer(&sets[..1], &keys, &[2]);
        assert_eq!(
            merge.add(&[2], fewer),
            Err(MergeError::SetsChanged(sets.clone()))
        );
        let short = vec![("a".to_string(), vec![]), ("b".to_string(), vec![])];
        assert_eq!(
            merge.add(&[3], short),
            Err(MergeError::ShortBitmap { bytes: 0, keys: 1 })
        );
    }
}
