//! The peer service and transport: everything nodes say to each other, over the
//! `leakbloom.internal.v1.Peer` gRPC service (`proto/leakbloom/internal/v1/peer.proto`) on the peer port.
//!
//! # Layout
//! - [`Local`]: what the peer side needs of the node it runs in: its id, its replica of a
//!   group, its check of a shard, its status. The node implements it; [`Slot`] stands in for
//!   it while the node opens (the peer port serves `Status` from the start).
//! - [`PeerService`] (`service.rs`): the server. `Raft` steps each message into the local
//!   replica of its group; `Snapshot` reassembles a chunked snapshot and steps it; `Propose`
//!   proposes a forwarded command on the local replica (which must lead its group); `Check`
//!   hands a shard check to [`Local::check_shard`]; `Rejoin` has the local leader re-add a
//!   replica rebuilt from nothing; `Status` says what the node holds.
//! - [`Peers`] (`transport.rs`): the client, one per node. It is every local group's
//!   [`leakbloom_raft::Transport`], and it forwards proposals ([`Peers::propose`]), checks
//!   ([`Peers::check`]), rejoin requests ([`Peers::rejoin`]) and status questions
//!   ([`Peers::status`]) to other nodes.
//!
//! # Raft messages: one call per destination per round
//! [`Transport::send`](leakbloom_raft::Transport::send) runs on a group's own thread between
//! Readies, so it only queues: each destination node has a bounded queue, drained by one task
//! on the runtime [`Peers::new`] was called on (spawned on first use). The task takes
//! everything queued for its node — messages of every group, in send order — up to
//! [`MAX_BATCH_BYTES`], sends it as one `Raft` call, waits for the acknowledgement and repeats.
//! While a call is in flight the next batch builds up, so a busy link carries large batches and
//! an idle one sends each heartbeat at once. A failed call drops its batch (Raft retransmits)
//! and reports the node unreachable to each group in it, so their leaders fall back to probing
//! it; a full queue does the same for the message that did not fit.
//!
//! # Snapshots
//! A `MsgSnapshot` carries a whole state machine (a shard's filters: megabytes to gigabytes).
//! It goes through the client-streaming `Snapshot` call on a task of its own and on a
//! connection of its own, so heartbeats never wait behind it. The first chunk carries the
//! group and the message with its snapshot data taken out; every chunk carries the next
//! [`SNAPSHOT_CHUNK_BYTES`] of the data, sliced from the message's buffer without copying.
//! Chunks are paced (64 MiB/s a stream) and a node sends at most two streams at once, so a
//! replica catching up never crowds out the others' appends (`transport.rs`). The receiver
//! joins the pieces (refusing more than [`MAX_SNAPSHOT_BYTES`]), puts the data back
//! and steps the message. Whatever happens, the sender then tells its group through
//! [`GroupHandle::report_snapshot`], as raft-rs requires.
//!
//! # Errors
//! The server makes statuses only through `impl From<Error> for Status` (`error.rs`). The
//! client turns a failed call back into an [`Error`]:
//! - `UNAVAILABLE` from the peer: [`Error::Unavailable`] with the peer's reason and its
//!   `leakbloom-leader` hint;
//! - no connection, a broken connection or no answer within the timeout:
//!   [`Error::Unavailable`] without a hint, reason `node N at ADDR unreachable: ...`; likewise
//!   for a node without a configured (or valid) address;
//! - `CANCELLED`, `DEADLINE_EXCEEDED` and `ABORTED` from the peer: [`Error::Unavailable`] too
//!   (retryable);
//! - `NOT_FOUND` naming one of a check's sets: [`Error::SetNotFound`];
//! - anything else: [`Error::Replica`] with the peer's code and message.
//!
//! # Caveats
//! - No authentication and no TLS: anyone who reaches the peer port can step Raft messages
//!   into any group. Keep the port on a private network (the cluster's own network policy)
//!   until the peer port gets mutual TLS.
//! - raft-rs 0.7 decodes messages with protobuf 2.28, which has RUSTSEC-2024-0437 (stack
//!   overflow by deep recursion on untrusted input; see `leakbloom_raft`'s docs). Only peers
//!   may reach this service: never serve it on the client port.
//! - A received snapshot is held whole in memory (up to [`MAX_SNAPSHOT_BYTES`]) before it is
//!   stepped, as raft-rs's `Snapshot` holds its data in one buffer.
//! - The peer addresses are fixed when [`Peers`] is created; membership changes will need a
//!   way to add and remove destinations.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use leakbloom_proto::internal::v1::status_response::State;
use leakbloom_proto::internal::v1::{ShardCheckRequest, ShardCheckResponse, StatusResponse};
use leakbloom_raft::{GroupHandle, GroupId, NodeId};
use tonic::{Code, Status};

use crate::error::{shard_name, Error, LEADER_METADATA};
use crate::shard::{shard_of_group, ShardId};

mod service;
mod transport;

