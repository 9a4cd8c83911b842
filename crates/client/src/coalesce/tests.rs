//! Stories of coalescing told against a fake node: a real tonic server on 127.0.0.1:0 that
//! records every call it gets and answers as the test says, holding calls until the test lets
//! them go, so that parts can be made to queue behind the calls in flight.

use std::sync::Mutex;
use std::time::Duration;

use leakbloom_cluster::{Key, KEY_LEN, LEADER_METADATA};
use leakbloom_proto::v1::lookup_server::{Lookup, LookupServer};
use leakbloom_proto::v1::{
    CreateSetRequest, DropSetRequest, DropSetResponse, GetSetRequest, InsertResponse,
    ListSetsRequest, ListSetsResponse, SetInfo,
};
use leakbloom_testkit::{eventually, within};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response};

use super::*;
use crate::status::{leader_hint, retryable};

/// Long enough for anything here; a part that takes longer has hung.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the fake node answers an insert.
#[derive(Clone, Debug)]
enum Ack {
    /// Every key.
    All,
    /// One key fewer than it was sent.
    Short,
    /// This status.
    Fail(Status),
}

/// One call the fake node got.
#[derive(Clone, Debug)]
struct Seen {
    /// The set inserted into, or the sets checked, joined by commas.
    sets: String,
    keys: Vec<Key>,
    /// The call's `grpc-timeout`.
    timeout: Duration,
}

/// The fake node's state, shared by its server and the test.
#[derive(Debug)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
    ack: Mutex<Ack>,
    /// Calls are answered only while this is true.
    open: watch::Sender<bool>,
}

/// A fake node serving on 127.0.0.1:0, and a client to it.
struct FakeNode {
    fake: Arc<Fake>,
    client: LookupClient<Channel>,
}

