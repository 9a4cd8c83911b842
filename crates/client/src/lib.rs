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

/// Largest reply accepted: a check of a full batch against many sets.
const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;

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
            inner: LookupClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            max_batch: DEFAULT_MAX_BATCH,
        })
    }

    /// Sends at most `max_batch` keys per request (match the server's `max_batch`).
    pub fn with_max_batch(mut self, max_batch: usize) -> Client {
        self.max_batch = max_batch.max(1);
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
        for (n, batch) in keys.chunks(self.max_batch).enumerate() {
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
}
