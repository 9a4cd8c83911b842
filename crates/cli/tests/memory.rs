//! A set too large for the nodes' memory is refused before it commits, and the cluster serves
//! on, also across restarts: three `leakbloom node` processes whose address space is capped
//! (`ulimit -v`, as a small machine or a container limit would), each left to derive its
//! filter memory limit from that cap.
//!
//! Before, a node's limit defaulted to 16 GiB whatever the machine had: a 3-billion-key set
//! passed the check, every replica panicked allocating it while applying the committed create,
//! and again at every restart (the create is in the log).

mod common;

use common::{start_in_address_space, wait_until_all_found, Nodes, CATCH_UP, NODE_SERVING};
use leakbloom_client::{Client, Consistency, Error, Key};
use leakbloom_testkit::{eventually, scratch_on_disk, Proc};
use tonic::Code;

/// Each node's address space: plenty for a node's threads and buffers, far too little for the
/// set below (about 14 GB at 1e-6 on every node, which hosts every shard).
const ADDRESS_SPACE: u64 = 6 << 30;
const SHARDS: u32 = 4;
const HUGE_CAPACITY: u64 = 3_000_000_000;

fn start(nodes: &Nodes) -> Vec<Proc> {
    let procs: Vec<Proc> = (0..3)
        .map(|i| start_in_address_space(&nodes.args(i, &[]), ADDRESS_SPACE))
        .collect();
    for proc in &procs {
        proc.wait_for_line(NODE_SERVING);
    }
    procs
}

/// Creates a set through `addr`, retrying while the cluster elects its leaders; the status.
async fn create(addr: &str, name: &str, capacity: u64) -> Result<(), tonic::Status> {
    let mut client = Client::connect(addr).await.unwrap();
    let what = format!("creating {name} is answered other than UNAVAILABLE");
    eventually(what, CATCH_UP, async || {
        match client.create_set(name, capacity, 1e-6, "sha256").await {
            Ok(_) => Ok(Ok(())),
            Err(Error::Status(status)) if status.code() == Code::Unavailable => Err(status),
            Err(Error::Status(status)) => Ok(Err(status)),
            Err(other) => panic!("create {name}: {other}"),
        }
    })
    .await
}

/// The huge set is refused through `addr`, naming the memory it needs.
async fn huge_is_refused(addr: &str) {
    let refused = create(addr, "huge", HUGE_CAPACITY).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("bytes of filter memory on node"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_too_large_for_capped_nodes_is_refused_and_the_cluster_serves_on() {
    let dir = scratch_on_disk();
    let nodes = Nodes::new(dir.path(), 3, SHARDS);
    let procs = start(&nodes);
    huge_is_refused(&nodes.listens[0]).await;

    create(&nodes.listens[1], "small", 10_000).await.unwrap();
    let keys: Vec<Key> = (0..1000u32)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            key[4..8].copy_from_slice(&i.to_le_bytes());
            key
        })
        .collect();
    let mut client = Client::connect(&nodes.listens[2]).await.unwrap();
    client.insert("small", &keys).await.unwrap();
    huge_is_refused(&nodes.listens[2]).await;

    // Every node killed and started again: nothing in the log makes them fail.
    for proc in procs {
        proc.kill();
    }
    let _procs = start(&nodes);
    for listen in &nodes.listens {
        wait_until_all_found(listen, "a restarted node", "small", &keys).await;
    }
    let mut client = Client::connect(&nodes.listens[0]).await.unwrap();
    let found = client
        .check(&["small".into()], &keys, Consistency::Linearizable)
        .await
        .unwrap();
    assert!(found[0].present.iter().all(|&p| p));
    huge_is_refused(&nodes.listens[1]).await;
}
