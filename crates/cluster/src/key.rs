//! Keys, shards and node ids.
//!
//! A key is 32 uniformly distributed bytes: SHA-256 or HMAC-SHA256 of an identifier's canonical
//! form. The shard of a key comes from its first 8 bytes only; the filter engine takes block
//! and bit positions from bytes 8..32, so the choice of shard and the bits inside a shard's
//! filter are independent. Multiply-shift (`(prefix * shards) >> 64`) keeps shards contiguous
//! ranges of the key space, ordered by key prefix.

/// Length of a key in bytes: a SHA-256 / HMAC-SHA256 output.
pub const KEY_LEN: usize = 32;

/// A key: SHA-256 or HMAC-SHA256 of an identifier's canonical form. The only thing about an
/// identifier the cluster ever sees.
pub type Key = [u8; KEY_LEN];

/// Index of a shard, `0..shards`.
pub type ShardId = u32;

/// A node id, as nodes number themselves (1 or more; 0 means "none" on the wire).
pub type NodeId = u64;

/// The shard that owns `key` in a key space split into `shards` shards: multiply-shift of key
/// bytes 0..8, so shards are contiguous, ordered ranges of key prefixes, and the filter's bits
/// (bytes 8..32) are independent of the shard. Nodes, routers and clients must agree on it: it
/// is part of the cluster's format.
pub fn shard_of(key: &Key, shards: u32) -> ShardId {
    let prefix = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    ((u128::from(prefix) * u128::from(shards)) >> 64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with_prefix(prefix: u64) -> Key {
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
    fn one_shard_takes_everything() {
        assert_eq!(shard_of(&key_with_prefix(u64::MAX), 1), 0);
    }
}
