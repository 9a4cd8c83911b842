//! The rejoin mark: the durable note that a replica was rebuilt from its peers after losing
//! acknowledged data, and so must not vote until it has caught up (see
//! [`GroupNode`](crate::GroupNode)'s rejoin docs). Kept in the group's own records so that it
//! survives restarts and goes with the group when it is dropped.

use raft_engine::LogBatch;

use super::records::REJOIN_KEY;
use super::GroupStorage;
use crate::error::Result;

impl GroupStorage {
    /// The rejoin mark: `None` for a normal replica; `Some(0)` for one rebuilt from peers that
    /// the group has not re-added yet; `Some(index)` once it has, until it applied `index`.
    pub fn rejoin(&self) -> Option<u64> {
        self.read().rejoin
    }

    /// Records (synced) or clears the rejoin mark. A replica whose disk lost acknowledged data
    /// must not vote until it holds everything the group committed without it, and that must
    /// survive its restarts: see [`GroupNode`](crate::GroupNode)'s rejoin docs.
    pub fn set_rejoin(&mut self, rejoin: Option<u64>) -> Result<()> {
        let mut batch = LogBatch::default();
        match rejoin {
            Some(index) => batch.put(
                self.group,
                REJOIN_KEY.to_vec(),
                index.to_be_bytes().to_vec(),
            )?,
            None => batch.delete(self.group, REJOIN_KEY.to_vec()),
        }
        self.store.write(self.group, &mut batch)?;
        self.state
            .write()
            .expect("group state lock poisoned")
            .rejoin = rejoin;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::Store;

    #[test]
    fn rejoin_mark_survives_restarts_and_a_dropped_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(3).unwrap();
        assert_eq!(g.rejoin(), None);
        g.set_rejoin(Some(0)).unwrap();
        g.set_rejoin(Some(42)).unwrap();
        drop((g, store));
        let store = Store::open(dir.path()).unwrap();
        let mut g = store.group(3).unwrap();
        assert_eq!(g.rejoin(), Some(42));
        g.set_rejoin(None).unwrap();
        drop((g, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.group(3).unwrap().rejoin(), None);
        store.group(3).unwrap().set_rejoin(Some(7)).unwrap();
        store.drop_group(3).unwrap();
        assert_eq!(
            store.group(3).unwrap().rejoin(),
            None,
            "dropping a group clears it"
        );
    }
}
