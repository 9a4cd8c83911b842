//! Rust client for leakbloom's `leakbloom.v1.Lookup` API, through a router or routing itself.
//!
//! [`Client`] packs keys into batches no larger than the cluster's limit, splits larger inputs
//! into several requests, and unpacks the reply bitmaps into one `Vec<bool>` per set. Keys are
//! 32-byte hashes ([`Key`]); turn identifiers into keys with the `leakbloom-ident` crate first.
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
//! # Through a router, or direct
//! [`Client::connect`] sends every call to one address: a router, or any node (nodes route
//! too, with one more hop inside). [`Client::direct`] routes itself, as Redis Cluster and TiKV
//! clients do: it learns the shard map from the nodes given (and refreshes it every second and
//! on failures), sends each shard's keys straight to a replica that holds it (the leader for
//! inserts and linearizable checks), and retries and merges with the router's own code
//! ([`routing`], over `leakbloom-cluster`'s plan, merge and retry policy). Use the router for
//! clients in any language, one address to configure, and firewalls that expose one port;
//! use direct from Rust services that want the hop's latency and CPU back.
//!
//! # Layout
//! - `routing.rs`: [`Routing`], the shard map kept fresh, channels per node, the routed call
//!   (plan, send, hedge, merge, retry) and calls any node serves; `routed.rs`: the routed
//!   check and insert.
//! - `coalesce.rs`: small check and insert parts bound for one node share calls; `hedge.rs`:
//!   how long an any-replica part waits before it is hedged.
//! - `status.rs`: what a failed call's status means for retrying; `channel.rs`: how every
//!   connection is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use leakbloom_cluster::{Bitmap, MAX_CHECK_BITS};
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{
    CheckRequest, CreateSetRequest, DropSetRequest, GetSetRequest, InsertRequest, ListSetsRequest,
    SetResult,
};
use tonic::transport::Channel;

pub mod channel;
pub mod coalesce;
pub mod hedge;
mod routed;
pub mod routing;
pub mod status;

pub use leakbloom_cluster::{Consistency, Key, DEFAULT_MAX_BATCH, KEY_LEN};
pub use leakbloom_proto::v1::SetInfo;
pub use routed::Check;
pub use routing::{RouteError, Routing};

use crate::coalesce::Coalescer;
use crate::routing::Unobserved;

/// How long to wait for the first TCP connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of a direct client's call: long enough to ride out a leader election (1-2 s) and
/// a node's own proposal retries (up to 5 s), as the router's default.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A direct call failed: no shard map, retries ran out, or a node's error.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The server's reply does not match the request.
    #[error("malformed reply from server: {0}")]
    Reply(String),
}

/// One set's answer for every key of a check, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The set.
    pub set: String,
    /// `present[i]`: key i may be in the set (false: it certainly is not).
    pub present: Vec<bool>,
}

