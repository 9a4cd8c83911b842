//! The node's error type, and the one place errors become `tonic::Status`.
//!
//! Messages quote a client's strings (set names, the `hashing` field) only shortened
//! ([`quote`]), and every status message is cut to [`MAX_STATUS_MESSAGE_BYTES`]: a long one
//! would make the receiving HTTP/2 peer (a router) reset its connection, and with it every
//! other call on it.

use leakbloom_raft::NodeId;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::config::ConfigError;
use crate::shard::ShardId;

use leakbloom_cluster::{bound_message, quote, UnknownConsistency};

pub use leakbloom_cluster::{BatchError, LEADER_METADATA, MAX_STATUS_MESSAGE_BYTES};

/// Everything a node operation can fail with. Messages say what was wrong and how to fix it;
/// none of them ever contains a key, and names are quoted shortened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `keys` field is not a valid batch (empty, not whole keys, or over the limit).
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A set name outside the allowed alphabet or length.
    #[error("invalid set name {}: {reason}", quote(.name))]
    SetName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Set parameters out of range.
    #[error("invalid parameters for set {}: {reason}", quote(.name))]
    SetParameters {
        /// The set.
        name: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The same set named twice in one request.
    #[error("set {} is named more than once in the request: name each set once", quote(.0))]
    DuplicateSet(String),
    /// An unknown `Consistency` value.
    #[error(transparent)]
    Consistency(#[from] UnknownConsistency),
    /// The set does not exist.
    #[error("set {} does not exist: create it first, or list sets with ListSets", quote(.0))]
    SetNotFound(String),
    /// A set of that name exists with other parameters.
    #[error(
        "set {} already exists with {existing}, not {requested}: \
         use the existing parameters, another name, or drop it first",
        quote(.name)
    )]
    SetExists {
        /// The set.
        name: String,
        /// Its current parameters.
        existing: String,
        /// The parameters of the request.
        requested: String,
    },
    /// Creating the set would take a node over its filter memory limit.
    #[error(
        "set {} needs {needed} bytes of filter memory on node {node} but only {available} of \
         that node's {limit}-byte limit are free: lower its capacity, raise its fpr, drop a \
         set, or raise max_filter_memory",
        quote(.name)
    )]
    MemoryLimit {
        /// The set.
        name: String,
        /// The node that lacks the memory.
        node: NodeId,
        /// Bytes the new set needs on this node.
        needed: u64,
        /// Bytes still free under the limit.
        available: u64,
        /// The limit (`max_filter_memory`).
        limit: u64,
    },
    /// The cluster holds as many sets as its nodes allow.
    #[error(
        "the cluster already holds {max} sets, the smallest node's max_sets: drop a set first"
    )]
    TooManySets {
        /// The smallest `max_sets` of the nodes.
        max: u64,
    },
    /// A node that hosts partitions of every set has not reported its limits to the catalog
    /// yet (it is starting, or down since the cluster was created). Retryable.
    #[error(
        "node {node} has not reported its memory limits yet, so no set can be admitted; \
         start it, then retry"
    )]
    NodeLimitsUnknown {
        /// The node.
        node: NodeId,
    },
    /// A committed command the state machine cannot accept on its content (keys of another
    /// shard, a create without a generation, ...): refused alike on every replica. Only a
    /// forged proposal or a bug produces one; the leader checks commands before proposing.
    #[error("command refused: {0}")]
    Refused(String),
    /// A membership-related command named a node the cluster does not have.
    #[error("node {node} is not a member of this cluster")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// A node or placement change the cluster cannot make now; the message says why and what
    /// to do.
    #[error("{0}")]
    Membership(String),
    /// A node asked to join under an id another live node uses.
    #[error(
        "node id {node} is already used by the node at {address}: give the new node another \
         --id (or, if it is that node, start it with its own data directory)"
    )]
    NodeIdInUse {
        /// The id.
        node: NodeId,
        /// The peer address the cluster records for it.
        address: String,
    },
    /// This node's replica cannot apply a committed command for want of memory; it stops
    /// applying (the other replicas go on) and retries until it can.
    #[error("shard {shard} replica on this node is stalled: {reason}")]
    Stalled {
        /// The shard.
        shard: ShardId,
        /// What it lacks.
        reason: String,
    },
    /// The filter engine refused (e.g. sizing out of range, allocation failed).
    #[error(transparent)]
    Filter(#[from] leakbloom_filter::Error),
    /// The shard cannot take the request right now: no leader is known, leadership moved while
    /// the request was in flight, or the leader could not be reached. Retryable.
    #[error(
        "{} is unavailable ({reason}){}; retry shortly",
        shard_name(*.shard),
        leader_hint(*.leader)
    )]
    Unavailable {
        /// The shard.
        shard: ShardId,
        /// The node that leads the shard, as far as this node knows.
        leader: Option<NodeId>,
        /// What happened, for a person.
        reason: String,
    },
    /// This node's replica failed in a way a retry cannot fix (its disk, a corrupt snapshot).
    /// The message names the file and what to do.
    #[error("shard {shard} replica on this node failed: {reason}")]
    Replica {
        /// The shard.
        shard: ShardId,
        /// What failed and how to recover.
        reason: String,
    },
    /// The node's configuration or data directory does not allow it to start.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    /// A failure of this node's replica of `shard` (node `node`): not leading it is retryable
    /// (`Unavailable` with the hint); anything else is the replica's own failure.
    pub fn from_raft(shard: ShardId, node: NodeId, error: leakbloom_raft::Error) -> Error {
        match error {
            leakbloom_raft::Error::NotLeader { leader, .. } => Error::Unavailable {
                shard,
                leader,
                reason: format!("node {node} does not lead it"),
            },
            leakbloom_raft::Error::Stalled { reason, .. } => Error::Unavailable {
                shard,
                leader: None,
                reason: format!(
                    "node {node} leads it but is stalled ({reason}) and hands leadership away"
                ),
            },
            other => Error::Replica {
                shard,
                reason: format!("node {node}: {other}"),
            },
        }
    }
}

