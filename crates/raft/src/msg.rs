//! What travels into a node's Raft loop ([`crate::poller`]), addressed by group.

use raft::eraftpb::SnapshotMetadata;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::group::Hosted;
use crate::{GroupId, NodeId};

/// A caller's request of one group: answered through its oneshot.
#[derive(Debug)]
pub(crate) enum Request {
    /// Propose a state-machine command; answered with its result once applied here.
    Command(Vec<u8>, oneshot::Sender<Result<Vec<u8>>>),
    /// Re-add a rebuilt replica of this node (see
    /// [`GroupNode::propose_rejoin`](crate::GroupNode::propose_rejoin)).
    Rejoin(NodeId, oneshot::Sender<Result<Vec<u8>>>),
    /// A linearizable read point: answered with an index once it is applied here.
    Read(oneshot::Sender<Result<u64>>),
    /// Renew the lease reads are answered by (see [`crate::lease`]).
    RenewLease,
}

/// Something for a group other than a raft message, never dropped.
#[derive(Debug)]
pub(crate) enum Report {
    Unreachable(NodeId),
    Snapshot(NodeId, bool),
    /// The leader re-added this rebuilt replica at this index.
    Rejoined(u64),
    /// The group's members changed (see
    /// [`GroupNode::set_members`](crate::GroupNode::set_members)).
    Members(Vec<NodeId>),
}

/// What the loop itself is told; never dropped, handled before messages and requests.
pub(crate) enum Control {
    /// Host a replica from now on.
    Add(Box<dyn Hosted>),
    /// Stop hosting a replica (it is dropped; its callers get `NotLeader`).
    Remove(GroupId),
    Report(GroupId, Report),
    /// A snapshot job of this group finished writing its file (or failed).
    SnapshotWritten(GroupId, Result<SnapshotMetadata>),
    /// Stop every replica and the loop.
    Stop,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Add(group) => write!(f, "Add({})", group.group()),
            Control::Remove(group) => write!(f, "Remove({group})"),
            Control::Report(group, report) => write!(f, "Report({group}, {report:?})"),
            Control::SnapshotWritten(group, result) => {
                write!(
                    f,
                    "SnapshotWritten({group}, {:?})",
                    result.as_ref().map(|m| m.index)
                )
            }
            Control::Stop => write!(f, "Stop"),
        }
    }
}
