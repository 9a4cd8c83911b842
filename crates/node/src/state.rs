//! The state machine of one shard: set name → that set's partition of the shard, and the index
//! of the last command applied.
//!
//! Every change goes through [`ShardState::apply_at`], one [`Command`] at a time, in log order,
//! with the command's Raft log index. `apply_at` is deterministic: replicas that apply the same
//! commands hold byte-identical filters and return the same results, rejections included.
//! Reads ([`ShardState::partition`]) only take a read lock long enough to clone an `Arc`; checks
//! then read filter bits lock-free while later inserts set more.
//!
//! # Snapshots
//! [`ShardState::snapshot`] encodes the whole state: the applied index and every set (its
//! parameters, its partition geometry and its filter) in name order, so equal states give
//! byte-identical snapshots. [`ShardState::restore`] checks a snapshot completely (magic,
//! version, shard, CRC32 of the whole, every length, every set's parameters, each filter's own
//! CRC32 and bit count, name order, no trailing bytes) before it replaces the state in one swap
//! of the set map; a bad snapshot is a [`SnapshotError`] and leaves the state as it was. Format
//! version 1, integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `LBSHARD` and a zero byte |
//! | 8 | 4 | format version, u32 (2) |
//! | 12 | 4 | shard id, u32 |
//! | 16 | 8 | applied index, u64 |
//! | 24 | 4 | number of sets, u32 |
//! | 28 | … | each set, in name order: spec length (u32), spec (a protobuf `CreateSetCommand`: name, capacity, fpr, hashing, partition geometry and generation), filter length (u64), filter (the filter codec's format, with its own CRC32) |
//! | end − 4 | 4 | CRC32 (IEEE) of every byte before it, u32 |
//!
//! # Caveats
//! - [`ShardState::applied`] is the index of the last command applied here. A Raft group also
//!   commits entries that never reach the state machine (a new leader's empty entry,
//!   membership changes), so it can be below the group's applied index: a linearizable read
//!   waits for the group's applied index, not this one.
//! - A snapshot is one buffer as large as all filters together (the Raft layer takes snapshots
//!   as bytes); filters are encoded straight into it. A restore holds the old and the new
//!   filters at once until the swap: up to twice the shard's filter memory.
//! - Building a filter for a committed `CreateSet` can fail for want of memory on one replica
//!   only (its node's [`Budget`] is full, or the allocation fails). Skipping the command would
//!   make that replica diverge, so `apply_at` returns [`Error::Stalled`], changes nothing, and
//!   the replica stalls until it can apply it (`leakbloom_raft::node`, "Stalled replicas"); the
//!   catalog admits sets against every node's limit before they commit, so this takes a node
//!   restarted with less memory, or an operating system that refuses what it promised.
//!   Filters are allocated before any lock is taken: nothing panics while one is held.
//! - Commands are checked against what the shard can verify: an insert must name the
//!   partition's generation, and its keys, when whole, must all belong to this shard (key
//!   suffixes, the form nodes propose, belong to any shard: [`crate::suffix`]); a create's
//!   geometry must be valid. Which sets exist is the catalog's to say; the leader checks a command against it
//!   before proposing.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use leakbloom_filter::Filter;
use leakbloom_proto::internal::v1::{command, Command, CreateSetCommand};
use prost::Message as _;

use crate::error::{Error, Result};
use crate::memory::Budget;
use crate::set::{Partition, SetSpec};
use crate::shard::{shard_of, ShardId};
use crate::suffix::{insert_keys, InsertKeys};

/// First bytes of every shard snapshot, so a wrong blob is named as such.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LBSHARD\0";
/// Snapshot format version written and read; bump it whenever the layout changes. Version 2:
/// partitions carry the set's generation.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Bytes before the first set: magic, version, shard, applied index, number of sets.
const HEADER_LEN: usize = 28;
/// Bytes of the CRC32 trailer.
const CRC_LEN: usize = 4;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The set's partition now exists (it may have existed with equal parameters).
    Created,
    /// The set's partition is gone.
    Dropped,
    /// The keys' bits are set.
    Inserted {
        /// Keys in the command.
        keys: u64,
    },
    /// The command carried no operation (e.g. written by a newer version).
    Nothing,
}

/// Why [`ShardState::restore`] refused a snapshot. The state is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than the smallest snapshot (header and trailer).
    #[error("shard snapshot is truncated: {got} bytes, a snapshot has at least {needed}")]
    Truncated {
        /// Bytes given.
        got: u64,
        /// Bytes of the smallest snapshot.
        needed: u64,
    },
    /// The bytes do not start with [`SNAPSHOT_MAGIC`].
    #[error("not a leakbloom shard snapshot: the first 8 bytes are not the magic \"LBSHARD\\0\"")]
    BadMagic,
    /// A format version this build does not read.
    #[error(
        "shard snapshot has format version {found}; this build reads version {supported}: \
         upgrade leakbloom"
    )]
    UnsupportedVersion {
        /// Version in the bytes.
        found: u32,
        /// Version this build writes and reads.
        supported: u32,
    },
    /// The CRC32 of the whole snapshot does not match: the bytes were damaged.
    #[error("shard snapshot is corrupted: CRC32 stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the trailer.
        stored: u32,
        /// CRC of the bytes before it.
        computed: u32,
    },
    /// The snapshot is another shard's.
    #[error("the snapshot is of shard {found}, not of shard {expected}")]
    WrongShard {
        /// Shard named in the snapshot.
        found: ShardId,
        /// This state's shard.
        expected: ShardId,
    },
    /// The checksum matched but the content is inconsistent (an encoder bug or tampering).
    #[error("shard snapshot is malformed at byte {offset}: {reason}")]
    Malformed {
        /// Where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A set's filter does not fit the node's filter memory budget now.
    #[error("set {name:?} in the shard snapshot: {source}")]
    Memory {
        /// The set.
        name: String,
        /// What the budget said.
        #[source]
        source: crate::memory::Exhausted,
    },
    /// A set's encoded filter was refused by the filter codec, or could not be allocated
    /// ([`SnapshotError::is_memory`]).
    #[error("set {name:?} in the shard snapshot: {source}")]
    Filter {
        /// The set.
        name: String,
        /// What the codec said.
        #[source]
        source: leakbloom_filter::Error,
    },
}

