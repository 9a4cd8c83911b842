//! Durable log storage for many Raft groups in one [raft-engine] instance.
//!
//! A [`Store`] is one directory:
//!
//! ```text
//! DIR/log/        raft-engine's files: every group's entries, hard state, conf state and
//!                 snapshot metadata, plus the store's write sequence number
//! DIR/synced      the sync marker: the sequence number of the last synced write (see below)
//! DIR/snap/G-I.snap the snapshot of group G at index I (metadata + state-machine bytes,
//!                 CRC32); only the one the log's metadata names is kept
//! ```
//!
//! A [`GroupStorage`] is one group's view; it implements [`raft::Storage`] and is what
//! [`RawNode`](raft::RawNode) owns. All its writes go through one store-wide write path that
//! stamps the batch with the next sequence number (recorded under the writer's own key),
//! writes it with `fdatasync`, then raises the sync marker to the number (without fsync).
//!
//! # Layout
//! - `store.rs`: [`Store`] and [`StoreConfig`]: opening the engine, the write path, purging,
//!   loading and dropping groups.
//! - `group.rs`: [`GroupStorage`] and [`Persist`]: one group's state, what a Ready persists,
//!   compaction, and raft-rs's [`raft::Storage`] reads.
//! - `rejoin.rs`: the rejoin mark of a replica rebuilt from its peers.
//! - `snapshot_file.rs`: the checksummed snapshot files, written atomically.
//! - `marker.rs` and `recovery.rs`: the sync marker, and the checks on open and load that turn
//!   damage raft-engine would let through into [`Error::DiskLost`](crate::Error::DiskLost).
//! - `block_cache.rs`: the guard around raft-engine's per-thread block cache.
//! - `records.rs`: the keys of every record in raft-engine (the log's format);
//!   `terms.rs`: the log's terms in memory; `files.rs`: I/O errors and directory fsync.
//!
//! # Detecting lost writes
//! raft-engine's recovery mode `TolerateTailCorruption` truncates the newest log file at the
//! first damaged record, which is right after a crash (the damaged tail was never synced) but
//! silently drops synced records when the damage is in the middle of the file. The sync marker
//! holds the number of the last synced write: if the log recovers to a lower number,
//! [`Store::open`] fails with [`Error::DiskLost`](crate::Error::DiskLost). Damage to an older
//! log file makes raft-engine refuse to open (also `DiskLost`), and each group is checked on
//! load (its commit index must be covered by its log or snapshot, its last entry's term must
//! not exceed its hard state's term). The details, and what a power loss does to the marker,
//! are in `recovery.rs`.
//!
//! # Concurrency
//! Every write blocks for an `fdatasync`: an async caller must run it off the runtime
//! (a dedicated thread or `spawn_blocking`). A node's Raft loop stages every replica's records
//! of a pass into one [`WriteBatch`] ([`GroupStorage::stage`]) and writes it once
//! ([`Store::write_batch`]); writes that concern one group (membership, a received snapshot,
//! the rejoin mark) go on their own. Sequence numbers are taken from an atomic counter, so
//! concurrent writes may reach the log out of number order; each write records its number
//! under its writer's key (a group's own, or the batch writer's; each writes from one thread
//! at a time, so each key only grows), and recovery takes the highest over all keys: the
//! number of the newest write the log
//! holds. Reads of entries hold a shared lock that [`Store::purge`] takes
//! exclusively: raft-engine 0.4.2 can fail `fetch_entries_to` while a purge removes the files
//! it reads (tikv/raft-engine#370).
//!
//! # Caveat: raft-engine's block cache
//! raft-engine 0.4.2 keeps the last entries block a thread decoded in a thread-local keyed by
//! file number, offset and length only, not by engine, so a thread that read one store could
//! be handed another store's entry. Every read of entries, and every purge, therefore runs
//! through one guard: the first store to read on a thread reads at no cost (a running node
//! only ever takes this path: each group reads on its own thread); another store first reads a
//! *fence*, a one-entry log whose block no store can ask for. The details are in
//! `block_cache.rs`.
//!
//! [raft-engine]: https://docs.rs/raft-engine/0.4.2

mod block_cache;
mod files;
mod group;
mod marker;
mod records;
mod recovery;
mod rejoin;
mod snapshot_file;
mod store;
mod terms;
#[cfg(test)]
mod testing;

pub use group::{GroupStorage, Persist, Staged};
pub use store::{SnapshotSlot, Store, StoreConfig, WriteBatch};
