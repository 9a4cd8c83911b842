//! The client side of the peer service: [`Peers`], every local group's Raft transport and the
//! way to forward proposals and checks to other nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use leakbloom_proto::internal::v1::peer_client::PeerClient;
use leakbloom_proto::internal::v1::{
    propose_outcome, ProposeBatchRequest, ProposeRequest, RaftBatch, RaftMessage, RejoinRequest,
    ShardCheckRequest, ShardCheckResponse, SnapshotChunk, StatusRequest, StatusResponse,
    Unavailable,
};
use leakbloom_raft::{GroupHandle, GroupId, NodeId, Transport};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::{
    describe, error_from_status, unreachable, Local, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES,
    SNAPSHOT_CHUNK_BYTES,
};
use crate::error::Error;
use crate::shard::{shard_of_group, ShardId};

/// Raft messages queued per destination node before new ones are dropped (and the node
/// reported unreachable): thousands of groups' heartbeats fit, and a dead node cannot make
/// the queue grow without bound.
const QUEUE: usize = 4096;
/// How long connecting may take: a node on the private network answers in milliseconds, and
/// Raft must hear that a node is unreachable well within an election timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a `Raft` call may take: the receiver only queues the messages, so this is a
/// stalled connection, and holding the next batch longer would delay every group's heartbeats.
const RAFT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded proposal or check may take: a commit needs a quorum's fsync
/// (milliseconds), and a leader that lost its quorum steps down within an election timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Snapshot bytes per second one stream sends at most: a 31 MB shard in half a second, yet a
/// fraction of what the disk (about 150 MB/s synced here) and loopback carry, so a replica
/// catching up does not slow the inserts of the others.
const SNAPSHOT_BYTES_PER_SECOND: usize = 64 << 20;
/// Snapshot streams a node sends at once; more wait their turn (holding the snapshot in
/// memory, as raft-rs handed it over). With the per-stream rate this bounds a node's snapshot
/// bandwidth to 128 MiB/s.
const SNAPSHOT_STREAMS: usize = 2;
/// A snapshot's time allowance on top of its per-chunk time and pacing: the receiver's
/// set-up.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed per snapshot chunk: a floor of 1 MiB/s, so a stalled stream ends while a
/// slow one completes.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 ping interval on idle and busy connections alike: finds a dead peer (no FIN, e.g.
/// a lost machine) within seconds instead of the kernel's TCP timeouts.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is closed and redialled.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The connections to one node: Raft messages, proposals and checks share one; snapshots
/// get their own, so megabytes of snapshot in the socket never delay a heartbeat.
#[derive(Debug, Clone)]
struct Clients {
    messages: PeerClient<Channel>,
    snapshots: PeerClient<Channel>,
}

/// One destination node.
#[derive(Debug)]
struct Link {
    node: NodeId,
    address: String,
    /// `Err` says why the configured address cannot be used.
    clients: Result<Clients, String>,
    /// Feeds the node's delivery task, started on first use.
    queue: OnceLock<mpsc::Sender<(GroupId, Message)>>,
}

impl Link {
    /// The link from node `from` to `node` at `address`, not connected yet. An address that
    /// is not a valid URI is logged now, and every call over the link fails saying so.
    fn new(from: NodeId, node: NodeId, address: String) -> Link {
        let clients = clients(&address).map_err(|error| {
            tracing::error!(
                node = from,
                peer = node,
                address,
                %error,
                "invalid peer address: every call to this node will fail; fix the peers setting"
            );
            format!("its peer address {address:?} is not a valid URI ({error})")
        });
        Link {
            node,
            address,
            clients,
            queue: OnceLock::new(),
        }
    }
}

/// The node the transport reports back to, set after construction.
#[derive(Default)]
struct LocalSlot(RwLock<Option<Weak<dyn Local>>>);

impl LocalSlot {
    /// This node's replica of `group`, while the node and the replica exist.
    fn replica(&self, group: GroupId) -> Option<GroupHandle> {
        let local = self
            .0
            .read()
            .expect("peer local lock poisoned")
            .as_ref()?
            .upgrade()?;
        local.replica(group)
    }

