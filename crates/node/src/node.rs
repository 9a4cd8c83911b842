//! The node's operations, independent of gRPC: validate a request, turn a change into one
//! [`Command`] per touched shard and commit it through that shard's Raft group, answer reads
//! from the replicas' applied state.
//!
//! # Writes
//! [`Node::insert`] splits the keys by shard and proposes one `Insert` command per touched
//! shard, all concurrently. A proposal goes to the shard's leader: the local replica when this
//! node leads, otherwise the leader node through the peer `Propose` RPC. A retryable failure
//! (no leader yet, leadership moved, leader unreachable) is retried with backoff for up to
//! [`PROPOSE_TIMEOUT`], then reported as `UNAVAILABLE` with the leader hint. Inserts are
//! idempotent (bits only get set), so a retry after an ambiguous failure is harmless. The
//! request is acknowledged only when every touched shard has committed and applied its part.
//!
//! # Reads
//! A `CONSISTENCY_LINEARIZABLE` check first gets a read index from every touched local replica
//! (concurrent reads share ReadIndex rounds in the driver) and waits until the replica has
//! applied it; then it reads the filters. `CONSISTENCY_ANY_REPLICA` reads the local filters at
//! once. Shards this node holds no replica of are checked by a replica node through the peer
//! `Check` RPC.
//!
//! # Sets
//! `CreateSet` and `DropSet` are proposed to every shard. They are not atomic across shards: a
//! crash part-way leaves the set on some shards only. Such a set is invisible (checks and
//! inserts answer `NOT_FOUND`, `ListSets` skips it) until the same `CreateSet` or `DropSet` is
//! retried, which completes it (both are idempotent per shard).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};
use leakbloom_filter::{Filter, KEY_LEN};
use leakbloom_proto::v1::{
    command, status_response, Command, Consistency, CreateSetRequest, DropSetCommand,
    InsertCommand, NodeAddress, SetInfo, SetResult, ShardCheckRequest, ShardCheckResponse,
    ShardMap, ShardReplicas, StatusResponse,
};
use leakbloom_raft::{
    Driver, GroupHandle, GroupId, GroupNode, NodeConfig, NodeId, Store, Transport,
};
use prost::Message as _;
use raft::StateRole;

use crate::cluster::Layout;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::machine::{self, Machine};
use crate::peer::{Local, Peers};
use crate::set::{self, Partition, SetSpec};
use crate::shard::{shard_of, ShardId};
use crate::state::{Applied, ShardState};
use leakbloom_client::{split_keys, whole_keys};

/// How many keys ahead a check prefetches filter blocks: the engine's measured batch distance.
const PREFETCH_DISTANCE: usize = leakbloom_filter::CHECK_PREFETCH_DISTANCE;

/// How long a proposal keeps retrying retryable failures: longer than an election (1-2 s with
/// default ticks), so a write survives one leader change.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// First retry delay; doubled up to [`MAX_BACKOFF`]. A new leader usually answers in a tick.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Longest retry delay: a few ticks, so a retry never waits long after a leader appears.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

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

