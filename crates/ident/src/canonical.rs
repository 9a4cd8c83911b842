//! Identifier kinds and their canonical forms.

use std::fmt;
use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

use crate::{phone, Error};

/// What an identifier is; decides how it is canonicalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A phone number; canonical form E.164 (`+447400123456`).
    Phone,
    /// An email address; canonical form lowercase with an ASCII (IDNA) domain.
    Email,
    /// Anything else (user names, national ids, ...); canonical form trimmed Unicode NFC.
    Other,
}

impl Kind {
    /// Every kind, in the order of its names in messages.
    pub const ALL: [Kind; 3] = [Kind::Phone, Kind::Email, Kind::Other];

    /// The kind's name: `phone`, `email` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Phone => "phone",
            Kind::Email => "email",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = Error;

    /// Parses `phone`, `email` or `other` (exactly; no case folding).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| Error::UnknownKind(s.to_owned()))
    }
}

/// Turns an identifier into its canonical form, the input of the key derivation.
///
/// `region` is the default region for phone numbers not written in international form: an
/// ISO 3166-1 alpha-2 code such as `GB` (case-insensitive). For phones it must be a region the
/// phone metadata knows even where the number does not need it (it starts with `+`); it is
/// ignored for emails and other identifiers.
///
/// See the crate docs for the exact rules per kind. The error never contains `identifier`.
pub fn canonicalize(kind: Kind, identifier: &str, region: Option<&str>) -> Result<String, Error> {
    match kind {
        Kind::Phone => phone::canonicalize(identifier, region),
        Kind::Email => email(identifier),
        Kind::Other => other(identifier),
    }
}

/// Email: trim, exactly one `@`, non-empty parts, lowercase, IDNA domain.
fn email(identifier: &str) -> Result<String, Error> {
    let trimmed = identifier.trim();
    if trimmed.is_empty() {
        return Err(Error::Empty { kind: Kind::Email });
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        let what = if c.is_whitespace() {
            "whitespace"
        } else {
            "a control character"
        };
        return Err(Error::EmailForbiddenCharacter {
            what,
            code_point: u32::from(c),
        });
    }
    let ats = trimmed.matches('@').count();
    if ats != 1 {
        return Err(Error::EmailAtCount(ats));
    }
    let lower = trimmed.to_lowercase();
    let (local, domain) = lower
        .split_once('@')
        .expect("exactly one '@' was counted above");
    if local.is_empty() {
        return Err(Error::EmailEmptyLocal);
    }
    if domain.is_empty() {
        return Err(Error::EmailEmptyDomain);
    }
    let domain = idna::domain_to_ascii(domain).map_err(|_| Error::EmailDomain)?;
    // IDNA maps some code points (soft hyphen, ...) to nothing.
    if domain.is_empty() {
        return Err(Error::EmailEmptyDomain);
    }
    Ok(format!("{local}@{domain}"))
}

/// Other: trim, Unicode NFC.
fn other(identifier: &str) -> Result<String, Error> {
    let trimmed = identifier.trim();
    if trimmed.is_empty() {
        return Err(Error::Empty { kind: Kind::Other });
    }
    Ok(trimmed.nfc().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_and_rejects_others() {
        for kind in Kind::ALL {
            assert_eq!(kind.to_string().parse::<Kind>(), Ok(kind));
        }
        assert_eq!("phone".parse::<Kind>(), Ok(Kind::Phone));
        assert_eq!("email".parse::<Kind>(), Ok(Kind::Email));
        assert_eq!("other".parse::<Kind>(), Ok(Kind::Other));
        for bad in ["", "Phone", "EMAIL", "mail", "phone ", "msisdn"] {
            let err = bad.parse::<Kind>().unwrap_err();
            assert_eq!(err, Error::UnknownKind(bad.to_owned()));
            assert!(err
                .to_string()
                .contains("\"phone\", \"email\" or \"other\""));
        }
    }

    #[test]
    fn region_is_case_insensitive_and_ignored_for_international_numbers() {
        for region in [Some("GB"), Some("gb"), Some(" Gb "), Some("US"), None] {
            assert_eq!(
                canonicalize(Kind::Phone, "+44 7400 123456", region).as_deref(),
                Ok("+447400123456"),
                "{region:?}"
            );
        }
        assert_eq!(
            canonicalize(Kind::Phone, "07400 123456", Some("gb")).as_deref(),
            Ok("+447400123456")
        );
    }

    #[test]
    fn unknown_region_names_it() {
        for region in ["UK", "XX", "", "GBR", "1"] {
            let err = canonicalize(Kind::Phone, "07700 900123", Some(region)).unwrap_err();
            assert_eq!(err, Error::UnknownRegion(region.to_owned()));
            assert!(err.to_string().contains(&format!("{region:?}")));
        }
    }

    #[test]
    fn national_number_without_region_asks_for_one() {
        let err = canonicalize(Kind::Phone, "07700 900123", None).unwrap_err();
        assert_eq!(err, Error::MissingRegion);
        assert!(err.to_string().contains("region"));
    }

    #[test]
    fn email_errors_say_what_is_wrong() {
        let cases: [(&str, Error); 7] = [
            ("a@b@c.example", Error::EmailAtCount(2)),
            ("nobody.example", Error::EmailAtCount(0)),
            ("@example.com", Error::EmailEmptyLocal),
            ("user@", Error::EmailEmptyDomain),
            ("   ", Error::Empty { kind: Kind::Email }),
            (
                "us er@example.com",
                Error::EmailForbiddenCharacter {
                    what: "whitespace",
                    code_point: 0x20,
                },
            ),
            (
                "user\u{7}@example.com",
                Error::EmailForbiddenCharacter {
                    what: "a control character",
                    code_point: 7,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                canonicalize(Kind::Email, input, None),
                Err(want),
                "{input:?}"
            );
        }
        assert!(Error::EmailAtCount(2)
            .to_string()
            .contains("2 '@' characters, expected exactly one"));
    }

    #[test]
    fn email_keeps_dots_and_plus_and_lowercases_everything() {
        assert_eq!(
            canonicalize(Kind::Email, " First.Last+Tag@Example.COM\n", None).as_deref(),
            Ok("first.last+tag@example.com")
        );
    }

    #[test]
    fn email_domain_that_maps_to_nothing_is_empty() {
        // U+00AD SOFT HYPHEN is mapped away by UTS #46.
        assert_eq!(
            canonicalize(Kind::Email, "user@\u{ad}", None),
            Err(Error::EmailEmptyDomain)
        );
    }

    #[test]
    fn other_is_trimmed_nfc() {
        assert_eq!(
            canonicalize(Kind::Other, "  Cafe\u{301}\t", None).as_deref(),
            Ok("Caf\u{e9}")
        );
        assert_eq!(
            canonicalize(Kind::Other, " \n ", None),
            Err(Error::Empty { kind: Kind::Other })
        );
    }

    #[test]
    fn empty_phone_is_empty() {
        assert_eq!(
            canonicalize(Kind::Phone, "  ", Some("GB")),
            Err(Error::Empty { kind: Kind::Phone })
        );
    }
}