impl SnapshotError {
    /// Whether the snapshot is fine but this replica lacks the memory to hold it now.
    pub fn is_memory(&self) -> bool {
        matches!(
            self,
            SnapshotError::Memory { .. }
                | SnapshotError::Filter {
                    source: leakbloom_filter::Error::Alloc { .. },
                    ..
                }
        )
    }
}

/// Set name → the set's partition on this shard.
type Sets = BTreeMap<String, Arc<Partition>>;

/// One shard's sets.
#[derive(Debug)]
pub struct ShardState {
    shard: ShardId,
    /// Shards of the cluster: which keys belong here.
    shards: u32,
    /// The node's filter memory, shared by its replicas.
    budget: Arc<Budget>,
    sets: RwLock<Sets>,
    /// Raft log index of the last command applied (0 before the first).
    applied: AtomicU64,
    /// Serialises changes (apply, restore) with snapshots, so a snapshot is the state at one
    /// applied index and never encodes a filter while an insert sets its bits. Readers never
    /// take it.
    writer: Mutex<()>,
}

impl ShardState {
    /// An empty replica of shard `shard` of `shards`, holding its filters' memory in `budget`.
    pub fn new(shard: ShardId, shards: u32, budget: Arc<Budget>) -> ShardState {
        ShardState {
            shard,
            shards,
            budget,
            sets: RwLock::default(),
            applied: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    /// This shard's id.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The node's filter memory budget this replica holds its filters in.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Raft log index of the last command applied (see the module's caveats).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().expect("shard writer lock poisoned")
    }

    /// Applies one command at the index after [`applied`](Self::applied): for a shard that is
    /// not replicated, where commands have no log index of their own.
    pub fn apply(&self, command: &Command) -> Result<Applied> {
        let _writer = self.writer();
        self.apply_locked(self.applied() + 1, command)
    }

    /// Applies the command committed at Raft log index `index`. Deterministic; rejections are
    /// results too (every replica returns the same one) and leave the sets unchanged, but the
    /// index is recorded either way: a rejected command is an entry of the log like any other.
    ///
    /// [`Error::Stalled`] is not a result: the memory of a new set's filter cannot be had on
    /// this replica, nothing changed and the index is not recorded; the same command must be
    /// applied again later (see the module's caveats).
    ///
    /// # Panics
    /// When `index` is not above [`applied`](Self::applied) (entries are applied once, in
    /// order): a bug of the caller.
    pub fn apply_at(&self, index: u64, command: &Command) -> Result<Applied> {
        let _writer = self.writer();
        self.apply_locked(index, command)
    }

    fn apply_locked(&self, index: u64, command: &Command) -> Result<Applied> {
        let applied = self.applied();
        assert!(
            index > applied,
            "shard {}: command at log index {index} after index {applied}: entries must be \
             applied once each, in log order",
            self.shard
        );
        let result = self.apply_kind(command.kind.as_ref());
        if !matches!(result, Err(Error::Stalled { .. })) {
            self.applied.store(index, Ordering::Release);
        }
        result
    }

    fn apply_kind(&self, kind: Option<&command::Kind>) -> Result<Applied> {
        match kind {
            Some(command::Kind::CreateSet(create)) => self.create(create),
            Some(command::Kind::DropSet(drop)) => {
                let mut sets = self.sets.write().expect("set map lock poisoned");
                match sets.get(&drop.name) {
                    Some(partition) if partition.generation <= drop.generation => {
                        sets.remove(&drop.name);
                        Ok(Applied::Dropped)
                    }
                    _ => Err(Error::SetNotFound(drop.name.clone())),
                }
            }
            Some(command::Kind::Insert(insert)) => {
                let keys = insert_keys(insert)?;
                // Whole keys name their shard; suffixes cannot be of another shard.
                if let InsertKeys::Whole(keys) = keys {
                    let outside = keys
                        .iter()
                        .filter(|key| shard_of(key, self.shards) != self.shard)
                        .count();
                    if outside > 0 {
                        return Err(Error::Refused(format!(
                            "{outside} of the insert's {} keys belong to other shards than \
                             shard {} of {}",
                            keys.len(),
                            self.shard,
                            self.shards
                        )));
                    }
                }
                let partition = self
                    .partition(&insert.set)
                    .filter(|p| p.generation == insert.generation)
                    .ok_or_else(|| Error::SetNotFound(insert.set.clone()))?;
                partition.filter.insert_batch(keys.keys());
                Ok(Applied::Inserted {
                    keys: keys.keys().len() as u64,
                })
            }
            None => Ok(Applied::Nothing),
        }
    }

    /// Creates the partition of a set's generation (replacing an older generation's). Its
    /// memory is reserved and allocated before the set map is locked.
    fn create(&self, create: &CreateSetCommand) -> Result<Applied> {
        let (spec, geometry) = SetSpec::from_command(create)?;
        geometry.validate().map_err(|e| Error::SetParameters {
            name: spec.name.clone(),
            reason: e.to_string(),
        })?;
        if create.generation == 0 {
            return Err(Error::Refused(format!(
                "the create of set {:?} names no generation",
                spec.name
            )));
        }
        match self.partition(&spec.name) {
            Some(existing) if existing.generation == create.generation => {
                return if existing.spec == spec && existing.filter.geometry() == geometry {
                    Ok(Applied::Created)
                } else {
                    Err(Error::Refused(format!(
                        "set {:?} generation {} exists with other parameters",
                        spec.name, create.generation
                    )))
                };
            }
            Some(existing) if existing.generation > create.generation => {
                return Err(Error::Refused(format!(
                    "set {:?} has a newer generation ({}) than {}",
                    spec.name, existing.generation, create.generation
                )));
            }
            _ => {}
        }
        let stalled = |reason: String| Error::Stalled {
            shard: self.shard,
            reason: format!("set {:?}: {reason}", spec.name),
        };
        let memory = self
            .budget
            .reserve(geometry.memory_bytes())
            .map_err(|e| stalled(e.to_string()))?;
        let filter = Filter::new(geometry).map_err(|e| stalled(e.to_string()))?;
        let partition = Arc::new(Partition {
            spec,
            generation: create.generation,
            filter,
            memory,
        });
        let old = self
            .sets
            .write()
            .expect("set map lock poisoned")
            .insert(partition.spec.name.clone(), partition);
        // An older generation's filter is unmapped here, outside the lock.
        drop(old);
        Ok(Applied::Created)
    }

    /// The partition of set `name`, if the set exists.
    pub fn partition(&self, name: &str) -> Option<Arc<Partition>> {
        let sets = self.sets.read().expect("set map lock poisoned");
        sets.get(name).cloned()
    }

    /// Every partition, in set name order.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let sets = self.sets.read().expect("set map lock poisoned");
        sets.values().cloned().collect()
    }

