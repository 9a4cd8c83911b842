//! The filter: key → block and bits, insert, check, batches, union, stats.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::geometry::{model_fpr, Geometry, BLOCK_BITS, POSITION_BITS};
use crate::memory::{Block, Memory};
use crate::{Error, Key};

/// Keys a batched check looks ahead to prefetch: at 100 M keys on the dev VM, 8 starves the
/// memory pipeline (58 M/s), 12–32 are within noise (71–73 M/s), 48 and more lose a little.
pub const CHECK_PREFETCH_DISTANCE: usize = 16;
/// Keys a batched insert looks ahead to prefetch: 8–48 measured within noise of each other at
/// 100 M keys (13–16 M/s); inserts are bound by their atomic read-modify-writes, not by memory.
pub const INSERT_PREFETCH_DISTANCE: usize = 16;

/// Bit positions held by the first 8 bytes of key bytes 16..32 (7 × 9 = 63 of 64 bits).
const POSITIONS_PER_WORD: usize = 7;
/// Mask of one 9-bit position.
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// A blocked bloom filter over 32-byte keys; see the crate docs for the layout.
///
/// `insert` and every read take `&self`: share it (e.g. in an `Arc`) between an inserting
/// thread and any number of readers. Bits are only ever set, with relaxed atomic `fetch_or`,
/// so a reader never sees a key that was inserted before the reader started (in the
/// happens-before sense) as absent.
pub struct Filter {
    geometry: Geometry,
    memory: Memory,
    /// Set bits, kept up to date from the old values `fetch_or` returns.
    bits_set: AtomicU64,
    /// Instruction set of the per-key loops, detected once at creation.
    kernel: Kernel,
}

/// Which implementation of the per-key loops runs; both set and test exactly the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Portable Rust: one load and shift per bit position.
    Scalar,
    /// x86-64 AVX2 and POPCNT (`simd.rs`): all positions of a key in two vectors.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt") {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }
}

/// Occupancy figures of a [`Filter`], computed in O(1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Total bits (blocks × 512).
    pub bits: u64,
    /// Bits set to one.
    pub bits_set: u64,
    /// `bits_set / bits`.
    pub fill_ratio: f64,
    /// Keys inserted, estimated from the fill (distinct keys; re-inserts do not count).
    pub estimated_keys: u64,
    /// False-positive rate the blocked model predicts at `estimated_keys`.
    pub estimated_fpr: f64,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("geometry", &self.geometry)
            .field("bits_set", &self.bits_set.load(Relaxed))
            .field("memory", &self.memory)
            .field("kernel", &self.kernel)
            .finish()
    }
}

/// Block index of a key: multiply-shift of key bytes 8..16 read big-endian, so block order
/// follows key order (monotonic in the key prefix).
#[inline(always)]
pub(crate) fn block_index(key: &Key, blocks: u64) -> usize {
    let prefix = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
    ((u128::from(prefix) * u128::from(blocks)) >> 64) as usize
}

/// The two little-endian words of key bytes 16..24 and 24..32 holding the bit positions.
#[inline(always)]
fn position_words(key: &Key) -> (u64, u64) {
    (
        u64::from_le_bytes(key[16..24].try_into().expect("8 bytes")),
        u64::from_le_bytes(key[24..32].try_into().expect("8 bytes")),
    )
}

/// Bit position `i` (0..14) inside the block: 9-bit slice `i % 7` of word `i / 7`.
#[inline(always)]
fn position(words: (u64, u64), i: usize) -> usize {
    let word = if i < POSITIONS_PER_WORD {
        words.0
    } else {
        words.1
    };
    ((word >> (POSITION_BITS as usize * (i % POSITIONS_PER_WORD))) & POSITION_MASK) as usize
}

/// Whether all `K` bits of a key are set in `block` (branch-free).
#[inline(always)]
fn block_contains<const K: usize>(block: &Block, words: (u64, u64)) -> bool {
    let mut all = 1u64;
    for i in 0..K {
        let p = position(words, i);
        all &= block.0[p >> 6].load(Relaxed) >> (p & 63);
    }
    all & 1 == 1
}

