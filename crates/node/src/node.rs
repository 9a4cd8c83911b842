//! The node's operations, independent of gRPC: validate a request, turn a change into one
//! [`Command`] per shard and apply it through `Node::propose`, answer reads from the shards'
//! state.
//!
//! Today every shard is a single in-memory replica and `propose` applies the command at once.
//! Replication puts a Raft group behind `propose` (commit first, then apply on every replica);
//! nothing above it changes.

use std::collections::HashSet;

use bytes::Bytes;
use leakbloom_filter::{Filter, KEY_LEN};
use leakbloom_proto::v1::{
    command, Command, Consistency, CreateSetRequest, DropSetCommand, InsertCommand, SetInfo,
    SetResult,
};
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::set::{self, Partition, SetSpec};
use crate::shard::{shard_of, ShardId};
use crate::state::{Applied, ShardState};

/// How many keys ahead a check prefetches filter blocks: the engine's measured batch distance.
const PREFETCH_DISTANCE: usize = leakbloom_filter::CHECK_PREFETCH_DISTANCE;

/// A node: the replicas of every shard it hosts.
#[derive(Debug)]
pub struct Node {
    config: Config,
    shards: Vec<ShardState>,
}

impl Node {
    /// A node with empty state for every shard of `config.shards`.
    pub fn new(config: Config) -> Node {
        let shards = (0..config.shards).map(ShardState::new).collect();
        Node { config, shards }
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state of one shard (for tests and diagnostics).
    pub fn shard(&self, shard: ShardId) -> &ShardState {
        &self.shards[shard as usize]
    }

    /// Hands `command` to shard `shard` and returns its result once applied.
    async fn propose(&self, shard: ShardId, command: Command) -> Result<Applied> {
        self.shards[shard as usize].apply(&command)
    }

    /// Splits packed key bytes into keys after checking the batch limits.
    fn keys<'a>(&self, keys: &'a [u8]) -> Result<&'a [[u8; KEY_LEN]]> {
        let max = self.config.max_batch;
        let (whole, rest) = keys.as_chunks::<KEY_LEN>();
        if !rest.is_empty() {
            return Err(Error::KeyLength { len: keys.len() });
        }
        match whole.len() {
            0 => Err(Error::EmptyBatch { max }),
            n if n > max => Err(Error::BatchTooLarge { keys: n, max }),
            _ => Ok(whole),
        }
    }

    /// The partitions of set `name` on every shard, indexed by shard.
    fn partitions(&self, name: &str) -> Result<Vec<Arc<Partition>>> {
        self.shards
            .iter()
            .map(|shard| shard.partition(name))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::SetNotFound(name.to_string()))
    }

    /// Which of `sets` (every set when empty) may contain each key: one bitmap per set.
    pub async fn check(
        &self,
        sets: &[String],
        keys: &[u8],
        consistency: i32,
    ) -> Result<Vec<SetResult>> {
        let keys = self.keys(keys)?;
        // A single replica per shard has applied everything it acknowledged, so both
        // consistency levels read the same state; the value still has to be a known one.
        Consistency::try_from(consistency).map_err(|_| Error::Consistency(consistency))?;
        let sets: Vec<(String, Vec<Arc<Partition>>)> = if sets.is_empty() {
            self.set_names()
                .into_iter()
                .filter_map(|name| Some((name.clone(), self.partitions(&name).ok()?)))
                .collect()
        } else {
            let mut seen = HashSet::new();
            sets.iter()
                .map(|name| {
                    set::validate_name(name)?;
                    if !seen.insert(name.as_str()) {
                        return Err(Error::DuplicateSet(name.clone()));
                    }
                    Ok((name.clone(), self.partitions(name)?))
                })
                .collect::<Result<_>>()?
        };
        let shard_ids: Vec<ShardId> = keys
            .iter()
            .map(|key| shard_of(key, self.config.shards))
            .collect();
        Ok(sets
            .into_iter()
            .map(|(set, partitions)| SetResult {
                set,
                present: check_bitmap(&partitions, keys, &shard_ids).into(),
            })
            .collect())
    }

    /// Adds keys to a set. Returns the number of keys once every shard applied its part.
    pub async fn insert(&self, set: &str, keys: Bytes) -> Result<u64> {
        set::validate_name(set)?;
        let parsed = self.keys(&keys)?;
        self.partitions(set)?;
        let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); self.shards.len()];
        for key in parsed {
            per_shard[shard_of(key, self.config.shards) as usize].extend_from_slice(key);
        }
        for (shard, shard_keys) in per_shard.into_iter().enumerate() {
            if shard_keys.is_empty() {
                continue;
            }
            let command = Command {
                id: 0,
                kind: Some(command::Kind::Insert(InsertCommand {
                    set: set.to_string(),
                    keys: shard_keys.into(),
                })),
            };
            self.propose(shard as ShardId, command).await?;
        }
        Ok(parsed.len() as u64)
    }

    /// Creates a set on every shard; idempotent with equal parameters.
    pub async fn create_set(&self, request: &CreateSetRequest) -> Result<SetInfo> {
        let spec = SetSpec::new(
            &request.name,
            request.capacity,
            request.fpr,
            &request.hashing,
        )?;
        let geometry = spec.partition_geometry(self.config.shards)?;
        if let Some(existing) = self.shards[0].partition(&spec.name) {
            if existing.spec != spec {
                return Err(Error::SetExists {
                    name: spec.name.clone(),
                    existing: existing.spec.to_string(),
                    requested: spec.to_string(),
                });
            }
        } else {
            self.check_limits(
                &spec,
                geometry.bytes().saturating_mul(self.shards.len() as u64),
            )?;
        }
        let create = spec.command(geometry);
        for shard in 0..self.config.shards {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::CreateSet(create.clone())),
            };
            self.propose(shard, command).await?;
        }
        self.set_info(&spec.name)
    }

    /// Refuses a new set that would take the node over `max_sets` or `max_filter_memory`.
    fn check_limits(&self, spec: &SetSpec, needed: u64) -> Result<()> {
        let partitions = self.shards[0].partitions();
        if partitions.len() >= self.config.max_sets {
            return Err(Error::TooManySets {
                max: self.config.max_sets,
            });
        }
        let used: u64 = self
            .shards
            .iter()
            .flat_map(|shard| shard.partitions())
            .map(|p| p.filter.memory_bytes())
            .sum();
        let limit = self.config.max_filter_memory;
        let available = limit.saturating_sub(used);
        if needed > available {
            return Err(Error::MemoryLimit {
                name: spec.name.clone(),
                needed,
                available,
                limit,
            });
        }
        Ok(())
    }

    /// Drops a set from every shard.
    pub async fn drop_set(&self, name: &str) -> Result<()> {
        set::validate_name(name)?;
        let mut found = false;
        for shard in 0..self.config.shards {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::DropSet(DropSetCommand {
                    name: name.to_string(),
                })),
            };
            match self.propose(shard, command).await {
                Ok(_) => found = true,
                Err(Error::SetNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if found {
            Ok(())
        } else {
            Err(Error::SetNotFound(name.to_string()))
        }
    }

    /// Names of every set, in name order.
    fn set_names(&self) -> Vec<String> {
        self.shards[0]
            .partitions()
            .into_iter()
            .map(|p| p.spec.name.clone())
            .collect()
    }

    /// Every set with its statistics, in name order.
    pub async fn list_sets(&self) -> Result<Vec<SetInfo>> {
        Ok(self
            .set_names()
            .iter()
            .filter_map(|name| self.set_info(name).ok())
            .collect())
    }

    /// One set with its statistics summed over shards.
    pub async fn get_set(&self, name: &str) -> Result<SetInfo> {
        set::validate_name(name)?;
        self.set_info(name)
    }

    fn set_info(&self, name: &str) -> Result<SetInfo> {
        let partitions = self.partitions(name)?;
        Ok(set_info(&partitions))
    }
}

