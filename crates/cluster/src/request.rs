//! The rules every node, router and client applies to a request, with the messages that say
//! how to fix it: key batches ([`split_keys`], [`BatchError`]), set names
//! ([`check_set_name`]), the size of a check ([`check_set_count`], [`check_bits`]), the message
//! sizes they imply ([`max_request_bytes`], [`MAX_REPLY_BYTES`]), and how errors quote a
//! client's strings and how long a status message may be ([`quote`], [`bound_message`]). Kept
//! in one place so that a router refuses exactly what a node would.

use crate::key::{Key, KEY_LEN};

/// Metadata key of an `UNAVAILABLE` status that names the node id leading the shard, when
/// the node that answered knows it. Nodes set it; routers and clients may follow it.
pub const LEADER_METADATA: &str = "leakbloom-leader";

/// Keys per request unless told otherwise: the server's default limit.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// Why packed key bytes are not a valid batch: the rules every node and router apply to the
/// `keys` field of a `Check` or an `Insert`, with messages that say how to fix the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// No keys.
    #[error("keys is empty: send 1 to {max} keys of {KEY_LEN} bytes each, concatenated")]
    Empty {
        /// The batch limit.
        max: usize,
    },
    /// The packed key bytes are not a whole number of keys.
    #[error(
        "keys is {len} bytes, not a multiple of {KEY_LEN}: send whole {KEY_LEN}-byte keys \
         (SHA-256 or HMAC-SHA256 outputs), concatenated"
    )]
    KeyLength {
        /// Length of the `keys` field in bytes.
        len: usize,
    },
    /// More keys than the server accepts in one request.
    #[error("batch of {keys} keys is over the limit of {max} keys per request: split it")]
    TooLarge {
        /// Keys in the request.
        keys: usize,
        /// The batch limit (the nodes' `max_batch`).
        max: usize,
    },
    /// A check naming more sets than one request may.
    #[error(
        "a check naming {sets} sets is over the limit of {MAX_CHECK_SETS} sets per request: \
         name fewer sets (or none, to check every set)"
    )]
    TooManySets {
        /// Sets the check names.
        sets: usize,
    },
    /// A check whose answer would be too large: more set-key pairs than [`MAX_CHECK_BITS`].
    #[error(
        "a check of {sets} sets x {keys} keys is over the limit of {MAX_CHECK_BITS} set-key \
         pairs: split the keys or name fewer sets"
    )]
    TooManyBits {
        /// Sets checked.
        sets: usize,
        /// Keys checked.
        keys: usize,
    },
}

/// Views packed key bytes as whole keys.
pub fn whole_keys(packed: &[u8]) -> Result<&[Key], BatchError> {
    match packed.as_chunks::<KEY_LEN>() {
        (keys, []) => Ok(keys),
        _ => Err(BatchError::KeyLength { len: packed.len() }),
    }
}

/// Views packed key bytes as keys after checking the batch limits: 1 to `max` whole keys.
pub fn split_keys(packed: &[u8], max: usize) -> Result<&[Key], BatchError> {
    match whole_keys(packed)? {
        [] => Err(BatchError::Empty { max }),
        keys if keys.len() > max => Err(BatchError::TooLarge {
            keys: keys.len(),
            max,
        }),
        keys => Ok(keys),
    }
}

/// Most sets one check may name: with a full default batch (65 536 keys) that is
/// [`MAX_CHECK_BITS`], and it is the nodes' default `max_sets`.
pub const MAX_CHECK_SETS: usize = 1024;

/// Most set-key pairs (sets x keys) one check may ask about: 8 MiB of reply bitmaps, e.g.
/// 1024 sets x 65 536 keys. It bounds the reply as `max_batch` bounds the request.
pub const MAX_CHECK_BITS: u64 = 1 << 26;

/// Checks that a check names at most [`MAX_CHECK_SETS`] sets.
pub fn check_set_count(sets: usize) -> Result<(), BatchError> {
    if sets > MAX_CHECK_SETS {
        return Err(BatchError::TooManySets { sets });
    }
    Ok(())
}

