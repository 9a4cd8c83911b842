//! AVX2 kernels for x86-64: the same bits as the scalar code in `filter.rs`, in about a third
//! of the instructions, which is what lets batched checks reach the memory system's limit.
//!
//! A check puts the 14 possible bit positions into the 16 u32 lanes of two vectors, picks each
//! lane's 32-bit block word with `vpermd`, shifts the bit down and tests all lanes at once. An
//! insert builds the eight 64-bit word masks with variable shifts, compares them with the block
//! and only `fetch_or`s the words that gain bits.
//!
//! Every function here requires AVX2 and POPCNT (all AVX2 CPUs have it): `Filter::new`
//! detects both once.

use std::arch::x86_64::*;
use std::sync::atomic::Ordering::Relaxed;

use crate::filter::INSERT_PREFETCH_DISTANCE;
use crate::filter::{block_index, prefetch_read, prefetch_write, CHECK_PREFETCH_DISTANCE};
use crate::memory::Block;
use crate::Key;

/// Which bit position each u32 lane of the two position vectors holds (see `positions`);
/// 14 and 15 are padding.
const LANE_POSITION: [usize; 16] = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15];

/// Lanes that hold no position for this k (position ≥ k) are forced to pass.
#[inline(always)]
const fn padding(k: usize, lane: usize) -> i32 {
    (LANE_POSITION[lane] >= k) as i32
}

/// The key's 14 positions as u64 lanes: (0–3), (4–7), (8–11), (12, 13, 0, 0).
#[inline]
#[target_feature(enable = "avx2,popcnt")]
#[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87 on, unsafe before
unsafe fn positions(key: &Key) -> [__m256i; 4] {
    // SAFETY: AVX2 is enabled on this function; the unaligned load reads key bytes 16..32,
    // inside the 32-byte key.
    unsafe {
        let words = _mm256_broadcastsi128_si256(_mm_loadu_si128(key.as_ptr().add(16).cast()));
        // `words` is [lo, hi, lo, hi]; spread the word each lane's positions come from.
        let lo = _mm256_permute4x64_epi64::<0b00_00_00_00>(words);
        let lo_hi = _mm256_permute4x64_epi64::<0b01_00_00_00>(words);
        let hi = _mm256_permute4x64_epi64::<0b01_01_01_01>(words);
        let nine_bits = _mm256_set1_epi64x(0x1FF);
        // (A macro, not a closure: closures do not inherit target features on older Rust.)
        macro_rules! field {
            ($src:expr, $($shift:literal),+) => {
                _mm256_and_si256(_mm256_srlv_epi64($src, _mm256_setr_epi64x($($shift),+)), nine_bits)
            };
        }
        [
            field!(lo, 0, 9, 18, 27),
            field!(lo_hi, 36, 45, 54, 0),
            field!(hi, 9, 18, 27, 36),
            // Shifts of 64 give 0: padding lanes.
            field!(hi, 45, 54, 64, 64),
        ]
    }
}

/// The block as two vectors of u32 words (0–7, 8–15).
#[inline]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn load_block(block: &Block) -> (__m256i, __m256i) {
    let low: __m256i;
    let high: __m256i;
    // SAFETY: the block is 64 bytes, 64-byte aligned, alive for the borrow. The load runs as
    // inline assembly rather than a Rust read because inserts may `fetch_or` the same words
    // concurrently: on x86-64 each aligned 8-byte part of the load is single-copy atomic, the
    // guarantee a relaxed atomic load gives, and bits only ever turn on, so any mix of old and
    // new words is a state the filter passed through (never a false negative).
    unsafe {
        std::arch::asm!(
            "vmovdqa {low}, ymmword ptr [{block}]",
            "vmovdqa {high}, ymmword ptr [{block} + 32]",
            block = in(reg) std::ptr::from_ref(block),
            low = out(ymm_reg) low,
            high = out(ymm_reg) high,
            options(nostack, preserves_flags, readonly),
        );
    }
    (low, high)
}