/// Sets the `K` bits of a key in `block`; returns how many were newly set.
#[inline(always)]
fn block_insert<const K: usize>(block: &Block, words: (u64, u64)) -> u32 {
    let mut masks = [0u64; 8];
    for i in 0..K {
        let p = position(words, i);
        masks[p >> 6] |= 1 << (p & 63);
    }
    let mut newly = 0;
    for (word, mask) in block.0.iter().zip(masks) {
        // A plain load first: bits are never cleared, so if they are all set already (or the
        // mask is empty) the much dearer, fully fenced atomic read-modify-write is skipped.
        if word.load(Relaxed) & mask != mask {
            let old = word.fetch_or(mask, Relaxed);
            newly += (mask & !old).count_ones();
        }
    }
    newly
}

/// Hints the CPU to pull `block` into L1 for reading.
#[inline(always)]
pub(crate) fn prefetch_read(block: &Block) {
    let ptr = std::ptr::from_ref(block).cast::<i8>();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint with no architectural effect and cannot fault; SSE is part
    // of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint that cannot fault and touches no registers but its operand.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) ptr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = ptr;
}

/// Hints the CPU to pull `block` into L1 for writing (`prefetchw` when compiled for a CPU with
/// PRFCHW, else a read prefetch: the write then upgrades the line from L1).
#[inline(always)]
pub(crate) fn prefetch_write(block: &Block) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `prefetch_read`; ET0 lowers to `prefetchw` or `prefetcht0`.
    unsafe {
        let ptr = std::ptr::from_ref(block).cast::<i8>();
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(ptr);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint that cannot fault and touches no registers but its operand.
    unsafe {
        let ptr = std::ptr::from_ref(block).cast::<i8>();
        std::arch::asm!("prfm pstl1keep, [{0}]", in(reg) ptr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = block;
}

/// Calls `$f::<K>($args)` with the const `K` equal to the runtime hash count, so every
/// per-key loop is unrolled for its k.
macro_rules! with_hash_count {
    ($hash_count:expr, $($f:ident)::+($($arg:expr),* $(,)?)) => {
        match $hash_count {
            1 => $($f)::+::<1>($($arg),*),
            2 => $($f)::+::<2>($($arg),*),
            3 => $($f)::+::<3>($($arg),*),
            4 => $($f)::+::<4>($($arg),*),
            5 => $($f)::+::<5>($($arg),*),
            6 => $($f)::+::<6>($($arg),*),
            7 => $($f)::+::<7>($($arg),*),
            8 => $($f)::+::<8>($($arg),*),
            9 => $($f)::+::<9>($($arg),*),
            10 => $($f)::+::<10>($($arg),*),
            11 => $($f)::+::<11>($($arg),*),
            12 => $($f)::+::<12>($($arg),*),
            13 => $($f)::+::<13>($($arg),*),
            14 => $($f)::+::<14>($($arg),*),
            k => unreachable!("hash count {k} passed Geometry::validate"),
        }
    };
}

/// Runs the filter's kernel of a per-key function: `f` here (scalar) or `simd::f` (AVX2).
macro_rules! dispatch {
    ($filter:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let filter: &Filter = $filter;
        match filter.kernel {
            Kernel::Scalar => with_hash_count!(filter.geometry.hash_count, $f($($arg),*)),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only chosen after detecting AVX2 and POPCNT on this CPU.
            Kernel::Avx2 => unsafe { with_hash_count!(filter.geometry.hash_count, crate::simd::$f($($arg),*)) },
        }
    }};
}

fn check_one<const K: usize>(blocks: &[Block], key: &Key) -> bool {
    let block = &blocks[block_index(key, blocks.len() as u64)];
    block_contains::<K>(block, position_words(key))
}

fn insert_one<const K: usize>(blocks: &[Block], key: &Key) -> u32 {
    let block = &blocks[block_index(key, blocks.len() as u64)];
    block_insert::<K>(block, position_words(key))
}

fn check_many<const K: usize>(blocks: &[Block], keys: &[Key], out: &mut [bool]) {
    let n = blocks.len() as u64;
    for key in keys.iter().take(CHECK_PREFETCH_DISTANCE) {
        prefetch_read(&blocks[block_index(key, n)]);
    }
    for (i, (key, slot)) in keys.iter().zip(out.iter_mut()).enumerate() {
        if let Some(ahead) = keys.get(i + CHECK_PREFETCH_DISTANCE) {
            prefetch_read(&blocks[block_index(ahead, n)]);
        }
        *slot = block_contains::<K>(&blocks[block_index(key, n)], position_words(key));
    }
}

fn insert_many<const K: usize>(blocks: &[Block], keys: &[Key]) -> u64 {
    let n = blocks.len() as u64;
    for key in keys.iter().take(INSERT_PREFETCH_DISTANCE) {
        prefetch_write(&blocks[block_index(key, n)]);
    }
    let mut newly = 0u64;
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i + INSERT_PREFETCH_DISTANCE) {
            prefetch_write(&blocks[block_index(ahead, n)]);
        }
        newly += u64::from(block_insert::<K>(
            &blocks[block_index(key, n)],
            position_words(key),
        ));
    }
    newly
}

