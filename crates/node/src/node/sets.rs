//! Sets through the catalog: create, drop, list, describe; and the catalog leader's
//! reconciler, which finishes what a crash interrupted (see [`crate::catalog`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};
use leakbloom_proto::internal::v1::catalog_command::Kind;
use leakbloom_proto::internal::v1::{
    command, CatalogCommand, Command, DropSetCommand, SetGeneration,
};
use leakbloom_proto::v1::{CreateSetRequest, SetInfo};
use raft::StateRole;

use super::{Node, PROPOSE_TIMEOUT};
use crate::catalog::{Entry, Outcome};
use crate::error::{Error, Result};
use crate::set::{self, Partition, SetSpec};
use crate::state::Applied;

/// How long a creating entry or a garbage generation may wait before the catalog leader's
/// reconciler finishes it: longer than a live create or drop takes (one proposal per shard),
/// so it only takes over from a proposer that crashed or gave up.
pub(super) const RECONCILE_GRACE: Duration = Duration::from_secs(10);

/// How often a create waiting for nodes to report their limits asks again.
const LIMITS_POLL: Duration = Duration::from_millis(100);

impl Node {
    /// The catalog entry of set `name` (only an active one when `active`), looked up again
    /// after a catalog read barrier when this node's copy does not have it (yet).
    pub(super) async fn resolve(&self, name: &str, active: bool) -> Result<Entry> {
        self.catalog_ready()?;
        let find = || {
            self.catalog
                .state
                .read(|c| c.entry(name).filter(|e| e.active || !active).cloned())
        };
        if let Some(entry) = find() {
            return Ok(entry);
        }
        self.catalog_barrier().await?;
        find().ok_or_else(|| Error::SetNotFound(name.to_string()))
    }

    /// Whether this node's catalog replica may answer which sets exist: not while it is rebuilt
    /// from its peers (it holds nothing yet) or stalled. Retryable: another node can answer.
    pub(super) fn catalog_ready(&self) -> Result<()> {
        let handle = &self.catalog.handle;
        let reason = if handle.rejoin_mark().is_some() {
            "its replica on this node is being rebuilt from its peers".to_string()
        } else if handle.membership().is_empty() {
            "this node joined the cluster a moment ago and its replica has not caught up yet"
                .to_string()
        } else if let Some(reason) = handle.stalled() {
            format!("its replica on this node is stalled: {reason}")
        } else {
            return Ok(());
        };
        Err(Error::Unavailable {
            shard: u32::MAX,
            leader: None,
            reason: format!("{reason}; ask another node"),
        })
    }

