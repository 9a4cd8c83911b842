//! The routing itself: the shard map kept fresh, one persistent channel per node, and each
//! call split by shard, grouped per node, sent concurrently, merged back into request order,
//! and retried where it failed.
//!
//! # Validation
//! A request is checked with the nodes' own rules before any of it is forwarded (keys, set
//! names, the number of sets, the size of a check's answer: [`validate_check`]), so that a bad
//! request is answered here and never reaches a node's shared connection. Messages to and
//! from the nodes are limited to what the batch limit needs
//! ([`leakbloom_client::max_request_bytes`], [`leakbloom_client::MAX_REPLY_BYTES`]).
//!
//! # Retries
//! A part that fails with a retryable status (no leader, node down or restarting, connection
//! lost: [`retryable`]) is planned again over a refreshed map and sent again, with backoff,
//! until the call's deadline (the client's `grpc-timeout`, else [`DEFAULT_TIMEOUT`]). Only
//! that part's keys go again; the parts that succeeded stay. Inserts are idempotent, so a part
//! retried after its first try committed on some shards is harmless. Any other status is the
//! client's to see and is passed on unchanged.
//!
//! # Hedged reads
//! A node can stop answering without failing: a frozen process (SIGSTOP, a stalled VM, a disk
//! stall) keeps its TCP connection up, so its calls neither fail nor answer until the deadline.
//! An any-replica check part that a node has not answered within the hedge delay (the recent
//! p99 of node calls plus `--hedge-ms`: [`HedgeDelay`]) is therefore planned again over the
//! other replicas of its keys' shards ([`Plan::hedge`]) and sent there too: the first complete
//! answer wins and the other call is dropped (cancelled). Small parts are hedged alike, through the coalescer of
//! the other node. Inserts and linearizable checks are not hedged: they go to leaders, and a
//! frozen leader is replaced by a Raft election (its calls then fail and are retried).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use leakbloom_filter::KEY_LEN;
use leakbloom_proto::v1::cluster_client::ClusterClient;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{
    CheckRequest, CheckResponse, Consistency, GetShardMapRequest, InsertRequest, SetResult,
    ShardMap,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use leakbloom_client::{check_bits, check_set_count, split_keys, Key};

use crate::coalesce::{Coalescer, SMALL_PART_KEYS};
use crate::error::{check_name, retryable, Error, Result};
use crate::hedge::HedgeDelay;
use crate::map::{Map, MapError, NodeId, Plan};
use crate::metrics::Metrics;

/// Deadline of a routed call when the client sets none: long enough to ride out a leader
/// election (1-2 s) and a node's own proposal retries (up to 5 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the shard map is refreshed when nothing fails: leaders move (elections, the
/// handback to preferred replicas) and the router should follow within about a second.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refresh waits for each node's map: a node that is down must not hold it up.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// First pause before a retry, doubled per retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Longest pause between retries: elections take 1-2 s; retry several times within one.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// TCP connect timeout to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 keepalive: notices a node that vanished without closing its connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a keepalive ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 frame size towards the nodes: as on the nodes, 256 KiB frames carry large batches in
/// far fewer syscalls.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// The router: a shard map and channels to the nodes. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Router {
    /// Node client addresses from the command line; asked on every refresh with the
    /// discovered ones.
    seeds: Vec<String>,
    /// The last map learned; `None` until a node answered.
    map: RwLock<Option<Arc<Map>>>,
    /// One lazily connecting channel per node address.
    channels: Mutex<BTreeMap<String, Channel>>,
    /// When the last refresh finished; held during a refresh so that concurrent failures
    /// share one.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Shares node calls between concurrent small checks.
    coalescer: Arc<Coalescer>,
    /// Rotates any-replica reads and management calls over the nodes.
    spread: AtomicUsize,
    /// How long an any-replica check part waits before it is hedged; `None`: never hedged.
    hedge: Option<HedgeDelay>,
    metrics: Arc<Metrics>,
    /// Most keys per request the router accepts (the nodes' `max_batch` when smaller).
    max_batch: usize,
}

