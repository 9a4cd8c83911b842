//! A replica that lost its data is rebuilt from its peers: three real nodes (servers on
//! 127.0.0.1, stores on disk); one is stopped, its data damaged (every snapshot file corrupted,
//! its whole log store deleted, or its whole data directory deleted) and started again. It must rebuild every replica from the
//! others while they keep taking inserts, answer every acknowledged key afterwards, end
//! byte-identical with the other replicas, and count again as a voter: with another node
//! stopped afterwards, the two left must still commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use leakbloom_node::{Config, Node, Server};
use leakbloom_proto::v1::{Consistency, CreateSetRequest};
use leakbloom_raft::NodeId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SHARDS: u32 = 4;
const SET: &str = "leaked";

struct Running {
    node: Arc<Node>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Cluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<NodeId, String>,
    running: BTreeMap<NodeId, Running>,
}

/// Peer addresses for nodes 1 to 3 on free ports.
fn free_peer_addresses() -> BTreeMap<NodeId, String> {
    (1..=3)
        .map(|id| {
            let port = leakbloom_node::server::free_port([127, 0, 0, 1].into()).unwrap();
            (id, format!("127.0.0.1:{port}"))
        })
        .collect()
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            dir,
            peers: free_peer_addresses(),
            running: BTreeMap::new(),
        };
        // Together: new data directories ask each other whether the cluster is new.
        let started = futures_util::future::join_all((1..=3).map(|id| cluster.run(id))).await;
        cluster.running = (1..=3).zip(started).collect();
        cluster
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    async fn start_node(&mut self, id: NodeId) {
        let running = self.run(id).await;
        self.running.insert(id, running);
    }

    async fn run(&self, id: NodeId) -> Running {
        let config = Config {
            id,
            listen: "127.0.0.1:0".parse().unwrap(),
            peer_listen: self.peers[&id].parse().unwrap(),
            peers: self.peers.clone(),
            data_dir: self.data_dir(id),
            shards: SHARDS,
            // Short ticks keep elections fast; frequent snapshots put every replica's state in
            // snapshot files (and make the leader send snapshots to the rebuilt one).
            tick_ms: 20,
            snapshot_entries: 20,
            ..Config::default()
        };
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

    async fn stop_node(&mut self, id: NodeId) {
        let running = self.running.remove(&id).expect("running");
        let _ = running.stop.send(());
        running.task.await.unwrap();
    }

    fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.running[&id].node
    }
}

