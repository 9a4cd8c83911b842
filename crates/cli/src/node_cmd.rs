//! `leakbloom node`: flags and `LEAKBLOOM_*` variables over the TOML config over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use leakbloom_node::config::parse_peers;
use leakbloom_node::{Config, Server};

/// Every field is optional: unset flags (and variables) leave the config file's value.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML config file (see deploy/leakbloom.toml).
    #[arg(long, env = "LEAKBLOOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, 1 or more (with a StatefulSet: the pod ordinal plus one).
    #[arg(long, env = "LEAKBLOOM_ID")]
    pub id: Option<u64>,
    /// Take the id from a StatefulSet pod name instead: its trailing ordinal plus one
    /// (`leakbloom-node-2` is node 3).
    #[arg(long, env = "LEAKBLOOM_ID_FROM_POD_NAME", conflicts_with = "id")]
    pub id_from_pod_name: Option<String>,
    /// Client API address.
    #[arg(long, env = "LEAKBLOOM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Client address other nodes and routers dial, HOST:PORT (default: --listen, or with
    /// 0.0.0.0 this node's host in --peers with the --listen port).
    #[arg(long, env = "LEAKBLOOM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Peer API address (Raft and forwarding between nodes; never expose it to clients).
    #[arg(long, env = "LEAKBLOOM_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Prometheus endpoint address (`GET /metrics`, plain HTTP; not served when unset).
    #[arg(long, env = "LEAKBLOOM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Join a running cluster through any live node's client address, HOST:PORT (ignored by
    /// the nodes --peers lists, which bootstrap the cluster).
    #[arg(long, env = "LEAKBLOOM_JOIN")]
    pub join: Option<String>,
    /// Peer address other nodes dial, HOST:PORT (default: this node's entry in --peers, or
    /// --peer-listen).
    #[arg(long, env = "LEAKBLOOM_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// Every node's peer address, this one included: ID=HOST:PORT,ID=HOST:PORT,...
    /// (none: a one-node cluster).
    #[arg(long, env = "LEAKBLOOM_PEERS")]
    pub peers: Option<String>,
    /// Directory of the Raft log, snapshots and the cluster record.
    #[arg(long, env = "LEAKBLOOM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replicas per shard (default 3, or the node count when smaller).
    #[arg(long, env = "LEAKBLOOM_REPLICATION")]
    pub replication: Option<u32>,
    /// Shards the key space is split into.
    #[arg(long, env = "LEAKBLOOM_SHARDS")]
    pub shards: Option<u32>,
    /// Most keys per Check or Insert request.
    #[arg(long, env = "LEAKBLOOM_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Most bytes of filter memory over all sets (default: half of what the process can get:
    /// the least of its cgroup memory limit, ulimit -v and physical memory).
    #[arg(long, env = "LEAKBLOOM_MAX_FILTER_MEMORY")]
    pub max_filter_memory: Option<u64>,
    /// Most sets.
    #[arg(long, env = "LEAKBLOOM_MAX_SETS")]
    pub max_sets: Option<usize>,
    /// Milliseconds a new connection (client or peer port) may take to send the HTTP/2 preface
    /// before it is closed.
    #[arg(long, env = "LEAKBLOOM_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds a connection (client or peer port) may go without sending a byte before it
    /// is closed.
    #[arg(long, env = "LEAKBLOOM_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Floor of a shard's log budget in bytes: a shard snapshots and compacts its log once the
    /// log holds max(its snapshot's size, this) bytes (0: no byte budget).
    #[arg(long, env = "LEAKBLOOM_SNAPSHOT_LOG_BYTES")]
    pub snapshot_log_bytes: Option<u64>,
    /// Answer linearizable reads on shard leaders from a lease instead of a ReadIndex round
    /// (assumes node clocks run at rates within 10 % of each other; see deploy/leakbloom.toml).
    #[arg(long, env = "LEAKBLOOM_LEASE_READS", num_args = 0..=1, default_missing_value = "true")]
    pub lease_reads: Option<bool>,
    /// Milliseconds a node may stay unreachable before it is marked dead and its replicas are
    /// re-created on the others (default 5 minutes).
    #[arg(long, env = "LEAKBLOOM_DEAD_AFTER_MS")]
    pub dead_after_ms: Option<u64>,
}

impl NodeArgs {
    /// The effective configuration: defaults, then the file, then variables and flags.
    pub fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(id) = self.id {
            config.id = id;
        }
        if let Some(name) = &self.id_from_pod_name {
            config.id = id_from_pod_name(name)?;
        }
        if let Some(advertise) = &self.advertise {
            config.advertise = Some(advertise.clone());
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(peer_listen) = self.peer_listen {
            config.peer_listen = peer_listen;
        }
        if let Some(metrics_listen) = self.metrics_listen {
            config.metrics_listen = Some(metrics_listen);
        }
        if let Some(join) = &self.join {
            config.join = Some(join.clone());
        }
        if let Some(address) = &self.peer_advertise {
            config.peer_advertise = Some(address.clone());
        }
        if let Some(peers) = &self.peers {
            config.peers = parse_peers(peers)?;
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(replication) = self.replication {
            config.replication = Some(replication);
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(max_batch) = self.max_batch {
            config.max_batch = max_batch;
        }
        if let Some(max) = self.max_filter_memory {
            config.max_filter_memory = Some(max);
        }
        if let Some(max) = self.max_sets {
            config.max_sets = max;
        }
        if let Some(ms) = self.handshake_timeout_ms {
            config.handshake_timeout_ms = ms;
        }
        if let Some(ms) = self.idle_timeout_ms {
            config.idle_timeout_ms = ms;
        }
        if let Some(bytes) = self.snapshot_log_bytes {
            config.snapshot_log_bytes = bytes;
        }
        if let Some(lease_reads) = self.lease_reads {
            config.lease_reads = lease_reads;
        }
        if let Some(ms) = self.dead_after_ms {
            config.dead_after_ms = ms;
        }
        config.validate()?;
        Ok(config)
    }
}

/// A StatefulSet pod's node id: the ordinal after the name's last `-`, plus one (Raft ids
/// start at 1).
fn id_from_pod_name(name: &str) -> Result<u64> {
    name.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .and_then(|ordinal| ordinal.checked_add(1))
        .with_context(|| {
            format!(
                "--id-from-pod-name {name:?} does not end in -ORDINAL as a StatefulSet pod's \
                 name does (e.g. leakbloom-node-0)"
            )
        })
}

pub async fn run(args: NodeArgs) -> Result<()> {
    let config = args.config()?;
    let id = config.id;
    let server = Server::bind(config)
        .await
        .with_context(|| format!("node {id} cannot start"))?;
    server.run(crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_give_ordinal_plus_one() {
        assert_eq!(id_from_pod_name("leakbloom-node-0").unwrap(), 1);
        assert_eq!(id_from_pod_name("leakbloom-node-12").unwrap(), 13);
        assert!(id_from_pod_name("leakbloom").is_err());
        assert!(id_from_pod_name("leakbloom-node-x").is_err());
    }
}
