//! leakbloom's layer over [raft-rs](https://docs.rs/raft/0.7) (tikv's Raft, `protobuf-codec`):
//! durable log storage for many Raft groups, a synchronous group node that applies committed
//! entries to an opaque [`StateMachine`], one Raft loop per node that runs all of a node's replicas, and (behind the `sim`
//! feature) a deterministic in-process cluster for tests. It knows nothing of filters, shards
//! or gRPC: commands are bytes.
//!
//! # Layout
//! - [`storage`]: [`Store`], one [raft-engine](https://docs.rs/raft-engine/0.4.2) instance per
//!   node holding every group's entries, hard state, conf state and snapshot metadata, plus
//!   checksummed snapshot files; [`GroupStorage`], one group's [`raft::Storage`]. One file per
//!   concern: the store and its write path, a group's storage, the rejoin mark, snapshot
//!   files, the sync marker, the recovery checks, the block cache guard.
//! - [`node`]: [`GroupNode`], a [`raft::RawNode`] with `tick`, `step`, `propose`,
//!   `read_index` and a Ready handled in two halves around a write shared with the node's
//!   other replicas ([`GroupNode::collect`] stages into a [`WriteBatch`],
//!   [`GroupNode::persisted`] finishes; `node/ready.rs`), returning an [`Output`] (messages,
//!   results by proposal id, read states, leadership, a snapshot job) instead of doing I/O;
//!   the snapshot policy and [`SnapshotJob`] (`node/snapshot.rs`); the [`StateMachine`]
//!   trait; rebuilding a replica that lost its data from its peers (the [`node`] docs: rejoin
//!   mark, remove and re-add as a learner, promotion), and stalling a replica whose state
//!   machine cannot apply an entry for want of a local resource ([`ApplyError::Stalled`]; the
//!   [`node`] docs, "Stalled replicas"); membership changes at run time: the node layer sets
//!   a group's members ([`GroupNode::set_members`]) and its leader moves the group there one
//!   simple change at a time, adding before removing, a new replica getting a snapshot (the
//!   [`node`] docs, "Membership changes"); and handing leadership back to the group's
//!   preferred replica (the first of its members; [`node::LEADER_TRANSFER_TICKS`]).
//! - [`host`]: one pass over every replica of a node: collect, one synced write, finish.
//!   The node's loop and the simulation both run it.
//! - `sim`, only with the cargo feature `sim` (off by default, so it is no part of the
//!   production API; this crate's tests turn it on through a dev-dependency on itself): a
//!   seeded `sim::Network` (delay, loss, duplication, reordering, partitions) and
//!   `sim::Cluster` (crashes, restarts, lost disks, nodes joining and decommissioned, member
//!   moves, a logical clock; each node's Ready goes
//!   through [`host::pass`], and snapshot jobs finish a seeded while later or die with a
//!   crash); `tests/simulation.rs` here and in `crates/node` run seeds against it and check
//!   the invariants, and `tests/scripts.rs` plays cluster stories written as golden scripts
//!   against it (`tests/scripts/*.txt`: a replica rebuilt after losing its disk, leadership
//!   handed back to the preferred replica, a member replaced by a new node).
//! - [`poller`]: the async shell, one per node: [`Poller::start`] runs a thread with one
//!   `select!` loop that hosts every replica of the node ([`Poller::add`] returns a
//!   cloneable [`GroupHandle`]: `step`, `propose`, `read_index`, `rejoin`, `set_members`,
//!   leadership, `membership` and `removed`) and a
//!   snapshot thread that writes snapshot files and purges the log; the caller supplies a
//!   [`Transport`]. `group.rs` holds one hosted replica's waiting proposals and batched
//!   ReadIndex reads, `handle.rs` the handle, `msg.rs` what travels into the loop.
//! - [`log`]: raft-rs logs through slog; [`log::TracingDrain`] forwards it to `tracing`.
//! - `examples/append_throughput.rs`: synced append throughput of the store.
//!
//! # The Ready order
//! A Ready follows raft-rs's documented order, split around the write: [`GroupNode::collect`]
//! (1) takes the messages that may go out before persisting; (2) applies a snapshot from the
//! leader (restore the state machine, persist the snapshot, which replaces the log); (3)
//! applies committed entries, each answering the local proposal at its index, matched by the
//! proposal id carried in the entry's context and by term; (4+5) stages new entries and a
//! changed hard state into the node's batch. The batch is written once for every replica of
//! the pass. [`GroupNode::persisted`] then (6) takes the messages that must wait for
//! persistence (votes, append responses); (7) `advance`s, takes the light ready's messages
//! and applies its committed entries (its commit index is written with the next batch),
//! `advance_apply`; then runs the snapshot policy. A leader that loses its role fails every
//! pending proposal with the retryable [`Error::NotLeader`].
//!
//! # The Raft loop
//! Every replica of a node runs on one thread ([`poller`]): a current-thread tokio runtime
//! whose `select!` takes ticks, inbound messages, proposals, reads, reports and control; after
//! each wake-up it takes what else is queued and runs passes ([`host`]) until no replica has a
//! Ready. A pass writes every replica's entries and hard states in one raft-engine write with
//! one `fdatasync`, so a node's fsyncs per second do not grow with the replicas it hosts, and
//! proposals arriving during a write share the next one. The caller's runtime (of either
//! flavour) never runs a blocking write. Snapshot files are written on a second thread.
//!
//! # Fsync discipline
//! Every write goes through one store-wide path: one raft-engine batch, written with
//! `fdatasync` before the call returns. Nothing leaves [`GroupNode::persisted`] that depends
//! on a write that has not returned: persisted messages (votes, acknowledgements) are taken
//! after the write, so a quorum's acknowledgement means a quorum's disks. A snapshot file
//! (named by group and index) is written to a temporary file, fsynced, renamed, and the
//! directory fsynced, before the metadata that points at it is staged; older files go only
//! after the metadata moved on. Writes block: async callers run them off the runtime.

