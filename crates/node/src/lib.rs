//! A leakbloom node: the replicas of every shard, the set state machine, and the public
//! `leakbloom.v1.Lookup` gRPC service.
//!
//! # Layout
//! - [`shard`]: key → shard (key bytes 0..8, multiply-shift).
//! - [`set`]: set names and parameters ([`set::SetSpec`]) and a set's per-shard
//!   [`set::Partition`] (one filter).
//! - [`state`]: one shard's state machine; every change is a `Command` applied by
//!   [`state::ShardState::apply`], deterministically, in log order.
//! - [`node`]: the operations ([`Node::check`], [`Node::insert`], set management): validate,
//!   split by shard, propose one command per shard, read from applied state.
//! - [`service`]: the `Lookup` gRPC service over a [`Node`]; [`server`]: the tonic server with
//!   health and reflection.
//! - [`error`]: the [`Error`] enum and the single conversion into `tonic::Status`.
//! - [`config`]: the typed [`Config`].
//!
//! # Caveats
//! State lives in memory only, one replica per shard, and `Node::propose` applies commands
//! directly. Replication (Raft groups per shard, durable logs, snapshots) replaces `propose`
//! and leaves the rest as it is. A set is created and dropped shard by shard; with a single
//! process nothing can observe the half-way state.

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
pub use server::Server;
pub mod machine;
pub mod peer;