    fn report_unreachable(&self, group: GroupId, node: NodeId) {
        if let Some(handle) = self.replica(group) {
            handle.report_unreachable(node);
        }
    }

    fn report_snapshot(&self, group: GroupId, node: NodeId, delivered: bool) {
        if let Some(handle) = self.replica(group) {
            handle.report_snapshot(node, delivered);
        }
    }
}

/// The client side of the peer service, one per node (see the [module docs](super)): the
/// [`Transport`] of every local Raft group, and [`propose`](Self::propose) and
/// [`check`](Self::check) on other nodes.
pub struct Peers {
    id: NodeId,
    runtime: Handle,
    /// By node; replaced when a node's address changes, added when a node joins.
    links: RwLock<BTreeMap<NodeId, Arc<Link>>>,
    local: Arc<LocalSlot>,
    /// Destinations without an address, already warned about.
    warned: Mutex<BTreeSet<NodeId>>,
    /// Snapshot streams this node sends at once (see [`SNAPSHOT_STREAMS`]).
    snapshot_streams: Arc<Semaphore>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let links = self.links.read().expect("peer links lock poisoned");
        let addresses: BTreeMap<NodeId, &str> = links
            .values()
            .map(|link| (link.node, link.address.as_str()))
            .collect();
        f.debug_struct("Peers")
            .field("id", &self.id)
            .field("addresses", &addresses)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// The client of node `id` for the cluster whose nodes have the peer `addresses`
    /// (`HOST:PORT`, or a URL such as `http://HOST:PORT`; this node's own entry is kept for
    /// [`address`](Self::address) but never dialled by the transport). Connects lazily: no
    /// node needs to be up yet. Background tasks run on the current tokio runtime. An address
    /// that is not a valid URI is logged now, and every call to that node fails with
    /// [`Error::Unavailable`] saying so.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new<S: Into<String>>(
        id: NodeId,
        addresses: impl IntoIterator<Item = (NodeId, S)>,
    ) -> Peers {
        let runtime = Handle::current();
        let links = addresses
            .into_iter()
            .map(|(node, address)| (node, Arc::new(Link::new(id, node, address.into()))))
            .collect();
        Peers {
            id,
            runtime,
            links: RwLock::new(links),
            local: Arc::default(),
            warned: Mutex::default(),
            snapshot_streams: Arc::new(Semaphore::new(SNAPSHOT_STREAMS)),
        }
    }

    /// Sets the node whose replicas receive the transport's reports (unreachable peers,
    /// snapshot outcomes). A weak reference: the node owns its `Peers`. Until it is set, or
    /// after the node is dropped, reports are dropped.
    pub fn set_local(&self, local: Weak<dyn Local>) {
        *self.local.0.write().expect("peer local lock poisoned") = Some(local);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configured peer address of `node`, for logs and hints.
    pub fn address(&self, node: NodeId) -> Option<String> {
        self.link(node).map(|link| link.address.clone())
    }

    /// Sets the peer address of `node` (a node that joined, or moved): later calls and
    /// messages go there. Messages queued for the old address are still delivered there.
    pub fn set_address(&self, node: NodeId, address: &str) {
        if node == self.id || address.is_empty() || self.address(node).as_deref() == Some(address) {
            return;
        }
        tracing::info!(node = self.id, peer = node, address, "peer address learned");
        let link = Arc::new(Link::new(self.id, node, address.to_string()));
        self.links
            .write()
            .expect("peer links lock poisoned")
            .insert(node, link);
    }

    fn link(&self, node: NodeId) -> Option<Arc<Link>> {
        let links = self.links.read().expect("peer links lock poisoned");
        links.get(&node).cloned()
    }

    /// Proposes `command` (an encoded `Command`) to node `node`'s replica of `group`, which
    /// must lead it, and returns the state machine's encoded result once the command is
    /// applied there. Errors as in the [module docs](super): [`Error::Unavailable`] (with the
    /// leader hint when `node` knows one) is retryable.
    pub async fn propose(
        &self,
        node: NodeId,
        group: GroupId,
        command: Bytes,
    ) -> Result<Bytes, Error> {
        let shard = shard_of_group(group);
        let request = ProposeRequest { group, command };
        let response = self
            .call(node, shard, &[], |mut client| async move {
                client.propose(request).await
            })
            .await?;
        Ok(response.result)
    }

    /// Proposes several commands, `(group, encoded Command)`, to node `node`, which should lead
    /// every group, in one call. The outer error means the call failed as a whole (nothing is
    /// known of any proposal); otherwise one result per proposal, in order, each as
    /// [`propose`](Self::propose) would return it.
    pub async fn propose_batch(
        &self,
        node: NodeId,
        proposals: Vec<(GroupId, Bytes)>,
    ) -> Result<Vec<Result<Bytes, Error>>, Error> {
        let groups: Vec<GroupId> = proposals.iter().map(|(group, _)| *group).collect();
        let first = shard_of_group(groups.first().copied().unwrap_or(0));
        let request = ProposeBatchRequest {
            proposals: proposals
                .into_iter()
                .map(|(group, command)| ProposeRequest { group, command })
                .collect(),
        };
        let response = self
            .call(node, first, &[], |mut client| async move {
                client.propose_batch(request).await
            })
            .await?;
        if response.outcomes.len() != groups.len() {
            return Err(Error::Replica {
                shard: first,
                reason: format!(
                    "node {node} answered {} outcomes for {} proposals",
                    response.outcomes.len(),
                    groups.len()
                ),
            });
        }
        Ok(response
            .outcomes
            .into_iter()
            .zip(groups)
            .map(|(outcome, group)| {
                let shard = shard_of_group(group);
                match outcome.outcome {
                    Some(propose_outcome::Outcome::Result(result)) => Ok(result),
                    Some(propose_outcome::Outcome::Unavailable(Unavailable { leader, reason })) => {
                        Err(Error::Unavailable {
                            shard,
                            leader: (leader != 0).then_some(leader),
                            reason,
                        })
                    }
                    Some(propose_outcome::Outcome::Failed(reason)) => Err(Error::Replica {
                        shard,
                        reason: format!("node {node}: {reason}"),
                    }),
                    None => Err(Error::Replica {
                        shard,
                        reason: format!("node {node} answered an empty outcome"),
                    }),
                }
            })
            .collect())
    }

    /// Checks keys of one shard (`request.shard`) against node `node`'s replica of it. Errors
    /// as in the [module docs](super).
    pub async fn check(
        &self,
        node: NodeId,
        request: ShardCheckRequest,
    ) -> Result<ShardCheckResponse, Error> {
        let shard = shard_of_group(request.shard);
        // Kept to recognise a NOT_FOUND set in the answer; set names are not secret.
        let sets = request.sets.clone();
        self.call(node, shard, &sets, |mut client| async move {
            client.check(request).await
        })
        .await
    }

    /// Asks node `node`, which should lead `group`, to re-add this node's replica of it, which
    /// was rebuilt from nothing; returns the index the replica must apply before it votes.
    /// Errors as in the [module docs](super).
    pub async fn rejoin(&self, node: NodeId, group: GroupId) -> Result<u64, Error> {
        let shard = shard_of_group(group);
        let request = RejoinRequest {
            group,
            node: self.id,
        };
        let response = self
            .call(node, shard, &[], |mut client| async move {
                client.rejoin(request).await
            })
            .await?;
        Ok(response.index)
    }

    /// Node `node`'s status (the peer `Status` call). Errors as in the [module docs](super).
    pub async fn status(&self, node: NodeId) -> Result<StatusResponse, Error> {
        self.call(node, 0, &[], |mut client| async move {
            client.status(StatusRequest {}).await
        })
        .await
    }

    /// One unary call to `node` with [`REQUEST_TIMEOUT`], its failure turned into an
    /// [`Error`].
    async fn call<T, F>(
        &self,
        node: NodeId,
        shard: ShardId,
        sets: &[String],
        call: impl FnOnce(PeerClient<Channel>) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let Some(link) = self.link(node) else {
            return Err(Error::Unavailable {
                shard,
                leader: None,
                reason: format!("node {node} has no configured peer address"),
            });
        };
        let clients = link
            .clients
            .as_ref()
            .map_err(|why| unreachable(shard, node, &link.address, why))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, call(clients.messages.clone())).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(error_from_status(&status, shard, node, &link.address, sets)),
            Err(_) => Err(unreachable(
                shard,
                node,
                &link.address,
                &format!("no answer within {REQUEST_TIMEOUT:?}"),
            )),
        }
    }

    /// A message that has nowhere to go: reported to its group so that Raft knows.
    fn undeliverable(&self, group: GroupId, message: &Message, why: &str) {
        let to = message.to;
        if message.get_msg_type() == MessageType::MsgSnapshot {
            self.local.report_snapshot(group, to, false);
        } else {
            self.local.report_unreachable(group, to);
        }
        let first = self
            .warned
            .lock()
            .expect("peer warned lock poisoned")
            .insert(to);
        if first {
            tracing::warn!(
                node = self.id,
                peer = to,
                group,
                "raft messages dropped: {why}"
            );
        }
    }

    /// Queues `message` for `link`'s delivery task, starting it on first use.
    fn enqueue(&self, link: &Link, clients: &Clients, group: GroupId, message: Message) {
        let queue = link.queue.get_or_init(|| {
            let (queue, messages) = mpsc::channel(QUEUE);
            let delivery = Delivery {
                from: self.id,
                node: link.node,
                address: link.address.clone(),
                client: clients.messages.clone(),
                local: self.local.clone(),
                failing: false,
            };
            self.runtime.spawn(delivery.run(messages));
            queue
        });
        if let Err(error) = queue.try_send((group, message)) {
            // Full: the node is slow or down. Closed: the runtime running the delivery task
            // has shut down. Either way Raft hears of it and retransmits later.
            tracing::debug!(
                node = self.id,
                peer = link.node,
                group,
                "raft queue full: dropped"
            );
            let (group, message) = error.into_inner();
            self.local.report_unreachable(group, message.to);
        }
    }

    /// Streams a snapshot message to `link` on a task of its own, then reports the outcome to
    /// the sending group.
    fn send_snapshot(&self, link: &Link, clients: &Clients, group: GroupId, mut message: Message) {
        let to = message.to;
        let data = std::mem::take(&mut message.mut_snapshot().data);
        let index = message.get_snapshot().get_metadata().index;
        let head = match message.write_to_bytes() {
            Ok(head) => Bytes::from(head),
            Err(error) => {
                tracing::error!(node = self.id, peer = to, group, %error, "snapshot message does not encode");
                self.local.report_snapshot(group, to, false);
                return;
            }
        };
        let size = data.len();
        let count = size.div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
        // Paced: each chunk waits for its share of the bandwidth (counted from the first
        // chunk), so snapshots never crowd out the appends and heartbeats sharing the node's
        // network and CPU.
        let stream = futures_util::stream::unfold(
            (chunks(group, head, data), None::<Instant>, 0usize),
            |(mut chunks, start, sent)| async move {
                let chunk = chunks.next()?;
                let start = start.unwrap_or_else(Instant::now);
                tokio::time::sleep_until((start + pace(sent)).into()).await;
                let sent = sent + chunk.data.len();
                Some((chunk, (chunks, Some(start), sent)))
            },
        );
        let deadline = SNAPSHOT_TIMEOUT + SNAPSHOT_CHUNK_TIMEOUT * count as u32 + pace(size);
        let mut client = clients.snapshots.clone();
        let local = self.local.clone();
        let streams = self.snapshot_streams.clone();
        let (from, address) = (self.id, link.address.clone());
        self.runtime.spawn(async move {
            // At most SNAPSHOT_STREAMS at once; the others wait here, before their clock runs.
            let _permit = streams.acquire_owned().await;
            let started = Instant::now();
            let outcome = tokio::time::timeout(deadline, client.snapshot(stream)).await;
            let delivered = matches!(outcome, Ok(Ok(_)));
            let elapsed = started.elapsed();
            let why = match outcome {
                Ok(Ok(_)) => {
                    tracing::info!(
                        node = from,
                        peer = to,
                        group,
                        index,
                        bytes = size,
                        ?elapsed,
                        "snapshot sent"
                    );
                    None
                }
                Ok(Err(status)) => Some(failure(&status)),
                Err(_) => Some(format!("not delivered within {deadline:?}")),
            };
            if let Some(why) = why {
                tracing::warn!(
                    node = from,
                    peer = to,
                    address,
                    group,
                    index,
                    bytes = size,
                    why,
                    "snapshot not delivered; the leader will send another"
                );
            }
            local.report_snapshot(group, to, delivered);
        });
    }
}

