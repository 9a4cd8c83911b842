//! `leakbloom dev`: a local 3-node cluster (every shard replicated on all three by Raft) and a
//! router in front of it, with a demo set, for trying the API in one command. Nodes and router
//! run in this process but talk over real sockets, and the nodes keep their data on disk under
//! `--data-dir`, so a restart reuses it (`--fresh` wipes it first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine as _;
use futures_util::future::try_join_all;
use leakbloom_client::Client;
use leakbloom_ident::Kind;
use leakbloom_node::{Config, Server};

/// Name of the demo set.
pub const DEMO_SET: &str = "demo";

/// Nodes in the dev cluster: the smallest that keeps a Raft quorum with one node down.
pub const DEV_NODES: u16 = 3;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// The router's client API address: where clients connect.
    #[arg(long, env = "LEAKBLOOM_LISTEN", default_value = crate::DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Client API address of node 1; nodes 2 and 3 take the next two ports (port 0: any free
    /// ports).
    #[arg(long, default_value = "127.0.0.1:50061")]
    node_listen: SocketAddr,
    /// The router's Prometheus endpoint (`GET /metrics`); not served when unset.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Peer address of node 1; nodes 2 and 3 take the next two ports.
    #[arg(long, default_value = "127.0.0.1:7061")]
    peer_listen: SocketAddr,
    /// Where the nodes keep their data (one subdirectory each); reused on restart.
    #[arg(long, default_value = "leakbloom-dev")]
    data_dir: PathBuf,
    /// Delete the data directory first.
    #[arg(long)]
    fresh: bool,
    /// Synthetic identifiers in the demo set (half emails, half phone numbers).
    #[arg(long, default_value_t = 200_000)]
    demo_identifiers: u64,
    /// Shards the key space is split into.
    #[arg(long, env = "LEAKBLOOM_SHARDS", default_value_t = leakbloom_node::config::DEFAULT_SHARDS)]
    shards: u32,
}

/// The i-th synthetic email of the demo set.
pub fn demo_email(i: u64) -> String {
    format!("demo-user-{i}@example.com")
}

/// The i-th synthetic phone number of the demo set: UK mobiles +44 7400 000000 onwards
/// (a real-shaped, valid range; these are made up, not leaked).
pub fn demo_phone(i: u64) -> String {
    format!("+4474{:08}", i % 100_000_000)
}

/// The address of node `i` (from 0): `base` with its port plus `i`. Port 0 stays 0 for client
/// addresses (any free port); peers must know each other's ports in advance, so a peer base
/// of port 0 picks a free port now (`peer` set).
fn nth(base: SocketAddr, i: u16, peer: bool) -> Result<SocketAddr> {
    if base.port() == 0 {
        if !peer {
            return Ok(base);
        }
        let port = leakbloom_net::free_port(base.ip())
            .with_context(|| format!("cannot find a free port on {}", base.ip()))?;
        return Ok(SocketAddr::new(base.ip(), port));
    }
    let port = base
        .port()
        .checked_add(i)
        .with_context(|| format!("{base}: give a port below 65533"))?;
    Ok(SocketAddr::new(base.ip(), port))
}