    /// The whole state, encoded (see the module docs for the format). Equal states give equal
    /// bytes. Waits for a command being applied to finish; checks go on meanwhile.
    pub fn snapshot(&self) -> Vec<u8> {
        let _writer = self.writer();
        let sets = self.sets.read().expect("set map lock poisoned");
        let specs: Vec<(Vec<u8>, &Partition)> = sets
            .values()
            .map(|p| (p.command().encode_to_vec(), &**p))
            .collect();
        let len = HEADER_LEN
            + CRC_LEN
            + specs
                .iter()
                .map(|(spec, p)| {
                    let filter = usize::try_from(p.filter.encoded_len())
                        .expect("a filter in memory has an encoded length that fits usize");
                    4 + spec.len() + 8 + filter
                })
                .sum::<usize>();
        let mut out = CrcWriter {
            bytes: Vec::with_capacity(len),
            crc: crc32fast::Hasher::new(),
        };
        let count = u32::try_from(specs.len()).expect("fewer than 2^32 sets");
        out.put(&SNAPSHOT_MAGIC);
        out.put(&SNAPSHOT_VERSION.to_le_bytes());
        out.put(&self.shard.to_le_bytes());
        out.put(&self.applied().to_le_bytes());
        out.put(&count.to_le_bytes());
        for (spec, partition) in &specs {
            let spec_len = u32::try_from(spec.len()).expect("a set spec is a few hundred bytes");
            out.put(&spec_len.to_le_bytes());
            out.put(spec);
            out.put(&partition.filter.encoded_len().to_le_bytes());
            // Straight into the snapshot, no intermediate copy. Nothing inserts while the
            // writer lock is held, so the filter cannot change under the encoder.
            partition
                .filter
                .encode_into(&mut out)
                .expect("encoding a filter no one inserts into, into memory, cannot fail");
        }
        let crc = out.crc.finalize();
        let mut bytes = out.bytes;
        bytes.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(bytes.len(), len, "snapshot length computed ahead");
        bytes
    }

    /// Replaces the whole state with `snapshot` (from [`snapshot`](Self::snapshot) of a replica
    /// of this shard). Everything is checked before anything changes: on error the state is
    /// as it was; on success readers see the old sets or the new ones, never a mix. The one
    /// exception: when a filter cannot be allocated ([`SnapshotError::is_memory`]), the old
    /// sets are dropped (the snapshot replaces them anyway) so that the next attempt has their
    /// memory.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let (applied, restored) = match self.decode(snapshot) {
            Ok(decoded) => decoded,
            Err(error) if error.is_memory() => {
                let _writer = self.writer();
                let old = std::mem::take(&mut *self.sets.write().expect("set map lock poisoned"));
                drop(old);
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let _writer = self.writer();
        let mut sets = self.sets.write().expect("set map lock poisoned");
        let old = std::mem::replace(&mut *sets, restored);
        self.applied.store(applied, Ordering::Release);
        drop(sets);
        // The old filters are unmapped here, outside the lock (and later still where a
        // check holds an `Arc` to one).
        drop(old);
        Ok(())
    }

