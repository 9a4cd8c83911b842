//! The cluster catalog: which sets exist, which were dropped but may still hold partitions,
//! and how much filter memory each node may hold. It is the state machine of a Raft group of
//! its own ([`CATALOG_GROUP`]) replicated on every node, so every node reads it locally.
//!
//! # Why a catalog
//! A set has one partition per shard, and each shard is its own Raft group: no single commit
//! creates or drops a set on every shard. The catalog is that single commit. A set is visible
//! (to `Check`, `Insert`, `ListSets`, `GetSet`) only while its catalog entry is *active*:
//!
//! - **Create**: the catalog admits the set (state *creating*, generation = the entry's log
//!   index) if every node hosting its partitions has the memory, counting every set and every
//!   dropped set not yet collected; then each shard creates the partition of that generation;
//!   then the catalog activates it. Admission is one log entry, so concurrent creates are
//!   ordered and cannot oversubscribe a node. A crash part-way leaves a creating entry
//!   (invisible), which a retried create, or the catalog leader's reconciler, completes.
//! - **Drop**: the catalog removes the set in one entry: it is gone everywhere at once. Its
//!   generation becomes *garbage*; each shard then drops its partition of that generation,
//!   and the catalog forgets the garbage once every shard has. A crash part-way leaves
//!   garbage, which the reconciler collects.
//! - **Generations** make re-creating a set start empty: the new generation's create replaces
//!   any partition of an older generation a shard still holds, and inserts name the generation
//!   they are for.
//!
//! Applying is deterministic: limits, admissions and refusals depend only on the log.
//!
//! # Nodes and placement
//! The catalog is also the cluster's membership: the node registry (each node's addresses and
//! [`NodeState`]) and the *placement* (each shard's replicas, the preferred leader first) with
//! its epoch. A new cluster starts from the bootstrap layout ([`Layout`], epoch 1, every node
//! active); a node that joins is registered *joining* ([`Kind::Join`]), made active once its
//! catalog replica caught up, and given replicas by placement changes
//! ([`Kind::Placement`]), each applied only at the epoch it was planned at, which it raises.
//! A change that adds a replica to a node is admitted only if the node has the memory for
//! that shard's partitions of every set, like a set's creation. Placement says where replicas
//! *should* be; each shard's Raft group moves its membership towards it (add a learner,
//! promote it once caught up, then remove the replica that left), and nodes create and
//! delete their replicas to match ([`crate::node`]).
//!
//! # Caveats
//! - A node's limits count once it has reported them: a set is refused (retryably) while a
//!   node hosting its partitions has not.

use std::collections::BTreeMap;
use std::sync::RwLock;

use leakbloom_filter::Geometry;
use leakbloom_proto::internal::v1::catalog_command::Kind;
use leakbloom_proto::internal::v1::{
    CatalogCommand, CatalogSet, CatalogSnapshot, CreateSetCommand, NodeLimits, SetGeneration,
};
use leakbloom_raft::{GroupId, NodeId};
use prost::Message as _;

use leakbloom_cluster::placement::NodeState;
use leakbloom_proto::internal::v1::{NodeRecord, PlacementChange, ShardPlacement};

use crate::cluster::Layout;
use crate::error::{Error, Result};
use crate::set::SetSpec;
use crate::shard::ShardId;

/// The catalog's Raft group id: above every shard id (shards are `u32`).
pub const CATALOG_GROUP: GroupId = 1 << 32;

/// First bytes of a catalog snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LBCATLG\0";
/// Catalog snapshot format version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One set in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its parameters.
    pub spec: SetSpec,
    /// Its partitions' geometry (the same on every shard).
    pub geometry: Geometry,
    /// Which incarnation of the set this is (the log index that admitted it).
    pub generation: u64,
    /// Whether every shard holds its partition (and clients see it).
    pub active: bool,
}

impl Entry {
    /// The create command of this entry's partitions, generation included.
    pub fn command(&self) -> CreateSetCommand {
        CreateSetCommand {
            generation: self.generation,
            ..self.spec.command(self.geometry)
        }
    }

    /// Decodes an entry as the catalog's snapshots and results carry it.
    pub fn from_proto(set: &CatalogSet) -> Result<Entry> {
        let command = set.spec.as_ref().ok_or_else(|| Error::SetParameters {
            name: String::new(),
            reason: "a catalog set without parameters".into(),
        })?;
        let (spec, geometry) = SetSpec::from_command(command)?;
        Ok(Entry {
            spec,
            geometry,
            generation: command.generation,
            active: set.active,
        })
    }

    /// Encodes the entry as the catalog's snapshots and results carry it.
    pub fn to_proto(&self) -> CatalogSet {
        CatalogSet {
            spec: Some(self.command()),
            active: self.active,
        }
    }
}

