//! Behaviour of the engine through its public API: no false negatives, fpr at target,
//! union, concurrency, stats, serialization of filled filters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use leakbloom_cluster::Key;
use leakbloom_filter::{Error, Filter, Geometry, CHECK_PREFETCH_DISTANCE};

/// SplitMix64: fast in debug builds, deterministic, and uniform enough to stand in for hash_count.
struct Keys(u64);

impl Keys {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> Key {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        key
    }

    fn take(seed: u64, count: usize) -> Vec<Key> {
        let mut keys = Keys(seed);
        (0..count).map(|_| keys.key()).collect()
    }
}

fn false_positives(filter: &Filter, absent: &[Key]) -> usize {
    let mut out = vec![false; absent.len()];
    filter.check_batch(absent, &mut out);
    out.iter().filter(|&&hit| hit).count()
}

#[test]
fn no_false_negatives() {
    let keys = Keys::take(1, 200_000);
    let filter = Filter::with_capacity(100_000, 1e-3).unwrap(); // twice over capacity
    for key in &keys[..100_000] {
        filter.insert(key);
    }
    filter.insert_batch(&keys[100_000..]);
    assert!(keys.iter().all(|key| filter.contains(key)));
    let mut out = vec![false; keys.len()];
    filter.check_batch(&keys, &mut out);
    assert!(out.iter().all(|&present| present));
}

#[test]
fn check_batch_agrees_with_contains_at_every_batch_shape() {
    let present = Keys::take(2, 5_000);
    let filter = Filter::with_capacity(5_000, 1e-2).unwrap();
    filter.insert_batch(&present);
    // Mix present and absent keys so both answers occur.
    let mut mixed = Keys::take(3, 5_000);
    for (i, key) in present.iter().enumerate().step_by(2) {
        mixed[i] = *key;
    }
    let d = CHECK_PREFETCH_DISTANCE;
    for len in [0, 1, 2, d - 1, d, d + 1, 2 * d + 3, 1000, mixed.len()] {
        let batch = &mixed[..len];
        let mut out = vec![false; len];
        filter.check_batch(batch, &mut out);
        let single: Vec<bool> = batch.iter().map(|key| filter.contains(key)).collect();
        assert_eq!(out, single, "batch of {len}");
    }
}

fn measured_fpr(fpr: f64, seed: u64) -> (f64, Filter) {
    const CAPACITY: usize = 100_000;
    const ABSENT: usize = 1_000_000;
    let filter = Filter::with_capacity(CAPACITY as u64, fpr).unwrap();
    filter.insert_batch(&Keys::take(seed, CAPACITY));
    let absent = Keys::take(seed + 1000, ABSENT);
    (
        false_positives(&filter, &absent) as f64 / ABSENT as f64,
        filter,
    )
}

#[test]
fn fpr_is_at_target_at_1e_3() {
    let (measured, filter) = measured_fpr(1e-3, 10);
    // Expect ~1000 hits (sd ~32): 1.5× is 15 sd away, 0.5× means the filter is oversized.
    assert!(measured <= 1.5e-3, "measured fpr {measured}");
    assert!(
        measured >= 0.5e-3,
        "measured fpr {measured}: filter oversized?"
    );
    let exact = filter.content_fpr();
    assert!(
        (measured / exact - 1.0).abs() < 0.15,
        "measured {measured} vs content {exact}"
    );
}

#[test]
fn fpr_is_at_target_at_1e_4() {
    let (measured, _) = measured_fpr(1e-4, 20);
    // Expect ~100 hits (sd ~10).
    assert!(measured <= 1.5e-4, "measured fpr {measured}");
    assert!(
        measured >= 0.5e-4,
        "measured fpr {measured}: filter oversized?"
    );
}

#[test]
fn stats_track_the_keys_inserted() {
    let capacity = 100_000u64;
    let filter = Filter::with_capacity(capacity, 1e-4).unwrap();
    let empty = filter.stats();
    assert_eq!((empty.bits_set, empty.estimated_keys), (0, 0));
    assert_eq!(empty.estimated_fpr, 0.0);
    assert_eq!(empty.bits, filter.geometry().bits());

    let keys = Keys::take(30, capacity as usize);
    filter.insert_batch(&keys[..10_000]);
    let tenth = filter.stats();
    let err = tenth.estimated_keys as f64 / 10_000.0 - 1.0;
    assert!(
        err.abs() < 0.03,
        "estimated {} for 10000",
        tenth.estimated_keys
    );

    filter.insert_batch(&keys[10_000..]);
    let full = filter.stats();
    let err = full.estimated_keys as f64 / capacity as f64 - 1.0;
    assert!(
        err.abs() < 0.02,
        "estimated {} for {capacity}",
        full.estimated_keys
    );
    assert!((full.fill_ratio - full.bits_set as f64 / full.bits as f64).abs() < 1e-12);
    // At capacity the estimate is close to the target, and close to the exact content fpr.
    assert!(
        full.estimated_fpr > 0.7e-4 && full.estimated_fpr < 1.3e-4,
        "{}",
        full.estimated_fpr
    );
    let exact = filter.content_fpr();
    assert!(
        (full.estimated_fpr / exact - 1.0).abs() < 0.2,
        "{full:?} vs {exact}"
    );

    // Re-inserting changes nothing.
    filter.insert_batch(&keys);
    assert_eq!(filter.stats(), full);
    assert!(keys.iter().all(|key| !filter.insert(key)));
}