    /// Checks and decodes a snapshot: the applied index and the set map.
    fn decode(&self, bytes: &[u8]) -> Result<(u64, Sets), SnapshotError> {
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(SnapshotError::Truncated {
                got: bytes.len() as u64,
                needed: (HEADER_LEN + CRC_LEN) as u64,
            });
        }
        let (body, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
        let mut r = Cursor {
            bytes: body,
            pos: 0,
        };
        if r.take(8)? != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = r.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let shard = r.u32()?;
        if shard != self.shard {
            return Err(SnapshotError::WrongShard {
                found: shard,
                expected: self.shard,
            });
        }
        let applied = r.u64()?;
        let count = r.u32()?;
        let mut sets = Sets::new();
        for _ in 0..count {
            let at = r.pos;
            let spec_len = r.u32()?;
            let spec = r.take(spec_len as usize)?;
            let command = CreateSetCommand::decode(spec)
                .map_err(|e| r.malformed(at, format!("set parameters: {e}")))?;
            let (spec, geometry) = SetSpec::from_command(&command)
                .map_err(|e| r.malformed(at, format!("set parameters: {e}")))?;
            if sets
                .last_key_value()
                .is_some_and(|(last, _)| *last >= spec.name)
            {
                return Err(r.malformed(
                    at,
                    format!("set {:?} is out of name order or repeated", spec.name),
                ));
            }
            let at = r.pos;
            let filter_len = r.u64()?;
            let filter = usize::try_from(filter_len)
                .map_err(|_| r.malformed(at, format!("filter length {filter_len}")))
                .and_then(|len| r.take(len))?;
            // Held from the node's budget like a created filter's: a replica whose node has
            // less memory than the cluster admitted stalls rather than over-commits.
            let memory = self
                .budget
                .reserve(geometry.memory_bytes())
                .map_err(|source| SnapshotError::Memory {
                    name: spec.name.clone(),
                    source,
                })?;
            let filter = Filter::decode(filter).map_err(|source| SnapshotError::Filter {
                name: spec.name.clone(),
                source,
            })?;
            if filter.geometry() != geometry {
                return Err(r.malformed(
                    at,
                    format!(
                        "set {:?}: the filter is {}, its parameters say {geometry}",
                        spec.name,
                        filter.geometry()
                    ),
                ));
            }
            let partition = Partition {
                spec,
                generation: command.generation,
                filter,
                memory,
            };
            sets.insert(partition.spec.name.clone(), Arc::new(partition));
        }
        if r.pos != body.len() {
            return Err(r.malformed(
                r.pos,
                format!("{} bytes after the last set", body.len() - r.pos),
            ));
        }
        Ok((applied, sets))
    }
}