impl Router {
    /// A router that learns the cluster from `seeds` (node client addresses, `HOST:PORT`) and
    /// accepts at most `max_batch` keys per request (or the nodes' limit, when smaller), and
    /// hedges any-replica check parts unanswered for `hedge` more than the recent p99 of node
    /// calls (zero: never). It knows nothing until [`refresh`](Self::refresh) (or
    /// [`run_refresh`](Self::run_refresh)) reaches a node.
    pub fn new(
        seeds: Vec<String>,
        hedge: Duration,
        metrics: Arc<Metrics>,
        max_batch: usize,
    ) -> Router {
        Router {
            seeds,
            map: RwLock::new(None),
            channels: Mutex::new(BTreeMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
            coalescer: Arc::default(),
            spread: AtomicUsize::new(0),
            hedge: (!hedge.is_zero()).then(|| HedgeDelay::new(hedge)),
            metrics,
            max_batch,
        }
    }

    /// The current map, if any node has answered yet.
    pub fn map(&self) -> Option<Arc<Map>> {
        self.map.read().expect("map lock").clone()
    }

    /// The channel to `address`, created (lazily connecting) on first use.
    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::unavailable(format!("invalid node address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .max_frame_size(HTTP2_MAX_FRAME_SIZE)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// A `Lookup` client for node `node` of `map`.
    fn lookup(&self, map: &Map, node: NodeId) -> Result<LookupClient<Channel>, Status> {
        let address = map
            .addresses
            .get(&node)
            .ok_or_else(|| Status::unavailable(format!("node {node}'s address is unknown")))?;
        Ok(LookupClient::new(self.channel(address)?)
            .max_decoding_message_size(leakbloom_client::MAX_REPLY_BYTES)
            .max_encoding_message_size(leakbloom_client::max_request_bytes(self.max_batch)))
    }

    /// Asks every known node (seeds and discovered) for its view and merges the answers,
    /// unless another refresh finished after `after` (then its map is used). Nodes that do not
    /// answer count as down until the next refresh.
    pub async fn refresh(&self, after: Instant) -> Result<Arc<Map>> {
        let mut refreshed = self.refreshed.lock().await;
        if let (Some(when), Some(map)) = (*refreshed, self.map()) {
            if when > after {
                return Ok(map);
            }
        }
        self.metrics.refresh();
        let mut addresses: Vec<String> = self.seeds.clone();
        if let Some(map) = self.map() {
            addresses.extend(map.addresses.values().cloned());
        }
        addresses.sort();
        addresses.dedup();
        let answers = join_all(addresses.iter().map(|address| async move {
            let channel = self.channel(address)?;
            let mut client = ClusterClient::new(channel);
            let call = client.get_shard_map(GetShardMapRequest {});
            match tokio::time::timeout(REFRESH_TIMEOUT, call).await {
                Ok(answer) => answer.map(|answer| answer.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("no answer within 1 s")),
            }
        }))
        .await;
        let mut maps: Vec<ShardMap> = Vec::new();
        let mut failures = Vec::new();
        for (address, answer) in addresses.iter().zip(answers) {
            match answer {
                Ok(map) => maps.push(map),
                Err(status) => failures.push(format!("{address}: {}", status.message())),
            }
        }
        *refreshed = Some(Instant::now());
        let merged = Map::merge(&maps).map_err(|error| match error {
            MapError::NoAnswer => Error::NoMap {
                reason: failures.join("; "),
            },
            other => other.into(),
        });
        let merged = match merged {
            Ok(map) => Arc::new(map),
            Err(error) => {
                // Keep routing over the last map, with every node marked down.
                let mut stale = self.map.write().expect("map lock");
                if let Some(map) = stale.as_mut() {
                    Arc::make_mut(map).up.clear();
                }
                tracing::warn!(%error, "shard map refresh failed");
                return Err(error);
            }
        };
        if !failures.is_empty() {
            tracing::debug!(failures = ?failures, "some nodes did not answer the refresh");
        }
        let changed = self.map().as_deref() != Some(&*merged);
        if changed {
            tracing::info!(
                shards = merged.shards,
                nodes = ?merged.addresses,
                up = ?merged.up,
                "shard map updated"
            );
        }
        self.metrics.nodes_up(merged.up.len());
        *self.map.write().expect("map lock") = Some(merged.clone());
        Ok(merged)
    }

    /// Refreshes the map every [`REFRESH_INTERVAL`], for ever. Calls `ready` once the first
    /// map is known.
    pub async fn run_refresh(self: Arc<Router>, ready: impl FnOnce()) {
        let mut ready = Some(ready);
        loop {
            if self.refresh(Instant::now()).await.is_ok() {
                if let Some(ready) = ready.take() {
                    ready();
                }
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
    }

    /// The map, refreshing first when there is none yet.
    async fn current(&self) -> Result<Arc<Map>> {
        match self.map() {
            Some(map) => Ok(map),
            None => self.refresh(Instant::now()).await,
        }
    }

    /// Which of `request.sets` may contain each key: split by shard over the nodes, merged.
    pub async fn check(&self, request: CheckRequest, deadline: Instant) -> Result<CheckResponse> {
        match self.check_once(&request, deadline).await {
            Err(Error::SetsChanged(names)) => {
                // "Every set" meant different sets on different nodes (a set was being
                // created or dropped): ask again for the first answer's sets by name.
                let explicit = CheckRequest {
                    sets: names,
                    ..request
                };
                self.check_once(&explicit, deadline).await
            }
            other => other,
        }
    }

    async fn check_once(&self, request: &CheckRequest, deadline: Instant) -> Result<CheckResponse> {
        let map = self.current().await?;
        let keys = validate_check(request, map.max_batch.min(self.max_batch))?;
        let linearizable = match Consistency::try_from(request.consistency) {
            Ok(Consistency::AnyReplica) => false,
            Ok(_) => true,
            Err(_) => return Err(Error::Consistency(request.consistency)),
        };
        let spread = self.spread.fetch_add(1, Ordering::Relaxed);
        // Any-replica reads may be hedged on another replica; leader reads may not.
        let hedge = self
            .hedge
            .as_ref()
            .filter(|_| !linearizable)
            .map(|delay| Hedge { delay, spread });
        let mut merged: Option<Merged> = None;
        let batch = Batch {
            packed: &request.keys,
            deadline,
            hedge,
        };
        self.route(
            map,
            batch,
            |map, shard| match (linearizable, shard) {
                (true, Some(shard)) => map.leader_target(shard),
                (true, None) => None,
                (false, Some(shard)) => map.replica_target(shard, spread),
                (false, None) => map.whole_target(spread),
            },
            |mut client, node, part| {
                let coalescer = &self.coalescer;
                async move {
                    let answer = if part.len() / KEY_LEN <= SMALL_PART_KEYS {
                        coalescer
                            .check(
                                client,
                                node,
                                &request.sets,
                                request.consistency,
                                part,
                                deadline,
                            )
                            .await?
                    } else {
                        let sub = CheckRequest {
                            sets: request.sets.clone(),
                            keys: part,
                            consistency: request.consistency,
                        };
                        client
                            .check(with_deadline(sub, deadline))
                            .await?
                            .into_inner()
                    };
                    Ok(answer)
                }
            },
            |node, positions, answer| {
                match &mut merged {
                    None if positions.len() == keys.len() => {
                        check_names(&request.sets, &answer, node)?;
                        merged = Some(Merged::Whole(answer));
                    }
                    None => {
                        check_names(&request.sets, &answer, node)?;
                        let mut scattered = Merged::empty(&answer, keys.len());
                        scattered.scatter(&answer, positions, node)?;
                        merged = Some(scattered);
                    }
                    Some(whole) => whole.scatter(&answer, positions, node)?,
                }
                Ok(())
            },
        )
        .await?;
        Ok(merged.expect("a routed batch has a part").into_response())
    }

    /// Adds keys to a set: each node gets the keys of the shards it leads, in one call.
    pub async fn insert(&self, request: InsertRequest, deadline: Instant) -> Result<u64> {
        let map = self.current().await?;
        split_keys(&request.keys, map.max_batch.min(self.max_batch))?;
        check_name(&request.set)?;
        let mut acknowledged = 0u64;
        let batch = Batch {
            packed: &request.keys,
            deadline,
            hedge: None,
        };
        self.route(
            map,
            batch,
            |map, shard| shard.and_then(|shard| map.leader_target(shard)),
            |mut client, _, part| {
                let sub = InsertRequest {
                    set: request.set.clone(),
                    keys: part,
                };
                async move {
                    let answer = client.insert(with_deadline(sub, deadline)).await?;
                    Ok(answer.into_inner().keys)
                }
            },
            |node, positions, answered| {
                let sent = positions.len() as u64;
                if sent != answered {
                    return Err(Error::Reply {
                        node,
                        reason: format!("acknowledged {answered} keys of {sent}"),
                    });
                }
                acknowledged += answered;
                Ok(())
            },
        )
        .await?;
        Ok(acknowledged)
    }

    /// Routes the batch's keys: plans them over `map` with `target` (shard → node; for `None`,
    /// a node that takes every key at once, if any: then no key's shard is computed), sends each
    /// node's part with `send` (given a client, the node and the part's packed keys), hedges a
    /// part its node leaves unanswered for the hedge delay (any-replica reads only: see the
    /// [module docs](self)), hands each answer to `take` with its node and its keys' positions
    /// in the request, and retries the parts that failed retryably until the deadline.
    async fn route<T, S, F>(
        &self,
        mut map: Arc<Map>,
        batch: Batch<'_>,
        target: impl Fn(&Map, Option<u32>) -> Option<NodeId>,
        send: S,
        mut take: impl FnMut(NodeId, &[u32], T) -> Result<()>,
    ) -> Result<()>
    where
        S: Fn(LookupClient<Channel>, NodeId, Bytes) -> F,
        F: Future<Output = Result<T, Status>>,
    {
        let Batch {
            packed,
            deadline,
            hedge,
        } = batch;
        let started = Instant::now();
        // Whole keys: the callers checked the length.
        let (keys, _) = packed.as_chunks::<KEY_LEN>();
        let mut pending: Vec<u32> = (0..keys.len() as u32).collect();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let whole = (pending.len() == keys.len())
                .then(|| target(&map, None))
                .flatten();
            let plan = match whole {
                Some(node) => Plan {
                    parts: [(node, std::mem::take(&mut pending))].into(),
                },
                None => Plan::new(keys, pending.iter().copied(), map.shards, |shard| {
                    target(&map, Some(shard))
                })
                .ok_or_else(|| Error::NoMap {
                    reason: "a shard has no replica with a known address".into(),
                })?,
            };
            // One node's part: its answer (a part with every key sends the request's own
            // bytes: no copy).
            let call = |node: NodeId, positions: &[u32]| {
                let part = if positions.len() == keys.len() {
                    packed.clone()
                } else {
                    gather(keys, positions)
                };
                let call = self
                    .lookup(&map, node)
                    .map(|client| send(client, node, part));
                async move {
                    match call {
                        Ok(call) => call.await,
                        Err(status) => Err(status),
                    }
                }
            };
            let calls = plan.parts.into_iter().map(|(node, positions)| {
                let first = call(node, &positions);
                let map = &map;
                let call = &call;
                async move {
                    let Some(hedge) = hedge else {
                        return vec![(node, positions, first.await)];
                    };
                    let delay = hedge.delay.delay();
                    let mut first = std::pin::pin!(timed(hedge.delay, first));
                    if let Ok(answer) = tokio::time::timeout(delay, &mut first).await {
                        return vec![(node, positions, answer)];
                    }
                    let Some(plan) = Plan::hedge(map, keys, &positions, node, hedge.spread) else {
                        return vec![(node, positions, first.await)];
                    };
                    tracing::debug!(
                        node,
                        keys = positions.len(),
                        ?delay,
                        "hedging an unanswered any-replica read"
                    );
                    self.metrics.hedge();
                    let second = join_all(plan.parts.into_iter().map(|(other, positions)| {
                        let answer = timed(hedge.delay, call(other, &positions));
                        async move { (other, positions, answer.await) }
                    }));
                    self.race(node, positions, first, second).await
                }
            });
            let mut retry: Vec<u32> = Vec::new();
            let mut last: Option<(NodeId, Status)> = None;
            for (node, positions, answer) in join_all(calls).await.into_iter().flatten() {
                match answer {
                    Ok(answer) => take(node, &positions, answer)?,
                    Err(status) if retryable(&status) => {
                        self.metrics.node_failure(node, status.code());
                        retry.extend(positions);
                        last = Some((node, status));
                    }
                    Err(status) => {
                        self.metrics.node_failure(node, status.code());
                        return Err(Error::Node(status));
                    }
                }
            }
            let Some((node, status)) = last else {
                return Ok(());
            };
            let now = Instant::now();
            if now + backoff >= deadline {
                return Err(Error::gave_up(attempts, started, node, &status));
            }
            tracing::debug!(node, code = ?status.code(), message = status.message(), keys = retry.len(), "retrying part of a batch");
            self.metrics.retry();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // A map at least as new as the failure: leaders moved, or the node went down.
            if let Ok(fresh) = self.refresh(now).await {
                map = fresh;
            }
            retry.sort_unstable();
            pending = retry;
        }
    }

    /// Races a part's first call (to `node`, keys `positions`) against its hedge (the same
    /// keys over other nodes): the first to answer in full wins and the other is dropped. When
    /// one fails, the other is awaited; when both fail, the hedge's answers are returned (its
    /// successful pieces are kept, the rest retried) and the first call's failure is counted.
    async fn race<T>(
        &self,
        node: NodeId,
        positions: Vec<u32>,
        first: impl Future<Output = Result<T, Status>>,
        second: impl Future<Output = Vec<Answer<T>>>,
    ) -> Vec<Answer<T>> {
        let mut first = std::pin::pin!(first);
        let mut second = std::pin::pin!(second);
        let failed = tokio::select! {
            answer = &mut first => match answer {
                Ok(answer) => return vec![(node, positions, Ok(answer))],
                Err(status) => status,
            },
            answers = &mut second => {
                if answers.iter().all(|(_, _, answer)| answer.is_ok()) {
                    return answers;
                }
                match first.await {
                    Ok(answer) => {
                        for (other, _, answer) in &answers {
                            if let Err(status) = answer {
                                self.metrics.node_failure(*other, status.code());
                            }
                        }
                        return vec![(node, positions, Ok(answer))];
                    }
                    Err(status) => {
                        self.metrics.node_failure(node, status.code());
                        return answers;
                    }
                }
            }
        };
        self.metrics.node_failure(node, failed.code());
        second.await
    }

    /// Calls `call` on one node after another (rotating, nodes that answered the last refresh
    /// first) until one answers, retrying retryable failures with backoff until `deadline`:
    /// for the set-management calls, which any node serves.
    pub async fn any_node<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(LookupClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut map = self.current().await?;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            let nodes: Vec<NodeId> = map.nodes().collect();
            let spread = self.spread.fetch_add(1, Ordering::Relaxed);
            let mut order: Vec<NodeId> = (0..nodes.len())
                .map(|i| nodes[(spread + i) % nodes.len()])
                .collect();
            order.sort_by_key(|node| !map.up.contains(node));
            let mut last = None;
            for node in order {
                attempts += 1;
                let answer = match self.lookup(&map, node) {
                    Ok(client) => call(client).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Ok(answer) => return Ok(answer.into_inner()),
                    Err(status) if retryable(&status) => {
                        self.metrics.node_failure(node, status.code());
                        last = Some((node, status));
                    }
                    Err(status) => return Err(Error::Node(status)),
                }
            }
            let now = Instant::now();
            let (node, status) = last.unwrap_or((0, Status::unavailable("no node is known")));
            if now + backoff >= deadline {
                return Err(Error::gave_up(attempts, started, node, &status));
            }
            self.metrics.retry();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if let Ok(fresh) = self.refresh(now).await {
                map = fresh;
            }
        }
    }
}

/// Checks a check request with the nodes' rules, before any of it is forwarded: 1 to
/// `max_batch` whole keys, at most [`leakbloom_client::MAX_CHECK_SETS`] sets, each a valid
/// name, and at most [`leakbloom_client::MAX_CHECK_BITS`] set-key pairs. Returns the keys.
pub fn validate_check(request: &CheckRequest, max_batch: usize) -> Result<&[Key]> {
    let keys = split_keys(&request.keys, max_batch)?;
    check_set_count(request.sets.len())?;
    for name in &request.sets {
        check_name(name)?;
    }
    check_bits(request.sets.len(), keys.len())?;
    Ok(keys)
}

/// A part's answer from one node: the node, its keys' positions in the request, and what it
/// said.
type Answer<T> = (NodeId, Vec<u32>, Result<T, Status>);

/// The keys of a routed call, its deadline, and whether its parts may be hedged.
#[derive(Clone, Copy, Debug)]
struct Batch<'a> {
    /// The request's keys, packed.
    packed: &'a Bytes,
    /// When the call gives up.
    deadline: Instant,
    /// Any-replica reads only.
    hedge: Option<Hedge<'a>>,
}

/// When and how a routed any-replica read is hedged.
#[derive(Clone, Copy, Debug)]
struct Hedge<'a> {
    /// How long a part waits for its node first; learns from every call that answers.
    delay: &'a HedgeDelay,
    /// The request's rotation position, which planned the first try.
    spread: usize,
}

/// `call`, its duration recorded in `delay` when it answers.
async fn timed<T>(
    delay: &HedgeDelay,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let sent = Instant::now();
    let answer = call.await;
    if answer.is_ok() {
        delay.record(sent.elapsed());
    }
    answer
}

/// Sets `deadline` as the request's gRPC timeout, so a node stops working on it when the
/// router stops waiting.
fn with_deadline<T>(message: T, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}

/// The keys at `positions`, packed.
fn gather(keys: &[[u8; KEY_LEN]], positions: &[u32]) -> Bytes {
    let mut part = BytesMut::with_capacity(positions.len() * KEY_LEN);
    for &i in positions {
        part.extend_from_slice(&keys[i as usize]);
    }
    part.freeze()
}

/// Checks that a node answered the sets asked for (`sets`, or every set when empty).
fn check_names(sets: &[String], answer: &CheckResponse, node: NodeId) -> Result<()> {
    if sets.is_empty() {
        return Ok(());
    }
    let same = answer.results.len() == sets.len()
        && answer.results.iter().zip(sets).all(|(r, s)| &r.set == s);
    if same {
        Ok(())
    } else {
        Err(Error::Reply {
            node,
            reason: "answered other sets than asked".into(),
        })
    }
}

/// A check's answer while its parts come in.
enum Merged {
    /// One part had every key: its answer is the answer.
    Whole(CheckResponse),
    /// Set names and one bitmap per set over the request's keys.
    Scattered(Vec<String>, Vec<Vec<u8>>),
}

impl Merged {
    /// Empty bitmaps for `keys` keys, for the sets `answer` names.
    fn empty(answer: &CheckResponse, keys: usize) -> Merged {
        Merged::Scattered(
            answer.results.iter().map(|r| r.set.clone()).collect(),
            vec![vec![0u8; keys.div_ceil(8)]; answer.results.len()],
        )
    }

