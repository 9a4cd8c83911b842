//! `leakbloom`: run a node, a router or a local dev cluster, manage sets, insert and check identifiers,
//! hash identifiers into keys, and benchmark the filter engine.
//!
//! Identifiers (phone numbers, emails) exist only inside this binary: they are normalised and
//! hashed here (crate `leakbloom-ident`) and only 32-byte keys go to the server.

mod bench_e2e;
mod bench_filter;
mod bench_redis;
mod client_cmd;
mod dev;
mod node_cmd;
mod nodes_cmd;
mod router_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Default server address for client commands.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

#[derive(Parser, Debug)]
#[command(
    name = "leakbloom",
    version,
    about = "Is this identifier in a known leaked set?"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LEAKBLOOM_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: serves leakbloom.v1.Lookup, health and reflection.
    Node(Box<node_cmd::NodeArgs>),
    /// Run a router: serves leakbloom.v1.Lookup by splitting batches over the nodes.
    Router(router_cmd::RouterArgs),
    /// Start a local cluster (3 nodes and a router) with a demo set of synthetic identifiers
    /// and print how to query it.
    Dev(dev::DevArgs),
    /// Create, list, inspect and drop sets.
    Sets(client_cmd::SetsArgs),
    /// Insert identifiers into a set (normalised and hashed here; only keys are sent).
    Insert(client_cmd::InsertArgs),
    /// Print, for each identifier, the sets that may contain it.
    Check(client_cmd::CheckArgs),
    /// List the cluster's nodes, decommission one.
    Nodes(nodes_cmd::NodesArgs),
    /// Print an identifier's canonical form and key: CANONICAL, a tab, KEYHEX (lowercase hex).
    Hash(client_cmd::HashArgs),
    /// Benchmarks.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    #[command(subcommand)]
    which: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The filter engine against the `bloomfilter` crate on the same keys, one thread.
    Filter(bench_filter::FilterBenchArgs),
    /// End-to-end load on a router or node on this machine (or with --redis on RedisBloom, the
    /// same load): Check or Insert requests of random keys over several connections; one line
    /// of keys/s and latency percentiles.
    E2e(bench_e2e::E2eBenchArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEAKBLOOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain of context on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Node(args) => runtime()?.block_on(node_cmd::run(*args)),
        Command::Router(args) => router_cmd::runtime(&args)?.block_on(router_cmd::run(args)),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)),
        Command::Sets(args) => runtime()?.block_on(client_cmd::sets(args)),
        Command::Insert(args) => runtime()?.block_on(client_cmd::insert(args)),
        Command::Check(args) => runtime()?.block_on(client_cmd::check(args)),
        Command::Nodes(args) => runtime()?.block_on(nodes_cmd::run(args)),
        Command::Hash(args) => client_cmd::hash(args),
        Command::Bench(BenchArgs {
            which: BenchCommand::Filter(args),
        }) => bench_filter::run(&args),
        Command::Bench(BenchArgs {
            which: BenchCommand::E2e(args),
        }) => runtime()?.block_on(bench_e2e::run(args)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
