//! Node configuration: typed, with defaults, loadable from TOML. The CLI layers
//! `LEAKBLOOM_*` environment variables and flags on top (see `deploy/leakbloom.toml` for a
//! commented sample).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakbloom_raft::NodeId;
use serde::Deserialize;

use crate::cluster::{Layout, Record, FORMAT};
use crate::shard::MAX_SHARDS;

/// Default client API address: the conventional local gRPC port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default peer address (Raft traffic and forwarded requests between nodes).
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:7061";

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "leakbloom-data";

/// Default replicas per shard: survives one node down and keeps a quorum for writes.
pub const DEFAULT_REPLICATION: u32 = 3;

/// Default Raft tick: heartbeats every 2 ticks (200 ms), elections after 10-20 ticks (1-2 s).
pub const DEFAULT_TICK_MS: u64 = 100;

/// Default applied entries between snapshots of a shard: with ~1000-key inserts that is about
/// 10 M keys of log to replay on restart, and a filter-sized write per 10 000 entries.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 10_000;

/// Default floor of a shard's log budget: a shard's log is compacted once it holds max(its
/// snapshot's size, this) bytes. 4 MiB x 16 shards keeps a node's log of small sets within the
/// raft store's 128 MiB purge threshold, while a snapshot of a tiny filter still comes only
/// every 4 MiB of log (1-2 s of a shard's share of max-batch inserts here).
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 4 << 20;

/// Default shard count: enough to spread 3-5 nodes' worth of Raft groups evenly, few enough
/// that per-shard overhead (heartbeats, snapshots, one filter per set) stays small.
pub const DEFAULT_SHARDS: u32 = 16;

/// Default keys per request: 65 536 keys are 2 MiB of request, far below gRPC's 4 MiB message
/// limit, and take about a millisecond to check.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// Largest `max_batch` a node accepts: 1 Mi keys are a 32 MiB message.
pub const MAX_MAX_BATCH: usize = 1 << 20;

/// Default number of sets: every set costs one filter per shard.
pub const DEFAULT_MAX_SETS: usize = 1024;

/// Default milliseconds a new connection may take to send the HTTP/2 preface (see
/// [`leakbloom_net::DEFAULT_HANDSHAKE_TIMEOUT`]).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 =
    leakbloom_net::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64;

/// Default milliseconds a connection may go without a received byte (see
/// [`leakbloom_net::DEFAULT_IDLE_TIMEOUT`]).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = leakbloom_net::DEFAULT_IDLE_TIMEOUT.as_millis() as u64;

