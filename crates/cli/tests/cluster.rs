//! Three real `leakbloom node` processes on 127.0.0.1 with RF=3: a client streams inserts
//! while the leader of shard 0 is killed with SIGKILL and restarted; afterwards every
//! acknowledged insert is present on every replica (each node checked on its own, from its
//! local applied state), and a node restarted with another shard count refuses to start.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leakbloom_client::{Client, Key};
use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{free_port, wait_until_all_found, Proc, BIN};
const NODES: u64 = 3;
const SHARDS: &str = "4";

/// One node's fixed command line.
struct Spec {
    id: u64,
    listen: String,
    peers: String,
    peer_listen: String,
    data_dir: std::path::PathBuf,
}

impl Spec {
    fn args(&self, shards: &str) -> Vec<String> {
        [
            "node",
            "--id",
            &self.id.to_string(),
            "--listen",
            &self.listen,
            "--peer-listen",
            &self.peer_listen,
            "--peers",
            &self.peers,
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--shards",
            shards,
        ]
        .map(String::from)
        .to_vec()
    }
}

fn keys(rng: &mut StdRng, n: usize) -> Vec<Key> {
    (0..n).map(|_| rng.gen()).collect()
}

#[test]
fn acknowledged_inserts_survive_a_killed_leader() {
    let dir = tempfile::tempdir().unwrap();
    let peer_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let peers = (1..=NODES)
        .map(|id| format!("{id}=127.0.0.1:{}", peer_ports[id as usize - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let specs: Vec<Spec> = (1..=NODES)
        .map(|id| Spec {
            id,
            listen: format!("127.0.0.1:{}", free_port()),
            peer_listen: format!("127.0.0.1:{}", peer_ports[id as usize - 1]),
            peers: peers.clone(),
            data_dir: dir.path().join(format!("node-{id}")),
        })
        .collect();
    let mut procs: Vec<Option<Proc>> = specs
        .iter()
        .map(|spec| Some(Proc::start(&spec.args(SHARDS), "node serving")))
        .collect();
    for proc in procs.iter().flatten() {
        proc.wait_ready();
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&specs[1].listen).await.unwrap();
        client
            .create_set("leak", 1_000_000, 1e-6, "sha256")
            .await
            .unwrap();
    });
    // Shard 0's leader: the node whose log names itself its leader at the highest term (its
    // preferred leader, node 1, usually; whoever won the election otherwise).
    let term_led = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("leadership changed")
                    && l.contains("group=0")
                    && l.contains("role=Leader")
            })
            .filter_map(|l| l.rsplit_once("term=")?.1.trim().parse::<u64>().ok())
            .max()
    };
    let killed = (0..specs.len())
        .filter_map(|i| Some((term_led(&procs[i].as_ref().unwrap().log())?, i)))
        .max()
        .map(|(_, i)| i)
        .expect("some node logged leading shard 0");
    let survivor = &specs[(killed + 1) % specs.len()];

    // Stream inserts through a surviving node; remember what was acknowledged.
    let acknowledged: Arc<Mutex<Vec<Key>>> = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, failures, stop) = (acknowledged.clone(), failures.clone(), stop.clone());
        let addr = survivor.listen.clone();
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked() <= than + 5_000 {
            assert!(
                Instant::now() < deadline,
                "inserts stalled at {} keys",
                acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_more(0);
    procs[killed].take().unwrap().kill();
    let at_kill = acked();
    // The two survivors elect a new leader and keep acknowledging.
    wait_for_more(at_kill);
    procs[killed] = Some(Proc::start(&specs[killed].args(SHARDS), "node serving"));
    procs[killed].as_ref().unwrap().wait_ready();
    let at_restart = acked();
    wait_for_more(at_restart);
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > at_restart);

    // Every replica, checked alone from its applied state, has every acknowledged key once it
    // has caught up (the restarted one recovers from its disk and its peers).
    runtime.block_on(async {
        for spec in &specs {
            let what = format!("node {}", spec.id);
            wait_until_all_found(&spec.listen, &what, "leak", &acknowledged).await;
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
    let output = Command::new(BIN).args(specs[2].args("8")).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("created with shards = 4 but the config says 8"),
        "{stderr}"
    );
}