pub use service::PeerService;
pub use transport::Peers;

/// Largest gRPC message either side of the peer service encodes or decodes (32.5 MiB), sized
/// from what travels: a `Raft` call carries at most [`MAX_BATCH_BYTES`] of messages (their
/// framing at most doubles it) or one larger message alone, whose entries are at most one
/// client batch; a forwarded `ProposeBatch` is one client batch split by shard (a command and
/// set name per shard); a shard `Check` is at most one client batch and its reply at most
/// [`leakbloom_cluster::MAX_REPLY_BYTES`]; snapshot chunks are [`SNAPSHOT_CHUNK_BYTES`]. A
/// client batch is at most [`leakbloom_cluster::max_request_bytes`] of the largest allowed
/// `max_batch` ([`crate::config::MAX_MAX_BATCH`], 32 MiB of keys).
pub const MAX_MESSAGE_BYTES: usize = {
    let batch = leakbloom_cluster::max_request_bytes(crate::config::MAX_MAX_BATCH)
        + crate::shard::MAX_SHARDS as usize * (leakbloom_cluster::MAX_SET_NAME_LEN + 32);
    let raft = 2 * MAX_BATCH_BYTES;
    let reply = leakbloom_cluster::MAX_REPLY_BYTES;
    let largest = if batch > raft { batch } else { raft };
    if largest > reply {
        largest
    } else {
        reply
    }
};

/// Encoded Raft messages per `Raft` call, at most (a lone larger message still goes alone):
/// large enough to carry every group's appends of a busy round, small enough that one call
/// does not hold up the next round's heartbeats for long.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Snapshot data per streamed chunk: far below the message limit, and large enough that the
/// per-message overhead is negligible.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Largest snapshot a node accepts. It is held in memory whole; a shard of a 533 M-key set at
/// 1e-6 is about 2.6 GB, so this leaves room while refusing a runaway stream.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// What the peer service needs of the node it runs in. The node implements it; tests
/// implement it over bare Raft groups.
#[tonic::async_trait]
pub trait Local: Send + Sync + 'static {
    /// This node's id.
    fn id(&self) -> NodeId;

    /// This node's replica of `group`, if it hosts one (and it runs).
    fn replica(&self, group: GroupId) -> Option<GroupHandle>;

    /// Checks keys of one shard against this node's replica of it, for another node.
    async fn check_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse, Error>;

    /// Checks a command a peer asks this node to propose on `group`, before it is proposed
    /// (see `Node::admit`): a refused command never commits.
    async fn admit(&self, group: GroupId, command: &[u8]) -> Result<(), Error>;

    /// What this node holds (the peer `Status` call): serving, and each replica's durable
    /// commit index.
    fn status(&self) -> StatusResponse;
}

/// The [`Local`] a server's peer service runs over from the moment the peer port is bound,
/// before its node has opened: it answers `Status` (new data directory, or opening one) and
/// refuses the rest as unavailable; once [`set`](Slot::set), everything goes to the node.
pub struct Slot {
    id: NodeId,
    /// The node's advertised client address.
    address: String,
    /// `Status` before the node is set: new data directory, or opening one.
    starting: State,
    node: OnceLock<Arc<dyn Local>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("starting", &self.starting)
            .field("set", &self.node.get().is_some())
            .finish()
    }
}

impl Slot {
    /// A slot for node `id`, advertising client address `address`, whose data directory is new
    /// (`new`) or holds its replicas.
    pub fn new(id: NodeId, address: String, new: bool) -> Slot {
        Slot {
            id,
            address,
            starting: if new { State::New } else { State::Opening },
            node: OnceLock::new(),
        }
    }

    /// Hands every call to `node` from now on. Only the first call counts.
    pub fn set(&self, node: Arc<dyn Local>) {
        let _ = self.node.set(node);
    }

    /// What a call needing the node gets while it opens.
    fn starting(&self, group: GroupId) -> Error {
        Error::Unavailable {
            shard: shard_of_group(group),
            leader: None,
            reason: format!("node {} is starting", self.id),
        }
    }
}

#[tonic::async_trait]
impl Local for Slot {
    fn id(&self) -> NodeId {
        self.id
    }

    fn replica(&self, group: GroupId) -> Option<GroupHandle> {
        self.node.get()?.replica(group)
    }

    async fn check_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse, Error> {
        match self.node.get() {
            Some(node) => node.check_shard(request).await,
            None => Err(self.starting(request.shard)),
        }
    }

    async fn admit(&self, group: GroupId, command: &[u8]) -> Result<(), Error> {
        match self.node.get() {
            Some(node) => node.admit(group, command).await,
            None => Err(self.starting(group)),
        }
    }

    fn status(&self) -> StatusResponse {
        match self.node.get() {
            Some(node) => node.status(),
            None => StatusResponse {
                node: self.id,
                state: self.starting.into(),
                address: self.address.clone(),
                ..StatusResponse::default()
            },
        }
    }
}

