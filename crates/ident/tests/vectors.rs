//! Checks the crate against `testdata/vectors.json`, whose expected values come from
//! `testdata/gen_vectors.py` (Python phonenumbers, idna, hashlib, hmac), not from this crate.

use leakbloom_ident::{canonicalize, hmac_key, key, sha256_key, Error, Kind, Pepper};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    pepper: TestPepper,
    error_categories: std::collections::BTreeMap<String, String>,
    cases: Vec<Case>,
    invalid: Vec<Invalid>,
}

#[derive(Deserialize)]
struct TestPepper {
    utf8: String,
    hex: String,
}

#[derive(Deserialize)]
struct Case {
    input: String,
    kind: String,
    region: Option<String>,
    canonical: String,
    sha256: String,
    hmac_sha256: String,
}

#[derive(Deserialize)]
struct Invalid {
    input: String,
    kind: String,
    region: Option<String>,
    error: String,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn test_pepper(v: &Vectors) -> Pepper {
    assert_eq!(hex::encode(v.pepper.utf8.as_bytes()), v.pepper.hex);
    Pepper::from_file_bytes(v.pepper.utf8.as_bytes()).unwrap()
}

/// Whether `err` is the variant the vectors' category string names. Written out here rather
/// than calling `Error::category`, so the test does not trust the code it tests.
fn is_category(err: &Error, category: &str) -> bool {
    match category {
        "empty" => matches!(err, Error::Empty { .. }),
        "unknown_region" => matches!(err, Error::UnknownRegion(_)),
        "missing_region" => matches!(err, Error::MissingRegion),
        "phone_letters" => matches!(err, Error::PhoneLetters),
        "phone_character" => matches!(err, Error::PhoneCharacter { .. }),
        "phone_not_a_number" => matches!(err, Error::PhoneNotANumber),
        "phone_country_code" => matches!(err, Error::PhoneCountryCode),
        "phone_too_short" => matches!(err, Error::PhoneTooShort),
        "phone_too_long" => matches!(err, Error::PhoneTooLong),
        "phone_invalid" => matches!(err, Error::PhoneInvalid),
        "email_at_count" => matches!(err, Error::EmailAtCount(_)),
        "email_empty_local" => matches!(err, Error::EmailEmptyLocal),
        "email_empty_domain" => matches!(err, Error::EmailEmptyDomain),
        "email_forbidden_character" => matches!(err, Error::EmailForbiddenCharacter { .. }),
        "email_domain" => matches!(err, Error::EmailDomain),
        other => panic!("vectors.json uses unknown error category {other:?}"),
    }
}

#[test]
fn there_are_enough_vectors() {
    let v = vectors();
    assert!(v.cases.len() >= 40, "{} cases", v.cases.len());
    for kind in ["phone", "email", "other"] {
        assert!(v.cases.iter().any(|c| c.kind == kind), "no valid {kind}");
        assert!(
            v.invalid.iter().any(|c| c.kind == kind),
            "no invalid {kind}"
        );
    }
}

#[test]
fn valid_cases_give_canonical_form_and_keys() {
    let v = vectors();
    let pepper = test_pepper(&v);
    for case in &v.cases {
        let kind: Kind = case.kind.parse().unwrap();
        let region = case.region.as_deref();
        let what = format!("{:?} as {} in {:?}", case.input, case.kind, region);
        let canonical =
            canonicalize(kind, &case.input, region).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(canonical, case.canonical, "{what}");
        assert_eq!(hex::encode(sha256_key(&canonical)), case.sha256, "{what}");
        assert_eq!(
            hex::encode(hmac_key(&pepper, &canonical)),
            case.hmac_sha256,
            "{what}"
        );
        let (canonical2, plain) = key(kind, &case.input, region, None).unwrap();
        assert_eq!(canonical2, case.canonical, "{what}");
        assert_eq!(hex::encode(plain), case.sha256, "{what}");
        let (_, keyed) = key(kind, &case.input, region, Some(&pepper)).unwrap();
        assert_eq!(hex::encode(keyed), case.hmac_sha256, "{what}");
    }
}

#[test]
fn invalid_cases_give_their_error() {
    let v = vectors();
    for case in &v.invalid {
        assert!(
            v.error_categories.contains_key(&case.error),
            "{:?} is not described in error_categories",
            case.error
        );
        let kind: Kind = case.kind.parse().unwrap();
        let region = case.region.as_deref();
        let what = format!("{:?} as {} in {:?}", case.input, case.kind, region);
        let err = match canonicalize(kind, &case.input, region) {
            Ok(canonical) => panic!("{what}: accepted as {canonical:?}, want {}", case.error),
            Err(err) => err,
        };
        assert!(
            is_category(&err, &case.error),
            "{what}: got {err:?}, want {}",
            case.error
        );
        assert_eq!(err.category(), case.error, "{what}");
    }
}

#[test]
fn error_messages_never_contain_the_identifier() {
    let v = vectors();
    let mut checked = 0;
    for case in &v.invalid {
        let kind: Kind = case.kind.parse().unwrap();
        let err = canonicalize(kind, &case.input, case.region.as_deref()).unwrap_err();
        let trimmed = case.input.trim();
        if trimmed.chars().count() < 3 {
            continue; // too short to be told apart from the message's own words
        }
        let message = err.to_string();
        let debug = format!("{err:?}");
        for text in [&message, &debug] {
            assert!(!text.contains(trimmed), "{text:?} contains {trimmed:?}");
        }
        // Nor a recognizable chunk of it (the digits of a number, the local part of an email).
        let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 5 {
            let message_digits: String = message.chars().filter(char::is_ascii_digit).collect();
            assert!(
                !message_digits.contains(&digits),
                "{message:?} has the digits of {trimmed:?}"
            );
        }
        if let Some((local, _)) = trimmed.split_once('@') {
            if local.len() >= 4 {
                assert!(!message.contains(local), "{message:?} contains {local:?}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} messages checked");
}
