//! Key → shard mapping.
//!
//! The shard of a key comes from its first 8 bytes only; the filter engine takes block and bit
//! positions from bytes 8..32, so the choice of shard and the bits inside a shard's filter are
//! independent. Multiply-shift (`(prefix * shards) >> 64`) keeps shards contiguous ranges of
//! the key space, ordered by key prefix.

/// Index of a shard, `0..shards`.
pub type ShardId = u32;

/// Length of a key in bytes.
pub const KEY_LEN: usize = leakbloom_filter::KEY_LEN;

/// Largest shard count a cluster may be created with. Shard ids travel as `u32`; more than a
/// few thousand Raft groups would cost more in heartbeats than they could gain in parallelism.
pub const MAX_SHARDS: u32 = 4096;

pub use leakbloom_filter::shard_of;

/// The shard a Raft group id names in errors and messages: groups outside the shard range (the
/// catalog's) are [`ShardId::MAX`], never a wrapped-around shard.
pub fn shard_of_group(group: leakbloom_raft::GroupId) -> ShardId {
    ShardId::try_from(group).unwrap_or(ShardId::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with_prefix(prefix: u64) -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        key[..8].copy_from_slice(&prefix.to_be_bytes());
        key
    }

    #[test]
    fn shards_are_contiguous_prefix_ranges() {
        assert_eq!(shard_of(&key_with_prefix(0), 16), 0);
        assert_eq!(shard_of(&key_with_prefix(u64::MAX), 16), 15);
        assert_eq!(shard_of(&key_with_prefix(1 << 60), 16), 1);
        assert_eq!(shard_of(&key_with_prefix((1 << 60) - 1), 16), 0);
        let mut last = 0;
        for i in 0..1000u64 {
            let shard = shard_of(&key_with_prefix(i * (u64::MAX / 1000)), 7);
            assert!(shard >= last && shard < 7);
            last = shard;
        }
    }

    #[test]
    fn bytes_after_the_prefix_do_not_move_a_key() {
        let mut key = key_with_prefix(0x1234_5678_9abc_def0);
        let shard = shard_of(&key, 16);
        key[8..].fill(0xff);
        assert_eq!(shard_of(&key, 16), shard);
    }

    #[test]
    fn groups_outside_the_shard_range_do_not_wrap() {
        assert_eq!(shard_of_group(15), 15);
        assert_eq!(shard_of_group(1 << 40), ShardId::MAX);
    }

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(shard_of(&key_with_prefix(u64::MAX), 1), 0);
    }
}
