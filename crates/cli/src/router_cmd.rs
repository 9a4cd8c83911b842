//! `leakbloom router`: a stateless router in front of the nodes. Flags and `LEAKBLOOM_*`
//! variables only (it has no data and few settings).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use leakbloom_router::{Config, Server};

#[derive(clap::Args, Debug)]
pub struct RouterArgs {
    /// Client API address (leakbloom.v1.Lookup, health, reflection).
    #[arg(long, env = "LEAKBLOOM_LISTEN", default_value = crate::DEFAULT_ADDR)]
    pub listen: SocketAddr,
    /// Client addresses of some nodes, HOST:PORT,HOST:PORT...; the router learns the others
    /// (and every shard's replicas and leader) from them.
    #[arg(long, env = "LEAKBLOOM_NODES", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Prometheus endpoint address (`GET /metrics`, plain HTTP; not served when unset).
    #[arg(long, env = "LEAKBLOOM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Deadline in milliseconds for a call whose client sets none (the most a client's own
    /// deadline may be): retryable failures are retried until it passes.
    #[arg(long, env = "LEAKBLOOM_TIMEOUT_MS", default_value_t = leakbloom_router::router::DEFAULT_TIMEOUT.as_millis() as u64)]
    pub timeout_ms: u64,
    /// Hedged reads: an any-replica check part its node leaves unanswered for this many
    /// milliseconds more than the recent p99 of node calls is also sent to another replica
    /// holding the same shards (the first answer wins), so a frozen node costs a little
    /// latency instead of the deadline; 0 disables hedging.
    #[arg(long, env = "LEAKBLOOM_HEDGE_MS", default_value_t = leakbloom_client::hedge::DEFAULT_MARGIN.as_millis() as u64)]
    pub hedge_ms: u64,
    /// Worker threads: 0 (the default) one per core; 1 a single-threaded runtime (for a router
    /// sharing a small machine; it measured within noise of 2 threads on 2 cores here).
    #[arg(long, env = "LEAKBLOOM_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Most keys per Check or Insert request (the nodes' --max-batch applies when smaller);
    /// larger requests are refused before they are read. Match the nodes' --max-batch.
    #[arg(long, env = "LEAKBLOOM_MAX_BATCH", default_value_t = leakbloom_client::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Milliseconds a new client connection may take to send the HTTP/2 preface before it is
    /// closed.
    #[arg(long, env = "LEAKBLOOM_HANDSHAKE_TIMEOUT_MS", default_value_t = leakbloom_net::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64)]
    pub handshake_timeout_ms: u64,
    /// Milliseconds a client connection may go without sending a byte before it is closed.
    #[arg(long, env = "LEAKBLOOM_IDLE_TIMEOUT_MS", default_value_t = leakbloom_net::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
}

impl RouterArgs {
    /// The router's configuration.
    pub fn config(&self) -> Config {
        Config {
            listen: self.listen,
            nodes: self
                .nodes
                .iter()
                .map(|node| node.trim().to_string())
                .filter(|node| !node.is_empty())
                .collect(),
            metrics_listen: self.metrics_listen,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            max_batch: self.max_batch.max(1),
            connections: leakbloom_net::Timeouts {
                handshake: Duration::from_millis(self.handshake_timeout_ms.max(1)),
                idle: Duration::from_millis(self.idle_timeout_ms.max(1)),
            },
            hedge: Duration::from_millis(self.hedge_ms),
        }
    }
}

/// The router's runtime: one per core, one thread, or `--threads` workers.
pub fn runtime(args: &RouterArgs) -> Result<tokio::runtime::Runtime> {
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if threads > 1 {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    Ok(builder.enable_all().build()?)
}

pub async fn run(args: RouterArgs) -> Result<()> {
    let server = Server::bind(args.config())
        .await
        .context("the router cannot start")?;
    server.run(crate::shutdown_signal()).await?;
    Ok(())
}