impl Transport for Peers {
    fn send(&self, group: GroupId, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if to == self.id {
                // raft-rs never addresses its own node; nothing to deliver.
                continue;
            }
            let Some(link) = self.link(to) else {
                self.undeliverable(group, &message, "the node has no configured peer address");
                continue;
            };
            let clients = match &link.clients {
                Ok(clients) => clients,
                Err(why) => {
                    self.undeliverable(group, &message, why);
                    continue;
                }
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(&link, clients, group, message);
            } else {
                self.enqueue(&link, clients, group, message);
            }
        }
    }
}

/// What went wrong with a call, for a log line: the code, the message and the errors behind it.
fn failure(status: &Status) -> String {
    format!("{:?}: {}", status.code(), describe(status))
}

/// A channel to `address` (`HOST:PORT` or a URL), not yet connected.
fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)?
        // Small messages (heartbeats, votes, acknowledgements) must not wait for Nagle.
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Both connections to `address`. Must run inside a tokio runtime (a channel spawns its
/// worker there).
fn clients(address: &str) -> Result<Clients, tonic::transport::Error> {
    let client = |channel| {
        PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
    Ok(Clients {
        messages: client(channel(address)?),
        snapshots: client(channel(address)?),
    })
}

/// A snapshot message as stream chunks: the first carries `group` and `head` (the message
/// without its data), each carries the next [`SNAPSHOT_CHUNK_BYTES`] of `data`, sliced without
/// copying. At least one chunk, even for empty data.
fn chunks(group: GroupId, head: Bytes, data: Bytes) -> impl Iterator<Item = SnapshotChunk> {
    let count = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
    (0..count).map(move |i| {
        let start = i * SNAPSHOT_CHUNK_BYTES;
        let end = (start + SNAPSHOT_CHUNK_BYTES).min(data.len());
        let first = i == 0;
        SnapshotChunk {
            group: if first { group } else { 0 },
            message: if first { head.clone() } else { Bytes::new() },
            data: data.slice(start..end),
        }
    })
}

/// How long `bytes` of snapshot take at [`SNAPSHOT_BYTES_PER_SECOND`].
fn pace(bytes: usize) -> Duration {
    Duration::from_secs_f64(bytes as f64 / SNAPSHOT_BYTES_PER_SECOND as f64)
}

/// The task that carries Raft messages to one node, a batch per call.
struct Delivery {
    from: NodeId,
    node: NodeId,
    address: String,
    client: PeerClient<Channel>,
    local: Arc<LocalSlot>,
    /// Whether the last call failed: failures are logged at warn once, then at debug.
    failing: bool,
}

impl Delivery {
    /// Runs until the queue closes (the `Peers` was dropped).
    async fn run(mut self, mut queue: mpsc::Receiver<(GroupId, Message)>) {
        // A message taken from the queue that did not fit the previous batch.
        let mut carried: Option<RaftMessage> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => {
                    let Some((group, message)) = queue.recv().await else {
                        return;
                    };
                    match self.encode(group, &message) {
                        Some(first) => first,
                        None => continue,
                    }
                }
            };
            let mut bytes = first.message.len();
            let mut messages = vec![first];
            while bytes < MAX_BATCH_BYTES {
                let Ok((group, message)) = queue.try_recv() else {
                    break;
                };
                let Some(encoded) = self.encode(group, &message) else {
                    continue;
                };
                if bytes + encoded.message.len() > MAX_BATCH_BYTES {
                    carried = Some(encoded);
                    break;
                }
                bytes += encoded.message.len();
                messages.push(encoded);
            }
            self.deliver(messages, bytes).await;
        }
    }

    fn encode(&self, group: GroupId, message: &Message) -> Option<RaftMessage> {
        match message.write_to_bytes() {
            Ok(encoded) => Some(RaftMessage {
                group,
                message: encoded.into(),
            }),
            Err(error) => {
                // Cannot happen for raft-rs's proto3 messages; drop rather than stop the link.
                tracing::error!(node = self.from, peer = self.node, group, %error, "raft message does not encode");
                None
            }
        }
    }

    /// Sends one batch; on failure reports the node unreachable to every group in it.
    async fn deliver(&mut self, messages: Vec<RaftMessage>, bytes: usize) {
        let groups: BTreeSet<GroupId> = messages.iter().map(|m| m.group).collect();
        let count = messages.len();
        let batch = RaftBatch {
            from: self.from,
            messages,
        };
        let why = match tokio::time::timeout(RAFT_TIMEOUT, self.client.raft(batch)).await {
            Ok(Ok(_)) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(node = self.from, peer = self.node, address = %self.address, "peer reachable again");
                }
                return;
            }
            Ok(Err(status)) => failure(&status),
            Err(_) => format!("no answer within {RAFT_TIMEOUT:?}"),
        };
        if std::mem::replace(&mut self.failing, true) {
            tracing::debug!(
                node = self.from,
                peer = self.node,
                messages = count,
                bytes,
                why,
                "raft batch dropped"
            );
        } else {
            tracing::warn!(
                node = self.from,
                peer = self.node,
                address = %self.address,
                messages = count,
                bytes,
                why,
                "raft batch dropped; peer unreachable (logged once until it answers again)"
            );
        }
        for group in groups {
            self.local.report_unreachable(group, self.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_paced_at_the_stream_rate() {
        assert_eq!(pace(0), Duration::ZERO);
        assert_eq!(pace(SNAPSHOT_BYTES_PER_SECOND), Duration::from_secs(1));
        // A 31 MB shard (16 shards of a 10 M-key set at 1e-6 on three nodes) in half a second.
        let shard = pace(31 << 20);
        assert!(shard > Duration::from_millis(450) && shard < Duration::from_millis(500));
    }

    #[test]
    fn chunks_slice_the_data_in_order() {
        let data = Bytes::from(
            (0..(2 * SNAPSHOT_CHUNK_BYTES + 5))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let head = Bytes::from_static(b"head");
        let pieces: Vec<SnapshotChunk> = chunks(9, head.clone(), data.clone()).collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!((pieces[0].group, &pieces[0].message), (9, &head));
        assert!(pieces[1..]
            .iter()
            .all(|c| c.group == 0 && c.message.is_empty()));
        assert_eq!(pieces[2].data.len(), 5);
        let joined: Vec<u8> = pieces.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        // The pieces share the message's buffer.
        assert_eq!(
            pieces[1].data.as_ptr(),
            data[SNAPSHOT_CHUNK_BYTES..].as_ptr()
        );

        let empty: Vec<SnapshotChunk> = chunks(9, head, Bytes::new()).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].data.is_empty());
    }

    #[test]
    fn bad_addresses_are_refused_not_fatal() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let peers = Peers::new(1, [(1, "127.0.0.1:7062"), (2, "bad address:x")]);
        assert_eq!(peers.address(2).as_deref(), Some("bad address:x"));
        assert_eq!(peers.address(3), None);
        let error = runtime
            .block_on(peers.propose(2, 4, Bytes::new()))
            .unwrap_err();
        assert!(
            matches!(&error, Error::Unavailable { shard: 4, reason, .. } if reason.contains("not a valid URI")),
            "{error}"
        );
        let error = runtime
            .block_on(peers.propose(3, 4, Bytes::new()))
            .unwrap_err();
        assert!(
            matches!(&error, Error::Unavailable { reason, .. } if reason.contains("no configured peer address")),
            "{error}"
        );
        // Messages to them are dropped without a panic (no local node to report to yet).
        let message = Message {
            to: 2,
            ..Message::default()
        };
        peers.send(4, vec![message.clone(), Message { to: 3, ..message }]);
    }
}
