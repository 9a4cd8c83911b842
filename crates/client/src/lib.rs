//! Rust client for leakbloom's `leakbloom.v1.Lookup` API.
//!
//! [`Client`] wraps the generated tonic client: it packs keys into batches no larger than the
//! server's limit, splits larger inputs into several requests, and unpacks the reply bitmaps
//! into one `Vec<bool>` per set. Keys are 32-byte hashes ([`Key`]); turn identifiers into keys
//! with the `leakbloom-ident` crate first.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leakbloom_client::Error> {
//! let mut client = leakbloom_client::Client::connect("127.0.0.1:50051").await?;
//! client.create_set("facebook-2021", 533_000_000, 1e-6, "sha256").await?;
//! let key = [7u8; 32];
//! client.insert("facebook-2021", &[key]).await?;
//! let results = client.check(&[], &[key], leakbloom_client::Consistency::Linearizable).await?;
//! assert!(results[0].present[0]);
//! # Ok(()) }
//! ```
//!
//! # Request rules
//! The rules every node and router apply to a request, with the messages that say how to fix
//! it, live here so that both say the same: key batches ([`split_keys`], [`BatchError`]), set
//! names ([`check_set_name`]), the size of a check ([`check_set_count`], [`check_bits`]), the
//! message sizes they imply ([`max_request_bytes`], [`MAX_REPLY_BYTES`]), and how errors quote
//! a client's strings and how long a status message may be ([`quote`], [`bound_message`]).

use std::time::Duration;

use bytes::Bytes;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{
    CheckRequest, CreateSetRequest, DropSetRequest, GetSetRequest, InsertRequest, ListSetsRequest,
};
use tonic::transport::{Channel, Endpoint};

pub use leakbloom_proto::v1::SetInfo;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// A key: SHA-256 or HMAC-SHA256 of an identifier's canonical form.
pub type Key = [u8; KEY_LEN];

/// Metadata key of an `UNAVAILABLE` status that names the node id leading the shard, when
/// the node that answered knows it. Nodes set it; routers and clients may follow it.
pub const LEADER_METADATA: &str = "leakbloom-leader";

/// Keys per request unless told otherwise: the server's default limit.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// How long to wait for a TCP connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 frame size: 256 KiB frames carry big batches in far fewer syscalls than 16 KiB ones.
const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// Why packed key bytes are not a valid batch: the rules every node and router apply to the
/// `keys` field of a `Check` or an `Insert`, with messages that say how to fix the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// No keys.
    #[error("keys is empty: send 1 to {max} keys of {KEY_LEN} bytes each, concatenated")]
    Empty {
        /// The batch limit.
        max: usize,
    },
    /// The packed key bytes are not a whole number of keys.
    #[error(
        "keys is {len} bytes, not a multiple of {KEY_LEN}: send whole {KEY_LEN}-byte keys \
         (SHA-256 or HMAC-SHA256 outputs), concatenated"
    )]
    KeyLength {
        /// Length of the `keys` field in bytes.
        len: usize,
    },
    /// More keys than the server accepts in one request.
    #[error("batch of {keys} keys is over the limit of {max} keys per request: split it")]
    TooLarge {
        /// Keys in the request.
        keys: usize,
        /// The batch limit (the nodes' `max_batch`).
        max: usize,
    },
    /// A check naming more sets than one request may.
    #[error(
        "a check naming {sets} sets is over the limit of {MAX_CHECK_SETS} sets per request: \
         name fewer sets (or none, to check every set)"
    )]
    TooManySets {
        /// Sets the check names.
        sets: usize,
    },
    /// A check whose answer would be too large: more set-key pairs than [`MAX_CHECK_BITS`].
    #[error(
        "a check of {sets} sets x {keys} keys is over the limit of {MAX_CHECK_BITS} set-key \
         pairs: split the keys or name fewer sets"
    )]
    TooManyBits {
        /// Sets checked.
        sets: usize,
        /// Keys checked.
        keys: usize,
    },
}

