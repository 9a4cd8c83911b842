//! Three real `leakbloom node` processes (RF=3) and a `leakbloom router` process on
//! 127.0.0.1. Two clients that do not retry stream inserts and linearizable checks, one through
//! the router and one routing itself (`Client::direct`), while each node in turn is killed with
//! SIGKILL and restarted: neither client sees an error at all, and every acknowledged key is
//! found through the router and on every node.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leakbloom_client::{Client, Consistency, Key};
use leakbloom_testkit::scratch_on_disk;
use leakbloom_testkit::wait::blocking::eventually;
use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{start, start_router, wait_until_all_found, Nodes, NODE_SERVING};

const NODES: usize = 3;

/// What the client saw: acknowledged keys, and every error (there must be none).
#[derive(Default)]
struct Seen {
    acknowledged: Vec<Key>,
    checks: usize,
    errors: Vec<String>,
}

#[test]
fn clients_of_the_router_see_no_error_while_any_one_node_is_killed() {
    let dir = scratch_on_disk();
    let cluster = Nodes::new(dir.path(), NODES, 8);
    let listens = cluster.listens.clone();
    let mut nodes: Vec<_> = cluster.start_all().into_iter().map(Some).collect();
    let (router, router_addr) = start_router(&listens[0]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sets = vec!["leak".to_string()];
    runtime.block_on(async {
        let mut client = Client::connect(&router_addr).await.unwrap();
        client
            .create_set("leak", 1_000_000, 1e-6, "sha256")
            .await
            .unwrap();
        // Bad input is the client's to see, through the router as from a node.
        let status = client
            .raw()
            .check(leakbloom_proto::v1::CheckRequest {
                sets: sets.clone(),
                keys: vec![0u8; 33].into(),
                consistency: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("multiple of 32"), "{status:?}");
        let missing = client
            .check(&["nope".to_string()], &[[1u8; 32]], Consistency::Any)
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");

        // Many concurrent single-key checks share node calls (coalescing); each must still get
        // its own key's answer: inserted keys present, the others (almost surely) absent.
        let mut rng = StdRng::seed_from_u64(5);
        let keys: Vec<Key> = (0..400).map(|_| rng.gen()).collect();
        client.insert("leak", &keys[..200]).await.unwrap();
        let answers = futures_util::future::join_all(keys.iter().map(|key| {
            let mut client = client.clone();
            let sets = sets.clone();
            async move {
                let found = client
                    .check(&sets, &[*key], Consistency::Any)
                    .await
                    .unwrap();
                found[0].present[0]
            }
        }))
        .await;
        assert!(answers[..200].iter().all(|&present| present));
        let false_positives = answers[200..].iter().filter(|&&present| present).count();
        assert!(
            false_positives <= 1,
            "{false_positives} of 200 absent keys found"
        );
    });

    // The clients: inserts of 300 keys, then a linearizable check of the last batch and an
    // any-replica check of an earlier one; every error is recorded, none retried.
    let stop = Arc::new(AtomicBool::new(false));
    let through_router: Arc<Mutex<Seen>> = Arc::default();
    let direct: Arc<Mutex<Seen>> = Arc::default();
    let workers = [
        runtime.spawn(stream(
            Route::Router(router_addr.clone()),
            through_router.clone(),
            stop.clone(),
            11,
        )),
        runtime.spawn(stream(
            Route::Direct(listens.clone()),
            direct.clone(),
            stop.clone(),
            12,
        )),
    ];
    let seen = through_router.clone();
    let acked = || seen.lock().unwrap().acknowledged.len();
    let wait_for_more = |than: usize, when: &str| {
        let what = format!("{} keys are acknowledged {when}", than + 6_000);
        eventually(what, Duration::from_secs(60), || match acked() {
            n if n >= than + 6_000 => Ok(()),
            n => Err(format!("inserts stalled at {n} keys")),
        })
    };
    wait_for_more(0, "before any kill");
    for (i, node) in nodes.iter_mut().enumerate() {
        node.take().expect("running").kill();
        let at_kill = acked();
        wait_for_more(at_kill, &format!("with node {} killed", i + 1));
        let restarted = node.insert(start(&cluster.args(i, &[])));
        restarted.wait_for_line(NODE_SERVING);
        let at_restart = acked();
        wait_for_more(at_restart, &format!("after node {} restarted", i + 1));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        runtime.block_on(worker).unwrap();
    }
    let mut acknowledged = Vec::new();
    for (path, seen) in [("through the router", through_router), ("direct", direct)] {
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            seen.errors.is_empty(),
            "the client {path} saw {} errors, first: {:?}\nrouter log:\n{}",
            seen.errors.len(),
            seen.errors.first(),
            router.log()
        );
        assert!(seen.checks > 0, "the client {path} passed no check");
        eprintln!(
            "acknowledged {} keys and passed {} checks {path}, no errors",
            seen.acknowledged.len(),
            seen.checks
        );
        acknowledged.extend(seen.acknowledged);
    }

    // Every acknowledged key through the router, and on every node from its own replicas.
    runtime.block_on(async {
        for addr in std::iter::once(&router_addr).chain(&listens) {
            wait_until_all_found(addr, addr, "leak", &acknowledged).await;
        }
    });
}

/// How a client reaches the cluster.
enum Route {
    /// Through the router at this address.
    Router(String),
    /// Routing itself, seeded with these node addresses.
    Direct(Vec<String>),
}

/// Streams inserts of 300 keys from `seed`'s generator through `client`, each followed by a
/// linearizable check of the batch and an any-replica check of an earlier acknowledged key,
/// until `stop`; records what was acknowledged and every error in `seen`, retrying nothing.
async fn stream(route: Route, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut client = match route {
        Route::Router(addr) => Client::connect(&addr).await.unwrap(),
        Route::Direct(nodes) => Client::direct(&nodes).await.unwrap(),
    };
    let sets = vec!["leak".to_string()];
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<Key> = (0..300).map(|_| rng.gen()).collect();
        if let Err(e) = client.insert("leak", &batch).await {
            seen.lock().unwrap().errors.push(format!("insert: {e}"));
            continue;
        }
        seen.lock().unwrap().acknowledged.extend(&batch);
        let earlier: Vec<Key> = {
            let seen = seen.lock().unwrap();
            let n = seen.acknowledged.len();
            seen.acknowledged[rng.gen_range(0..n)..][..1].to_vec()
        };
        for (keys, consistency) in [
            (&batch, Consistency::Linearizable),
            (&earlier, Consistency::Any),
        ] {
            match client.check(&sets, keys, consistency).await {
                Ok(found) if found[0].present.iter().all(|&p| p) => {
                    seen.lock().unwrap().checks += 1
                }
                Ok(_) => seen
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("{consistency:?} check missed acknowledged keys")),
                Err(e) => seen.lock().unwrap().errors.push(format!("check: {e}")),
            }
        }
    }
}
