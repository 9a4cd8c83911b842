//! Test support: real leakbloom servers on `127.0.0.1:0`, shut down gracefully on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leakbloom_client::{Client, Key, DEFAULT_MAX_BATCH};
use leakbloom_node::{Config, Node, Server};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A one-node cluster serving on free loopback ports, with its data in a temporary directory.
#[derive(Debug)]
pub struct TestNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves metrics, when the config asked for them.
    pub metrics: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
    /// Where its peer port listens.
    pub peer: SocketAddr,
    /// The node itself, for looking inside (its replicas' Raft handles).
    pub node: Arc<Node>,
}

impl TestNode {
    /// Starts a node with `config` (its `listen` and `peer_listen`, and `metrics_listen` when
    /// set, are replaced by `127.0.0.1:0`, its `data_dir` by a fresh temporary directory).
    pub async fn start(config: Config) -> TestNode {
        let data = leakbloom_testkit::scratch_on_disk();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            listen: any,
            peer_listen: any,
            metrics_listen: config.metrics_listen.map(|_| any),
            data_dir: data.path().to_path_buf(),
            ..config
        };
        let server = Server::bind(config).await.expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let metrics = server.metrics_addr();
        let peer = server.peer_addr();
        let node = server.node();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server failed");
        });
        TestNode {
            addr,
            metrics,
            shutdown: Some(tx),
            task: Some(task),
            _data: data,
            peer,
            node,
        }
    }

    /// Starts a node with the default config.
    pub async fn start_default() -> TestNode {
        TestNode::start(Config::default()).await
    }

    /// A client connected to this node.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string())
            .await
            .expect("connect to test node")
    }

    /// Stops the node and waits until it has finished serving.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task panicked");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `n` random keys from a seeded generator.
pub fn random_keys(seed: u64, n: usize) -> Vec<Key> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen()).collect()
}

/// `GET path` on a metrics port, as a Prometheus scraper would send it: the whole reply.
pub async fn scrape(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

/// The count of calls of `rpc` a node served, from its metrics port.
pub async fn served(metrics: SocketAddr, rpc: &str) -> u64 {
    let reply = scrape(metrics, "/metrics").await;
    let prefix = format!("leakbloom_request_seconds_count{{rpc=\"{rpc}\"}} ");
    reply
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.parse().unwrap())
}

/// A router on a free loopback port in front of `nodes`, stopped on drop.
#[derive(Debug)]
pub struct TestRouter {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestRouter {
    /// Starts a router with `config`; returns once it has learned the shard map.
    pub async fn start(config: leakbloom_router::Config) -> TestRouter {
        let server = leakbloom_router::Server::bind(config)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        // Ready once it has learned the shard map.
        let mut client = Client::connect(&addr.to_string()).await.unwrap();
        let what = "the router learned the shard map (it lists the sets)";
        leakbloom_testkit::eventually(what, Duration::from_secs(10), async || {
            client.list_sets().await
        })
        .await;
        TestRouter { addr, _stop: stop }
    }
}

/// A node that serves metrics (their address is the second value), a router in front of it,
/// and a client of the router; the cluster has one set, `set`, empty, for 10 000 keys.
pub async fn node_behind_a_router(set: &str) -> (TestNode, SocketAddr, TestRouter, Client) {
    let node = TestNode::start(Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await;
    let metrics = node.metrics.expect("metrics served");
    let router = TestRouter::start(router_config(node.addr)).await;
    let mut client = Client::connect(&router.addr.to_string()).await.unwrap();
    client
        .create_set(set, 10_000, 1e-3, "sha256")
        .await
        .unwrap();
    (node, metrics, router, client)
}

/// A router's config on a free loopback port in front of the node at `node`.
pub fn router_config(node: SocketAddr) -> leakbloom_router::Config {
    leakbloom_router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        nodes: vec![node.to_string()],
        metrics_listen: None,
        timeout: Duration::from_secs(10),
        max_batch: DEFAULT_MAX_BATCH,
        connections: leakbloom_net::Timeouts::default(),
        hedge: leakbloom_client::hedge::DEFAULT_MARGIN,
    }
}
