//! The encoded form of a filter (snapshots, files): header, blocks, CRC32.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `LBFILTER` |
//! | 8 | 4 | format version, u32 LE (1) |
//! | 12 | 4 | hash_count (k), u32 LE |
//! | 16 | 8 | blocks, u64 LE |
//! | 24 | 8 | bits set, u64 LE |
//! | 32 | 64 × blocks | the blocks in index order, each as 8 u64 LE words (bit p of a block is bit p % 8 of its byte p / 8) |
//! | end − 4 | 4 | CRC32 (IEEE, `crc32fast`) of every byte before it, u32 LE |

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;

use crate::geometry::{Geometry, BLOCK_BYTES};
use crate::{Error, Filter};

/// First bytes of every encoded filter, so a wrong file is named as such.
pub const MAGIC: [u8; 8] = *b"LBFILTER";
/// Format version written and read; bump it whenever the layout of keys or bytes changes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the blocks: magic, version, hash_count, blocks, bits set.
pub const HEADER_LEN: usize = 32;
/// Bytes of the CRC32 trailer.
const CRC_LEN: usize = 4;
/// Bytes streamed per write or read: big enough for full-speed I/O, small enough for L2.
const CHUNK_BYTES: usize = 64 << 10;

struct Header {
    geometry: Geometry,
    bits_set: u64,
}

