//! Node configuration: typed, with defaults, loadable from TOML. The CLI layers
//! `LEAKBLOOM_*` environment variables and flags on top (see `deploy/leakbloom.toml` for a
//! commented sample).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::shard::MAX_SHARDS;

/// Default client API address: the conventional local gRPC port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default shard count: enough to spread 3-5 nodes' worth of Raft groups evenly, few enough
/// that per-shard overhead (heartbeats, snapshots, one filter per set) stays small.
pub const DEFAULT_SHARDS: u32 = 16;

/// Default keys per request: 65 536 keys are 2 MiB of request, far below gRPC's 4 MiB message
/// limit, and take about a millisecond to check.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// Largest `max_batch` a node accepts: 1 Mi keys are a 32 MiB message.
pub const MAX_MAX_BATCH: usize = 1 << 20;

/// Default filter memory a node may hold, per replica: 16 GiB fits the 533 M-key Facebook set at
/// 1e-6 (2.4 GiB) several times over and leaves room on a 24-32 GiB machine.
pub const DEFAULT_MAX_FILTER_MEMORY: u64 = 16 << 30;

/// Default number of sets: every set costs one filter per shard.
pub const DEFAULT_MAX_SETS: usize = 1024;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// How a node runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the client API (`leakbloom.v1.Lookup`, health, reflection).
    pub listen: SocketAddr,
    /// Number of shards the key space is split into. Fixed when the data is created.
    pub shards: u32,
    /// Most keys accepted in one Check or Insert request.
    pub max_batch: usize,
    /// Most bytes of filter memory this node holds over all sets (one replica's worth).
    pub max_filter_memory: u64,
    /// Most sets this node holds.
    pub max_sets: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            shards: DEFAULT_SHARDS,
            max_batch: DEFAULT_MAX_BATCH,
            max_filter_memory: DEFAULT_MAX_FILTER_MEMORY,
            max_sets: DEFAULT_MAX_SETS,
        }
    }
}

impl Config {
    /// Parses a TOML document; missing fields keep their defaults.
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(source),
        })
    }

    /// Reads a TOML file, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Checks ranges; call after every override is applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError::Invalid(format!(
                "shards = {} is out of range 1..={MAX_SHARDS}",
                self.shards
            )));
        }
        if !(1..=MAX_MAX_BATCH).contains(&self.max_batch) {
            return Err(ConfigError::Invalid(format!(
                "max_batch = {} is out of range 1..={MAX_MAX_BATCH}",
                self.max_batch
            )));
        }
        if self.max_sets == 0 {
            return Err(ConfigError::Invalid(
                "max_sets = 0 allows no set at all".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let config = Config::from_toml("shards = 4\nlisten = \"0.0.0.0:9000\"\n", "t").unwrap();
        assert_eq!(config.shards, 4);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_batch, DEFAULT_MAX_BATCH);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        assert!(Config::from_toml("shard = 4", "t").is_err());
        let config = Config::from_toml("shards = 0", "t").unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_toml("max_batch = 0", "t").unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn sample_config_in_deploy_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/leakbloom.toml");
        let config = Config::load(Some(Path::new(path))).unwrap();
        config.validate().unwrap();
    }
}
