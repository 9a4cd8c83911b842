//! The batching mechanism every kind of coalesced call shares: a queue of waiting parts per
//! kind, the calls of each kind in flight, deadlines, and parts whose caller is gone. What a
//! call sends, and how its reply is shared out among its parts, is the [`Kind`]'s.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use leakbloom_cluster::KEY_LEN;
use leakbloom_proto::v1::lookup_client::LookupClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Status;

use super::{IN_FLIGHT, MAX_KEYS};

/// A kind of call that small parts share: what its parts have in common (the node and the
/// request's fields other than its keys), how their keys are sent as one call, and how its
/// reply is shared out among them.
pub(crate) trait Kind: Clone + Eq + Hash + Send + 'static {
    /// The node's reply to a whole call.
    type Reply: Send + 'static;
    /// One part's share of a reply.
    type Answer: Send + 'static;

    /// Sends `keys` (every part's keys, packed, in order) through `client` as one call that
    /// gives up at `deadline`.
    fn send(
        &self,
        client: LookupClient<Channel>,
        keys: Bytes,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send + 'static;

    /// Each part's answer from a call's reply; the parts are given by their key counts, in
    /// the order their keys were sent. A failed call's status goes to every part without
    /// coming here.
    fn share(&self, reply: Self::Reply, parts: &[usize]) -> Vec<Result<Self::Answer, Status>>;
}

/// One waiting part.
struct Waiting<A> {
    keys: Bytes,
    deadline: Instant,
    reply: oneshot::Sender<Result<A, Status>>,
}

/// The parts of one kind.
struct Queue<A> {
    waiting: Vec<Waiting<A>>,
    in_flight: usize,
}

impl<A> Default for Queue<A> {
    fn default() -> Queue<A> {
        Queue {
            waiting: Vec::new(),
            in_flight: 0,
        }
    }
}

/// The queues of every kind of one type of call.
pub(crate) struct Queues<K: Kind> {
    queues: Mutex<HashMap<K, Queue<K::Answer>>>,
}

impl<K: Kind> Default for Queues<K> {
    fn default() -> Queues<K> {
        Queues {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Kind> fmt::Debug for Queues<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = self.queues.lock().expect("coalescer lock").len();
        f.debug_struct("Queues").field("kinds", &kinds).finish()
    }
}

impl<K: Kind> Queues<K> {
    /// Sends `keys` (a small part) through `client`, in a call shared with other parts of
    /// `kind`; returns this part's answer, or the call's failure, or DEADLINE_EXCEEDED at
    /// `deadline`, whichever comes first.
    pub(crate) async fn join(
        self: &Arc<Self>,
        kind: K,
        client: LookupClient<Channel>,
        keys: Bytes,
        deadline: Instant,
    ) -> Result<K::Answer, Status> {
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

    /// Sends the queued parts of `kind` as one call through `client` if fewer than
    /// [`IN_FLIGHT`] are in flight; the call's completion sends what queued up meanwhile.
    fn send(self: Arc<Self>, kind: K, client: LookupClient<Channel>) {
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
            // The latest: each part waits no longer than its own deadline (`join`), and one
            // caller's short deadline does not cut the others' call short.
            let deadline = batch.iter().map(|w| w.deadline).max().expect("a batch");
            let reply = kind.send(client.clone(), packed.freeze(), deadline).await;
            answer_each(&kind, batch, reply);
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

    /// How many parts wait (not in flight) for any kind: for tests that need parts queued.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        let queues = self.queues.lock().expect("coalescer lock");
        queues.values().map(|queue| queue.waiting.len()).sum()
    }
}

/// Hands each part of a call its share of the reply, or the call's failure (the same status,
/// so the same retry decision, for every part).
fn answer_each<K: Kind>(kind: &K, batch: Vec<Waiting<K::Answer>>, reply: Result<K::Reply, Status>) {
    let answers = match reply {
        Ok(reply) => {
            let parts: Vec<usize> = batch.iter().map(|w| w.keys.len() / KEY_LEN).collect();
            kind.share(reply, &parts)
        }
        Err(status) => batch.iter().map(|_| Err(status.clone())).collect(),
    };
    debug_assert_eq!(answers.len(), batch.len(), "one answer per part");
    for (waiting, answer) in batch.into_iter().zip(answers) {
        let _ = waiting.reply.send(answer);
    }
}
