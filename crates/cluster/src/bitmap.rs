//! A check's answer for one set: bit i (byte i / 8, bit i % 8, least significant first) is set
//! when key i may be in the set. The one place in leakbloom that computes bit positions in
//! such a bitmap.

/// Bytes of a bitmap over `bits` keys.
pub const fn bytes_for(bits: usize) -> usize {
    bits.div_ceil(8)
}

/// Bit `i` of a borrowed bitmap; bits beyond its end read as 0.
pub fn get(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
}

/// An owned bitmap over a known number of keys.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitmap {
    bytes: Vec<u8>,
    len: usize,
}

impl Bitmap {
    /// All bits clear, for `len` keys.
    pub fn new(len: usize) -> Bitmap {
        Bitmap {
            bytes: vec![0; bytes_for(len)],
            len,
        }
    }

    /// Bits `0..len` of `bytes` (a node's answer for `len` keys); `None` when `bytes` is too
    /// short to hold them. Bits past `len` are cleared.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Option<Bitmap> {
        let needed = bytes_for(len);
        if bytes.len() < needed {
            return None;
        }
        let mut bitmap = Bitmap {
            bytes: bytes[..needed].to_vec(),
            len,
        };
        if !len.is_multiple_of(8) {
            bitmap.bytes[needed - 1] &= (1u8 << (len % 8)) - 1;
        }
        Some(bitmap)
    }

    /// Sets bit `i`.
    pub fn set(&mut self, i: usize) {
        debug_assert!(i < self.len, "bit {i} of a bitmap of {}", self.len);
        self.bytes[i / 8] |= 1 << (i % 8);
    }

    /// Bit `i`.
    pub fn get(&self, i: usize) -> bool {
        get(&self.bytes, i)
    }

    /// Sets bit `positions[j]` for every bit j set in `part`: a part's answer put back at its
    /// keys' positions in the whole request.
    pub fn scatter(&mut self, part: &[u8], positions: &[u32]) {
        for (j, &i) in positions.iter().enumerate() {
            if get(part, j) {
                self.set(i as usize);
            }
        }
    }

    /// Bits `from..from + len` of `bitmap`, as a bitmap of their own: one request's share of
    /// an answer to several requests sent as one.
    pub fn slice(bitmap: &[u8], from: usize, len: usize) -> Bitmap {
        let mut out = Bitmap::new(len);
        for j in 0..len {
            if get(bitmap, from + j) {
                out.set(j);
            }
        }
        out
    }

    /// The bits as booleans, key order.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.get(i)).collect()
    }

    /// The packed bytes, as the wire carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The packed bytes, as the wire carries them.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_least_significant_first() {
        let mut bitmap = Bitmap::new(10);
        bitmap.set(0);
        bitmap.set(9);
        assert_eq!(bitmap.as_bytes(), &[0b1, 0b10]);
        assert!(bitmap.get(9) && !bitmap.get(8));
        assert!(!get(bitmap.as_bytes(), 100), "past the end reads 0");
        assert_eq!(bitmap.to_bools().iter().filter(|b| **b).count(), 2);
    }

    #[test]
    fn parts_scatter_to_their_positions() {
        let mut whole = Bitmap::new(10);
        // The part's keys 0 and 2 are present; they are the request's keys 9 and 4.
        whole.scatter(&[0b101], &[9, 0, 4]);
        assert_eq!(whole.as_bytes(), &[0b1_0000, 0b10]);
    }

    #[test]
    fn slices_cut_at_any_offset() {
        let bitmap = [0b1010_1100u8, 0b0000_0001];
        assert_eq!(Bitmap::slice(&bitmap, 0, 3).as_bytes(), &[0b100]);
        assert_eq!(Bitmap::slice(&bitmap, 2, 3).as_bytes(), &[0b011]);
        assert_eq!(Bitmap::slice(&bitmap, 7, 2).as_bytes(), &[0b11]);
        assert_eq!(Bitmap::slice(&bitmap, 8, 9).as_bytes(), &[0b1, 0]);
    }

    #[test]
    fn answers_shorter_than_their_keys_are_refused() {
        assert_eq!(Bitmap::from_bytes(&[0xff], 9), None);
        let bitmap = Bitmap::from_bytes(&[0xff, 0xff], 9).unwrap();
        assert_eq!(
            bitmap.as_bytes(),
            &[0xff, 0b1],
            "bits past the keys cleared"
        );
        assert_eq!(Bitmap::from_bytes(&[], 0), Some(Bitmap::new(0)));
    }
}