/// Sums a set's statistics over its partitions (one per shard).
fn set_info(partitions: &[Arc<Partition>]) -> SetInfo {
    let spec = &partitions[0].spec;
    let geometry = partitions[0].filter.geometry();
    let (mut bits, mut bits_set, mut keys, mut fpr_sum, mut memory) = (0u64, 0u64, 0u64, 0.0, 0);
    for partition in partitions {
        let stats = partition.filter.stats();
        bits += stats.bits;
        bits_set += stats.bits_set;
        keys += stats.estimated_keys;
        fpr_sum += stats.estimated_fpr;
        memory += partition.filter.memory_bytes();
    }
    SetInfo {
        name: spec.name.clone(),
        capacity: spec.capacity,
        fpr: spec.fpr,
        hashing: spec.hashing.to_string(),
        estimated_keys: keys,
        fill_ratio: bits_set as f64 / bits as f64,
        // Keys are uniform over shards: an absent key meets each shard's filter equally often.
        estimated_fpr: fpr_sum / partitions.len() as f64,
        memory_bytes: memory,
        shards: partitions.len() as u32,
        hash_count: geometry.hashes,
        bits_per_key: bits as f64 / spec.capacity as f64,
    }
}

/// Checks `keys` against one set's partitions (indexed by shard): bit i of the result is set
/// when key i may be present. Prefetches the block of key `i + PREFETCH_DISTANCE` while
/// checking key `i`, so cache misses overlap across shards' filters.
fn check_bitmap(
    partitions: &[Arc<Partition>],
    keys: &[[u8; KEY_LEN]],
    shard_ids: &[ShardId],
) -> Vec<u8> {
    let filter = |i: usize| -> &Filter { &partitions[shard_ids[i] as usize].filter };
    let mut bitmap = vec![0u8; keys.len().div_ceil(8)];
    for (i, key) in keys.iter().enumerate().take(PREFETCH_DISTANCE) {
        filter(i).prefetch(key);
    }
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE) {
            filter(i + PREFETCH_DISTANCE).prefetch(ahead);
        }
        if filter(i).contains(key) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    bitmap
}
