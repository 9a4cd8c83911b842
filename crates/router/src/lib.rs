//! The leakbloom router: a stateless process that serves the same `leakbloom.v1.Lookup` API
//! as a node, splitting each batch by shard and fanning it out to the nodes.
//!
//! It learns the shard map (shards, each shard's replicas and leader, every node's client
//! address) from any of the nodes it is given (`leakbloom.v1.Cluster/GetShardMap`), refreshes
//! it every second and after any retryable failure, and keeps one persistent HTTP/2 channel per
//! node. A `Check` or `Insert` is split by shard and grouped *per node*: a node gets one call
//! with the keys of every shard it serves for this request (its leader shards for inserts and
//! linearizable checks; for any-replica checks the router picks, per request, one node
//! rotating over them, and keys go there whenever it holds their shard, so with every shard on
//! every node the whole request goes to one node without being copied). Answers are merged
//! back into request order. Failed parts are re-planned and retried until the deadline.
//!
//! Nodes do the same splitting themselves (any node serves the whole API), so a stale map only
//! costs a hop, never a wrong answer.
//!
//! A request is checked with the nodes' rules (keys, set names, sets per check, set-key pairs)
//! before any of it is forwarded, and messages are limited to what the batch limit needs, so
//! a bad request is answered by the router and never reaches the connection a node shares
//! with every other client's calls. Connections that never complete the HTTP/2 handshake or
//! go idle are closed (`leakbloom_net`).
//!
//! The routing itself is the same code a direct client runs: the shard map, the plan of a batch
//! and the merge of its answers, the retry policy (crate `leakbloom-cluster`), and carrying them
//! out over gRPC with coalescing of small checks and inserts and hedged any-replica reads
//! (`leakbloom_client::routing`). The router adds validation, deadlines from `grpc-timeout`,
//! metrics and the server.
//!
//! # Layout
//! - [`router`]: [`Router`]: validation, then routing through `leakbloom_client::Routing`.
//! - [`service`]: the `Lookup` service over a [`Router`]; [`server`]: binding and serving with
//!   health, reflection and metrics ([`metrics`]).
//! - [`error`]: the [`Error`] enum and the single conversion into `tonic::Status`.
//!
//! # Caveats
//! - Set management calls (`CreateSet`, `DropSet`, `ListSets`, `GetSet`) go whole to one node.

pub mod error;
pub mod metrics;
pub mod router;
pub mod server;
pub mod service;

pub use error::{Error, Result};
pub use router::Router;
pub use server::{Config, Server, StartError};
