//! The bootstrap layout: which nodes a new cluster has, which of them hold each shard's
//! replicas at first, and the record a node keeps in its data directory.
//!
//! A cluster starts from its `--peers` (node ids and peer addresses, the StatefulSet
//! seed-list style); from then on the catalog holds the nodes and the placement, which move as
//! nodes join and leave ([`crate::catalog`]). Replicas start round-robin over the nodes sorted by id:
//! shard `s` lives on nodes `(s + i) mod N` for `i` in `0..replication`, so every node hosts
//! about `shards * replication / N` replicas and any node computes the same map from the same
//! config.
//!
//! On first start a node writes [`RECORD_FILE`] (node id, shard count, replication, peers) to
//! its data directory; later starts compare the config against it and refuse to run on a
//! mismatch, since a changed shard count would put keys into other shards than the ones that
//! hold them. A node that joined records that it did (its `peers` are then only the nodes it
//! found when it joined).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use leakbloom_raft::NodeId;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::shard::ShardId;

/// File in the data directory recording the layout the data was created with.
pub const RECORD_FILE: &str = "cluster.toml";

/// Format of the data directories this build writes and reads. 2: a catalog group beside the
/// shards, and set partitions with generations (see [`crate::catalog`]).
pub const FORMAT: u32 = 2;

/// The format of records written before they named one.
fn first_format() -> u32 {
    1
}

/// Who holds which shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Every node id, ascending.
    nodes: Vec<NodeId>,
    shards: u32,
    replication: u32,
}

impl Layout {
    /// The layout for `nodes` (any order, no duplicates), `shards` shards and `replication`
    /// replicas per shard (at most the number of nodes).
    pub fn new(
        nodes: impl IntoIterator<Item = NodeId>,
        shards: u32,
        replication: u32,
    ) -> Result<Layout, ConfigError> {
        let mut nodes: Vec<NodeId> = nodes.into_iter().collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(ConfigError::Invalid("the cluster has no node".into()));
        }
        if replication == 0 || replication as usize > nodes.len() {
            return Err(ConfigError::Invalid(format!(
                "replication = {replication} needs 1 to {n} (the number of nodes in peers): \
                 add peers or lower --replication",
                n = nodes.len()
            )));
        }
        Ok(Layout {
            nodes,
            shards,
            replication,
        })
    }

    /// Every node id, ascending.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The placement epoch of this layout, which every shard map carries: 1, the first
    /// placement. Every change of it in the catalog raises the epoch, so clients can tell a
    /// newer map from an older one.
    pub fn epoch(&self) -> u64 {
        1
    }

    /// Replicas per shard.
    pub fn replication(&self) -> u32 {
        self.replication
    }

    /// The nodes holding replicas of `shard`, the first being its preferred leader.
    pub fn replicas(&self, shard: ShardId) -> Vec<NodeId> {
        let n = self.nodes.len();
        (0..self.replication as usize)
            .map(|i| self.nodes[(shard as usize + i) % n])
            .collect()
    }

    /// The shards `node` holds a replica of, ascending.
    pub fn hosted(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.shards)
            .filter(|&shard| self.replicas(shard).contains(&node))
            .collect()
    }
}

/// What a data directory was created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The data directory's format ([`FORMAT`]); records written before it had one are 1.
    #[serde(default = "first_format")]
    pub format: u32,
    /// The node joined a running cluster (`--join`): `peers` are the nodes it found then, and
    /// the catalog, not the config, says which nodes there are now.
    #[serde(default)]
    pub joined: bool,
    /// The node this directory belongs to.
    pub id: NodeId,
    /// Shard count.
    pub shards: u32,
    /// Replicas per shard.
    pub replication: u32,
    /// Every node's peer address, by node id (as strings: TOML keys are strings).
    pub peers: BTreeMap<String, String>,
}

impl Record {
    /// The recorded peers by node id.
    pub fn peers_by_id(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        self.peers
            .iter()
            .map(|(id, address)| {
                let id = id.parse().map_err(|_| {
                    ConfigError::Invalid(format!("{RECORD_FILE} names a node {id:?}, not an id"))
                })?;
                Ok((id, address.clone()))
            })
            .collect()
    }

