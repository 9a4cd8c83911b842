//! The term of every entry in a group's log, kept in memory so that raft-rs's frequent
//! `term(index)` calls never read the disk.

use std::collections::VecDeque;

/// The terms of a log as runs `(first index, term)`: terms only grow along a log, so a few
/// runs cover millions of entries and `term(i)` needs no disk read.
#[derive(Debug, Default, Clone)]
pub(super) struct TermRuns {
    runs: VecDeque<(u64, u64)>,
    /// Index of the last entry, 0 when there are none.
    pub(super) last: u64,
    /// Index of the first entry.
    pub(super) first: u64,
}

impl TermRuns {
    /// Records the next entry, `index` with `term`.
    pub(super) fn push(&mut self, index: u64, term: u64) {
        if self.runs.is_empty() {
            self.first = index;
        } else {
            assert_eq!(index, self.last + 1, "log entries must be contiguous");
        }
        if self.runs.back().is_none_or(|&(_, t)| t != term) {
            self.runs.push_back((index, term));
        }
        self.last = index;
    }

    /// Whether the log holds no entry.
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Drops entries at `index` and after.
    pub(super) fn truncate(&mut self, index: u64) {
        if self.is_empty() || index > self.last {
            return;
        }
        if index <= self.first {
            *self = TermRuns::default();
            return;
        }
        while self.runs.back().is_some_and(|&(start, _)| start >= index) {
            self.runs.pop_back();
        }
        self.last = index - 1;
    }

    /// Drops entries before `index`.
    pub(super) fn compact(&mut self, index: u64) {
        if self.is_empty() || index <= self.first {
            return;
        }
        if index > self.last {
            *self = TermRuns::default();
            return;
        }
        while self.runs.len() > 1 && self.runs[1].0 <= index {
            self.runs.pop_front();
        }
        self.runs[0].0 = index;
        self.first = index;
    }

    /// The term of entry `index`, if the log holds it.
    pub(super) fn term(&self, index: u64) -> Option<u64> {
        if self.is_empty() || index < self.first || index > self.last {
            return None;
        }
        let pos = self.runs.partition_point(|&(start, _)| start <= index);
        Some(self.runs[pos - 1].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_runs() {
        let mut t = TermRuns::default();
        for (i, term) in [(5, 1), (6, 1), (7, 2), (8, 2), (9, 4)] {
            t.push(i, term);
        }
        assert_eq!(
            (4..=10).map(|i| t.term(i)).collect::<Vec<_>>(),
            [None, Some(1), Some(1), Some(2), Some(2), Some(4), None]
        );
        t.truncate(8);
        assert_eq!(
            (t.first, t.last, t.term(7), t.term(8)),
            (5, 7, Some(2), None)
        );
        t.compact(7);
        assert_eq!((t.first, t.term(6), t.term(7)), (7, None, Some(2)));
        t.compact(100);
        assert!(t.is_empty());
    }
}
