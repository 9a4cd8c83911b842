//! Keys: SHA-256 or HMAC-SHA256 of the canonical form, the set's `hashing` field, peppers.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{canonicalize, Error, Kind};

// A key: the 32 bytes the cluster stores and checks. Nothing else about an identifier leaves
// the client.
use leakbloom_cluster::Key;

/// Minimum pepper length in bytes: 128 bits, so the pepper cannot be guessed.
pub const MIN_PEPPER_LEN: usize = 16;

/// Longest pepper id, the same as a set name's, so ids fit wherever names do. Checked before
/// anything else looks at the id, so a `hashing` field of any size costs no more.
pub const MAX_PEPPER_ID_LEN: usize = 64;

/// The `hashing` field's value for unkeyed sets.
const SHA256: &str = "sha256";

/// The `hashing` field's prefix for keyed sets, followed by the pepper id.
const HMAC_SHA256_PREFIX: &str = "hmac-sha256:";

/// How a set derives keys from canonical forms: its `hashing` field.
///
/// Written `sha256` or `hmac-sha256:<pepper-id>`; the pepper id names the pepper (it is not the
/// pepper) and is 1–64 characters of `[a-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hashing {
    /// key = SHA-256(canonical). Anyone can compute keys, so anyone holding the filter can test
    /// guesses against it.
    Sha256,
    /// key = HMAC-SHA256(pepper, canonical). Only holders of the pepper can compute keys.
    HmacSha256 {
        /// Names the pepper the set's keys were made with.
        pepper_id: String,
    },
}

impl Hashing {
    /// The pepper id, for keyed sets.
    pub fn pepper_id(&self) -> Option<&str> {
        match self {
            Hashing::Sha256 => None,
            Hashing::HmacSha256 { pepper_id } => Some(pepper_id),
        }
    }
}

impl fmt::Display for Hashing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hashing::Sha256 => f.write_str(SHA256),
            Hashing::HmacSha256 { pepper_id } => write!(f, "{HMAC_SHA256_PREFIX}{pepper_id}"),
        }
    }
}

impl FromStr for Hashing {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| Error::InvalidHashing { reason };
        if s == SHA256 {
            return Ok(Hashing::Sha256);
        }
        let Some(pepper_id) = s.strip_prefix(HMAC_SHA256_PREFIX) else {
            return Err(invalid("unknown scheme"));
        };
        if pepper_id.is_empty() {
            return Err(invalid("the pepper id is empty"));
        }
        if pepper_id.len() > MAX_PEPPER_ID_LEN {
            return Err(invalid("the pepper id is longer than 64 characters"));
        }
        if !pepper_id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        {
            return Err(invalid("the pepper id has a character outside [a-z0-9._-]"));
        }
        Ok(Hashing::HmacSha256 {
            pepper_id: pepper_id.to_owned(),
        })
    }
}

/// A secret key for HMAC-SHA256 key derivation. `Debug` does not show it.
///
/// Made from a pepper file with [`Pepper::from_file_bytes`]; see the crate docs for the format.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl Pepper {
    /// Makes a pepper from the bytes of a pepper file: the file's bytes with one trailing `"\n"`
    /// or `"\r\n"` removed, which must leave at least [`MIN_PEPPER_LEN`] bytes.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Pepper, Error> {
        let bytes = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if bytes.len() < MIN_PEPPER_LEN {
            return Err(Error::PepperTooShort {
                len: bytes.len(),
                min: MIN_PEPPER_LEN,
            });
        }
        Ok(Pepper(bytes.to_vec()))
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

/// key = SHA-256 of the canonical form's UTF-8 bytes.
pub fn sha256_key(canonical: &str) -> Key {
    Sha256::digest(canonical.as_bytes()).into()
}

