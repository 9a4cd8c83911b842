//! A shard's state as the Raft group's [`StateMachine`]: committed entries in, encoded results
//! out.
//!
//! [`Machine`] shares its [`ShardState`] with the node: the group's thread applies entries
//! through it while checks on other threads read the same filters.
//!
//! # Entries and results
//! An entry is a protobuf `leakbloom.internal.v1.Command`; its result is a
//! `leakbloom.internal.v1.CommandResult` ([`encode_outcome`]), which the proposer turns back
//! into the [`Applied`] or the [`Error`] that [`ShardState::apply_at`] returned
//! ([`decode_outcome`]), whether the command was applied on
//! this node or on the leader it was forwarded to. Rejections (a set that exists with other
//! parameters, an unknown set, torn keys, invalid parameters) are deterministic, so they are
//! ordinary results (`Ok` bytes): every replica computes the same one.
//!
//! What is left for `Err(String)`, which the Raft layer hands to the proposer as
//! `Rejected`: entries that are not a `Command` at all (a proposer bug, or a newer version's
//! format this one cannot read). Every replica of the same version refuses them alike, and
//! they leave the state (applied index included) unchanged, like the Raft layer's own empty
//! entries.
//!
//! Failures that are not the same on every replica are never results: a replica that cannot
//! allocate a new set's filter panics (see [`ShardState::apply_at`]) rather than skip a
//! committed command.

use std::sync::Arc;

use leakbloom_proto::internal::v1::catalog_result::{self, Outcome as CatalogOutcome};
use leakbloom_proto::internal::v1::command_result::{self, Outcome};
use leakbloom_proto::internal::v1::{CatalogCommand, CatalogResult, Command, CommandResult};
use leakbloom_raft::{ApplyError, StateMachine};
use prost::Message as _;

use crate::catalog::{self, CatalogState, Entry};
use crate::error::{BatchError, Error, Result};
use crate::memory::Budget;
use crate::shard::ShardId;
use crate::state::{Applied, ShardState};

/// One shard's replica state, applied by its Raft group.
#[derive(Debug, Clone)]
pub struct Machine(Arc<ShardState>);

impl Machine {
    /// A state machine applying to `state`, which the caller may keep reading.
    pub fn new(state: Arc<ShardState>) -> Machine {
        Machine(state)
    }

    /// The state this machine applies to.
    pub fn state(&self) -> &Arc<ShardState> {
        &self.0
    }
}

impl Default for Machine {
    /// An empty state of shard 0 (for tests: the simulation builds machines from nothing).
    fn default() -> Machine {
        Machine::new(Arc::new(ShardState::new(0, 1, Budget::new(u64::MAX))))
    }
}

