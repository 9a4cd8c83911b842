//! The crate's one error type.

use std::path::PathBuf;

use crate::GroupId;

/// Everything that can go wrong in this crate that a caller can act on. Bugs (a broken raft-rs
/// contract, a poisoned lock) panic instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The replica's disk no longer holds what it acknowledged as durable. The replica must not
    /// take part in its groups again with this data: discard it and rebuild the replica from
    /// peers (its votes and acknowledged entries may be gone; see the
    /// [`node`](crate::node) docs).
    #[error(
        "log store {dir} lost synced data ({reason}); this replica's data cannot be trusted: it \
         must be discarded and rebuilt from its peers"
    )]
    DiskLost {
        /// The store directory.
        dir: PathBuf,
        /// What was found missing or inconsistent.
        reason: String,
    },
    /// A group id outside the range groups may use.
    #[error("group id {0} is reserved for the store's own records; use ids below u64::MAX")]
    ReservedGroup(GroupId),
    /// An I/O error outside the log engine (directories, snapshot files, the sync marker).
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The log engine failed (I/O, or corruption it refused to recover from).
    #[error("log engine: {0}")]
    Engine(#[from] raft_engine::Error),
    /// raft-rs refused an operation (e.g. a proposal while there is no leader).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A stored snapshot failed its checksum or could not be decoded.
    #[error(
        "snapshot {path} is corrupt ({reason}); it is not loaded: the replica must be rebuilt \
         from its peers"
    )]
    SnapshotCorrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The proposal was not committed because this replica stopped being leader (or never
    /// was). Retryable: send it to the current leader.
    #[error("not leader of group {group} (leader hint: {leader:?}); retry on the leader")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this replica knows of, if any.
        leader: Option<crate::NodeId>,
    },
    /// The state machine rejected a command. Every replica rejects it alike.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// This replica leads the group but is stalled (see the `node` docs: it cannot apply
    /// committed entries for want of a local resource) and hands leadership away. Retryable.
    #[error("group {group}'s leader replica is stalled ({reason}); retry shortly")]
    Stalled {
        /// The group.
        group: GroupId,
        /// Why it cannot apply.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same operation (possibly on another replica) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::Stalled { .. })
    }
}