/// How often a rebuilt replica asks again to be re-added while no leader took it.
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// Opens the node's log store. A store that lost synced writes ([`leakbloom_raft::Error::DiskLost`])
/// is moved to `raft.lost` (replacing an older one, kept for inspection) and replaced by an
/// empty one when `rebuildable` (every replica can be rebuilt from peers); returns whether it
/// was.
fn open_store(data_dir: &std::path::Path, rebuildable: bool) -> Result<(Arc<Store>, bool)> {
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
            let io = |context: &str, path: &std::path::Path, e: std::io::Error| Error::Replica {
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

/// This node's replica of one shard.
#[derive(Debug)]
struct Replica {
    state: Arc<ShardState>,
    handle: GroupHandle,
}

/// A node: the replicas of the shards it hosts, and the way to every other shard.
#[derive(Debug)]
pub struct Node {
    config: Config,
    layout: Layout,
    peers: Arc<Peers>,
    /// Indexed by shard; `None` where this node holds no replica.
    replicas: Vec<Option<Replica>>,
    /// Last leader learned for each shard not hosted here (0: unknown).
    leaders: Vec<AtomicU64>,
    /// Client addresses of the nodes, learned from their `Status` (this node's own from the
    /// start), for [`shard_map`](Self::shard_map).
    addresses: Mutex<BTreeMap<NodeId, String>>,
}

impl Node {
    /// Opens the node's data directory and starts a Raft group for every shard it hosts,
    /// sending through `peers`. Blocking (recovers every replica from disk): call it off the
    /// async runtime. A fresh group's preferred leader (its first replica) campaigns at once, so
    /// a new cluster elects leaders spread over the nodes within a tick or two. A replica whose
    /// data is lost or damaged, or that is empty although this data directory held it (or its
    /// shard is in `held_elsewhere`: its peers hold its data), is rebuilt from its peers.
    pub fn open(config: Config, peers: Arc<Peers>, held_elsewhere: &[ShardId]) -> Result<Node> {
        config.validate()?;
        let layout = config.layout()?;
        let record = config.record()?;
        // A record means the replicas were created before: one found empty lost its data. So
        // does one of a new data directory whose peers hold its shard's data (a wiped disk).
        let existed = record.check(&config.data_dir)?;

        let rebuildable = layout.replication() > 1;
        let (store, store_lost) = open_store(&config.data_dir, rebuildable)?;
        let tick = Duration::from_millis(config.tick_ms);
        let node_config = NodeConfig {
            snapshot_entries: config.snapshot_entries,
            snapshot_log_ratio: SNAPSHOT_LOG_RATIO,
            snapshot_log_bytes: config.snapshot_log_bytes,
            ..NodeConfig::default()
        };
        let transport: Arc<dyn Transport> = peers.clone();
        let mut replicas = Vec::with_capacity(config.shards as usize);
        for shard in 0..config.shards {
            let voters = layout.replicas(shard);
            if !voters.contains(&config.id) {
                replicas.push(None);
                continue;
            }
            let lost_if_empty = if existed {
                Some("its log is gone though this data directory held it")
            } else if held_elsewhere.contains(&shard) {
                Some("this node's data directory is new but its peers hold the shard's data")
            } else {
                None
            };
            let state = Arc::new(ShardState::new(shard));
            // The replica, and whether its storage was empty (a new group, or lost data).
            let open = |rejoin: bool| -> leakbloom_raft::Result<(GroupNode<Machine>, bool)> {
                let mut storage = store.group(GroupId::from(shard))?;
                let empty = storage.is_empty();
                if rejoin {
                    storage.set_rejoin(Some(0))?;
                }
                let group = GroupNode::new(
                    config.id,
                    storage,
                    &voters,
                    Machine::new(state.clone()),
                    node_config.clone(),
                )?;
                Ok((group, empty))
            };
            let replica_error = |e: leakbloom_raft::Error| Error::Replica {
                shard,
                reason: e.to_string(),
            };
            // The replica, or why its data cannot be used.
            let opened: std::result::Result<_, String> = if store_lost {
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
            let (mut group, empty) = match opened {
                Ok(opened) => opened,
                Err(lost) => {
                    if !rebuildable {
                        return Err(Error::Replica {
                            shard,
                            reason: format!(
                                "its only replica lost its data ({lost}); with replication 1 \
                                 it cannot be rebuilt: restore {} from a backup, or move it \
                                 away to start empty",
                                config.data_dir.display()
                            ),
                        });
                    }
                    if !store_lost {
                        tracing::error!(
                            node = config.id,
                            shard,
                            reason = lost,
                            "replica lost its data; discarding it and rebuilding it from its \
                             peers (it takes no part in elections until it has caught up)"
                        );
                    }
                    store
                        .drop_group(GroupId::from(shard))
                        .map_err(replica_error)?;
                    open(true).map_err(replica_error)?
                }
            };
            let fresh = lost_if_empty.is_none() && empty;
            if voters.len() == 1 || (fresh && voters[0] == config.id) {
                group.campaign().map_err(replica_error)?;
            }
            let handle = Driver::spawn(group, transport.clone(), tick);
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
                .filter(|r| r.handle.rejoin_mark().is_some())
                .count(),
            data_dir = %config.data_dir.display(),
            "replicas started"
        );
        let leaders = (0..config.shards).map(|_| AtomicU64::new(0)).collect();
        let own = config.advertise.clone().unwrap_or_default();
        Ok(Node {
            addresses: Mutex::new(BTreeMap::from([(config.id, own)])),
            config,
            layout,
            peers,
            replicas,
            leaders,
        })
    }

    /// Gets every replica that started rebuilding from its peers re-added by its group's
    /// leader (the peer `Rejoin` call, retried until some leader takes it); returns when none
    /// waits any more. Run it beside the node's servers: the replicas need the peer service to
    /// catch up. Each then catches up on its own and votes again once it has (see
    /// `leakbloom_raft::node`'s docs).
    pub async fn rebuild(self: Arc<Node>) {
        let waiting = |node: &Node| -> Vec<ShardId> {
            (0..node.config.shards)
                .filter(|&shard| {
                    node.replica(shard)
                        .is_some_and(|r| r.handle.rejoin_mark() == Some(0))
                })
                .collect()
        };
        loop {
            let shards = waiting(&self);
            if shards.is_empty() {
                return;
            }
            join_all(shards.into_iter().map(|shard| self.ask_rejoin(shard))).await;
            tokio::time::sleep(REJOIN_RETRY).await;
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

    /// Asks the replicas of `shard` on other nodes, the known leader first, to re-add this
    /// node's replica, following leader hints; records the answer on the replica.
    async fn ask_rejoin(&self, shard: ShardId) {
        let replica = self.replica(shard).expect("rebuilding a hosted replica");
        let mut candidates: Vec<NodeId> = self
            .layout
            .replicas(shard)
            .into_iter()
            .filter(|&node| node != self.id())
            .collect();
        if let Some(leader) = replica.handle.leadership().leader {
            candidates.retain(|&node| node != leader);
            candidates.insert(0, leader);
        }
        let mut last = None;
        for node in candidates {
            match self.peers.rejoin(node, GroupId::from(shard)).await {
                Ok(index) => {
                    tracing::info!(
                        node = self.id(),
                        shard,
                        leader = node,
                        index,
                        "rebuilt replica re-added to its group; catching up"
                    );
                    replica.handle.rejoined(index);
                    return;
                }
                Err(error) => last = Some(error),
            }
        }
        if let Some(error) = last {
            tracing::debug!(node = self.id(), shard, %error, "rejoin not taken yet; retrying");
        }
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

    /// This node's replica state of `shard`, if it hosts one (for tests and diagnostics).
    pub fn shard(&self, shard: ShardId) -> Option<&Arc<ShardState>> {
        self.replica(shard).map(|r| &r.state)
    }

    /// This node's Raft handle of `shard`, if it hosts a replica.
    pub fn group(&self, shard: ShardId) -> Option<&GroupHandle> {
        self.replica(shard).map(|r| &r.handle)
    }

    fn replica(&self, shard: ShardId) -> Option<&Replica> {
        self.replicas.get(shard as usize)?.as_ref()
    }

    /// This node's replica of `shard` if it may answer reads: hosted, and not being rebuilt
    /// from peers (a rebuilt replica's state is incomplete until it has caught up). Reads of
    /// other shards go to another replica.
    fn serving(&self, shard: ShardId) -> Option<&Replica> {
        self.replica(shard)
            .filter(|r| r.handle.rejoin_mark().is_none())
    }

    /// Stops every local replica and waits until their stores are closed.
    pub async fn shutdown(&self) {
        join_all(self.replicas.iter().flatten().map(|r| r.handle.shutdown())).await;
    }

    /// The node that leads `shard`, as far as this node knows.
    fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        match self.replica(shard) {
            Some(replica) => {
                let leadership = replica.handle.leadership();
                if leadership.role == StateRole::Leader {
                    Some(self.id())
                } else {
                    leadership.leader
                }
            }
            None => match self.leaders[shard as usize].load(Ordering::Relaxed) {
                // Unknown: ask the preferred leader, which answers or hints.
                0 => self.layout.replicas(shard).first().copied(),
                leader => Some(leader),
            },
        }
    }

    /// The cluster as this node sees it, for routers: the nodes' client addresses (asking
    /// every peer's `Status` for them, briefly; silent peers keep their last known address),
    /// each shard's replicas and its leader with the term it was seen in (0 for a hint).
    pub async fn shard_map(&self) -> ShardMap {
        let others = self.layout.nodes().iter().filter(|&&id| id != self.id());
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
            self.layout
                .nodes()
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
                    Some(replica) => {
                        let leadership = replica.handle.leadership();
                        let leader = if leadership.role == StateRole::Leader {
                            Some(self.id())
                        } else {
                            leadership.leader
                        };
                        (leader.unwrap_or(0), leadership.term)
                    }
                    None => (self.leaders[shard as usize].load(Ordering::Relaxed), 0),
                };
                ShardReplicas {
                    replicas: self.layout.replicas(shard),
                    leader,
                    term,
                }
            })
            .collect();
        ShardMap {
            node: self.id(),
            shards: self.config.shards,
            replication: self.layout.replication(),
            max_batch: self.config.max_batch as u64,
            nodes,
            shard_replicas,
        }
    }

    /// Commits `command` on shard `shard` through its leader and returns what applying it did.
    async fn propose(&self, shard: ShardId, command: &Command) -> Result<Applied> {
        let bytes = Bytes::from(command.encode_to_vec());
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = match self.leader_of(shard) {
                Some(leader) if leader == self.id() => {
                    let replica = self.replica(shard).expect("a leader hosts a replica");
                    replica
                        .handle
                        .propose(bytes.to_vec())
                        .await
                        .map(Bytes::from)
                        .map_err(|e| Error::from_raft(shard, self.id(), e))
                }
                Some(leader) => {
                    self.peers
                        .propose(leader, GroupId::from(shard), bytes.clone())
                        .await
                }
                None => Err(Error::Unavailable {
                    shard,
                    leader: None,
                    reason: "no leader elected yet".into(),
                }),
            };
            match attempt {
                Ok(result) => return machine::decode_outcome(shard, &result),
                Err(Error::Unavailable { leader, .. }) if Instant::now() + backoff < deadline => {
                    if let Some(leader) = leader {
                        self.leaders[shard as usize].store(leader, Ordering::Relaxed);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Proposes `commands` to node `leader` in one call; each command the call does not commit
    /// (the call failed, or that node no longer leads the shard) takes [`propose`](Self::propose)'s
    /// retrying path.
    async fn propose_at(&self, leader: NodeId, commands: Vec<(ShardId, Command)>) -> Result<()> {
        let batch = commands
            .iter()
            .map(|(shard, command)| (GroupId::from(*shard), Bytes::from(command.encode_to_vec())))
            .collect();
        let outcomes: Vec<Option<Result<Bytes>>> =
            match self.peers.propose_batch(leader, batch).await {
                Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
                Err(Error::Unavailable { .. }) => commands.iter().map(|_| None).collect(),
                Err(error) => return Err(error),
            };
        try_join_all(
            commands
                .iter()
                .zip(outcomes)
                .map(|((shard, command), outcome)| async move {
                    match outcome {
                        Some(Ok(result)) => machine::decode_outcome(*shard, &result).map(drop),
                        Some(Err(Error::Unavailable { leader, .. })) => {
                            if let Some(leader) = leader {
                                self.leaders[*shard as usize].store(leader, Ordering::Relaxed);
                            }
                            self.propose(*shard, command).await.map(drop)
                        }
                        None => self.propose(*shard, command).await.map(drop),
                        Some(Err(error)) => Err(error),
                    }
                }),
        )
        .await?;
        Ok(())
    }

    /// Splits packed key bytes into keys after checking the batch limits.
    fn keys<'a>(&self, keys: &'a [u8]) -> Result<&'a [[u8; KEY_LEN]]> {
        Ok(split_keys(keys, self.config.max_batch)?)
    }

    /// The states of the local replicas that answer reads ([`serving`](Self::serving)), in
    /// shard order.
    fn local_states(&self) -> impl Iterator<Item = &Arc<ShardState>> {
        (0..self.config.shards).filter_map(|shard| self.serving(shard).map(|r| &r.state))
    }

    /// Names of every set (as the local replicas see it), in name order.
    fn set_names(&self) -> Vec<String> {
        self.local_states()
            .next()
            .map(|state| {
                state
                    .partitions()
                    .into_iter()
                    .map(|p| p.spec.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partitions of set `name` on every shard, indexed by shard (`None` for shards not
    /// hosted here). `NOT_FOUND` unless every local replica has it.
    fn partitions(&self, name: &str) -> Result<Vec<Option<Arc<Partition>>>> {
        (0..self.config.shards)
            .map(|shard| match self.serving(shard) {
                Some(replica) => replica.state.partition(name).map(Some),
                None => Some(None),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::SetNotFound(name.to_string()))
    }

    /// The sets a check asks for (every set when `sets` is empty), validated.
    fn check_sets(&self, sets: &[String]) -> Result<Vec<String>> {
        if sets.is_empty() {
            return Ok(self.set_names());
        }
        let mut seen = HashSet::new();
        for name in sets {
            set::validate_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(Error::DuplicateSet(name.clone()));
            }
        }
        Ok(sets.to_vec())
    }

    /// Waits until every listed local replica has applied a linearizable read point.
    async fn read_barrier(&self, shards: impl Iterator<Item = ShardId>) -> Result<()> {
        try_join_all(shards.filter_map(|shard| {
            let replica = self.serving(shard)?;
            Some(async move {
                replica
                    .handle
                    .read_index()
                    .await
                    .map_err(|e| Error::from_raft(shard, self.id(), e))
            })
        }))
        .await?;
        Ok(())
    }

    /// Which of `sets` (every set when empty) may contain each key: one bitmap per set.
    pub async fn check(
        &self,
        sets: &[String],
        keys: &[u8],
        consistency: i32,
    ) -> Result<Vec<SetResult>> {
        let keys = self.keys(keys)?;
        let consistency =
            Consistency::try_from(consistency).map_err(|_| Error::Consistency(consistency))?;
        let shards = self.config.shards;
        let shard_ids: Vec<ShardId> = keys.iter().map(|key| shard_of(key, shards)).collect();
        let mut touched = vec![false; shards as usize];
        for &shard in &shard_ids {
            touched[shard as usize] = true;
        }
        let touched: Vec<ShardId> = (0..shards).filter(|&s| touched[s as usize]).collect();
        if consistency == Consistency::Linearizable {
            self.read_barrier(touched.iter().copied()).await?;
        }
        let names = self.check_sets(sets)?;
        let partitions = names
            .iter()
            .map(|name| self.partitions(name))
            .collect::<Result<Vec<_>>>()?;
        let mut bitmaps: Vec<Vec<u8>> = partitions
            .iter()
            .map(|partitions| check_bitmap(partitions, keys, &shard_ids))
            .collect();
        // Shards without a local replica that answers reads: ask a replica node, then
        // scatter its bits back.
        let remote: Vec<ShardId> = touched
            .into_iter()
            .filter(|&shard| self.serving(shard).is_none())
            .collect();
        let answers = try_join_all(remote.iter().map(|&shard| {
            let positions: Vec<usize> =
                (0..keys.len()).filter(|&i| shard_ids[i] == shard).collect();
            let mut packed = Vec::with_capacity(positions.len() * KEY_LEN);
            for &i in &positions {
                packed.extend_from_slice(&keys[i]);
            }
            let request = ShardCheckRequest {
                group: GroupId::from(shard),
                sets: names.clone(),
                keys: packed.into(),
                consistency: consistency.into(),
            };
            async move {
                let answer = self.remote_check(shard, request).await?;
                Ok::<_, Error>((positions, answer))
            }
        }))
        .await?;
        for (positions, answer) in answers {
            for (bitmap, present) in bitmaps.iter_mut().zip(&answer.present) {
                for (j, &i) in positions.iter().enumerate() {
                    if present
                        .get(j / 8)
                        .is_some_and(|byte| byte & (1 << (j % 8)) != 0)
                    {
                        bitmap[i / 8] |= 1 << (i % 8);
                    }
                }
            }
        }
        Ok(names
            .into_iter()
            .zip(bitmaps)
            .map(|(set, present)| SetResult {
                set,
                present: present.into(),
            })
            .collect())
    }

    /// Checks one shard on a node holding a replica of it: the leader when known, else each
    /// replica in turn.
    async fn remote_check(
        &self,
        shard: ShardId,
        request: ShardCheckRequest,
    ) -> Result<ShardCheckResponse> {
        let mut candidates = self.layout.replicas(shard);
        if let Some(leader) = self.leader_of(shard) {
            candidates.retain(|&node| node != leader);
            candidates.insert(0, leader);
        }
        // This node's replica is not serving (or it would not be asked).
        candidates.retain(|&node| node != self.id());
        let mut last = None;
        for node in candidates {
            match self.peers.check(node, request.clone()).await {
                Ok(answer) if answer.present.len() == request.sets.len() => return Ok(answer),
                Ok(_) => {
                    last = Some(Error::Replica {
                        shard,
                        reason: format!("node {node} answered a check with the wrong set count"),
                    })
                }
                Err(error @ Error::Unavailable { .. }) => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            shard,
            leader: None,
            reason: "no replica answered".into(),
        }))
    }

    /// Serves a check of one local shard for another node (the peer `Check` RPC).
    async fn check_local_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse> {
        let shard = ShardId::try_from(request.group)
            .ok()
            .filter(|&shard| self.serving(shard).is_some())
            .ok_or_else(|| Error::Unavailable {
                shard: request.group as ShardId,
                leader: None,
                reason: format!(
                    "node {} holds no replica of it that answers reads (none, or one being \
                     rebuilt)",
                    self.id()
                ),
            })?;
        let replica = self.serving(shard).expect("checked above");
        let keys = whole_keys(&request.keys)?;
        let consistency = Consistency::try_from(request.consistency)
            .map_err(|_| Error::Consistency(request.consistency))?;
        if consistency == Consistency::Linearizable {
            self.read_barrier(std::iter::once(shard)).await?;
        }
        let present = request
            .sets
            .iter()
            .map(|name| {
                let partition = replica
                    .state
                    .partition(name)
                    .ok_or_else(|| Error::SetNotFound(name.clone()))?;
                let mut bitmap = vec![0u8; keys.len().div_ceil(8)];
                for (i, key) in keys.iter().enumerate() {
                    if partition.filter.contains(key) {
                        bitmap[i / 8] |= 1 << (i % 8);
                    }
                }
                Ok(Bytes::from(bitmap))
            })
            .collect::<Result<_>>()?;
        Ok(ShardCheckResponse { present })
    }

    /// Adds keys to a set. Returns the number of keys once every touched shard has committed and
    /// applied its part.
    pub async fn insert(&self, set: &str, keys: Bytes) -> Result<u64> {
        set::validate_name(set)?;
        let parsed = self.keys(&keys)?;
        if self.partitions(set).is_err() {
            // This replica may not have applied a set just created through another node yet.
            self.read_barrier(0..self.config.shards).await?;
            self.partitions(set)?;
        }
        let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); self.config.shards as usize];
        for key in parsed {
            per_shard[shard_of(key, self.config.shards) as usize].extend_from_slice(key);
        }
        // One command per touched shard. Commands for shards led elsewhere go to each leader
        // node in one call; anything that call cannot place takes the retrying path.
        let mut local = Vec::new();
        let mut remote: BTreeMap<NodeId, Vec<(ShardId, Command)>> = BTreeMap::new();
        for (shard, keys) in per_shard.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let shard = shard as ShardId;
            let command = Command {
                id: 0,
                kind: Some(command::Kind::Insert(InsertCommand {
                    set: set.to_string(),
                    keys: keys.into(),
                })),
            };
            match self.leader_of(shard) {
                Some(leader) if leader != self.id() => {
                    remote.entry(leader).or_default().push((shard, command))
                }
                _ => local.push((shard, command)),
            }
        }
        let local = try_join_all(
            local
                .iter()
                .map(|(shard, command)| self.propose(*shard, command)),
        );
        let remote = try_join_all(
            remote
                .into_iter()
                .map(|(leader, commands)| self.propose_at(leader, commands)),
        );
        tokio::try_join!(local, remote)?;
        Ok(parsed.len() as u64)
    }

    /// Creates a set on every shard; idempotent with equal parameters.
    pub async fn create_set(&self, request: &CreateSetRequest) -> Result<SetInfo> {
        let spec = SetSpec::new(
            &request.name,
            request.capacity,
            request.fpr,
            &request.hashing,
        )?;
        let geometry = spec.partition_geometry(self.config.shards)?;
        let existing = self
            .local_states()
            .find_map(|state| state.partition(&spec.name));
        if let Some(existing) = existing {
            if existing.spec != spec {
                return Err(Error::SetExists {
                    name: spec.name.clone(),
                    existing: existing.spec.to_string(),
                    requested: spec.to_string(),
                });
            }
        } else {
            // Replicas being rebuilt will hold the set too.
            let hosted = self.replicas.iter().flatten().count() as u64;
            self.check_limits(&spec, geometry.bytes().saturating_mul(hosted))?;
        }
        let create = spec.command(geometry);
        try_join_all((0..self.config.shards).map(|shard| {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::CreateSet(create.clone())),
            };
            async move { self.propose(shard, &command).await }
        }))
        .await?;
        // Leaders applied it; this node's replicas may lag behind: answer from caught-up state.
        self.read_barrier(0..self.config.shards).await?;
        self.set_info(&spec.name)
    }

    /// Refuses a new set that would take the node over `max_sets` or `max_filter_memory`.
    fn check_limits(&self, spec: &SetSpec, needed: u64) -> Result<()> {
        if self.set_names().len() >= self.config.max_sets {
            return Err(Error::TooManySets {
                max: self.config.max_sets,
            });
        }
        let used: u64 = self
            .replicas
            .iter()
            .flatten()
            .flat_map(|replica| replica.state.partitions())
            .map(|p| p.filter.memory_bytes())
            .sum();
        let limit = self.config.max_filter_memory;
        let available = limit.saturating_sub(used);
        if needed > available {
            return Err(Error::MemoryLimit {
                name: spec.name.clone(),
                needed,
                available,
                limit,
            });
        }
        Ok(())
    }

    /// Drops a set from every shard.
    pub async fn drop_set(&self, name: &str) -> Result<()> {
        set::validate_name(name)?;
        let results = join_all((0..self.config.shards).map(|shard| {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::DropSet(DropSetCommand {
                    name: name.to_string(),
                })),
            };
            async move { self.propose(shard, &command).await }
        }))
        .await;
        let mut found = false;
        for result in results {
            match result {
                Ok(_) => found = true,
                Err(Error::SetNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if found {
            Ok(())
        } else {
            Err(Error::SetNotFound(name.to_string()))
        }
    }

    /// Every set with its statistics, in name order.
    pub async fn list_sets(&self) -> Result<Vec<SetInfo>> {
        Ok(self
            .set_names()
            .iter()
            .filter_map(|name| self.set_info(name).ok())
            .collect())
    }

    /// One set with its statistics summed over shards.
    pub async fn get_set(&self, name: &str) -> Result<SetInfo> {
        set::validate_name(name)?;
        self.set_info(name)
    }

    fn set_info(&self, name: &str) -> Result<SetInfo> {
        let partitions: Vec<Arc<Partition>> =
            self.partitions(name)?.into_iter().flatten().collect();
        if partitions.is_empty() {
            return Err(Error::SetNotFound(name.to_string()));
        }
        Ok(set_info(&partitions, self.config.shards))
    }
}

#[tonic::async_trait]
impl Local for Node {
    fn id(&self) -> NodeId {
        self.config.id
    }

    fn replica(&self, group: GroupId) -> Option<GroupHandle> {
        let shard = ShardId::try_from(group).ok()?;
        self.group(shard).cloned()
    }

    async fn check_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse> {
        self.check_local_shard(request).await
    }

    fn status(&self) -> StatusResponse {
        StatusResponse {
            node: self.id(),
            state: status_response::State::Serving.into(),
            committed: self
                .replicas
                .iter()
                .flatten()
                .map(|r| (r.handle.group(), r.handle.committed()))
                .collect(),
            address: self.config.advertise.clone().unwrap_or_default(),
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

/// Sums a set's statistics over the partitions this node holds. When it holds only some shards
/// the key count and memory are scaled to all `shards` (keys spread evenly over shards).
fn set_info(partitions: &[Arc<Partition>], shards: u32) -> SetInfo {
    let spec = &partitions[0].spec;
    let geometry = partitions[0].filter.geometry();
    let (mut bits, mut bits_set, mut keys, mut fpr_sum, mut memory) = (0u64, 0u64, 0u64, 0.0, 0);
    for partition in partitions {
        let stats = partition.filter.stats();
        bits += stats.bits;
        bits_set += stats.bits_set;
        keys += stats.estimated_keys;
        fpr_sum += stats.estimated_fpr;
        memory += partition.filter.memory_bytes();
    }
    let scale = |value: u64| value * u64::from(shards) / partitions.len() as u64;
    SetInfo {
        name: spec.name.clone(),
        capacity: spec.capacity,
        fpr: spec.fpr,
        hashing: spec.hashing.to_string(),
        estimated_keys: scale(keys),
        fill_ratio: bits_set as f64 / bits as f64,
        // Keys are uniform over shards: an absent key meets each shard's filter equally often.
        estimated_fpr: fpr_sum / partitions.len() as f64,
        memory_bytes: scale(memory),
        shards,
        hash_count: geometry.hashes,
        bits_per_key: bits as f64 * f64::from(shards)
            / partitions.len() as f64
            / spec.capacity as f64,
    }
}

/// Checks `keys` against one set's partitions (indexed by shard; `None` for shards checked
/// elsewhere, whose bits stay 0): bit i of the result is set when key i may be present.
/// Prefetches the block of key `i + PREFETCH_DISTANCE` while checking key `i`, so cache misses
/// overlap across shards' filters.
fn check_bitmap(
    partitions: &[Option<Arc<Partition>>],
    keys: &[[u8; KEY_LEN]],
    shard_ids: &[ShardId],
) -> Vec<u8> {
    let filter = |i: usize| -> Option<&Filter> {
        partitions[shard_ids[i] as usize]
            .as_ref()
            .map(|p| &p.filter)
    };
    let mut bitmap = vec![0u8; keys.len().div_ceil(8)];
    for (i, key) in keys.iter().enumerate().take(PREFETCH_DISTANCE) {
        if let Some(filter) = filter(i) {
            filter.prefetch(key);
        }
    }
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE) {
            if let Some(filter) = filter(i + PREFETCH_DISTANCE) {
                filter.prefetch(ahead);
            }
        }
        if filter(i).is_some_and(|filter| filter.contains(key)) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    bitmap
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
}