fn header_bytes(geometry: Geometry, bits_set: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&geometry.hash_count.to_le_bytes());
    h[16..24].copy_from_slice(&geometry.blocks.to_le_bytes());
    h[24..32].copy_from_slice(&bits_set.to_le_bytes());
    h
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header, Error> {
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if h[0..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let geometry = Geometry {
        hash_count: u32_at(12),
        blocks: u64_at(16),
    };
    geometry.validate()?;
    Ok(Header {
        geometry,
        bits_set: u64_at(24),
    })
}

/// Encoded size of a filter of this geometry (valid geometries only, so no overflow).
fn encoded_len(geometry: Geometry) -> u64 {
    (HEADER_LEN + CRC_LEN) as u64 + geometry.blocks * BLOCK_BYTES
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Filter {
    /// Size in bytes of [`Filter::encode`]'s output.
    pub fn encoded_len(&self) -> u64 {
        encoded_len(self.geometry())
    }

    /// The encoded filter (see the module docs for the format).
    ///
    /// Safe to call while other threads insert: the bits-set count in the header is that of
    /// the blocks actually copied, so the result always decodes. It holds every key inserted
    /// before the call and possibly some inserted during it, which is harmless where inserts
    /// are idempotent and replayed (a Raft snapshot).
    pub fn encode(&self) -> Vec<u8> {
        let len = usize::try_from(self.encoded_len()).expect("a valid geometry fits in memory");
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&header_bytes(self.geometry(), 0));
        let mut counted = 0u64;
        for block in self.blocks() {
            for word in &block.0 {
                let v = word.load(Relaxed);
                counted += u64::from(v.count_ones());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out[24..32].copy_from_slice(&counted.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Streams the encoded filter to `w` in 64 KiB pieces, without a full copy in memory.
    ///
    /// The header's bits-set count is written first, so inserts running concurrently would
    /// make it disagree with the blocks: that is detected and returned as
    /// [`Error::ChangedDuringEncode`] (after the bytes were written: discard them). Stream
    /// only filters no one is inserting into, or use [`Filter::encode`].
    pub fn encode_into<W: Write + ?Sized>(&self, w: &mut W) -> Result<(), Error> {
        let header_count = self.bits_set_counter().load(Relaxed);
        let header = header_bytes(self.geometry(), header_count);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        w.write_all(&header)?;
        let mut counted = 0u64;
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        for chunk in self.blocks().chunks(CHUNK_BYTES / BLOCK_BYTES as usize) {
            buf.clear();
            for word in chunk.iter().flat_map(|b| b.0.iter()) {
                let v = word.load(Relaxed);
                counted += u64::from(v.count_ones());
                buf.extend_from_slice(&v.to_le_bytes());
            }
            crc.update(&buf);
            w.write_all(&buf)?;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
        if counted != header_count {
            return Err(Error::ChangedDuringEncode {
                header: header_count,
                counted,
            });
        }
        Ok(())
    }

    /// Decodes [`Filter::encode`]'s output. Never panics: truncated, over-long, wrong-magic,
    /// wrong-version, invalid-geometry, corrupted (CRC) and inconsistent (bits-set count)
    /// input is an error, and the length is checked against the header before any memory is
    /// allocated.
    pub fn decode(bytes: &[u8]) -> Result<Filter, Error> {
        let got = bytes.len() as u64;
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Truncated {
                got,
                needed: (HEADER_LEN + CRC_LEN) as u64,
            })?;
        let expected = encoded_len(parse_header(header)?.geometry);
        if got < expected {
            return Err(Error::Truncated {
                got,
                needed: expected,
            });
        }
        if got > expected {
            return Err(Error::LengthMismatch { got, expected });
        }
        let mut reader = bytes;
        Filter::decode_from(&mut reader)
    }

    /// Decodes one encoded filter from a stream, reading exactly its bytes.
    ///
    /// A stream has no length to check up front: the header's geometry is validated (at most
    /// 64 GiB) and the filter allocated before the blocks arrive. Memory is mapped lazily, so
    /// a lying header costs address space, not RAM, until its bytes actually come; still, read
    /// only from peers whose size you bounded (e.g. a snapshot's announced length).
    pub fn decode_from<R: Read + ?Sized>(r: &mut R) -> Result<Filter, Error> {
        let mut header = [0u8; HEADER_LEN];
        let n = read_full(r, &mut header)?;
        if n < HEADER_LEN {
            return Err(Error::Truncated {
                got: n as u64,
                needed: (HEADER_LEN + CRC_LEN) as u64,
            });
        }
        let Header { geometry, bits_set } = parse_header(&header)?;
        let needed = encoded_len(geometry);
        let mut filter = Filter::new(geometry)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        let mut got = HEADER_LEN as u64;
        for chunk in filter.block_bytes_mut().chunks_mut(CHUNK_BYTES) {
            let n = read_full(r, chunk)?;
            got += n as u64;
            if n < chunk.len() {
                return Err(Error::Truncated { got, needed });
            }
            crc.update(chunk);
        }
        let mut trailer = [0u8; CRC_LEN];
        let n = read_full(r, &mut trailer)?;
        if n < CRC_LEN {
            return Err(Error::Truncated {
                got: got + n as u64,
                needed,
            });
        }
        let stored = u32::from_le_bytes(trailer);
        let computed = crc.finalize();
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }
        let mut counted = 0u64;
        for word in filter.blocks().iter().flat_map(|b| b.0.iter()) {
            if cfg!(target_endian = "big") {
                word.store(u64::from_le(word.load(Relaxed)), Relaxed);
            }
            counted += u64::from(word.load(Relaxed).count_ones());
        }
        if counted != bits_set {
            return Err(Error::BitsSetMismatch {
                stored: bits_set,
                counted,
            });
        }
        filter.bits_set_counter().store(counted, Relaxed);
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Filter {
        let filter = Filter::new(Geometry {
            blocks: 5,
            hash_count: 9,
        })
        .unwrap();
        for i in 0..40u8 {
            let mut key = [i; 32];
            key[8] = i.wrapping_mul(53);
            key[20] = i.wrapping_mul(97);
            filter.insert(&key);
        }
        filter
    }

    /// Re-seals bytes with a correct CRC, to reach the checks behind it.
    fn reseal(bytes: &mut [u8]) {
        let end = bytes.len() - CRC_LEN;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn header_layout_is_stable() {
        let filter = sample();
        let bytes = filter.encode();
        assert_eq!(bytes.len() as u64, filter.encoded_len());
        assert_eq!(bytes.len(), 32 + 5 * 64 + 4);
        assert_eq!(&bytes[0..8], b"LBFILTER");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 9u32.to_le_bytes());
        assert_eq!(bytes[16..24], 5u64.to_le_bytes());
        assert_eq!(bytes[24..32], filter.stats().bits_set.to_le_bytes());
        let first_word = filter.blocks()[0].0[0].load(Relaxed);
        assert_eq!(bytes[32..40], first_word.to_le_bytes());
    }

    #[test]
    fn round_trip_and_stream_agree() {
        let filter = sample();
        let bytes = filter.encode();
        let mut streamed = Vec::new();
        filter.encode_into(&mut streamed).unwrap();
        assert_eq!(bytes, streamed);
        let back = Filter::decode(&bytes).unwrap();
        assert_eq!(back, filter);
        assert_eq!(back.stats(), filter.stats());
        let back = Filter::decode_from(&mut &streamed[..]).unwrap();
        assert_eq!(back, filter);
    }

    #[test]
    fn decode_from_reads_exactly_one_filter() {
        let a = sample();
        let b = Filter::new(Geometry {
            blocks: 2,
            hash_count: 3,
        })
        .unwrap();
        let mut stream = a.encode();
        stream.extend_from_slice(&b.encode());
        stream.extend_from_slice(b"tail");
        let mut reader = &stream[..];
        assert_eq!(Filter::decode_from(&mut reader).unwrap(), a);
        assert_eq!(Filter::decode_from(&mut reader).unwrap(), b);
        assert_eq!(reader, b"tail");
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let err = Filter::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "len {len}: {err}");
            let err = Filter::decode_from(&mut &bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "len {len}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Filter::decode(&longer),
            Err(Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode();
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                let err = Filter::decode(&bad).unwrap_err();
                let expected_kind = match pos {
                    0..8 => matches!(err, Error::BadMagic),
                    8..12 => matches!(err, Error::UnsupportedVersion { .. }),
                    // Flipping hash_count or blocks either leaves a valid geometry (then the CRC
                    // or the length catches it) or not.
                    12..24 => matches!(
                        err,
                        Error::InvalidGeometry(_)
                            | Error::Checksum { .. }
                            | Error::Truncated { .. }
                            | Error::LengthMismatch { .. }
                    ),
                    _ => matches!(err, Error::Checksum { .. }),
                };
                assert!(expected_kind, "byte {pos} bit {bit}: {err}");
                assert!(Filter::decode_from(&mut &bad[..]).is_err());
            }
        }
    }

    #[test]
    fn resealed_inconsistencies_are_detected() {
        let good = sample().encode();

        let mut bad = good.clone();
        bad[24] ^= 1; // bits-set count
        reseal(&mut bad);
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::BitsSetMismatch { .. })
        ));

        let mut bad = good.clone();
        bad[40] ^= 0x10; // a block bit without fixing the count
        reseal(&mut bad);
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::BitsSetMismatch { .. })
        ));

        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&4u64.to_le_bytes()); // geometry says fewer blocks
        reseal(&mut bad);
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::LengthMismatch { .. })
        ));

        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd size: no allocation
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::InvalidGeometry(_))
        ));

        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes()); // 64 MiB claimed, 320 B given
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::Truncated { needed, .. }) if needed == 36 + (64 << 20)
        ));

        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&15u32.to_le_bytes());
        assert!(matches!(
            Filter::decode(&bad),
            Err(Error::InvalidGeometry(_))
        ));

        let mut bad = good;
        bad[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut bad);
        let err = Filter::decode(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn io_errors_are_reported() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = sample().encode_into(&mut Failing).unwrap_err();
        assert!(matches!(err, Error::Io(_)) && err.to_string().contains("disk full"));
    }
}