impl Filter {
    /// An empty filter of the given geometry.
    ///
    /// Fails on an invalid geometry or when the memory cannot be had. Memory of 2 MiB and more
    /// is an anonymous mapping advised to use transparent huge pages (Linux).
    pub fn new(geometry: Geometry) -> Result<Filter, Error> {
        geometry.validate()?;
        let blocks =
            usize::try_from(geometry.blocks).map_err(|_| Error::InvalidGeometry(geometry))?;
        let memory = Memory::zeroed(blocks).map_err(|source| Error::Alloc {
            bytes: geometry.bytes(),
            source,
        })?;
        Ok(Filter {
            geometry,
            memory,
            bits_set: AtomicU64::new(0),
            kernel: Kernel::detect(),
        })
    }

    /// An empty filter sized by [`Geometry::for_capacity`].
    pub fn with_capacity(capacity: u64, fpr: f64) -> Result<Filter, Error> {
        Filter::new(Geometry::for_capacity(capacity, fpr)?)
    }

    /// A copy of the filter's current contents (fallible, unlike `Clone`, because the copy
    /// needs memory).
    pub fn try_clone(&self) -> Result<Filter, Error> {
        let copy = Filter::new(self.geometry)?;
        let mut counted = 0u64;
        for (to, from) in copy.blocks().iter().zip(self.blocks()) {
            for (t, f) in to.0.iter().zip(&from.0) {
                let v = f.load(Relaxed);
                counted += u64::from(v.count_ones());
                t.store(v, Relaxed);
            }
        }
        copy.bits_set.store(counted, Relaxed);
        Ok(copy)
    }

    /// The filter's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Index of the block a key lives in, in `0..geometry().blocks`.
    ///
    /// It is `(u64::from_be_bytes(key[8..16]) × blocks) >> 64`, monotonic in the key: the
    /// keys with a given prefix map to one contiguous block range, and a contiguous block
    /// range is the set of keys within a prefix range.
    pub fn block_index(&self, key: &Key) -> u64 {
        block_index(key, self.geometry.blocks) as u64
    }

    /// Adds a key. Returns true if any of its bits was newly set, false if the key was
    /// (probably) present already.
    ///
    /// Each call waits for its block to come from memory (an atomic read-modify-write cannot
    /// overlap the miss): for many keys [`Filter::insert_batch`] is about 4× faster.
    pub fn insert(&self, key: &Key) -> bool {
        let newly = dispatch!(self, insert_one(self.blocks(), key));
        if newly > 0 {
            self.bits_set.fetch_add(u64::from(newly), Relaxed);
        }
        newly > 0
    }

    /// Adds many keys, prefetching blocks [`INSERT_PREFETCH_DISTANCE`] keys ahead of the
    /// inserts: about 4× faster than `insert` in a loop on filters larger than the CPU caches.
    pub fn insert_batch(&self, keys: &[Key]) {
        let newly = dispatch!(self, insert_many(self.blocks(), keys));
        if newly > 0 {
            self.bits_set.fetch_add(newly, Relaxed);
        }
    }

    /// Whether the key may be in the filter: false means certainly absent, true means present
    /// or a false positive (rate per the geometry).
    pub fn contains(&self, key: &Key) -> bool {
        dispatch!(self, check_one(self.blocks(), key))
    }