impl StateMachine for Machine {
    fn apply(&mut self, index: u64, command: &[u8]) -> std::result::Result<Vec<u8>, ApplyError> {
        let command = Command::decode(command).map_err(|e| {
            ApplyError::Rejected(format!(
                "log entry {index} of shard {} ({} bytes) is not a command this version \
                 reads: {e}",
                self.0.shard(),
                command.len()
            ))
        })?;
        match self.0.apply_at(index, &command) {
            Err(Error::Stalled { reason, .. }) => Err(ApplyError::Stalled(reason)),
            outcome => Ok(encode_outcome(&outcome)),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), ApplyError> {
        self.0.restore(snapshot).map_err(|e| {
            if e.is_memory() {
                ApplyError::Stalled(e.to_string())
            } else {
                ApplyError::Rejected(e.to_string())
            }
        })
    }
}

/// Encodes what [`ShardState::apply_at`] returned as a `CommandResult`.
///
/// Every error `apply_at` returns has a field of its own and decodes to an equal error; any
/// other error (none today) travels as its message and decodes to [`Error::Replica`].
pub fn encode_outcome(outcome: &Result<Applied>) -> Vec<u8> {
    use command_result::{InvalidSet, SetExists};
    let outcome = match outcome {
        Ok(Applied::Created) => Outcome::Created(command_result::Created {}),
        Ok(Applied::Dropped) => Outcome::Dropped(command_result::Dropped {}),
        Ok(Applied::Inserted { keys }) => Outcome::Inserted(*keys),
        Ok(Applied::Nothing) => Outcome::Nothing(command_result::Nothing {}),
        Err(Error::SetExists {
            name,
            existing,
            requested,
        }) => Outcome::SetExists(SetExists {
            name: name.clone(),
            existing: existing.clone(),
            requested: requested.clone(),
        }),
        Err(Error::SetNotFound(name)) => Outcome::SetNotFound(name.clone()),
        Err(Error::Batch(BatchError::KeyLength { len })) => Outcome::KeyLength(*len as u64),
        Err(Error::SetName { name, reason }) => Outcome::SetName(InvalidSet {
            name: name.clone(),
            reason: reason.clone(),
        }),
        Err(Error::SetParameters { name, reason }) => Outcome::SetParameters(InvalidSet {
            name: name.clone(),
            reason: reason.clone(),
        }),
        Err(Error::Refused(reason)) => Outcome::Refused(reason.clone()),
        Err(other) => Outcome::Other(other.to_string()),
    };
    CommandResult {
        outcome: Some(outcome),
    }
    .encode_to_vec()
}

/// Decodes [`encode_outcome`]'s bytes for a command of shard `shard`. Bytes that do not decode,
/// or hold a result of a kind this version does not know, are an [`Error::Replica`]: the
/// nodes run incompatible versions.
pub fn decode_outcome(shard: ShardId, bytes: &[u8]) -> Result<Applied> {
    let incompatible = |what: String| Error::Replica {
        shard,
        reason: format!(
            "{what}: the nodes of this shard run incompatible leakbloom versions; upgrade them \
             all to one version"
        ),
    };
    let result = CommandResult::decode(bytes)
        .map_err(|e| incompatible(format!("a command's result does not decode ({e})")))?;
    match result.outcome {
        Some(Outcome::Created(_)) => Ok(Applied::Created),
        Some(Outcome::Dropped(_)) => Ok(Applied::Dropped),
        Some(Outcome::Inserted(keys)) => Ok(Applied::Inserted { keys }),
        Some(Outcome::Nothing(_)) => Ok(Applied::Nothing),
        Some(Outcome::SetExists(e)) => Err(Error::SetExists {
            name: e.name,
            existing: e.existing,
            requested: e.requested,
        }),
        Some(Outcome::SetNotFound(name)) => Err(Error::SetNotFound(name)),
        Some(Outcome::KeyLength(len)) => Err(Error::Batch(BatchError::KeyLength {
            len: usize::try_from(len).unwrap_or(usize::MAX),
        })),
        Some(Outcome::SetName(e)) => Err(Error::SetName {
            name: e.name,
            reason: e.reason,
        }),
        Some(Outcome::SetParameters(e)) => Err(Error::SetParameters {
            name: e.name,
            reason: e.reason,
        }),
        Some(Outcome::Refused(reason)) => Err(Error::Refused(reason)),
        Some(Outcome::Other(message)) => Err(Error::Replica {
            shard,
            reason: message,
        }),
        None => Err(incompatible(
            "a command's result is of an unknown kind".into(),
        )),
    }
}

/// The cluster catalog as its Raft group's [`StateMachine`] (see [`crate::catalog`]).
#[derive(Debug, Clone)]
pub struct CatalogMachine(Arc<CatalogState>);

impl CatalogMachine {
    /// A state machine applying to `state`, which the caller may keep reading.
    pub fn new(state: Arc<CatalogState>) -> CatalogMachine {
        CatalogMachine(state)
    }
}

impl StateMachine for CatalogMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> std::result::Result<Vec<u8>, ApplyError> {
        let command = CatalogCommand::decode(command).map_err(|e| {
            ApplyError::Rejected(format!(
                "catalog log entry {index} ({} bytes) is not a catalog command this version \
                 reads: {e}",
                command.len()
            ))
        })?;
        Ok(encode_catalog_outcome(&self.0.apply(index, &command)))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), ApplyError> {
        self.0.restore(snapshot).map_err(ApplyError::Rejected)
    }
}

/// Encodes what [`CatalogState::apply`] returned as a `CatalogResult`.
pub fn encode_catalog_outcome(outcome: &Result<catalog::Outcome>) -> Vec<u8> {
    use command_result::{InvalidSet, Nothing, SetExists};
    let outcome = match outcome {
        Ok(catalog::Outcome::Set(entry)) => CatalogOutcome::Set(entry.to_proto()),
        Ok(catalog::Outcome::Dropped(generation)) => CatalogOutcome::Dropped(*generation),
        Ok(catalog::Outcome::Done) => CatalogOutcome::Done(Nothing {}),
        Err(Error::SetExists {
            name,
            existing,
            requested,
        }) => CatalogOutcome::SetExists(SetExists {
            name: name.clone(),
            existing: existing.clone(),
            requested: requested.clone(),
        }),
        Err(Error::SetNotFound(name)) => CatalogOutcome::SetNotFound(name.clone()),
        Err(Error::SetParameters { name, reason } | Error::SetName { name, reason }) => {
            CatalogOutcome::SetParameters(InvalidSet {
                name: name.clone(),
                reason: reason.clone(),
            })
        }
        Err(Error::MemoryLimit {
            name,
            node,
            needed,
            available,
            limit,
        }) => CatalogOutcome::MemoryLimit(catalog_result::MemoryLimit {
            name: name.clone(),
            node: *node,
            needed: *needed,
            available: *available,
            limit: *limit,
        }),
        Err(Error::TooManySets { max }) => CatalogOutcome::TooManySets(*max),
        Err(Error::NodeLimitsUnknown { node }) => CatalogOutcome::LimitsUnknown(*node),
        Err(Error::UnknownNode { node }) => CatalogOutcome::UnknownNode(*node),
        Err(Error::Membership(message)) => CatalogOutcome::Membership(message.clone()),
        Err(other) => CatalogOutcome::Other(other.to_string()),
    };
    CatalogResult {
        outcome: Some(outcome),
    }
    .encode_to_vec()
}

