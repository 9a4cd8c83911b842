//! The batching mechanism every kind of coalesced call shares: a queue of waiting parts per
//! kind, the calls of each kind in flight, deadlines, and parts whose caller is gone. What a
//! call is, and how its reply is shared out among its parts, is the [`Call`]'s.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use leakbloom_cluster::KEY_LEN;
use tokio::sync::oneshot;
use tonic::Status;

use super::{IN_FLIGHT, MAX_KEYS};

/// One kind of call that small parts share: it knows where and how to send the parts' keys
/// as one call, and how to share the reply out. A value carries what the call needs (a client,
/// the request's other fields); parts of one [`Kind`](Call::Kind) may travel in any one call
/// of that kind, sent with any of their values.
pub(crate) trait Call: Clone + Send + 'static {
    /// What parts must have in common to travel together: the node and the request's fields
    /// other than its keys.
    type Kind: Clone + Eq + Hash + Send + 'static;
    /// The node's reply to a whole call.
    type Reply: Send + 'static;
    /// One part's share of a reply.
    type Answer: Send + 'static;

    /// This call's kind.
    fn kind(&self) -> Self::Kind;

    /// Sends `keys` (every part's keys, packed, in order) as one call that gives up at
    /// `deadline`.
    fn send(
        self,
        keys: Bytes,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send + 'static;

    /// Each part's answer from the reply to a call of `kind`; the parts are given by their key
    /// counts, in the order their keys were sent. A failed call's status goes to every part
    /// without coming here.
    fn share(
        kind: &Self::Kind,
        reply: Self::Reply,
        parts: &[usize],
    ) -> Vec<Result<Self::Answer, Status>>;
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

/// The queues of every kind of one [`Call`].
pub(crate) struct Queues<C: Call> {
    queues: Mutex<HashMap<C::Kind, Queue<C::Answer>>>,
}

impl<C: Call> Default for Queues<C> {
    fn default() -> Queues<C> {
        Queues {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<C: Call> fmt::Debug for Queues<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = self.queues.lock().expect("coalescer lock").len();
        f.debug_struct("Queues").field("kinds", &kinds).finish()
    }
}

impl<C: Call> Queues<C> {
    /// Sends `keys` (a small part) with `call`, in a call shared with other parts of its kind;
    /// returns this part's answer, or the call's failure, or DEADLINE_EXCEEDED at `deadline`,
    /// whichever comes first.
    pub(crate) async fn join(
        self: &Arc<Self>,
        call: C,
        keys: Bytes,
        deadline: Instant,
    ) -> Result<C::Answer, Status> {
        let (reply, answer) = oneshot::channel();
        self.queues
            .lock()
            .expect("coalescer lock")
            .entry(call.kind())
            .or_default()
            .waiting
            .push(Waiting {
                keys,
                deadline,
                reply,
            });
        self.clone().send(call);
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable("a coalesced call was dropped")),
            Err(_) => Err(Status::deadline_exceeded("no answer before the deadline")),
        }
    }

    /// Sends the queued parts of `call`'s kind as one call if fewer than [`IN_FLIGHT`] are in
    /// flight; the call's completion sends what queued up meanwhile.
    fn send(self: Arc<Self>, call: C) {
        let kind = call.kind();
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
            let reply = call.clone().send(packed.freeze(), deadline).await;
            answer_each::<C>(&kind, batch, reply);
            {
                let mut queues = self.queues.lock().expect("coalescer lock");
                if let Some(queue) = queues.get_mut(&kind) {
                    queue.in_flight -= 1;
                    if queue.in_flight == 0 && queue.waiting.is_empty() {
                        queues.remove(&kind);
                    }
                }
            }
            self.send(call);
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
fn answer_each<C: Call>(
    kind: &C::Kind,
    batch: Vec<Waiting<C::Answer>>,
    reply: Result<C::Reply, Status>,
) {
    let answers = match reply {
        Ok(reply) => {
            let parts: Vec<usize> = batch.iter().map(|w| w.keys.len() / KEY_LEN).collect();
            C::share(kind, reply, &parts)
        }
        Err(status) => batch.iter().map(|_| Err(status.clone())).collect(),
    };
    debug_assert_eq!(answers.len(), batch.len(), "one answer per part");
    for (waiting, answer) in batch.into_iter().zip(answers) {
        let _ = waiting.reply.send(answer);
    }
}
