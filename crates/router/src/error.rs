//! The router's error type, and the one place its errors become `tonic::Status`.
//!
//! As on a node, messages quote a client's strings only shortened ([`quote`]) and every status
//! message, a node's passed on included, is cut to
//! [`leakbloom_cluster::MAX_STATUS_MESSAGE_BYTES`].

use leakbloom_client::RouteError;
use leakbloom_cluster::{quote, BatchError, NameError, UnknownConsistency};
use tonic::{Code, Status};

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
    #[error(transparent)]
    Consistency(#[from] UnknownConsistency),
    /// Routing failed: no shard map, retries ran out, a node's error, a malformed reply.
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// Checks a set name with the nodes' rule before anything is sent to them.
pub fn check_name(name: &str) -> Result<()> {
    leakbloom_cluster::check_set_name(name).map_err(|reason| Error::SetName {
        name: name.to_string(),
        reason,
    })
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::Route(error) => Status::from(error),
            invalid => Status::new(
                Code::InvalidArgument,
                leakbloom_cluster::bound_message(invalid.to_string()),
            ),
        }
    }
}

/// Result alias for routed calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use leakbloom_cluster::{LEADER_METADATA, MAX_STATUS_MESSAGE_BYTES};

    use super::*;

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
            .insert(LEADER_METADATA, "3".parse().unwrap());
        let passed = Status::from(Error::Route(RouteError::Node(sent)));
        assert_eq!(passed.code(), Code::InvalidArgument);
        assert_eq!(passed.message().len(), MAX_STATUS_MESSAGE_BYTES);
        assert_eq!(
            passed.metadata().get(LEADER_METADATA),
            Some(&"3".parse().unwrap())
        );

        let now = Instant::now();
        let retry = leakbloom_cluster::RetryPolicy::default().start(now, now);
        let gave_up = RouteError::gave_up(&retry, 2, &Status::unavailable("é".repeat(5000)));
        assert!(Status::from(Error::Route(gave_up)).message().len() <= MAX_STATUS_MESSAGE_BYTES);
    }
}