/// Checks that a check of `sets` sets x `keys` keys is within [`MAX_CHECK_BITS`].
pub fn check_bits(sets: usize, keys: usize) -> Result<(), BatchError> {
    if (sets as u64).saturating_mul(keys as u64) > MAX_CHECK_BITS {
        return Err(BatchError::TooManyBits { sets, keys });
    }
    Ok(())
}

/// Longest set name. Names appear in metrics, logs and URLs; 64 characters is plenty for
/// `facebook-2021`-style names.
pub const MAX_SET_NAME_LEN: usize = 64;

/// Why a set name is refused. Set names are 1-64 characters of `[a-z0-9._-]`, the rule every
/// node and router applies before using one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`MAX_SET_NAME_LEN`].
    #[error("it is {len} bytes long, the limit is {MAX_SET_NAME_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character outside `[a-z0-9._-]`.
    #[error("{0:?} is not allowed; use 1-{MAX_SET_NAME_LEN} characters of [a-z0-9._-]")]
    Character(char),
}

/// Checks a set name: 1-64 characters of `[a-z0-9._-]`. The length is checked first, so a
/// name of any size costs no more than 64 characters' work.
pub fn check_set_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_SET_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    match name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        Some(c) => Err(NameError::Character(c)),
        None => Ok(()),
    }
}

/// Most characters of a client's string that an error message quotes: a whole set name or
/// pepper id, and no more, so that no request can make a message long.
pub const MAX_QUOTED_CHARS: usize = 64;

/// A client-supplied string (a set name, a `hashing` field) as an error message quotes it:
/// escaped and quoted like `{:?}`, and past [`MAX_QUOTED_CHARS`] characters cut, with `…` and
/// its whole length after the quotes: `"aaaa…" (60000 bytes)`.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// Longest gRPC status message a node or router sends. It travels in the `grpc-message`
/// header, percent-encoded (at most 3 KiB), far below the 16 KiB header list an HTTP/2 peer
/// accepts by default: a longer one makes the receiver reset the whole connection, failing
/// every other call on it.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message` cut to at most [`MAX_STATUS_MESSAGE_BYTES`] bytes on a character boundary,
/// ending in `…` when cut: what every status a node or router makes carries.
pub fn bound_message(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
    message
}

/// Bytes a set name adds to a message beyond its characters, at most: its field's tag and
/// length and, in a reply, the enclosing `SetResult`'s and the bitmap's tags and lengths.
const SET_FIELD_BYTES: usize = 16;

/// Bytes of a message beyond its keys, bitmaps and set names (tags, lengths, consistency),
/// with room to spare.
const MESSAGE_SLACK: usize = 1 << 10;

/// Largest `Check` or `Insert` request within the limits: `max_batch` keys and
/// [`MAX_CHECK_SETS`] set names. What a server must decode and a client may encode (2.1 MiB
/// at the default `max_batch`); anything larger is refused before it is read.
pub const fn max_request_bytes(max_batch: usize) -> usize {
    max_batch
        .saturating_mul(KEY_LEN)
        .saturating_add(MAX_CHECK_SETS * (MAX_SET_NAME_LEN + SET_FIELD_BYTES) + MESSAGE_SLACK)
}

