//! What a store keeps in raft-engine, and under which keys: the on-disk format of the log.
//! Every record's key lives here, so a change of format is a change of this file.
//!
//! Each group has its own raft-engine region (its entries, plus the keyed records below); the
//! store's own bookkeeping lives in the region [`META_GROUP`].

use raft::eraftpb::Entry;
use raft_engine::MessageExt;

use crate::GroupId;

/// The raft-engine region that holds the store's own records: the top id, because shard
/// groups count up from 0. Groups may not use it.
pub(super) const META_GROUP: GroupId = u64::MAX;
/// Key of the write sequence number in [`META_GROUP`], compared with the sync marker on open.
pub(super) const SEQ_KEY: &[u8] = b"seq";

/// The key of group `group`'s latest write sequence number, in the store's own records.
pub(super) fn seq_key(group: GroupId) -> Vec<u8> {
    let mut key = SEQ_KEY.to_vec();
    key.push(b'/');
    key.extend_from_slice(&group.to_be_bytes());
    key
}
/// Key of a group's hard state (term, vote, commit): a vote must survive a restart.
pub(super) const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Key of a group's conf state (voters and learners), which raft-rs needs before any entry.
pub(super) const CONF_STATE_KEY: &[u8] = b"conf_state";
/// Key of a group's rejoin mark (see [`GroupStorage::set_rejoin`](super::GroupStorage::set_rejoin)):
/// present while a replica rebuilt from peers must not vote. 8 bytes, big-endian: 0 before the
/// group re-added it, else the index it must apply before it may vote again.
pub(super) const REJOIN_KEY: &[u8] = b"rejoin";
/// Key of a group's newest snapshot metadata (index, term, conf state): the log starts after
/// it, and `term(index)` must still answer for it.
pub(super) const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// Entry type tag for raft-engine: raft-rs entries, indexed by their `index` field.
#[derive(Debug)]
pub(super) struct RaftEntries;

impl MessageExt for RaftEntries {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}
