//! Coalescing small checks: concurrent small parts bound for the same node (with the same sets
//! and consistency) travel as one node call, so that many single-key clients cost the nodes
//! and the router one call per batch instead of one per key.
//!
//! Batching is natural, with no timer: a part goes out at once while fewer than
//! [`IN_FLIGHT`] calls of its kind are in flight; otherwise it waits in a queue, and when a call
//! returns, everything queued meanwhile (up to [`MAX_KEYS`]) goes out as the next call. An idle
//! router adds no delay; a busy one sends fewer, larger calls.
//!
//! A node that stops answering holds its [`IN_FLIGHT`] calls until their deadline, and parts
//! queue behind them; hedging in [`crate::routing`] sends such a part to another
//! replica after the hedge delay, through that node's queue, and drops the waiting one. A part
//! whose caller is gone (hedged elsewhere, or the client gave up) is left out of the next call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use leakbloom_cluster::{Bitmap, Consistency, NodeId, KEY_LEN};
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{CheckRequest, CheckResponse, SetResult};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Parts of at most this many keys are coalesced; larger ones are batches already.
pub const SMALL_PART_KEYS: usize = 16;

/// Calls in flight per node, sets and consistency before parts queue up.
pub const IN_FLIGHT: usize = 2;

/// Most keys in one coalesced call.
pub const MAX_KEYS: usize = 4096;

/// What a coalesced call shares: the node, the sets (as asked) and the consistency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kind {
    node: NodeId,
    sets: Vec<String>,
    consistency: Consistency,
}

/// One waiting part.
#[derive(Debug)]
struct Waiting {
    keys: Bytes,
    deadline: Instant,
    reply: oneshot::Sender<Result<CheckResponse, Status>>,
}

/// The parts of one kind.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    in_flight: usize,
}

/// The queues of every kind.
#[derive(Debug, Default)]
pub struct Coalescer {
    queues: Mutex<HashMap<Kind, Queue>>,
}

impl Coalescer {
    /// Checks `keys` (a small part) of `sets` on `node` through `client`, in a call shared with
    /// other parts of the same kind. The answer is this part's alone.
    pub async fn check(
        self: &Arc<Coalescer>,
        client: LookupClient<Channel>,
        node: NodeId,
        sets: &[String],
        consistency: Consistency,
        keys: Bytes,
        deadline: Instant,
    ) -> Result<CheckResponse, Status> {
        let kind = Kind {
            node,
            sets: sets.to_vec(),
            consistency,
        };
        let (reply, answer) = oneshot::channel();
        self.queues
            .lock()
            .expect("coalescer lock")
            .entry(kind.clone())
            .or_default()
            .waiting
            .push(Waiting {
                keys,
                deadline,
                reply,
            });
        self.clone().send(kind, client);
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable("a coalesced call was dropped")),
            Err(_) => Err(Status::deadline_exceeded("no answer before the deadline")),
        }
    }

    /// Sends the queued parts of `kind` as one call if fewer than [`IN_FLIGHT`] are in flight;
    /// the call's completion sends what queued up meanwhile.
    fn send(self: Arc<Coalescer>, kind: Kind, mut client: LookupClient<Channel>) {
        let batch = {
            let mut queues = self.queues.lock().expect("coalescer lock");
            let Some(queue) = queues.get_mut(&kind) else {
                return;
            };
            // Nobody waits for these any more (answered by a hedge, or abandoned).
            queue.waiting.retain(|waiting| !waiting.reply.is_closed());
            if queue.in_flight >= IN_FLIGHT || queue.waiting.is_empty() {
                if queue.in_flight == 0 {
                    queues.remove(&kind);
                }
                return;
            }
            let mut keys = 0;
            let take = queue
                .waiting
                .iter()
                .take_while(|waiting| {
                    keys += waiting.keys.len() / KEY_LEN;
                    keys <= MAX_KEYS
                })
                .count()
                .max(1);
            queue.in_flight += 1;
            queue.waiting.drain(..take).collect::<Vec<_>>()
        };
        tokio::spawn(async move {
            let mut packed = BytesMut::with_capacity(batch.iter().map(|w| w.keys.len()).sum());
            for waiting in &batch {
                packed.extend_from_slice(&waiting.keys);
            }
            let deadline = batch.iter().map(|w| w.deadline).max().expect("a batch");
            let mut request = Request::new(CheckRequest {
                sets: kind.sets.clone(),
                keys: packed.freeze(),
                consistency: kind.consistency.wire(),
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let answer = client.check(request).await.map(|a| a.into_inner());
            answer_each(batch, answer);
            {
                let mut queues = self.queues.lock().expect("coalescer lock");
                if let Some(queue) = queues.get_mut(&kind) {
                    queue.in_flight -= 1;
                    if queue.in_flight == 0 && queue.waiting.is_empty() {
                        queues.remove(&kind);
                    }
                }
            }
            self.send(kind, client);
        });
    }
}

/// Hands each part of a coalesced call its own slice of the answer (or the call's error).
fn answer_each(batch: Vec<Waiting>, answer: Result<CheckResponse, Status>) {
    let mut offset = 0;
    for waiting in batch {
        let keys = waiting.keys.len() / KEY_LEN;
        let own = match &answer {
            Ok(answer) => Ok(CheckResponse {
                results: answer
                    .results
                    .iter()
                    .map(|result| SetResult {
                        set: result.set.clone(),
                        present: Bitmap::slice(&result.present, offset, keys)
                            .into_bytes()
                            .into(),
                    })
                    .collect(),
            }),
            Err(status) => Err(status.clone()),
        };
        offset += keys;
        let _ = waiting.reply.send(own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_gets_its_own_answer() {
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        let deadline = Instant::now();
        let batch = vec![
            Waiting {
                keys: Bytes::from(vec![0u8; 2 * KEY_LEN]),
                deadline,
                reply: a,
            },
            Waiting {
                keys: Bytes::from(vec![0u8; KEY_LEN]),
                deadline,
                reply: b,
            },
        ];
        // Keys 0 and 2 present: part a's first key, part b's only key.
        let answer = CheckResponse {
            results: vec![SetResult {
                set: "s".into(),
                present: Bytes::from_static(&[0b101]),
            }],
        };
        answer_each(batch, Ok(answer));
        let a = a_rx.try_recv().unwrap().unwrap();
        let b = b_rx.try_recv().unwrap().unwrap();
        assert_eq!(&a.results[0].present[..], &[0b01]);
        assert_eq!(&b.results[0].present[..], &[0b1]);
    }
}