impl FakeNode {
    /// Starts a fake node answering inserts with `ack`; `open`: whether it answers calls at
    /// once or holds them until [`FakeNode::open`].
    async fn start(ack: Ack, open: bool) -> FakeNode {
        let fake = Arc::new(Fake {
            seen: Mutex::default(),
            ack: Mutex::new(ack),
            open: watch::channel(open).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder()
            .add_service(LookupServer::from_arc(fake.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        let client = LookupClient::new(crate::channel::lazy(&addr.to_string()).unwrap());
        FakeNode { fake, client }
    }

    /// Answers the calls held so far and every call from now on.
    fn open(&self) {
        self.fake.open.send_replace(true);
    }

    /// Every call so far, in the order they arrived.
    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().unwrap().clone()
    }

    /// Waits until the node got `calls` calls.
    async fn until_seen(&self, calls: usize) {
        let what = format!("the node got {calls} calls");
        eventually(what, PATIENCE, async || self.seen().len() >= calls).await;
    }

    /// Inserts keys 0, 1, ... into `set`, one a part, as many parts as go out at once, and
    /// waits until the node holds their calls: parts inserted next wait behind them.
    async fn fill(
        &self,
        coalescer: &Arc<Coalescer>,
        set: &str,
    ) -> Vec<JoinHandle<Result<u64, Status>>> {
        let first = (0..IN_FLIGHT as u8)
            .map(|i| self.insert(coalescer, set, &[key(i)], PATIENCE))
            .collect();
        self.until_seen(IN_FLIGHT).await;
        first
    }

    /// Inserts `keys` into `set` through `coalescer` from a task of its own, to give up after
    /// `timeout`.
    fn insert(
        &self,
        coalescer: &Arc<Coalescer>,
        set: &str,
        keys: &[Key],
        timeout: Duration,
    ) -> JoinHandle<Result<u64, Status>> {
        let (coalescer, client, set) = (coalescer.clone(), self.client.clone(), set.to_string());
        let keys = Bytes::from(keys.concat());
        let deadline = Instant::now() + timeout;
        tokio::spawn(async move { coalescer.insert(client, 1, &set, keys, deadline).await })
    }
}

impl Fake {
    /// Records a call, then waits until calls are answered.
    async fn record(&self, sets: String, keys: &Bytes, metadata: &tonic::metadata::MetadataMap) {
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .map_or(Duration::MAX, grpc_timeout);
        let (keys, _) = keys.as_chunks::<KEY_LEN>();
        self.seen.lock().unwrap().push(Seen {
            sets,
            keys: keys.to_vec(),
            timeout,
        });
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.unwrap();
    }
}

/// A `grpc-timeout` value as tonic writes it: digits and a unit.
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unexpected grpc-timeout unit {other}"),
    }
}

#[tonic::async_trait]
impl Lookup for Fake {
    /// Every set named says a key may be present when its first byte is odd.
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.record(request.sets.join(","), &request.keys, &metadata)
            .await;
        let (keys, _) = request.keys.as_chunks::<KEY_LEN>();
        let mut present = Bitmap::new(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if key[0] % 2 == 1 {
                present.set(i);
            }
        }
        let results = request
            .sets
            .into_iter()
            .map(|set| SetResult {
                set,
                present: present.as_bytes().to_vec().into(),
            })
            .collect();
        Ok(Response::new(CheckResponse { results }))
    }

    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<InsertResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.record(request.set, &request.keys, &metadata).await;
        let keys = (request.keys.len() / KEY_LEN) as u64;
        let ack = self.ack.lock().unwrap().clone();
        match ack {
            Ack::All => Ok(Response::new(InsertResponse { keys })),
            Ack::Short => Ok(Response::new(InsertResponse { keys: keys - 1 })),
            Ack::Fail(status) => Err(status),
        }
    }

    async fn create_set(&self, _: Request<CreateSetRequest>) -> Result<Response<SetInfo>, Status> {
        Err(Status::unimplemented("not a real node"))
    }

    async fn drop_set(
        &self,
        _: Request<DropSetRequest>,
    ) -> Result<Response<DropSetResponse>, Status> {
        Err(Status::unimplemented("not a real node"))
    }

    async fn list_sets(
        &self,
        _: Request<ListSetsRequest>,
    ) -> Result<Response<ListSetsResponse>, Status> {
        Err(Status::unimplemented("not a real node"))
    }

    async fn get_set(&self, _: Request<GetSetRequest>) -> Result<Response<SetInfo>, Status> {
        Err(Status::unimplemented("not a real node"))
    }
}

/// Key `i`: 32 bytes of `i`.
fn key(i: u8) -> Key {
    [i; KEY_LEN]
}

/// Waits until `parts` parts wait in `queues` (the calls before them are held).
async fn until_waiting<K: Kind>(queues: &Queues<K>, parts: usize) {
    let what = format!("{parts} parts wait");
    eventually(what, PATIENCE, async || queues.waiting() == parts).await;
}

/// The answer of each part, in order.
async fn answers<T>(parts: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut answers = Vec::new();
    for part in parts {
        answers.push(within("a part's answer", PATIENCE, part).await.unwrap());
    }
    answers
}

