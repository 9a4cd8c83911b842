//! leakbloom's layer over [raft-rs](https://docs.rs/raft/0.7) (tikv's Raft, `protobuf-codec`):
//! durable log storage for many Raft groups, a synchronous group node that applies committed
//! entries to an opaque [`StateMachine`], an async driver that runs it, and (behind the `sim`
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
//!   `read_index` and one [`GroupNode::handle_ready`] that returns an [`Output`] (messages,
//!   results by proposal id, read states, leadership) instead of doing network I/O; the
//!   [`StateMachine`] trait; rebuilding a replica that lost its data from its peers
//!   (the [`node`] docs: rejoin mark, remove and re-add as a learner, promotion), and
//!   stalling a replica whose state machine cannot apply an entry for want of a local
//!   resource ([`ApplyError::Stalled`]; the [`node`] docs, "Stalled replicas"); a leader
//!   adding back missing members, promoting caught-up learners and handing leadership back to
//!   the group's preferred replica (the first of its members; [`node::LEADER_TRANSFER_TICKS`]).
//! - `sim`, only with the cargo feature `sim` (off by default, so it is no part of the
//!   production API; this crate's tests turn it on through a dev-dependency on itself): a
//!   seeded `sim::Network` (delay, loss, duplication, reordering, partitions) and
//!   `sim::Cluster` (crashes, restarts, lost disks, a logical clock); `tests/simulation.rs`
//!   here and in `crates/node` run seeds against it and check the invariants, and
//!   `tests/scripts.rs` plays cluster stories written as golden scripts against it
//!   (`tests/scripts/*.txt`: a replica rebuilt after losing its disk, leadership handed back
//!   to the preferred replica).
//! - [`driver`]: the async shell: [`Driver::spawn`] runs a [`GroupNode`] in its own loop
//!   and returns a cloneable [`GroupHandle`] (`step`, `propose`, `read_index`, `rejoin`,
//!   leadership); the caller supplies a [`Transport`].
//! - [`log`]: raft-rs logs through slog; [`log::TracingDrain`] forwards it to `tracing`.
//! - `examples/append_throughput.rs`: synced append throughput of the store.
//!
//! # The Ready order
//! [`GroupNode::handle_ready`] follows raft-rs's documented order: (1) take the messages that
//! may go out before persisting; (2) apply a snapshot from the leader (restore the state
//! machine, persist the snapshot, which replaces the log); (3) apply committed entries, each
//! answering the local proposal at its index, matched by the proposal id carried in the
//! entry's context and by term; (4+5) append new entries and persist a changed hard state in
//! one synced write; (6) take the messages that must wait for persistence (votes, append
//! responses); (7) `advance`, persist a commit index the light ready advanced, take its
//! messages and apply its committed entries, `advance_apply`; then compact by policy. A leader
//! that loses its role fails every pending proposal with the retryable
//! [`Error::NotLeader`].
//!
//! # Driver
//! Each replica runs on a dedicated std thread that owns its [`GroupNode`] and runs one
//! `select!` loop on a current-thread tokio runtime: ticks, inbound messages, proposals,
//! batched ReadIndex reads and shutdown go in; after each event it handles Readies until none
//! is left, sends messages through the [`Transport`] and answers callers through oneshots.
//! The blocking, synced writes of [`GroupNode::handle_ready`] thus run on that thread, never on
//! the caller's runtime (which may be of either flavour); the cost is a thread per replica and
//! at least one fsync per group per Ready.
//!
//! # Fsync discipline
//! Every write goes through one store-wide path: one raft-engine batch, written with
//! `fdatasync` before the call returns. Nothing leaves [`GroupNode::handle_ready`] that depends
//! on a write that has not returned: persisted messages (votes, acknowledgements) are taken
//! after the write, so a quorum's acknowledgement means a quorum's disks. A snapshot file
//! (named by group and index) is written to a temporary file, fsynced, renamed, and the
//! directory fsynced, before the metadata that points at it; older files go only after the
//! metadata moved on. Writes block: async callers run them off the runtime.
//!
//! # Disk bound
//! Each group's log is bounded in bytes ([`NodeConfig::snapshot_log_bytes`]): once the log
//! written since its last snapshot (commands plus ~160 bytes an entry) reaches its budget
//! `B = max(snapshot_log_ratio × last snapshot's size, snapshot_log_bytes)`, the replica
//! snapshots and compacts (each replica up to 7/32 of `B` sooner, to spread snapshots), and
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
//! (at the next purge for a few entries, after nine purges for more), and a shard's new
//! snapshot file exists beside the old one while it is written.
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
//!   thread; a running node never needs it (each group reads its own store on its own thread),
//!   the simulation (every node on one thread) and a process hosting several nodes do (see
//!   [`storage`]).
//! - raft-rs 0.7 decodes messages with protobuf 2.28, which has RUSTSEC-2024-0437 (stack
//!   overflow through deep recursion on untrusted input). Only authenticated peers may reach
//!   the peer port that feeds [`GroupNode::step`]; never expose it to clients.
//! - The transport must call [`GroupNode::report_snapshot`] for every snapshot message it
//!   carries (delivered or not): until then raft-rs sends that follower nothing else.
//! - At least one synced write per Ready per group (more when the light ready advances the
//!   commit index, a membership change applies, or a snapshot is received or taken): a node
//!   hosting many groups should batch them into one write (future work).
//! - Committed entries are applied before the Ready's hard state is persisted (raft-rs's
//!   order). That is safe because the state machine is rebuilt from the snapshot and the log on
//!   restart; a state machine that persists its own applied index must not get ahead of the
//!   persisted commit index (see raft-rs's docs on `Ready`).
//! - A snapshot is whole in memory ([`StateMachine::snapshot`] returns one buffer) and in one
//!   file, and is taken on the replica's own thread: the replica applies nothing while its
//!   state machine serializes and the file is synced. raft-rs hands it to the transport as one
//!   message; streaming it in chunks is the transport's job (the node's peer transport sends
//!   1 MiB chunks).
//! - raft-rs draws election timeouts from the thread's random source; only the simulation
//!   pins them ([`NodeConfig::max_election_ticks`]) to stay reproducible.
//! - The simulation crashes nodes between steps, never inside
//!   [`GroupNode::handle_ready`]; the storage tests cover torn writes.

mod error;
pub mod group;
mod handle;
pub mod host;
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
    ApplyError, Collected, GroupNode, Leadership, NodeConfig, Output, SnapshotJob, StateMachine,
};
pub use poller::{Poller, Transport};
pub use storage::{GroupStorage, Persist, Store, StoreConfig, WriteBatch};

/// Identifies a Raft group (one per shard).
pub type GroupId = u64;
/// Identifies a node (a raft-rs peer id; never 0).
pub type NodeId = u64;
