//! What the node's cluster tests share: three real nodes in this process (servers on
//! 127.0.0.1, stores on disk) that can be stopped and started again, keys, and waiting.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use leakbloom_cluster::Consistency;
use leakbloom_node::{Config, Node, Server};
use leakbloom_proto::v1::CreateSetRequest;
use leakbloom_raft::NodeId;
use leakbloom_testkit::{eventually, free_port, scratch_on_disk};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Shards of the test clusters: few, so a test stays quick; more than one, so batches split.
pub const SHARDS: u32 = 4;

/// How long a test waits for the cluster to do something (elect, apply, catch up, accept a
/// retried request): a minute, for three nodes that fsync on a loaded two-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Running {
    pub node: Arc<Node>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub peers: BTreeMap<NodeId, String>,
    pub running: BTreeMap<NodeId, Running>,
}

/// Peer addresses for nodes 1 to 3 on free ports.
pub fn free_peer_addresses() -> BTreeMap<NodeId, String> {
    (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect()
}

impl Cluster {
    /// A cluster of nodes 1 to 3 that has not started.
    pub fn new() -> Cluster {
        Cluster {
            dir: scratch_on_disk(),
            peers: free_peer_addresses(),
            running: BTreeMap::new(),
        }
    }

    /// Starts nodes 1 to 3 together (new data directories ask each other whether the cluster
    /// is new), each with the test config edited by `edit`.
    pub async fn start_with(edit: impl Fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster::new();
        let started =
            futures_util::future::join_all((1..=3).map(|id| cluster.run(id, &edit))).await;
        cluster.running = (1..=3).zip(started).collect();
        cluster
    }

    /// [`start_with`](Self::start_with) the test config.
    pub async fn start() -> Cluster {
        Cluster::start_with(|_| {}).await
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Starts node `id` again, its config edited by `edit`.
    pub async fn start_node_with(&mut self, id: NodeId, edit: impl Fn(&mut Config)) {
        let running = self.run(id, &edit).await;
        self.running.insert(id, running);
    }

    pub async fn start_node(&mut self, id: NodeId) {
        self.start_node_with(id, |_| {}).await;
    }

    pub async fn run(&self, id: NodeId, edit: &impl Fn(&mut Config)) -> Running {
        let mut config = Config {
            id,
            listen: "127.0.0.1:0".parse().unwrap(),
            peer_listen: self.peers[&id].parse().unwrap(),
            peers: self.peers.clone(),
            data_dir: self.data_dir(id),
            shards: SHARDS,
            // Short ticks keep elections fast; frequent snapshots put every replica's state in
            // snapshot files (and make the leader send snapshots to a lagging one).
            tick_ms: 20,
            snapshot_entries: 20,
            ..Config::default()
        };
        edit(&mut config);
        let server = Server::bind(config).await.expect("node starts");
        let node = server.node();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Running { node, stop, task }
    }

    pub async fn stop_node(&mut self, id: NodeId) {
        let running = self.running.remove(&id).expect("running");
        let _ = running.stop.send(());
        running.task.await.unwrap();
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.running[&id].node
    }

    /// Stops every node.
    pub async fn stop(mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.stop_node(id).await;
        }
    }
}

/// Key `i`: 32 well-mixed bytes (splitmix64), like the SHA-256 output clients send.
pub fn key(i: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    let mut x = i;
    for chunk in key.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    key
}

pub fn packed(range: std::ops::Range<u64>) -> Bytes {
    range.flat_map(key).collect::<Vec<u8>>().into()
}

/// A CreateSet of `name` sized for `capacity` keys at 1e-6.
pub fn create_request(name: &str, capacity: u64) -> CreateSetRequest {
    CreateSetRequest {
        name: name.into(),
        capacity,
        fpr: 1e-6,
        hashing: String::new(),
    }
}

/// Creates a set through `node`, retrying while the cluster elects its leaders.
pub async fn create(node: &Node, request: &CreateSetRequest) {
    let what = format!("set {} is created", request.name);
    eventually(what, PATIENCE, async || node.create_set(request).await).await;
}

/// Inserts keys `range` into `set` through `node` in batches of 50, retrying a batch until it
/// is acknowledged (a retrying client's view): every key of the range is acknowledged after.
pub async fn insert(node: &Node, set: &str, range: std::ops::Range<u64>) {
    for start in range.clone().step_by(50) {
        let end = (start + 50).min(range.end);
        let what = format!("keys {start}..{end} are acknowledged");
        let n = eventually(what, PATIENCE, async || {
            node.insert(set, &packed(start..end)).await
        })
        .await;
        assert_eq!(n, end - start);
    }
}

/// Asserts that `node` answers every key in `range` present in `set`, with `consistency`
/// (any replica: from its own replicas' applied state, as far as they serve reads).
pub async fn all_present(
    node: &Node,
    set: &str,
    range: std::ops::Range<u64>,
    consistency: Consistency,
) {
    let keys = packed(range.clone());
    let results = node
        .check(&[set.to_string()], &keys, consistency)
        .await
        .expect("check");
    let bitmap = &results[0].present;
    for (i, k) in range.enumerate() {
        assert!(
            leakbloom_cluster::bitmap::get(bitmap, i),
            "node {} lost acknowledged key {k}",
            node.id()
        );
    }
}