/// What applying a catalog command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The set's entry after a create (new or existing) or an activation.
    Set(Entry),
    /// The set was dropped; this generation's partitions are garbage.
    Dropped(u64),
    /// Limits recorded, or garbage collected.
    Done,
}

/// A node state as the wire carries it (`leakbloom.v1.NodeState`).
pub fn state_to_proto(state: NodeState) -> i32 {
    use leakbloom_proto::v1::NodeState as Wire;
    let wire = match state {
        NodeState::Joining => Wire::Joining,
        NodeState::Active => Wire::Active,
        NodeState::Decommissioning => Wire::Decommissioning,
        NodeState::Decommissioned => Wire::Decommissioned,
        NodeState::Dead => Wire::Dead,
    };
    wire as i32
}

/// A node state from the wire; `None` for unspecified or unknown values.
pub fn state_from_proto(value: i32) -> Option<NodeState> {
    use leakbloom_proto::v1::NodeState as Wire;
    Some(match Wire::try_from(value).ok()? {
        Wire::Joining => NodeState::Joining,
        Wire::Active => NodeState::Active,
        Wire::Decommissioning => NodeState::Decommissioning,
        Wire::Decommissioned => NodeState::Decommissioned,
        Wire::Dead => NodeState::Dead,
        Wire::Unspecified => return None,
    })
}

/// A node as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where other nodes reach its peer port; empty until the node reported it.
    pub peer_address: String,
    /// Where clients reach its client port; empty until the node reported it.
    pub client_address: String,
    /// Where it is in its life in the cluster.
    pub state: NodeState,
}

/// The catalog's contents (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The node registry.
    members: BTreeMap<NodeId, Member>,
    /// Each shard's replicas, the preferred leader first.
    placement: Vec<Vec<NodeId>>,
    /// Grows with every placement change.
    epoch: u64,
    /// Replicas per shard the cluster keeps.
    replication: u32,
    limits: BTreeMap<NodeId, NodeLimits>,
    sets: BTreeMap<String, Entry>,
    /// Dropped generations whose partitions may still exist, with their geometry.
    garbage: BTreeMap<(String, u64), Geometry>,
    applied: u64,
}

impl Catalog {
    /// An empty catalog of a cluster laid out as `layout`.
    pub fn new(layout: &Layout) -> Catalog {
        let members = layout
            .nodes()
            .iter()
            .map(|&node| {
                let member = Member {
                    peer_address: String::new(),
                    client_address: String::new(),
                    state: NodeState::Active,
                };
                (node, member)
            })
            .collect();
        Catalog {
            members,
            placement: (0..layout.shards())
                .map(|shard| layout.replicas(shard))
                .collect(),
            epoch: layout.epoch(),
            replication: layout.replication(),
            limits: BTreeMap::new(),
            sets: BTreeMap::new(),
            garbage: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Log index of the last command applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The entry of set `name`, creating or active.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.sets.get(name)
    }

    /// The set `name` if clients may see it.
    pub fn active(&self, name: &str) -> Option<&Entry> {
        self.sets.get(name).filter(|entry| entry.active)
    }

    /// Every entry, creating or active, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sets.values()
    }

    /// Dropped generations whose partitions may still exist: `(name, generation)`.
    pub fn garbage(&self) -> impl Iterator<Item = (&str, u64)> {
        self.garbage
            .keys()
            .map(|(name, generation)| (name.as_str(), *generation))
    }

    /// The limits node `node` reported, if it has.
    pub fn limits(&self, node: NodeId) -> Option<&NodeLimits> {
        self.limits.get(&node)
    }

    /// Whether every node of the cluster reported that it applies inserts of key suffixes
    /// (`NodeLimits.suffixes`, see [`crate::suffix`]): until then nodes propose whole keys,
    /// which every version applies.
    pub fn applies_suffixes(&self) -> bool {
        self.live()
            .all(|node| self.limits.get(&node).is_some_and(|limits| limits.suffixes))
    }

    /// Bytes of filter memory node `node` holds for every set and uncollected garbage.
    pub fn used(&self, node: NodeId) -> u64 {
        self.partition_bytes()
            .saturating_mul(self.hosted(node).len() as u64)
    }

    /// Bytes of filter memory one shard's partitions of every set and uncollected garbage
    /// take: what a node needs to receive a replica.
    pub fn partition_bytes(&self) -> u64 {
        self.sets
            .values()
            .map(|entry| &entry.geometry)
            .chain(self.garbage.values())
            .map(|geometry| geometry.memory_bytes())
            .fold(0u64, u64::saturating_add)
    }

