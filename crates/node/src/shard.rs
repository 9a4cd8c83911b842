//! Shards on a node: the cluster core's key -> shard mapping ([`shard_of`]), the largest shard
//! count, and how a Raft group id names a shard.

pub use leakbloom_cluster::{shard_of, ShardId};

/// Largest shard count a cluster may be created with. Shard ids travel as `u32`; more than a
/// few thousand Raft groups would cost more in heartbeats than they could gain in parallelism.
pub const MAX_SHARDS: u32 = 4096;

/// The shard a Raft group id names in errors and messages: groups outside the shard range (the
/// catalog's) are [`ShardId::MAX`], never a wrapped-around shard.
pub fn shard_of_group(group: leakbloom_raft::GroupId) -> ShardId {
    ShardId::try_from(group).unwrap_or(ShardId::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_outside_the_shard_range_do_not_wrap() {
        assert_eq!(shard_of_group(15), 15);
        assert_eq!(shard_of_group(1 << 40), ShardId::MAX);
    }
}