/// For 8 positions (u32 lanes), bit 0 of each lane = that bit of the block.
#[inline]
#[target_feature(enable = "avx2,popcnt")]
#[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87 on, unsafe before
unsafe fn probe(positions: __m256i, low: __m256i, high: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled on this function; register-only intrinsics.
    unsafe {
        let word = _mm256_srli_epi32::<5>(positions);
        let from_low = _mm256_permutevar8x32_epi32(low, word);
        let from_high = _mm256_permutevar8x32_epi32(high, word);
        // Bit 3 of the word index (words 8–15) moved to the sign bit selects `high`.
        let pick_high = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(word));
        let picked = _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(from_low),
            _mm256_castsi256_ps(from_high),
            pick_high,
        ));
        _mm256_srlv_epi32(picked, _mm256_and_si256(positions, _mm256_set1_epi32(31)))
    }
}

/// Whether all `K` bits of `key` are set in `block`.
#[inline]
#[target_feature(enable = "avx2,popcnt")]
#[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87 on, unsafe before
unsafe fn block_contains<const K: usize>(block: &Block, key: &Key) -> bool {
    // SAFETY: AVX2 is enabled on this function and on every callee.
    unsafe {
        let [a, b, c, d] = positions(key);
        // Interleave pairs of u64 lanes into u32 lanes (order per LANE_POSITION).
        let first = _mm256_blend_epi32::<0xAA>(a, _mm256_slli_epi64::<32>(b));
        let second = _mm256_blend_epi32::<0xAA>(c, _mm256_slli_epi64::<32>(d));
        let (low, high) = load_block(block);
        let pad_first = _mm256_setr_epi32(
            padding(K, 0),
            padding(K, 1),
            padding(K, 2),
            padding(K, 3),
            padding(K, 4),
            padding(K, 5),
            padding(K, 6),
            padding(K, 7),
        );
        let pad_second = _mm256_setr_epi32(
            padding(K, 8),
            padding(K, 9),
            padding(K, 10),
            padding(K, 11),
            padding(K, 12),
            padding(K, 13),
            padding(K, 14),
            padding(K, 15),
        );
        let all = _mm256_and_si256(
            _mm256_or_si256(probe(first, low, high), pad_first),
            _mm256_or_si256(probe(second, low, high), pad_second),
        );
        let signs = _mm256_castsi256_ps(_mm256_slli_epi32::<31>(all));
        _mm256_movemask_ps(signs) == 0xFF
    }
}

