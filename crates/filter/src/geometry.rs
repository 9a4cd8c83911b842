//! Sizing: the blocked-bloom false-positive model and the search for the cheapest geometry.

use std::fmt;

use crate::Error;

/// Bits in one block: one 64-byte cache line, so a check touches exactly one line.
pub const BLOCK_BITS: u64 = 512;
/// Bytes in one block (the cache-line size of x86-64 and of most aarch64 cores).
pub const BLOCK_BYTES: u64 = BLOCK_BITS / 8;
/// Bits of key material per bit position: 2^9 = 512 addresses every bit of a block.
pub const POSITION_BITS: u32 = 9;
/// Most bit positions per key: 14 × 9 = 126 of the 128 bits in key bytes 16..32.
pub const MAX_HASH_COUNT: u32 = 14;
/// Smallest target fpr accepted: it already costs ~232 bits/key, and the model's f64 sum
/// stops being trustworthy much further down.
pub const MIN_FPR: f64 = 1e-12;
/// Largest filter allocated (64 GiB): beyond it a set belongs on more shards, not one node.
pub const MAX_FILTER_BYTES: u64 = 64 << 30;

/// Poisson window half-width in standard deviations: mass outside is < 1e-30, far below
/// [`MIN_FPR`].
const WINDOW_SD: f64 = 12.0;
/// Extra Poisson window terms so that small means (λ < 10) are also covered to < 1e-30.
const WINDOW_EXTRA: f64 = 40.0;
/// Bisection bounds for the keys-per-block load λ: 1e-18 is ~5e20 bits/key (k = 1 at 1e-12
/// needs 5e-10), 1e3 is half a bit per key, fuller than any useful filter.
const LAMBDA_RANGE: (f64, f64) = (1e-18, 1e3);
/// Bisection steps on ln λ: the range spans e^48, so 48 halvings resolve λ to 2e-13 relative.
const BISECTION_STEPS: u32 = 48;
/// Relative size of the Poisson tail left out of the model's sum: far below f64 precision
/// that matters for an fpr target.
const TAIL_CUTOFF: f64 = 1e-17;

/// The shape of a filter: how many 512-bit blocks and how many bits per key.
///
/// Two filters can be combined ([`crate::Filter::union_with`]) only when their geometries
/// are equal. Use [`Geometry::for_capacity`] rather than building one by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Number of 512-bit (64-byte) blocks; a key's block comes from key bytes 8..16.
    pub blocks: u64,
    /// Bits set per key (k), 1..=[`MAX_HASH_COUNT`]; they come from key bytes 16..32.
    pub hash_count: u32,
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} blocks × 512 bits, k = {}",
            self.blocks, self.hash_count
        )
    }
}

impl Geometry {
    /// The cheapest geometry holding `capacity` keys with a false-positive rate of at most
    /// `fpr` according to the blocked-bloom model (see [`model_fpr`]).
    ///
    /// For each k in 1..=14 it finds, by bisection, the largest number of keys per block the
    /// model allows, keeps the k that needs the fewest bits per key, and rounds the block
    /// count up.
    pub fn for_capacity(capacity: u64, fpr: f64) -> Result<Geometry, Error> {
        if capacity == 0 {
            return Err(Error::ZeroCapacity);
        }
        if !(MIN_FPR..1.0).contains(&fpr) {
            return Err(Error::InvalidFpr(fpr));
        }
        let (hash_count, lambda) =
            (1..=MAX_HASH_COUNT)
                .map(|k| (k, max_load(fpr, k)))
                .fold(
                    (0, 0.0),
                    |best, cand| if cand.1 > best.1 { cand } else { best },
                );
        let needed_blocks = (capacity as f64 / lambda).ceil().max(1.0);
        let needed_bytes = needed_blocks * BLOCK_BYTES as f64;
        if needed_bytes > MAX_FILTER_BYTES as f64 {
            return Err(Error::TooLarge {
                capacity,
                fpr,
                bits_per_key: BLOCK_BITS as f64 / lambda,
                needed_bytes: needed_bytes as u128,
            });
        }
        let mut geometry = Geometry {
            blocks: needed_blocks as u64,
            hash_count,
        };
        // Guard against the last ulp of the bisection: add blocks until the model agrees.
        while geometry.expected_fpr(capacity) > fpr && geometry.bytes() < MAX_FILTER_BYTES {
            geometry.blocks += 1;
        }
        geometry.validate()?;
        Ok(geometry)
    }

