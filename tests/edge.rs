//! The network edge under hostile input, end to end over real gRPC on 127.0.0.1:0: a node and a
//! router in front of it. A bad request gets a short `INVALID_ARGUMENT` of its own and nobody
//! else notices it; requests over the batch limit's size are refused before they are read;
//! connections that never say anything, or stop, are closed, and busy ones are not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use leakbloom_client::{Client, Consistency, DEFAULT_MAX_BATCH};
use leakbloom_cluster::max_request_bytes;
use leakbloom_node::Config;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{
    CheckRequest, CreateSetRequest, DropSetRequest, GetSetRequest, InsertRequest, ListSetsRequest,
};
use leakbloom_testkit::{eventually, within};
use leakbloom_tests::{
    node_behind_a_router, random_keys, router_config, served, TestNode, TestRouter,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// Longest status message a bad request may get back.
const SHORT: usize = leakbloom_cluster::MAX_STATUS_MESSAGE_BYTES;

/// Sends a request that is bad in the way `what` says through `raw` and returns its status.
type BadCall = fn(
    leakbloom_proto::v1::lookup_client::LookupClient<tonic::transport::Channel>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>,
>;

fn huge_name() -> String {
    "a".repeat(60_000)
}

fn bad_calls() -> Vec<(&'static str, BadCall)> {
    vec![
        ("check of a 60 KB set name", |mut raw| {
            Box::pin(async move {
                let request = CheckRequest {
                    sets: vec![huge_name()],
                    keys: vec![7u8; 32].into(),
                    consistency: 2,
                };
                raw.check(request).await.map(drop)
            })
        }),
        ("check of a real set and a 60 KB name", |mut raw| {
            Box::pin(async move {
                let request = CheckRequest {
                    sets: vec!["real".into(), huge_name()],
                    keys: vec![7u8; 32].into(),
                    consistency: 1,
                };
                raw.check(request).await.map(drop)
            })
        }),
        ("insert into a 60 KB set name", |mut raw| {
            Box::pin(async move {
                let request = InsertRequest {
                    set: huge_name(),
                    keys: vec![7u8; 32].into(),
                };
                raw.insert(request).await.map(drop)
            })
        }),
        ("get of a 60 KB set name", |mut raw| {
            Box::pin(async move {
                let request = GetSetRequest { name: huge_name() };
                raw.get_set(request).await.map(drop)
            })
        }),
        ("drop of a 60 KB set name", |mut raw| {
            Box::pin(async move {
                let request = DropSetRequest { name: huge_name() };
                raw.drop_set(request).await.map(drop)
            })
        }),
        ("create of a 60 KB set name", |mut raw| {
            Box::pin(async move {
                let request = CreateSetRequest {
                    name: huge_name(),
                    capacity: 1000,
                    fpr: 1e-3,
                    hashing: "sha256".into(),
                };
                raw.create_set(request).await.map(drop)
            })
        }),
        ("create with a 100 KB pepper id", |mut raw| {
            Box::pin(async move {
                let request = CreateSetRequest {
                    name: "peppered".into(),
                    capacity: 1000,
                    fpr: 1e-3,
                    hashing: format!("hmac-sha256:{}", "p".repeat(100_000)),
                };
                raw.create_set(request).await.map(drop)
            })
        }),
    ]
}

/// Checks that every bad call, sent `rounds` times through a fresh connection to `addr`, gets
/// a short `INVALID_ARGUMENT`; returns what went wrong otherwise.
async fn send_bad_calls(addr: SocketAddr, rounds: usize) -> Vec<String> {
    let mut client = Client::connect(&addr.to_string()).await.unwrap();
    let mut wrong = Vec::new();
    for _ in 0..rounds {
        for (what, call) in bad_calls() {
            match call(client.raw().clone()).await {
                Ok(()) => wrong.push(format!("{what}: accepted")),
                Err(status) => {
                    let message = status.message();
                    if status.code() != Code::InvalidArgument || message.len() > SHORT {
                        wrong.push(format!(
                            "{what}: {:?} with a {}-byte message {:?}",
                            status.code(),
                            message.len(),
                            message.chars().take(200).collect::<String>()
                        ));
                    }
                }
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_get_a_short_invalid_argument_and_bystanders_never_notice() {
    let node = TestNode::start_default().await;
    let router = TestRouter::start(router_config(node.addr)).await;
    let mut client = Client::connect(&router.addr.to_string()).await.unwrap();
    client
        .create_set("real", 100_000, 1e-6, "sha256")
        .await
        .unwrap();
    let keys = random_keys(3, 2_000);
    client.insert("real", &keys).await.unwrap();

    // Bystanders: checks of the real set through the router (single keys, which the router
    // coalesces, and batches; both consistencies), over connections of their own, while the
    // bad requests go through the same router and so the same router-to-node connection.
    let stop = Arc::new(AtomicBool::new(false));
    let passed = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut bystanders = Vec::new();
    for b in 0..24 {
        let mut client = Client::connect(&router.addr.to_string()).await.unwrap();
        let (stop, passed, failures, keys) =
            (stop.clone(), passed.clone(), failures.clone(), keys.clone());
        bystanders.push(tokio::spawn(async move {
            let sets = ["real".to_string()];
            let mut i = b;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % keys.len();
                let (batch, consistency) = match i % 3 {
                    0 => (&keys[i..i + 1], Consistency::Linearizable),
                    1 => (&keys[i..i + 1], Consistency::Any),
                    _ => (&keys[i / 2..i / 2 + 300], Consistency::Any),
                };
                match client.check(&sets, batch, consistency).await {
                    Ok(found) if found[0].present.iter().all(|&p| p) => {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => failures.lock().unwrap().push("a key was missed".into()),
                    Err(error) => failures.lock().unwrap().push(error.to_string()),
                }
            }
        }));
    }
    eventually(
        "bystanders passed 200 checks",
        Duration::from_secs(60),
        async || passed.load(Ordering::Relaxed) >= 200,
    )
    .await;

    let through_router = send_bad_calls(router.addr, 10).await;
    let at_node = send_bad_calls(node.addr, 2).await;
    let before_stop = passed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for bystander in bystanders {
        bystander.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        through_router.is_empty() && at_node.is_empty() && failures.is_empty(),
        "through the router: {through_router:#?}\nat the node: {at_node:#?}\n{} of {} bystander \
         checks failed, first: {:?}",
        failures.len(),
        failures.len() + passed.load(Ordering::Relaxed),
        failures.first()
    );
    assert!(before_stop > 200, "the bystanders made no progress");
}

#[tokio::test]
async fn the_router_refuses_oversized_requests_without_forwarding_them() {
    let (_node, metrics, router, _client) = node_behind_a_router("real").await;
    let checks = served(metrics, "Check").await;
    let inserts = served(metrics, "Insert").await;

    // A client without limits of its own, as a hostile one would be.
    let mut raw = LookupClient::connect(format!("http://{}", router.addr))
        .await
        .unwrap();
    let limit = max_request_bytes(DEFAULT_MAX_BATCH);
    let over_bytes = format!("the limit is: {limit} bytes");
    let keys = |n: usize| -> bytes::Bytes { vec![1u8; n * 32].into() };
    let check = |sets: Vec<String>, n: usize| CheckRequest {
        sets,
        keys: keys(n),
        consistency: 2,
    };
    let real = || vec!["real".to_string()];
    let cases: Vec<(&str, CheckRequest, Code, String)> = vec![
        (
            "8 MiB of keys",
            check(real(), 4 * DEFAULT_MAX_BATCH),
            Code::OutOfRange,
            over_bytes.clone(),
        ),
        (
            "one key over the batch limit",
            check(real(), DEFAULT_MAX_BATCH + 1),
            Code::InvalidArgument,
            "over the limit of 65536 keys".into(),
        ),
        (
            "1025 sets",
            check((0..1025).map(|i| format!("s{i}")).collect(), 1),
            Code::InvalidArgument,
            "over the limit of 1024 sets".into(),
        ),
    ];
    for (what, request, code, needle) in cases {
        let status = raw.check(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(&needle), "{what}: {status:?}");
    }
    let status = raw
        .insert(InsertRequest {
            set: "real".into(),
            keys: keys(4 * DEFAULT_MAX_BATCH),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains(&over_bytes), "{status:?}");

    // None of them reached the node; the limits themselves do.
    assert_eq!(served(metrics, "Check").await, checks);
    assert_eq!(served(metrics, "Insert").await, inserts);
    let sets: Vec<String> = (0..1024).map(|i| format!("s{i}")).collect();
    let status = raw.check(check(sets, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    raw.check(check(real(), DEFAULT_MAX_BATCH)).await.unwrap();
    assert_eq!(served(metrics, "Check").await, checks + 2);
}

/// A TCP proxy on a free loopback port that counts the connections it accepts; it forwards
/// them to the address given to [`Proxy::forward`].
struct Proxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    target: Arc<OnceLock<SocketAddr>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let target: Arc<OnceLock<SocketAddr>> = Arc::default();
        let (count, to) = (accepted.clone(), target.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let to = *to.get().expect("a target before the first connection");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            accepted,
            target,
        }
    }

    fn forward(&self, to: SocketAddr) {
        self.target.set(to).unwrap();
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a handshake, then silence.
const HANDSHAKE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Connects to `addr`, sends `hello` and reads until the server closes the connection;
/// returns how long that took after `hello` was sent.
async fn closed_after(addr: SocketAddr, hello: &[u8]) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(hello).await.unwrap();
    let sent = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return sent.elapsed(),
                Ok(_) => {}
            }
        }
    };
    within(
        format!("{addr} to close the connection"),
        Duration::from_secs(30),
        closed,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_at_every_port_and_busy_ones_are_not() {
    let handshake = Duration::from_millis(300);
    let idle = Duration::from_secs(3);
    // The router reaches the node through a proxy that counts its connections: the node
    // advertises the proxy's address as its own.
    let proxy = Proxy::start().await;
    let node = TestNode::start(Config {
        advertise: Some(proxy.addr.to_string()),
        handshake_timeout_ms: handshake.as_millis() as u64,
        idle_timeout_ms: idle.as_millis() as u64,
        ..Config::default()
    })
    .await;
    proxy.forward(node.addr);
    let router = TestRouter::start(leakbloom_router::Config {
        connections: leakbloom_net::Timeouts { handshake, idle },
        ..router_config(proxy.addr)
    })
    .await;
    assert_eq!(proxy.accepted(), 1, "the router's channel to the node");

    // A channel of another client through the proxy, used once and then left idle.
    let mut idle_client = LookupClient::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    idle_client.list_sets(ListSetsRequest {}).await.unwrap();
    assert_eq!(proxy.accepted(), 2);

    let ports = [
        ("node client port", node.addr),
        ("node peer port", node.peer),
        ("router port", router.addr),
    ];
    let (silent, idle_after) = tokio::join!(
        futures_util::future::join_all(ports.map(|(_, addr)| closed_after(addr, b""))),
        futures_util::future::join_all(ports.map(|(_, addr)| closed_after(addr, HANDSHAKE))),
    );
    for (((what, _), silent), idle_after) in ports.iter().zip(silent).zip(idle_after) {
        assert!(silent >= handshake, "{what}: closed after {silent:?}");
        assert!(silent < idle, "{what}: closed after {silent:?}, as if idle");
        assert!(idle_after >= idle, "{what}: closed after {idle_after:?}");
    }

    // More than an idle timeout has passed (and a moment for the closes to reach the clients).
    // The router's channel carried its shard map refreshes (every second) and keepalive pings
    // all along: the same connection still.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = Client::connect(&router.addr.to_string()).await.unwrap();
    client.list_sets().await.unwrap();
    assert_eq!(proxy.accepted(), 2, "the router's channel was reconnected");
    // The idle client's was closed: its next call needs a new connection.
    idle_client.list_sets(ListSetsRequest {}).await.unwrap();
    assert_eq!(
        proxy.accepted(),
        3,
        "the idle client's channel was not closed"
    );
}
