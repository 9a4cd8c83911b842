//! `leakbloom node`: flags and `LEAKBLOOM_*` variables over the TOML config over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use leakbloom_node::{Config, Server};

/// Every field is optional: unset flags (and variables) leave the config file's value.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML config file (see deploy/leakbloom.toml).
    #[arg(long, env = "LEAKBLOOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client API address.
    #[arg(long, env = "LEAKBLOOM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Shards the key space is split into.
    #[arg(long, env = "LEAKBLOOM_SHARDS")]
    pub shards: Option<u32>,
    /// Most keys per Check or Insert request.
    #[arg(long, env = "LEAKBLOOM_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Most bytes of filter memory over all sets.
    #[arg(long, env = "LEAKBLOOM_MAX_FILTER_MEMORY")]
    pub max_filter_memory: Option<u64>,
    /// Most sets.
    #[arg(long, env = "LEAKBLOOM_MAX_SETS")]
    pub max_sets: Option<usize>,
}

impl NodeArgs {
    /// The effective configuration: defaults, then the file, then variables and flags.
    pub fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(max_batch) = self.max_batch {
            config.max_batch = max_batch;
        }
        if let Some(max) = self.max_filter_memory {
            config.max_filter_memory = max;
        }
        if let Some(max) = self.max_sets {
            config.max_sets = max;
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: NodeArgs) -> Result<()> {
    let config = args.config()?;
    let listen = config.listen;
    let server = Server::bind(config)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    server.run(crate::shutdown_signal()).await?;
    Ok(())
}
