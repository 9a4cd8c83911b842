//! Opening a node's data directory: the log store, then every replica it hosts (each shard's
//! and the catalog's), deciding for each whether to recover it, start it fresh, rebuild it
//! from its peers, or refuse to start.
//!
//! The decision is a plain function of what is known about the replica ([`start`] of
//! [`Facts`], tested by a table); [`Opening::replica`] gathers the facts from the disk and
//! carries the decision out.

use std::path::Path;
use std::sync::Arc;

use leakbloom_raft::{
    GroupHandle, GroupId, GroupNode, NodeConfig, NodeId, Poller, StateMachine, Store,
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

/// What the node knows about one replica's data when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Facts {
    /// What the log store holds for the replica's group.
    pub stored: Stored,
    /// The data directory held replicas before (its record exists).
    pub existed: bool,
    /// The peers hold the group's data although this data directory is new (a wiped disk).
    pub held_elsewhere: bool,
    /// The group has other replicas to rebuild this one from (replication above 1).
    pub rebuildable: bool,
    /// This is the group's only replica.
    pub sole: bool,
    /// This is the group's preferred replica (the first of its members).
    pub preferred: bool,
}

/// What the log store holds for a replica's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stored {
    /// The whole store lost synced data (it was moved away and replaced by an empty one).
    StoreLost,
    /// The group's records or snapshot are damaged; why.
    Damaged(String),
    /// Nothing: a new group, or one whose data is gone.
    Empty,
    /// The group's state.
    Found,
}

/// How a replica starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    /// From what the store holds. `campaign`: start an election at once, so that a new
    /// cluster elects leaders spread over the nodes within a tick or two (a fresh group's
    /// preferred replica, or a group's only replica).
    Open { campaign: bool },
    /// Its data is lost (`reason`): discard it and rebuild the replica from its peers; it
    /// takes no part in elections until it has caught up.
    Rebuild { reason: String },
    /// Its data is lost (`reason`) and no other replica holds it: the node must not start
    /// (serving or voting without acknowledged writes would be silent data loss).
    Refuse { reason: String },
}