    /// Hints the CPU to load the key's block, for callers building their own pipelines:
    /// prefetch a key some dozen keys before `contains`/`insert` reaches it.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        let blocks = self.blocks();
        prefetch_read(&blocks[block_index(key, blocks.len() as u64)]);
    }

    /// Checks `keys[i]` into `out[i]`, prefetching [`CHECK_PREFETCH_DISTANCE`] keys ahead.
    ///
    /// # Panics
    /// If `out.len() != keys.len()`.
    pub fn check_batch(&self, keys: &[Key], out: &mut [bool]) {
        assert_eq!(
            keys.len(),
            out.len(),
            "check_batch: out needs one slot per key"
        );
        dispatch!(self, check_many(self.blocks(), keys, out));
    }

    /// Sets every bit set in `other` (same geometry only): afterwards `self` holds the keys of
    /// both, bit for bit as if all of them had been inserted into it.
    pub fn union_with(&self, other: &Filter) -> Result<(), Error> {
        if self.geometry != other.geometry {
            return Err(Error::GeometryMismatch {
                ours: self.geometry,
                theirs: other.geometry,
            });
        }
        let mut newly = 0u64;
        for (to, from) in self.blocks().iter().zip(other.blocks()) {
            for (t, f) in to.0.iter().zip(&from.0) {
                let v = f.load(Relaxed);
                if v & !t.load(Relaxed) != 0 {
                    newly += u64::from((v & !t.fetch_or(v, Relaxed)).count_ones());
                }
            }
        }
        if newly > 0 {
            self.bits_set.fetch_add(newly, Relaxed);
        }
        Ok(())
    }

    /// Occupancy figures, in O(1) from the running count of set bits.
    ///
    /// Keys are estimated by inverting the expected fill of a blocked filter,
    /// X/m = 1 − exp(−(n/B)·(1 − (1 − 1/512)^k)), i.e. n = −B·ln(1 − X/m) / (1 − (1 − 1/512)^k),
    /// which refines the classic n ≈ −(m/k)·ln(1 − X/m) by the chance that a key's positions
    /// coincide. The fpr is then the blocked model at that n. A saturated filter carries no
    /// count: its estimate is a floor of about 257 keys per block (fpr 1).
    pub fn stats(&self) -> Stats {
        let bits = self.geometry.bits();
        let bits_set = self.bits_set.load(Relaxed).min(bits);
        let fill_ratio = bits_set as f64 / bits as f64;
        // A full filter has no finite estimate: treat it as half a bit short of full.
        let fill = fill_ratio.min((bits as f64 - 0.5) / bits as f64);
        let k = f64::from(self.geometry.hash_count);
        let per_key_fill = -(k * (1.0 - 1.0 / BLOCK_BITS as f64).ln()).exp_m1();
        let keys_per_block = -(-fill).ln_1p() / per_key_fill;
        Stats {
            bits,
            bits_set,
            fill_ratio,
            estimated_keys: (keys_per_block * self.geometry.blocks as f64).round() as u64,
            // A full filter answers yes to everything, whatever the model says at the floor.
            estimated_fpr: if bits_set == bits {
                1.0
            } else {
                model_fpr(keys_per_block, self.geometry.hash_count)
            },
        }
    }

    /// The exact false-positive rate for uniformly random absent keys given the current bits:
    /// the mean over blocks of (set bits / 512)^k. O(size of the filter): for tests and
    /// occasional reports, not for hot paths.
    pub fn content_fpr(&self) -> f64 {
        let hash_count = self.geometry.hash_count as i32;
        let sum: f64 = self
            .blocks()
            .iter()
            .map(|b| {
                let set: u32 = b.0.iter().map(|w| w.load(Relaxed).count_ones()).sum();
                (f64::from(set) / BLOCK_BITS as f64).powi(hash_count)
            })
            .sum();
        sum / self.geometry.blocks as f64
    }

    /// Bytes of memory the filter holds (the blocks, rounded up to whole huge pages for
    /// mapped filters).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.held() as u64
    }

    /// Bytes of the filter's memory currently backed by transparent huge pages, from
    /// `/proc/self/smaps`. `None` off Linux, for filters under 2 MiB (heap memory, no huge
    /// pages asked) or if smaps cannot be read. Diagnostics: without huge pages random checks
    /// on big filters run at about half speed.
    pub fn huge_page_bytes(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            let range = self.memory.mapped_range()?;
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
            let mut total = 0u64;
            let mut inside = false;
            for line in smaps.lines() {
                if let Some((span, _)) = line.split_once(' ').filter(|(s, _)| s.contains('-')) {
                    if let Some((a, b)) = span.split_once('-') {
                        if let (Ok(a), Ok(b)) =
                            (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                        {
                            inside = a < range.end && b > range.start;
                            continue;
                        }
                    }
                }
                if inside {
                    if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                        let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
                        total += kb * 1024;
                    }
                }
            }
            Some(total)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// The same filter running a given kernel (to test each kernel against the others).
    #[cfg(test)]
    pub(crate) fn with_kernel(mut self, kernel: Kernel) -> Filter {
        self.kernel = kernel;
        self
    }

    #[inline(always)]
    pub(crate) fn blocks(&self) -> &[Block] {
        self.memory.blocks()
    }

    pub(crate) fn bits_set_counter(&self) -> &AtomicU64 {
        &self.bits_set
    }

    /// The block bytes of a filter nobody else can see yet, for decoding; the decoder then
    /// stores the matching count through `bits_set_counter`.
    pub(crate) fn block_bytes_mut(&mut self) -> &mut [u8] {
        self.memory.bytes_mut()
    }
}

