//! Inserts: a batch of keys into one set, split by shard, committed on every touched shard.

use leakbloom_cluster::plan::{by_shard, gather};
use leakbloom_proto::internal::v1::{command, Command, InsertCommand};

use super::Node;
use crate::error::Result;
use crate::set;

impl Node {
    /// Adds the `packed` keys to a set. Returns the number of keys once every touched shard has committed
    /// and applied its part.
    pub async fn insert(&self, set: &str, packed: &[u8]) -> Result<u64> {
        set::validate_name(set)?;
        let keys = self.keys(packed)?;
        let entry = self.resolve(set, true).await?;
        let commands = by_shard(keys, self.config.shards)
            .into_iter()
            .map(|(shard, positions)| {
                let command = Command {
                    id: 0,
                    kind: Some(command::Kind::Insert(InsertCommand {
                        set: set.to_string(),
                        keys: gather(keys, &positions).into(),
                        generation: entry.generation,
                    })),
                };
                (shard, command)
            })
            .collect();
        self.propose_all(commands).await?;
        Ok(keys.len() as u64)
    }
}