/// Default milliseconds before an unreachable node is marked dead: 5 minutes, as CockroachDB's
/// `time_until_store_dead`: long enough for a restart or a rescheduled pod, short enough that
/// shards do not run a replica short for long.
pub const DEFAULT_DEAD_AFTER_MS: u64 = 5 * 60 * 1000;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// How a node runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id (1 or more; with a StatefulSet, the pod ordinal plus one).
    pub id: NodeId,
    /// Address of the client API (`leakbloom.v1.Lookup`, health, reflection).
    pub listen: SocketAddr,
    /// Address of the peer API (Raft and forwarded requests). Never expose it to clients.
    pub peer_listen: SocketAddr,
    /// The client address other nodes and routers dial (`HOST:PORT`). None: `listen` when it
    /// names a host, else (`0.0.0.0`, as in a pod) this node's host in `peers` with the
    /// `listen` port, e.g. `leakbloom-node-0.leakbloom-node:50051`.
    pub advertise: Option<String>,
    /// Address of the Prometheus endpoint (`GET /metrics`, plain HTTP). None: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Join a running cluster through this client address (`HOST:PORT`: any live node, or a
    /// name resolving to several) unless `peers` lists this node: then it is one of the nodes
    /// that bootstrap the cluster, and `join` is ignored (so every pod of a StatefulSet can be
    /// given both). A node restarted with the data directory it joined with is the same node:
    /// it does not join again.
    pub join: Option<String>,
    /// The peer address other nodes dial (`HOST:PORT`). None: `peer_listen` when it names a
    /// host, else this node's entry in `peers`.
    pub peer_advertise: Option<String>,
    /// Every node of the cluster (this one included) by id: `ID=HOST:PORT` peer addresses,
    /// comma separated. Empty: a one-node cluster of this node at `peer_listen`.
    #[serde(deserialize_with = "deserialize_peers")]
    pub peers: BTreeMap<NodeId, String>,
    /// Where the Raft log, snapshots and the cluster record live.
    pub data_dir: PathBuf,
    /// Replicas per shard; at most the number of nodes. `None`: 3, or fewer with fewer nodes.
    pub replication: Option<u32>,
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Applied entries between snapshots of a shard (which also compact its log), at least: a
    /// snapshot also waits until the inserts since the last one are as large as it. The log's
    /// byte budget (`snapshot_log_bytes`) may call for one sooner.
    pub snapshot_entries: u64,
    /// Number of shards the key space is split into. Fixed when the data is created.
    pub shards: u32,
    /// Most keys accepted in one Check or Insert request.
    pub max_batch: usize,
    /// Most bytes of filter memory this node holds over all sets. None: half of what the
    /// process can get (the least of its cgroup memory limit, `RLIMIT_AS` and physical memory;
    /// see [`crate::memory`]).
    pub max_filter_memory: Option<u64>,
    /// Most sets this node allows in the cluster (the cluster's limit is the smallest node's).
    pub max_sets: usize,
    /// Milliseconds a connection to the client or peer port may take to send the HTTP/2
    /// preface before it is closed.
    pub handshake_timeout_ms: u64,
    /// Milliseconds a connection to the client or peer port may go without sending a byte
    /// before it is closed.
    pub idle_timeout_ms: u64,
    /// Floor of a shard's log budget in bytes: a shard snapshots (and compacts its log) once
    /// its log since the last snapshot holds max(that snapshot's size, this), whatever the
    /// entry count. 0: no byte budget (the log then grows until `snapshot_entries`).
    pub snapshot_log_bytes: u64,
    /// Answer linearizable reads on a shard's leader from a lease (no ReadIndex round per read
    /// batch) instead of a round each. Safe if no node's clock runs 10 % slower than another's
    /// and peer messages are not held back for over an election timeout (see
    /// `leakbloom_raft::lease`). Off by default.
    pub lease_reads: bool,
    /// Milliseconds a node may stay unreachable (to the catalog's leader) before it is marked
    /// dead and its replicas are re-created on the other nodes. A dead node never comes back
    /// under its id.
    pub dead_after_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: 1,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            peer_listen: DEFAULT_PEER_LISTEN.parse().expect("valid default address"),
            advertise: None,
            metrics_listen: None,
            join: None,
            peer_advertise: None,
            peers: BTreeMap::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            replication: None,
            tick_ms: DEFAULT_TICK_MS,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            shards: DEFAULT_SHARDS,
            max_batch: DEFAULT_MAX_BATCH,
            max_filter_memory: None,
            max_sets: DEFAULT_MAX_SETS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            lease_reads: false,
            dead_after_ms: DEFAULT_DEAD_AFTER_MS,
        }
    }
}

impl Config {
    /// Parses a TOML document; missing fields keep their defaults.
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(source),
        })
    }

    /// Reads a TOML file, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Every node's peer address by id: `peers`, or this node alone.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        if self.peers.is_empty() {
            BTreeMap::from([(self.id, self.peer_listen.to_string())])
        } else {
            self.peers.clone()
        }
    }

    /// The peer address to advertise when the peer API is bound at `bound`: `peer_advertise`,
    /// else this node's entry in `peers`, else `bound` (which must then name a host).
    pub fn peer_advertised(&self, bound: SocketAddr) -> String {
        if let Some(address) = &self.peer_advertise {
            return address.clone();
        }
        match self.peers.get(&self.id) {
            Some(address) => address.clone(),
            None => bound.to_string(),
        }
    }

    /// The client address to advertise when the client API is bound at `bound`: `advertise`,
    /// else `bound` when it names a host, else this node's host in `peers` with `bound`'s port.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if let Some(address) = &self.advertise {
            return address.clone();
        }
        if !bound.ip().is_unspecified() {
            return bound.to_string();
        }
        match self
            .members()
            .get(&self.id)
            .and_then(|peer| peer.rsplit_once(':'))
        {
            Some((host, _)) if !host.is_empty() => format!("{host}:{}", bound.port()),
            _ => bound.to_string(),
        }
    }

    /// The filter memory this node may hold: `max_filter_memory`, or the default share of
    /// what the process can get ([`crate::memory::default_limit`]).
    pub fn filter_memory_limit(&self) -> u64 {
        self.max_filter_memory
            .unwrap_or_else(crate::memory::default_limit)
    }

    /// When connections to the client and peer ports that stall are closed.
    pub fn connection_timeouts(&self) -> leakbloom_net::Timeouts {
        leakbloom_net::Timeouts {
            handshake: Duration::from_millis(self.handshake_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// The replica layout this config describes.
    pub fn layout(&self) -> Result<Layout, ConfigError> {
        let members = self.members();
        let replication = self
            .replication
            .unwrap_or(DEFAULT_REPLICATION.min(members.len() as u32));
        Layout::new(members.keys().copied(), self.shards, replication)
    }

    /// The record of this config kept in the data directory (see [`Record`]).
    pub fn record(&self) -> Result<Record, ConfigError> {
        let layout = self.layout()?;
        Ok(Record {
            format: FORMAT,
            joined: self.join.is_some(),
            id: self.id,
            shards: self.shards,
            replication: layout.replication(),
            peers: self
                .members()
                .into_iter()
                .map(|(id, addr)| (id.to_string(), addr))
                .collect(),
        })
    }

    /// Checks ranges; call after every override is applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid(
                "id = 0 is reserved by Raft: number nodes from 1 (a StatefulSet pod's ordinal \
                 plus one)"
                    .into(),
            ));
        }
        if self.join.is_none() && !self.peers.is_empty() && !self.peers.contains_key(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "peers lists nodes {:?} but not this node's id {}: list every node, this one \
                 included",
                self.peers.keys().collect::<Vec<_>>(),
                self.id
            )));
        }
        if self.dead_after_ms == 0 {
            return Err(ConfigError::Invalid(
                "dead_after_ms = 0 would mark every node dead at once".into(),
            ));
        }
        if self.tick_ms == 0 || self.snapshot_entries == 0 {
            return Err(ConfigError::Invalid(
                "tick_ms and snapshot_entries must be at least 1".into(),
            ));
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError::Invalid(format!(
                "shards = {} is out of range 1..={MAX_SHARDS}",
                self.shards
            )));
        }
        if !(1..=MAX_MAX_BATCH).contains(&self.max_batch) {
            return Err(ConfigError::Invalid(format!(
                "max_batch = {} is out of range 1..={MAX_MAX_BATCH}",
                self.max_batch
            )));
        }
        if self.handshake_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "handshake_timeout_ms and idle_timeout_ms must be at least 1".into(),
            ));
        }
        if self.max_sets == 0 {
            return Err(ConfigError::Invalid(
                "max_sets = 0 allows no set at all".into(),
            ));
        }
        self.layout()?;
        Ok(())
    }
}

