//! The node's operations, independent of gRPC: validate a request, turn a change into
//! commands committed through Raft groups, answer reads from the replicas' applied state.
//!
//! # Layout
//! - `open.rs`: the data directory and every replica's recovery, fresh start or rebuild.
//! - `propose.rs`: committing a command through a group's leader (local, or a peer's, with
//!   retries), and [`Node::admit`], the check of a command against the catalog before it is
//!   proposed for a peer.
//! - `check.rs`: [`Node::check`] and the peer shard check.
//! - `insert.rs`: [`Node::insert`].
//! - `sets.rs`: creating, dropping and listing sets through the catalog, and the catalog
//!   leader's reconciler that finishes creations and drops a crash interrupted.
//! - `tasks.rs`: what runs beside the servers: rebuilding replicas, reporting this node's
//!   limits to the catalog, the capacity watch, the health summary.
//! - `members.rs`: membership: replicas started and deleted as the catalog's placement
//!   changes, the placement loop on the catalog's leader, and joining, listing and
//!   decommissioning nodes.
//!
//! # Writes
//! [`Node::insert`] splits the keys by shard and proposes one `Insert` command per touched
//! shard, all concurrently, each through the shard's leader (this node's replica, or the
//! leader node through the peer `Propose` RPC). A retryable failure (no leader yet,
//! leadership moved, leader unreachable) is retried with backoff for up to
//! [`PROPOSE_TIMEOUT`], then reported as `UNAVAILABLE` with the leader hint. Inserts are
//! idempotent (bits only get set), so a retry after an ambiguous failure is harmless. The
//! request is acknowledged only when every touched shard has committed and applied its part.
//!
//! # Reads
//! A linearizable check (the default) first gets a read index from every touched local
//! replica (concurrent reads share ReadIndex rounds in the Raft loop) and waits until the replica
//! has applied it; then it reads the filters. `CONSISTENCY_ANY_REPLICA` reads the local filters
//! at once. Shards this node holds no serving replica of are checked by a replica node through
//! the peer `Check` RPC.
//!
//! # Sets
//! Which sets exist is the catalog's to say ([`crate::catalog`]): a set is created and dropped
//! by one catalog entry each, so it is whole or gone everywhere. Every node holds a catalog
//! replica and reads it locally; a set it does not know yet (created through another node a
//! moment ago) is looked up again after a catalog read barrier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use leakbloom_proto::internal::v1::{
    status_response, ShardCheckRequest, ShardCheckResponse, StatusResponse,
};
use leakbloom_proto::v1::{NodeAddress, ShardMap, ShardReplicas};
use leakbloom_raft::{GroupHandle, GroupId, NodeConfig, NodeId, Poller, Store, Transport};
use raft::StateRole;

use crate::catalog::{CatalogState, CATALOG_GROUP};
use crate::cluster::Layout;
use crate::config::Config;
use crate::error::Result;
use crate::machine::{CatalogMachine, Machine};
use crate::memory::Budget;
use crate::peer::{Local, Peers};
use crate::shard::ShardId;
use crate::state::ShardState;

mod check;
mod insert;
mod members;
mod open;
mod propose;
mod sets;
mod tasks;

pub use members::JOIN_TIMEOUT;
pub use propose::PROPOSE_TIMEOUT;
pub use tasks::Health;

/// A shard snapshot waits until the inserts since the last one are as large as it: a filter
/// has its full size from creation, and rewriting it every `snapshot_entries` small inserts
/// wrote more snapshot than log (measured: every ~12 s all 48 replicas of a 3-node dev cluster
/// wrote 31 MB each at once, stalling heartbeats into leader step-downs). And once they are, a
/// snapshot is due whatever the entry count (the byte budget, at least `snapshot_log_bytes`):
/// a shard's log stays within its snapshot's size, so a data directory within about twice the
/// filters (see the raft crate's docs for the bound).
const SNAPSHOT_LOG_RATIO: f64 = 1.0;

/// How long a shard map waits for a peer's `Status` (its client address) before using the
/// address it last heard: a router asking must not wait for a node that is down.
const SHARD_MAP_STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// This node's replica of one shard.
#[derive(Debug, Clone)]
struct Replica {
    state: Arc<ShardState>,
    handle: GroupHandle,
}

/// This node's replica of the catalog.
#[derive(Debug)]
struct CatalogReplica {
    state: Arc<CatalogState>,
    handle: GroupHandle,
}

