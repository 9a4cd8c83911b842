//! The router's error type, and the one place its errors become `tonic::Status`.

use std::time::Instant;

use leakbloom_client::BatchError;
use tonic::{Code, Status};

use crate::map::{MapError, NodeId};

/// Everything a routed call can fail with. Messages say what was wrong and how to fix it;
/// none contains a key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `keys` field is not a valid batch (empty, not whole keys, or over the limit).
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// An unknown `Consistency` value.
    #[error(
        "consistency {0} is unknown: use 1 (CONSISTENCY_LINEARIZABLE) or 2 \
         (CONSISTENCY_ANY_REPLICA)"
    )]
    Consistency(i32),
    /// No shard map yet: no node has answered.
    #[error(
        "the router has not learned the shard map: no node answered ({reason}); check that \
         --nodes lists reachable node client addresses"
    )]
    NoMap {
        /// Why the last attempt failed.
        reason: String,
    },
    /// A node answered with an error that retrying does not fix: passed on as it is.
    #[error("{}", .0.message())]
    Node(Status),
    /// Retryable failures until the deadline.
    #[error(
        "gave up after {attempts} attempts in {elapsed_ms} ms; last error from node {node}: \
         {reason}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u128,
        /// The node of the last failure.
        node: NodeId,
        /// Its failure, as a gRPC status.
        reason: String,
        /// Its leader hint metadata, if any.
        leader: Option<String>,
    },
    /// Parts of a check of every set were answered for different sets (one was being
    /// created or dropped); carries the first part's sets.
    #[error("the sets changed while the check ran: retry it")]
    SetsChanged(Vec<String>),
    /// A node's reply does not match the request (a bug or a version mismatch).
    #[error("node {node} answered malformed data: {reason}")]
    Reply {
        /// The node.
        node: NodeId,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Retries ran out: `attempts` since `started`, the last failing with `status` from `node`
    /// (its leader hint is passed on).
    pub fn gave_up(attempts: u32, started: Instant, node: NodeId, status: &Status) -> Error {
        Error::GaveUp {
            attempts,
            elapsed_ms: started.elapsed().as_millis(),
            node,
            reason: format!("{:?}: {}", status.code(), status.message()),
            leader: status
                .metadata()
                .get(leakbloom_client::LEADER_METADATA)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string),
        }
    }
}

impl From<MapError> for Error {
    fn from(error: MapError) -> Error {
        Error::NoMap {
            reason: error.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let error = match error {
            Error::Node(status) => return status,
            other => other,
        };
        let code = match &error {
            Error::Batch(_) | Error::Consistency(_) => Code::InvalidArgument,
            Error::NoMap { .. } | Error::GaveUp { .. } | Error::SetsChanged(_) => Code::Unavailable,
            Error::Node(_) => unreachable!("passed on above"),
            Error::Reply { .. } => Code::Internal,
        };
        let mut status = Status::new(code, error.to_string());
        if let Error::GaveUp {
            leader: Some(leader),
            ..
        } = &error
        {
            if let Ok(value) = leader.parse() {
                status
                    .metadata_mut()
                    .insert(leakbloom_client::LEADER_METADATA, value);
            }
        }
        status
    }
}

/// Whether a node's failure may go away on retry (elsewhere, or later): no leader yet, node
/// down or restarting, connection lost mid-call. Inserts are idempotent and checks read-only,
/// so retrying any call is safe.
pub fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
    )
}

/// Result alias for routed calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
