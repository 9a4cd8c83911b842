//! Membership: nodes joining and leaving, and replicas following the catalog's placement.
//!
//! The catalog ([`crate::catalog`]) records which nodes there are and where each shard's
//! replicas should be. Three loops make the cluster match it:
//!
//! - **Hosting** ([`Node::host`], every node, every [`HOST_EVERY`]): learns every node's peer
//!   address from the registry; starts an empty replica of each shard the placement gives this
//!   node (it waits, neither voting nor campaigning, until its group's leader adds it as a
//!   learner and sends it a snapshot); tells every replica its group's members (the placement),
//!   so that the group's leader moves the membership towards them, adding first and removing
//!   after; and deletes a replica the placement took away once its group removed it.
//! - **Placing** ([`Node::place`], on the catalog's leader, every [`PLACE_EVERY`]): makes a
//!   joined node active once its catalog replica is a voter, asks every node which memberships
//!   its groups have, and proposes the next moves of
//!   [`leakbloom_cluster::placement::plan`] (a bounded number at a time; a shard moves again
//!   only once its group matches its placement); a decommissioning node that holds nothing any
//!   more becomes decommissioned.
//! - **Operators** ([`Node::join`], [`Node::list_nodes`], [`Node::decommission`]): the
//!   `Cluster/Join` and `Nodes` services.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use leakbloom_cluster::placement::{self, NodeEntry, NodeState};
use leakbloom_proto::internal::v1::catalog_command::Kind;
use leakbloom_proto::internal::v1::{
    CatalogCommand, GroupMembers, NodeRecord, PlacementChange, ShardPlacement, StatusResponse,
};
use leakbloom_proto::v1::{JoinRequest, JoinResponse, NodeInfo};
use leakbloom_raft::{GroupId, GroupNode, NodeId};
use raft::StateRole;

use super::{Node, Replica};
use crate::catalog::{state_to_proto, Catalog, CATALOG_GROUP};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::shard::ShardId;
use crate::state::ShardState;

pub use crate::join::JOIN_TIMEOUT;

/// How often a node aligns its replicas with the placement.
const HOST_EVERY: Duration = Duration::from_millis(250);

/// How often the catalog's leader plans moves.
const PLACE_EVERY: Duration = Duration::from_secs(1);

/// Shards moving at once, at most: each move sends a snapshot of the shard to its new node.
const MAX_MOVES: usize = 2;

/// How long asking a node for its status may take when listing or placing.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// When each node last answered the catalog leader's placement loop, for the leadership term
/// it was seen in: a new leader starts every node's clock afresh, so a node is marked dead only
/// after one leader has not heard from it for the whole `dead_after_ms`.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    term: u64,
    seen: HashMap<NodeId, Instant>,
}

impl Liveness {
    /// Records who answered in `term` at `now`; returns the nodes of `asked` silent for at
    /// least `dead_after` since this term began or they last answered.
    fn silent(
        &mut self,
        term: u64,
        now: Instant,
        asked: &[(NodeId, bool)],
        dead_after: Duration,
    ) -> Vec<NodeId> {
        if term != self.term {
            self.term = term;
            self.seen.clear();
        }
        let mut silent = Vec::new();
        for &(node, answered) in asked {
            let seen = self.seen.entry(node).or_insert(now);
            if answered {
                *seen = now;
            } else if now.duration_since(*seen) >= dead_after {
                silent.push(node);
            }
        }
        self.seen
            .retain(|node, _| asked.iter().any(|(n, _)| n == node));
        silent
    }
}

/// A group's membership as a replica applied it: `(voters, learners)`.
fn conf_of(handle: &leakbloom_raft::GroupHandle) -> (Vec<NodeId>, Vec<NodeId>) {
    let membership = handle.membership();
    (membership.voters, membership.learners)
}

impl Node {
    /// The replicas the placement gives `shard`, the preferred leader first.
    pub(super) fn placed(&self, shard: ShardId) -> Vec<NodeId> {
        self.catalog.state.read(|c| c.replicas(shard).to_vec())
    }