    /// Checks the ranges a [`crate::Filter`] needs: blocks ≥ 1, 1 ≤ hash_count ≤ 14, at most
    /// [`MAX_FILTER_BYTES`].
    pub fn validate(&self) -> Result<(), Error> {
        let ok = self.blocks >= 1
            && self.blocks <= MAX_FILTER_BYTES / BLOCK_BYTES
            && (1..=MAX_HASH_COUNT).contains(&self.hash_count);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidGeometry(*self))
        }
    }

    /// Total bits (blocks × 512), saturating for absurd block counts.
    pub fn bits(&self) -> u64 {
        self.blocks.saturating_mul(BLOCK_BITS)
    }

    /// Total bytes of filter memory (blocks × 64), saturating for absurd block counts.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(BLOCK_BYTES)
    }

    /// Bytes of memory a filter of this geometry holds ([`crate::Filter::memory_bytes`]): its
    /// blocks, rounded up to whole 2 MiB huge pages when it is mapped (from 2 MiB on, on
    /// Unix). What memory budgets count, computable before the filter exists.
    pub fn memory_bytes(&self) -> u64 {
        let bytes = self.bytes();
        let huge = crate::memory::HUGE_PAGE as u64;
        if cfg!(unix) && bytes >= huge {
            bytes.div_ceil(huge).saturating_mul(huge)
        } else {
            bytes
        }
    }

    /// Bits of filter per key when it holds `keys` keys.
    pub fn bits_per_key(&self, keys: u64) -> f64 {
        self.bits() as f64 / keys.max(1) as f64
    }

    /// The model's false-positive rate once `keys` keys are in the filter.
    pub fn expected_fpr(&self, keys: u64) -> f64 {
        model_fpr(keys as f64 / self.blocks.max(1) as f64, self.hash_count)
    }
}

/// The blocked-bloom false-positive model: the chance that a random absent key hits a block
/// whose k probed bits are all set, when keys per block follow Poisson(λ):
///
/// fpr(λ, k) = Σ_j Poisson(j; λ) · (1 − (1 − 1/512)^(k·j))^k
///
/// Bit positions are drawn with replacement (two of a key's positions may coincide), which is
/// exactly what the 9-bit slices of the key do, so the model is exact for uniform keys up to
/// the Poisson approximation of the binomial block loads.
pub fn model_fpr(keys_per_block: f64, hash_count: u32) -> f64 {
    let lambda = keys_per_block;
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    let k = f64::from(hash_count);
    // ln(1 − 1/512): log of the chance that one random bit position misses a given bit.
    let ln_miss = (-1.0 / BLOCK_BITS as f64).ln_1p();
    let sd = lambda.sqrt();
    let first = (lambda - WINDOW_SD * sd - WINDOW_EXTRA).floor().max(0.0);
    let last = (lambda + WINDOW_SD * sd + WINDOW_EXTRA).ceil();
    // Poisson pmf by recurrence from the window's first term: one log-factorial per call.
    let mut pmf = (-lambda + first * lambda.ln() - ln_factorial(first)).exp();
    let mut sum = 0.0;
    let mut j = first;
    while j <= last {
        let block_fill = -(k * j * ln_miss).exp_m1();
        sum += pmf * block_fill.powi(hash_count as i32);
        j += 1.0;
        pmf *= lambda / j;
        // Past the mean the pmf falls faster than geometrically and fill^k ≤ 1: once it is
        // below TAIL_CUTOFF of the sum, the rest cannot change the result.
        if j > lambda + 1.0 && pmf < sum * TAIL_CUTOFF {
            break;
        }
    }
    sum.min(1.0)
}

