//! The insert command's two forms of keys, and the short one: each key's suffix, the bytes the
//! filter reads.
//!
//! A shard's insert carries keys of that shard only, and the filter never reads a key's bytes
//! 0..8 (they chose the shard): only [`KEY_BYTES_READ`], 8..16 for the block and 16..32 for
//! the bits. So nodes propose `InsertCommand.suffixes`, those 24 bytes of each key, and a
//! replica puts them back behind zero bytes before inserting: the filter sets exactly the bits
//! the whole keys would have set, and block order still follows the key prefix. What the log
//! no longer has is a key's shard bytes, so a replica cannot check that a suffix belongs to its
//! shard; nor does it matter, since any suffix is the suffix of some key of every shard. A
//! truncated hash is no more an identifier than the whole one.
//!
//! The whole-key form (`InsertCommand.keys`) is what older versions wrote; replicas still
//! apply it, with the shard check, so logs and snapshots written before replay alike. Nodes
//! propose suffixes only once every node reported that it applies them
//! ([`crate::catalog::Catalog::applies_suffixes`]).

use leakbloom_cluster::{whole_keys, Key, KEY_LEN};
use leakbloom_filter::KEY_BYTES_READ;
use leakbloom_proto::internal::v1::InsertCommand;

use crate::error::{Error, Result};

/// Bytes of one key's suffix: the bytes the filter reads (24).
pub const SUFFIX_LEN: usize = KEY_LEN - KEY_BYTES_READ.start;

/// The suffixes of `keys` at `positions`, packed as `InsertCommand.suffixes` carries them.
pub fn gather(keys: &[Key], positions: &[u32]) -> Vec<u8> {
    let mut part = Vec::with_capacity(positions.len() * SUFFIX_LEN);
    for &i in positions {
        part.extend_from_slice(&keys[i as usize][KEY_BYTES_READ]);
    }
    part
}

/// The keys of an insert command, as it carried them.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertKeys<'a> {
    /// Whole keys (`InsertCommand.keys`): their shard can be checked.
    Whole(&'a [Key]),
    /// Keys put back together from suffixes, bytes 0..8 zero: the filter sets the bits of the
    /// keys they were cut from, but their shard is unknown.
    FromSuffixes(Vec<Key>),
}

impl InsertKeys<'_> {
    /// The keys to insert into the filter.
    pub fn keys(&self) -> &[Key] {
        match self {
            InsertKeys::Whole(keys) => keys,
            InsertKeys::FromSuffixes(keys) => keys,
        }
    }
}

/// Reads the keys of `insert`, whichever form it has. A `keys` field of torn keys is the
/// rejection older versions return ([`leakbloom_cluster::BatchError::KeyLength`]); torn
/// suffixes, or both fields at once, are refused: no node proposes them.
pub fn insert_keys(insert: &InsertCommand) -> Result<InsertKeys<'_>> {
    if insert.suffixes.is_empty() {
        return Ok(InsertKeys::Whole(whole_keys(&insert.keys)?));
    }
    if !insert.keys.is_empty() {
        return Err(Error::Refused(format!(
            "the insert carries both keys ({} bytes) and suffixes ({} bytes); one form only",
            insert.keys.len(),
            insert.suffixes.len()
        )));
    }
    let (suffixes, []) = insert.suffixes.as_chunks::<SUFFIX_LEN>() else {
        return Err(Error::Refused(format!(
            "the insert's suffixes are {} bytes, not a multiple of {SUFFIX_LEN}",
            insert.suffixes.len()
        )));
    };
    let keys = suffixes
        .iter()
        .map(|suffix| {
            let mut key = [0; KEY_LEN];
            key[KEY_BYTES_READ].copy_from_slice(suffix);
            key
        })
        .collect();
    Ok(InsertKeys::FromSuffixes(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BatchError;

    fn command(keys: Vec<u8>, suffixes: Vec<u8>) -> InsertCommand {
        InsertCommand {
            set: "s".into(),
            keys: keys.into(),
            generation: 1,
            suffixes: suffixes.into(),
        }
    }

    #[test]
    fn a_suffix_is_the_key_without_its_shard_bytes() {
        assert_eq!(SUFFIX_LEN, 24);
        let keys: Vec<Key> = (0..4u8)
            .map(|i| std::array::from_fn(|b| i * 40 + b as u8))
            .collect();
        let packed = gather(&keys, &[3, 1]);
        assert_eq!(packed.len(), 2 * SUFFIX_LEN);
        assert_eq!(packed[..SUFFIX_LEN], keys[3][8..]);
        assert_eq!(packed[SUFFIX_LEN..], keys[1][8..]);
        let command = command(Vec::new(), packed);
        let read = insert_keys(&command).unwrap();
        let InsertKeys::FromSuffixes(back) = &read else {
            panic!("{read:?}")
        };
        for (back, key) in back.iter().zip([keys[3], keys[1]]) {
            assert_eq!(back[..8], [0; 8]);
            assert_eq!(back[8..], key[8..]);
        }
    }

    #[test]
    fn whole_keys_are_read_as_older_versions_wrote_them() {
        let keys = [[7u8; KEY_LEN], [9u8; KEY_LEN]];
        let command = command(keys.concat(), Vec::new());
        assert_eq!(insert_keys(&command).unwrap(), InsertKeys::Whole(&keys));
        // No keys at all is an insert of none, as before.
        let empty = super::tests::command(Vec::new(), Vec::new());
        assert_eq!(insert_keys(&empty).unwrap().keys().len(), 0);
    }

    #[test]
    fn torn_or_mixed_forms_are_rejected_without_panicking() {
        let torn_keys = command(vec![1; KEY_LEN + 1], Vec::new());
        assert!(matches!(
            insert_keys(&torn_keys),
            Err(Error::Batch(BatchError::KeyLength { len: 33 }))
        ));
        for len in [
            1,
            SUFFIX_LEN - 1,
            SUFFIX_LEN + 1,
            KEY_LEN,
            2 * SUFFIX_LEN + 5,
        ] {
            let err = insert_keys(&command(Vec::new(), vec![1; len])).unwrap_err();
            assert!(
                matches!(&err, Error::Refused(reason) if reason.contains(&format!("{len} bytes, not a multiple of 24"))),
                "{len}: {err}"
            );
        }
        let both = command(vec![1; KEY_LEN], vec![1; SUFFIX_LEN]);
        let err = insert_keys(&both).unwrap_err();
        assert!(
            matches!(&err, Error::Refused(reason) if reason.contains("one form only")),
            "{err}"
        );
    }
}
