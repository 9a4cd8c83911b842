//! A replica that lost its data is rebuilt from its peers: three real nodes (servers on
//! 127.0.0.1, stores on disk); one is stopped, its data damaged (every snapshot file corrupted,
//! its whole log store deleted, or its whole data directory deleted) and started again. It must rebuild every replica from the
//! others while they keep taking inserts, answer every acknowledged key afterwards, end
//! byte-identical with the other replicas, and count again as a voter: with another node
//! stopped afterwards, the two left must still commit.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{all_present, create, create_request, Cluster, PATIENCE, SHARDS};
use leakbloom_cluster::Consistency;
use leakbloom_node::Node;
use leakbloom_raft::NodeId;
use leakbloom_testkit::eventually;

const SET: &str = "leaked";

async fn insert(node: &Node, range: std::ops::Range<u64>) {
    common::insert(node, SET, range).await;
}

/// Waits until every shard's replicas have applied the same index with byte-identical state.
async fn replicas_identical(cluster: &Cluster) {
    eventually("replicas are byte-identical", PATIENCE, async || {
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
    // Once its catalog replica is whole (rebuilt first when damaged too: it is small), the
    // node answers again: its shard reads go to the other replicas meanwhile, and no
    // acknowledged key is missing.
    eventually("the catalog replica is rebuilt", PATIENCE, async || {
        rebuilt.catalog_group().rejoin_mark().is_none()
    })
    .await;
    all_present(&rebuilt, SET, 0..*acked, Consistency::Linearizable).await;
    // The cluster takes inserts while the replica rebuilds.
    insert(cluster.node(1), *acked..*acked + 1000).await;
    *acked += 1000;
    eventually("the rebuilt replicas vote again", PATIENCE, async || {
        (0..SHARDS).all(|s| rebuilt.group(s).unwrap().rejoin_mark().is_none())
    })
    .await;
    replicas_identical(cluster).await;
    all_present(&rebuilt, SET, 0..*acked, Consistency::Any).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_that_lost_its_data_is_rebuilt_from_peers() {
    let mut cluster = Cluster::start().await;
    // Small, so that a few thousand inserts outweigh a shard's filter and snapshots are taken
    // (a snapshot waits for as many bytes of inserts as it holds).
    create(cluster.node(1), &create_request(SET, 1_000)).await;
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
    all_present(cluster.node(2), SET, 0..acked, Consistency::Linearizable).await;
    for id in [2, 3] {
        cluster.stop_node(id).await;
    }
}

/// A node with a new data directory whose peers are all silent cannot tell a new cluster from
/// one whose data it lost: it must wait rather than bootstrap alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_waits_for_its_peers_before_bootstrapping() {
    let cluster = Cluster::new();
    let started = tokio::time::timeout(Duration::from_secs(2), cluster.run(1, &|_| {})).await;
    assert!(
        started.is_err(),
        "node 1 bootstrapped without hearing from a peer"
    );
    assert!(
        !cluster.data_dir(1).join("cluster.toml").exists(),
        "nothing is recorded while it waits"
    );
}
