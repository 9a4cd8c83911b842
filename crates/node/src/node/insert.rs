//! Inserts: a batch of keys into one set, split by shard, committed on every touched shard.

use leakbloom_proto::internal::v1::{command, Command, InsertCommand};

use super::Node;
use crate::error::Result;
use crate::set;
use crate::shard::{shard_of, ShardId};

impl Node {
    /// Adds keys to a set. Returns the number of keys once every touched shard has committed
    /// and applied its part.
    pub async fn insert(&self, set: &str, keys: bytes::Bytes) -> Result<u64> {
        set::validate_name(set)?;
        let parsed = self.keys(&keys)?;
        let entry = self.resolve(set, true).await?;
        let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); self.config.shards as usize];
        for key in parsed {
            per_shard[shard_of(key, self.config.shards) as usize].extend_from_slice(key);
        }
        let commands = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(shard, keys)| {
                let command = Command {
                    id: 0,
                    kind: Some(command::Kind::Insert(InsertCommand {
                        set: set.to_string(),
                        keys: keys.into(),
                        generation: entry.generation,
                    })),
                };
                (shard as ShardId, command)
            })
            .collect();
        self.propose_all(commands).await?;
        Ok(parsed.len() as u64)
    }
}