/// How messages name a shard; [`ShardId::MAX`] stands for the catalog group.
pub fn shard_name(shard: ShardId) -> String {
    if shard == ShardId::MAX {
        "the catalog".into()
    } else {
        format!("shard {shard}")
    }
}

fn leader_hint(leader: Option<NodeId>) -> String {
    match leader {
        Some(leader) => format!("; its leader is node {leader}"),
        None => String::new(),
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = match &error {
            Error::Batch(_)
            | Error::SetName { .. }
            | Error::SetParameters { .. }
            | Error::DuplicateSet(_)
            | Error::Consistency(_) => Code::InvalidArgument,
            Error::SetNotFound(_) => Code::NotFound,
            Error::SetExists { .. } => Code::AlreadyExists,
            Error::MemoryLimit { .. } | Error::TooManySets { .. } => Code::ResourceExhausted,
            Error::NodeLimitsUnknown { .. } | Error::Stalled { .. } => Code::Unavailable,
            Error::UnknownNode { .. } | Error::Refused(_) | Error::Membership(_) => {
                Code::FailedPrecondition
            }
            Error::NodeIdInUse { .. } => Code::AlreadyExists,
            Error::Filter(leakbloom_filter::Error::Alloc { .. }) => Code::ResourceExhausted,
            Error::Filter(_) => Code::InvalidArgument,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Replica { .. } => Code::Internal,
            Error::Config(_) => Code::FailedPrecondition,
        };
        let mut status = Status::new(code, bound_message(error.to_string()));
        if let Error::Unavailable {
            leader: Some(leader),
            ..
        } = &error
        {
            status
                .metadata_mut()
                .insert(LEADER_METADATA, MetadataValue::from(*leader));
        }
        status
    }
}

/// Result alias for node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_quote_names_shortened_and_stay_short() {
        let huge = "a".repeat(60_000);
        for error in [
            Error::SetName {
                name: huge.clone(),
                reason: "it is 60000 bytes long, the limit is 64".into(),
            },
            Error::SetParameters {
                name: huge.clone(),
                reason: "capacity is 0".into(),
            },
            Error::DuplicateSet(huge.clone()),
            Error::SetNotFound(huge.clone()),
        ] {
            let status = Status::from(error);
            let message = status.message();
            assert!(message.contains("… (60000 bytes)"), "{message}");
            assert!(message.len() < 300, "{message}");
        }
        // Whatever a message holds, the status carries at most the limit.
        let status = Status::from(Error::Replica {
            shard: 1,
            reason: "é".repeat(100_000),
        });
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().len() <= MAX_STATUS_MESSAGE_BYTES);
        assert!(status.message().ends_with("é…"), "{}", status.message());
        // A valid name is quoted whole, as the peer client expects of NOT_FOUND.
        let status = Status::from(Error::SetNotFound("breach-2021".into()));
        assert!(status.message().starts_with("set \"breach-2021\" "));
    }
}