/// Sets the `K` bits of `key` in `block`; returns how many were newly set.
#[inline]
#[target_feature(enable = "avx2,popcnt")]
#[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87 on, unsafe before
unsafe fn block_insert<const K: usize>(block: &Block, key: &Key) -> u32 {
    // SAFETY: AVX2 is enabled on this function and on every callee; the stores write the
    // local `masks` array, 8 u64s = two 32-byte vectors.
    unsafe {
        let lanes = positions(key);
        // 1 << (p − 64·w) in word lane w: out-of-range shifts (other words) give 0.
        let base_low = _mm256_setr_epi64x(0, 64, 128, 192);
        let base_high = _mm256_setr_epi64x(256, 320, 384, 448);
        let one = _mm256_set1_epi64x(1);
        let mut mask_low = _mm256_setzero_si256();
        let mut mask_high = _mm256_setzero_si256();
        // Adds position `$index` (lane `$lane` of `$vector`) to the masks if it is below K.
        macro_rules! add {
            ($vector:expr, $lane:literal, $index:expr) => {
                if $index < K {
                    let position = _mm256_permute4x64_epi64::<{ $lane * 0b01_01_01_01 }>($vector);
                    mask_low = _mm256_or_si256(
                        mask_low,
                        _mm256_sllv_epi64(one, _mm256_sub_epi64(position, base_low)),
                    );
                    mask_high = _mm256_or_si256(
                        mask_high,
                        _mm256_sllv_epi64(one, _mm256_sub_epi64(position, base_high)),
                    );
                }
            };
        }
        let [a, b, c, d] = lanes;
        add!(a, 0, 0);
        add!(a, 1, 1);
        add!(a, 2, 2);
        add!(a, 3, 3);
        add!(b, 0, 4);
        add!(b, 1, 5);
        add!(b, 2, 6);
        add!(b, 3, 7);
        add!(c, 0, 8);
        add!(c, 1, 9);
        add!(c, 2, 10);
        add!(c, 3, 11);
        add!(d, 0, 12);
        add!(d, 1, 13);
        let mut masks = [0u64; 8];
        _mm256_storeu_si256(masks.as_mut_ptr().cast(), mask_low);
        _mm256_storeu_si256(masks.as_mut_ptr().add(4).cast(), mask_high);
        // Words whose mask has bits the block lacks: only those need an atomic fetch_or.
        let (low, high) = load_block(block);
        let zero = _mm256_setzero_si256();
        let done_low = _mm256_cmpeq_epi64(_mm256_andnot_si256(low, mask_low), zero);
        let done_high = _mm256_cmpeq_epi64(_mm256_andnot_si256(high, mask_high), zero);
        let done = _mm256_movemask_pd(_mm256_castsi256_pd(done_low))
            | (_mm256_movemask_pd(_mm256_castsi256_pd(done_high)) << 4);
        let mut todo = !done as u32 & 0xFF;
        let mut newly = 0;
        while todo != 0 {
            let w = todo.trailing_zeros() as usize;
            todo &= todo - 1;
            let old = block.0[w].fetch_or(masks[w], Relaxed);
            newly += (masks[w] & !old).count_ones();
        }
        newly
    }
}

/// [`crate::Filter::contains`] on AVX2.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn check_one<const K: usize>(blocks: &[Block], key: &Key) -> bool {
    let block = &blocks[block_index(key, blocks.len() as u64)];
    // SAFETY: AVX2 and POPCNT per this function's contract.
    unsafe { block_contains::<K>(block, key) }
}

/// [`crate::Filter::insert`] on AVX2.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn insert_one<const K: usize>(blocks: &[Block], key: &Key) -> u32 {
    let block = &blocks[block_index(key, blocks.len() as u64)];
    // SAFETY: AVX2 and POPCNT per this function's contract.
    unsafe { block_insert::<K>(block, key) }
}

/// [`crate::Filter::check_batch`] on AVX2.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn check_many<const K: usize>(blocks: &[Block], keys: &[Key], out: &mut [bool]) {
    let n = blocks.len() as u64;
    for key in keys.iter().take(CHECK_PREFETCH_DISTANCE) {
        prefetch_read(&blocks[block_index(key, n)]);
    }
    for (i, (key, slot)) in keys.iter().zip(out.iter_mut()).enumerate() {
        if let Some(ahead) = keys.get(i + CHECK_PREFETCH_DISTANCE) {
            prefetch_read(&blocks[block_index(ahead, n)]);
        }
        // SAFETY: AVX2 and POPCNT per this function's contract.
        *slot = unsafe { block_contains::<K>(&blocks[block_index(key, n)], key) };
    }
}

/// [`crate::Filter::insert_batch`] on AVX2; returns the bits newly set.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn insert_many<const K: usize>(blocks: &[Block], keys: &[Key]) -> u64 {
    let n = blocks.len() as u64;
    for key in keys.iter().take(INSERT_PREFETCH_DISTANCE) {
        prefetch_write(&blocks[block_index(key, n)]);
    }
    let mut newly = 0u64;
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i + INSERT_PREFETCH_DISTANCE) {
            prefetch_write(&blocks[block_index(ahead, n)]);
        }
        // SAFETY: AVX2 and POPCNT per this function's contract.
        newly += u64::from(unsafe { block_insert::<K>(&blocks[block_index(key, n)], key) });
    }
    newly
}