/// Views packed key bytes as whole keys.
pub fn whole_keys(packed: &[u8]) -> Result<&[Key], BatchError> {
    match packed.as_chunks::<KEY_LEN>() {
        (keys, []) => Ok(keys),
        _ => Err(BatchError::KeyLength { len: packed.len() }),
    }
}

/// Views packed key bytes as keys after checking the batch limits: 1 to `max` whole keys.
pub fn split_keys(packed: &[u8], max: usize) -> Result<&[Key], BatchError> {
    match whole_keys(packed)? {
        [] => Err(BatchError::Empty { max }),
        keys if keys.len() > max => Err(BatchError::TooLarge {
            keys: keys.len(),
            max,
        }),
        keys => Ok(keys),
    }
}

/// Most sets one check may name: with a full default batch (65 536 keys) that is
/// [`MAX_CHECK_BITS`], and it is the nodes' default `max_sets`.
pub const MAX_CHECK_SETS: usize = 1024;

/// Most set-key pairs (sets x keys) one check may ask about: 8 MiB of reply bitmaps, e.g.
/// 1024 sets x 65 536 keys. It bounds the reply as `max_batch` bounds the request.
pub const MAX_CHECK_BITS: u64 = 1 << 26;

/// Checks that a check names at most [`MAX_CHECK_SETS`] sets.
pub fn check_set_count(sets: usize) -> Result<(), BatchError> {
    if sets > MAX_CHECK_SETS {
        return Err(BatchError::TooManySets { sets });
    }
    Ok(())
}

/// Checks that a check of `sets` sets x `keys` keys is within [`MAX_CHECK_BITS`].
pub fn check_bits(sets: usize, keys: usize) -> Result<(), BatchError> {
    if (sets as u64).saturating_mul(keys as u64) > MAX_CHECK_BITS {
        return Err(BatchError::TooManyBits { sets, keys });
    }
    Ok(())
}

/// Longest set name. Names appear in metrics, logs and URLs; 64 characters is plenty for
/// `facebook-2021`-style names.
pub const MAX_SET_NAME_LEN: usize = 64;

/// Why a set name is refused. Set names are 1-64 characters of `[a-z0-9._-]`, the rule every
/// node and router applies before using one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`MAX_SET_NAME_LEN`].
    #[error("it is {len} bytes long, the limit is {MAX_SET_NAME_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character outside `[a-z0-9._-]`.
    #[error("{0:?} is not allowed; use 1-{MAX_SET_NAME_LEN} characters of [a-z0-9._-]")]
    Character(char),
}

/// Checks a set name: 1-64 characters of `[a-z0-9._-]`. The length is checked first, so a
/// name of any size costs no more than 64 characters' work.
pub fn check_set_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_SET_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    match name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        Some(c) => Err(NameError::Character(c)),
        None => Ok(()),
    }
}

/// Most characters of a client's string that an error message quotes: a whole set name or
/// pepper id, and no more, so that no request can make a message long.
pub const MAX_QUOTED_CHARS: usize = 64;

/// A client-supplied string (a set name, a `hashing` field) as an error message quotes it:
/// escaped and quoted like `{:?}`, and past [`MAX_QUOTED_CHARS`] characters cut, with `…` and
/// its whole length after the quotes: `"aaaa…" (60000 bytes)`.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// Longest gRPC status message a node or router sends. It travels in the `grpc-message`
/// header, percent-encoded (at most 3 KiB), far below the 16 KiB header list an HTTP/2 peer
/// accepts by default: a longer one makes the receiver reset the whole connection, failing
/// every other call on it.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message` cut to at most [`MAX_STATUS_MESSAGE_BYTES`] bytes on a character boundary,
/// ending in `…` when cut: what every status a node or router makes carries.
pub fn bound_message(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
    message
}

/// Bytes a set name adds to a message beyond its characters, at most: its field's tag and
/// length and, in a reply, the enclosing `SetResult`'s and the bitmap's tags and lengths.
const SET_FIELD_BYTES: usize = 16;

