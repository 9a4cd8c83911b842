//! Checks: which of a batch's keys may be in which sets.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use leakbloom_cluster::plan::{gather, group_by_shard};
use leakbloom_cluster::{
    check_bits, check_set_count, split_keys, whole_keys, Bitmap, Consistency, Key,
};
use leakbloom_filter::Filter;
use leakbloom_proto::internal::v1::{ShardCheckRequest, ShardCheckResponse};
use leakbloom_proto::v1::SetResult;

use super::Node;
use crate::catalog::Entry;
use crate::error::{Error, Result};
use crate::set::{self, Partition};
use crate::shard::{shard_of, shard_of_group, ShardId};

/// How many keys ahead a check prefetches filter blocks: the engine's measured batch distance.
const PREFETCH_DISTANCE: usize = leakbloom_filter::CHECK_PREFETCH_DISTANCE;

/// A set's partitions on every shard (indexed by shard; `None` for shards checked elsewhere).
type Partitions = Vec<Option<Arc<Partition>>>;

impl Node {
    /// Splits packed key bytes into keys after checking the batch limits.
    pub(super) fn keys<'a>(&self, packed: &'a [u8]) -> Result<&'a [Key]> {
        Ok(split_keys(packed, self.config.max_batch)?)
    }

    /// Which of `sets` (every set when empty) may contain each of the `packed` keys: one bitmap
    /// per set. A
    /// linearizable check first takes a read barrier on every touched shard served here.
    pub async fn check(
        &self,
        sets: &[String],
        packed: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<SetResult>> {
        let keys = self.keys(packed)?;
        let shards = self.config.shards;
        // Each key's shard once: the split and the bit loop below both use it.
        let shard_ids: Vec<ShardId> = keys.iter().map(|key| shard_of(key, shards)).collect();
        let split = group_by_shard(shard_ids.iter().copied(), shards);
        let touched: Vec<ShardId> = split.iter().map(|(shard, _)| *shard).collect();
        if consistency == Consistency::Linearizable {
            self.read_barrier(touched.iter().copied()).await?;
        }
        let (entries, partitions) = self.check_partitions(sets, keys.len(), &touched).await?;
        let mut bitmaps: Vec<Bitmap> = partitions
            .iter()
            .map(|partitions| check_bitmap(partitions, keys, &shard_ids))
            .collect();
        // Shards without a local replica that answers reads: ask a replica node, then
        // scatter its bits back.
        let remote = split
            .into_iter()
            .filter(|(shard, _)| self.serving(*shard).is_none());
        let answers = try_join_all(remote.map(|(shard, positions)| {
            let request = ShardCheckRequest {
                shard: u64::from(shard),
                sets: entries.iter().map(|e| e.spec.name.clone()).collect(),
                keys: gather(keys, &positions).into(),
                consistency: consistency.wire(),
                generations: entries.iter().map(|e| e.generation).collect(),
            };
            async move {
                let answer = self.remote_check(shard, request).await?;
                Ok::<_, Error>((positions, answer))
            }
        }))
        .await?;
        for (positions, answer) in answers {
            for (bitmap, present) in bitmaps.iter_mut().zip(&answer.present) {
                bitmap.scatter(present, &positions);
            }
        }
        Ok(entries
            .into_iter()
            .zip(bitmaps)
            .map(|(entry, present)| SetResult {
                set: entry.spec.name,
                present: present.into_bytes().into(),
            })
            .collect())
    }

    /// The catalog entries a check asks for (every visible set when `sets` is empty), and
    /// their partitions on this node's serving replicas of the `touched` shards. A partition
    /// missing there (the replica has not applied the set's creation yet, or the set is being
    /// dropped) makes it look again after catalog and shard read barriers; still missing, the
    /// shard is unavailable, never silently empty.
    async fn check_partitions(
        &self,
        sets: &[String],
        keys: usize,
        touched: &[ShardId],
    ) -> Result<(Vec<Entry>, Vec<Partitions>)> {
        let mut barrier = false;
        loop {
            let entries = self.check_entries(sets, keys).await?;
            match self.partitions(&entries, touched) {
                Ok(partitions) => return Ok((entries, partitions)),
                Err(error) if barrier => return Err(error),
                Err(_) => {
                    barrier = true;
                    self.catalog_barrier().await?;
                    self.read_barrier(touched.iter().copied()).await?;
                }
            }
        }
    }

    /// The entries a check asks for, validated, and within the limits of a check's answer
    /// ([`leakbloom_cluster::MAX_CHECK_BITS`]: every set counts when none is named).
    async fn check_entries(&self, sets: &[String], keys: usize) -> Result<Vec<Entry>> {
        self.catalog_ready()?;
        let entries = if sets.is_empty() {
            self.catalog
                .state
                .read(|c| c.entries().filter(|e| e.active).cloned().collect())
        } else {
            check_set_count(sets.len())?;
            let mut seen = HashSet::new();
            for name in sets {
                set::validate_name(name)?;
                if !seen.insert(name.as_str()) {
                    return Err(Error::DuplicateSet(name.clone()));
                }
            }
            // Sizes first: no catalog round for a check that cannot be answered.
            check_bits(sets.len(), keys)?;
            try_join_all(sets.iter().map(|name| self.resolve(name, true))).await?
        };
        check_bits(entries.len(), keys)?;
        Ok(entries)
    }

    /// Each entry's partitions, indexed by shard: this node's for the touched shards it
    /// serves, `None` elsewhere.
    fn partitions(&self, entries: &[Entry], touched: &[ShardId]) -> Result<Vec<Partitions>> {
        entries
            .iter()
            .map(|entry| {
                let mut partitions: Partitions = vec![None; self.config.shards as usize];
                for &shard in touched {
                    let Some(replica) = self.serving(shard) else {
                        continue;
                    };
                    let partition = replica
                        .state
                        .partition(&entry.spec.name)
                        .filter(|p| p.generation == entry.generation)
                        .ok_or_else(|| Error::Unavailable {
                            shard,
                            leader: None,
                            reason: format!(
                                "node {}'s replica has not applied the creation of set {:?} yet",
                                self.id(),
                                entry.spec.name
                            ),
                        })?;
                    partitions[shard as usize] = Some(partition);
                }
                Ok(partitions)
            })
            .collect()
    }

    /// Checks one shard on a node holding a replica of it: the leader when known, else each
    /// replica in turn.
    async fn remote_check(
        &self,
        shard: ShardId,
        request: ShardCheckRequest,
    ) -> Result<ShardCheckResponse> {
        let mut candidates = self.placed(shard);
        if let Some(leader) = self.leader_of(shard) {
            candidates.retain(|&node| node != leader);
            candidates.insert(0, leader);
        }
        // This node's replica is not serving (or it would not be asked).
        candidates.retain(|&node| node != self.id());
        let mut last = None;
        for node in candidates {
            match self.peers.check(node, request.clone()).await {
                Ok(answer) if answer.present.len() == request.sets.len() => return Ok(answer),
                Ok(_) => {
                    last = Some(Error::Replica {
                        shard,
                        reason: format!("node {node} answered a check with the wrong set count"),
                    })
                }
                Err(error @ Error::Unavailable { .. }) => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            shard,
            leader: None,
            reason: "no replica answered".into(),
        }))
    }

    /// Serves a check of one local shard for another node (the peer `Check` RPC): the sets'
    /// partitions of the generations the asking node named.
    pub(super) async fn check_local_shard(
        &self,
        request: ShardCheckRequest,
    ) -> Result<ShardCheckResponse> {
        let shard = ShardId::try_from(request.shard)
            .ok()
            .filter(|&shard| self.serving(shard).is_some())
            .ok_or_else(|| Error::Unavailable {
                shard: shard_of_group(request.shard),
                leader: None,
                reason: format!(
                    "node {} holds no replica of it that answers reads (none, one being \
                     rebuilt, or a stalled one)",
                    self.id()
                ),
            })?;
        let replica = self.serving(shard).expect("checked above");
        let keys = whole_keys(&request.keys)?;
        check_bits(request.sets.len(), keys.len())?;
        if request.generations.len() != request.sets.len() {
            return Err(Error::Refused(format!(
                "a shard check names {} sets but {} generations",
                request.sets.len(),
                request.generations.len()
            )));
        }
        if Consistency::try_from(request.consistency)? == Consistency::Linearizable {
            self.read_barrier(std::iter::once(shard)).await?;
        }
        let present = request
            .sets
            .iter()
            .zip(&request.generations)
            .map(|(name, &generation)| {
                let partition = replica
                    .state
                    .partition(name)
                    .filter(|p| p.generation == generation)
                    .ok_or_else(|| Error::SetNotFound(name.clone()))?;
                let mut bitmap = Bitmap::new(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    if partition.filter.contains(key) {
                        bitmap.set(i);
                    }
                }
                Ok(Bytes::from(bitmap.into_bytes()))
            })
            .collect::<Result<_>>()?;
        Ok(ShardCheckResponse { present })
    }
}

/// Checks `keys` against one set's partitions (indexed by shard; `None` for shards checked
/// elsewhere, whose bits stay 0): bit i of the result is set when key i may be present.
/// Prefetches the block of key `i + PREFETCH_DISTANCE` while checking key `i`, so cache misses
/// overlap across shards' filters.
fn check_bitmap(
    partitions: &[Option<Arc<Partition>>],
    keys: &[Key],
    shard_ids: &[ShardId],
) -> Bitmap {
    let filter = |i: usize| -> Option<&Filter> {
        partitions[shard_ids[i] as usize]
            .as_ref()
            .map(|p| &p.filter)
    };
    let mut bitmap = Bitmap::new(keys.len());
    for (i, key) in keys.iter().enumerate().take(PREFETCH_DISTANCE) {
        if let Some(filter) = filter(i) {
            filter.prefetch(key);
        }
    }
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE) {
            if let Some(filter) = filter(i + PREFETCH_DISTANCE) {
                filter.prefetch(ahead);
            }
        }
        if filter(i).is_some_and(|filter| filter.contains(key)) {
            bitmap.set(i);
        }
    }
    bitmap
}