    /// The node registry, by id.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Nodes that take part in the cluster (joining, active or decommissioning): the
    /// catalog group's members, and the nodes whose limits count.
    pub fn live(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, member)| member.state.in_cluster())
            .map(|(&node, _)| node)
    }

    /// Each shard's replicas, the preferred leader first.
    pub fn placement(&self) -> &[Vec<NodeId>] {
        &self.placement
    }

    /// The replicas of `shard` (empty for a shard the cluster does not have).
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        self.placement
            .get(shard as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The shards node `node` should hold a replica of, ascending.
    pub fn hosted(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.placement.len() as ShardId)
            .filter(|&shard| self.replicas(shard).contains(&node))
            .collect()
    }

    /// The placement epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Replicas per shard the cluster keeps.
    pub fn replication(&self) -> u32 {
        self.replication
    }

    /// Applies `command` committed at log index `index`. Deterministic; a refusal leaves the
    /// catalog unchanged but for the applied index.
    pub fn apply(&mut self, index: u64, command: &CatalogCommand) -> Result<Outcome> {
        let outcome = match &command.kind {
            Some(Kind::Limits(limits)) => self.set_limits(limits),
            Some(Kind::CreateSet(create)) => self.admit(index, create),
            Some(Kind::Activate(set)) => self.activate(set),
            Some(Kind::DropSet(name)) => self.drop_set(name),
            Some(Kind::Collected(set)) => {
                self.garbage.remove(&(set.name.clone(), set.generation));
                Ok(Outcome::Done)
            }
            Some(Kind::Join(record)) => self.join(record),
            Some(Kind::NodeState(record)) => self.set_state(record),
            Some(Kind::Placement(change)) => self.change_placement(change),
            None => Ok(Outcome::Done),
        };
        self.applied = index;
        outcome
    }

    /// Registers a new node as joining, or records a known node's addresses.
    fn join(&mut self, record: &NodeRecord) -> Result<Outcome> {
        if record.node == 0 {
            return Err(Error::Membership("node id 0 is reserved by Raft".into()));
        }
        match self.members.get_mut(&record.node) {
            Some(member) if !member.state.in_cluster() => Err(Error::Membership(format!(
                "node {} was {} and left the cluster: start the node with a new id and an \
                 empty data directory",
                record.node, member.state
            ))),
            Some(member) => {
                if !record.peer_address.is_empty() {
                    member.peer_address.clone_from(&record.peer_address);
                }
                if !record.client_address.is_empty() {
                    member.client_address.clone_from(&record.client_address);
                }
                Ok(Outcome::Done)
            }
            None => {
                let member = Member {
                    peer_address: record.peer_address.clone(),
                    client_address: record.client_address.clone(),
                    state: NodeState::Joining,
                };
                self.members.insert(record.node, member);
                Ok(Outcome::Done)
            }
        }
    }

    /// Moves a node to another state, if that move exists: joining to active, active to
    /// decommissioning, decommissioning to decommissioned once no shard places a replica on
    /// it, and any live state to dead.
    fn set_state(&mut self, record: &NodeRecord) -> Result<Outcome> {
        let to = state_from_proto(record.state)
            .ok_or_else(|| Error::Membership(format!("unknown node state {}", record.state)))?;
        let holds = !self.hosted(record.node).is_empty();
        let member = self
            .members
            .get_mut(&record.node)
            .ok_or(Error::UnknownNode { node: record.node })?;
        let from = member.state;
        use NodeState::*;
        let allowed = match (from, to) {
            _ if from == to => true,
            (Joining, Active) | (Active, Decommissioning) => true,
            (Decommissioning, Decommissioned) => !holds,
            (Joining | Active | Decommissioning, Dead) => true,
            _ => false,
        };
        if !allowed {
            return Err(Error::Membership(format!(
                "node {} is {} and cannot become {}{}",
                record.node,
                from,
                to,
                if holds {
                    " while it holds replicas"
                } else {
                    ""
                }
            )));
        }
        member.state = to;
        Ok(Outcome::Done)
    }

    /// Applies a placement change planned at the current epoch (see the [module
    /// docs](self)); refused whole if any shard's new list is invalid or puts a replica on a
    /// node without the memory for it.
    fn change_placement(&mut self, change: &PlacementChange) -> Result<Outcome> {
        if change.epoch != self.epoch {
            return Err(Error::Membership(format!(
                "placement changed since epoch {} (now {}): plan again",
                change.epoch, self.epoch
            )));
        }
        let mut placement = self.placement.clone();
        for shard in &change.shards {
            let Some(slot) = placement.get_mut(shard.shard as usize) else {
                return Err(Error::Membership(format!(
                    "shard {} does not exist (the cluster has {})",
                    shard.shard,
                    self.placement.len()
                )));
            };
            let mut distinct = shard.replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() != shard.replicas.len() || distinct.is_empty() {
                return Err(Error::Membership(format!(
                    "shard {} needs distinct replicas, got {:?}",
                    shard.shard, shard.replicas
                )));
            }
            for node in &shard.replicas {
                let placeable = self
                    .members
                    .get(node)
                    .is_some_and(|member| member.state.in_cluster());
                if !placeable && !slot.contains(node) {
                    return Err(Error::Membership(format!(
                        "shard {}: node {node} cannot take a replica (not a live node)",
                        shard.shard
                    )));
                }
            }
            slot.clone_from(&shard.replicas);
        }
        let per_shard = self.partition_bytes();
        for (&node, member) in &self.members {
            if !member.state.in_cluster() {
                continue;
            }
            let before = self.hosted(node).len() as u64;
            let after = placement.iter().filter(|r| r.contains(&node)).count() as u64;
            if after <= before {
                continue;
            }
            let limit = self.limits.get(&node).map_or(0, |l| l.filter_memory);
            let needed = per_shard.saturating_mul(after);
            if needed > limit {
                return Err(Error::Membership(format!(
                    "node {node} would need {needed} bytes of filter memory for {after} \
                     replicas but its limit is {limit}"
                )));
            }
        }
        self.placement = placement;
        self.epoch += 1;
        Ok(Outcome::Done)
    }

    fn set_limits(&mut self, limits: &NodeLimits) -> Result<Outcome> {
        if !self.members.contains_key(&limits.node) {
            return Err(Error::UnknownNode { node: limits.node });
        }
        self.limits.insert(limits.node, *limits);
        Ok(Outcome::Done)
    }

    fn admit(&mut self, index: u64, create: &CreateSetCommand) -> Result<Outcome> {
        let (spec, geometry) = SetSpec::from_command(create)?;
        geometry.validate().map_err(|e| Error::SetParameters {
            name: spec.name.clone(),
            reason: e.to_string(),
        })?;
        if let Some(existing) = self.sets.get(&spec.name) {
            return if existing.spec == spec {
                Ok(Outcome::Set(existing.clone()))
            } else {
                Err(Error::SetExists {
                    name: spec.name.clone(),
                    existing: existing.spec.to_string(),
                    requested: spec.to_string(),
                })
            };
        }
        // Every node's limits count, so that a node hosting nothing yet reports them too
        // before the cluster fills.
        for node in self.live() {
            if !self.limits.contains_key(&node) {
                return Err(Error::NodeLimitsUnknown { node });
            }
        }
        let max_sets = self
            .live()
            .filter_map(|node| self.limits.get(&node))
            .map(|limits| limits.max_sets)
            .min()
            .unwrap_or(0);
        if self.sets.len() as u64 >= max_sets {
            return Err(Error::TooManySets { max: max_sets });
        }
        for node in self.live() {
            let limit = self.limits[&node].filter_memory;
            let used = self.used(node);
            let needed = geometry
                .memory_bytes()
                .saturating_mul(self.hosted(node).len() as u64);
            if used.saturating_add(needed) > limit {
                return Err(Error::MemoryLimit {
                    name: spec.name.clone(),
                    node,
                    needed,
                    available: limit.saturating_sub(used),
                    limit,
                });
            }
        }
        let entry = Entry {
            spec,
            geometry,
            generation: index,
            active: false,
        };
        self.sets.insert(entry.spec.name.clone(), entry.clone());
        Ok(Outcome::Set(entry))
    }

    fn activate(&mut self, set: &SetGeneration) -> Result<Outcome> {
        match self.sets.get_mut(&set.name) {
            Some(entry) if entry.generation == set.generation => {
                entry.active = true;
                Ok(Outcome::Set(entry.clone()))
            }
            _ => Err(Error::SetNotFound(set.name.clone())),
        }
    }

    fn drop_set(&mut self, name: &str) -> Result<Outcome> {
        let entry = self
            .sets
            .remove(name)
            .ok_or_else(|| Error::SetNotFound(name.to_string()))?;
        self.garbage
            .insert((name.to_string(), entry.generation), entry.geometry);
        Ok(Outcome::Dropped(entry.generation))
    }

    /// The whole catalog, encoded: magic, version (u32 LE), a protobuf `CatalogSnapshot`,
    /// CRC32 (LE) of everything before it. Equal catalogs give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let snapshot = CatalogSnapshot {
            applied: self.applied,
            nodes: self.limits.values().copied().collect(),
            sets: self.sets.values().map(Entry::to_proto).collect(),
            garbage: self
                .garbage
                .iter()
                .map(|((name, generation), geometry)| CreateSetCommand {
                    name: name.clone(),
                    generation: *generation,
                    blocks: geometry.blocks,
                    hash_count: geometry.hash_count,
                    ..CreateSetCommand::default()
                })
                .collect(),
            members: self
                .members
                .iter()
                .map(|(&node, member)| NodeRecord {
                    node,
                    peer_address: member.peer_address.clone(),
                    client_address: member.client_address.clone(),
                    state: state_to_proto(member.state),
                })
                .collect(),
            placement: self
                .placement
                .iter()
                .enumerate()
                .map(|(shard, replicas)| ShardPlacement {
                    shard: shard as u32,
                    replicas: replicas.clone(),
                })
                .collect(),
            epoch: self.epoch,
        };
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        snapshot.encode(&mut bytes).expect("a Vec grows");
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Replaces the contents with a [`snapshot`](Self::snapshot); on error nothing changes.
    pub fn restore(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        let body = bytes
            .len()
            .checked_sub(4)
            .filter(|&len| len >= 12)
            .map(|len| bytes.split_at(len))
            .ok_or_else(|| format!("catalog snapshot of {} bytes is truncated", bytes.len()))?;
        let (body, trailer) = body;
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err("catalog snapshot is corrupted (CRC32 mismatch)".into());
        }
        if body[..8] != SNAPSHOT_MAGIC {
            return Err("not a catalog snapshot (bad magic)".into());
        }
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "catalog snapshot has format version {version}; this build reads \
                 {SNAPSHOT_VERSION}: upgrade leakbloom"
            ));
        }
        let snapshot = CatalogSnapshot::decode(&body[12..])
            .map_err(|e| format!("catalog snapshot does not decode: {e}"))?;
        let sets = snapshot
            .sets
            .iter()
            .map(|set| Entry::from_proto(set).map(|entry| (entry.spec.name.clone(), entry)))
            .collect::<Result<BTreeMap<_, _>>>()
            .map_err(|e| format!("catalog snapshot: {e}"))?;
        let garbage = snapshot
            .garbage
            .iter()
            .map(|g| {
                let geometry = Geometry {
                    blocks: g.blocks,
                    hash_count: g.hash_count,
                };
                ((g.name.clone(), g.generation), geometry)
            })
            .collect();
        let limits = snapshot
            .nodes
            .iter()
            .map(|limits| (limits.node, *limits))
            .collect();
        // Snapshots written before membership changes carry neither: the bootstrap layout's.
        let (members, placement, epoch) = if snapshot.epoch == 0 {
            (self.members.clone(), self.placement.clone(), self.epoch)
        } else {
            let members = snapshot
                .members
                .iter()
                .map(|record| {
                    let state = state_from_proto(record.state).ok_or_else(|| {
                        format!("catalog snapshot: node {} has no state", record.node)
                    })?;
                    let member = Member {
                        peer_address: record.peer_address.clone(),
                        client_address: record.client_address.clone(),
                        state,
                    };
                    Ok((record.node, member))
                })
                .collect::<std::result::Result<_, String>>()?;
            if snapshot.placement.len() != self.placement.len() {
                return Err(format!(
                    "catalog snapshot places {} shards but the cluster has {}",
                    snapshot.placement.len(),
                    self.placement.len()
                ));
            }
            let placement = snapshot
                .placement
                .iter()
                .map(|shard| shard.replicas.clone())
                .collect();
            (members, placement, snapshot.epoch)
        };
        *self = Catalog {
            members,
            placement,
            epoch,
            replication: self.replication,
            limits,
            sets,
            garbage,
            applied: snapshot.applied,
        };
        Ok(())
    }
}