/// Key `i`: 32 well-mixed bytes (splitmix64), like the SHA-256 output clients send.
fn key(i: u64) -> [u8; 32] {
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

fn packed(range: std::ops::Range<u64>) -> Bytes {
    range.flat_map(key).collect::<Vec<u8>>().into()
}

/// Inserts keys `range` through node `via` in batches of 50, retrying a batch until it is
/// acknowledged (a retrying client's view): every key of the range is acknowledged after it.
async fn insert(node: &Node, range: std::ops::Range<u64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut start = range.start;
    while start < range.end {
        let end = (start + 50).min(range.end);
        match node.insert(SET, packed(start..end)).await {
            Ok(n) => {
                assert_eq!(n, end - start);
                start = end;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "inserts fail: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Asserts that node `node` answers every key in `range` present, with `consistency` (any
/// replica: from its own replicas' applied state, as far as they serve reads).
async fn all_present(node: &Node, range: std::ops::Range<u64>, consistency: Consistency) {
    let keys = packed(range.clone());
    let results = node
        .check(&[SET.to_string()], &keys, consistency.into())
        .await
        .expect("check");
    let bitmap = &results[0].present;
    for (i, k) in range.enumerate() {
        assert!(
            bitmap[i / 8] & (1 << (i % 8)) != 0,
            "node {} lost acknowledged key {k}",
            node.id()
        );
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every shard's replicas have applied the same index with byte-identical state.
async fn replicas_identical(cluster: &Cluster) {
    eventually("replicas are byte-identical", || {
        (0..SHARDS).all(|shard| {
            let states: Vec<_> = cluster
                .running
                .values()
                .map(|r| {
                    let state = r.node.shard(shard).expect("every node hosts every shard");
                    (state.applied(), state.snapshot())
                })
                .collect();
            states.windows(2).all(|w| w[0] == w[1])
        })
    })
    .await;
}

fn corrupt_snapshots(data_dir: &Path) -> usize {
    let mut corrupted = 0;
    for entry in std::fs::read_dir(data_dir.join("raft/snap")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
        corrupted += 1;
    }
    corrupted
}

/// Restarts node `id` after `damage`, inserting through node 1 meanwhile, and checks that it
/// is rebuilt: nothing rejoining, every key present on it, replicas identical.
async fn rebuild_after(cluster: &mut Cluster, id: NodeId, acked: &mut u64, damage: impl FnOnce()) {
    cluster.stop_node(id).await;
    insert(cluster.node(1), *acked..*acked + 500).await;
    *acked += 500;
    damage();
    cluster.start_node(id).await;
    let rebuilt = cluster.node(id).clone();
    let rebuilding = (0..SHARDS)
        .filter(|&s| rebuilt.group(s).unwrap().rejoin_mark().is_some())
        .count();
    assert_eq!(
        rebuilding, SHARDS as usize,
        "every damaged replica rebuilds"
    );
    // Meanwhile its reads go to the other replicas: no acknowledged key is missing.
    all_present(&rebuilt, 0..*acked, Consistency::Linearizable).await;
    // The cluster takes inserts while the replica rebuilds.
    insert(cluster.node(1), *acked..*acked + 1000).await;
    *acked += 1000;
    eventually("the rebuilt replicas vote again", || {
        (0..SHARDS).all(|s| rebuilt.group(s).unwrap().rejoin_mark().is_none())
    })
    .await;
    replicas_identical(cluster).await;
    all_present(&rebuilt, 0..*acked, Consistency::AnyReplica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_that_lost_its_data_is_rebuilt_from_peers() {
    let mut cluster = Cluster::start().await;
    let create = CreateSetRequest {
        name: SET.into(),
        // Small, so that a few thousand inserts outweigh a shard's filter and snapshots are
        // taken (a snapshot waits for as many bytes of inserts as it holds).
        capacity: 1_000,
        fpr: 1e-6,
        hashing: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = cluster.node(1).create_set(&create).await {
        assert!(Instant::now() < deadline, "create fails: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acked = 0;
    insert(cluster.node(2), 0..3000).await;
    acked += 3000;

    // Every snapshot of node 3 corrupted: detected on start, never loaded, rebuilt.
    let dir3 = cluster.data_dir(3);
    rebuild_after(&mut cluster, 3, &mut acked, || {
        let n = corrupt_snapshots(&dir3);
        assert!(n >= SHARDS as usize);
    })
    .await;

    // Node 2's whole log store gone (its record of the cluster kept).
    let dir2 = cluster.data_dir(2);
    rebuild_after(&mut cluster, 2, &mut acked, || {
        std::fs::remove_dir_all(dir2.join("raft")).unwrap();
    })
    .await;

    // Node 3's whole data directory gone, its record of the cluster too: a new data directory
    // whose peers hold the data, so it is rebuilt rather than bootstrapped.
    let dir3 = cluster.data_dir(3);
    rebuild_after(&mut cluster, 3, &mut acked, || {
        std::fs::remove_dir_all(&dir3).unwrap();
    })
    .await;

    // The rebuilt replicas count as voters again: without node 1, nodes 2 and 3 (both rebuilt)
    // elect leaders and commit.
    cluster.stop_node(1).await;
    insert(cluster.node(3), acked..acked + 500).await;
    acked += 500;
    all_present(cluster.node(2), 0..acked, Consistency::Linearizable).await;
    for id in [2, 3] {
        cluster.stop_node(id).await;
    }
}

/// A node with a new data directory whose peers are all silent cannot tell a new cluster from
/// one whose data it lost: it must wait rather than bootstrap alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_waits_for_its_peers_before_bootstrapping() {
    let cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        peers: free_peer_addresses(),
        running: BTreeMap::new(),
    };
    let started = tokio::time::timeout(Duration::from_secs(2), cluster.run(1)).await;
    assert!(
        started.is_err(),
        "node 1 bootstrapped without hearing from a peer"
    );
    assert!(
        !cluster.data_dir(1).join("cluster.toml").exists(),
        "nothing is recorded while it waits"
    );
}
