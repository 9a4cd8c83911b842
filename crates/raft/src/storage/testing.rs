//! Builders and readers the storage tests share.

use raft::eraftpb::{ConfState, Entry, HardState};
use raft::{GetEntriesContext, Storage as _};

use super::GroupStorage;

/// An entry at `index` of `term` carrying `data`.
pub(super) fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

/// Entries `range` of `term`, each carrying its own index and term as data.
pub(super) fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range
        .map(|i| entry(i, term, format!("e{i}t{term}").as_bytes()))
        .collect()
}

/// A hard state.
pub(super) fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// A membership of `voters` only.
pub(super) fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

/// Every entry in `g`'s log.
pub(super) fn all(g: &GroupStorage) -> Vec<Entry> {
    g.entries(
        g.first_index(),
        g.last_index() + 1,
        None,
        GetEntriesContext::empty(false),
    )
    .unwrap()
}