#[test]
fn stats_of_a_saturated_filter_stay_finite() {
    let filter = Filter::new(Geometry {
        blocks: 1,
        hash_count: 14,
    })
    .unwrap();
    filter.insert_batch(&Keys::take(40, 20_000));
    let stats = filter.stats();
    assert_eq!(stats.bits_set, 512);
    assert_eq!(stats.fill_ratio, 1.0);
    // A full block carries no more information: the estimate is the finite floor
    // ln(1024) / (1 − (511/512)^14) ≈ 257 keys per block, far over its ~13-key capacity.
    assert!(
        (250..=260).contains(&stats.estimated_keys),
        "{}",
        stats.estimated_keys
    );
    assert!(stats.estimated_fpr > 0.99);
}

#[test]
fn union_is_the_filter_of_both_key_sets() {
    let a_keys = Keys::take(50, 30_000);
    let b_keys = Keys::take(51, 30_000);
    let geometry = Geometry::for_capacity(60_000, 1e-4).unwrap();
    let a = Filter::new(geometry).unwrap();
    let b = Filter::new(geometry).unwrap();
    let both = Filter::new(geometry).unwrap();
    a.insert_batch(&a_keys);
    b.insert_batch(&b_keys);
    both.insert_batch(&b_keys);
    both.insert_batch(&a_keys);

    a.union_with(&b).unwrap();
    assert_eq!(a, both, "union is bit-identical to inserting both sets");
    assert_eq!(a.stats(), both.stats());
    assert!(a_keys.iter().chain(&b_keys).all(|key| a.contains(key)));

    // Idempotent, and union with itself is harmless.
    a.union_with(&b).unwrap();
    a.union_with(&a).unwrap();
    assert_eq!(a, both);
    assert_eq!(a.stats(), both.stats());

    // b was not changed.
    let b_only = Filter::new(geometry).unwrap();
    b_only.insert_batch(&b_keys);
    assert_eq!(b, b_only);

    let other = Filter::with_capacity(60_000, 1e-3).unwrap();
    let err = a.union_with(&other).unwrap_err();
    assert!(matches!(err, Error::GeometryMismatch { .. }), "{err}");
    assert!(err.to_string().contains("same capacity and fpr"), "{err}");
}

#[test]
fn replicas_are_byte_identical_whatever_the_insert_order() {
    let keys = Keys::take(60, 20_000);
    let forward = Filter::with_capacity(20_000, 1e-6).unwrap();
    let backward = Filter::with_capacity(20_000, 1e-6).unwrap();
    forward.insert_batch(&keys);
    for key in keys.iter().rev() {
        backward.insert(key);
    }
    assert_eq!(forward, backward);
    assert_eq!(forward.encode(), backward.encode());
}

#[test]
fn filled_filters_round_trip() {
    let keys = Keys::take(70, 50_000);
    let filter = Filter::with_capacity(50_000, 1e-5).unwrap();
    assert!(filter.memory_bytes() >= filter.geometry().bytes());
    assert_eq!(filter.memory_bytes(), filter.geometry().memory_bytes());
    filter.insert_batch(&keys);
    let bytes = filter.encode();
    assert_eq!(bytes.len() as u64, filter.encoded_len());
    let back = Filter::decode(&bytes).unwrap();
    assert_eq!(back, filter);
    assert_eq!(back.stats(), filter.stats());
    assert!(keys.iter().all(|key| back.contains(key)));
    let mut streamed = Vec::new();
    filter.encode_into(&mut streamed).unwrap();
    assert_eq!(streamed, bytes);
    assert_eq!(Filter::decode_from(&mut &streamed[..]).unwrap(), filter);
    // Decoded filters keep working.
    let extra = Keys::take(71, 10);
    back.insert_batch(&extra);
    assert!(extra.iter().all(|key| back.contains(key)));
}