    /// Creates a set on every shard; idempotent with equal parameters. The catalog admits it
    /// (or refuses it: parameters, memory, set count), every shard creates its partition, then
    /// the catalog makes it visible.
    pub async fn create_set(&self, request: &CreateSetRequest) -> Result<SetInfo> {
        let spec = SetSpec::new(
            &request.name,
            request.capacity,
            request.fpr,
            &request.hashing,
        )?;
        let geometry = spec.partition_geometry(self.config.shards)?;
        let admit = CatalogCommand {
            kind: Some(Kind::CreateSet(spec.command(geometry))),
        };
        // A node that just started reports its limits within a second: wait for them (the
        // create is retryable anyway) rather than fail the first create of a new cluster.
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let admitted = loop {
            match self.propose_catalog(admit.clone()).await {
                Err(Error::NodeLimitsUnknown { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(LIMITS_POLL).await;
                }
                other => break other?,
            }
        };
        let entry = match admitted {
            Outcome::Set(entry) => entry,
            other => return Err(unexpected("a create", &other)),
        };
        let entry = if entry.active {
            entry
        } else {
            self.finish_creation(&entry).await?
        };
        // Leaders applied it; this node's replicas may lag behind: answer from caught-up state.
        self.read_barrier(0..self.config.shards).await?;
        self.catalog_barrier().await?;
        Ok(self.set_info(&entry))
    }

    /// Creates every shard's partition of a creating entry, then activates it.
    async fn finish_creation(&self, entry: &Entry) -> Result<Entry> {
        let create = entry.command();
        try_join_all((0..self.config.shards).map(|shard| {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::CreateSet(create.clone())),
            };
            async move { self.propose(shard, &command).await }
        }))
        .await?;
        let activate = CatalogCommand {
            kind: Some(Kind::Activate(SetGeneration {
                name: entry.spec.name.clone(),
                generation: entry.generation,
            })),
        };
        match self.propose_catalog(activate).await? {
            Outcome::Set(entry) => Ok(entry),
            other => Err(unexpected("an activation", &other)),
        }
    }

    /// Drops a set: gone everywhere at the catalog's commit; its partitions are dropped from
    /// every shard before this returns (or by the reconciler, if this node fails first).
    pub async fn drop_set(&self, name: &str) -> Result<()> {
        set::validate_name(name)?;
        let drop = CatalogCommand {
            kind: Some(Kind::DropSet(name.to_string())),
        };
        let generation = match self.propose_catalog(drop).await? {
            Outcome::Dropped(generation) => generation,
            other => return Err(unexpected("a drop", &other)),
        };
        self.collect(name, generation).await
    }

    /// Drops every shard's partition of a dropped generation, then tells the catalog.
    async fn collect(&self, name: &str, generation: u64) -> Result<()> {
        let results = join_all((0..self.config.shards).map(|shard| {
            let command = Command {
                id: 0,
                kind: Some(command::Kind::DropSet(DropSetCommand {
                    name: name.to_string(),
                    generation,
                })),
            };
            async move { self.propose(shard, &command).await }
        }))
        .await;
        for result in results {
            match result {
                Ok(Applied::Dropped) | Err(Error::SetNotFound(_)) => {}
                Ok(other) => return Err(unexpected("a partition drop", &other)),
                Err(error) => return Err(error),
            }
        }
        let collected = CatalogCommand {
            kind: Some(Kind::Collected(SetGeneration {
                name: name.to_string(),
                generation,
            })),
        };
        self.propose_catalog(collected).await.map(drop)
    }

    /// On the catalog's leader: finishes creations and drops left unfinished for
    /// [`RECONCILE_GRACE`] (their proposer crashed or gave up). `seen` remembers since when
    /// each was seen unfinished; call it every few seconds.
    pub(super) async fn reconcile(&self, seen: &mut HashMap<(String, u64), Instant>) {
        if self.catalog.handle.leadership().role != StateRole::Leader {
            seen.clear();
            return;
        }
        let (creating, garbage): (Vec<Entry>, Vec<(String, u64)>) = self.catalog.state.read(|c| {
            (
                c.entries().filter(|e| !e.active).cloned().collect(),
                c.garbage()
                    .map(|(name, generation)| (name.to_string(), generation))
                    .collect(),
            )
        });
        let now = Instant::now();
        let unfinished: Vec<(String, u64)> = creating
            .iter()
            .map(|e| (e.spec.name.clone(), e.generation))
            .chain(garbage.iter().cloned())
            .collect();
        seen.retain(|key, _| unfinished.contains(key));
        let due = |key: &(String, u64), seen: &mut HashMap<_, Instant>| {
            now.duration_since(*seen.entry(key.clone()).or_insert(now)) >= RECONCILE_GRACE
        };
        for entry in creating {
            if due(&(entry.spec.name.clone(), entry.generation), seen) {
                match self.finish_creation(&entry).await {
                    Ok(_) => tracing::info!(
                        set = %entry.spec.name,
                        generation = entry.generation,
                        "finished a set creation its proposer left unfinished"
                    ),
                    Err(error) => tracing::warn!(
                        set = %entry.spec.name,
                        %error,
                        "cannot finish a set creation yet; retrying"
                    ),
                }
            }
        }
        for key in garbage {
            if due(&key, seen) {
                let (name, generation) = key;
                match self.collect(&name, generation).await {
                    Ok(()) => tracing::info!(
                        set = %name,
                        generation,
                        "dropped the partitions of a set whose drop was left unfinished"
                    ),
                    Err(error) => tracing::warn!(
                        set = %name,
                        %error,
                        "cannot drop a dropped set's partitions yet; retrying"
                    ),
                }
            }
        }
    }

    /// Every set with its statistics, in name order.
    pub async fn list_sets(&self) -> Result<Vec<SetInfo>> {
        self.catalog_ready()?;
        let entries: Vec<Entry> = self
            .catalog
            .state
            .read(|c| c.entries().filter(|e| e.active).cloned().collect());
        Ok(entries.iter().map(|entry| self.set_info(entry)).collect())
    }

    /// One set with its statistics summed over shards.
    pub async fn get_set(&self, name: &str) -> Result<SetInfo> {
        set::validate_name(name)?;
        let entry = self.resolve(name, true).await?;
        Ok(self.set_info(&entry))
    }

    /// The partitions of `entry`'s generation on this node's serving replicas.
    pub(super) fn local_partitions(&self, entry: &Entry) -> Vec<Arc<Partition>> {
        (0..self.config.shards)
            .filter_map(|shard| self.serving(shard)?.state.partition(&entry.spec.name))
            .filter(|p| p.generation == entry.generation)
            .collect()
    }

    /// A set's parameters, with statistics summed over the partitions this node holds (scaled
    /// to all shards: keys spread evenly over shards).
    fn set_info(&self, entry: &Entry) -> SetInfo {
        let partitions = self.local_partitions(entry);
        let shards = self.config.shards;
        let spec = &entry.spec;
        let held = partitions.len().max(1) as u64;
        let (mut bits, mut bits_set, mut keys, mut fpr_sum) = (0u64, 0u64, 0u64, 0.0);
        for partition in &partitions {
            let stats = partition.filter.stats();
            bits += stats.bits;
            bits_set += stats.bits_set;
            keys += stats.estimated_keys;
            fpr_sum += stats.estimated_fpr;
        }
        let scale = |value: u64| value * u64::from(shards) / held;
        let all_bits = entry.geometry.bits() * u64::from(shards);
        SetInfo {
            name: spec.name.clone(),
            capacity: spec.capacity,
            fpr: spec.fpr,
            hashing: spec.hashing.to_string(),
            estimated_keys: scale(keys),
            fill_ratio: if bits == 0 {
                0.0
            } else {
                bits_set as f64 / bits as f64
            },
            // Keys are uniform over shards: an absent key meets each shard's filter equally
            // often.
            estimated_fpr: fpr_sum / held as f64,
            memory_bytes: entry.geometry.memory_bytes() * u64::from(shards),
            shards,
            hash_count: entry.geometry.hash_count,
            bits_per_key: all_bits as f64 / spec.capacity as f64,
        }
    }
}

/// A catalog or shard answer of the wrong kind: the nodes run incompatible versions.
fn unexpected(what: &str, answer: &dyn std::fmt::Debug) -> Error {
    Error::Replica {
        shard: u32::MAX,
        reason: format!(
            "{what} was answered {answer:?}: the nodes run incompatible leakbloom versions; \
             upgrade them all to one version"
        ),
    }
}