/// Bytes of a message beyond its keys, bitmaps and set names (tags, lengths, consistency),
/// with room to spare.
const MESSAGE_SLACK: usize = 1 << 10;

/// Largest `Check` or `Insert` request within the limits: `max_batch` keys and
/// [`MAX_CHECK_SETS`] set names. What a server must decode and a client may encode (2.1 MiB
/// at the default `max_batch`); anything larger is refused before it is read.
pub const fn max_request_bytes(max_batch: usize) -> usize {
    max_batch * KEY_LEN + MAX_CHECK_SETS * (MAX_SET_NAME_LEN + SET_FIELD_BYTES) + MESSAGE_SLACK
}

/// Largest `Check` reply within the limits: [`MAX_CHECK_BITS`] of bitmaps (each rounded up to
/// whole bytes) for [`MAX_CHECK_SETS`] sets, 8.1 MiB. What a server may encode and a client
/// must decode; it also holds `ListSets` of thousands of sets.
pub const MAX_REPLY_BYTES: usize = (MAX_CHECK_BITS / 8) as usize
    + MAX_CHECK_SETS * (MAX_SET_NAME_LEN + SET_FIELD_BYTES + 1)
    + MESSAGE_SLACK;

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid endpoint.
    #[error("invalid server address {addr:?}: {source}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source} (is a leakbloom node or router running there?)")]
    Connect {
        /// The address given.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The server's reply does not match the request.
    #[error("malformed reply from server: {0}")]
    Reply(String),
}

/// Read consistency of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every insert acknowledged before the check started.
    #[default]
    Linearizable,
    /// Any replica's applied state: fastest, may miss a very recent insert.
    AnyReplica,
}

impl From<Consistency> for leakbloom_proto::v1::Consistency {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => leakbloom_proto::v1::Consistency::Linearizable,
            Consistency::AnyReplica => leakbloom_proto::v1::Consistency::AnyReplica,
        }
    }
}

/// One set's answer for every key of a check, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The set.
    pub set: String,
    /// `present[i]`: key i may be in the set (false: it certainly is not).
    pub present: Vec<bool>,
}

/// A connection to a leakbloom node or router.
#[derive(Debug, Clone)]
pub struct Client {
    inner: LookupClient<Channel>,
    max_batch: usize,
}