/// A buffer that keeps the CRC32 of what was written to it, so the snapshot is read once.
struct CrcWriter {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl CrcWriter {
    fn put(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.bytes.extend_from_slice(bytes);
    }
}

impl Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a snapshot's fields front to back; running past the end is an error, not a panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, offset: usize, reason: String) -> SnapshotError {
        SnapshotError::Malformed {
            offset: offset as u64,
            reason,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], SnapshotError> {
        let rest = self.bytes.len() - self.pos;
        if len > rest {
            return Err(self.malformed(
                self.pos,
                format!("a field of {len} bytes runs past the end ({rest} bytes are left)"),
            ));
        }
        let field = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(field)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BatchError;
    use leakbloom_cluster::KEY_LEN;
    use leakbloom_proto::internal::v1::{CreateSetCommand, DropSetCommand, InsertCommand};

    /// Shards of the tests' cluster; the keys of [`keys`] belong to shard 3 of them.
    const SHARDS: u32 = 16;

    /// Generation of the tests' sets.
    const GENERATION: u64 = 1;

    /// An empty replica of `shard` with memory to spare.
    fn replica(shard: ShardId) -> ShardState {
        ShardState::new(shard, SHARDS, Budget::new(u64::MAX))
    }

    fn create(name: &str, capacity: u64) -> Command {
        let spec = SetSpec::new(name, capacity, 1e-3, "sha256").unwrap();
        let geometry = spec.partition_geometry(1).unwrap();
        Command {
            id: 0,
            kind: Some(command::Kind::CreateSet(CreateSetCommand {
                generation: GENERATION,
                ..spec.command(geometry)
            })),
        }
    }

    /// An insert of `keys` as nodes propose it: their suffixes.
    fn insert(name: &str, keys: &[[u8; KEY_LEN]]) -> Command {
        let all: Vec<u32> = (0..keys.len() as u32).collect();
        Command {
            id: 0,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: name.into(),
                suffixes: crate::suffix::gather(keys, &all).into(),
                generation: GENERATION,
                ..InsertCommand::default()
            })),
        }
    }

    /// An insert of `keys` as older versions proposed it, and logs still hold it: whole keys.
    fn insert_whole(name: &str, keys: &[[u8; KEY_LEN]]) -> Command {
        Command {
            id: 0,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: name.into(),
                keys: keys.concat().into(),
                generation: GENERATION,
                ..InsertCommand::default()
            })),
        }
    }

    /// `n` distinct keys of shard 3, spread over blocks and bits.
    fn keys(seed: u8, n: usize) -> Vec<[u8; KEY_LEN]> {
        (0..n)
            .map(|i| {
                let mut key = [seed; KEY_LEN];
                key[..8]
                    .copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                // Shard 3 of 16: the top 4 bits of the prefix.
                key[0] = 0x30 | (key[0] & 0x0f);
                key[8..16].copy_from_slice(
                    &(i as u64 ^ 0x5555)
                        .wrapping_mul(0xff51_afd7_ed55_8ccd)
                        .to_be_bytes(),
                );
                key[16..24].copy_from_slice(
                    &(i as u64 + 7)
                        .wrapping_mul(0xc4ce_b9fe_1a85_ec53)
                        .to_be_bytes(),
                );
                key
            })
            .collect()
    }

    /// A shard with two sets holding keys and a few rejected commands behind it.
    fn sample() -> ShardState {
        let state = replica(3);
        state.apply_at(5, &create("b-set", 500)).unwrap();
        state.apply_at(6, &create("a-set", 2000)).unwrap();
        state.apply_at(8, &insert("a-set", &keys(1, 300))).unwrap();
        state.apply_at(9, &insert("b-set", &keys(2, 40))).unwrap();
        state
            .apply_at(12, &insert("nope", &keys(3, 1)))
            .unwrap_err();
        state
    }

    /// Re-seals a snapshot's trailer, to reach the checks behind the CRC.
    fn reseal(bytes: &mut [u8]) {
        let end = bytes.len() - CRC_LEN;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn create_insert_drop() {
        let state = replica(0);
        assert_eq!(state.apply(&create("a", 1000)).unwrap(), Applied::Created);
        // Idempotent with equal parameters, refused with other ones (the catalog refuses
        // them before a shard sees them; a shard refuses them too).
        assert_eq!(state.apply(&create("a", 1000)).unwrap(), Applied::Created);
        assert!(matches!(
            state.apply(&create("a", 2000)),
            Err(Error::Refused(_))
        ));
        let keys = [[7u8; KEY_LEN], [9u8; KEY_LEN]];
        assert_eq!(
            state.apply(&insert("a", &keys)).unwrap(),
            Applied::Inserted { keys: 2 }
        );
        let partition = state.partition("a").unwrap();
        assert!(keys.iter().all(|k| partition.filter.contains(k)));
        assert!(matches!(
            state.apply(&insert("b", &keys)),
            Err(Error::SetNotFound(_))
        ));
        let drop = Command {
            id: 0,
            kind: Some(command::Kind::DropSet(DropSetCommand {
                name: "a".into(),
                generation: GENERATION,
            })),
        };
        assert_eq!(state.apply(&drop).unwrap(), Applied::Dropped);
        assert!(matches!(state.apply(&drop), Err(Error::SetNotFound(_))));
        assert!(state.partition("a").is_none());
        assert_eq!(state.applied(), 7);
    }

    /// `command` with its generation set to `generation`.
    fn of_generation(mut command: Command, generation: u64) -> Command {
        match &mut command.kind {
            Some(command::Kind::CreateSet(c)) => c.generation = generation,
            Some(command::Kind::Insert(i)) => i.generation = generation,
            Some(command::Kind::DropSet(d)) => d.generation = generation,
            None => {}
        }
        command
    }

    #[test]
    fn generations_keep_a_set_created_again_apart_from_the_old_one() {
        let state = replica(3);
        state.apply(&create("s", 1000)).unwrap();
        state.apply(&insert("s", &keys(1, 50))).unwrap();
        // Inserts name the generation they are for.
        assert!(matches!(
            state.apply(&of_generation(insert("s", &keys(2, 5)), 2)),
            Err(Error::SetNotFound(_))
        ));
        // A newer generation replaces the old partition (its drop did not reach this shard):
        // it starts empty.
        state.apply(&of_generation(create("s", 1000), 5)).unwrap();
        let partition = state.partition("s").unwrap();
        assert_eq!(partition.generation, 5);
        assert_eq!(partition.filter.stats().bits_set, 0);
        // An older generation's create or drop changes nothing.
        assert!(matches!(
            state.apply(&create("s", 1000)),
            Err(Error::Refused(_))
        ));
        let drop_old = of_generation(
            Command {
                id: 0,
                kind: Some(command::Kind::DropSet(DropSetCommand {
                    name: "s".into(),
                    generation: 0,
                })),
            },
            4,
        );
        assert!(matches!(state.apply(&drop_old), Err(Error::SetNotFound(_))));
        assert_eq!(state.partition("s").unwrap().generation, 5);
        // A create without a generation is refused.
        assert!(matches!(
            state.apply(&of_generation(create("t", 10), 0)),
            Err(Error::Refused(_))
        ));
    }

    #[test]
    fn keys_of_other_shards_are_refused_and_change_nothing() {
        let state = replica(3);
        state.apply(&create("s", 1000)).unwrap();
        let before = state.snapshot();
        let mut stray = keys(1, 10);
        stray[4][0] = 0x40; // shard 4 of 16
        let err = state.apply(&insert_whole("s", &stray)).unwrap_err();
        assert!(
            matches!(&err, Error::Refused(reason) if reason.contains("1 of the insert's 10 keys")),
            "{err}"
        );
        let after = state.snapshot();
        // Only the applied index (and so the CRC) moved: a refusal is an entry of the log too.
        let sets = |bytes: &[u8]| bytes[24..bytes.len() - CRC_LEN].to_vec();
        assert!(sets(&before) == sets(&after), "the sets changed");
    }

    #[test]
    fn a_log_of_whole_keys_and_one_of_suffixes_give_byte_identical_replicas() {
        // One replica replays a log an older version wrote (whole keys), the other the log
        // this version writes (suffixes); a third mixes them, as a log written across an
        // upgrade does. Their filters must agree bit for bit.
        let older = replica(3);
        let newer = replica(3);
        let mixed = replica(3);
        for state in [&older, &newer, &mixed] {
            state.apply_at(1, &create("s", 5000)).unwrap();
        }
        let batches = [keys(1, 700), keys(2, 300), keys(3, 1)];
        for (i, batch) in batches.iter().enumerate() {
            let index = 2 + i as u64;
            let whole = older.apply_at(index, &insert_whole("s", batch)).unwrap();
            let short = newer.apply_at(index, &insert("s", batch)).unwrap();
            assert_eq!(whole, short, "the same result, keys counted alike");
            let command = if i % 2 == 0 {
                insert_whole("s", batch)
            } else {
                insert("s", batch)
            };
            mixed.apply_at(index, &command).unwrap();
        }
        assert_eq!(older.snapshot(), newer.snapshot());
        assert_eq!(mixed.snapshot(), newer.snapshot());
        // Whole keys are found, though the log held only their suffixes.
        let partition = newer.partition("s").unwrap();
        assert!(batches
            .iter()
            .flatten()
            .all(|k| partition.filter.contains(k)));
    }

    #[test]
    fn torn_suffixes_are_refused_and_change_nothing() {
        let state = replica(3);
        state.apply_at(1, &create("s", 1000)).unwrap();
        let before = state.snapshot();
        let mut torn = insert("s", &keys(1, 3));
        let Some(command::Kind::Insert(insert)) = &mut torn.kind else {
            unreachable!()
        };
        insert.suffixes.truncate(insert.suffixes.len() - 1);
        let both = {
            let mut both = insert_whole("s", &keys(1, 3));
            let Some(command::Kind::Insert(with_keys)) = &mut both.kind else {
                unreachable!()
            };
            with_keys.suffixes = vec![0; 24].into();
            both
        };
        for (index, command) in [(2, torn), (3, both)] {
            let err = state.apply_at(index, &command).unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{err}");
        }
        let sets = |bytes: &[u8]| bytes[24..bytes.len() - CRC_LEN].to_vec();
        assert!(sets(&before) == sets(&state.snapshot()), "the sets changed");
        assert_eq!(state.applied(), 3, "refusals are entries of the log too");
    }

    #[test]
    fn a_create_without_memory_stalls_and_changes_nothing() {
        let state = replica(3);
        state.apply_at(1, &create("a", 1000)).unwrap();
        let before = state.snapshot();
        state.budget().set_limit(state.budget().used());
        let err = state.apply_at(2, &create("b", 1000)).unwrap_err();
        assert!(
            matches!(&err, Error::Stalled { shard: 3, reason } if reason.contains("set \"b\"")),
            "{err}"
        );
        assert_eq!(state.applied(), 1, "a stalled command is not applied");
        assert_eq!(state.snapshot(), before);
        // With memory again, the same command at the same index applies.
        state.budget().set_limit(u64::MAX);
        state.apply_at(2, &create("b", 1000)).unwrap();
        assert_eq!(state.partitions().len(), 2);
    }

    #[test]
    fn a_snapshot_without_memory_stalls_and_frees_the_old_state() {
        let state = sample();
        let bytes = state.snapshot();
        let target = replica(3);
        target.apply_at(1, &create("old", 100_000)).unwrap();
        let used = target.budget().used();
        target.budget().set_limit(used);
        let err = target.restore(&bytes).unwrap_err();
        assert!(err.is_memory(), "{err}");
        assert_eq!(target.budget().used(), 0, "the old filters are let go");
        target.budget().set_limit(u64::MAX);
        target.restore(&bytes).unwrap();
        assert_eq!(target.snapshot(), bytes);
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        let state = replica(0);
        state.apply(&create("a", 10)).unwrap();
        let torn = Command {
            id: 0,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: "a".into(),
                keys: vec![1u8; 33].into(),
                generation: GENERATION,
                ..InsertCommand::default()
            })),
        };
        assert!(matches!(
            state.apply(&torn),
            Err(Error::Batch(BatchError::KeyLength { len: 33 }))
        ));
        let bad_create = Command {
            id: 0,
            kind: Some(command::Kind::CreateSet(CreateSetCommand {
                name: "Bad Name".into(),
                ..Default::default()
            })),
        };
        assert!(matches!(
            state.apply(&bad_create),
            Err(Error::SetName { .. })
        ));
        // A geometry no filter can have is a rejection of the parameters, not a panic.
        for (blocks, hash_count) in [(0, 7), (10, 0), (10, 15), (u64::MAX, 7)] {
            let mut command = create("g", 10);
            let Some(command::Kind::CreateSet(create)) = &mut command.kind else {
                unreachable!()
            };
            create.blocks = blocks;
            create.hash_count = hash_count;
            let err = state.apply(&command).unwrap_err();
            assert!(matches!(err, Error::SetParameters { .. }), "{err}");
        }
        assert_eq!(state.apply(&Command::default()).unwrap(), Applied::Nothing);
        assert_eq!(state.partitions().len(), 1);
    }

    #[test]
    fn apply_at_records_the_log_index() {
        let state = replica(0);
        assert_eq!(state.applied(), 0);
        state.apply_at(4, &create("a", 10)).unwrap();
        assert_eq!(state.applied(), 4);
        // Rejections are entries of the log too.
        state.apply_at(9, &insert("b", &keys(0, 1))).unwrap_err();
        assert_eq!(state.applied(), 9);
        state.apply(&Command::default()).unwrap();
        assert_eq!(state.applied(), 10);
    }

    #[test]
    #[should_panic(expected = "applied once each, in log order")]
    fn applying_an_index_twice_is_a_bug() {
        let state = replica(0);
        state.apply_at(4, &create("a", 10)).unwrap();
        state.apply_at(4, &create("a", 10)).unwrap();
    }

    #[test]
    fn snapshot_round_trip_is_byte_identical() {
        let state = sample();
        let bytes = state.snapshot();
        assert_eq!(&bytes[..8], b"LBSHARD\0");
        assert_eq!(bytes[8..12], 2u32.to_le_bytes());
        assert_eq!(bytes[12..16], 3u32.to_le_bytes());
        assert_eq!(bytes[16..24], 12u64.to_le_bytes());
        assert_eq!(bytes[24..28], 2u32.to_le_bytes());
        assert_eq!(bytes, state.snapshot(), "snapshots are deterministic");

        let restored = replica(3);
        restored.restore(&bytes).unwrap();
        assert_eq!(restored.applied(), 12);
        assert_eq!(restored.snapshot(), bytes);
        for (a, b) in state.partitions().iter().zip(restored.partitions()) {
            assert_eq!(a.spec, b.spec);
            assert_eq!(a.filter, b.filter);
            assert_eq!(a.filter.stats(), b.filter.stats());
        }
        assert!(keys(1, 300).iter().all(|k| restored
            .partition("a-set")
            .unwrap()
            .filter
            .contains(k)));

        // The same commands in another order of creation give the same bytes.
        let other = replica(3);
        other.apply_at(5, &create("a-set", 2000)).unwrap();
        other.apply_at(6, &create("b-set", 500)).unwrap();
        other.apply_at(8, &insert("b-set", &keys(2, 40))).unwrap();
        other.apply_at(9, &insert("a-set", &keys(1, 300))).unwrap();
        other.apply_at(12, &Command::default()).unwrap();
        assert_eq!(other.snapshot(), bytes);

        // Restore replaces everything, and restored state keeps applying.
        restored.restore(&replica(3).snapshot()).unwrap();
        assert_eq!(restored.applied(), 0);
        assert!(restored.partitions().is_empty());
        restored.restore(&bytes).unwrap();
        restored
            .apply_at(13, &insert("b-set", &keys(4, 5)))
            .unwrap();
        state.apply_at(13, &insert("b-set", &keys(4, 5))).unwrap();
        assert_eq!(restored.snapshot(), state.snapshot());
    }

    #[test]
    fn empty_snapshot_is_header_and_trailer() {
        let bytes = replica(0).snapshot();
        assert_eq!(bytes.len(), HEADER_LEN + CRC_LEN);
        replica(0).restore(&bytes).unwrap();
    }

    /// A state to restore bad snapshots into, checking that failures leave it unchanged.
    struct Target {
        state: ShardState,
        before: Vec<u8>,
    }

    impl Target {
        fn new() -> Target {
            let state = sample();
            let before = state.snapshot();
            Target { state, before }
        }

        fn restore(&self, bytes: &[u8]) -> Result<(), SnapshotError> {
            let result = self.state.restore(bytes);
            match result {
                Err(_) => assert!(
                    self.state.snapshot() == self.before,
                    "a failed restore changed the state"
                ),
                // A valid snapshot replaced the state: put the sample back.
                Ok(()) => self.state.restore(&self.before).unwrap(),
            }
            result
        }
    }

    #[test]
    fn corrupt_snapshots_are_refused_and_change_nothing() {
        let source = replica(3);
        source.apply_at(1, &create("s", 100)).unwrap();
        source.apply_at(2, &insert("s", &keys(9, 20))).unwrap();
        source.apply_at(3, &create("t", 10)).unwrap();
        let good = source.snapshot();
        let target = Target::new();

        for len in 0..good.len() {
            let err = target.restore(&good[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotError::Truncated { .. } | SnapshotError::Checksum { .. }
                ),
                "truncated to {len}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        target.restore(&longer).unwrap_err();

        for pos in 0..good.len() {
            for bit in [0, 3, 7] {
                let mut bad = good.clone();
                bad[pos] ^= 1 << bit;
                let err = target.restore(&bad).unwrap_err();
                let expected = match pos {
                    0..8 => matches!(err, SnapshotError::BadMagic),
                    8..12 => matches!(err, SnapshotError::UnsupportedVersion { .. }),
                    _ => matches!(err, SnapshotError::Checksum { .. }),
                };
                assert!(expected, "byte {pos} bit {bit}: {err}");

                // Behind a valid CRC, the content checks must hold on their own: an error
                // or (where the flip only changed a value, e.g. the applied index) a valid
                // state, never a panic.
                reseal(&mut bad);
                let _ = target.restore(&bad);
            }
        }
    }

    #[test]
    fn resealed_inconsistencies_are_named() {
        let state = replica(3);
        state.apply_at(1, &create("s", 100)).unwrap();
        let good = state.snapshot();
        let spec_len = u32::from_le_bytes(good[28..32].try_into().unwrap()) as usize;
        let filter_len_at = 32 + spec_len;
        let filter_at = filter_len_at + 8;

        let target = Target::new();
        let check = |edit: &dyn Fn(&mut Vec<u8>), want: &dyn Fn(&SnapshotError) -> bool| {
            let mut bad = good.clone();
            edit(&mut bad);
            reseal(&mut bad);
            let err = target.restore(&bad).unwrap_err();
            assert!(want(&err), "{err}");
        };
        check(&|b| b[12..16].copy_from_slice(&4u32.to_le_bytes()), &|e| {
            matches!(
                e,
                SnapshotError::WrongShard {
                    found: 4,
                    expected: 3
                }
            )
        });
        // More sets announced than present; a huge count does not allocate ahead.
        for count in [2u32, u32::MAX] {
            check(&|b| b[24..28].copy_from_slice(&count.to_le_bytes()), &|e| {
                matches!(e, SnapshotError::Malformed { .. })
            });
        }
        check(
            &|b| b[24..28].copy_from_slice(&0u32.to_le_bytes()),
            &|e| matches!(e, SnapshotError::Malformed { reason, .. } if reason.contains("after the last set")),
        );
        // Lengths that run past the end.
        check(
            &|b| b[28..32].copy_from_slice(&u32::MAX.to_le_bytes()),
            &|e| matches!(e, SnapshotError::Malformed { offset: 32, .. }),
        );
        check(
            &|b| b[filter_len_at..filter_at].copy_from_slice(&u64::MAX.to_le_bytes()),
            &|e| matches!(e, SnapshotError::Malformed { .. }),
        );
        // A spec that is not a protobuf, or not a valid set.
        check(
            &|b| b[32] = 0xff,
            &|e| matches!(e, SnapshotError::Malformed { reason, .. } if reason.contains("set parameters")),
        );
        check(
            &|b| {
                let at = 32 + 2; // the name's first byte: field 1, length, then the name
                assert_eq!(b[at], b's');
                b[at] = b'S';
            },
            &|e| matches!(e, SnapshotError::Malformed { reason, .. } if reason.contains("invalid set name")),
        );
        // A filter damaged under a valid outer CRC: its own CRC catches it.
        check(&|b| b[filter_at + 40] ^= 1, &|e| {
            matches!(
                e,
                SnapshotError::Filter {
                    source: leakbloom_filter::Error::Checksum { .. },
                    ..
                }
            )
        });
        // A set repeated (so out of name order).
        check(
            &|b| {
                let set = b[28..b.len() - CRC_LEN].to_vec();
                let end = b.len() - CRC_LEN;
                b.splice(end..end, set);
                b[24..28].copy_from_slice(&2u32.to_le_bytes());
            },
            &|e| matches!(e, SnapshotError::Malformed { reason, .. } if reason.contains("name order")),
        );
    }

    #[test]
    fn filter_geometry_must_match_the_parameters() {
        // A spec whose geometry disagrees with the filter's.
        let state = replica(0);
        state.apply_at(1, &create("s", 100)).unwrap();
        let partition = state.partition("s").unwrap();
        let mut wrong = partition.filter.geometry();
        wrong.blocks += 1;
        let spec = CreateSetCommand {
            generation: GENERATION,
            ..partition.spec.command(wrong)
        }
        .encode_to_vec();
        let filter = partition.filter.encode();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&spec);
        bytes.extend_from_slice(&(filter.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&filter);
        bytes.extend_from_slice(&[0; CRC_LEN]);
        reseal(&mut bytes);
        let err = replica(0).restore(&bytes).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Malformed { reason, .. } if reason.contains("parameters say")),
            "{err}"
        );
        // With the right geometry the same construction is accepted: the test builds the
        // format as documented.
        let spec = partition.command().encode_to_vec();
        let good = [
            &bytes[..28],
            &(spec.len() as u32).to_le_bytes(),
            &spec,
            &(filter.len() as u64).to_le_bytes(),
            &filter,
            &[0; CRC_LEN],
        ]
        .concat();
        let mut good = good;
        reseal(&mut good);
        assert_eq!(good, state.snapshot());
    }

    #[test]
    fn snapshots_wait_for_applies_but_reads_do_not() {
        // Readers hold partitions across a restore; the old filter stays readable.
        let state = sample();
        let held = state.partition("a-set").unwrap();
        state.restore(&replica(3).snapshot()).unwrap();
        assert!(state.partition("a-set").is_none());
        assert!(keys(1, 300).iter().all(|k| held.filter.contains(k)));
    }
}