#[tokio::test]
async fn many_single_key_inserts_to_one_node_share_a_call() {
    let node = FakeNode::start(Ack::All, false).await;
    let coalescer = Arc::new(Coalescer::default());
    // The first parts go out at once, as calls of their own; the next 48 wait for them.
    let mut parts = node.fill(&coalescer, "leak").await;
    parts.extend(
        (IN_FLIGHT as u8..50).map(|i| node.insert(&coalescer, "leak", &[key(i)], PATIENCE)),
    );
    until_waiting(&coalescer.inserts, 50 - IN_FLIGHT).await;

    node.open();
    for answer in answers(parts).await {
        assert_eq!(answer.unwrap(), 1, "each part is told its own key count");
    }
    // When the first call returned, the 48 waiting parts went out together as one call.
    let calls: Vec<usize> = node.seen().iter().map(|seen| seen.keys.len()).collect();
    assert_eq!(calls, [1, 1, 48]);
    let mut inserted: Vec<Key> = node.seen().into_iter().flat_map(|s| s.keys).collect();
    inserted.sort();
    assert_eq!(inserted, (0..50).map(key).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_short_acknowledgement_fails_every_coalesced_part() {
    let node = FakeNode::start(Ack::Short, false).await;
    let coalescer = Arc::new(Coalescer::default());
    let first = node.fill(&coalescer, "leak").await;
    // Three parts of 1, 2 and 3 keys wait, then travel as one call of 6 keys, acknowledged 5.
    let coalesced = vec![
        node.insert(&coalescer, "leak", &[key(10)], PATIENCE),
        node.insert(&coalescer, "leak", &[key(11), key(12)], PATIENCE),
        node.insert(&coalescer, "leak", &[key(13), key(14), key(15)], PATIENCE),
    ];
    until_waiting(&coalescer.inserts, 3).await;

    node.open();
    for failed in answers(coalesced).await {
        let status = failed.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(
            !retryable(&status),
            "a malformed reply is not retried: {status:?}"
        );
        assert!(
            status.message().contains("acknowledged 5 keys of 6"),
            "{status:?}"
        );
    }
    // Not one part is taken as acknowledged when its shared call was not.
    for failed in answers(first).await {
        assert_eq!(failed.unwrap_err().code(), Code::Internal);
    }
    assert_eq!(node.seen()[IN_FLIGHT].keys.len(), 6);
}

#[tokio::test]
async fn parts_for_different_sets_are_not_mixed() {
    let node = FakeNode::start(Ack::All, false).await;
    let coalescer = Arc::new(Coalescer::default());
    // Keys 0-9 for set a, 100-109 for set b, arriving interleaved.
    let parts: Vec<_> = (0..10)
        .flat_map(|i| {
            [
                node.insert(&coalescer, "a", &[key(i)], PATIENCE),
                node.insert(&coalescer, "b", &[key(100 + i)], PATIENCE),
            ]
        })
        .collect();
    // Each set has calls in flight of its own, and parts waiting of its own.
    node.until_seen(2 * IN_FLIGHT).await;
    until_waiting(&coalescer.inserts, 20 - 2 * IN_FLIGHT).await;

    node.open();
    assert!(answers(parts)
        .await
        .into_iter()
        .all(|answer| answer.is_ok()));
    let seen = node.seen();
    for set in ["a", "b"] {
        let calls: Vec<&Seen> = seen.iter().filter(|seen| seen.sets == set).collect();
        assert_eq!(calls.len(), IN_FLIGHT + 1, "set {set}: {calls:?}");
        let mut keys: Vec<Key> = calls.iter().flat_map(|seen| seen.keys.clone()).collect();
        keys.sort();
        let first = if set == "a" { 0 } else { 100 };
        assert_eq!(keys, (first..first + 10).map(key).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_failed_call_reaches_every_part_with_its_status() {
    let mut not_leader = Status::unavailable("not the leader");
    not_leader
        .metadata_mut()
        .insert(LEADER_METADATA, "3".parse().unwrap());
    let missing = Status::not_found("set \"leak\" does not exist");
    for (status, retried) in [(not_leader, true), (missing, false)] {
        let node = FakeNode::start(Ack::Fail(status.clone()), false).await;
        let coalescer = Arc::new(Coalescer::default());
        let parts: Vec<_> = (0..10)
            .map(|i| node.insert(&coalescer, "leak", &[key(i)], PATIENCE))
            .collect();
        until_waiting(&coalescer.inserts, 10 - IN_FLIGHT).await;
        node.open();
        for failed in answers(parts).await {
            // Exactly the node's status, so each part is retried, or not, as it would be alone.
            let failed = failed.unwrap_err();
            assert_eq!(failed.code(), status.code());
            assert_eq!(failed.message(), status.message());
            assert_eq!(leader_hint(&failed), leader_hint(&status));
            assert_eq!(retryable(&failed), retried, "{failed:?}");
        }
        assert_eq!(node.seen().len(), IN_FLIGHT + 1);
    }

    // A node nobody listens for: every part fails as a lost connection does, retryably.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = listener.local_addr().unwrap().to_string();
    drop(listener);
    let client = LookupClient::new(crate::channel::lazy(&gone).unwrap());
    let coalescer = Arc::new(Coalescer::default());
    let deadline = Instant::now() + PATIENCE;
    let parts: Vec<_> = (0..10)
        .map(|i| {
            let (coalescer, client) = (coalescer.clone(), client.clone());
            let keys = Bytes::from(key(i).to_vec());
            tokio::spawn(async move { coalescer.insert(client, 1, "s", keys, deadline).await })
        })
        .collect();
    for failed in answers(parts).await {
        let failed = failed.unwrap_err();
        assert!(retryable(&failed), "{failed:?}");
    }
}

#[tokio::test]
async fn a_short_deadline_ends_its_own_part_and_not_the_shared_call() {
    let node = FakeNode::start(Ack::All, false).await;
    let coalescer = Arc::new(Coalescer::default());
    let first = node.fill(&coalescer, "leak").await;
    let hasty = node.insert(&coalescer, "leak", &[key(10)], Duration::from_millis(100));
    let patient = node.insert(&coalescer, "leak", &[key(11)], PATIENCE);
    until_waiting(&coalescer.inserts, 2).await;

    // The hasty caller gives up at its own deadline while the node still holds every call...
    let status = within("the hasty part's answer", PATIENCE, hasty)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // ... and is left out of the next call, which carries the patient part's deadline.
    node.open();
    assert_eq!(answers(vec![patient]).await[0].as_ref().unwrap(), &1);
    assert!(answers(first).await.iter().all(|answer| answer.is_ok()));
    let next = &node.seen()[IN_FLIGHT];
    assert_eq!(next.keys, [key(11)]);
    assert!(next.timeout > PATIENCE / 2, "{:?}", next.timeout);
}

#[tokio::test]
async fn single_key_checks_share_a_call_and_each_gets_its_own_bits() {
    let node = FakeNode::start(Ack::All, false).await;
    let coalescer = Arc::new(Coalescer::default());
    let sets = vec!["a".to_string(), "b".to_string()];
    let deadline = Instant::now() + PATIENCE;
    // Keys 0-19, one a part; odd keys are present. Part 7 has two keys: 7 and 8.
    let parts: Vec<_> = (0..20u8)
        .filter(|&i| i != 8)
        .map(|i| {
            let keys: Vec<Key> = if i == 7 {
                vec![key(7), key(8)]
            } else {
                vec![key(i)]
            };
            let (coalescer, client, sets) = (coalescer.clone(), node.client.clone(), sets.clone());
            let keys = Bytes::from(keys.concat());
            tokio::spawn(async move {
                let answer = coalescer
                    .check(client, 1, &sets, Consistency::Any, keys, deadline)
                    .await;
                (i, answer)
            })
        })
        .collect();
    node.until_seen(IN_FLIGHT).await;
    until_waiting(&coalescer.checks, 19 - IN_FLIGHT).await;

    node.open();
    for (i, answer) in answers(parts).await {
        let answer = answer.unwrap();
        let expected: &[u8] = if i == 7 { &[0b01] } else { &[i % 2] };
        for (result, set) in answer.results.iter().zip(["a", "b"]) {
            assert_eq!(result.set, set);
            assert_eq!(&result.present[..], expected, "part {i}");
        }
    }
    let calls: Vec<usize> = node.seen().iter().map(|seen| seen.keys.len()).collect();
    assert_eq!(calls, [1, 1, 18]);
}