/// Turns a failed call to node `node` at `address` back into the node's error: the reverse of
/// `From<Error> for Status`, with the mapping in the [module docs](self). `sets` are the sets a
/// check asked for (empty for other calls), to recognise a `NOT_FOUND` set.
fn error_from_status(
    status: &Status,
    shard: ShardId,
    node: NodeId,
    address: &str,
    sets: &[String],
) -> Error {
    // A status decoded from the peer's answer has no source; one made here from a connection
    // failure (refused, reset, GOAWAY) has the failure as its source.
    if std::error::Error::source(status).is_some() {
        return unreachable(shard, node, address, &describe(status));
    }
    let message = status.message();
    match status.code() {
        Code::Unavailable => Error::Unavailable {
            shard,
            leader: status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok()),
            reason: unavailable_reason(message, shard),
        },
        Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => Error::Unavailable {
            shard,
            leader: None,
            reason: format!("node {node} gave up: {message}"),
        },
        Code::NotFound => match sets
            .iter()
            .find(|set| message.starts_with(&format!("set {set:?} ")))
        {
            Some(set) => Error::SetNotFound(set.clone()),
            None => replica_error(status, shard, node),
        },
        _ => replica_error(status, shard, node),
    }
}

fn replica_error(status: &Status, shard: ShardId, node: NodeId) -> Error {
    Error::Replica {
        shard,
        reason: format!(
            "node {node} answered {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// [`Error::Unavailable`] for a node that could not be reached.
fn unreachable(shard: ShardId, node: NodeId, address: &str, why: &str) -> Error {
    Error::Unavailable {
        shard,
        leader: None,
        reason: format!("node {node} at {address} unreachable: {why}"),
    }
}

/// The reason inside a peer's `UNAVAILABLE` message, which `Error::Unavailable` rendered as
/// `shard S is unavailable (REASON); ...`, so it is not wrapped twice; the whole message when
/// it has another shape.
fn unavailable_reason(message: &str, shard: ShardId) -> String {
    message
        .strip_prefix(&format!("{} is unavailable (", shard_name(shard)))
        .and_then(|rest| rest.rsplit_once(')'))
        .map_or(message, |(reason, _)| reason)
        .to_string()
}

/// A status's message and the chain of errors behind it, e.g. `transport error: tcp connect
/// error: Connection refused (os error 111)`.
fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let part = error.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = error.source();
    }
    text
}

/// Joins received snapshot pieces into one buffer, copying only when there is more than one.
fn join(mut parts: Vec<Bytes>, total: usize) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let mut data = Vec::with_capacity(total);
    for part in &parts {
        data.extend_from_slice(part);
    }
    Bytes::from(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BatchError;

    fn round_trip(error: Error, sets: &[String]) -> Error {
        error_from_status(&Status::from(error), 7, 2, "127.0.0.1:1", sets)
    }

    #[test]
    fn unavailable_keeps_reason_and_leader() {
        let error = round_trip(
            Error::Unavailable {
                shard: 7,
                leader: Some(3),
                reason: "node 2 does not lead it (yet)".into(),
            },
            &[],
        );
        let Error::Unavailable {
            shard,
            leader,
            reason,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!((*shard, *leader), (7, Some(3)));
        assert_eq!(reason, "node 2 does not lead it (yet)");

        let error = round_trip(
            Error::Unavailable {
                shard: 7,
                leader: None,
                reason: "no leader".into(),
            },
            &[],
        );
        assert!(
            matches!(&error, Error::Unavailable { leader: None, reason, .. } if reason == "no leader"),
            "{error:?}"
        );
    }

    #[test]
    fn unknown_sets_and_other_failures() {
        let sets = vec!["a".to_string(), "breach-2021".to_string()];
        let error = round_trip(Error::SetNotFound("breach-2021".into()), &sets);
        assert!(matches!(&error, Error::SetNotFound(set) if set == "breach-2021"));
        // A set the request did not name: not something the caller can act on.
        let error = round_trip(Error::SetNotFound("other".into()), &sets);
        assert!(
            matches!(error, Error::Replica { shard: 7, .. }),
            "{error:?}"
        );
        let error = round_trip(Error::Batch(BatchError::KeyLength { len: 33 }), &sets);
        let Error::Replica { reason, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            reason.starts_with("node 2 answered InvalidArgument: keys is 33 bytes"),
            "{reason}"
        );
        let error = error_from_status(&Status::cancelled("stop"), 7, 2, "h:1", &[]);
        assert!(
            matches!(error, Error::Unavailable { leader: None, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn join_copies_only_several_parts() {
        let one = Bytes::from_static(b"abc");
        assert_eq!(join(vec![one.clone()], 3).as_ptr(), one.as_ptr());
        let parts = vec![one, Bytes::new(), Bytes::from_static(b"de")];
        assert_eq!(join(parts, 5), Bytes::from_static(b"abcde"));
    }
}