/// Decides how a replica starts. A replica whose data is lost or damaged, or that is empty
/// although this data directory held it (or its peers hold its group's data), is lost: rebuilt
/// from its peers when it has any, else refused. Any other replica opens from its store.
pub(super) fn start(facts: &Facts) -> Start {
    let lost = match &facts.stored {
        Stored::StoreLost => Some("the log store lost synced data".to_string()),
        Stored::Damaged(reason) => Some(reason.clone()),
        Stored::Empty if facts.existed => {
            Some("its log is gone though this data directory held it".to_string())
        }
        Stored::Empty if facts.held_elsewhere => Some(
            "this node's data directory is new but its peers hold the group's data".to_string(),
        ),
        Stored::Empty | Stored::Found => None,
    };
    match lost {
        None => Start::Open {
            campaign: facts.sole || (facts.stored == Stored::Empty && facts.preferred),
        },
        Some(reason) if facts.rebuildable => Start::Rebuild { reason },
        Some(reason) => Start::Refuse { reason },
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
    /// The node's Raft loop, which hosts every replica.
    pub poller: &'a Poller,
}

impl Opening<'_> {
    /// Opens and starts this node's replica of `group`, whose members are `voters` (the first
    /// is its preferred leader), applying to `machine`, as [`start`] decides.
    pub fn replica<M: StateMachine + Clone + Send + 'static>(
        &self,
        group: GroupId,
        voters: &[NodeId],
        machine: M,
    ) -> Result<GroupHandle> {
        let shard = shard_of_group(group);
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
        // The facts: what the store holds for the group (opening it unless the store was lost).
        let (opened, stored) = if self.store_lost {
            (None, Stored::StoreLost)
        } else {
            match open(false) {
                Ok((node, true)) => (Some(node), Stored::Empty),
                Ok((node, false)) => (Some(node), Stored::Found),
                Err(
                    e @ (leakbloom_raft::Error::DiskLost { .. }
                    | leakbloom_raft::Error::SnapshotCorrupt { .. }),
                ) => (None, Stored::Damaged(e.to_string())),
                Err(e) => return Err(replica_error(e)),
            }
        };
        let facts = Facts {
            stored,
            existed: self.existed,
            held_elsewhere: self.held_elsewhere.contains(&group),
            rebuildable: self.rebuildable,
            sole: voters.len() == 1,
            preferred: voters.first() == Some(&self.id),
        };
        let node = match start(&facts) {
            Start::Open { campaign } => {
                let mut node = opened.expect("a replica that opens was opened");
                if campaign {
                    node.campaign().map_err(replica_error)?;
                }
                node
            }
            Start::Rebuild { reason } => {
                drop(opened);
                if facts.stored != Stored::StoreLost {
                    tracing::error!(
                        node = self.id,
                        group,
                        reason,
                        "replica lost its data; discarding it and rebuilding it from its \
                         peers (it takes no part in elections until it has caught up)"
                    );
                }
                self.store.drop_group(group).map_err(replica_error)?;
                open(true).map_err(replica_error)?.0
            }
            Start::Refuse { reason } => {
                return Err(Error::Replica {
                    shard,
                    reason: format!(
                        "its only replica (group {group}) lost its data ({reason}); with \
                         replication 1 it cannot be rebuilt: restore {} from a backup, or \
                         move it away to start empty",
                        self.data_dir.display()
                    ),
                });
            }
        };
        Ok(self.poller.add(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any value of a fact.
    const ANY: Option<bool> = None;

    /// How a replica should start; for a lost one, a word its reason must contain.
    #[derive(Debug)]
    enum Expect {
        Open,
        Campaign,
        Rebuild(&'static str),
        Refuse(&'static str),
    }

    impl Expect {
        fn holds_for(&self, start: &Start) -> bool {
            match (self, start) {
                (Expect::Open, Start::Open { campaign }) => !campaign,
                (Expect::Campaign, Start::Open { campaign }) => *campaign,
                (Expect::Rebuild(word), Start::Rebuild { reason })
                | (Expect::Refuse(word), Start::Refuse { reason }) => reason.contains(word),
                _ => false,
            }
        }
    }

    #[test]
    fn every_replica_starts_as_the_table_says() {
        use Expect::*;
        use Stored::*;
        let damaged = || Damaged("snapshot checksum mismatch".into());
        // (stored, [existed, held elsewhere, rebuildable, sole, preferred]) -> how it starts.
        // The first row that matches decides; every row must be reached.
        #[rustfmt::skip]
        let table: Vec<(Stored, [Option<bool>; 5], Expect)> = vec![
            // The whole store lost synced data: every replica in it is lost.
            (StoreLost, [ANY, ANY, Some(true), ANY, ANY], Rebuild("log store lost")),
            (StoreLost, [ANY, ANY, Some(false), ANY, ANY], Refuse("log store lost")),
            // A damaged group is lost, whatever else is known.
            (damaged(), [ANY, ANY, Some(true), ANY, ANY], Rebuild("checksum")),
            (damaged(), [ANY, ANY, Some(false), ANY, ANY], Refuse("checksum")),
            // Empty although this data directory held it: its log is gone.
            (Empty, [Some(true), ANY, Some(true), ANY, ANY], Rebuild("log is gone")),
            (Empty, [Some(true), ANY, Some(false), ANY, ANY], Refuse("log is gone")),
            // A new data directory, but the peers hold the group's data: a wiped disk.
            (Empty, [Some(false), Some(true), Some(true), ANY, ANY], Rebuild("peers hold")),
            (Empty, [Some(false), Some(true), Some(false), ANY, ANY], Refuse("peers hold")),
            // A new group: its preferred replica (or its only one) campaigns at once.
            (Empty, [Some(false), Some(false), ANY, Some(true), ANY], Campaign),
            (Empty, [Some(false), Some(false), ANY, Some(false), Some(true)], Campaign),
            (Empty, [Some(false), Some(false), ANY, Some(false), Some(false)], Open),
            // A group with state recovers it; only a sole replica campaigns (no one else will).
            (Found, [ANY, ANY, ANY, Some(true), ANY], Campaign),
            (Found, [ANY, ANY, ANY, Some(false), ANY], Open),
        ];
        let mut reached = vec![false; table.len()];
        for stored in [StoreLost, damaged(), Empty, Found] {
            for bits in 0..32u8 {
                let values: [bool; 5] = std::array::from_fn(|i| bits & (1 << i) != 0);
                let [existed, held_elsewhere, rebuildable, sole, preferred] = values;
                let facts = Facts {
                    stored: stored.clone(),
                    existed,
                    held_elsewhere,
                    rebuildable,
                    sole,
                    preferred,
                };
                let row = table
                    .iter()
                    .position(|(s, pattern, _)| {
                        *s == stored
                            && pattern
                                .iter()
                                .zip(values)
                                .all(|(p, v)| p.is_none_or(|p| p == v))
                    })
                    .unwrap_or_else(|| panic!("no row for {facts:?}"));
                reached[row] = true;
                let started = start(&facts);
                assert!(
                    table[row].2.holds_for(&started),
                    "{facts:?}: expected {:?}, got {started:?}",
                    table[row].2
                );
            }
        }
        let unreached: Vec<usize> = (0..table.len()).filter(|&row| !reached[row]).collect();
        assert!(unreached.is_empty(), "rows no facts reach: {unreached:?}");
    }
}
