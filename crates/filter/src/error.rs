//! The crate's one error type.

use crate::geometry::{Geometry, MAX_FILTER_BYTES, MAX_HASH_COUNT, MIN_FPR};

/// Everything that can go wrong in the engine that a caller can do something about.
///
/// Bugs (a `check_batch` output slice of the wrong length, say) panic instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Geometry::for_capacity` was asked for zero keys.
    #[error("capacity must be at least 1 key; size the set for the number of keys you expect")]
    ZeroCapacity,

    /// The target false-positive rate is not a usable probability.
    #[error("fpr must be a number with {MIN_FPR:e} <= fpr < 1 (got {0}); e.g. 1e-6")]
    InvalidFpr(f64),

    /// The filter would exceed [`MAX_FILTER_BYTES`].
    #[error(
        "a filter for {capacity} keys at fpr {fpr:e} needs {needed_bytes} bytes \
         ({bits_per_key:.1} bits/key), over the {MAX_FILTER_BYTES}-byte (64 GiB) limit of one \
         filter: spread the set over more shards, lower the capacity or raise the fpr"
    )]
    TooLarge {
        /// Requested capacity in keys.
        capacity: u64,
        /// Requested target fpr.
        fpr: f64,
        /// Bits per key the cheapest geometry needs at that fpr.
        bits_per_key: f64,
        /// Bytes that capacity would need.
        needed_bytes: u128,
    },

    /// A geometry given directly (or read from an encoded filter) is out of range.
    #[error(
        "invalid geometry {0}: blocks must be >= 1 and at most {max_blocks} (64 GiB), \
         hash_count between 1 and {MAX_HASH_COUNT}; use Geometry::for_capacity to size a filter",
        max_blocks = MAX_FILTER_BYTES / 64
    )]
    InvalidGeometry(Geometry),

    /// Two filters of different geometry were combined.
    #[error(
        "geometry mismatch: this filter is {ours}, the other is {theirs}; only filters created \
         with the same capacity and fpr can be combined"
    )]
    GeometryMismatch {
        /// Geometry of `self`.
        ours: Geometry,
        /// Geometry of the argument.
        theirs: Geometry,
    },

    /// The operating system (or allocator) refused the filter's memory.
    #[error("could not allocate {bytes} bytes for the filter: {source}; free memory or size the set smaller")]
    Alloc {
        /// Bytes requested.
        bytes: u64,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// The encoded filter ends early.
    #[error("encoded filter is truncated: got {got} bytes, the format needs {needed}")]
    Truncated {
        /// Bytes available.
        got: u64,
        /// Bytes the header says (or the minimum header size).
        needed: u64,
    },

    /// The bytes do not start with [`crate::MAGIC`].
    #[error("not an encoded leakbloom filter: the first 8 bytes are not the magic \"LBFILTER\"")]
    BadMagic,

    /// The format version is not one this build reads.
    #[error("encoded filter has format version {found}; this build reads version {supported}: upgrade leakbloom")]
    UnsupportedVersion {
        /// Version in the bytes.
        found: u32,
        /// Version this build writes and reads.
        supported: u32,
    },

    /// More bytes than the header's geometry accounts for.
    #[error("encoded filter length {got} does not match its geometry, which needs exactly {expected} bytes")]
    LengthMismatch {
        /// Bytes available.
        got: u64,
        /// Bytes the geometry needs.
        expected: u64,
    },

    /// The CRC32 over header and blocks does not match: the bytes were damaged.
    #[error("encoded filter is corrupted: CRC32 stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the trailer.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },

    /// The header's bits-set count disagrees with the blocks (encoder bug or tampering).
    #[error(
        "encoded filter is inconsistent: header says {stored} bits set, the blocks have {counted}"
    )]
    BitsSetMismatch {
        /// Count in the header.
        stored: u64,
        /// Set bits counted in the blocks.
        counted: u64,
    },

    /// `encode_into` saw inserts while streaming; what it wrote must be discarded.
    #[error(
        "the filter changed while encode_into streamed it ({header} bits set in the header, \
         {counted} written); discard the output and retry without concurrent inserts, or use encode()"
    )]
    ChangedDuringEncode {
        /// Count written in the header.
        header: u64,
        /// Set bits in the blocks actually written.
        counted: u64,
    },

    /// Reading or writing an encoded filter failed.
    #[error("I/O error on an encoded filter: {0}")]
    Io(#[from] std::io::Error),
}