/// Largest keys-per-block load λ with `model_fpr(λ, k) <= fpr` (bisection on ln λ).
fn max_load(fpr: f64, hash_count: u32) -> f64 {
    let (mut lo, mut hi) = (LAMBDA_RANGE.0.ln(), LAMBDA_RANGE.1.ln());
    if model_fpr(hi.exp(), hash_count) <= fpr {
        return hi.exp();
    }
    if model_fpr(lo.exp(), hash_count) > fpr {
        return 0.0;
    }
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (lo + hi);
        if model_fpr(mid.exp(), hash_count) <= fpr {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo.exp()
}

/// ln(n!) for a non-negative integer-valued `n`: exact sum below 32, Stirling series above
/// (error < 1e-16 relative there).
fn ln_factorial(n: f64) -> f64 {
    if n < 32.0 {
        let mut acc = 0.0;
        let mut i = 2.0;
        while i <= n {
            acc += f64::ln(i);
            i += 1.0;
        }
        return acc;
    }
    let n2 = n * n;
    n * n.ln() - n + 0.5 * (std::f64::consts::TAU * n).ln() + 1.0 / (12.0 * n)
        - 1.0 / (360.0 * n * n2)
        + 1.0 / (1260.0 * n * n2 * n2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_factorial_is_continuous_across_the_stirling_switch() {
        let exact: f64 = (2..=40).map(|i| f64::ln(i as f64)).sum();
        assert!((ln_factorial(40.0) - exact).abs() < 1e-9 * exact);
        let exact31: f64 = (2..=31).map(|i| f64::ln(i as f64)).sum();
        assert!((ln_factorial(31.0) - exact31).abs() < 1e-12);
        assert_eq!(ln_factorial(0.0), 0.0);
        assert_eq!(ln_factorial(1.0), 0.0);
    }

    #[test]
    fn model_matches_reference_values() {
        // The brief's reference: k = 14 needs ~38.95 bits/key at 1e-6, ~16.3 at 1e-3.
        let at = |bits_per_key: f64, k| model_fpr(BLOCK_BITS as f64 / bits_per_key, k);
        assert!(
            (at(38.95, 14) / 1e-6 - 1.0).abs() < 0.01,
            "{}",
            at(38.95, 14)
        );
        assert!(
            (at(16.33, 14) / 1e-3 - 1.0).abs() < 0.01,
            "{}",
            at(16.33, 14)
        );
        assert!(
            (at(22.13, 14) / 1e-4 - 1.0).abs() < 0.01,
            "{}",
            at(22.13, 14)
        );
        assert_eq!(model_fpr(0.0, 7), 0.0);
        assert!(model_fpr(1e6, 7) > 0.999);
    }

    #[test]
    fn model_is_increasing_in_load() {
        for k in 1..=MAX_HASH_COUNT {
            let mut prev = 0.0;
            for i in 1..200 {
                let f = model_fpr(i as f64 * 0.5, k);
                assert!(f >= prev, "k={k} λ={}", i as f64 * 0.5);
                prev = f;
            }
        }
    }

    #[test]
    fn sizing_table() {
        // (fpr, max bits/key, best k): the crate docs' table, within 0.05 bits/key.
        let table = [
            (1e-2, 9.90, 6),
            (1e-3, 15.49, 9),
            (1e-4, 21.91, 12),
            (1e-5, 29.48, 14),
            (1e-6, 38.95, 14),
            (1e-9, 90.70, 14),
            (1e-12, 231.6, 14),
        ];
        let capacity = 100_000_000;
        for (fpr, bits_per_key, k) in table {
            let g = Geometry::for_capacity(capacity, fpr).unwrap();
            let got = g.bits_per_key(capacity);
            assert_eq!(g.hash_count, k, "fpr {fpr}");
            assert!(
                (got - bits_per_key).abs() < 0.05,
                "fpr {fpr}: {got} bits/key"
            );
            let expected = g.expected_fpr(capacity);
            assert!(expected <= fpr, "fpr {fpr}: model says {expected}");
            assert!(
                expected > 0.99 * fpr,
                "fpr {fpr}: oversized, model says {expected}"
            );
        }
        let g = Geometry::for_capacity(capacity, 1e-6).unwrap();
        assert!(g.bits_per_key(capacity) <= 40.0);
    }

    #[test]
    fn tiny_capacities_get_one_block_and_meet_the_target() {
        for capacity in [1, 2, 3, 10, 31] {
            let g = Geometry::for_capacity(capacity, 1e-6).unwrap();
            assert!(g.blocks >= 1);
            assert!(g.expected_fpr(capacity) <= 1e-6);
        }
        let g = Geometry::for_capacity(1, 0.5).unwrap();
        assert_eq!(g.blocks, 1);
    }

    #[test]
    fn invalid_inputs_are_rejected_with_actionable_messages() {
        assert!(matches!(
            Geometry::for_capacity(0, 1e-3),
            Err(Error::ZeroCapacity)
        ));
        for fpr in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY, 1e-13] {
            let err = Geometry::for_capacity(1000, fpr).unwrap_err();
            assert!(matches!(err, Error::InvalidFpr(_)), "{fpr}: {err}");
            assert!(err.to_string().contains("fpr must be"), "{err}");
        }
        let err = Geometry::for_capacity(u64::MAX, 1e-6).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("more shards"), "{err}");
        // 64 GiB holds ~14.1 G keys at 1e-6; 15 G does not fit.
        assert!(Geometry::for_capacity(14_000_000_000, 1e-6).is_ok());
        assert!(Geometry::for_capacity(15_000_000_000, 1e-6).is_err());
    }

    #[test]
    fn validate_checks_every_range() {
        let ok = Geometry {
            blocks: 1,
            hash_count: 1,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Geometry {
                blocks: 0,
                hash_count: 7,
            },
            Geometry {
                blocks: 8,
                hash_count: 0,
            },
            Geometry {
                blocks: 8,
                hash_count: 15,
            },
            Geometry {
                blocks: MAX_FILTER_BYTES / BLOCK_BYTES + 1,
                hash_count: 7,
            },
            Geometry {
                blocks: u64::MAX,
                hash_count: 7,
            },
        ] {
            let err = bad.validate().unwrap_err();
            assert!(
                matches!(err, Error::InvalidGeometry(g) if g == bad),
                "{err}"
            );
        }
        assert_eq!(
            Geometry {
                blocks: u64::MAX,
                hash_count: 1
            }
            .bits(),
            u64::MAX
        );
    }
}
