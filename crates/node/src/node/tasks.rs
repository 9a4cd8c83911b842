//! What runs beside a node's servers: rebuilding replicas from their peers, reporting this
//! node's limits to the catalog and finishing interrupted set changes, the capacity watch,
//! and the health summary.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use leakbloom_proto::internal::v1::catalog_command::Kind;
use leakbloom_proto::internal::v1::{CatalogCommand, NodeLimits};
use leakbloom_proto::v1::SetInfo;
use leakbloom_raft::{GroupId, NodeId};

use super::Node;
use crate::catalog::CATALOG_GROUP;
use crate::error::shard_name;
use crate::shard::shard_of_group;

/// How often a rebuilt replica asks again to be re-added while no leader took it.
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// How often a node compares its limits with the catalog's record of them and, on the
/// catalog's leader, looks for unfinished set changes: a second is cheap (a map lookup) and
/// keeps a fresh cluster's first CreateSet from waiting long for every node's limits.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Why a node should not get client traffic now. Liveness is separate: a node that only waits
/// for its peers must not be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A replica stopped applying committed entries for want of memory (it serves no reads
    /// and leads nothing) and retries until it can.
    Stalled {
        /// The group (a shard, or the catalog).
        group: GroupId,
        /// What it lacks.
        reason: String,
    },
    /// The catalog's replica is being rebuilt from its peers: until it has caught up this node
    /// cannot say which sets exist.
    Rebuilding {
        /// The group (the catalog).
        group: GroupId,
    },
    /// A replica knows no leader of its group: a quorum is not reachable from here (or an
    /// election is running; the server counts it only when it lasts).
    NoLeader {
        /// The group.
        group: GroupId,
    },
    /// The cluster replaced this node (it was marked dead, or decommissioned): it serves
    /// nothing.
    Left,
    /// This node joined a moment ago: its replica of the catalog has not received the
    /// catalog yet, so it cannot say which sets exist.
    Joining,
}

impl Health {
    /// The group concerned.
    pub fn group(&self) -> GroupId {
        match self {
            Health::Stalled { group, .. }
            | Health::Rebuilding { group }
            | Health::NoLeader { group } => *group,
            Health::Left | Health::Joining => CATALOG_GROUP,
        }
    }
}

/// A group's name in logs and messages: `shard N`, or `the catalog`.
pub fn group_name(group: GroupId) -> String {
    shard_name(shard_of_group(group))
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Stalled { group, reason } => {
                write!(f, "{} is stalled: {reason}", group_name(*group))
            }
            Health::Rebuilding { group } => {
                write!(f, "{} is being rebuilt from its peers", group_name(*group))
            }
            Health::NoLeader { group } => write!(f, "{} has no leader", group_name(*group)),
            Health::Joining => f.write_str("this node is joining: the catalog is on its way"),
            Health::Left => f.write_str(
                "the cluster replaced this node; start it with a new id and an empty data \
                 directory",
            ),
        }
    }
}

impl Node {
    /// What is wrong with this node's replicas now (nothing: it can serve).
    pub fn health(&self) -> Vec<Health> {
        if self.has_left() {
            return vec![Health::Left];
        }
        if self.catalog.handle.membership().is_empty() {
            return vec![Health::Joining];
        }
        self.handles()
            .into_iter()
            .flat_map(|(group, handle)| {
                let stalled = handle
                    .stalled()
                    .map(|reason| Health::Stalled { group, reason });
                let rebuilding = (group == CATALOG_GROUP && handle.rejoin_mark().is_some())
                    .then_some(Health::Rebuilding { group });
                let leaderless = (handle.leadership().leader.is_none()
                    && handle.rejoin_mark().is_none())
                .then_some(Health::NoLeader { group });
                stalled.into_iter().chain(rebuilding).chain(leaderless)
            })
            .collect()
    }

    /// Gets every replica that started rebuilding from its peers re-added by its group's
    /// leader (the peer `Rejoin` call, retried until some leader takes it); returns when none
    /// waits any more. Run it beside the node's servers: the replicas need the peer service to
    /// catch up. Each then catches up on its own and votes again once it has (see
    /// `leakbloom_raft::node`'s docs).
    pub async fn rebuild(self: Arc<Node>) {
        loop {
            let waiting: Vec<GroupId> = self
                .handles()
                .into_iter()
                .filter(|(_, handle)| handle.rejoin_mark() == Some(0))
                .map(|(group, _)| group)
                .collect();
            if waiting.is_empty() {
                return;
            }
            join_all(waiting.into_iter().map(|group| self.ask_rejoin(group))).await;
            tokio::time::sleep(REJOIN_RETRY).await;
        }
    }

