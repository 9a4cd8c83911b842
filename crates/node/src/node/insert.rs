//! Inserts: a batch of keys into one set, split by shard, committed on every touched shard.

use leakbloom_cluster::plan::{by_shard, gather};
use leakbloom_proto::internal::v1::{command, Command, InsertCommand};

use super::Node;
use crate::error::Result;
use crate::set;

impl Node {
    /// Adds keys to a set. Returns the number of keys once every touched shard has committed
    /// and applied its part.
    pub async fn insert(&self, set: &str, keys: bytes::Bytes) -> Result<u64> {
        set::validate_name(set)?;
        let parsed = self.keys(&keys)?;
        let entry = self.resolve(set, true).await?;
        let commands = by_shard(parsed, self.config.shards)
            .into_iter()
            .map(|(shard, positions)| {
                let command = Command {
                    id: 0,
                    kind: Some(command::Kind::Insert(InsertCommand {
                        set: set.to_string(),
                        keys: gather(parsed, &positions).into(),
                        generation: entry.generation,
                    })),
                };
                (shard, command)
            })
            .collect();
        self.propose_all(commands).await?;
        Ok(parsed.len() as u64)
    }
}
