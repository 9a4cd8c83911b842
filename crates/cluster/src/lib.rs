//! The cluster core of leakbloom: everything a node, the router and the Rust client must agree
//! on to route a batch of keys, as plain data and pure functions. No I/O, no async runtime, no
//! gRPC: the callers own the sockets and the clocks; this crate owns the decisions.
//!
//! # Layout
//! - [`key`]: the [`Key`] (32 bytes), [`KEY_LEN`], [`shard_of`] and the id aliases
//!   [`ShardId`] and [`NodeId`].
//! - [`request`]: the rules every node, router and client applies to a request (batch size,
//!   set names, how many sets a check may name, message sizes) and how errors quote a
//!   client's strings.
//! - [`consistency`]: the one [`Consistency`] type, parsed once from the wire's number.
//! - [`bitmap`]: the answer of a check for one set, bit i for key i; the one place bits are
//!   twiddled.
//! - [`map`]: the [`ShardMap`] (shard -> replicas and leader hints, node addresses, an
//!   [`epoch`](ShardMap::epoch)), merged from the nodes' views, and the choice of the node a
//!   shard's keys go to.
//! - [`placement`]: which nodes hold each shard's replicas as nodes join, decommission and
//!   die, and the planner ([`placement::plan`]) that moves replicas there one step at a time,
//!   spreading replicas and preferred leaders evenly over the active nodes.
//! - [`plan`]: a batch split by shard and node ([`Plan`]), each part's key positions kept, and
//!   the answers merged back in request order ([`Merge`]).
//! - [`retry`]: which failures are retried, the backoff schedule and the deadline
//!   ([`RetryPolicy`], [`Retry`]).
//!
//! # Why a crate of its own
//! Splitting a batch by shard, sending each part to the right replica, retrying what failed and
//! merging the answers is the heart of a routed call, and three programs do it: the router, a
//! node forwarding what it does not hold, and the client that routes itself. Written once here
//! and tested on its own (property tests: any split, any order of answers, the same result as
//! one node answering the whole batch), they cannot drift apart.

pub mod bitmap;
pub mod consistency;
pub mod key;
pub mod map;
pub mod placement;
pub mod plan;
pub mod request;
pub mod retry;

pub use bitmap::Bitmap;
pub use consistency::{Consistency, UnknownConsistency};
pub use key::{shard_of, Key, NodeId, ShardId, KEY_LEN};
pub use map::{MapError, NodeView, ShardMap, ShardView};
pub use placement::{Moves, NodeEntry, NodeState, Placement};
pub use plan::{Merge, MergeError, Plan};
pub use request::{
    bound_message, check_bits, check_set_count, check_set_name, max_request_bytes, quote,
    split_keys, whole_keys, BatchError, NameError, DEFAULT_MAX_BATCH, LEADER_METADATA,
    MAX_CHECK_BITS, MAX_CHECK_SETS, MAX_QUOTED_CHARS, MAX_REPLY_BYTES, MAX_SET_NAME_LEN,
    MAX_STATUS_MESSAGE_BYTES,
};
pub use retry::{Failure, Retry, RetryPolicy};