/// A node's copy of the catalog: applied by the catalog group's thread, read by every request.
#[derive(Debug)]
pub struct CatalogState {
    catalog: RwLock<Catalog>,
}

impl CatalogState {
    /// An empty catalog of a cluster laid out as `layout`.
    pub fn new(layout: &Layout) -> CatalogState {
        CatalogState {
            catalog: RwLock::new(Catalog::new(layout)),
        }
    }

    /// Reads the catalog. Nothing panics while holding the lock (applying only edits maps), so
    /// it is never poisoned.
    pub fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.catalog.read().expect("catalog lock poisoned"))
    }

    /// Applies a committed command (see [`Catalog::apply`]).
    pub fn apply(&self, index: u64, command: &CatalogCommand) -> Result<Outcome> {
        self.write().apply(index, command)
    }

    /// The encoded catalog (see [`Catalog::snapshot`]).
    pub fn snapshot(&self) -> Vec<u8> {
        self.read(Catalog::snapshot)
    }

    /// Replaces the catalog with a snapshot (see [`Catalog::restore`]).
    pub fn restore(&self, bytes: &[u8]) -> std::result::Result<(), String> {
        self.write().restore(bytes)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().expect("catalog lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 nodes, 4 shards, 2 replicas each, round robin: nodes 1 and 2 host 3 partitions of
    /// every set, node 3 hosts 2.
    fn layout() -> Layout {
        Layout::new([1, 2, 3], 4, 2).unwrap()
    }

    /// The limits a node of this version reports.
    fn limits(node: NodeId, filter_memory: u64) -> CatalogCommand {
        CatalogCommand {
            kind: Some(Kind::Limits(NodeLimits {
                node,
                filter_memory,
                max_sets: 10,
                suffixes: true,
            })),
        }
    }

    #[test]
    fn inserts_carry_suffixes_once_every_node_applies_them() {
        let mut catalog = Catalog::new(&layout());
        assert!(!catalog.applies_suffixes(), "no node has reported yet");
        catalog.apply(1, &limits(1, 1 << 30)).unwrap();
        catalog.apply(2, &limits(2, 1 << 30)).unwrap();
        // Node 3 still runs a version without the field: it would skip suffixes.
        let older = CatalogCommand {
            kind: Some(Kind::Limits(NodeLimits {
                node: 3,
                filter_memory: 1 << 30,
                max_sets: 10,
                ..NodeLimits::default()
            })),
        };
        catalog.apply(3, &older).unwrap();
        assert!(!catalog.applies_suffixes(), "node 3 would miss them");
        // Upgraded, it reports again.
        catalog.apply(4, &limits(3, 1 << 30)).unwrap();
        assert!(catalog.applies_suffixes());
        // The record survives a snapshot.
        let mut copy = Catalog::new(&layout());
        copy.restore(&catalog.snapshot()).unwrap();
        assert!(copy.applies_suffixes());
    }

    fn create(name: &str, capacity: u64) -> CatalogCommand {
        let spec = SetSpec::new(name, capacity, 1e-3, "sha256").unwrap();
        CatalogCommand {
            kind: Some(Kind::CreateSet(
                spec.command(spec.partition_geometry(4).unwrap()),
            )),
        }
    }

    fn set_generation(
        kind: fn(SetGeneration) -> Kind,
        name: &str,
        generation: u64,
    ) -> CatalogCommand {
        CatalogCommand {
            kind: Some(kind(SetGeneration {
                name: name.into(),
                generation,
            })),
        }
    }

    fn drop_set(name: &str) -> CatalogCommand {
        CatalogCommand {
            kind: Some(Kind::DropSet(name.into())),
        }
    }

    /// A catalog whose nodes may hold `memory` bytes each.
    fn catalog(memory: u64) -> Catalog {
        let mut catalog = Catalog::new(&layout());
        for node in 1..=3 {
            catalog.apply(node, &limits(node, memory)).unwrap();
        }
        catalog
    }

    #[test]
    fn a_set_is_created_then_activated_then_dropped_and_collected() {
        let mut catalog = catalog(1 << 30);
        let Outcome::Set(entry) = catalog.apply(10, &create("s", 1000)).unwrap() else {
            panic!("created");
        };
        assert_eq!((entry.generation, entry.active), (10, false));
        assert!(catalog.active("s").is_none(), "creating sets are invisible");
        // A retried create finds the same entry; other parameters are refused.
        assert_eq!(
            catalog.apply(11, &create("s", 1000)).unwrap(),
            Outcome::Set(entry.clone())
        );
        assert!(matches!(
            catalog.apply(12, &create("s", 2000)),
            Err(Error::SetExists { .. })
        ));
        assert!(matches!(
            catalog.apply(13, &set_generation(Kind::Activate, "s", 9)),
            Err(Error::SetNotFound(_))
        ));
        catalog
            .apply(14, &set_generation(Kind::Activate, "s", 10))
            .unwrap();
        assert!(catalog.active("s").unwrap().active);
        assert_eq!(
            catalog.apply(15, &drop_set("s")).unwrap(),
            Outcome::Dropped(10)
        );
        assert!(catalog.entry("s").is_none());
        assert_eq!(catalog.garbage().collect::<Vec<_>>(), [("s", 10)]);
        assert!(matches!(
            catalog.apply(16, &drop_set("s")),
            Err(Error::SetNotFound(_))
        ));
        // Created again: a new generation, while the old one is still garbage.
        let Outcome::Set(again) = catalog.apply(17, &create("s", 1000)).unwrap() else {
            panic!("created");
        };
        assert_eq!(again.generation, 17);
        catalog
            .apply(18, &set_generation(Kind::Collected, "s", 10))
            .unwrap();
        assert_eq!(catalog.garbage().count(), 0);
        assert_eq!(catalog.applied(), 18);
    }

    #[test]
    fn admission_counts_every_hosting_node_and_garbage() {
        let spec = SetSpec::new("a", 1_000_000, 1e-6, "sha256").unwrap();
        let partition = spec.partition_geometry(4).unwrap().memory_bytes();
        let most = (1..=3)
            .map(|n| layout().hosted(n).len() as u64)
            .max()
            .unwrap();
        // Room for exactly two such sets on the busiest node.
        let mut catalog = catalog(2 * most * partition);
        let create = |name: &str| CatalogCommand {
            kind: Some(Kind::CreateSet(
                SetSpec::new(name, 1_000_000, 1e-6, "sha256")
                    .unwrap()
                    .command(spec.partition_geometry(4).unwrap()),
            )),
        };
        catalog.apply(1, &create("a")).unwrap();
        catalog.apply(2, &create("b")).unwrap();
        let Err(Error::MemoryLimit {
            node,
            needed,
            available,
            ..
        }) = catalog.apply(3, &create("c"))
        else {
            panic!("admitted past the limit");
        };
        assert_eq!(layout().hosted(node).len() as u64, most);
        assert_eq!((needed, available), (most * partition, 0));
        // A dropped set's memory counts until its partitions are collected.
        catalog.apply(4, &drop_set("a")).unwrap();
        assert!(matches!(
            catalog.apply(5, &create("c")),
            Err(Error::MemoryLimit { .. })
        ));
        catalog
            .apply(6, &set_generation(Kind::Collected, "a", 1))
            .unwrap();
        catalog.apply(7, &create("c")).unwrap();
    }

    #[test]
    fn sets_wait_for_every_nodes_limits_and_the_smallest_max_sets() {
        let mut catalog = Catalog::new(&layout());
        catalog.apply(1, &limits(1, 1 << 30)).unwrap();
        catalog.apply(2, &limits(2, 1 << 30)).unwrap();
        assert!(matches!(
            catalog.apply(3, &create("s", 10)),
            Err(Error::NodeLimitsUnknown { node: 3 })
        ));
        catalog.apply(4, &limits(3, 1 << 30)).unwrap();
        assert!(matches!(
            catalog.apply(5, &limits(9, 1 << 30)),
            Err(Error::UnknownNode { node: 9 })
        ));
        let small = CatalogCommand {
            kind: Some(Kind::Limits(NodeLimits {
                node: 2,
                filter_memory: 1 << 30,
                max_sets: 1,
                suffixes: true,
            })),
        };
        catalog.apply(6, &small).unwrap();
        catalog.apply(7, &create("s", 10)).unwrap();
        assert!(matches!(
            catalog.apply(8, &create("t", 10)),
            Err(Error::TooManySets { max: 1 })
        ));
    }

    #[test]
    fn invalid_commands_are_refused_and_change_nothing() {
        let mut catalog = catalog(1 << 30);
        let before = catalog.clone();
        let mut bad = create("s", 10);
        let Some(Kind::CreateSet(command)) = &mut bad.kind else {
            unreachable!()
        };
        command.blocks = u64::MAX;
        assert!(matches!(
            catalog.apply(20, &bad),
            Err(Error::SetParameters { .. })
        ));
        let mut bad_name = create("s", 10);
        let Some(Kind::CreateSet(command)) = &mut bad_name.kind else {
            unreachable!()
        };
        command.name = "Not A Name".into();
        assert!(matches!(
            catalog.apply(21, &bad_name),
            Err(Error::SetName { .. })
        ));
        assert_eq!(
            Catalog {
                applied: before.applied,
                ..catalog.clone()
            },
            before
        );
    }

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let mut catalog = catalog(1 << 30);
        catalog.apply(10, &create("b", 100)).unwrap();
        catalog.apply(11, &create("a", 100)).unwrap();
        catalog
            .apply(12, &set_generation(Kind::Activate, "a", 11))
            .unwrap();
        catalog.apply(13, &drop_set("b")).unwrap();
        let bytes = catalog.snapshot();
        let mut restored = Catalog::new(&layout());
        restored.restore(&bytes).unwrap();
        assert_eq!(restored, catalog);
        assert_eq!(restored.snapshot(), bytes);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let mut target = restored.clone();
            assert!(target.restore(&bad).is_err(), "flip at {i}");
            assert_eq!(target, restored);
        }
        assert!(restored.restore(&bytes[..10]).is_err());
    }

    fn join(node: NodeId, peer: &str) -> CatalogCommand {
        CatalogCommand {
            kind: Some(Kind::Join(NodeRecord {
                node,
                peer_address: peer.into(),
                client_address: format!("client-{node}"),
                ..NodeRecord::default()
            })),
        }
    }

    fn state(node: NodeId, state: NodeState) -> CatalogCommand {
        CatalogCommand {
            kind: Some(Kind::NodeState(NodeRecord {
                node,
                state: state_to_proto(state),
                ..NodeRecord::default()
            })),
        }
    }

    fn move_shard(epoch: u64, shard: u32, replicas: &[NodeId]) -> CatalogCommand {
        CatalogCommand {
            kind: Some(Kind::Placement(PlacementChange {
                epoch,
                shards: vec![ShardPlacement {
                    shard,
                    replicas: replicas.to_vec(),
                }],
            })),
        }
    }

    #[test]
    fn a_node_joins_takes_a_replica_and_is_decommissioned() {
        let mut catalog = catalog(1 << 30);
        assert_eq!(catalog.epoch(), 1);
        assert_eq!(catalog.replicas(0), [1, 2]);
        catalog.apply(10, &join(4, "h4:7061")).unwrap();
        assert_eq!(catalog.members()[&4].state, NodeState::Joining);
        // A joining node counts for limits: no set until it reports them.
        assert!(matches!(
            catalog.apply(11, &create("s", 10)),
            Err(Error::NodeLimitsUnknown { node: 4 })
        ));
        catalog.apply(12, &limits(4, 1 << 30)).unwrap();
        catalog.apply(13, &state(4, NodeState::Active)).unwrap();
        catalog.apply(14, &create("s", 1000)).unwrap();
        // Shard 0 moves from node 2 to node 4: one step, at the epoch it was planned at.
        catalog.apply(15, &move_shard(1, 0, &[1, 4])).unwrap();
        assert_eq!((catalog.replicas(0), catalog.epoch()), (&[1, 4][..], 2));
        assert!(matches!(
            catalog.apply(16, &move_shard(1, 1, &[4, 3])),
            Err(Error::Membership(m)) if m.contains("epoch 1")
        ));
        assert!(matches!(
            catalog.apply(17, &move_shard(2, 1, &[4, 4])),
            Err(Error::Membership(m)) if m.contains("distinct")
        ));
        assert!(matches!(
            catalog.apply(18, &move_shard(2, 9, &[1])),
            Err(Error::Membership(m)) if m.contains("does not exist")
        ));
        // Decommissioning: done only once nothing is placed on it.
        catalog
            .apply(19, &state(4, NodeState::Decommissioning))
            .unwrap();
        assert!(catalog
            .apply(20, &state(4, NodeState::Decommissioned))
            .is_err());
        assert!(
            catalog.apply(21, &move_shard(2, 0, &[1, 9])).is_err(),
            "not a node"
        );
        catalog.apply(22, &move_shard(2, 0, &[1, 2])).unwrap();
        catalog
            .apply(23, &state(4, NodeState::Decommissioned))
            .unwrap();
        assert_eq!(catalog.live().collect::<Vec<_>>(), [1, 2, 3]);
        // Gone is gone: the id cannot join again, nor take a replica.
        assert!(matches!(
            catalog.apply(24, &join(4, "h4:7061")),
            Err(Error::Membership(m)) if m.contains("new id")
        ));
        assert!(catalog.apply(25, &move_shard(3, 0, &[1, 4])).is_err());
        assert!(catalog.apply(26, &state(4, NodeState::Active)).is_err());
    }

    #[test]
    fn a_move_needs_the_memory_on_the_new_node() {
        // The set `create` makes.
        let spec = SetSpec::new("a", 1_000_000, 1e-3, "sha256").unwrap();
        let partition = spec.partition_geometry(4).unwrap().memory_bytes();
        // Room for 3 partitions per node; node 3 holds 2 (shards 1 and 2).
        let mut catalog = catalog(3 * partition);
        catalog.apply(1, &create("a", 1_000_000)).unwrap();
        assert_eq!(catalog.hosted(3).len(), 2);
        // Shard 0 ([1, 2]) onto node 3 too: 3 partitions, fits.
        catalog.apply(2, &move_shard(1, 0, &[1, 3])).unwrap();
        // Another one would need 4.
        assert!(matches!(
            catalog.apply(3, &move_shard(2, 3, &[1, 3])),
            Err(Error::Membership(m)) if m.contains("filter memory")
        ));
    }

    #[test]
    fn membership_survives_snapshots() {
        let mut catalog = catalog(1 << 30);
        catalog.apply(10, &join(4, "h4:7061")).unwrap();
        catalog.apply(11, &join(1, "h1:7061")).unwrap();
        catalog.apply(12, &limits(4, 1 << 30)).unwrap();
        catalog.apply(13, &state(4, NodeState::Active)).unwrap();
        catalog.apply(14, &move_shard(1, 3, &[4, 1])).unwrap();
        let mut restored = Catalog::new(&layout());
        restored.restore(&catalog.snapshot()).unwrap();
        assert_eq!(restored, catalog);
        assert_eq!(restored.members()[&1].peer_address, "h1:7061");
        assert_eq!(restored.replicas(3), [4, 1]);
    }
}