/// A node: the replicas of the shards it hosts and of the catalog, and the way to every other
/// shard.
#[derive(Debug)]
pub struct Node {
    config: Config,
    /// The layout the cluster was bootstrapped with (the catalog's first placement).
    layout: Layout,
    peers: Arc<Peers>,
    /// The Raft loop hosting every replica of this node.
    poller: Poller,
    /// The log store every replica of this node keeps its log in.
    store: Arc<Store>,
    /// What every replica is started with.
    node_config: NodeConfig,
    /// This node's filter memory, shared by its shard replicas.
    budget: Arc<Budget>,
    /// Indexed by shard; `None` where this node holds no replica. Replicas come and go as the
    /// placement changes ([`members`]).
    replicas: RwLock<Vec<Option<Replica>>>,
    catalog: CatalogReplica,
    /// Last leader learned for each shard not hosted here (0: unknown).
    leaders: Vec<AtomicU64>,
    /// The catalog's leader as a peer last named it (0: unknown), for when this node's own
    /// catalog replica knows none (it was away, and its group moved on without it).
    catalog_hint: AtomicU64,
    /// Client addresses of the nodes, learned from their `Status` (this node's own from the
    /// start), for [`shard_map`](Self::shard_map).
    addresses: Mutex<BTreeMap<NodeId, String>>,
    /// When each node last answered the placement loop (on the catalog's leader).
    liveness: Mutex<members::Liveness>,
    /// The cluster refused this node's registration: it was marked dead or decommissioned
    /// and left. Its data is obsolete: it serves nothing.
    left: std::sync::atomic::AtomicBool,
}

