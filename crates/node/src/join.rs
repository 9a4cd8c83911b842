//! Joining a running cluster (`leakbloom node --join HOST:PORT`): what a new node does before
//! it opens its data directory.
//!
//! A node started with `join` and a data directory without a record asks the node at that
//! client address (`Cluster/Join`, retried while the address does not answer yet, as in a
//! StatefulSet whose pods start together) to register it. The answer is the cluster's shard
//! count, replication and nodes; the node takes them as its config (its `peers` become the
//! nodes it found) and opens with an empty catalog replica, which the catalog's leader adds
//! to the catalog group and catches up. Shard replicas come later, when the placement loop
//! gives it some (see [`crate::node`]'s membership).
//!
//! A node restarted with the data directory it joined with is the same node: it reads its
//! record instead of joining again, and learns the cluster's nodes from its catalog replica.

use std::time::{Duration, Instant};

use leakbloom_proto::v1::cluster_client::ClusterClient;
use leakbloom_proto::v1::{JoinRequest, JoinResponse};
use tonic::Code;

use crate::cluster::Record;
use crate::config::{Config, ConfigError};
use crate::error::{Error, Result};

/// How long a joining node keeps asking before it gives up: long enough for the node it asks
/// to start (pods of a StatefulSet start in any order).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one Join call may take: registering is one catalog commit.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between attempts while the address does not answer.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Makes `config` (with `join` set) the config of a member of the cluster at `join`: from the
/// record of a data directory that joined before, else by registering with the cluster.
/// `peer_address` and `client_address` are where this node is reached.
pub async fn prepare(config: &mut Config, peer_address: &str, client_address: &str) -> Result<()> {
    let Some(seed) = config.join.clone() else {
        return Ok(());
    };
    if let Some(record) = Record::read(&config.data_dir)? {
        if !record.joined {
            return Err(ConfigError::Invalid(format!(
                "data directory {} belongs to a node bootstrapped with --peers: start it \
                 with its --peers, not --join",
                config.data_dir.display()
            ))
            .into());
        }
        adopt(
            config,
            record.shards,
            record.replication,
            record.peers_by_id()?,
        );
        return Ok(());
    }
    let request = JoinRequest {
        node: config.id,
        peer_address: peer_address.to_string(),
        client_address: client_address.to_string(),
    };
    let started = Instant::now();
    let answer = loop {
        match call(&seed, request.clone()).await {
            Ok(answer) => break answer,
            Err(Retry::No(error)) => return Err(error),
            Err(Retry::Yes(why)) if started.elapsed() < JOIN_TIMEOUT => {
                tracing::info!(node = config.id, seed, why, "cannot join yet; retrying");
                tokio::time::sleep(JOIN_RETRY).await;
            }
            Err(Retry::Yes(why)) => {
                return Err(ConfigError::Invalid(format!(
                    "cannot join the cluster through {seed} within {JOIN_TIMEOUT:?}: {why}"
                ))
                .into())
            }
        }
    };
    let mut peers: std::collections::BTreeMap<u64, String> = answer
        .nodes
        .iter()
        .filter(|node| !node.peer_address.is_empty())
        .map(|node| (node.id, node.peer_address.clone()))
        .collect();
    peers.insert(config.id, peer_address.to_string());
    tracing::info!(
        node = config.id,
        seed,
        shards = answer.shards,
        replication = answer.replication,
        nodes = peers.len(),
        "registered with the cluster; waiting to be given replicas"
    );
    adopt(config, answer.shards, answer.replication, peers);
    Ok(())
}

/// Takes the cluster's shape as this node's config.
fn adopt(
    config: &mut Config,
    shards: u32,
    replication: u32,
    peers: std::collections::BTreeMap<u64, String>,
) {
    config.shards = shards;
    config.replication = Some(replication.min(peers.len() as u32));
    config.peers = peers;
}

/// Whether a failed join is worth asking again.
enum Retry {
    /// The cluster cannot be reached (yet), or is busy: why.
    Yes(String),
    /// The cluster refused: the error to stop with.
    No(Error),
}

async fn call(seed: &str, request: JoinRequest) -> std::result::Result<JoinResponse, Retry> {
    let uri = if seed.contains("://") {
        seed.to_string()
    } else {
        format!("http://{seed}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|e| {
        Retry::No(ConfigError::Invalid(format!("--join {seed:?} is not HOST:PORT ({e})")).into())
    })?;
    let channel = endpoint
        .connect_timeout(JOIN_CALL_TIMEOUT)
        .timeout(JOIN_CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| Retry::Yes(format!("{seed} does not answer ({e})")))?;
    match ClusterClient::new(channel).join(request).await {
        Ok(answer) => Ok(answer.into_inner()),
        Err(status)
            if matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
            ) =>
        {
            Err(Retry::Yes(format!("{seed}: {}", status.message())))
        }
        Err(status) if status.code() == Code::Unimplemented => Err(Retry::No(
            ConfigError::Invalid(format!(
                "{seed} is not a leakbloom node's client address (it does not serve \
                 leakbloom.v1.Cluster/Join): give --join a node's --listen address"
            ))
            .into(),
        )),
        Err(status) => Err(Retry::No(
            ConfigError::Invalid(format!(
                "the cluster at {seed} refused this node: {}",
                status.message()
            ))
            .into(),
        )),
    }
}