/// key = HMAC-SHA256 keyed by the pepper's bytes, over the canonical form's UTF-8 bytes.
pub fn hmac_key(pepper: &Pepper, canonical: &str) -> Key {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&pepper.0).expect("HMAC accepts keys of any length");
    mac.update(canonical.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Canonicalizes an identifier and derives its key: HMAC-SHA256 under `pepper` if one is given,
/// SHA-256 otherwise. Returns the canonical form too (for display; it is as sensitive as the
/// identifier).
pub fn key(
    kind: Kind,
    identifier: &str,
    region: Option<&str>,
    pepper: Option<&Pepper>,
) -> Result<(String, Key), Error> {
    let canonical = canonicalize(kind, identifier, region)?;
    let key = match pepper {
        Some(pepper) => hmac_key(pepper, &canonical),
        None => sha256_key(&canonical),
    };
    Ok((canonical, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_round_trips() {
        for text in [
            "sha256",
            "hmac-sha256:prod-2026",
            "hmac-sha256:a",
            "hmac-sha256:v1.0_rc-2",
        ] {
            let hashing: Hashing = text.parse().unwrap();
            assert_eq!(hashing.to_string(), text);
        }
        assert_eq!("sha256".parse::<Hashing>(), Ok(Hashing::Sha256));
        let keyed: Hashing = "hmac-sha256:prod-2026".parse().unwrap();
        assert_eq!(
            keyed,
            Hashing::HmacSha256 {
                pepper_id: "prod-2026".to_owned()
            }
        );
        assert_eq!(keyed.pepper_id(), Some("prod-2026"));
        assert_eq!(Hashing::Sha256.pepper_id(), None);
        let longest = format!("hmac-sha256:{}", "a".repeat(64));
        assert_eq!(longest.parse::<Hashing>().unwrap().to_string(), longest);
    }

    #[test]
    fn hashing_rejects_others_saying_what_is_accepted() {
        let cases = [
            ("", "unknown scheme"),
            ("SHA256", "unknown scheme"),
            ("sha-256", "unknown scheme"),
            ("sha256 ", "unknown scheme"),
            ("hmac-sha256", "unknown scheme"),
            ("hmac-sha512:x", "unknown scheme"),
            ("hmac-sha256:", "the pepper id is empty"),
            ("hmac-sha256:Prod", "outside [a-z0-9._-]"),
            ("hmac-sha256:a b", "outside [a-z0-9._-]"),
            ("hmac-sha256:a:b", "outside [a-z0-9._-]"),
            ("hmac-sha256:é", "outside [a-z0-9._-]"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<Hashing>().unwrap_err();
            assert!(matches!(err, Error::InvalidHashing { .. }), "{text:?}");
            let message = err.to_string();
            assert!(message.contains(reason), "{text:?}: {message}");
            assert!(message.contains("\"sha256\" or \"hmac-sha256:<pepper-id>\""));
        }
        let too_long = format!("hmac-sha256:{}", "a".repeat(65));
        assert!(too_long
            .parse::<Hashing>()
            .unwrap_err()
            .to_string()
            .contains("longer than 64"));
        // The message never quotes the field: it may be of any size.
        let huge = format!("hmac-sha256:{}", "p".repeat(100_000));
        let message = huge.parse::<Hashing>().unwrap_err().to_string();
        assert!(message.contains("longer than 64"), "{message}");
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn pepper_file_strips_one_trailing_newline() {
        let text = "0123456789abcdef";
        let key_of = |file: &[u8]| hmac_key(&Pepper::from_file_bytes(file).unwrap(), "x");
        let want = key_of(text.as_bytes());
        assert_eq!(key_of(b"0123456789abcdef\n"), want);
        assert_eq!(key_of(b"0123456789abcdef\r\n"), want);
        // Only one newline is removed; anything else is part of the pepper.
        assert_ne!(key_of(b"0123456789abcdef\n\n"), want);
        assert_ne!(key_of(b"0123456789abcdef "), want);
        assert_ne!(key_of(b"0123456789abcdef\r"), want);
        assert_ne!(key_of(b"\n0123456789abcdef"), want);
        // "\n\n" and "\n\r\n" both leave one "\n" in the pepper.
        assert_eq!(
            key_of(b"0123456789abcdef\n\n"),
            key_of(b"0123456789abcdef\n\r\n")
        );
    }

    #[test]
    fn pepper_must_be_at_least_16_bytes() {
        assert!(Pepper::from_file_bytes(&[0u8; 16]).is_ok());
        for file in [
            &b""[..],
            b"\n",
            b"short",
            b"0123456789abcde",
            b"0123456789abcde\n",
            b"0123456789abcde\r\n",
        ] {
            let err = Pepper::from_file_bytes(file).unwrap_err();
            let Error::PepperTooShort { len, min } = err else {
                panic!("{file:?}: {err:?}");
            };
            assert_eq!(min, 16);
            assert!(len < 16);
            assert!(err.to_string().contains("at least 16"), "{err}");
        }
        // Binary peppers are fine.
        assert!(Pepper::from_file_bytes(&[0xff; 32]).is_ok());
    }

    #[test]
    fn pepper_debug_hides_the_secret() {
        let pepper = Pepper::from_file_bytes(b"leakbloom-test-pepper-v1").unwrap();
        let debug = format!("{pepper:?} {:#?}", Some(&pepper));
        assert!(!debug.contains("leakbloom"), "{debug}");
        assert!(!debug.contains("108"), "{debug}"); // b'l' as a decimal byte
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn key_uses_hmac_only_with_a_pepper() {
        let pepper = Pepper::from_file_bytes(b"leakbloom-test-pepper-v1").unwrap();
        let (canonical, plain) = key(Kind::Other, " abc ", None, None).unwrap();
        assert_eq!(canonical, "abc");
        assert_eq!(plain, sha256_key("abc"));
        let (_, keyed) = key(Kind::Other, "abc", None, Some(&pepper)).unwrap();
        assert_eq!(keyed, hmac_key(&pepper, "abc"));
        assert_ne!(keyed, plain);
        assert_eq!(
            key(Kind::Other, "", None, Some(&pepper)),
            Err(Error::Empty { kind: Kind::Other })
        );
    }

    #[test]
    fn sha256_matches_a_published_vector() {
        // FIPS 180-2 example "abc".
        assert_eq!(
            sha256_key("abc"),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
                0xf2, 0x00, 0x15, 0xad
            ]
        );
    }
}