/// A direct client's routing state, shared by its clones; the background refresh stops when
/// the last clone is dropped.
#[derive(Debug)]
struct Direct {
    routing: Arc<Routing>,
    coalescer: Arc<Coalescer>,
    refresh: tokio::task::JoinHandle<()>,
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

/// A connection to a leakbloom cluster: through one address (a router or a node), or direct
/// to the nodes.
#[derive(Debug, Clone)]
pub struct Client {
    /// The address connected to (in direct mode, the first node given).
    inner: LookupClient<Channel>,
    /// Set in direct mode.
    direct: Option<Arc<Direct>>,
    max_batch: usize,
}

impl Client {
    /// Connects to `addr` (`host:port`, or a `http://` URL): a router, or any node.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let endpoint = channel::endpoint(addr).map_err(|source| Error::Address {
            addr: addr.to_string(),
            source,
        })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Client {
            inner: LookupClient::new(channel),
            direct: None,
            max_batch: DEFAULT_MAX_BATCH,
        }
        .with_max_batch(DEFAULT_MAX_BATCH))
    }

    /// A client that routes itself: learns the shard map from `nodes` (client addresses of
    /// any nodes of the cluster; it finds the others) and sends each shard's keys straight to
    /// a replica. Fails when none of them answers.
    pub async fn direct(nodes: &[String]) -> Result<Client, Error> {
        let first = nodes.first().ok_or_else(|| {
            Error::Route(RouteError::NoMap {
                reason: "no node address given".into(),
            })
        })?;
        // Connected on first use: the first node may be down while the others answer.
        let mut client = Client {
            inner: LookupClient::new(channel::lazy(first)?),
            direct: None,
            max_batch: DEFAULT_MAX_BATCH,
        };
        let routing = Arc::new(Routing::new(
            nodes.to_vec(),
            Duration::ZERO,
            usize::MAX,
            Arc::new(Unobserved),
        ));
        let map = routing.refresh(Instant::now()).await?;
        let refresh = tokio::spawn(routing.clone().run_refresh(|| ()));
        client.direct = Some(Arc::new(Direct {
            routing,
            coalescer: Arc::default(),
            refresh,
        }));
        Ok(client.with_max_batch(map.max_batch.min(DEFAULT_MAX_BATCH)))
    }

    /// Sends at most `max_batch` keys per request (match the server's `max_batch`).
    pub fn with_max_batch(mut self, max_batch: usize) -> Client {
        self.max_batch = max_batch.max(1);
        self.inner = self
            .inner
            .max_encoding_message_size(leakbloom_cluster::max_request_bytes(self.max_batch))
            .max_decoding_message_size(leakbloom_cluster::MAX_REPLY_BYTES);
        self
    }

    /// Whether this client routes itself.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The generated tonic client to the address connected to (in direct mode, the first node
    /// given), for calls this wrapper does not cover.
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
        self.manage(|mut node| {
            let request = request.clone();
            async move { node.create_set(request).await }
        })
        .await
    }

    /// Drops a set and all its keys.
    pub async fn drop_set(&mut self, name: &str) -> Result<(), Error> {
        let request = DropSetRequest {
            name: name.to_string(),
        };
        self.manage(|mut node| {
            let request = request.clone();
            async move { node.drop_set(request).await }
        })
        .await?;
        Ok(())
    }

    /// Every set, in name order.
    pub async fn list_sets(&mut self) -> Result<Vec<SetInfo>, Error> {
        let listed = self
            .manage(|mut node| async move { node.list_sets(ListSetsRequest {}).await })
            .await?;
        Ok(listed.sets)
    }

    /// One set with its statistics.
    pub async fn get_set(&mut self, name: &str) -> Result<SetInfo, Error> {
        let request = GetSetRequest {
            name: name.to_string(),
        };
        self.manage(|mut node| {
            let request = request.clone();
            async move { node.get_set(request).await }
        })
        .await
    }

    /// A set-management call, which any node serves: on the address connected to, or in
    /// direct mode on one node after another until one answers (retrying until
    /// [`DIRECT_TIMEOUT`]).
    async fn manage<T, F, Fut>(&mut self, call: F) -> Result<T, Error>
    where
        F: Fn(LookupClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match &self.direct {
            Some(direct) => {
                let deadline = Instant::now() + DIRECT_TIMEOUT;
                Ok(direct.routing.any_node(deadline, call).await?)
            }
            None => Ok(call(self.inner.clone()).await?.into_inner()),
        }
    }

    /// Inserts keys into a set, in batches of at most `max_batch`. Returns the number of keys
    /// acknowledged. Safe to retry: inserts are idempotent.
    pub async fn insert(&mut self, set: &str, keys: &[Key]) -> Result<u64, Error> {
        let mut acknowledged = 0;
        for batch in keys.chunks(self.max_batch) {
            acknowledged += self.insert_packed(set, Bytes::from(batch.concat())).await?;
        }
        Ok(acknowledged)
    }

    /// Inserts one batch of packed keys (at most `max_batch`) into a set.
    pub async fn insert_packed(&mut self, set: &str, keys: Bytes) -> Result<u64, Error> {
        if let Some(direct) = &self.direct {
            let deadline = Instant::now() + DIRECT_TIMEOUT;
            let insert = direct
                .routing
                .insert(&direct.coalescer, set, &keys, deadline);
            return Ok(insert.await?);
        }
        let request = InsertRequest {
            set: set.to_string(),
            keys,
        };
        Ok(self.inner.insert(request).await?.into_inner().keys)
    }

    /// Checks one batch of packed keys (at most `max_batch`) against `sets` (every set when
    /// empty): one bitmap per set, as the wire carries it.
    pub async fn check_packed(
        &mut self,
        sets: &[String],
        keys: Bytes,
        consistency: Consistency,
    ) -> Result<Vec<SetResult>, Error> {
        if let Some(direct) = &self.direct {
            let check = Check {
                sets,
                packed: &keys,
                consistency,
                deadline: Instant::now() + DIRECT_TIMEOUT,
            };
            return Ok(direct.routing.check(&direct.coalescer, check).await?);
        }
        let request = CheckRequest {
            sets: sets.to_vec(),
            keys,
            consistency: consistency.wire(),
        };
        Ok(self.inner.check(request).await?.into_inner().results)
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
            let packed = Bytes::from(batch.concat());
            let results = self.check_packed(sets, packed, consistency).await?;
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
                let bits = Bitmap::from_bytes(&result.present, batch.len())
                    .filter(|_| membership.set == result.set);
                let Some(bits) = bits else {
                    return Err(Error::Reply(format!(
                        "unexpected result for set {:?} in batch {n}",
                        result.set
                    )));
                };
                membership.present.extend(bits.to_bools());
            }
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_limits_hold_the_largest_valid_request_and_reply() {
        use leakbloom_cluster::{
            check_bits, max_request_bytes, MAX_CHECK_SETS, MAX_REPLY_BYTES, MAX_SET_NAME_LEN,
        };
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
