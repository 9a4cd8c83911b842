//! A leakbloom node: replicas of the shards it hosts, each one member of that shard's Raft
//! group, the set state machine they apply, the public `leakbloom.v1.Lookup` gRPC service and
//! the peer service other nodes use.
//!
//! # Layout
//! - [`shard`]: key → shard (key bytes 0..8, multiply-shift).
//! - [`cluster`]: the bootstrap layout (nodes, replica placement of a new cluster) and the
//!   record kept in the data directory, which makes a node refuse to start with another shard
//!   count.
//! - [`catalog`]: the cluster catalog, a Raft group of its own on every node: which sets
//!   exist (parameters, geometry, generation, creating or active), dropped generations not yet
//!   collected, each node's limits, the node registry and the placement (each shard's
//!   replicas) with its epoch; one entry creates or drops a set everywhere, or moves replicas.
//! - [`join`]: what a node started with `--join` does before it opens: register with the
//!   cluster and take its shape.
//! - [`memory`]: a node's filter memory limit (by default half of what the process can get)
//!   and the [`memory::Budget`] its replicas reserve from.
//! - [`set`]: set names and parameters ([`set::SetSpec`]) and a set's per-shard
//!   [`set::Partition`] (one filter).
//! - [`state`]: one shard's state machine; every change is a `Command` applied
//!   deterministically, in log order; snapshots of the whole shard.
//! - [`suffix`]: the insert command's keys: each key's bytes 8..32 (the bytes the filter
//!   reads, 24 a key) as nodes propose them, or whole keys as older versions did.
//! - [`machine`]: [`state::ShardState`] and the catalog as `leakbloom_raft::StateMachine`s
//!   (commands and their outcomes as bytes; a filter that cannot be allocated stalls the
//!   replica instead of panicking).
//! - [`node`]: the operations ([`Node::check`], [`Node::insert`], set management through the
//!   catalog): validate, split by shard, commit one command per touched shard through its
//!   leader, read from the applied state after a ReadIndex barrier (or at once for
//!   any-replica reads); the health summary ([`node::Health`]); membership (replicas created
//!   and deleted as the placement changes, the placement loop on the catalog's leader, join,
//!   list and decommission).
//! - [`peer`]: the peer gRPC service (Raft messages batched per destination, snapshots in
//!   chunks, forwarded proposals and checks) and [`peer::Peers`], its client side and the Raft
//!   transport.
//! - [`service`]: the `Lookup` gRPC service over a [`Node`]; [`server`]: both tonic servers
//!   (client port with health and reflection, peer port; on `leakbloom_net` connections, which
//!   close when they stall; messages sized from the batch limit) and the metrics endpoint;
//!   `discovery`: the new-data-directory question to the peers (bootstrap or rebuild).
//! - [`metrics`]: Prometheus counters of the client API and gauges read from the replicas and
//!   sets at each scrape, on `GET /metrics`.
//! - [`error`]: the [`Error`] enum and the single conversion into `tonic::Status`.
//! - [`config`]: the typed [`Config`].
//!
//! # Caveats
//! - Nodes join (`--join`) and are decommissioned; a node that dies is not yet replaced by
//!   itself (its replicas stay placed on it until it returns or an operator decommissions it
//!   with `--force`).
//! - The peer port has no authentication; keep it on a private network. Commands are checked
//!   (by the leader against the catalog, by the state machine on their content), but a peer
//!   can still speak Raft itself.
//! - Data directories of format 1 (before the catalog) are refused with a message naming the
//!   way out: create the cluster again.

pub mod catalog;
pub mod cluster;
pub mod config;
mod discovery;
pub mod error;
pub mod join;
pub mod node;
pub mod server;
pub mod service;
pub mod set;
pub mod shard;
pub mod state;
pub mod suffix;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Server, StartError};
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod peer;
