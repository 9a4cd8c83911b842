//! Scaling a cluster of real `leakbloom node` processes under load: three nodes bootstrapped
//! with `--peers`, a router, and a client that inserts and checks through the router without
//! pause while nodes 4 and 5 join with `--join` (the cluster rebalances onto them), node 5 is
//! killed with SIGKILL in the middle of a move and restarted, and then nodes 5 and 4 are
//! decommissioned with `leakbloom nodes decommission --wait` and stopped. No check and no
//! insert may fail at the client, every acknowledged key is found at the end, and after each
//! step the replicas per node are within one of even. And a node that dies is marked dead
//! after the configured time, its replicas are re-created on the others, and when it comes
//! back it is told it was replaced and serves nothing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leakbloom_client::{Client, Consistency, Key};
use leakbloom_testkit::wait::blocking::eventually;
use leakbloom_testkit::{free_port, scratch_on_disk};
use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{
    create_leak, run, start, start_router, stdout_of, wait_until_all_found, Nodes, NODE_SERVING,
};

const SHARDS: u32 = 8;

/// One cluster at a time: each test runs up to six processes, and on a small machine two
/// clusters at once starve each other's heartbeats (and a 3 s dead time then means it).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
/// Moves of 8 shards onto and off new nodes take seconds each (a snapshot, a catch-up).
const SETTLE: Duration = Duration::from_secs(90);

/// What `nodes list --json` says about one node.
#[derive(Debug, Clone)]
struct Listed {
    id: u64,
    state: String,
    replicas: u64,
}

fn list(addr: &str) -> Vec<Listed> {
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&["nodes", "list", "--json", "--addr", addr]))
            .expect("nodes list --json is JSON");
    json.as_array()
        .expect("an array")
        .iter()
        .map(|node| Listed {
            id: node["id"].as_u64().expect("an id"),
            state: node["state"].as_str().expect("a state").to_string(),
            replicas: node["replicas"].as_u64().expect("a replica count"),
        })
        .collect()
}

/// Waits until the active nodes are exactly `ids`, hold every replica within one of even, and
/// have applied what they committed.
fn wait_balanced(addr: &str, ids: &[u64]) {
    eventually(format!("nodes {ids:?} active and balanced"), SETTLE, || {
        let nodes = list(addr);
        let active: Vec<&Listed> = nodes.iter().filter(|n| n.state == "active").collect();
        let active_ids: Vec<u64> = active.iter().map(|n| n.id).collect();
        let total: u64 = nodes.iter().map(|n| n.replicas).sum();
        let most = active.iter().map(|n| n.replicas).max().unwrap_or(0);
        let least = active.iter().map(|n| n.replicas).min().unwrap_or(0);
        if active_ids == ids && total == u64::from(SHARDS) * 3 && most - least <= 1 {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
}

/// The command line of a node that joins through `seed`.
fn joining(id: u64, dir: &std::path::Path, seed: &str) -> (Vec<String>, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "node",
        "--id",
        &id.to_string(),
        "--listen",
        &listen,
        "--peer-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--join",
        seed,
        "--data-dir",
        dir.join(format!("joined-{id}")).to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    (args, listen)
}

#[test]
fn the_cluster_scales_three_to_five_to_three_under_load() {
    let _alone = one_at_a_time();
    let dir = scratch_on_disk();
    let nodes = Nodes::new(dir.path(), 3, SHARDS);
    let _bootstrapped = nodes.start_all();
    let (_router, router_addr) = start_router(&nodes.listens[0]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_leak(&router_addr, 1_000_000));

    // The load: inserts of 50 keys, each followed by a linearizable check of everything
    // acknowledged so far (a sample when it grows), through the router, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Key>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let rounds = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, acknowledged, failures, rounds) = (
            stop.clone(),
            acknowledged.clone(),
            failures.clone(),
            rounds.clone(),
        );
        let router_addr = router_addr.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let mut client = Client::connect(&router_addr).await.unwrap();
                let mut rng = StdRng::seed_from_u64(7);
                let sets = ["leak".to_string()];
                while !stop.load(Ordering::Relaxed) {
                    let keys: Vec<Key> = (0..50).map(|_| rng.gen()).collect();
                    match client.insert("leak", &keys).await {
                        Ok(_) => acknowledged.lock().unwrap().extend(keys),
                        Err(error) => failures.lock().unwrap().push(format!("insert: {error}")),
                    }
                    let sample: Vec<Key> = {
                        let all = acknowledged.lock().unwrap();
                        let step = (all.len() / 2000).max(1);
                        all.iter().step_by(step).copied().collect()
                    };
                    if sample.is_empty() {
                        continue;
                    }
                    match client
                        .check(&sets, &sample, Consistency::Linearizable)
                        .await
                    {
                        Ok(found) => {
                            let missing = found[0].present.iter().filter(|&&p| !p).count();
                            if missing > 0 {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("check: {missing} acknowledged keys missing"));
                            }
                        }
                        Err(error) => failures.lock().unwrap().push(format!("check: {error}")),
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        })
    };

    // 3 -> 4 -> 5: each new node joins through a node of the cluster and gets its share.
    let (args4, _) = joining(4, dir.path(), &nodes.listens[0]);
    let node4 = start(&args4);
    node4.wait_for_line(NODE_SERVING);
    wait_balanced(&router_addr, &[1, 2, 3, 4]);
    let (args5, _) = joining(5, dir.path(), &nodes.listens[1]);
    let node5 = start(&args5);
    node5.wait_for_line(NODE_SERVING);
    // Node 5 dies in the middle of receiving its replicas, and comes back with its data.
    node5.wait_for_line("placed a replica here");
    node5.kill();
    let node5 = start(&args5);
    node5.wait_for_line(NODE_SERVING);
    wait_balanced(&router_addr, &[1, 2, 3, 4, 5]);

    // 5 -> 3: decommission the newest nodes, then stop them.
    for (id, node) in [(5, node5), (4, node4)] {
        let out = stdout_of(&[
            "nodes",
            "decommission",
            &id.to_string(),
            "--wait",
            "--addr",
            &router_addr,
        ]);
        assert!(out.contains("decommissioned"), "{out}");
        node.terminate(Duration::from_secs(10));
    }
    wait_balanced(&router_addr, &[1, 2, 3]);

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "the client saw {} failures: {failures:?}",
        failures.len()
    );
    assert!(rounds.load(Ordering::Relaxed) > 10, "the load ran");
    let keys = acknowledged.lock().unwrap().clone();
    runtime.block_on(async {
        for (i, addr) in nodes.listens.iter().enumerate() {
            wait_until_all_found(addr, &format!("node {}", i + 1), "leak", &keys).await;
        }
    });
}

