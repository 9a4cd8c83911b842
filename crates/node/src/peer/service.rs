//! The server side of the peer service: feeds other nodes' Raft messages, snapshots,
//! proposals and checks to this node's replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use leakbloom_proto::internal::v1::peer_server::{Peer, PeerServer};
use leakbloom_proto::internal::v1::{
    propose_outcome, ProposeBatchRequest, ProposeBatchResponse, ProposeOutcome, ProposeRequest,
    ProposeResponse, RaftAck, RaftBatch, RaftMessage, RejoinRequest, RejoinResponse,
    ShardCheckRequest, ShardCheckResponse, SnapshotAck, SnapshotChunk, StatusRequest,
    StatusResponse, Unavailable,
};
use leakbloom_raft::{GroupHandle, GroupId};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};

use super::{join, Local, MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES};
use crate::error::Error;
use crate::shard::{shard_of_group, ShardId};

/// The `leakbloom.internal.v1.Peer` service over the node it runs in (see the
/// [module docs](super)). Serve it on the peer port only.
#[derive(Clone)]
pub struct PeerService {
    local: Arc<dyn Local>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("node", &self.local.id())
            .finish_non_exhaustive()
    }
}

/// Messages of one `Raft` call that were not stepped, by why. Raft retransmits all of them.
#[derive(Debug, Default)]
struct Dropped {
    /// Not a decodable `eraftpb.Message`.
    undecodable: usize,
    /// Addressed to another node.
    misaddressed: usize,
    /// For a group this node hosts no (running) replica of.
    unknown_group: usize,
    /// The replica's inbox was full (or it stopped meanwhile).
    refused: usize,
}

impl Dropped {
    fn total(&self) -> usize {
        self.undecodable + self.misaddressed + self.unknown_group + self.refused
    }
}

impl PeerService {
    /// Serves `local`'s replicas.
    pub fn new(local: Arc<dyn Local>) -> PeerService {
        PeerService { local }
    }