pub async fn run(args: DevArgs) -> Result<()> {
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot delete {}", args.data_dir.display()))?;
    }
    let mut peers = BTreeMap::new();
    for i in 0..DEV_NODES {
        peers.insert(u64::from(i) + 1, nth(args.peer_listen, i, true)?);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The nodes share one process: each may hold its share of what the process can get.
    let memory = leakbloom_node::memory::ProcessMemory::read();
    let filter_memory = memory.filter_limit() / u64::from(DEV_NODES);
    tracing::info!(%memory, filter_memory, "filter memory per node");
    let mut configs = Vec::new();
    for i in 0..DEV_NODES {
        let id = u64::from(i) + 1;
        let config = Config {
            id,
            listen: nth(args.node_listen, i, false)?,
            peer_listen: peers[&id],
            peers: peers
                .iter()
                .map(|(&id, addr)| (id, addr.to_string()))
                .collect(),
            data_dir: args.data_dir.join(format!("node-{id}")),
            shards: args.shards,
            max_filter_memory: Some(filter_memory),
            ..Config::default()
        };
        config.validate()?;
        configs.push(config);
    }
    // Together: nodes with new data directories ask each other whether the cluster is new.
    let servers = try_join_all(configs.into_iter().map(|config| async move {
        let id = config.id;
        Server::bind(config).await.with_context(|| {
            format!(
                "node {id} cannot start (is another dev cluster running? try \
                 --node-listen, --peer-listen, or --data-dir)"
            )
        })
    }))
    .await?;
    let mut addrs = Vec::new();
    let mut serving = Vec::new();
    for server in servers {
        addrs.push(server.local_addr());
        let mut stopped = stopped.clone();
        serving.push(tokio::spawn(server.run(async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        })));
    }
    // The router gets a thread and a current-thread runtime of its own, as it would have as
    // its own process: it does not queue behind the nodes' tasks.
    let config = leakbloom_router::Config {
        listen: args.listen,
        nodes: addrs.iter().map(|a| a.to_string()).collect(),
        metrics_listen: args.metrics_listen,
        timeout: leakbloom_router::router::DEFAULT_TIMEOUT,
        max_batch: leakbloom_client::DEFAULT_MAX_BATCH,
        connections: leakbloom_net::Timeouts::default(),
        hedge: leakbloom_client::hedge::DEFAULT_MARGIN,
    };
    let (bound, bound_rx) = tokio::sync::oneshot::channel();
    let mut stopped_router = stopped.clone();
    let routing =
        std::thread::Builder::new()
            .name("router".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let router = match leakbloom_router::Server::bind(config).await {
                        Ok(router) => router,
                        Err(error) => {
                            let _ = bound.send(Err(error));
                            return Ok(());
                        }
                    };
                    let _ = bound.send(Ok(router.local_addr()));
                    router
                        .run(async move {
                            let _ = stopped_router.wait_for(|&stop| stop).await;
                        })
                        .await?;
                    Ok(())
                })
            })?;
    let addr = bound_rx
        .await
        .context("the router thread ended")?
        .context("the router cannot start (is another dev cluster running? try --listen)")?;
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        stop.send_replace(true);
    });
    let mut client = Client::connect(&addr.to_string()).await?;
    let capacity = args.demo_identifiers.max(1_000_000);
    client
        .create_set(DEMO_SET, capacity, 1e-6, "sha256")
        .await?;
    let half = args.demo_identifiers / 2;
    let mut keys = Vec::with_capacity(args.demo_identifiers as usize);
    for i in 0..half {
        keys.push(leakbloom_ident::key(Kind::Email, &demo_email(i), None, None)?.1);
    }
    for i in 0..args.demo_identifiers - half {
        keys.push(leakbloom_ident::key(Kind::Phone, &demo_phone(i), None, None)?.1);
    }
    client.insert(DEMO_SET, &keys).await?;

    let example = demo_email(42);
    let key = leakbloom_ident::key(Kind::Email, &example, None, None)?.1;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    println!(
        "leakbloom dev: router on {addr}, in front of {nodes} nodes on {all} ({shards} shards, \
         each on all {nodes} nodes by Raft; data in {dir})\n\
         demo set {DEMO_SET:?}: {n} synthetic identifiers: {emails} emails {first} .. {last_email}, \
         {phones} phones {phone0} ..\n\n\
         try:\n\
         \x20 leakbloom check --addr {addr} --kind email {example}\n\
         \x20 leakbloom check --addr {addr} --kind phone {phone0} +447911123456\n\
         \x20 leakbloom sets list --addr {addr}\n\
         \x20 grpcurl -plaintext {addr} list leakbloom.v1.Lookup\n\
         \x20 grpcurl -plaintext -d '{{\"sets\":[\"{DEMO_SET}\"],\"keys\":\"{key_b64}\"}}' {addr} leakbloom.v1.Lookup/Check\n\
         \x20   (keys = base64 of SHA-256(\"{example}\"); present \"AQ==\" means bit 0 is set: may be in the set)\n\n\
         Ctrl-C stops it.",
        shards = args.shards,
        nodes = DEV_NODES,
        all = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dir = args.data_dir.display(),
        n = args.demo_identifiers,
        emails = half,
        first = demo_email(0),
        last_email = demo_email(half.saturating_sub(1)),
        phones = args.demo_identifiers - half,
        phone0 = demo_phone(0),
    );
    routing
        .join()
        .map_err(|_| anyhow::anyhow!("the router thread panicked"))??;
    for node in serving {
        node.await??;
    }
    Ok(())
}
