//! Sets: names, parameters, and their per-shard partitions.

use std::fmt;

use leakbloom_cluster::{check_set_name, quote};
use leakbloom_filter::{Filter, Geometry};
use leakbloom_ident::Hashing;
use leakbloom_proto::internal::v1::CreateSetCommand;

use crate::error::{Error, Result};
use crate::memory::Reservation;

pub use leakbloom_cluster::MAX_SET_NAME_LEN;

/// Hashing scheme of a set created without one.
pub const DEFAULT_HASHING: &str = "sha256";

/// Smallest accepted target false-positive rate. Below it a filter costs more than 60 bits per
/// key and a sorted list of keys would be smaller.
pub const MIN_FPR: f64 = 1e-12;

/// Checks a set name: 1-64 characters of `[a-z0-9._-]` (the rule routers apply too,
/// [`check_set_name`]).
pub fn validate_name(name: &str) -> Result<()> {
    check_set_name(name).map_err(|reason| Error::SetName {
        name: name.to_string(),
        reason: reason.to_string(),
    })
}

/// What defines a set: the parameters it was created with.
#[derive(Clone, Debug, PartialEq)]
pub struct SetSpec {
    /// The set's name.
    pub name: String,
    /// Number of keys the whole set (all shards) is sized for.
    pub capacity: u64,
    /// Target false-positive rate at capacity.
    pub fpr: f64,
    /// How clients derive keys for this set.
    pub hashing: Hashing,
}

impl SetSpec {
    /// Validates client-supplied parameters. An empty `hashing` means [`DEFAULT_HASHING`].
    pub fn new(name: &str, capacity: u64, fpr: f64, hashing: &str) -> Result<SetSpec> {
        validate_name(name)?;
        let invalid = |reason: String| Error::SetParameters {
            name: name.to_string(),
            reason,
        };
        if capacity == 0 {
            return Err(invalid(
                "capacity is 0: give the number of keys to size for".into(),
            ));
        }
        if !(fpr.is_finite() && (MIN_FPR..1.0).contains(&fpr)) {
            return Err(invalid(format!(
                "fpr {fpr} is out of range: give a false-positive rate in [{MIN_FPR:e}, 1), \
                 e.g. 1e-6"
            )));
        }
        let hashing = if hashing.is_empty() {
            DEFAULT_HASHING
        } else {
            hashing
        };
        let hashing = hashing
            .parse::<Hashing>()
            .map_err(|e| invalid(format!("{e} (given: {})", quote(hashing))))?;
        Ok(SetSpec {
            name: name.to_string(),
            capacity,
            fpr,
            hashing,
        })
    }

    /// Capacity of one shard's partition: keys spread uniformly over shards, and with millions
    /// of keys the busiest shard holds only a fraction of a percent more than the mean.
    pub fn partition_capacity(&self, shards: u32) -> u64 {
        self.capacity.div_ceil(u64::from(shards))
    }

    /// Geometry of each shard's partition.
    pub fn partition_geometry(&self, shards: u32) -> Result<Geometry> {
        Geometry::for_capacity(self.partition_capacity(shards), self.fpr).map_err(|e| {
            Error::SetParameters {
                name: self.name.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// The command that creates this set with partitions of `geometry` (its generation is
    /// 0: the catalog's admission gives it one, see [`crate::catalog::Entry::command`]).
    pub fn command(&self, geometry: Geometry) -> CreateSetCommand {
        CreateSetCommand {
            name: self.name.clone(),
            capacity: self.capacity,
            fpr: self.fpr,
            hashing: self.hashing.to_string(),
            blocks: geometry.blocks,
            hash_count: geometry.hash_count,
            generation: 0,
        }
    }

    /// Decodes the spec and partition geometry carried by a create command.
    pub fn from_command(command: &CreateSetCommand) -> Result<(SetSpec, Geometry)> {
        let spec = SetSpec::new(
            &command.name,
            command.capacity,
            command.fpr,
            &command.hashing,
        )?;
        let geometry = Geometry {
            blocks: command.blocks,
            hash_count: command.hash_count,
        };
        Ok((spec, geometry))
    }
}

impl fmt::Display for SetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capacity={} fpr={} hashing={}",
            self.capacity, self.fpr, self.hashing
        )
    }
}

/// One shard's part of a set: the keys of the set that fall in this shard.
#[derive(Debug)]
pub struct Partition {
    /// The set's parameters (the same on every shard).
    pub spec: SetSpec,
    /// Which incarnation of the set it belongs to (see [`crate::catalog`]).
    pub generation: u64,
    /// The bits. Checks read it lock-free while the apply path sets bits.
    pub filter: Filter,
    /// The filter's memory, counted in its node's budget until the partition is gone.
    pub memory: Reservation,
}

impl Partition {
    /// The create command of this partition, generation included.
    pub fn command(&self) -> CreateSetCommand {
        CreateSetCommand {
            generation: self.generation,
            ..self.spec.command(self.filter.geometry())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["facebook-2021", "a", "x.y_z-0", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Facebook", "a b", "a/b", "é", &"a".repeat(65)] {
            let err = validate_name(bad).unwrap_err();
            assert!(matches!(err, Error::SetName { .. }), "{bad:?}: {err}");
        }
        let err = validate_name(&"a".repeat(60_000)).unwrap_err().to_string();
        assert!(err.contains("60000 bytes long, the limit is 64"), "{err}");
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn parameters() {
        let spec = SetSpec::new("s", 1000, 1e-6, "").unwrap();
        assert_eq!(spec.hashing.to_string(), "sha256");
        SetSpec::new("s", 1000, 1e-6, "hmac-sha256:pepper-2024").unwrap();
        for (capacity, fpr, hashing) in [
            (0, 1e-6, "sha256"),
            (10, 0.0, "sha256"),
            (10, 1.0, "sha256"),
            (10, f64::NAN, "sha256"),
            (10, 1e-13, "sha256"),
            (10, 1e-3, "md5"),
            (10, 1e-3, "hmac-sha256:"),
        ] {
            let err = SetSpec::new("s", capacity, fpr, hashing).unwrap_err();
            assert!(matches!(err, Error::SetParameters { .. }), "{err}");
        }
        let err = SetSpec::new("s", 10, 1e-3, "md5").unwrap_err().to_string();
        assert!(err.contains("(given: \"md5\")"), "{err}");
        let huge = format!("hmac-sha256:{}", "p".repeat(100_000));
        let err = SetSpec::new("s", 10, 1e-3, &huge).unwrap_err().to_string();
        assert!(err.contains("longer than 64 characters"), "{err}");
        assert!(err.contains("(100012 bytes)"), "{err}");
        assert!(err.len() < 500, "{err}");
    }

    #[test]
    fn commands_round_trip() {
        let spec = SetSpec::new("s", 1_000_000, 1e-4, "hmac-sha256:p1").unwrap();
        let geometry = spec.partition_geometry(16).unwrap();
        let (decoded, decoded_geometry) = SetSpec::from_command(&spec.command(geometry)).unwrap();
        assert_eq!(decoded, spec);
        assert_eq!(decoded_geometry, geometry);
        assert_eq!(spec.partition_capacity(16), 62_500);
    }
}
