//! The state machine of one shard: set name → that set's partition of the shard.
//!
//! Every change goes through [`ShardState::apply`], one [`Command`] at a time, in log order.
//! `apply` is deterministic: replicas that apply the same commands hold byte-identical
//! filters and return the same results, errors included. Reads ([`ShardState::partition`])
//! only take a read lock long enough to clone an `Arc`; checks then read filter bits lock-free
//! while later inserts set more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use leakbloom_filter::{Filter, KEY_LEN};
use leakbloom_proto::v1::{command, Command};

use crate::error::{Error, Result};
use crate::set::{Partition, SetSpec};
use crate::shard::ShardId;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
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

/// One shard's sets.
#[derive(Debug)]
pub struct ShardState {
    shard: ShardId,
    sets: RwLock<BTreeMap<String, Arc<Partition>>>,
    /// Number of commands applied; becomes the Raft applied index.
    applied: AtomicU64,
}

impl ShardState {
    /// An empty shard.
    pub fn new(shard: ShardId) -> ShardState {
        ShardState {
            shard,
            sets: RwLock::default(),
            applied: AtomicU64::new(0),
        }
    }

    /// This shard's id.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Number of commands applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Applies one command. Deterministic; errors are results too (every replica returns the
    /// same one) and leave the state unchanged.
    pub fn apply(&self, command: &Command) -> Result<Applied> {
        let result = self.apply_kind(command.kind.as_ref());
        // Failed commands are applied too: they are entries of the log like any other.
        self.applied.fetch_add(1, Ordering::Release);
        result
    }

    fn apply_kind(&self, kind: Option<&command::Kind>) -> Result<Applied> {
        match kind {
            Some(command::Kind::CreateSet(create)) => {
                let (spec, geometry) = SetSpec::from_command(create)?;
                let mut sets = self.sets.write().expect("set map lock poisoned");
                match sets.get(&spec.name) {
                    Some(existing) if existing.spec == spec => Ok(Applied::Created),
                    Some(existing) => Err(Error::SetExists {
                        name: spec.name.clone(),
                        existing: existing.spec.to_string(),
                        requested: spec.to_string(),
                    }),
                    None => {
                        let filter = Filter::new(geometry)?;
                        sets.insert(spec.name.clone(), Arc::new(Partition { spec, filter }));
                        Ok(Applied::Created)
                    }
                }
            }
            Some(command::Kind::DropSet(drop)) => {
                let mut sets = self.sets.write().expect("set map lock poisoned");
                match sets.remove(&drop.name) {
                    Some(_) => Ok(Applied::Dropped),
                    None => Err(Error::SetNotFound(drop.name.clone())),
                }
            }
            Some(command::Kind::Insert(insert)) => {
                let (keys, rest) = insert.keys.as_chunks::<KEY_LEN>();
                if !rest.is_empty() {
                    return Err(Error::KeyLength {
                        len: insert.keys.len(),
                    });
                }
                let partition = self
                    .partition(&insert.set)
                    .ok_or_else(|| Error::SetNotFound(insert.set.clone()))?;
                partition.filter.insert_batch(keys);
                Ok(Applied::Inserted {
                    keys: keys.len() as u64,
                })
            }
            None => Ok(Applied::Nothing),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakbloom_proto::v1::{CreateSetCommand, DropSetCommand, InsertCommand};

    fn create(name: &str, capacity: u64) -> Command {
        let spec = SetSpec::new(name, capacity, 1e-3, "sha256").unwrap();
        let geometry = spec.partition_geometry(1).unwrap();
        Command {
            id: 0,
            kind: Some(command::Kind::CreateSet(spec.command(geometry))),
        }
    }

    fn insert(name: &str, keys: &[[u8; KEY_LEN]]) -> Command {
        Command {
            id: 0,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: name.into(),
                keys: keys.concat().into(),
            })),
        }
    }

    #[test]
    fn create_insert_drop() {
        let state = ShardState::new(0);
        assert_eq!(state.apply(&create("a", 1000)).unwrap(), Applied::Created);
        // Idempotent with equal parameters, refused with other ones.
        assert_eq!(state.apply(&create("a", 1000)).unwrap(), Applied::Created);
        assert!(matches!(
            state.apply(&create("a", 2000)),
            Err(Error::SetExists { .. })
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
            kind: Some(command::Kind::DropSet(DropSetCommand { name: "a".into() })),
        };
        assert_eq!(state.apply(&drop).unwrap(), Applied::Dropped);
        assert!(matches!(state.apply(&drop), Err(Error::SetNotFound(_))));
        assert!(state.partition("a").is_none());
        assert_eq!(state.applied(), 7);
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        let state = ShardState::new(0);
        state.apply(&create("a", 10)).unwrap();
        let torn = Command {
            id: 0,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: "a".into(),
                keys: vec![1u8; 33].into(),
            })),
        };
        assert!(matches!(
            state.apply(&torn),
            Err(Error::KeyLength { len: 33 })
        ));
        let bad_create = Command {
            id: 0,
            kind: Some(command::Kind::CreateSet(CreateSetCommand {
                name: "Bad Name".into(),
                ..Default::default()
            })),
        };
        assert!(state.apply(&bad_create).is_err());
        assert_eq!(state.apply(&Command::default()).unwrap(), Applied::Nothing);
    }
}