/// Content equality: same geometry and the same bits ("replicas are byte-identical").
impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.geometry == other.geometry
            && self.blocks().iter().zip(other.blocks()).all(|(a, b)| {
                a.0.iter()
                    .zip(&b.0)
                    .all(|(x, y)| x.load(Relaxed) == y.load(Relaxed))
            })
    }
}

impl Eq for Filter {}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with(prefix: u64, lo: u64, hi: u64) -> Key {
        let mut key = [0xAA; 32];
        key[8..16].copy_from_slice(&prefix.to_be_bytes());
        key[16..24].copy_from_slice(&lo.to_le_bytes());
        key[24..32].copy_from_slice(&hi.to_le_bytes());
        key
    }

    /// 9-bit positions packed the way the layout reads them.
    fn pack(positions: &[u64]) -> (u64, u64) {
        let (mut lo, mut hi) = (0, 0);
        for (i, &p) in positions.iter().enumerate() {
            if i < 7 {
                lo |= p << (9 * i);
            } else {
                hi |= p << (9 * (i - 7));
            }
        }
        (lo, hi)
    }

    #[test]
    fn layout_is_stable() {
        // Replicas and snapshots depend on this exact mapping: change it only with a new
        // format version.
        let filter = Filter::new(Geometry {
            blocks: 4,
            hash_count: 14,
        })
        .unwrap();
        let positions = [0, 1, 63, 64, 130, 200, 511, 300, 301, 448, 449, 7, 8, 255];
        let (lo, hi) = pack(&positions);
        // Prefix 0xC0.. is 3/4 of the key space: block 3 of 4.
        let key = key_with(0xC000_0000_0000_0000, lo, hi);
        assert_eq!(filter.block_index(&key), 3);
        assert!(filter.insert(&key));
        assert!(!filter.insert(&key));
        let words: Vec<u64> = filter.blocks()[3]
            .0
            .iter()
            .map(|w| w.load(Relaxed))
            .collect();
        let mut expected = [0u64; 8];
        for p in positions {
            expected[p as usize / 64] |= 1 << (p % 64);
        }
        assert_eq!(words, expected);
        assert_eq!(filter.stats().bits_set, positions.len() as u64);
        for b in [0, 1, 2] {
            assert!(filter.blocks()[b].0.iter().all(|w| w.load(Relaxed) == 0));
        }
        // The two spare top bits of each position word are unused.
        let spare = key_with(0xC000_0000_0000_0000, lo | 1 << 63, hi | 3 << 62);
        assert!(filter.contains(&spare));
    }

    #[test]
    fn only_the_key_bytes_read_matter() {
        assert_eq!(crate::KEY_BYTES_READ, 8..32);
        let filter = Filter::with_capacity(1000, 1e-3).unwrap();
        let key = key_with(
            0x1234_5678_9abc_def0,
            0x0fed_cba9_8765_4321,
            0x1111_2222_3333_4444,
        );
        filter.insert(&key);
        let mut other = key;
        other[..8].copy_from_slice(&[0x55; 8]);
        assert!(filter.contains(&other));
        let again = Filter::with_capacity(1000, 1e-3).unwrap();
        again.insert(&other);
        assert_eq!(filter, again);
    }

    #[test]
    fn block_index_is_monotonic_and_covers_all_blocks() {
        let filter = Filter::new(Geometry {
            blocks: 1000,
            hash_count: 7,
        })
        .unwrap();
        let mut last = 0;
        for i in 0..=4096u64 {
            let prefix = (u128::from(i) * (1u128 << 64) / 4096).min(u128::from(u64::MAX)) as u64;
            let block = filter.block_index(&key_with(prefix, 0, 0));
            assert!(block >= last && block < 1000);
            last = block;
        }
        assert_eq!(filter.block_index(&key_with(0, 0, 0)), 0);
        assert_eq!(filter.block_index(&key_with(u64::MAX, 0, 0)), 999);
    }

    #[test]
    fn every_hash_count_round_trips_through_insert_and_contains() {
        for hash_count in 1..=14 {
            let filter = Filter::new(Geometry {
                blocks: 3,
                hash_count,
            })
            .unwrap();
            let positions: Vec<u64> = (0..14).map(|i| (i * 37 + 5) % 512).collect();
            let (lo, hi) = pack(&positions);
            let key = key_with(u64::MAX / 2, lo, hi);
            assert!(!filter.contains(&key));
            assert!(filter.insert(&key));
            assert!(filter.contains(&key));
            // Exactly the first `hash_count` positions are set.
            assert_eq!(filter.stats().bits_set, u64::from(hash_count));
            let mut out = [false; 1];
            filter.check_batch(&[key], &mut out);
            assert!(out[0]);
        }
    }

    #[test]
    fn insert_batch_counts_bits_like_insert() {
        let one = Filter::with_capacity(10_000, 1e-4).unwrap();
        let many = Filter::with_capacity(10_000, 1e-4).unwrap();
        let keys: Vec<Key> = (0..10_000u64)
            .map(|i| {
                let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                key_with(x, x.rotate_left(17) ^ i, x.rotate_left(41))
            })
            .collect();
        for key in &keys {
            one.insert(key);
        }
        many.insert_batch(&keys);
        assert_eq!(one, many);
        assert_eq!(one.stats(), many.stats());
        let counted: u64 = many
            .blocks()
            .iter()
            .flat_map(|b| b.0.iter())
            .map(|w| u64::from(w.load(Relaxed).count_ones()))
            .sum();
        assert_eq!(many.stats().bits_set, counted);
    }

    #[test]
    #[should_panic(expected = "one slot per key")]
    fn check_batch_rejects_mismatched_output() {
        let filter = Filter::with_capacity(10, 1e-3).unwrap();
        filter.check_batch(&[[0; 32]; 3], &mut [false; 2]);
    }

    #[test]
    fn try_clone_is_equal_and_independent() {
        let filter = Filter::with_capacity(100, 1e-3).unwrap();
        filter.insert(&key_with(1, 2, 3));
        let copy = filter.try_clone().unwrap();
        assert_eq!(copy, filter);
        assert_eq!(copy.stats(), filter.stats());
        copy.insert(&key_with(4, 5, 6));
        assert_ne!(copy, filter);
    }

    /// Pseudo-random keys (SplitMix64), uniform like hash_count.
    fn keys(seed: u64, count: usize) -> Vec<Key> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (0..count)
            .map(|_| key_with(next(), next(), next()))
            .collect()
    }

    #[test]
    fn every_kernel_sets_and_tests_the_same_bits() {
        // The portable kernel and whatever this CPU selects (AVX2 on the dev VM and CI).
        let mut kernels = vec![Kernel::Scalar, Kernel::detect()];
        kernels.dedup();
        for hash_count in 1..=14 {
            let geometry = Geometry {
                blocks: 50,
                hash_count,
            };
            // Few blocks and many keys: dense filters where a wrong bit shows.
            let present = keys(u64::from(hash_count), 2000);
            let mut probes = keys(100 + u64::from(hash_count), 4000);
            probes.extend_from_slice(&present[..100]);
            let reference = Filter::new(geometry).unwrap().with_kernel(Kernel::Scalar);
            for key in &present {
                reference.insert(key);
            }
            let expected: Vec<bool> = probes.iter().map(|k| reference.contains(k)).collect();
            let hits = expected.iter().filter(|&&hit| hit).count();
            assert!(
                hits > 100 && hits < probes.len(),
                "k={hash_count}: {hits} hits"
            );
            for &kernel in &kernels {
                let one = Filter::new(geometry).unwrap().with_kernel(kernel);
                let batch = Filter::new(geometry).unwrap().with_kernel(kernel);
                for key in &present {
                    one.insert(key);
                }
                batch.insert_batch(&present);
                assert_eq!(one, reference, "{kernel:?} k={hash_count} insert");
                assert_eq!(batch, reference, "{kernel:?} k={hash_count} insert_batch");
                assert_eq!(one.stats(), reference.stats(), "{kernel:?} k={hash_count}");
                assert_eq!(
                    batch.stats(),
                    reference.stats(),
                    "{kernel:?} k={hash_count}"
                );
                let single: Vec<bool> = probes.iter().map(|k| one.contains(k)).collect();
                assert_eq!(single, expected, "{kernel:?} k={hash_count} contains");
                let mut out = vec![false; probes.len()];
                one.check_batch(&probes, &mut out);
                assert_eq!(out, expected, "{kernel:?} k={hash_count} check_batch");
            }
        }
    }

    #[test]
    fn filter_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Filter>();
    }
}