//! # Disk bound
//! Each group's log is bounded in bytes ([`NodeConfig::snapshot_log_bytes`]): once the log
//! written since its last snapshot (commands plus ~160 bytes an entry) reaches its budget
//! `B = max(snapshot_log_ratio × last snapshot's size, snapshot_log_bytes)`, the replica
//! snapshots and compacts (each replica up to 15/32 of `B` sooner, to spread snapshots), and
//! [`Store::purge`] frees the log files no group needs once the store's log is over its
//! purge threshold `P` ([`StoreConfig`], 128 MiB; files of `T` = 16 MiB). With the node's
//! ratio of 1, a node's data directory (snapshots, log, markers) therefore holds at most
//!
//! ```text
//! 2 × F + max(P, shards × snapshot_log_bytes) + 3 × T
//! ```
//!
//! where `F` is its filters' size (the shards' snapshots): the snapshots (`F`), the log since
//! the oldest shard's snapshot (at most `F + shards × snapshot_log_bytes`, kept until it passes
//! `P`), the file being written (preallocated 2 MiB ahead), a file partly freed and the rewrite
//! queue (purged above `max(P / 10, T)`). With the node's defaults (16 shards × 4 MiB floors)
//! the constant is 176 MiB. Measured (`benches/scripts/disk-bound.sh`, 30 s of 65 536-key
//! inserts, 16 shards, `F` = 64 MiB, debug build): the data directories peaked at 208 MB and
//! ended at 139-158 MB against a bound of 319 MB; before the byte budget they grew with the
//! log, to 1.44 GB each. Caveats: the bound assumes inserts spread over the shards, as keys
//! are; a group that stops writing keeps its old entries until raft-engine moves them out
//! (at the next purge for a few entries, after nine purges for more); a shard's new
//! snapshot file exists beside the old one while it is written; and the log is purged at most
//! every 3 s, so files freed meanwhile (3 s of the node's log) wait for the next purge.
//!
//! # Caveats
//! - raft-engine's recovery truncates a damaged newest log file, which would silently drop
//!   synced records if the damage is not at the tail; a sync marker beside the log detects
//!   it and [`Store::open`] returns [`Error::DiskLost`] (as [`Store::group`] does for a group
//!   whose records do not add up): the replicas must be rebuilt from their peers (see
//!   [`storage`]).
//! - raft-engine panics when `fdatasync` fails (after a failed fsync the page cache cannot be
//!   trusted): the process must crash and recover from disk, which is the right reaction.
//! - raft-engine 0.4.2 can race `fetch_entries_to` with purging (tikv/raft-engine#370): the
//!   store serialises the two.
//! - raft-engine 0.4.2 caches the last entries block each thread read, keyed by file, offset
//!   and length but not by engine, so a thread reading two stores could get one store's entry
//!   from the other's block. The store fences the cache whenever another store reads on a
//!   thread; a running node never needs it (its replicas read their one store on its Raft loop's thread),
//!   the simulation (every node on one thread) and a process hosting several nodes do (see
//!   [`storage`]).
//! - raft-rs 0.7 decodes messages with protobuf 2.28, which has RUSTSEC-2024-0437 (stack
//!   overflow through deep recursion on untrusted input). Only authenticated peers may reach
//!   the peer port that feeds [`GroupNode::step`]; never expose it to clients.
//! - The transport must call [`GroupNode::report_snapshot`] for every snapshot message it
//!   carries (delivered or not): until then raft-rs sends that follower nothing else.
//! - One synced write per pass for all replicas, plus rare writes of their own: a snapshot
//!   received from a leader, an applied membership change, the rejoin mark.
//! - Committed entries are applied before the Ready's hard state is persisted (raft-rs's
//!   order). That is safe because the state machine is rebuilt from the snapshot and the log on
//!   restart; a state machine that persists its own applied index must not get ahead of the
//!   persisted commit index (see raft-rs's docs on `Ready`).
//! - A snapshot is whole in memory ([`StateMachine::snapshot`] returns one buffer, a copy of
//!   the state taken on the loop: a memcpy of a shard's filters) and in one file, written and
//!   synced on the snapshot thread while the replica applies on; memory for one extra copy of
//!   a replica's state per snapshot in flight (at most one per replica). raft-rs hands a
//!   snapshot to the transport as one message; streaming it in chunks is the transport's job
//!   (the node's peer transport sends 1 MiB chunks). A snapshot received from the leader is
//!   restored and its file written on the loop (rare: a replica far behind).
//! - raft-rs draws election timeouts from the thread's random source; only the simulation
//!   pins them ([`NodeConfig::max_election_ticks`]) to stay reproducible.
//! - The simulation crashes nodes between steps, never inside a pass; the storage tests cover
//!   torn writes.

mod error;
pub mod group;
mod handle;
pub mod host;
pub mod lease;
pub mod log;
mod msg;
pub mod node;
pub mod poller;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod storage;

pub use error::{Error, Result};
pub use handle::GroupHandle;
pub use node::{
    ApplyError, Collected, GroupNode, Leadership, Membership, NodeConfig, Output, SnapshotJob,
    StateMachine,
};
pub use poller::{Poller, Transport};
pub use storage::{GroupStorage, Persist, SnapshotSlot, Store, StoreConfig, WriteBatch};

/// Identifies a Raft group (one per shard).
pub type GroupId = u64;
/// Identifies a node (a raft-rs peer id; never 0).
pub type NodeId = u64;