impl Client {
    /// Connects to `addr` (`host:port`, or a `http://` URL).
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url).map_err(|source| Error::Address {
            addr: addr.to_string(),
            source,
        })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .max_frame_size(HTTP2_MAX_FRAME_SIZE)
            .connect()
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Client {
            inner: LookupClient::new(channel),
            max_batch: DEFAULT_MAX_BATCH,
        }
        .with_max_batch(DEFAULT_MAX_BATCH))
    }

    /// Sends at most `max_batch` keys per request (match the server's `max_batch`).
    pub fn with_max_batch(mut self, max_batch: usize) -> Client {
        self.max_batch = max_batch.max(1);
        self.inner = self
            .inner
            .max_encoding_message_size(max_request_bytes(self.max_batch))
            .max_decoding_message_size(MAX_REPLY_BYTES);
        self
    }

    /// The generated tonic client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut LookupClient<Channel> {
        &mut self.inner
    }

    /// Creates a set (idempotent with equal parameters). `hashing` is `sha256` or
    /// `hmac-sha256:<pepper-id>`.
    pub async fn create_set(
        &mut self,
        name: &str,
        capacity: u64,
        fpr: f64,
        hashing: &str,
    ) -> Result<SetInfo, Error> {
        let request = CreateSetRequest {
            name: name.to_string(),
            capacity,
            fpr,
            hashing: hashing.to_string(),
        };
        Ok(self.inner.create_set(request).await?.into_inner())
    }

    /// Drops a set and all its keys.
    pub async fn drop_set(&mut self, name: &str) -> Result<(), Error> {
        let request = DropSetRequest {
            name: name.to_string(),
        };
        self.inner.drop_set(request).await?;
        Ok(())
    }

    /// Every set, in name order.
    pub async fn list_sets(&mut self) -> Result<Vec<SetInfo>, Error> {
        Ok(self
            .inner
            .list_sets(ListSetsRequest {})
            .await?
            .into_inner()
            .sets)
    }

    /// One set with its statistics.
    pub async fn get_set(&mut self, name: &str) -> Result<SetInfo, Error> {
        let request = GetSetRequest {
            name: name.to_string(),
        };
        Ok(self.inner.get_set(request).await?.into_inner())
    }

    /// Inserts keys into a set, in batches of at most `max_batch`. Returns the number of keys
    /// acknowledged. Safe to retry: inserts are idempotent.
    pub async fn insert(&mut self, set: &str, keys: &[Key]) -> Result<u64, Error> {
        let mut acknowledged = 0;
        for batch in keys.chunks(self.max_batch) {
            let request = InsertRequest {
                set: set.to_string(),
                keys: Bytes::from(batch.concat()),
            };
            acknowledged += self.inner.insert(request).await?.into_inner().keys;
        }
        Ok(acknowledged)
    }

    /// Which of `sets` (every set when empty) may contain each key.
    pub async fn check(
        &mut self,
        sets: &[String],
        keys: &[Key],
        consistency: Consistency,
    ) -> Result<Vec<Membership>, Error> {
        let mut merged: Vec<Membership> = Vec::new();
        // Within the batch limit, and within MAX_CHECK_BITS for the sets named.
        let per_request = (MAX_CHECK_BITS / sets.len().max(1) as u64) as usize;
        let per_request = self.max_batch.min(per_request).max(1);
        for (n, batch) in keys.chunks(per_request).enumerate() {
            let request = CheckRequest {
                sets: sets.to_vec(),
                keys: Bytes::from(batch.concat()),
                consistency: leakbloom_proto::v1::Consistency::from(consistency).into(),
            };
            let results = self.inner.check(request).await?.into_inner().results;
            if n == 0 {
                merged = results
                    .iter()
                    .map(|r| Membership {
                        set: r.set.clone(),
                        present: Vec::with_capacity(keys.len()),
                    })
                    .collect();
            }
            if results.len() != merged.len() {
                return Err(Error::Reply(format!(
                    "{} set results for batch {n}, {} for the first batch (was a set created \
                     or dropped meanwhile?)",
                    results.len(),
                    merged.len()
                )));
            }
            for (membership, result) in merged.iter_mut().zip(&results) {
                if membership.set != result.set || result.present.len() != batch.len().div_ceil(8) {
                    return Err(Error::Reply(format!(
                        "unexpected result for set {:?} in batch {n}",
                        result.set
                    )));
                }
                membership
                    .present
                    .extend((0..batch.len()).map(|i| result.present[i / 8] & (1 << (i % 8)) != 0));
            }
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_limits_are_checked() {
        assert_eq!(split_keys(&[], 4), Err(BatchError::Empty { max: 4 }));
        assert_eq!(
            split_keys(&[0; 33], 4),
            Err(BatchError::KeyLength { len: 33 })
        );
        assert_eq!(
            split_keys(&[0; 5 * KEY_LEN], 4),
            Err(BatchError::TooLarge { keys: 5, max: 4 })
        );
        assert_eq!(split_keys(&[0; 2 * KEY_LEN], 4).unwrap().len(), 2);
        assert_eq!(whole_keys(&[]).unwrap().len(), 0);
    }

    #[test]
    fn checks_are_limited_in_sets_and_set_key_pairs() {
        check_set_count(MAX_CHECK_SETS).unwrap();
        assert_eq!(
            check_set_count(MAX_CHECK_SETS + 1),
            Err(BatchError::TooManySets { sets: 1025 })
        );
        check_bits(1024, 65_536).unwrap();
        check_bits(1, 1 << 26).unwrap();
        check_bits(usize::MAX, 0).unwrap();
        let error = check_bits(1025, 65_536).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a check of 1025 sets x 65536 keys is over the limit of 67108864 set-key pairs: \
             split the keys or name fewer sets"
        );
        assert!(check_bits(usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn set_names_follow_the_rule() {
        for ok in ["facebook-2021", "a", "x.y_z-0", &"a".repeat(64)] {
            check_set_name(ok).unwrap();
        }
        assert_eq!(check_set_name(""), Err(NameError::Empty));
        assert_eq!(
            check_set_name(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65 })
        );
        assert_eq!(check_set_name("a b"), Err(NameError::Character(' ')));
        assert_eq!(check_set_name("Facebook"), Err(NameError::Character('F')));
        assert_eq!(check_set_name("é"), Err(NameError::Character('é')));
        // Too long is said before any character is looked at.
        assert_eq!(
            check_set_name(&"É".repeat(60_000)),
            Err(NameError::TooLong { len: 120_000 })
        );
    }

    #[test]
    fn quotes_are_short_whatever_the_input() {
        assert_eq!(quote("facebook-2021"), r#""facebook-2021""#);
        assert_eq!(quote("a\"b\n"), r#""a\"b\n""#);
        let whole = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quote(&whole), format!("{whole:?}"));
        let long = "y".repeat(60_000);
        assert_eq!(
            quote(&long),
            format!("\"{}\"… (60000 bytes)", "y".repeat(MAX_QUOTED_CHARS))
        );
        // Cut on a character boundary: 64 two-byte characters.
        let wide = "é".repeat(1000);
        assert_eq!(
            quote(&wide),
            format!("\"{}\"… (2000 bytes)", "é".repeat(MAX_QUOTED_CHARS))
        );
    }

    #[test]
    fn status_messages_are_bounded_on_a_character_boundary() {
        assert_eq!(bound_message("short".into()), "short");
        let exact = "x".repeat(MAX_STATUS_MESSAGE_BYTES);
        assert_eq!(bound_message(exact.clone()), exact);
        let long = bound_message("x".repeat(100_000));
        assert_eq!(long.len(), MAX_STATUS_MESSAGE_BYTES);
        assert!(long.ends_with("x…"), "{long}");
        // Three-byte characters never split: the cut backs up to a boundary.
        for shift in 0..3 {
            let text = format!("{}{}", "a".repeat(shift), "€".repeat(1000));
            let cut = bound_message(text);
            assert!(cut.len() <= MAX_STATUS_MESSAGE_BYTES, "{}", cut.len());
            assert!(cut.len() > MAX_STATUS_MESSAGE_BYTES - 6, "{}", cut.len());
            assert!(cut.ends_with("€…"), "{cut}");
        }
    }

    #[test]
    fn message_limits_hold_the_largest_valid_request_and_reply() {
        use leakbloom_proto::v1::{CheckRequest, CheckResponse, SetResult};
        use prost::Message as _;
        let name = "n".repeat(MAX_SET_NAME_LEN);
        let request = CheckRequest {
            sets: (0..MAX_CHECK_SETS).map(|_| name.clone()).collect(),
            keys: vec![0u8; DEFAULT_MAX_BATCH * KEY_LEN].into(),
            consistency: 2,
        };
        let size = request.encoded_len();
        assert!(size <= max_request_bytes(DEFAULT_MAX_BATCH), "{size}");
        const { assert!(max_request_bytes(DEFAULT_MAX_BATCH) < 3 << 20) };
        // 1024 sets x 65 536 keys, and 1024 sets x 65 535 keys (bitmaps rounded up).
        for keys in [DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH - 1] {
            check_bits(MAX_CHECK_SETS, keys).unwrap();
            let reply = CheckResponse {
                results: (0..MAX_CHECK_SETS)
                    .map(|_| SetResult {
                        set: name.clone(),
                        present: vec![0xff; keys.div_ceil(8)].into(),
                    })
                    .collect(),
            };
            assert!(reply.encoded_len() <= MAX_REPLY_BYTES, "{keys}");
        }
        const { assert!(MAX_REPLY_BYTES < 9 << 20) };
    }
}