    /// The service ready to add to a tonic server, with message limits raised to
    /// [`MAX_MESSAGE_BYTES`] so that batches and forwarded requests fit.
    pub fn server(local: Arc<dyn Local>) -> PeerServer<PeerService> {
        PeerServer::new(PeerService::new(local))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// This node's replica of `group`, or the retryable error that says it has none.
    fn replica(&self, group: GroupId) -> Result<GroupHandle, Error> {
        self.local.replica(group).ok_or_else(|| Error::Unavailable {
            shard: shard_of_group(group),
            leader: None,
            reason: format!("node {} holds no running replica of it", self.local.id()),
        })
    }

    /// Proposes one forwarded command to the local replica of `group`, which must lead it.
    async fn propose_one(&self, group: GroupId, command: Bytes) -> Result<Bytes, Error> {
        let shard = shard_of_group(group);
        let handle = self.replica(group)?;
        self.local.admit(group, &command).await?;
        let result = handle
            .propose(command.to_vec())
            .await
            .map_err(|error| Error::from_raft(shard, self.local.id(), error))?;
        Ok(result.into())
    }

    /// A snapshot stream this node cannot use (a broken or hostile peer).
    fn malformed(&self, shard: ShardId, what: &str) -> Status {
        Error::Replica {
            shard,
            reason: format!(
                "snapshot stream to node {} refused: {what}",
                self.local.id()
            ),
        }
        .into()
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = request.into_inner();
        let id = self.local.id();
        let count = batch.messages.len();
        let mut dropped = Dropped::default();
        // Batches interleave the messages of many groups: look each group up once.
        let mut replicas: BTreeMap<GroupId, Option<GroupHandle>> = BTreeMap::new();
        for RaftMessage { group, message } in batch.messages {
            // Shares the request's buffer: entries are not copied.
            let Ok(message) = Message::parse_from_carllerche_bytes(&message) else {
                dropped.undecodable += 1;
                continue;
            };
            if message.to != id {
                dropped.misaddressed += 1;
                continue;
            }
            let replica = replicas
                .entry(group)
                .or_insert_with(|| self.local.replica(group));
            match replica {
                None => dropped.unknown_group += 1,
                Some(handle) if !handle.step(message) => dropped.refused += 1,
                Some(_) => {}
            }
        }
        if dropped.total() > 0 {
            tracing::debug!(
                node = id,
                from = batch.from,
                messages = count,
                undecodable = dropped.undecodable,
                misaddressed = dropped.misaddressed,
                unknown_group = dropped.unknown_group,
                refused = dropped.refused,
                "raft messages dropped (raft retransmits)"
            );
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut chunks = request.into_inner();
        let Some(first) = chunks.message().await? else {
            return Err(self.malformed(ShardId::MAX, "the stream had no chunk"));
        };
        let group = first.group;
        let shard = shard_of_group(group);
        let Ok(mut message) = Message::parse_from_carllerche_bytes(&first.message) else {
            return Err(self.malformed(shard, "the first chunk's message does not decode"));
        };
        if message.get_msg_type() != MessageType::MsgSnapshot
            || !message.has_snapshot()
            || !message.get_snapshot().data.is_empty()
        {
            return Err(self.malformed(
                shard,
                "the first chunk must carry a MsgSnapshot with its data taken out",
            ));
        }
        if message.to != self.local.id() {
            return Err(self.malformed(shard, &format!("it is addressed to node {}", message.to)));
        }
        // Fail before receiving gigabytes the group could not take.
        let handle = self.replica(group)?;
        let mut total = first.data.len() as u64;
        let mut parts = vec![first.data];
        while let Some(chunk) = chunks.message().await? {
            total += chunk.data.len() as u64;
            if total > MAX_SNAPSHOT_BYTES {
                return Err(self.malformed(
                    shard,
                    &format!("it is over the limit of {MAX_SNAPSHOT_BYTES} bytes"),
                ));
            }
            if !chunk.data.is_empty() {
                parts.push(chunk.data);
            }
        }
        let index = message.get_snapshot().get_metadata().index;
        let data: Bytes = join(parts, total as usize);
        message.mut_snapshot().data = data;
        if !handle.step(message) {
            return Err(Error::Unavailable {
                shard,
                leader: None,
                reason: format!(
                    "node {}'s replica is overloaded or stopped; the leader will send the \
                     snapshot again",
                    self.local.id()
                ),
            }
            .into());
        }
        tracing::debug!(
            node = self.local.id(),
            group,
            index,
            bytes = total,
            "snapshot received"
        );
        Ok(Response::new(SnapshotAck {}))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let ProposeRequest { group, command } = request.into_inner();
        let result = self.propose_one(group, command).await?;
        Ok(Response::new(ProposeResponse { result }))
    }

    async fn propose_batch(
        &self,
        request: Request<ProposeBatchRequest>,
    ) -> Result<Response<ProposeBatchResponse>, Status> {
        let proposals = request.into_inner().proposals;
        let outcomes = futures_util::future::join_all(
            proposals
                .into_iter()
                .map(|p| self.propose_one(p.group, p.command)),
        )
        .await
        .into_iter()
        .map(|result| ProposeOutcome {
            outcome: Some(match result {
                Ok(result) => propose_outcome::Outcome::Result(result),
                Err(Error::Unavailable { leader, reason, .. }) => {
                    propose_outcome::Outcome::Unavailable(Unavailable {
                        leader: leader.unwrap_or(0),
                        reason,
                    })
                }
                Err(other) => propose_outcome::Outcome::Failed(other.to_string()),
            }),
        })
        .collect();
        Ok(Response::new(ProposeBatchResponse { outcomes }))
    }

    async fn check(
        &self,
        request: Request<ShardCheckRequest>,
    ) -> Result<Response<ShardCheckResponse>, Status> {
        let response = self.local.check_shard(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn rejoin(
        &self,
        request: Request<RejoinRequest>,
    ) -> Result<Response<RejoinResponse>, Status> {
        let RejoinRequest { group, node } = request.into_inner();
        let shard = shard_of_group(group);
        let handle = self.replica(group)?;
        let index = handle
            .rejoin(node)
            .await
            .map_err(|error| Error::from_raft(shard, self.local.id(), error))?;
        tracing::info!(
            node = self.local.id(),
            group,
            rebuilt = node,
            index,
            "re-added a replica rebuilt from its peers"
        );
        Ok(Response::new(RejoinResponse { index }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.local.status()))
    }
}
