//! Coalescing small parts: concurrent small parts bound for the same node travel as one node
//! call (checks of the same sets with the same consistency; inserts into the same set), so
//! that many single-key clients cost the nodes and the router one call per batch instead of
//! one per key, and for inserts one Raft proposal per shard instead of one per key.
//!
//! Batching is natural, with no timer: a part goes out at once while fewer than
//! [`IN_FLIGHT`] calls of its kind are in flight; otherwise it waits in a queue, and when a call
//! returns, everything queued meanwhile (up to [`MAX_KEYS`]) goes out as the next call. An idle
//! router adds no delay; a busy one sends fewer, larger calls.
//!
//! Each part gets its own answer: a check part its slice of every set's bitmap; an insert part
//! its key count, but only when the node acknowledged exactly the sum of the call's parts
//! (otherwise every part fails with INTERNAL, as a short acknowledgement of a call of its own
//! does). A failed call's status reaches every part unchanged (code, metadata, a transport
//! failure's source), so routing retries each part as it would have retried it alone; inserts
//! are idempotent, so resending a part of a failed shared call is harmless.
//!
//! A part never waits past its own deadline; a shared call carries the latest of its parts'
//! deadlines, so one caller's short deadline does not fail the others' call. A node that stops
//! answering holds its [`IN_FLIGHT`] calls until their deadline, and parts queue behind them;
//! hedging in [`crate::routing`] sends such a check part to another replica after the hedge
//! delay, through that node's queue, and drops the waiting one. A part whose caller is gone
//! (hedged elsewhere, or the client gave up) is left out of the next call.
//!
//! # Layout
//! This file: the [`Coalescer`] and its two kinds of call, what each sends and how its reply is
//! shared out. `queue.rs`: the mechanism both share (queues per kind, calls in flight,
//! deadlines, callers gone).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use leakbloom_cluster::{Bitmap, Consistency, NodeId};
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{CheckRequest, CheckResponse, InsertRequest, SetResult};
use tonic::transport::Channel;
use tonic::Status;

use crate::routing::with_deadline;

mod queue;

use queue::{Kind, Queues};

/// Parts of at most this many keys are coalesced; larger ones are batches already.
pub const SMALL_PART_KEYS: usize = 16;

/// Calls in flight per kind (node and request fields) before parts queue up.
pub const IN_FLIGHT: usize = 2;

/// Most keys in one coalesced call.
pub const MAX_KEYS: usize = 4096;

/// The queues of every kind of check and insert.
#[derive(Debug, Default)]
pub struct Coalescer {
    checks: Arc<Queues<CheckKind>>,
    inserts: Arc<Queues<InsertKind>>,
}

impl Coalescer {
    /// Checks `keys` (a small part) of `sets` on `node` through `client`, in a call shared with
    /// other parts of the same node, sets and consistency. The answer is this part's alone.
    pub async fn check(
        &self,
        client: LookupClient<Channel>,
        node: NodeId,
        sets: &[String],
        consistency: Consistency,
        keys: Bytes,
        deadline: Instant,
    ) -> Result<CheckResponse, Status> {
        let kind = CheckKind {
            node,
            sets: sets.to_vec(),
            consistency,
        };
        self.checks.join(kind, client, keys, deadline).await
    }

    /// Inserts `keys` (a small part) into `set` on `node` through `client`, in a call shared
    /// with other parts for the same node and set. Returns this part's key count once the
    /// node acknowledged every key of the shared call.
    pub async fn insert(
        &self,
        client: LookupClient<Channel>,
        node: NodeId,
        set: &str,
        keys: Bytes,
        deadline: Instant,
    ) -> Result<u64, Status> {
        let kind = InsertKind {
            node,
            set: set.to_string(),
        };
        self.inserts.join(kind, client, keys, deadline).await
    }
}

/// Coalesced checks: of one node, the same sets (as asked) and the same consistency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CheckKind {
    node: NodeId,
    sets: Vec<String>,
    consistency: Consistency,
}

impl Kind for CheckKind {
    type Reply = CheckResponse;
    type Answer = CheckResponse;

    fn send(
        &self,
        mut client: LookupClient<Channel>,
        keys: Bytes,
        deadline: Instant,
    ) -> impl Future<Output = Result<CheckResponse, Status>> + Send + 'static {
        let request = CheckRequest {
            sets: self.sets.clone(),
            keys,
            consistency: self.consistency.wire(),
        };
        async move {
            let reply = client.check(with_deadline(request, deadline)).await?;
            Ok(reply.into_inner())
        }
    }

    /// Each part's own slice of every set's bitmap.
    fn share(&self, reply: CheckResponse, parts: &[usize]) -> Vec<Result<CheckResponse, Status>> {
        let mut offset = 0;
        parts
            .iter()
            .map(|&keys| {
                let results = reply
                    .results
                    .iter()
                    .map(|result| SetResult {
                        set: result.set.clone(),
                        present: Bitmap::slice(&result.present, offset, keys)
                            .into_bytes()
                            .into(),
                    })
                    .collect();
                offset += keys;
                Ok(CheckResponse { results })
            })
            .collect()
    }
}

/// Coalesced inserts: into one set on one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InsertKind {
    node: NodeId,
    set: String,
}

impl Kind for InsertKind {
    type Reply = u64;
    type Answer = u64;

    fn send(
        &self,
        mut client: LookupClient<Channel>,
        keys: Bytes,
        deadline: Instant,
    ) -> impl Future<Output = Result<u64, Status>> + Send + 'static {
        let request = InsertRequest {
            set: self.set.clone(),
            keys,
        };
        async move {
            let reply = client.insert(with_deadline(request, deadline)).await?;
            Ok(reply.into_inner().keys)
        }
    }

    /// Every part its key count when the node acknowledged them all; otherwise every part
    /// fails as a malformed reply does (INTERNAL, not retried).
    fn share(&self, acknowledged: u64, parts: &[usize]) -> Vec<Result<u64, Status>> {
        let sent: usize = parts.iter().sum();
        if acknowledged == sent as u64 {
            return parts.iter().map(|&keys| Ok(keys as u64)).collect();
        }
        let status = Status::internal(format!(
            "node {} answered malformed data: acknowledged {acknowledged} keys of {sent} \
             (one call for {} coalesced parts)",
            self.node,
            parts.len()
        ));
        parts.iter().map(|_| Err(status.clone())).collect()
    }
}

#[cfg(test)]
mod tests;
