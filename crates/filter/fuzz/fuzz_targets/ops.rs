//! A geometry and keys from the fuzzer through the whole API: no false negatives, batch and
//! single-key answers agree, the count of set bits is exact, and encoding round-trips.
#![no_main]

use leakbloom_cluster::{Key, KEY_LEN};
use leakbloom_filter::{Filter, Geometry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[blocks, hash_count], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let geometry = Geometry {
        blocks: u64::from(blocks % 16) + 1,
        hash_count: u32::from(hash_count % 16),
    };
    let Ok(filter) = Filter::new(geometry) else {
        assert!(geometry.validate().is_err());
        return;
    };
    let keys: Vec<Key> = rest
        .chunks_exact(KEY_LEN)
        .map(|chunk| chunk.try_into().expect("KEY_LEN bytes"))
        .collect();
    let (inserted, probes) = keys.split_at(keys.len() / 2);
    for (i, key) in inserted.iter().enumerate() {
        if i % 2 == 0 {
            filter.insert(key);
        } else {
            filter.insert_batch(std::slice::from_ref(key));
        }
    }
    let mut out = vec![false; keys.len()];
    filter.check_batch(&keys, &mut out);
    for (key, &batched) in keys.iter().zip(&out) {
        assert_eq!(filter.contains(key), batched);
    }
    assert!(out[..inserted.len()].iter().all(|&present| present));

    let bytes = filter.encode();
    let back = Filter::decode(&bytes).expect("own encoding decodes");
    assert_eq!(back, filter);
    assert_eq!(back.stats(), filter.stats());
    let counted: u64 = bytes[32..bytes.len() - 4]
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    assert_eq!(filter.stats().bits_set, counted);

    let other = Filter::new(geometry).expect("same geometry allocates");
    other.insert_batch(probes);
    other.union_with(&filter).expect("same geometry");
    assert!(keys.iter().all(|key| other.contains(key)));
});
