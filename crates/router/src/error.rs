//! The router's error type, and the one place its errors become `tonic::Status`.
//!
//! As on a node, messages quote a client's strings only shortened ([`quote`]) and every status
//! message, a node's passed on included, is cut to
//! [`leakbloom_client::MAX_STATUS_MESSAGE_BYTES`].

use std::time::Instant;

use leakbloom_client::{bound_message, quote, BatchError, NameError};
use tonic::{Code, Status};

use crate::map::{MapError, NodeId};

/// Everything a routed call can fail with. Messages say what was wrong and how to fix it;
/// none contains a key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `keys` field is not a valid batch (empty, not whole keys, or over the limit), or a
    /// check names too many sets or asks about too many set-key pairs.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A set name outside the allowed alphabet or length (the nodes' rule).
    #[error("invalid set name {}: {reason}", quote(.name))]
    SetName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
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

/// Checks a set name with the nodes' rule before anything is sent to them.
pub fn check_name(name: &str) -> Result<()> {
    leakbloom_client::check_set_name(name).map_err(|reason| Error::SetName {
        name: name.to_string(),
        reason,
    })
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
            Error::Node(status) => {
                // The node's code, message (cut, should the node not have) and metadata.
                return Status::with_metadata(
                    status.code(),
                    bound_message(status.message().to_string()),
                    status.metadata().clone(),
                );
            }
            other => other,
        };
        let code = match &error {
            Error::Batch(_) | Error::SetName { .. } | Error::Consistency(_) => {
                Code::InvalidArgument
            }
            Error::NoMap { .. } | Error::GaveUp { .. } | Error::SetsChanged(_) => Code::Unavailable,
            Error::Node(_) => unreachable!("passed on above"),
            Error::Reply { .. } => Code::Internal,
        };
        let mut status = Status::new(code, bound_message(error.to_string()));
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
/// down or restarting, or the connection to it broken. Inserts are idempotent and checks
/// read-only, so retrying any call is safe.
///
/// Two kinds of status reach the router:
/// - one the node sent (decoded from its `grpc-status`): retryable when UNAVAILABLE,
///   CANCELLED, DEADLINE_EXCEEDED, ABORTED or UNKNOWN;
/// - one made here by the client side from a transport failure (refused, reset, GOAWAY, an
///   HTTP/2 protocol error on the shared connection): always retryable, whatever code tonic
///   gave it (an h2 `ENHANCE_YOUR_CALM` becomes RESOURCE_EXHAUSTED, a `COMPRESSION_ERROR`
///   INTERNAL). Such a status carries the failure as its `source()`; a decoded one has none.
///
/// Limits the router's own client enforces (a reply over the size limit: OUT_OF_RANGE) have no
/// source and are not retried: sending again would fail the same way.
pub fn retryable(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A status as tonic's client side makes it from a transport failure: with the failure as
    /// its source.
    fn local(code: Code, message: &str) -> Status {
        let mut status = Status::new(code, message);
        let failure = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        status.set_source(Arc::new(failure));
        status
    }

    #[test]
    fn statuses_a_node_sent_are_retried_by_code() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Unknown,
        ] {
            assert!(retryable(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::Internal,
            Code::OutOfRange,
            Code::FailedPrecondition,
        ] {
            assert!(!retryable(&Status::new(code, "x")), "{code:?}");
        }
    }

    #[test]
    fn failures_of_the_connection_are_retried_whatever_their_code() {
        for code in [
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::Unavailable,
        ] {
            let status = local(code, "h2 protocol error: http2 error");
            assert!(retryable(&status), "{code:?}");
            // Coalesced parts share one call's status: a clone keeps its source.
            assert!(retryable(&status.clone()), "{code:?}");
        }
    }

    #[test]
    fn statuses_are_short_and_quote_names_shortened() {
        let huge = "a".repeat(60_000);
        let error = check_name(&huge).unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("… (60000 bytes): it is 60000 bytes long, the limit is 64"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 300);
        check_name("facebook-2021").unwrap();

        // A node's status is passed on with its code and metadata, its message cut.
        let mut sent = Status::invalid_argument("x".repeat(100_000));
        sent.metadata_mut()
            .insert(leakbloom_client::LEADER_METADATA, "3".parse().unwrap());
        let passed = Status::from(Error::Node(sent));
        assert_eq!(passed.code(), Code::InvalidArgument);
        assert_eq!(
            passed.message().len(),
            leakbloom_client::MAX_STATUS_MESSAGE_BYTES
        );
        assert_eq!(
            passed.metadata().get(leakbloom_client::LEADER_METADATA),
            Some(&"3".parse().unwrap())
        );

        let gave_up = Error::gave_up(3, Instant::now(), 2, &Status::unavailable("é".repeat(5000)));
        assert!(
            Status::from(gave_up).message().len() <= leakbloom_client::MAX_STATUS_MESSAGE_BYTES
        );
    }
}
