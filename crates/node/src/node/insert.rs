//! Inserts: a batch of keys into one set, split by shard, committed on every touched shard.

use leakbloom_cluster::plan::{self, by_shard};
use leakbloom_proto::internal::v1::{command, Command, InsertCommand};

use super::Node;
use crate::error::Result;
use crate::{set, suffix};

impl Node {
    /// Adds the `packed` keys to a set. Returns the number of keys once every touched shard has committed
    /// and applied its part.
    ///
    /// Each shard's command carries the keys' suffixes (bytes 8..32, [`crate::suffix`]) once
    /// every node applies that form, whole keys until then.
    pub async fn insert(&self, set: &str, packed: &[u8]) -> Result<u64> {
        set::validate_name(set)?;
        let keys = self.keys(packed)?;
        let entry = self.resolve(set, true).await?;
        let suffixes = self.catalog.state.read(|c| c.applies_suffixes());
        let commands = by_shard(keys, self.config.shards)
            .into_iter()
            .map(|(shard, positions)| {
                let insert = if suffixes {
                    InsertCommand {
                        suffixes: suffix::gather(keys, &positions).into(),
                        ..InsertCommand::default()
                    }
                } else {
                    InsertCommand {
                        keys: plan::gather(keys, &positions).into(),
                        ..InsertCommand::default()
                    }
                };
                let command = Command {
                    id: 0,
                    kind: Some(command::Kind::Insert(InsertCommand {
                        set: set.to_string(),
                        generation: entry.generation,
                        ..insert
                    })),
                };
                (shard, command)
            })
            .collect();
        self.propose_all(commands).await?;
        Ok(keys.len() as u64)
    }
}