impl Node {
    /// Opens the node's data directory and starts a Raft group for every shard it hosts and
    /// for the catalog, sending through `peers`. Blocking (recovers every replica from disk):
    /// call it off the async runtime. `held_elsewhere` are the groups whose data the peers
    /// hold although this data directory is new: they are rebuilt from the peers.
    pub fn open(config: Config, peers: Arc<Peers>, held_elsewhere: &[GroupId]) -> Result<Node> {
        config.validate()?;
        let layout = config.layout()?;
        let record = config.record()?;
        // A record means the replicas were created before: one found empty lost its data. So
        // does one of a new data directory whose peers hold its group's data (a wiped disk).
        let existed = record.check(&config.data_dir)?;
        let joined = config.join.is_some();
        let rebuildable = layout.replication() > 1 || joined;
        let (store, store_lost) = open::open_store(&config.data_dir, rebuildable)?;
        let poller = Poller::start(
            &format!("n{}", config.id),
            peers.clone() as Arc<dyn Transport>,
            Duration::from_millis(config.tick_ms),
        );
        let node_config = NodeConfig {
            snapshot_entries: config.snapshot_entries,
            snapshot_log_ratio: SNAPSHOT_LOG_RATIO,
            snapshot_log_bytes: config.snapshot_log_bytes,
            lease_reads: config.lease_reads,
            ..NodeConfig::default()
        };
        let opening = open::Opening {
            id: config.id,
            store: &store,
            store_lost,
            existed,
            held_elsewhere,
            rebuildable,
            data_dir: &config.data_dir,
            node_config: node_config.clone(),
            poller: &poller,
        };
        // The catalog first: it says which shards this node holds (a joined node's catalog
        // replica starts empty and is added to the group by its leader).
        let state = Arc::new(CatalogState::new(&layout));
        // A new cluster's groups are bootstrapped with the layout's voters. Every other replica
        // starts without members to move its group towards: a leader acting on a stale
        // placement would move replicas back; the hosting loop tells each replica its members
        // once the catalog is current (`members.rs`).
        let fresh = !existed && !joined;
        let catalog_members = if fresh {
            layout.nodes().to_vec()
        } else {
            Vec::new()
        };
        let handle = opening.replica(
            CATALOG_GROUP,
            &catalog_members,
            CatalogMachine::new(state.clone()),
        )?;
        let catalog = CatalogReplica { state, handle };
        let budget = Budget::new(config.filter_memory_limit());
        let stored = store.groups();
        let mut replicas = Vec::with_capacity(config.shards as usize);
        for shard in 0..config.shards {
            let group = GroupId::from(shard);
            // A fresh bootstrap holds the layout's replicas; later, what the catalog places
            // here and what the store still holds (a replica being moved away).
            let placed = if fresh {
                layout.replicas(shard)
            } else if joined && catalog.state.read(|c| c.applied()) == 0 {
                // A joined node's catalog replica has not received the catalog yet: its
                // placement is not the cluster's, and the hosting loop starts what is placed
                // here once it is.
                Vec::new()
            } else {
                catalog.state.read(|c| c.replicas(shard).to_vec())
            };
            let held = existed && stored.contains(&group);
            if !placed.contains(&config.id) && !held {
                replicas.push(None);
                continue;
            }
            let voters = if fresh { placed } else { Vec::new() };
            let state = Arc::new(ShardState::new(shard, config.shards, budget.clone()));
            let handle = opening.replica(group, &voters, Machine::new(state.clone()))?;
            replicas.push(Some(Replica { state, handle }));
        }
        if !existed {
            record.create(&config.data_dir)?;
        }
        tracing::info!(
            node = config.id,
            shards = config.shards,
            replication = layout.replication(),
            hosted = replicas.iter().filter(|r| r.is_some()).count(),
            rebuilding = replicas
                .iter()
                .flatten()
                .map(|r| &r.handle)
                .chain([&catalog.handle])
                .filter(|handle| handle.rejoin_mark().is_some())
                .count(),
            filter_memory = budget.limit(),
            data_dir = %config.data_dir.display(),
            "replicas started"
        );
        let leaders = (0..config.shards).map(|_| AtomicU64::new(0)).collect();
        let own = config.advertise.clone().unwrap_or_default();
        Ok(Node {
            addresses: Mutex::new(BTreeMap::from([(config.id, own)])),
            liveness: Mutex::default(),
            catalog_hint: AtomicU64::new(0),
            left: std::sync::atomic::AtomicBool::new(false),
            config,
            layout,
            peers,
            poller,
            store,
            node_config,
            budget,
            replicas: RwLock::new(replicas),
            catalog,
            leaders,
        })
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The replica layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This node's filter memory: its limit and what its partitions hold.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// This node's replica state of `shard`, if it hosts one (for tests and diagnostics).
    pub fn shard(&self, shard: ShardId) -> Option<Arc<ShardState>> {
        self.replica(shard).map(|r| r.state)
    }

    /// This node's Raft handle of `shard`, if it hosts a replica.
    pub fn group(&self, shard: ShardId) -> Option<GroupHandle> {
        self.replica(shard).map(|r| r.handle)
    }

    /// This node's copy of the catalog.
    pub fn catalog(&self) -> &Arc<CatalogState> {
        &self.catalog.state
    }

    /// This node's Raft handle of the catalog group.
    pub fn catalog_group(&self) -> &GroupHandle {
        &self.catalog.handle
    }

    /// This node's handle of `group` (a shard's or the catalog's), if it hosts a replica.
    fn handle(&self, group: GroupId) -> Option<GroupHandle> {
        if group == CATALOG_GROUP {
            return Some(self.catalog.handle.clone());
        }
        self.group(ShardId::try_from(group).ok()?)
    }

    /// Every group this node hosts a replica of, with its handle: shards, then the catalog.
    fn handles(&self) -> Vec<(GroupId, GroupHandle)> {
        let replicas = self.replicas.read().expect("replicas lock poisoned");
        replicas
            .iter()
            .enumerate()
            .filter_map(|(shard, r)| Some((shard as GroupId, r.as_ref()?.handle.clone())))
            .chain([(CATALOG_GROUP, self.catalog.handle.clone())])
            .collect()
    }

    fn replica(&self, shard: ShardId) -> Option<Replica> {
        let replicas = self.replicas.read().expect("replicas lock poisoned");
        replicas.get(shard as usize)?.clone()
    }

    /// This node's replica of `shard` if it may answer reads: hosted, a member of its group
    /// with the group's state (not joining it or being rebuilt from peers: its state is
    /// incomplete until it has caught up) and not stalled (it stopped applying). Reads of
    /// other shards go to another replica.
    fn serving(&self, shard: ShardId) -> Option<Replica> {
        if self.left.load(Ordering::Relaxed) {
            return None;
        }
        self.replica(shard).filter(|r| {
            r.handle.rejoin_mark().is_none() && r.handle.stalled().is_none() && r.handle.is_voter()
        })
    }

    /// Stops every local replica and the node's Raft loop, and waits until the store is
    /// closed.
    pub async fn shutdown(&self) {
        self.poller.shutdown().await;
    }

    /// The node that leads `shard`, as far as this node knows.
    fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        match self.replica(shard) {
            Some(replica) => leader_seen(self.id(), &replica.handle),
            None => match self.leaders[shard as usize].load(Ordering::Relaxed) {
                // Unknown: ask the preferred leader, which answers or hints.
                0 => self.placed(shard).first().copied(),
                leader => Some(leader),
            },
        }
    }

