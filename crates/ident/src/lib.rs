//! Identifier canonical forms and key derivation: how a phone number, an email address or any
//! other identifier becomes the 32-byte key that is all the leakbloom cluster ever sees.
//!
//! Clients in every language must derive the same key from the same identifier, so the rules
//! here are exact, and `testdata/vectors.json` lets other implementations check themselves (see
//! [Test vectors](#test-vectors)). No async, no I/O: strings and bytes in, strings and keys out.
//!
//! # Layout
//!
//! - `canonical.rs`: [`Kind`] and [`canonicalize`]; the email and other rules.
//! - `phone.rs`: the phone rule, which parses with the `phonenumber` crate and follows
//!   libphonenumber where that crate differs (its module docs list how).
//! - `hashing.rs`: [`sha256_key`], [`hmac_key`], [`key`], a set's [`Hashing`] field and
//!   the [`Pepper`].
//! - `error.rs`: the one [`Error`] type.
//!
//! # Canonical forms
//!
//! **phone** → E.164, `+447400123456`.
//! 1. Trim surrounding whitespace. Only ASCII digits, whitespace, `+`, `-`, `.`, `/`, `(`, `)`,
//!    `[`, `]`, `~` and the dashes U+2010–U+2015 and U+2212 are accepted: no letters (no vanity
//!    numbers, extensions or `tel:` URIs), no other symbols, no non-ASCII digits.
//! 2. Parse with libphonenumber's rules. The default region (ISO 3166-1 alpha-2, such as `GB`,
//!    case-insensitive) is needed for numbers not in international form; numbers starting with
//!    `+` ignore it, and numbers starting with the region's international dialling prefix
//!    (`00`, `011`, ...) are international too.
//! 3. The number must be valid (of a known type in its region's numbering plan), not only
//!    possible.
//!
//! **email** → `local@domain`, lowercase, ASCII domain.
//! 1. Trim surrounding whitespace; whitespace or control characters inside are an error.
//! 2. Exactly one `@`, with a non-empty local part and domain.
//! 3. Lowercase all of it (Unicode lowercase), then convert the domain to ASCII with IDNA
//!    (UTS #46 nontransitional processing without STD3 rules: `user@bücher.example` →
//!    `user@xn--bcher-kva.example`; `straße.example` → `xn--strae-oqa.example`, `ß` is not
//!    mapped to `ss`).
//! 4. Nothing else: no gmail dot or plus folding (Have I Been Pwned does none either); insert
//!    variants explicitly if they should match. The local part is not Unicode-normalized.
//!
//! **other** → trimmed, Unicode NFC; no case folding. Empty after trimming is an error.
//!
//! # Keys
//!
//! A key is SHA-256 of the canonical form's UTF-8 bytes ([`sha256_key`]), or for keyed sets
//! HMAC-SHA256 keyed by the pepper's bytes over the same ([`hmac_key`]). A set's `hashing` field
//! says which: `sha256` or `hmac-sha256:<pepper-id>` ([`Hashing`]), where the pepper id names
//! the pepper (1–[`MAX_PEPPER_ID_LEN`] characters of `[a-z0-9._-]`, its length checked
//! before anything else) and the pepper itself never leaves its holders.
//! Keyed sets stop anyone who gets hold of the filter, but not the pepper, from testing guesses
//! against it; unkeyed keys of phone numbers can be brute-forced by anyone.
//!
//! # Pepper file
//!
//! A pepper file holds the pepper's bytes, any bytes at all, with at most one trailing `"\n"`
//! or `"\r\n"`, which is not part of the pepper (so `echo` and editors can write it). What
//! remains must be at least [`MIN_PEPPER_LEN`] (16) bytes; 32 random bytes are a good pepper:
//!
//! ```text
//! head -c 32 /dev/urandom > pepper.bin          # binary, no newline
//! openssl rand -hex 32 > pepper.txt             # 64 hex characters and a newline: the pepper
//!                                               # is the 64 ASCII characters, not 32 bytes
//! ```
//!
//! [`Pepper::from_file_bytes`] reads it; a [`Pepper`]'s `Debug` output never shows the bytes.
//!
//! # Test vectors
//!
//! `crates/ident/testdata/vectors.json` lists identifiers with their kind, default region,
//! canonical form and both keys, under the test pepper `leakbloom-test-pepper-v1` (given in the
//! file as UTF-8 and hex), and invalid identifiers with the category of their error (as
//! [`Error::category`] names it). `testdata/phones.json` adds about 10 000 phone numbers in every
//! region with libphonenumber's reading of them. Both are written by `testdata/gen_vectors.py`
//! from Python's `phonenumbers`, `idna`, `hashlib` and `hmac`, not from this crate, and this
//! crate's tests check every case.
//!
//! # Errors
//!
//! [`Error`] messages say what is wrong and how to fix it, and never contain the identifier
//! (identifiers are sensitive and messages get logged). A caller handling many identifiers
//! should report the position of the bad one.
//!
//! # Caveats
//!
//! - Phone validity depends on the numbering-plan metadata, which changes as countries open
//!   ranges: the `phonenumber` crate's version (0.3.10+9.0.33, pinned by `Cargo.lock`) embeds
//!   libphonenumber 9.0.33's. Clients should use the same metadata version, or a number valid
//!   for one and not the other is accepted by one client and rejected by the other (the keys of
//!   numbers both accept agree). Upgrading it means regenerating the vectors with the matching
//!   Python `phonenumbers` version. Mostly numbers only become valid or invalid then; the E.164
//!   form of a number valid under both versions practically never changes.
//! - Ofcom's drama numbers (07700 900xxx) and similar fictional ranges are not valid numbers.
//! - The `phonenumber` crate rejects a few oddly punctuated numbers that libphonenumber reads
//!   ("+431.68476"); see `phone.rs`.
//! - Phone parsing costs about 20 µs per number on one core (release build), dominated by the
//!   `phonenumber` crate's parser; plan bulk imports accordingly.
//! - The pepper is not wiped from memory when dropped.

mod canonical;
mod error;
mod hashing;
mod phone;

pub use canonical::{canonicalize, Kind};
pub use error::Error;
pub use hashing::{hmac_key, key, sha256_key, Hashing, Pepper, MAX_PEPPER_ID_LEN, MIN_PEPPER_LEN};
