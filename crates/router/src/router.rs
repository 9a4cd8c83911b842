//! The routing itself, over the client crate's [`Routing`]: the router validates each call with
//! the nodes' own rules, then routes it exactly as a direct client would (split by shard,
//! grouped per node, sent concurrently, merged back into request order, retried where it
//! failed, any-replica parts hedged: see [`leakbloom_client::routing`]).
//!
//! # Validation
//! A request is checked with the nodes' own rules before any of it is forwarded (keys, set
//! names, the number of sets, the size of a check's answer: [`validate_check`]), so that a bad
//! request is answered here and never reaches a node's shared connection. Messages to and
//! from the nodes are limited to what the batch limit needs
//! ([`leakbloom_cluster::max_request_bytes`], [`leakbloom_cluster::MAX_REPLY_BYTES`]).
//!
//! # Deadlines
//! A routed call gives up at the client's `grpc-timeout`, at most `--timeout-ms`
//! ([`DEFAULT_TIMEOUT`]); every node call carries what is left of it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakbloom_client::coalesce::Coalescer;
use leakbloom_client::routing::{Observer, Routing};
use leakbloom_client::Check;
use leakbloom_cluster::{check_bits, check_set_count, split_keys, Consistency, Key, ShardMap};
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::nodes_client::NodesClient;
use leakbloom_proto::v1::{CheckRequest, CheckResponse, InsertRequest};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::error::{check_name, Result};

/// Deadline of a routed call when the client sets none: long enough to ride out a leader
/// election (1-2 s) and a node's own proposal retries (up to 5 s).
pub const DEFAULT_TIMEOUT: Duration = leakbloom_client::DIRECT_TIMEOUT;

/// The router: routing state and the coalescer of small checks and inserts. Cheap to share
/// (`Arc`).
#[derive(Debug)]
pub struct Router {
    routing: Arc<Routing>,
    /// Shares node calls between concurrent small checks, and between small inserts.
    coalescer: Arc<Coalescer>,
}

impl Router {
    /// A router that learns the cluster from `seeds` (node client addresses, `HOST:PORT`),
    /// accepts at most `max_batch` keys per request (or the nodes' limit, when smaller), and
    /// hedges any-replica check parts unanswered for `hedge` more than the recent p99 of node
    /// calls (zero: never), reporting to `observer`. It knows nothing until
    /// [`refresh`](Self::refresh) (or [`run_refresh`](Self::run_refresh)) reaches a node.
    pub fn new(
        seeds: Vec<String>,
        hedge: Duration,
        observer: Arc<dyn Observer>,
        max_batch: usize,
    ) -> Router {
        Router {
            routing: Arc::new(Routing::new(seeds, hedge, max_batch, observer)),
            coalescer: Arc::default(),
        }
    }

    /// The current map, if any node has answered yet.
    pub fn map(&self) -> Option<Arc<ShardMap>> {
        self.routing.map()
    }

    /// Asks the nodes for their views now, unless a refresh finished after `after`.
    pub async fn refresh(&self, after: Instant) -> Result<Arc<ShardMap>> {
        Ok(self.routing.refresh(after).await?)
    }

    /// Refreshes the map every second, for ever. Calls `ready` once the first map is known.
    pub async fn run_refresh(self: Arc<Router>, ready: impl FnOnce()) {
        self.routing.clone().run_refresh(ready).await
    }

    /// Which of `request.sets` may contain each key: split by shard over the nodes, merged.
    pub async fn check(&self, request: CheckRequest, deadline: Instant) -> Result<CheckResponse> {
        let map = self.routing.current().await?;
        validate_check(&request, self.routing.max_batch(&map))?;
        let consistency = Consistency::try_from(request.consistency)?;
        let check = Check {
            sets: &request.sets,
            packed: &request.keys,
            consistency,
            deadline,
        };
        let results = self.routing.check(&self.coalescer, check).await?;
        Ok(CheckResponse { results })
    }

    /// Adds keys to a set: each node gets the keys of the shards it leads, in one call (small
    /// parts shared with other inserts into the set).
    pub async fn insert(&self, request: InsertRequest, deadline: Instant) -> Result<u64> {
        let map = self.routing.current().await?;
        split_keys(&request.keys, self.routing.max_batch(&map))?;
        check_name(&request.set)?;
        Ok(self
            .routing
            .insert(&self.coalescer, &request.set, &request.keys, deadline)
            .await?)
    }

    /// Calls `call` on one node after another until one answers, retrying retryable failures
    /// until `deadline`: for the set-management calls, which any node serves.
    pub async fn any_node<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(LookupClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        Ok(self.routing.any_node(deadline, call).await?)
    }

    /// [`any_node`](Self::any_node) for the operators' `Nodes` service.
    pub async fn any_node_nodes<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(NodesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        Ok(self.routing.any_node_nodes(deadline, call).await?)
    }
}

/// Checks a check request with the nodes' rules, before any of it is forwarded: 1 to
/// `max_batch` whole keys, at most [`leakbloom_cluster::MAX_CHECK_SETS`] sets, each a valid
/// name, and at most [`leakbloom_cluster::MAX_CHECK_BITS`] set-key pairs. Returns the keys.
pub fn validate_check(request: &CheckRequest, max_batch: usize) -> Result<&[Key]> {
    let keys = split_keys(&request.keys, max_batch)?;
    check_set_count(request.sets.len())?;
    for name in &request.sets {
        check_name(name)?;
    }
    check_bits(request.sets.len(), keys.len())?;
    Ok(keys)
}

/// The deadline a client asked for in its `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`), capped at `default`; `default` when it set none or sent garbage.
pub fn deadline<T>(request: &Request<T>, default: Duration) -> Instant {
    let asked = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    Instant::now() + asked.map_or(default, |asked| asked.min(default))
}

fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn checks_are_validated_before_they_are_forwarded() {
        use leakbloom_cluster::BatchError;
        let check = |sets: Vec<String>, keys: usize| CheckRequest {
            sets,
            keys: vec![0u8; keys * leakbloom_cluster::KEY_LEN].into(),
            consistency: 0,
        };
        let name = |i: usize| format!("set-{i}");
        assert_eq!(validate_check(&check(vec![], 3), 4).unwrap().len(), 3);
        let sets: Vec<String> = (0..1024).map(name).collect();
        assert_eq!(validate_check(&check(sets, 16), 16).unwrap().len(), 16);
        assert!(matches!(
            validate_check(&check(vec![name(1)], 5), 4),
            Err(Error::Batch(BatchError::TooLarge { keys: 5, max: 4 }))
        ));
        let too_many: Vec<String> = (0..1025).map(name).collect();
        assert!(matches!(
            validate_check(&check(too_many, 1), 4),
            Err(Error::Batch(BatchError::TooManySets { sets: 1025 }))
        ));
        let bad = vec![name(1), "a".repeat(60_000)];
        assert!(matches!(
            validate_check(&check(bad, 1), 4),
            Err(Error::SetName { .. })
        ));
        // 65 sets x 2^20 keys is over 2^26 set-key pairs.
        let sets: Vec<String> = (0..65).map(name).collect();
        assert!(matches!(
            validate_check(&check(sets.clone(), 1 << 20), 1 << 20),
            Err(Error::Batch(BatchError::TooManyBits {
                sets: 65,
                keys: 1_048_576
            }))
        ));
        validate_check(&check(sets[..64].to_vec(), 1 << 20), 1 << 20).unwrap();
    }
}