/// Largest `Check` reply within the limits: [`MAX_CHECK_BITS`] of bitmaps (each rounded up to
/// whole bytes) for [`MAX_CHECK_SETS`] sets, 8.1 MiB. What a server may encode and a client
/// must decode; it also holds `ListSets` of thousands of sets.
pub const MAX_REPLY_BYTES: usize = (MAX_CHECK_BITS / 8) as usize
    + MAX_CHECK_SETS * (MAX_SET_NAME_LEN + SET_FIELD_BYTES + 1)
    + MESSAGE_SLACK;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_limits_are_checked() {
        assert_eq!(split_keys(&[], 4), Err(BatchError::Empty { max: 4 }));
        assert_eq!(
            split_keys(&[0; 33], 4),
            Err(BatchError::KeyLength { len: 33 })
        );
        assert_eq!(
            split_keys(&[0; 5 * KEY_LEN], 4),
            Err(BatchError::TooLarge { keys: 5, max: 4 })
        );
        assert_eq!(split_keys(&[0; 2 * KEY_LEN], 4).unwrap().len(), 2);
        assert_eq!(whole_keys(&[]).unwrap().len(), 0);
    }

    #[test]
    fn checks_are_limited_in_sets_and_set_key_pairs() {
        check_set_count(MAX_CHECK_SETS).unwrap();
        assert_eq!(
            check_set_count(MAX_CHECK_SETS + 1),
            Err(BatchError::TooManySets { sets: 1025 })
        );
        check_bits(1024, 65_536).unwrap();
        check_bits(1, 1 << 26).unwrap();
        check_bits(usize::MAX, 0).unwrap();
        let error = check_bits(1025, 65_536).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a check of 1025 sets x 65536 keys is over the limit of 67108864 set-key pairs: \
             split the keys or name fewer sets"
        );
        assert!(check_bits(usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn message_limits_never_overflow() {
        assert_eq!(max_request_bytes(usize::MAX), usize::MAX);
        assert!(max_request_bytes(DEFAULT_MAX_BATCH) > DEFAULT_MAX_BATCH * KEY_LEN);
    }

    #[test]
    fn set_names_follow_the_rule() {
        for ok in ["facebook-2021", "a", "x.y_z-0", &"a".repeat(64)] {
            check_set_name(ok).unwrap();
        }
        assert_eq!(check_set_name(""), Err(NameError::Empty));
        assert_eq!(
            check_set_name(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65 })
        );
        assert_eq!(check_set_name("a b"), Err(NameError::Character(' ')));
        assert_eq!(check_set_name("Facebook"), Err(NameError::Character('F')));
        assert_eq!(check_set_name("é"), Err(NameError::Character('é')));
        // Too long is said before any character is looked at.
        assert_eq!(
            check_set_name(&"É".repeat(60_000)),
            Err(NameError::TooLong { len: 120_000 })
        );
    }

    #[test]
    fn quotes_are_short_whatever_the_input() {
        assert_eq!(quote("facebook-2021"), r#""facebook-2021""#);
        assert_eq!(quote("a\"b\n"), r#""a\"b\n""#);
        let whole = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quote(&whole), format!("{whole:?}"));
        let long = "y".repeat(60_000);
        assert_eq!(
            quote(&long),
            format!("\"{}\"… (60000 bytes)", "y".repeat(MAX_QUOTED_CHARS))
        );
        // Cut on a character boundary: 64 two-byte characters.
        let wide = "é".repeat(1000);
        assert_eq!(
            quote(&wide),
            format!("\"{}\"… (2000 bytes)", "é".repeat(MAX_QUOTED_CHARS))
        );
    }

    #[test]
    fn status_messages_are_bounded_on_a_character_boundary() {
        assert_eq!(bound_message("short".into()), "short");
        let exact = "x".repeat(MAX_STATUS_MESSAGE_BYTES);
        assert_eq!(bound_message(exact.clone()), exact);
        let long = bound_message("x".repeat(100_000));
        assert_eq!(long.len(), MAX_STATUS_MESSAGE_BYTES);
        assert!(long.ends_with("x…"), "{long}");
        // Three-byte characters never split: the cut backs up to a boundary.
        for shift in 0..3 {
            let text = format!("{}{}", "a".repeat(shift), "€".repeat(1000));
            let cut = bound_message(text);
            assert!(cut.len() <= MAX_STATUS_MESSAGE_BYTES, "{}", cut.len());
            assert!(cut.len() > MAX_STATUS_MESSAGE_BYTES - 6, "{}", cut.len());
            assert!(cut.ends_with("€…"), "{cut}");
        }
    }
}
