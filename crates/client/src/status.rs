//! What a failed call's `tonic::Status` means for routing: whether to retry it
//! ([`leakbloom_cluster::Failure`] decides) and which node leads the shard, when the node said.

use leakbloom_cluster::{Failure, NodeId, LEADER_METADATA};
use tonic::Status;

/// How a call failed, as the cluster core's retry policy sees it.
///
/// Two kinds of status reach a caller:
/// - one the node sent (decoded from its `grpc-status`): judged by its code;
/// - one made here by the client side from a transport failure (refused, reset, GOAWAY, an
///   HTTP/2 protocol error on the shared connection): a failed connection, whatever code tonic
///   gave it (an h2 `ENHANCE_YOUR_CALM` becomes RESOURCE_EXHAUSTED, a `COMPRESSION_ERROR`
///   INTERNAL). Such a status carries the failure as its `source()`; a decoded one has none.
///
/// Limits the client itself enforces (a reply over the size limit: OUT_OF_RANGE) have no
/// source and are not retried: sending again would fail the same way.
pub fn failure(status: &Status) -> Failure {
    if std::error::Error::source(status).is_some() {
        Failure::Connection
    } else {
        Failure::Status(status.code() as i32)
    }
}

/// Whether a failed call may succeed when tried again (later, or on another node).
pub fn retryable(status: &Status) -> bool {
    failure(status).retryable()
}

/// The leader a node named in an `UNAVAILABLE` status's metadata.
pub fn leader_hint(status: &Status) -> Option<NodeId> {
    status
        .metadata()
        .get(LEADER_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .filter(|&leader| leader != 0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::Code;

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
    fn leader_hints_are_read_from_metadata() {
        let mut status = Status::unavailable("not the leader");
        assert_eq!(leader_hint(&status), None);
        status
            .metadata_mut()
            .insert(LEADER_METADATA, "3".parse().unwrap());
        assert_eq!(leader_hint(&status), Some(3));
        status
            .metadata_mut()
            .insert(LEADER_METADATA, "x".parse().unwrap());
        assert_eq!(leader_hint(&status), None);
    }
}
