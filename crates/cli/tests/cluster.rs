//! Three real `leakbloom node` processes on 127.0.0.1 with RF=3: a client streams inserts
//! while the leader of shard 0 is killed with SIGKILL and restarted; afterwards every
//! acknowledged insert is present on every replica (each node checked on its own, from its
//! local applied state), and a node restarted with another shard count refuses to start.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leakbloom_client::{Client, Key};
use leakbloom_proto::v1::cluster_client::ClusterClient;
use leakbloom_proto::v1::GetShardMapRequest;
use leakbloom_testkit::scratch_on_disk;
use leakbloom_testkit::wait::blocking::eventually;
use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{run, start, wait_until_all_found, Nodes, CATCH_UP, NODE_SERVING};

const NODES: usize = 3;
const SHARDS: u32 = 4;

fn keys(rng: &mut StdRng, n: usize) -> Vec<Key> {
    (0..n).map(|_| rng.gen()).collect()
}

#[test]
fn acknowledged_inserts_survive_a_killed_leader() {
    let dir = scratch_on_disk();
    let nodes = Nodes::new(dir.path(), NODES, SHARDS);
    let mut procs: Vec<_> = nodes.start_all().into_iter().map(Some).collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&nodes.listens[1]).await.unwrap();
        client
            .create_set("leak", 1_000_000, 1e-6, "sha256")
            .await
            .unwrap();
    });
    // Shard 0's leader, as the nodes' shard map says (its preferred replica, node 1, usually;
    // whoever won the election otherwise).
    let leader = runtime.block_on(async {
        let mut cluster = ClusterClient::connect(format!("http://{}", nodes.listens[0]))
            .await
            .unwrap();
        leakbloom_testkit::eventually("shard 0 has a leader", CATCH_UP, async || {
            let map = cluster
                .get_shard_map(GetShardMapRequest {})
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            match map.shard_replicas[0].leader {
                0 => Err("no leader known yet".to_string()),
                leader => Ok(leader),
            }
        })
        .await
    });
    let killed = usize::try_from(leader - 1).unwrap();
    let survivor = (killed + 1) % NODES;

    // Stream inserts through a surviving node; remember what was acknowledged.
    let acknowledged: Arc<Mutex<Vec<Key>>> = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, failures, stop) = (acknowledged.clone(), failures.clone(), stop.clone());
        let addr = nodes.listens[survivor].clone();
        runtime.spawn(async move {
            let mut client = Client::connect(&addr).await.unwrap();
            let mut rng = StdRng::seed_from_u64(7);
            while !stop.load(Ordering::Relaxed) {
                let batch = keys(&mut rng, 500);
                match client.insert("leak", &batch).await {
                    Ok(n) => {
                        assert_eq!(n, 500);
                        acknowledged.lock().unwrap().extend(batch);
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };
    let acked = || acknowledged.lock().unwrap().len();
    let wait_for_more = |than: usize| {
        let what = format!("over {} keys are acknowledged", than + 5_000);
        eventually(what, Duration::from_secs(30), || match acked() {
            n if n > than + 5_000 => Ok(()),
            n => Err(format!("inserts stalled at {n} keys")),
        })
    };
    wait_for_more(0);
    procs[killed].take().unwrap().kill();
    let at_kill = acked();
    // The two survivors elect a new leader and keep acknowledging.
    wait_for_more(at_kill);
    let restarted = procs[killed].insert(start(&nodes.args(killed, &[])));
    restarted.wait_for_line(NODE_SERVING);
    let at_restart = acked();
    wait_for_more(at_restart);
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > at_restart);

    // Every replica, checked alone from its applied state, has every acknowledged key once it
    // has caught up (the restarted one recovers from its disk and its peers).
    runtime.block_on(async {
        for (i, listen) in nodes.listens.iter().enumerate() {
            let what = format!("node {}", i + 1);
            wait_until_all_found(listen, &what, "leak", &acknowledged).await;
        }
    });
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "acknowledged {} keys ({at_kill} at kill, {at_restart} at restart); {} failed batches, \
         first: {:?}",
        acknowledged.len(),
        failures.len(),
        failures.first()
    );

    // A node restarted with another shard count refuses to start, saying why.
    procs[2].take().unwrap().kill();
    let args = nodes.args_with_shards(2, 8);
    let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("created with shards = 4 but the config says 8"),
        "{stderr}"
    );
}