    /// The membership of every group this node's replica leads (the peer `Status`).
    pub(super) fn led_members(&self) -> HashMap<u64, GroupMembers> {
        self.handles()
            .into_iter()
            .filter(|(_, handle)| handle.leadership().role == StateRole::Leader)
            .map(|(group, handle)| {
                let (voters, learners) = conf_of(&handle);
                (group, GroupMembers { voters, learners })
            })
            .collect()
    }

    /// For metrics: the shards with fewer replicas on live nodes (active or decommissioning)
    /// than the replication, by this node's catalog; and the shards this node leads whose
    /// membership is not yet their placement (moves in flight here).
    pub fn placement_health(&self) -> (u64, u64) {
        let (under, placement) = self.catalog.state.read(|c| {
            let live = |node: &NodeId| c.members().get(node).is_some_and(|m| m.state.live());
            let under = c
                .placement()
                .iter()
                .filter(|replicas| {
                    (replicas.iter().filter(|n| live(n)).count() as u64)
                        < u64::from(c.replication())
                })
                .count() as u64;
            (under, c.placement().to_vec())
        });
        let moving = self
            .led_members()
            .iter()
            .filter(|(&group, _)| group != CATALOG_GROUP)
            .filter(|(&group, members)| {
                let placed = placement.get(group as usize).map_or(&[][..], Vec::as_slice);
                !members.learners.is_empty() || !same_nodes(&members.voters, placed)
            })
            .count() as u64;
        (under, moving)
    }

    /// Keeps this node's replicas in line with the catalog's placement: learns peer
    /// addresses, starts the replicas placed here, tells every replica its group's members,
    /// deletes the replicas their groups removed. Runs until the node stops.
    pub async fn host(self: Arc<Node>) {
        let mut told: HashMap<GroupId, Vec<NodeId>> = HashMap::new();
        loop {
            if let Err(error) = self.align(&mut told).await {
                tracing::warn!(node = self.id(), %error, "replicas not aligned with the placement");
            }
            tokio::time::sleep(HOST_EVERY).await;
        }
    }