    /// Reads the record in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Record>, ConfigError> {
        let path = dir.join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map(Some).map_err(|e| {
                ConfigError::Invalid(format!(
                    "{} is unreadable ({e}); it records how this data directory was \
                     created: restore it, or start with an empty --data-dir",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    /// Reads the record in `dir`, or writes `self` there when there is none (first start).
    /// Fails with a message that says what differs and what to do when they disagree.
    pub fn check_or_create(&self, dir: &Path) -> Result<(), ConfigError> {
        if !self.check(dir)? {
            self.create(dir)?;
        }
        Ok(())
    }

    /// Compares `self` with the record in `dir`: `Ok(true)` when it is there and agrees,
    /// `Ok(false)` when there is none (a new data directory). Fails with a message that says
    /// what differs and what to do when they disagree.
    pub fn check(&self, dir: &Path) -> Result<bool, ConfigError> {
        match Record::read(dir)? {
            Some(stored) => self.compare(&stored, &dir.join(RECORD_FILE)).map(|()| true),
            None => Ok(false),
        }
    }

    /// Writes `self` to `dir` (synced). A node writes it once its replicas are created, so a
    /// record means they existed: a replica missing later lost its data.
    pub fn create(&self, dir: &Path) -> Result<(), ConfigError> {
        self.write(dir, &dir.join(RECORD_FILE))
    }

    fn compare(&self, stored: &Record, path: &Path) -> Result<(), ConfigError> {
        let mismatch = |what: &str, stored: String, now: String, fix: &str| {
            Err(ConfigError::Invalid(format!(
                "data directory {} was created with {what} {stored} but the config says {now}; \
                 {fix}",
                path.parent().unwrap_or(path).display()
            )))
        };
        if stored.format != self.format {
            return mismatch(
                "format",
                stored.format.to_string(),
                self.format.to_string(),
                "this leakbloom reads only its own data directory format: create the cluster \
                 again with empty data directories (leakbloom dev --fresh) and insert the sets \
                 again",
            );
        }
        if stored.id != self.id {
            return mismatch(
                "node id",
                stored.id.to_string(),
                self.id.to_string(),
                "give each node its own data directory",
            );
        }
        if stored.shards != self.shards {
            return mismatch(
                "shards =",
                stored.shards.to_string(),
                self.shards.to_string(),
                "the shard count is fixed when a cluster is created: start with the original \
                 --shards, or create a new cluster with empty data directories",
            );
        }
        let fixed = "a bootstrapped node keeps the --replication and --peers it was created \
                     with (new nodes join with --join): start with the original --replication \
                     and --peers";
        if stored.replication != self.replication {
            return mismatch(
                "replication =",
                stored.replication.to_string(),
                self.replication.to_string(),
                fixed,
            );
        }
        if stored.joined != self.joined {
            return mismatch(
                "--join",
                if stored.joined { "set" } else { "unset" }.to_string(),
                if self.joined { "set" } else { "unset" }.to_string(),
                "a node bootstrapped with --peers keeps its --peers; a node that joined keeps \
                 --join",
            );
        }
        if !self.joined && stored.peers.keys().ne(self.peers.keys()) {
            let ids = |r: &Record| r.peers.keys().cloned().collect::<Vec<_>>().join(",");
            return mismatch("node ids", ids(stored), ids(self), fixed);
        }
        // Addresses may change (a pod rescheduled elsewhere): ids are what Raft knows.
        Ok(())
    }

    fn write(&self, dir: &Path, path: &Path) -> Result<(), ConfigError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let text = toml::to_string(self).expect("a record serializes");
        let tmp = path.with_extension("toml.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(
                b"# How this data directory was created; leakbloom checks it on start.\n",
            )?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| io_error("cannot write", path, e))
    }
}

fn io_error(context: &str, path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError::Invalid(format!("{context} {}: {e}", PathBuf::from(path).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_round_robin_and_balanced() {
        let layout = Layout::new([3, 1, 2, 4, 5], 16, 3).unwrap();
        assert_eq!(layout.replicas(0), vec![1, 2, 3]);
        assert_eq!(layout.replicas(4), vec![5, 1, 2]);
        let mut per_node = BTreeMap::new();
        for shard in 0..16 {
            let replicas = layout.replicas(shard);
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
            for node in replicas {
                *per_node.entry(node).or_insert(0) += 1;
            }
        }
        // 48 replicas over 5 nodes: 9 or 10 each.
        assert!(
            per_node.values().all(|&n| n == 9 || n == 10),
            "{per_node:?}"
        );
        assert_eq!(layout.hosted(1).len(), per_node[&1]);
        assert!(Layout::new([1, 2], 16, 3).is_err());
        assert!(Layout::new([1, 2], 16, 0).is_err());
    }

    fn record(id: NodeId, shards: u32) -> Record {
        Record {
            format: FORMAT,
            joined: false,
            id,
            shards,
            replication: 3,
            peers: (1..=3)
                .map(|i| (i.to_string(), format!("h{i}:7061")))
                .collect(),
        }
    }

    #[test]
    fn record_is_written_once_then_enforced() {
        let dir = tempfile::tempdir().unwrap();
        record(1, 16).check_or_create(dir.path()).unwrap();
        record(1, 16).check_or_create(dir.path()).unwrap();
        let error = record(1, 8)
            .check_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("created with shards = 16 but the config says 8"),
            "{error}"
        );
        let error = record(2, 16)
            .check_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("node id 1"), "{error}");
        let mut moved = record(1, 16);
        moved.peers.insert("2".into(), "elsewhere:7061".into());
        moved.check_or_create(dir.path()).unwrap();
        let mut grown = record(1, 16);
        grown.peers.insert("4".into(), "h4:7061".into());
        assert!(grown.check_or_create(dir.path()).is_err());
    }
}
