//! Three real `leakbloom node` processes (RF=3, fsync) take max-batch inserts until each has
//! written about 30 times its filters' size of Raft log; every data directory must then be
//! within twice the filters' size plus the documented constant (the raft crate's "Disk bound":
//! the larger of the log store's purge threshold and the shards' summed byte floors, plus
//! three log files). Before the log had a byte budget, a shard compacted only every 10 000
//! entries, so all of it stayed.
//!
//! Why this stands for the 60 s run: the bound holds in a steady cycle (a shard's log
//! reaches its budget, it snapshots and compacts, a purge frees the files no shard needs) that
//! every shard goes through many times here (each writes about 20 budgets of log); a longer
//! run repeats the same cycle, so what matters is writing several times the filters' size and
//! well past the purge threshold, not the duration.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leakbloom_client::{Client, Key};
use rand::{rngs::StdRng, Rng, SeedableRng};

use common::Nodes;
use leakbloom_testkit::scratch_on_disk;

const NODES: usize = 3;
const SHARDS: u32 = 4;
/// Keys of the set: about 10 MB of filters on every node (1e-6, ~39 bits a key).
const CAPACITY: u64 = 2_000_000;
/// Keys per insert: the default max batch (2 MiB of keys, all of it logged on every node).
const BATCH: usize = 65_536;
/// Log written on each node, in multiples of its filters' size.
const LOG_MULTIPLE: u64 = 30;
/// Inserts in flight.
const INSERTERS: usize = 3;
/// The documented constant of the bound (raft crate docs, "Disk bound") for these nodes: the
/// larger of the log store's purge threshold (128 MiB) and the shards' byte floors (4 x 4 MiB),
/// plus three 16 MiB log files. Written out, not taken from the code, so that the test checks
/// the documented bound.
const CONSTANT: u64 = (128 + 3 * 16) << 20;

/// Bytes of the files under `dir` (apparent sizes, as `du -sb`).
fn size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => size(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[test]
fn max_batch_inserts_leave_every_data_directory_within_twice_the_filters() {
    // On the disk: this test measures what the nodes write to it.
    let dir = scratch_on_disk();
    let cluster = Nodes::new(dir.path(), NODES, SHARDS);
    let _nodes = cluster.start_all();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let filters = runtime.block_on(async {
        let mut client = Client::connect(&cluster.listens[0]).await.unwrap();
        client
            .create_set("leak", CAPACITY, 1e-6, "sha256")
            .await
            .unwrap()
            .memory_bytes
    });
    let bound = 2 * filters + CONSTANT;
    let inserts = LOG_MULTIPLE * filters / (BATCH as u64 * 32);

    // Every node's data directory, sampled while the inserts run.
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new(vec![0u64; NODES]));
    let sampler = {
        let (stop, peaks) = (stop.clone(), peaks.clone());
        let dirs: Vec<_> = (0..NODES).map(|i| cluster.data_dir(i)).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (peak, dir) in peaks.lock().unwrap().iter_mut().zip(&dirs) {
                    *peak = (*peak).max(size(dir));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    runtime.block_on(async {
        let next = Arc::new(Mutex::new(0u64));
        let inserters = (0..INSERTERS).map(|seed| {
            let (addr, next) = (cluster.listens[0].clone(), next.clone());
            async move {
                let mut client = Client::connect(&addr).await.unwrap();
                let mut rng = StdRng::seed_from_u64(seed as u64);
                loop {
                    {
                        let mut next = next.lock().unwrap();
                        if *next == inserts {
                            return;
                        }
                        *next += 1;
                    }
                    let keys: Vec<Key> = (0..BATCH).map(|_| rng.gen()).collect();
                    client.insert("leak", &keys).await.unwrap();
                }
            }
        });
        futures_util::future::join_all(inserters).await;
    });
    let took = started.elapsed();
    // Followers finish applying (and compacting) what they acknowledged.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peaks = peaks.lock().unwrap().clone();
    let finals: Vec<u64> = (0..NODES).map(|i| size(&cluster.data_dir(i))).collect();
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "{inserts} inserts of {BATCH} keys in {took:.1?} ({:.0} MiB of keys); filters {:.1} MiB \
         a node, bound {:.1} MiB; data directories now {:?} MiB, at most {:?} MiB",
        mib(inserts * BATCH as u64 * 32),
        mib(filters),
        mib(bound),
        finals.iter().map(|&b| mib(b).round()).collect::<Vec<_>>(),
        peaks.iter().map(|&b| mib(b).round()).collect::<Vec<_>>(),
    );
    for (i, &bytes) in finals.iter().enumerate() {
        assert!(
            bytes <= bound,
            "node {}'s data directory holds {:.1} MiB, over 2 x {:.1} MiB of filters + {:.1} MiB",
            i + 1,
            mib(bytes),
            mib(filters),
            mib(CONSTANT)
        );
    }
}
