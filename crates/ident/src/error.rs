//! The crate's one error type.

use crate::Kind;

/// Everything that can go wrong turning an identifier into a key, parsing a `hashing` field or
/// loading a pepper.
///
/// Messages say what was wrong and how to fix it. They never contain the identifier itself:
/// identifiers are sensitive and error messages end up in logs. Callers that report an error for
/// one identifier among many should add its position (line number, batch index), not its text.
///
/// [`Error::category`] gives a short stable name for each variant; the invalid cases in
/// `testdata/vectors.json` use these names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kind string is not one of `phone`, `email`, `other`.
    #[error("unknown identifier kind {0:?}: expected \"phone\", \"email\" or \"other\"")]
    UnknownKind(String),

    /// The identifier is empty or only whitespace.
    #[error("{kind} identifier is empty (or only whitespace): give a non-empty value")]
    Empty {
        /// Kind the identifier was given as.
        kind: Kind,
    },

    /// The default region is not a region the phone number metadata knows.
    #[error(
        "unknown region {0:?}: expected an ISO 3166-1 alpha-2 code known to libphonenumber, \
         such as \"GB\", \"US\" or \"DE\" (note: the United Kingdom is \"GB\", not \"UK\")"
    )]
    UnknownRegion(String),

    /// A phone number in national form was given without a default region.
    #[error(
        "phone number is not in international form (starting with '+' and the country calling \
         code) and no default region was given: pass the region it was dialled in (such as \
         \"GB\"), or write it as +<country code><number>"
    )]
    MissingRegion,

    /// The phone number contains letters.
    #[error(
        "phone number contains letters: write it with digits only (vanity numbers too) and \
         leave out extensions ('ext. 12') and 'tel:' prefixes"
    )]
    PhoneLetters,

    /// The phone number contains a character other than ASCII digits, whitespace, '+' and
    /// digit-group separators.
    #[error(
        "phone number contains the character U+{code_point:04X}: only the digits 0-9 (ASCII), \
         whitespace, '+', '-', '.', '/', '~', parentheses, brackets and dashes are accepted"
    )]
    PhoneCharacter {
        /// The offending character's code point.
        code_point: u32,
    },

    /// The phone number text does not look like a phone number at all.
    #[error("phone number could not be parsed: it has too few digits to be a phone number")]
    PhoneNotANumber,

    /// The country calling code after `+` (or an international dialling prefix) is not assigned.
    #[error(
        "phone number has an unknown country calling code: check the digits after '+' (or after \
         the international dialling prefix such as 00)"
    )]
    PhoneCountryCode,

    /// Too few digits for any phone number.
    #[error("phone number is too short: it has too few digits after the country calling code")]
    PhoneTooShort,

    /// Too many digits for any phone number.
    #[error("phone number is too long: it has more than 17 digits after the country calling code")]
    PhoneTooLong,

    /// The number parsed but is not a valid number in its region's numbering plan.
    #[error(
        "phone number is not valid for its region's numbering plan (wrong length or an \
         unassigned range): check the digits, and that the default region is the one the number \
         belongs to"
    )]
    PhoneInvalid,

    /// An email address must have exactly one `@`.
    #[error("email has {0} '@' characters, expected exactly one (local-part@domain)")]
    EmailAtCount(usize),

    /// Nothing before the `@`.
    #[error("email has an empty local part (nothing before '@')")]
    EmailEmptyLocal,

    /// Nothing after the `@`.
    #[error("email has an empty domain (nothing after '@')")]
    EmailEmptyDomain,

    /// Whitespace or a control character inside the address (surrounding whitespace is trimmed).
    #[error(
        "email contains {what} (U+{code_point:04X}) inside it: remove it (whitespace around the \
         address is trimmed automatically)"
    )]
    EmailForbiddenCharacter {
        /// "whitespace" or "a control character".
        what: &'static str,
        /// The offending character's code point.
        code_point: u32,
    },

    /// The domain was rejected by IDNA (UTS #46) processing.
    #[error(
        "email domain is not a valid internationalized domain name (IDNA/UTS #46 rejected it): \
         check for characters not allowed in domain names and for malformed 'xn--' labels"
    )]
    EmailDomain,

    /// A set's `hashing` field could not be parsed. The message does not quote the field (it
    /// may be of any size); callers that show it quote it shortened.
    #[error(
        "invalid hashing: {reason}; expected \"sha256\" or \"hmac-sha256:<pepper-id>\" where \
         <pepper-id> is 1-64 characters of a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidHashing {
        /// What exactly is wrong with it.
        reason: &'static str,
    },

    /// The pepper file is shorter than [`crate::MIN_PEPPER_LEN`].
    #[error(
        "pepper is {len} bytes (after removing one trailing newline), at least {min} are \
         required: use a longer random secret, for example 32 random bytes"
    )]
    PepperTooShort {
        /// Length found.
        len: usize,
        /// Minimum length.
        min: usize,
    },
}

impl Error {
    /// A short stable name for this error's variant, for counting rejected identifiers by cause
    /// and for the invalid cases in `testdata/vectors.json`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::UnknownKind(_) => "unknown_kind",
            Error::Empty { .. } => "empty",
            Error::UnknownRegion(_) => "unknown_region",
            Error::MissingRegion => "missing_region",
            Error::PhoneLetters => "phone_letters",
            Error::PhoneCharacter { .. } => "phone_character",
            Error::PhoneNotANumber => "phone_not_a_number",
            Error::PhoneCountryCode => "phone_country_code",
            Error::PhoneTooShort => "phone_too_short",
            Error::PhoneTooLong => "phone_too_long",
            Error::PhoneInvalid => "phone_invalid",
            Error::EmailAtCount(_) => "email_at_count",
            Error::EmailEmptyLocal => "email_empty_local",
            Error::EmailEmptyDomain => "email_empty_domain",
            Error::EmailForbiddenCharacter { .. } => "email_forbidden_character",
            Error::EmailDomain => "email_domain",
            Error::InvalidHashing { .. } => "invalid_hashing",
            Error::PepperTooShort { .. } => "pepper_too_short",
        }
    }
}