    /// One pass of [`host`](Self::host). `told` is the members each group was last told.
    async fn align(&self, told: &mut HashMap<GroupId, Vec<NodeId>>) -> Result<()> {
        // Only a current catalog says where replicas belong: a copy behind by a placement
        // change would have a group's leader move it back. A joining node waits for its copy.
        if self.catalog.handle.membership().is_empty() {
            return Ok(());
        }
        if let Err(error) = self.catalog_barrier().await {
            tracing::debug!(node = self.id(), %error, "catalog not current; placement not applied");
            return Ok(());
        }
        let (addresses, live, placement) = self.catalog.state.read(|c| {
            let addresses: Vec<(NodeId, String)> = c
                .members()
                .iter()
                .map(|(&node, member)| (node, member.peer_address.clone()))
                .collect();
            (
                addresses,
                c.live().collect::<Vec<_>>(),
                c.placement().to_vec(),
            )
        });
        for (node, address) in &addresses {
            self.peers.set_address(*node, address);
        }
        if !live.is_empty() {
            self.tell(told, CATALOG_GROUP, &self.catalog.handle, live);
        }
        for (shard, desired) in placement.iter().enumerate() {
            let shard = shard as ShardId;
            let group = GroupId::from(shard);
            match self.replica(shard) {
                None if desired.contains(&self.id()) => {
                    let replica = self.start_replica(shard)?;
                    self.tell(told, group, &replica.handle, desired.clone());
                }
                None => {}
                Some(replica) => {
                    self.tell(told, group, &replica.handle, desired.clone());
                    if !desired.contains(&self.id()) && self.released(shard, &replica).await {
                        told.remove(&group);
                        self.stop_replica(shard, replica).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Tells a replica its group's members when they changed since it was last told.
    fn tell(
        &self,
        told: &mut HashMap<GroupId, Vec<NodeId>>,
        group: GroupId,
        handle: &leakbloom_raft::GroupHandle,
        members: Vec<NodeId>,
    ) {
        if told.get(&group) != Some(&members) {
            handle.set_members(members.clone());
            told.insert(group, members);
        }
    }

    /// Starts an empty replica of `shard` that waits for its group's leader to add it.
    fn start_replica(&self, shard: ShardId) -> Result<Replica> {
        let group = GroupId::from(shard);
        let replica_error = |e: leakbloom_raft::Error| Error::Replica {
            shard,
            reason: e.to_string(),
        };
        let storage = self.store.group(group).map_err(replica_error)?;
        let state = Arc::new(ShardState::new(
            shard,
            self.config.shards,
            self.budget.clone(),
        ));
        let node = GroupNode::new(
            self.id(),
            storage,
            &[],
            Machine::new(state.clone()),
            self.node_config.clone(),
        )
        .map_err(replica_error)?;
        let handle = self.poller.add(node);
        tracing::info!(
            node = self.id(),
            shard,
            "placed a replica here; waiting for the shard's leader to send it"
        );
        let replica = Replica { state, handle };
        let mut replicas = self.replicas.write().expect("replicas lock poisoned");
        replicas[shard as usize] = Some(replica.clone());
        Ok(replica)
    }

    /// Whether this node's replica of `shard`, which the placement no longer lists, is out of
    /// its group: its own membership says so, or the group's leader does (a removed replica
    /// may never hear of its removal).
    async fn released(&self, shard: ShardId, replica: &Replica) -> bool {
        if replica.handle.removed() {
            return true;
        }
        if replica.handle.leadership().role == StateRole::Leader {
            return false;
        }
        let group = GroupId::from(shard);
        for node in self.placed(shard) {
            let Ok(status) = self.status_of(node).await else {
                continue;
            };
            if let Some(members) = status.members.get(&group) {
                return !members.voters.contains(&self.id())
                    && !members.learners.contains(&self.id());
            }
        }
        false
    }

    /// Stops and deletes this node's replica of `shard`.
    async fn stop_replica(&self, shard: ShardId, replica: Replica) -> Result<()> {
        {
            let mut replicas = self.replicas.write().expect("replicas lock poisoned");
            replicas[shard as usize] = None;
        }
        replica.handle.shutdown().await;
        self.store
            .drop_group(GroupId::from(shard))
            .map_err(|e| Error::Replica {
                shard,
                reason: e.to_string(),
            })?;
        tracing::info!(
            node = self.id(),
            shard,
            "replica moved to another node; deleted here"
        );
        Ok(())
    }

    /// A node's status, this node's own without a call.
    async fn status_of(&self, node: NodeId) -> Result<StatusResponse> {
        if node == self.id() {
            return Ok(crate::peer::Local::status(self));
        }
        tokio::time::timeout(STATUS_TIMEOUT, self.peers.status(node))
            .await
            .map_err(|_| Error::Unavailable {
                shard: u32::MAX,
                leader: None,
                reason: format!("node {node} did not answer its status in time"),
            })?
    }

    /// On the catalog's leader, once a second: makes joined nodes active, plans the next
    /// replica moves and proposes them, and marks decommissioning nodes that hold nothing
    /// decommissioned. Runs until the node stops.
    pub async fn place(self: Arc<Node>) {
        loop {
            tokio::time::sleep(PLACE_EVERY).await;
            if self.catalog.handle.leadership().role != StateRole::Leader {
                continue;
            }
            if let Err(error) = self.place_once().await {
                tracing::debug!(node = self.id(), %error, "placement step not taken; retrying");
            }
        }
    }

    async fn place_once(&self) -> Result<()> {
        // Joined nodes whose catalog replica is a voter now take part.
        let (catalog_voters, _) = conf_of(&self.catalog.handle);
        let joining: Vec<NodeId> = self.catalog.state.read(|c| {
            c.members()
                .iter()
                .filter(|(_, m)| m.state == NodeState::Joining)
                .map(|(&node, _)| node)
                .collect()
        });
        for node in joining {
            if catalog_voters.contains(&node) {
                self.set_node_state(node, NodeState::Active).await?;
                tracing::info!(node, "node joined: it takes replicas from now on");
            }
        }
        // Each group's membership, as its leader applied it; and who answered.
        let live: Vec<NodeId> = self.catalog.state.read(|c| c.live().collect());
        let statuses = join_all(live.iter().map(|&node| self.status_of(node))).await;
        let answered: Vec<(NodeId, bool)> = live
            .iter()
            .zip(&statuses)
            .map(|(&node, status)| (node, status.is_ok()))
            .collect();
        let mut members: HashMap<u64, GroupMembers> = HashMap::new();
        for status in statuses.into_iter().flatten() {
            members.extend(status.members);
        }
        let dead_after = Duration::from_millis(self.config.dead_after_ms);
        let silent = self.liveness.lock().expect("liveness lock").silent(
            self.catalog.handle.leadership().term,
            Instant::now(),
            &answered,
            dead_after,
        );
        for node in silent {
            self.set_node_state(node, NodeState::Dead).await?;
            tracing::warn!(
                node,
                unreachable_for = ?dead_after,
                "node unreachable: marked dead; its replicas are re-created on the other nodes, \
                 and it cannot come back under its id"
            );
        }
        let (nodes, current, replication, epoch, leaving) = self.catalog.state.read(|c| {
            let nodes: Vec<NodeEntry> = c
                .members()
                .iter()
                .map(|(&id, m)| NodeEntry { id, state: m.state })
                .collect();
            let leaving: Vec<NodeId> = c
                .members()
                .iter()
                .filter(|(&node, m)| {
                    m.state == NodeState::Decommissioning && c.hosted(node).is_empty()
                })
                .map(|(&node, _)| node)
                .collect();
            (
                nodes,
                c.placement().to_vec(),
                c.replication() as usize,
                c.epoch(),
                leaving,
            )
        });
        let settled: Vec<bool> = current
            .iter()
            .enumerate()
            .map(|(shard, replicas)| {
                members
                    .get(&(shard as u64))
                    .is_some_and(|m| m.learners.is_empty() && same_nodes(&m.voters, replicas))
            })
            .collect();
        // A decommissioning node is done once no placement lists it and no shard's group has
        // it (it leaves the catalog's group once it is decommissioned).
        for node in leaving {
            let in_a_group = members
                .iter()
                .filter(|(&group, _)| group != CATALOG_GROUP)
                .any(|(_, m)| m.voters.contains(&node) || m.learners.contains(&node));
            if !in_a_group && settled.iter().all(|&s| s) {
                self.set_node_state(node, NodeState::Decommissioned).await?;
                tracing::info!(
                    node,
                    "node decommissioned: it holds nothing and may be removed"
                );
            }
        }
        let moves = placement::plan(&nodes, &current, replication, &settled, MAX_MOVES);
        if moves.changes.is_empty() {
            return Ok(());
        }
        let change = PlacementChange {
            epoch,
            shards: moves
                .changes
                .iter()
                .map(|(shard, replicas)| ShardPlacement {
                    shard: *shard,
                    replicas: replicas.clone(),
                })
                .collect(),
        };
        for (shard, replicas) in &moves.changes {
            tracing::info!(
                shard,
                from = ?current.get(*shard as usize),
                to = ?replicas,
                "moving a shard's replicas"
            );
        }
        self.propose_catalog(CatalogCommand {
            kind: Some(Kind::Placement(change)),
        })
        .await?;
        Ok(())
    }

    async fn set_node_state(&self, node: NodeId, state: NodeState) -> Result<()> {
        self.propose_catalog(CatalogCommand {
            kind: Some(Kind::NodeState(NodeRecord {
                node,
                state: state_to_proto(state),
                ..NodeRecord::default()
            })),
        })
        .await
        .map(drop)
    }

    /// Records this node's addresses in the catalog's registry when they differ from what it
    /// holds (a bootstrapped node's entry starts without them; a node may move), or whatever
    /// it holds when `always` (at start: a node that was away learns whether the cluster
    /// replaced it meanwhile, which its own copy of the catalog cannot tell it).
    pub(super) async fn report_addresses(&self, always: bool) -> Result<()> {
        let peer = self.config.peer_advertise.clone().unwrap_or_default();
        let client = self.config.advertise.clone().unwrap_or_default();
        let recorded = self.catalog.state.read(|c| {
            c.members()
                .get(&self.id())
                .map(|m| (m.peer_address.clone(), m.client_address.clone()))
        });
        let current = recorded == Some((peer.clone(), client.clone()));
        if recorded.is_none() || (current && !always) {
            return Ok(());
        }
        let answer = self
            .propose_catalog(CatalogCommand {
                kind: Some(Kind::Join(NodeRecord {
                    node: self.id(),
                    peer_address: peer,
                    client_address: client,
                    ..NodeRecord::default()
                })),
            })
            .await;
        if let Err(Error::Membership(why)) = &answer {
            if !self.left.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    node = self.id(),
                    why,
                    "the cluster replaced this node: its data is obsolete and it serves \
                     nothing; delete its data directory and start it with a new id"
                );
            }
        }
        answer.map(drop)
    }

    /// Whether the cluster refused this node because it left (marked dead or decommissioned).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// Registers a new node (the `Cluster/Join` call): refused when its id is used by a live
    /// node at another peer address, or was used by a node that left.
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse> {
        if request.node == 0 || request.peer_address.is_empty() {
            return Err(Error::Membership(
                "a join needs a node id above 0 and the node's peer address".into(),
            ));
        }
        self.catalog_barrier().await?;
        let known = self
            .catalog
            .state
            .read(|c| c.members().get(&request.node).cloned());
        // The same id and address again is a node that restarted mid-join; anything else under
        // a live id (a bootstrap node's too, whose address may not be recorded yet) is another
        // node.
        if let Some(member) = known {
            if member.state.in_cluster() && member.peer_address != request.peer_address {
                let address = match member.peer_address.as_str() {
                    "" => "its own peer address".to_string(),
                    address => address.to_string(),
                };
                return Err(Error::NodeIdInUse {
                    node: request.node,
                    address,
                });
            }
        }
        self.propose_catalog(CatalogCommand {
            kind: Some(Kind::Join(NodeRecord {
                node: request.node,
                peer_address: request.peer_address.clone(),
                client_address: request.client_address.clone(),
                ..NodeRecord::default()
            })),
        })
        .await?;
        self.peers.set_address(request.node, &request.peer_address);
        tracing::info!(
            node = request.node,
            peer_address = request.peer_address,
            "node registered; it joins the catalog group, then takes replicas"
        );
        let (shards, replication) = (
            self.config.shards,
            self.catalog.state.read(|c| c.replication()),
        );
        Ok(JoinResponse {
            shards,
            replication,
            nodes: self.list_nodes().await?,
        })
    }

    /// Every node the catalog records, with what it holds (`Nodes/ListNodes`): replicas as
    /// placed, leaders as this node knows them, bytes and lag as each node says when it
    /// answers within a moment.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        let map = self.shard_map().await;
        let (members, replicas) = self.catalog.state.read(|c| {
            let replicas: BTreeMap<NodeId, u32> = c
                .members()
                .keys()
                .map(|&node| (node, c.hosted(node).len() as u32))
                .collect();
            (c.members().clone(), replicas)
        });
        let mut leaders: BTreeMap<NodeId, u32> = BTreeMap::new();
        for shard in &map.shard_replicas {
            if shard.leader != 0 {
                *leaders.entry(shard.leader).or_default() += 1;
            }
        }
        let statuses = join_all(members.iter().map(|(&node, member)| async move {
            let status = if member.state.in_cluster() {
                self.status_of(node).await.ok()
            } else {
                None
            };
            (node, status)
        }))
        .await;
        Ok(statuses
            .into_iter()
            .map(|(node, status)| {
                let member = &members[&node];
                NodeInfo {
                    id: node,
                    address: member.client_address.clone(),
                    peer_address: member.peer_address.clone(),
                    state: state_to_proto(member.state),
                    replicas: replicas.get(&node).copied().unwrap_or(0),
                    leaders: leaders.get(&node).copied().unwrap_or(0),
                    bytes: status.as_ref().map_or(0, |s| s.filter_bytes),
                    lag: status.as_ref().map_or(0, |s| s.lag),
                    reachable: status.is_some(),
                }
            })
            .collect())
    }

    /// Starts decommissioning `node` (`Nodes/DecommissionNode`): its replicas and leadership
    /// move elsewhere, then it becomes decommissioned. Refused when fewer active nodes than
    /// the replication would remain, unless `force`.
    pub async fn decommission(&self, node: NodeId, force: bool) -> Result<NodeInfo> {
        self.catalog_barrier().await?;
        let check = self.catalog.state.read(|c| decommissionable(c, node));
        match check {
            Decommission::Unknown => return Err(Error::UnknownNode { node }),
            Decommission::Already => {}
            Decommission::TooFew {
                active,
                replication,
            } if !force => {
                return Err(Error::Membership(format!(
                    "decommissioning node {node} would leave {active} active nodes for \
                     replication {replication}: add a node first (or pass --force, and the \
                     shards keep their replicas on it until one is added)"
                )))
            }
            Decommission::TooFew { .. } | Decommission::Start => {
                self.set_node_state(node, NodeState::Decommissioning)
                    .await?;
                tracing::info!(node, "decommissioning: moving its replicas elsewhere");
            }
        }
        self.list_nodes()
            .await?
            .into_iter()
            .find(|info| info.id == node)
            .ok_or(Error::UnknownNode { node })
    }
}

/// What decommissioning a node would do.
enum Decommission {
    Unknown,
    /// Decommissioning or decommissioned already.
    Already,
    /// Fewer active nodes than the replication would remain.
    TooFew {
        active: usize,
        replication: u32,
    },
    Start,
}

fn decommissionable(catalog: &Catalog, node: NodeId) -> Decommission {
    let Some(member) = catalog.members().get(&node) else {
        return Decommission::Unknown;
    };
    if matches!(
        member.state,
        NodeState::Decommissioning | NodeState::Decommissioned
    ) {
        return Decommission::Already;
    }
    let active = catalog
        .members()
        .iter()
        .filter(|(&other, m)| other != node && m.state == NodeState::Active)
        .count();
    if active < catalog.replication() as usize {
        return Decommission::TooFew {
            active,
            replication: catalog.replication(),
        };
    }
    Decommission::Start
}

/// Whether two lists hold the same nodes, in any order.
fn same_nodes(a: &[NodeId], b: &[NodeId]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_silent_once_one_leader_has_not_heard_it_for_the_dead_time() {
        let minute = Duration::from_secs(60);
        let start = Instant::now();
        let mut liveness = Liveness::default();
        let at = |minutes: u64| start + minute * minutes as u32;
        // Term 5: node 2 answers, node 3 does not; nobody is silent before 5 minutes.
        let asked = [(2, true), (3, false)];
        assert!(liveness.silent(5, at(0), &asked, 5 * minute).is_empty());
        assert!(liveness.silent(5, at(4), &asked, 5 * minute).is_empty());
        assert_eq!(liveness.silent(5, at(5), &asked, 5 * minute), [3]);
        // Node 3 answers once: its clock starts again.
        assert!(liveness
            .silent(5, at(6), &[(2, true), (3, true)], 5 * minute)
            .is_empty());
        assert!(liveness.silent(5, at(10), &asked, 5 * minute).is_empty());
        // A new leader (term 6) has heard nobody yet: everyone's clock starts at its first look.
        assert!(liveness.silent(6, at(11), &asked, 5 * minute).is_empty());
        assert_eq!(liveness.silent(6, at(16), &asked, 5 * minute), [3]);
    }
}