    /// Asks the replicas of `group` on other nodes, the known leader first, to re-add this
    /// node's replica, following leader hints; records the answer on the replica.
    async fn ask_rejoin(&self, group: GroupId) {
        let Some(handle) = self.handle(group) else {
            return;
        };
        let members = if group == CATALOG_GROUP {
            self.catalog.state.read(|c| c.live().collect())
        } else {
            self.placed(group as u32)
        };
        let mut candidates: Vec<NodeId> = members
            .into_iter()
            .filter(|&node| node != self.id())
            .collect();
        if let Some(leader) = handle.leadership().leader {
            candidates.retain(|&node| node != leader);
            candidates.insert(0, leader);
        }
        let mut last = None;
        for node in candidates {
            match self.peers.rejoin(node, group).await {
                Ok(index) => {
                    tracing::info!(
                        node = self.id(),
                        group = group_name(group),
                        leader = node,
                        index,
                        "rebuilt replica re-added to its group; catching up"
                    );
                    handle.rejoined(index);
                    return;
                }
                Err(error) => last = Some(error),
            }
        }
        if let Some(error) = last {
            tracing::debug!(node = self.id(), group, %error, "rejoin not taken yet; retrying");
        }
    }

    /// Keeps the catalog's record of this node's limits current (reported at start, and
    /// whenever the config's differ), and on the catalog's leader finishes set creations and
    /// drops a crash left unfinished. Runs until the node stops.
    pub async fn maintain(self: Arc<Node>) {
        let limits = NodeLimits {
            node: self.id(),
            filter_memory: self.budget.limit(),
            max_sets: self.config.max_sets as u64,
            suffixes: true,
        };
        let mut seen = HashMap::new();
        let mut reported = false;
        loop {
            let recorded = self.catalog.state.read(|c| c.limits(self.id()).copied());
            if recorded != Some(limits) {
                let report = CatalogCommand {
                    kind: Some(Kind::Limits(limits)),
                };
                match self.propose_catalog(report).await {
                    Ok(_) => tracing::info!(
                        node = self.id(),
                        filter_memory = limits.filter_memory,
                        max_sets = limits.max_sets,
                        "limits reported to the catalog"
                    ),
                    Err(error) => {
                        tracing::debug!(%error, "limits not reported yet; retrying");
                    }
                }
            }
            match self.report_addresses(!reported).await {
                Ok(()) => reported = true,
                Err(error) => tracing::debug!(%error, "addresses not reported yet; retrying"),
            }
            self.reconcile(&mut seen).await;
            tokio::time::sleep(MAINTAIN_EVERY).await;
        }
    }

    /// Warns in the log, every `every`, about each set whose estimated keys went past its
    /// capacity since the last look (once per crossing): its false-positive rate then climbs
    /// past the target. The `leakbloom_set_over_capacity` gauge says the same to metrics.
    pub async fn watch_capacity(self: Arc<Node>, every: Duration) {
        let mut over = HashSet::new();
        loop {
            tokio::time::sleep(every).await;
            let sets = self.list_sets().await.unwrap_or_default();
            for set in newly_over_capacity(&sets, &mut over) {
                tracing::warn!(
                    set = %set.name,
                    estimated_keys = set.estimated_keys,
                    capacity = set.capacity,
                    estimated_fpr = set.estimated_fpr,
                    target_fpr = set.fpr,
                    "set is over its capacity: its false-positive rate climbs past the target; \
                     create a larger set and insert its keys there"
                );
            }
        }
    }
}

/// The sets of `sets` over their capacity that are not in `over` yet; `over` becomes the sets
/// over capacity now (a set that drops back, or is dropped and created again, warns again).
fn newly_over_capacity<'a>(sets: &'a [SetInfo], over: &mut HashSet<String>) -> Vec<&'a SetInfo> {
    let now: HashSet<String> = sets
        .iter()
        .filter(|set| set.estimated_keys > set.capacity)
        .map(|set| set.name.clone())
        .collect();
    let new = sets
        .iter()
        .filter(|set| now.contains(&set.name) && !over.contains(&set.name))
        .collect();
    *over = now;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, estimated_keys: u64) -> SetInfo {
        SetInfo {
            name: name.into(),
            capacity: 100,
            estimated_keys,
            ..SetInfo::default()
        }
    }

    #[test]
    fn over_capacity_warns_once_per_crossing() {
        let mut over = HashSet::new();
        let names = |sets: Vec<&SetInfo>| sets.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let first = [set("a", 101), set("b", 50)];
        assert_eq!(names(newly_over_capacity(&first, &mut over)), ["a"]);
        assert!(newly_over_capacity(&first, &mut over).is_empty());
        let later = [set("a", 101), set("b", 150)];
        assert_eq!(names(newly_over_capacity(&later, &mut over)), ["b"]);
        // `a` dropped (or back under): warns again when it crosses again.
        assert!(newly_over_capacity(&[set("b", 150)], &mut over).is_empty());
        assert_eq!(names(newly_over_capacity(&later, &mut over)), ["a"]);
    }

    #[test]
    fn health_names_the_group() {
        let stalled = Health::Stalled {
            group: 3,
            reason: "no memory".into(),
        };
        assert_eq!(stalled.to_string(), "shard 3 is stalled: no memory");
        assert_eq!(
            Health::NoLeader {
                group: CATALOG_GROUP
            }
            .to_string(),
            "the catalog has no leader"
        );
    }
}