#[test]
fn large_filters_use_mapped_memory_and_round_trip() {
    // 400 k keys at 1e-6 is ~1.9 MB of blocks; 500 k crosses the 2 MiB mmap threshold.
    let keys = Keys::take(80, 500_000);
    let filter = Filter::with_capacity(500_000, 1e-6).unwrap();
    assert!(filter.geometry().bytes() >= 2 << 20);
    assert_eq!(filter.memory_bytes() % (2 << 20), 0);
    assert_eq!(filter.memory_bytes(), filter.geometry().memory_bytes());
    filter.insert_batch(&keys);
    assert!(keys.iter().all(|key| filter.contains(key)));
    let back = Filter::decode(&filter.encode()).unwrap();
    assert_eq!(back, filter);
    if cfg!(target_os = "linux") {
        // Whether the kernel grants huge pages depends on its THP mode and fragmentation;
        // what must hold is that the mapping is found and the count is within it.
        let huge = filter.huge_page_bytes().expect("smaps lists the mapping");
        assert!(huge <= filter.memory_bytes());
        eprintln!("huge pages backing the filter: {huge} bytes");
        let small = Filter::with_capacity(1000, 1e-6).unwrap();
        assert_eq!(
            small.huge_page_bytes(),
            None,
            "small filters live on the heap"
        );
    }
}

#[test]
fn concurrent_readers_never_miss_completed_inserts() {
    const KEYS: usize = 200_000;
    const READERS: usize = 2;
    let keys = Arc::new(Keys::take(90, KEYS));
    let filter = Arc::new(Filter::with_capacity(KEYS as u64, 1e-4).unwrap());
    // Number of keys whose insert has completed; published with Release after the inserts.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (keys, filter, done, stop) =
                (keys.clone(), filter.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checks = 0u64;
                let mut probe = Keys(1000 + r as u64);
                let mut out = [false; 64];
                while !stop.load(Ordering::Relaxed) {
                    let upto = done.load(Ordering::Acquire);
                    if upto == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    // The newest keys (the likeliest to race) and random older ones.
                    let newest = upto.saturating_sub(64);
                    filter.check_batch(&keys[newest..upto], &mut out[..upto - newest]);
                    assert!(
                        out[..upto - newest].iter().all(|&p| p),
                        "missed key < {upto}"
                    );
                    for _ in 0..64 {
                        let i = (probe.next_u64() % upto as u64) as usize;
                        assert!(filter.contains(&keys[i]), "missed key {i} < {upto}");
                    }
                    checks += 128;
                }
                checks
            })
        })
        .collect();

    for (i, chunk) in keys.chunks(256).enumerate() {
        if i % 2 == 0 {
            filter.insert_batch(chunk);
        } else {
            for key in chunk {
                filter.insert(key);
            }
        }
        done.fetch_add(chunk.len(), Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let checks = reader.join().expect("a reader saw a false negative");
        assert!(checks > 0);
    }
    assert!(keys.iter().all(|key| filter.contains(key)));
}

#[test]
fn concurrent_inserters_lose_no_bits() {
    let keys = Keys::take(100, 100_000);
    let shared = Arc::new(Filter::with_capacity(100_000, 1e-3).unwrap());
    // Both threads insert overlapping halves, so fetch_or races on the same words.
    let threads: Vec<_> = [0..60_000, 40_000..100_000]
        .into_iter()
        .map(|range| {
            let (filter, part) = (shared.clone(), keys[range].to_vec());
            std::thread::spawn(move || filter.insert_batch(&part))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let serial = Filter::with_capacity(100_000, 1e-3).unwrap();
    serial.insert_batch(&keys);
    assert_eq!(*shared, serial);
    assert_eq!(shared.stats(), serial.stats(), "bits-set count is exact");
}

#[test]
fn encode_during_inserts_still_decodes() {
    let keys = Keys::take(110, 200_000);
    let filter = Arc::new(Filter::with_capacity(200_000, 1e-4).unwrap());
    filter.insert_batch(&keys[..100_000]);
    let writer = {
        let (filter, rest) = (filter.clone(), keys[100_000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(100) {
                filter.insert_batch(chunk);
            }
        })
    };
    for _ in 0..5 {
        let snapshot = Filter::decode(&filter.encode()).expect("encode is always consistent");
        assert!(keys[..100_000].iter().all(|key| snapshot.contains(key)));
    }
    writer.join().unwrap();
    let mut bytes = Vec::new();
    filter
        .encode_into(&mut bytes)
        .expect("quiescent filter streams");
    assert_eq!(Filter::decode(&bytes).unwrap(), *filter);
}

#[test]
fn allocation_failure_is_an_error() {
    // 64 GiB is a valid geometry but far more than the machines this runs on will map
    // (overcommit heuristics refuse it); if it does map, it is lazily backed and dropped.
    let geometry = Geometry {
        blocks: leakbloom_filter::MAX_FILTER_BYTES / 64,
        hash_count: 14,
    };
    match Filter::new(geometry) {
        Err(err) => {
            assert!(matches!(err, Error::Alloc { .. }), "{err}");
            assert!(err.to_string().contains("could not allocate"), "{err}");
        }
        Ok(filter) => assert_eq!(filter.geometry(), geometry),
    }
}