/// Parses `ID=HOST:PORT,ID=HOST:PORT,...` (the `--peers` syntax).
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let invalid = |why: &str| {
            ConfigError::Invalid(format!(
                "peers entry {item:?} {why}: write ID=HOST:PORT, e.g. \
                 1=127.0.0.1:7061,2=127.0.0.1:7062"
            ))
        };
        let (id, addr) = item.split_once('=').ok_or_else(|| invalid("has no '='"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| invalid("does not start with a node id"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid("has no HOST:PORT address"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(invalid("repeats a node id"));
        }
    }
    Ok(peers)
}

fn deserialize_peers<'de, D>(deserializer: D) -> Result<BTreeMap<NodeId, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse_peers(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let config = Config::from_toml("shards = 4\nlisten = \"0.0.0.0:9000\"\n", "t").unwrap();
        assert_eq!(config.shards, 4);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_batch, DEFAULT_MAX_BATCH);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        assert!(Config::from_toml("shard = 4", "t").is_err());
        let config = Config::from_toml("shards = 0", "t").unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_toml("max_batch = 0", "t").unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_toml("idle_timeout_ms = 0", "t").unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn peers_parse_and_layout_follows() {
        let config = Config::from_toml(
            "id = 2\npeers = \"1=127.0.0.1:7061, 2=127.0.0.1:7062,3=node-2.svc:7061\"\n",
            "t",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.peers[&3], "node-2.svc:7061");
        assert_eq!(config.layout().unwrap().replication(), 3);
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=nohost").is_err());
        let alone = Config::default();
        alone.validate().unwrap();
        assert_eq!(alone.layout().unwrap().replication(), 1);
        let missing = Config {
            id: 4,
            ..config.clone()
        };
        assert!(missing.validate().is_err());
        let too_many = Config {
            replication: Some(5),
            ..config
        };
        assert!(too_many
            .validate()
            .unwrap_err()
            .to_string()
            .contains("replication = 5"));
    }

    #[test]
    fn advertised_address_follows_listen_then_peers() {
        let config = Config::from_toml(
            "id = 2\npeers = \"1=node-0.svc:7000,2=node-1.svc:7000\"\n",
            "t",
        )
        .unwrap();
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(config.advertised(any), "node-1.svc:50051");
        let local: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        assert_eq!(config.advertised(local), "127.0.0.3:5000");
        let fixed = Config {
            advertise: Some("lb.example:443".into()),
            ..config
        };
        assert_eq!(fixed.advertised(any), "lb.example:443");
        assert_eq!(Config::default().advertised(any), "127.0.0.1:50051");
    }

    #[test]
    fn sample_config_in_deploy_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/leakbloom.toml");
        let config = Config::load(Some(Path::new(path))).unwrap();
        config.validate().unwrap();
    }
}