/// Decodes [`encode_catalog_outcome`]'s bytes.
pub fn decode_catalog_outcome(bytes: &[u8]) -> Result<catalog::Outcome> {
    let incompatible = |what: String| Error::Replica {
        shard: u32::MAX,
        reason: format!(
            "catalog: {what}: the nodes run incompatible leakbloom versions; upgrade them all \
             to one version"
        ),
    };
    let result = CatalogResult::decode(bytes)
        .map_err(|e| incompatible(format!("a result does not decode ({e})")))?;
    match result.outcome {
        Some(CatalogOutcome::Set(set)) => Entry::from_proto(&set).map(catalog::Outcome::Set),
        Some(CatalogOutcome::Dropped(generation)) => Ok(catalog::Outcome::Dropped(generation)),
        Some(CatalogOutcome::Done(_)) => Ok(catalog::Outcome::Done),
        Some(CatalogOutcome::SetExists(e)) => Err(Error::SetExists {
            name: e.name,
            existing: e.existing,
            requested: e.requested,
        }),
        Some(CatalogOutcome::SetNotFound(name)) => Err(Error::SetNotFound(name)),
        Some(CatalogOutcome::SetParameters(e)) => Err(Error::SetParameters {
            name: e.name,
            reason: e.reason,
        }),
        Some(CatalogOutcome::MemoryLimit(e)) => Err(Error::MemoryLimit {
            name: e.name,
            node: e.node,
            needed: e.needed,
            available: e.available,
            limit: e.limit,
        }),
        Some(CatalogOutcome::TooManySets(max)) => Err(Error::TooManySets { max }),
        Some(CatalogOutcome::LimitsUnknown(node)) => Err(Error::NodeLimitsUnknown { node }),
        Some(CatalogOutcome::UnknownNode(node)) => Err(Error::UnknownNode { node }),
        Some(CatalogOutcome::Membership(message)) => Err(Error::Membership(message)),
        Some(CatalogOutcome::Other(message)) => Err(Error::Replica {
            shard: u32::MAX,
            reason: format!("catalog: {message}"),
        }),
        None => Err(incompatible("a result of an unknown kind".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::SetSpec;
    use leakbloom_cluster::KEY_LEN;
    use leakbloom_proto::internal::v1::{command, CreateSetCommand, InsertCommand};
    use tonic::Status;

    /// A create command for set `name`, valid or not.
    fn create(name: &str, capacity: u64) -> Vec<u8> {
        let spec = SetSpec::new("valid", capacity, 1e-3, "sha256").unwrap();
        let geometry = spec.partition_geometry(1).unwrap();
        let create = CreateSetCommand {
            name: name.into(),
            generation: 1,
            ..spec.command(geometry)
        };
        Command {
            id: 1,
            kind: Some(command::Kind::CreateSet(create)),
        }
        .encode_to_vec()
    }

    fn insert(name: &str, keys: &[u8]) -> Vec<u8> {
        Command {
            id: 2,
            kind: Some(command::Kind::Insert(InsertCommand {
                set: name.into(),
                keys: keys.to_vec().into(),
                generation: 1,
                ..InsertCommand::default()
            })),
        }
        .encode_to_vec()
    }

    /// Status code and message: what a client sees.
    fn status(error: Error) -> (tonic::Code, String) {
        let status = Status::from(error);
        (status.code(), status.message().to_string())
    }

    fn assert_round_trip(outcome: Result<Applied>) {
        let shown = format!("{outcome:?}");
        let decoded = decode_outcome(7, &encode_outcome(&outcome));
        assert_eq!(format!("{decoded:?}"), shown);
        match (outcome, decoded) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(status(a), status(b)),
            (a, b) => panic!("{a:?} decoded as {b:?}"),
        }
    }

    #[test]
    fn every_outcome_round_trips() {
        for applied in [
            Applied::Created,
            Applied::Dropped,
            Applied::Nothing,
            Applied::Inserted { keys: 0 },
            Applied::Inserted { keys: u64::MAX },
        ] {
            assert_round_trip(Ok(applied));
        }
        for error in [
            Error::SetExists {
                name: "s".into(),
                existing: "capacity=1 fpr=0.001 hashing=sha256".into(),
                requested: "capacity=2 fpr=0.001 hashing=sha256".into(),
            },
            Error::SetNotFound("facebook-2021".into()),
            Error::SetNotFound(String::new()),
            Error::Batch(BatchError::KeyLength { len: 33 }),
            Error::Batch(BatchError::KeyLength { len: 0 }),
            Error::SetName {
                name: "Bad".into(),
                reason: "'B' is not allowed".into(),
            },
            Error::SetParameters {
                name: "s".into(),
                reason: "capacity is 0".into(),
            },
        ] {
            assert_round_trip(Err(error));
        }
    }

    #[test]
    fn every_catalog_outcome_round_trips() {
        let spec = SetSpec::new("s", 1000, 1e-3, "sha256").unwrap();
        let entry = Entry {
            geometry: spec.partition_geometry(4).unwrap(),
            spec,
            generation: 7,
            active: true,
        };
        let outcomes: Vec<Result<catalog::Outcome>> = vec![
            Ok(catalog::Outcome::Set(entry)),
            Ok(catalog::Outcome::Dropped(7)),
            Ok(catalog::Outcome::Done),
            Err(Error::SetNotFound("s".into())),
            Err(Error::MemoryLimit {
                name: "s".into(),
                node: 2,
                needed: 10,
                available: 3,
                limit: 20,
            }),
            Err(Error::TooManySets { max: 3 }),
            Err(Error::NodeLimitsUnknown { node: 3 }),
            Err(Error::UnknownNode { node: 99 }),
        ];
        for outcome in outcomes {
            let shown = format!("{outcome:?}");
            let decoded = decode_catalog_outcome(&encode_catalog_outcome(&outcome));
            assert_eq!(format!("{decoded:?}"), shown);
        }
    }

    #[test]
    fn other_errors_keep_their_message() {
        let error = Error::TooManySets { max: 3 };
        let message = error.to_string();
        let decoded = decode_outcome(2, &encode_outcome(&Err(error))).unwrap_err();
        assert!(
            matches!(&decoded, Error::Replica { shard: 2, reason } if *reason == message),
            "{decoded:?}"
        );
    }

    #[test]
    fn undecodable_results_are_errors() {
        for bytes in [&[0xffu8][..], &[0x0a, 0x05], &[]] {
            let err = decode_outcome(4, bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Replica { shard: 4, reason } if reason.contains("incompatible")),
                "{bytes:?}: {err:?}"
            );
        }
    }

    #[test]
    fn applies_commands_and_returns_encoded_results() {
        let mut machine = Machine::default();
        let applied = |m: &mut Machine, index, bytes: &[u8]| {
            decode_outcome(0, &m.apply(index, bytes).unwrap())
        };
        assert_eq!(
            applied(&mut machine, 1, &create("s", 100)).unwrap(),
            Applied::Created
        );
        assert_eq!(
            applied(&mut machine, 2, &insert("s", &[5; 2 * KEY_LEN])).unwrap(),
            Applied::Inserted { keys: 2 }
        );
        // Rejections are results, decoded into the error the state returned.
        let direct = ShardState::new(0, 1, Budget::new(u64::MAX));
        direct
            .apply(&Command::decode(&create("s", 100)[..]).unwrap())
            .unwrap();
        for (bytes, index) in [
            (create("s", 200), 3),
            (insert("t", &[5; KEY_LEN]), 4),
            (insert("s", &[5; KEY_LEN + 1]), 5),
            (create("S", 100), 6),
        ] {
            let via_machine = applied(&mut machine, index, &bytes).unwrap_err();
            let command = Command::decode(&bytes[..]).unwrap();
            let direct = direct.apply(&command).unwrap_err();
            assert_eq!(status(via_machine), status(direct));
        }
        assert_eq!(machine.state().applied(), 6);
        // Bytes that are not a command: refused alike everywhere, state untouched.
        let before = machine.snapshot();
        let err = machine.apply(7, &[0xff, 0xff]).unwrap_err().to_string();
        assert!(err.contains("not a command"), "{err}");
        assert_eq!(machine.snapshot(), before);
    }

    #[test]
    fn snapshot_and_restore_delegate_to_the_state() {
        let mut a = Machine::default();
        a.apply(1, &create("s", 100)).unwrap();
        a.apply(3, &insert("s", &[9; KEY_LEN])).unwrap();
        let mut b = Machine::default();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(b.snapshot(), a.snapshot());
        assert_eq!(b.state().applied(), 3);
        let err = b.restore(b"LBSHARD\0 not really").unwrap_err().to_string();
        assert!(err.contains("snapshot"), "{err}");
        let err = Machine::new(Arc::new(ShardState::new(1, 2, Budget::new(u64::MAX))))
            .restore(&a.snapshot())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard 0, not of shard 1"), "{err}");
    }
}
