//! Three real `leakbloom node` processes (RF=3) and a `leakbloom router` on 127.0.0.1. One
//! node is frozen with SIGSTOP: its connections stay up, nothing answers. Any-replica checks
//! through the router, started the moment it freezes, single keys (coalesced) and batches, each
//! with a 2 s deadline, all succeed with the right bits: the router hedges the parts the frozen
//! node leaves unanswered on another replica. Without hedging, the checks it sends to that node
//! before its next shard map refresh marks it down wait out their deadline and fail.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use leakbloom_client::{Client, Key};
use leakbloom_cluster::Consistency;
use leakbloom_proto::v1::CheckRequest;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use common::{start, wait_until_all_found, Nodes, ROUTER_READY};
use leakbloom_testkit::{free_port, scratch_on_disk};

const NODES: usize = 3;
/// Each check's `grpc-timeout`: a fifth of the router's default deadline.
const DEADLINE: Duration = Duration::from_secs(2);
/// Clients checking at once, half with single keys, half with batches.
const CHECKERS: usize = 6;
/// How long they check after the freeze: past the router's next shard map refresh.
const CHECKING: Duration = Duration::from_secs(4);
/// Keys of a batch check: half inserted, half not.
const BATCH: usize = 1000;

/// One check: how long it took, and what went wrong, if anything.
type Outcome = (Duration, Result<(), String>);

#[test]
fn any_replica_checks_through_the_router_outlive_a_frozen_node() {
    let dir = scratch_on_disk();
    let cluster = Nodes::new(dir.path(), NODES, 8);
    let nodes = cluster.start_all();
    let router_addr = format!("127.0.0.1:{}", free_port());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let router = start(
        &[
            "router",
            "--listen",
            &router_addr,
            "--nodes",
            &cluster.listens.join(","),
            "--metrics-listen",
            &metrics_addr,
        ]
        .map(String::from),
    );
    router.wait_for_line(ROUTER_READY);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let inserted: Vec<Key> = (0..BATCH).map(|_| rng.gen()).collect();
    let absent: Vec<Key> = (0..BATCH).map(|_| rng.gen()).collect();
    runtime.block_on(async {
        let mut client = Client::connect(&router_addr).await.unwrap();
        client
            .create_set("leak", 100_000, 1e-6, "sha256")
            .await
            .unwrap();
        client.insert("leak", &inserted).await.unwrap();
        // Every replica has applied them: an any-replica read anywhere finds them.
        for addr in &cluster.listens {
            wait_until_all_found(addr, addr, "leak", &inserted).await;
        }
    });

    let present: HashSet<Key> = inserted.iter().copied().collect();
    let frozen = nodes[1].freeze();
    let started = Instant::now();
    let outcomes: Vec<Outcome> = runtime.block_on(async {
        let checkers = (0..CHECKERS).map(|checker| {
            let (router_addr, inserted, absent, present) =
                (&router_addr, &inserted, &absent, &present);
            async move {
                let mut client = Client::connect(router_addr).await.unwrap();
                let mut outcomes = Vec::new();
                let mut round = 0;
                while started.elapsed() < CHECKING {
                    // Single keys (present, then absent) go through the coalescer; batches
                    // interleave present (even positions) and absent keys.
                    let keys: Vec<Key> = if checker % 2 == 0 {
                        let from = if round % 2 == 0 { inserted } else { absent };
                        vec![from[(checker + round) % BATCH]]
                    } else {
                        (0..BATCH)
                            .map(|i| if i % 2 == 0 { inserted[i] } else { absent[i] })
                            .collect()
                    };
                    round += 1;
                    let sent = Instant::now();
                    let result = check(&mut client, &keys, present).await;
                    outcomes.push((sent.elapsed(), result));
                }
                outcomes
            }
        });
        futures_util::future::join_all(checkers)
            .await
            .into_iter()
            .flatten()
            .collect()
    });
    let failures: Vec<&Outcome> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    let slowest = outcomes.iter().map(|(took, _)| *took).max().unwrap();
    eprintln!(
        "{} any-replica checks with node 2 frozen, {} failed, slowest {slowest:?}",
        outcomes.len(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {} checks failed with node 2 frozen; first: {:?}\nrouter log:\n{}",
        failures.len(),
        outcomes.len(),
        failures[0],
        router.log()
    );
    assert!(outcomes.len() >= CHECKERS * 2, "too few checks ran");
    let hedges = runtime.block_on(counter(&metrics_addr, "leakbloom_router_hedges_total"));
    eprintln!("{hedges} parts hedged");
    assert!(hedges >= 1, "no part was hedged: node 2 was never asked?");

    // Thawed, the node serves its own reads again.
    drop(frozen);
    runtime.block_on(wait_until_all_found(
        &cluster.listens[1],
        "node 2 after SIGCONT",
        "leak",
        &inserted,
    ));
}

/// An any-replica check of `keys` through `client` with a [`DEADLINE`] `grpc-timeout`: every
/// key of `inserted` must be found, and (nearly) no other.
async fn check(client: &mut Client, keys: &[Key], inserted: &HashSet<Key>) -> Result<(), String> {
    let mut request = tonic::Request::new(CheckRequest {
        sets: vec!["leak".into()],
        keys: Bytes::from(keys.concat()),
        consistency: Consistency::ANY,
    });
    request.set_timeout(DEADLINE);
    // The router enforces the deadline; this only keeps a broken router from hanging the test.
    let call = tokio::time::timeout(DEADLINE * 2, client.raw().check(request));
    let answer = match call.await {
        Ok(Ok(answer)) => answer.into_inner(),
        Ok(Err(status)) => return Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => return Err("no answer, not even an error".into()),
    };
    let present = &answer.results[0].present;
    let mut false_positives = 0;
    for (i, key) in keys.iter().enumerate() {
        let found = leakbloom_cluster::bitmap::get(present, i);
        match (inserted.contains(key), found) {
            (true, false) => return Err(format!("inserted key {i} of {} missing", keys.len())),
            (false, true) => false_positives += 1,
            _ => {}
        }
    }
    if false_positives > 2 {
        return Err(format!("{false_positives} absent keys found"));
    }
    Ok(())
}

/// The value of counter `name` on the Prometheus endpoint at `addr`.
async fn counter(addr: &str, name: &str) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the router's metrics:\n{text}"))
}
