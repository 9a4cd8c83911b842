//! Opening a node's data directory: the log store, then every replica it hosts (each shard's
//! and the catalog's), deciding for each whether to recover it, start it fresh, or rebuild it
//! from its peers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leakbloom_raft::{
    Driver, GroupHandle, GroupId, GroupNode, NodeConfig, NodeId, StateMachine, Store, Transport,
};

use crate::error::{Error, Result};
use crate::shard::shard_of_group;

/// Opens the node's log store. A store that lost synced writes ([`leakbloom_raft::Error::DiskLost`])
/// is moved to `raft.lost` (replacing an older one, kept for inspection) and replaced by an
/// empty one when `rebuildable` (every replica can be rebuilt from peers); returns whether it
/// was.
pub(super) fn open_store(data_dir: &Path, rebuildable: bool) -> Result<(Arc<Store>, bool)> {
    let dir = data_dir.join("raft");
    let store_error = |e: leakbloom_raft::Error| Error::Replica {
        shard: 0,
        reason: e.to_string(),
    };
    match Store::open(&dir) {
        Ok(store) => Ok((store, false)),
        Err(error @ leakbloom_raft::Error::DiskLost { .. }) if rebuildable => {
            let lost = data_dir.join("raft.lost");
            tracing::error!(
                %error,
                moved_to = %lost.display(),
                "log store lost synced data; moving it away and rebuilding every replica from \
                 its peers (they take no part in elections until they have caught up)"
            );
            let io = |context: &str, path: &Path, e: std::io::Error| Error::Replica {
                shard: 0,
                reason: format!("{context} {}: {e}", path.display()),
            };
            match std::fs::remove_dir_all(&lost) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove", &lost, e)),
            }
            std::fs::rename(&dir, &lost).map_err(|e| io("cannot move", &dir, e))?;
            Ok((Store::open(&dir).map_err(store_error)?, true))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// What every replica of a node is opened with.
pub(super) struct Opening<'a> {
    pub id: NodeId,
    pub store: &'a Arc<Store>,
    /// The store lost synced data: every replica is rebuilt.
    pub store_lost: bool,
    /// The data directory held replicas before (its record exists).
    pub existed: bool,
    /// Groups whose data the peers hold although this data directory is new (a wiped disk).
    pub held_elsewhere: &'a [GroupId],
    /// More than one replica per group: a lost one can be rebuilt.
    pub rebuildable: bool,
    pub data_dir: &'a Path,
    pub node_config: NodeConfig,
    pub transport: Arc<dyn Transport>,
    pub tick: Duration,
}

impl Opening<'_> {
    /// Opens and starts this node's replica of `group`, whose members are `voters` (the first
    /// is its preferred leader), applying to `machine`. A fresh group's preferred leader
    /// campaigns at once, so a new cluster elects leaders spread over the nodes within a tick
    /// or two. A replica whose data is lost or damaged, or that is empty although this data
    /// directory held it (or its peers hold its data), is rebuilt from its peers.
    pub fn replica<M: StateMachine + Clone + Send + 'static>(
        &self,
        group: GroupId,
        voters: &[NodeId],
        machine: M,
    ) -> Result<GroupHandle> {
        let shard = shard_of_group(group);
        let lost_if_empty = if self.existed {
            Some("its log is gone though this data directory held it")
        } else if self.held_elsewhere.contains(&group) {
            Some("this node's data directory is new but its peers hold the group's data")
        } else {
            None
        };
        // The replica, and whether its storage was empty (a new group, or lost data).
        let open = |rejoin: bool| -> leakbloom_raft::Result<(GroupNode<M>, bool)> {
            let mut storage = self.store.group(group)?;
            let empty = storage.is_empty();
            if rejoin {
                storage.set_rejoin(Some(0))?;
            }
            let node = GroupNode::new(
                self.id,
                storage,
                voters,
                machine.clone(),
                self.node_config.clone(),
            )?;
            Ok((node, empty))
        };
        let replica_error = |e: leakbloom_raft::Error| Error::Replica {
            shard,
            reason: e.to_string(),
        };
        // The replica, or why its data cannot be used.
        let opened: std::result::Result<_, String> = if self.store_lost {
            Err("the log store lost synced data".into())
        } else {
            match open(false) {
                Ok((_, true)) if lost_if_empty.is_some() => {
                    Err(lost_if_empty.unwrap_or_default().into())
                }
                Ok(opened) => Ok(opened),
                Err(
                    e @ (leakbloom_raft::Error::DiskLost { .. }
                    | leakbloom_raft::Error::SnapshotCorrupt { .. }),
                ) => Err(e.to_string()),
                Err(e) => return Err(replica_error(e)),
            }
        };
        let (mut node, empty) = match opened {
            Ok(opened) => opened,
            Err(lost) => {
                if !self.rebuildable {
                    return Err(Error::Replica {
                        shard,
                        reason: format!(
                            "its only replica (group {group}) lost its data ({lost}); with \
                             replication 1 it cannot be rebuilt: restore {} from a backup, or \
                             move it away to start empty",
                            self.data_dir.display()
                        ),
                    });
                }
                if !self.store_lost {
                    tracing::error!(
                        node = self.id,
                        group,
                        reason = lost,
                        "replica lost its data; discarding it and rebuilding it from its \
                         peers (it takes no part in elections until it has caught up)"
                    );
                }
                self.store.drop_group(group).map_err(replica_error)?;
                open(true).map_err(replica_error)?
            }
        };
        let fresh = lost_if_empty.is_none() && empty;
        if voters.len() == 1 || (fresh && voters[0] == self.id) {
            node.campaign().map_err(replica_error)?;
        }
        Ok(Driver::spawn(node, self.transport.clone(), self.tick))
    }
}
