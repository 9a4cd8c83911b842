//! Engine benches: leakbloom's blocked filter against the `bloomfilter` crate (the baseline
//! every engine benchmark reports against), same keys, same target fpr.
//!
//! `cargo bench -p leakbloom-benches --bench filter` measures; `-- --test` only runs each
//! bench once (CI). The filters here are small enough to build in seconds; the 100 M-key
//! numbers come from `leakbloom bench filter`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bloomfilter::Bloom;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use leakbloom_cluster::Key;
use leakbloom_filter::Filter;
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// Keys per filter: 4 M at 1e-6 is ~19 MB for leakbloom and ~14 MB for `bloomfilter`, big
/// enough to leave L2 yet quick to build for `cargo bench -- --test`.
const KEYS: usize = 4_000_000;
/// Target fpr of both engines: the design's production setting.
const FPR: f64 = 1e-6;
/// Keys per timed call: one gRPC-sized batch, long enough to amortise timing overhead.
const CHUNK: usize = 4096;

fn random_keys(count: usize, seed: u64) -> Vec<Key> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys = vec![[0u8; 32]; count];
    for key in &mut keys {
        rng.fill_bytes(key);
    }
    keys
}

fn leakbloom_filled(keys: &[Key]) -> Filter {
    let filter = Filter::with_capacity(keys.len() as u64, FPR).expect("filter");
    filter.insert_batch(keys);
    filter
}

fn bloomfilter_filled(keys: &[Key]) -> Bloom<Key> {
    let mut bloom = Bloom::new_for_fp_rate(keys.len(), FPR).expect("bloom");
    for key in keys {
        bloom.set(key);
    }
    bloom
}

/// Times inserting `iters` chunks into fresh filters, filling each from empty to capacity
/// (only the inserts are timed).
fn time_inserts(
    keys: &[Key],
    iters: u64,
    mut fresh: impl FnMut() -> Box<dyn FnMut(&[Key])>,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut insert = fresh();
    let mut next = 0;
    for _ in 0..iters {
        if next + CHUNK > keys.len() {
            insert = fresh();
            next = 0;
        }
        let chunk = &keys[next..next + CHUNK];
        let start = Instant::now();
        insert(chunk);
        total += start.elapsed();
        next += CHUNK;
    }
    total
}

fn insert(c: &mut Criterion) {
    let keys = random_keys(KEYS, 1);
    let mut group = c.benchmark_group("filter/insert");
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function(BenchmarkId::new("leakbloom", "insert_batch"), |b| {
        b.iter_custom(|iters| {
            time_inserts(&keys, iters, || {
                let filter = Filter::with_capacity(KEYS as u64, FPR).expect("filter");
                Box::new(move |chunk: &[Key]| filter.insert_batch(chunk))
            })
        })
    });
    group.bench_function(BenchmarkId::new("leakbloom", "insert"), |b| {
        b.iter_custom(|iters| {
            time_inserts(&keys, iters, || {
                let filter = Filter::with_capacity(KEYS as u64, FPR).expect("filter");
                Box::new(move |chunk: &[Key]| {
                    for key in chunk {
                        black_box(filter.insert(key));
                    }
                })
            })
        })
    });
    group.bench_function(BenchmarkId::new("bloomfilter", "set"), |b| {
        b.iter_custom(|iters| {
            time_inserts(&keys, iters, || {
                let mut bloom = Bloom::new_for_fp_rate(KEYS, FPR).expect("bloom");
                Box::new(move |chunk: &[Key]| {
                    for key in chunk {
                        bloom.set(key);
                    }
                })
            })
        })
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let keys = random_keys(KEYS, 1);
    let absent = random_keys(KEYS / 4, 2);
    let ours = leakbloom_filled(&keys);
    let theirs = bloomfilter_filled(&keys);
    for (name, probe) in [("present", &keys), ("absent", &absent)] {
        let mut group = c.benchmark_group(format!("filter/lookup_{name}"));
        group.throughput(Throughput::Elements(CHUNK as u64));
        let mut out = vec![false; CHUNK];
        let mut at = 0;
        let mut next_chunk = move || {
            at = if at + 2 * CHUNK > probe.len() {
                0
            } else {
                at + CHUNK
            };
            &probe[at..at + CHUNK]
        };
        group.bench_function(BenchmarkId::new("leakbloom", "check_batch"), |b| {
            b.iter(|| {
                ours.check_batch(next_chunk(), &mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("leakbloom", "contains"), |b| {
            b.iter(|| {
                for key in next_chunk() {
                    black_box(ours.contains(key));
                }
            })
        });
        group.bench_function(BenchmarkId::new("bloomfilter", "check"), |b| {
            b.iter(|| {
                for key in next_chunk() {
                    black_box(theirs.check(key));
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, insert, lookup);
criterion_main!(benches);