    /// Remembers the leader a peer named for `group` (a shard not hosted here).
    fn learn_leader(&self, group: GroupId, leader: Option<NodeId>) {
        let slot = if group == CATALOG_GROUP {
            Some(&self.catalog_hint)
        } else {
            ShardId::try_from(group)
                .ok()
                .and_then(|shard| self.leaders.get(shard as usize))
        };
        if let (Some(slot), Some(leader)) = (slot, leader) {
            slot.store(leader, Ordering::Relaxed);
        }
    }

    /// The cluster as this node sees it, for routers: the nodes' client addresses (asking
    /// every peer's `Status` for them, briefly; silent peers keep their last known address),
    /// each shard's replicas and its leader with the term it was seen in (0 for a hint).
    pub async fn shard_map(&self) -> ShardMap {
        let (members, placement, epoch) = self.catalog.state.read(|c| {
            let members: Vec<NodeId> = c.live().collect();
            (members, c.placement().to_vec(), c.epoch())
        });
        let others = members.iter().filter(|&&id| id != self.id());
        let answers = join_all(others.map(|&id| async move {
            tokio::time::timeout(SHARD_MAP_STATUS_TIMEOUT, self.peers.status(id))
                .await
                .ok()
                .and_then(|status| status.ok())
                .map(|status| (id, status.address))
        }))
        .await;
        let nodes = {
            let mut addresses = self.addresses.lock().expect("addresses lock");
            for (id, address) in answers.into_iter().flatten() {
                if !address.is_empty() {
                    addresses.insert(id, address);
                }
            }
            members
                .iter()
                .map(|&id| NodeAddress {
                    id,
                    address: addresses.get(&id).cloned().unwrap_or_default(),
                })
                .collect()
        };
        let shard_replicas = (0..self.config.shards)
            .map(|shard| {
                let (leader, term) = match self.replica(shard) {
                    Some(replica) => (
                        leader_seen(self.id(), &replica.handle).unwrap_or(0),
                        replica.handle.leadership().term,
                    ),
                    None => (self.leaders[shard as usize].load(Ordering::Relaxed), 0),
                };
                ShardReplicas {
                    replicas: placement.get(shard as usize).cloned().unwrap_or_default(),
                    leader,
                    term,
                }
            })
            .collect();
        ShardMap {
            node: self.id(),
            epoch,
            shards: self.config.shards,
            replication: self.catalog.state.read(|c| c.replication()),
            max_batch: self.config.max_batch as u64,
            nodes,
            shard_replicas,
        }
    }
}

/// The leader a replica knows: this node when it leads.
fn leader_seen(id: NodeId, handle: &GroupHandle) -> Option<NodeId> {
    let leadership = handle.leadership();
    if leadership.role == StateRole::Leader {
        Some(id)
    } else {
        leadership.leader
    }
}

#[tonic::async_trait]
impl Local for Node {
    fn id(&self) -> NodeId {
        self.config.id
    }

    fn replica(&self, group: GroupId) -> Option<GroupHandle> {
        self.handle(group)
    }

    async fn admit(&self, group: GroupId, command: &[u8]) -> Result<()> {
        Node::admit(self, group, command).await
    }

    async fn check_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse> {
        self.check_local_shard(request).await
    }

    fn status(&self) -> StatusResponse {
        StatusResponse {
            node: self.id(),
            state: status_response::State::Serving.into(),
            committed: self
                .handles()
                .iter()
                .map(|(group, handle)| (*group, handle.committed()))
                .collect(),
            address: self.config.advertise.clone().unwrap_or_default(),
            members: self.led_members(),
            filter_bytes: self.budget.used(),
            lag: self
                .handles()
                .iter()
                .map(|(_, handle)| handle.committed().saturating_sub(handle.applied()))
                .sum(),
        }
    }
}