    /// Sets the bits of a part's `answer` at its keys' `positions` in the request.
    fn scatter(&mut self, answer: &CheckResponse, positions: &[u32], node: NodeId) -> Result<()> {
        let Merged::Scattered(names, bitmaps) = self else {
            unreachable!("a whole answer has no other parts");
        };
        let same = answer.results.len() == names.len()
            && answer
                .results
                .iter()
                .zip(names.iter())
                .all(|(r, n)| &r.set == n);
        if !same {
            return Err(Error::SetsChanged(names.clone()));
        }
        for (result, bitmap) in answer.results.iter().zip(bitmaps) {
            if result.present.len() < positions.len().div_ceil(8) {
                return Err(Error::Reply {
                    node,
                    reason: format!(
                        "a bitmap of {} bytes for {} keys",
                        result.present.len(),
                        positions.len()
                    ),
                });
            }
            for (j, &i) in positions.iter().enumerate() {
                if result.present[j / 8] & (1 << (j % 8)) != 0 {
                    bitmap[i as usize / 8] |= 1 << (i % 8);
                }
            }
        }
        Ok(())
    }

    fn into_response(self) -> CheckResponse {
        match self {
            Merged::Whole(answer) => answer,
            Merged::Scattered(names, bitmaps) => CheckResponse {
                results: names
                    .into_iter()
                    .zip(bitmaps)
                    .map(|(set, present)| SetResult {
                        set,
                        present: present.into(),
                    })
                    .collect(),
            },
        }
    }
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
        use leakbloom_client::BatchError;
        let check = |sets: Vec<String>, keys: usize| CheckRequest {
            sets,
            keys: vec![0u8; keys * KEY_LEN].into(),
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

    #[test]
    fn scattered_parts_land_at_their_positions() {
        let answer = |bits: &[u8]| CheckResponse {
            results: vec![SetResult {
                set: "s".into(),
                present: Bytes::copy_from_slice(bits),
            }],
        };
        let first = answer(&[0b01]);
        let mut merged = Merged::empty(&first, 10);
        // Keys 9 and 0: the part's key 0 (position 9) is present.
        merged.scatter(&first, &[9, 0], 1).unwrap();
        // Keys 3 and 4: both present.
        merged.scatter(&answer(&[0b11]), &[3, 4], 2).unwrap();
        let response = merged.into_response();
        assert_eq!(&response.results[0].present[..], &[0b0001_1000, 0b10]);
        // A part naming other sets means the sets changed meanwhile.
        let mut merged = Merged::empty(&first, 10);
        let other = CheckResponse { results: vec![] };
        assert!(matches!(
            merged.scatter(&other, &[1], 3),
            Err(Error::SetsChanged(_))
        ));
        // A short bitmap is a malformed reply.
        assert!(matches!(
            merged.scatter(&answer(&[]), &[1], 3),
            Err(Error::Reply { .. })
        ));
    }
}