#[test]
fn a_dead_node_is_replaced_and_told_so_when_it_returns() {
    let _alone = one_at_a_time();
    let dir = scratch_on_disk();
    let nodes = Nodes::new(dir.path(), 3, SHARDS);
    let dead_after = ["--dead-after-ms", "3000"];
    let bootstrapped: Vec<_> = (0..3).map(|i| start(&nodes.args(i, &dead_after))).collect();
    for node in &bootstrapped {
        node.wait_for_line(NODE_SERVING);
    }
    let (_router, router_addr) = start_router(&nodes.listens[0]);
    let (mut args4, _) = joining(4, dir.path(), &nodes.listens[0]);
    args4.extend(dead_after.map(String::from));
    let node4 = start(&args4);
    node4.wait_for_line(NODE_SERVING);
    wait_balanced(&router_addr, &[1, 2, 3, 4]);
    let keys: Vec<Key> = {
        let mut rng = StdRng::seed_from_u64(11);
        (0..2000).map(|_| rng.gen()).collect()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        create_leak(&router_addr, 100_000).await;
        let mut client = Client::connect(&router_addr).await.unwrap();
        client.insert("leak", &keys).await.unwrap();
    });

    // Node 4 dies: after 3 s it is dead and the three others hold every replica again.
    node4.kill();
    eventually("node 4 marked dead", SETTLE, || {
        let nodes = list(&router_addr);
        match nodes.iter().find(|n| n.id == 4) {
            Some(node) if node.state == "dead" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_balanced(&router_addr, &[1, 2, 3]);
    runtime.block_on(async {
        let mut client = Client::connect(&router_addr).await.unwrap();
        let found = client
            .check(&["leak".to_string()], &keys, Consistency::Linearizable)
            .await
            .unwrap();
        assert!(found[0].present.iter().all(|&p| p), "every key survives");
    });

    // It comes back with its old data: told it was replaced, it serves nothing.
    let node4 = start(&args4);
    node4.wait_for_line("the cluster replaced this node");
    assert!(
        list(&router_addr)
            .iter()
            .any(|n| n.id == 4 && n.state == "dead"),
        "still dead: a node never comes back under its id"
    );
    wait_balanced(&router_addr, &[1, 2, 3]);
}

#[test]
fn operators_mistakes_are_refused_with_what_to_do() {
    let _alone = one_at_a_time();
    let dir = scratch_on_disk();
    let nodes = Nodes::new(dir.path(), 3, SHARDS);
    let _bootstrapped = nodes.start_all();
    let (_router, router_addr) = start_router(&nodes.listens[0]);
    let stderr_of = |args: Vec<String>| {
        let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    // Decommissioning would leave 2 active nodes for 3 replicas.
    let refused = stderr_of(
        ["nodes", "decommission", "2", "--addr", &router_addr]
            .map(String::from)
            .to_vec(),
    );
    assert!(
        refused.contains("would leave 2 active nodes for replication 3"),
        "{refused}"
    );
    assert!(list(&router_addr).iter().all(|n| n.state == "active"));

    // A new node under an id a live node uses.
    let (taken, _) = joining(2, dir.path(), &nodes.listens[0]);
    let refused = stderr_of(taken);
    assert!(refused.contains("node id 2 is already used"), "{refused}");

    // --join given something that is not a node's client port: the router.
    let (misdirected, _) = joining(7, dir.path(), &router_addr);
    let refused = stderr_of(misdirected);
    assert!(
        refused.contains("is not a leakbloom node's client address"),
        "{refused}"
    );
    assert_eq!(list(&router_addr).len(), 3, "nobody was registered");
}
