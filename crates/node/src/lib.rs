//! A leakbloom node: replicas of the shards it hosts, each one member of that shard's Raft
//! group, the set state machine they apply, the public `leakbloom.v1.Lookup` gRPC service and
//! the peer service other nodes use.
//!
//! # Layout
//! - [`shard`]: key → shard (key bytes 0..8, multiply-shift).
//! - [`cluster`]: the static layout (nodes, replica placement) and the record of it kept in the
//!   data directory, which makes a node refuse to start with another shard count.
//! - [`set`]: set names and parameters ([`set::SetSpec`]) and a set's per-shard
//!   [`set::Partition`] (one filter).
//! - [`state`]: one shard's state machine; every change is a `Command` applied
//!   deterministically, in log order; snapshots of the whole shard.
//! - [`machine`]: [`state::ShardState`] as a `leakbloom_raft::StateMachine` (commands and
//!   their outcomes as bytes).
//! - [`node`]: the operations ([`Node::check`], [`Node::insert`], set management): validate,
//!   split by shard, commit one command per touched shard through its leader, read from the
//!   applied state after a ReadIndex barrier (or at once for any-replica reads).
//! - [`peer`]: the peer gRPC service (Raft messages batched per destination, snapshots in
//!   chunks, forwarded proposals and checks) and [`peer::Peers`], its client side and the Raft
//!   transport.
//! - [`service`]: the `Lookup` gRPC service over a [`Node`]; [`server`]: both tonic servers
//!   (client port with health and reflection, peer port; on `leakbloom_net` connections, which
//!   close when they stall; messages sized from the batch limit), the metrics endpoint, and
//!   the new-data-directory question to the peers (bootstrap or rebuild).
//! - [`metrics`]: Prometheus counters of the client API and gauges read from the replicas and
//!   sets at each scrape, on `GET /metrics`.
//! - [`error`]: the [`Error`] enum and the single conversion into `tonic::Status`.
//! - [`config`]: the typed [`Config`].
//!
//! # Caveats
//! - Membership is static: nodes and replication are fixed at bootstrap (no adding or removing
//!   nodes yet).
//! - A set is created and dropped shard by shard, each shard its own Raft group: a crash
//!   part-way leaves it on some shards, invisible until the request is retried (see [`node`]).
//! - The peer port has no authentication; keep it on a private network.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod error;
pub mod node;
pub mod server;
pub mod service;
pub mod set;
pub mod shard;
pub mod state;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Server, StartError};
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod peer;
