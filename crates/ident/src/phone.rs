//! Phone numbers: the canonical form E.164, following libphonenumber.
//!
//! The `phonenumber` crate (0.3.10, metadata of libphonenumber 9.0.33) parses the text: it checks
//! that it is a number and finds the country calling code. The national significant number and
//! the validity check follow libphonenumber's `parse` and `isValidNumber` (as in Python
//! `phonenumbers` 9.0.33) over the crate's metadata, because `phonenumber` differs from
//! libphonenumber in ways that would make a Rust client and a client in another language derive
//! different keys or reject different numbers:
//!
//! - it reads letters as keypad digits (a mistyped "O" becomes 6): letters are rejected before
//!   parsing ([`check_phone_characters`]);
//! - with a default region, it strips that region's national prefix even from numbers that
//!   carry another country code ("+44 121 234 5678" with region US lost the 1 after 44);
//! - it can strip a national prefix twice, or where libphonenumber sees that stripping leaves no
//!   possible number ("8 800 123-45-67" in Russia);
//! - its `is_valid` matches the plan's patterns as prefixes, not whole numbers, so it accepts
//!   numbers with extra digits.
//!
//! `testdata/phones.json` checks the result against libphonenumber over every region and number
//! type. What remains different: `phonenumber` rejects some numbers libphonenumber accepts when
//! punctuation splits the country calling code from the next digits oddly ("+431.68476",
//! unbalanced parentheses); no number is accepted with a different canonical form.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use phonenumber::{country, ParseError};
use regex::{Captures, Regex, RegexBuilder};

use crate::{Error, Kind};

/// The non-geographic "region" of country calling codes such as +800, in libphonenumber's terms.
const NON_GEOGRAPHIC_REGION: &str = "001";

/// The shortest national significant number libphonenumber accepts.
const MIN_NATIONAL_LEN: usize = 2;

/// The longest national significant number libphonenumber accepts (E.164 allows 15 digits in
/// all; libphonenumber is lenient, and so are we, to agree with it).
const MAX_NATIONAL_LEN: usize = 17;

/// Checks the characters, parses, requires a valid number, formats as E.164.
pub(crate) fn canonicalize(identifier: &str, region: Option<&str>) -> Result<String, Error> {
    let trimmed = identifier.trim();
    if trimmed.is_empty() {
        return Err(Error::Empty { kind: Kind::Phone });
    }
    check_phone_characters(trimmed)?;
    let region = region.map(parse_region).transpose()?;
    // Every digit of the text belongs to the number: letters and extensions were rejected.
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();

    // Step 1, with `phonenumber`: is it a number, and which country calling code does it carry?
    // The default region's rules must not touch numbers that name their country
    // (`phonenumber` 0.3.10 strips the region's national prefix from them: "+44 121 234 5678"
    // with region US loses the 1 after 44), so those are parsed without the region.
    let plus = trimmed
        .chars()
        .take_while(|c| !c.is_ascii_digit())
        .any(|c| c == '+');
    let idd_stripped = match region {
        Some(region) if !plus => strip_idd(&digits, region),
        _ => None,
    };
    let (number, international) = match (region, idd_stripped) {
        (_, Some(after_idd)) => (parse(None, &format!("+{after_idd}"))?, Some(after_idd)),
        (Some(region), None) if !plus => {
            let number = parse(Some(region), trimmed)?;
            match number.code().source() {
                country::Source::Default | country::Source::Number => (number, None),
                // It found a '+' or an international prefix where libphonenumber's rules, as
                // applied above, do not: refuse rather than guess.
                country::Source::Plus | country::Source::Idd => return Err(Error::PhoneInvalid),
            }
        }
        _ => match (parse(None, trimmed), region) {
            // libphonenumber reads "+00 44 ..." (a '+' before the international prefix) as if
            // there were no '+'.
            (Err(Error::PhoneCountryCode), Some(region)) => {
                let after_idd = strip_idd(&digits, region).ok_or(Error::PhoneCountryCode)?;
                (parse(None, &format!("+{after_idd}"))?, Some(after_idd))
            }
            (number, _) => (number?, Some(digits.as_str())),
        },
    };

    // Step 2, libphonenumber's rules over the metadata: the country calling code and the
    // national significant number.
    let (code, national, plan) = match international {
        Some(after_plus) => {
            let code = number.code().value();
            let national = after_plus
                .strip_prefix(code.to_string().as_str())
                .ok_or(Error::PhoneCountryCode)?;
            (code, national.to_owned(), main_plan(code)?)
        }
        None => {
            let region = region.ok_or(Error::MissingRegion)?;
            let plan = region_plan(region).ok_or(Error::MissingRegion)?;
            let code = plan.country_code;
            match plan.strip_own_country_code(&digits) {
                Some(national) => (code, national, main_plan(code)?),
                None => (code, digits.clone(), plan),
            }
        }
    };
    if national.len() < MIN_NATIONAL_LEN {
        return Err(Error::PhoneTooShort);
    }
    let national = match plan.strip_national_prefix(&national) {
        Some(stripped)
            if !matches!(
                plan.test_length(&stripped),
                Length::TooShort | Length::LocalOnly | Length::Invalid
            ) =>
        {
            stripped
        }
        _ => national,
    };
    if national.len() < MIN_NATIONAL_LEN {
        return Err(Error::PhoneTooShort);
    }
    if national.len() > MAX_NATIONAL_LEN {
        return Err(Error::PhoneTooLong);
    }
    if !is_valid(code, &national) {
        return Err(Error::PhoneInvalid);
    }
    Ok(format!("+{code}{national}"))
}

/// Parses with `phonenumber`, for its checks and the country calling code.
fn parse(region: Option<country::Id>, text: &str) -> Result<phonenumber::PhoneNumber, Error> {
    phonenumber::parse(region, text).map_err(|e| match e {
        // Without a region the parser can only read numbers that carry their country code.
        ParseError::InvalidCountryCode if region.is_none() && !text.starts_with('+') => {
            Error::MissingRegion
        }
        ParseError::InvalidCountryCode => Error::PhoneCountryCode,
        ParseError::NoNumber | ParseError::MalformedInteger(_) => Error::PhoneNotANumber,
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn => Error::PhoneTooShort,
        ParseError::TooLong => Error::PhoneTooLong,
    })
}

/// Characters a phone number may contain besides ASCII digits and whitespace: '+' and the
/// separators people write between digit groups.
const PHONE_PUNCTUATION: &[char] = &[
    '+', '-', '.', '/', '(', ')', '[', ']', '~', '\u{2010}', '\u{2011}', '\u{2012}', '\u{2013}',
    '\u{2014}', '\u{2015}', '\u{2212}',
];

/// Rejects letters and symbols before parsing: `phonenumber` reads letters as keypad digits
/// (a mistyped "O" becomes 6), and extensions and `tel:` URIs have no place in an E.164 key.
fn check_phone_characters(text: &str) -> Result<(), Error> {
    for c in text.chars() {
        if c.is_ascii_digit() || c.is_whitespace() || PHONE_PUNCTUATION.contains(&c) {
            continue;
        }
        if c.is_alphabetic() {
            return Err(Error::PhoneLetters);
        }
        return Err(Error::PhoneCharacter {
            code_point: u32::from(c),
        });
    }
    Ok(())
}

/// The digits after the region's international dialling prefix ("011 44 121 234 5678" from
/// the US gives "441212345678"), or `None` if they do not start with it. As in libphonenumber,
/// a 0 right after the prefix means it was not one (country calling codes never start with 0).
fn strip_idd(digits: &str, region: country::Id) -> Option<&str> {
    let plan = region_plan(region)?;
    let found = plan.international_prefix.as_ref()?.find(digits)?;
    let after = &digits[found.end()..];
    (!after.starts_with('0')).then_some(after)
}

/// Parses a default region, accepting only regions the phone metadata has.
fn parse_region(region: &str) -> Result<country::Id, Error> {
    let unknown = || Error::UnknownRegion(region.to_owned());
    let id: country::Id = region
        .trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| unknown())?;
    // `country::Id` lists CLDR regions; the parser panics on one without metadata, so check.
    match DATABASE.by_id(id.as_ref()) {
        Some(_) => Ok(id),
        None => Err(unknown()),
    }
}

/// Whether the number is valid: libphonenumber's `isValidNumber`. The number's region is the
/// only region of its country calling code, or for shared codes (+1, +7, +44, ...) the first
/// whose leading digits match or whose plan has the number; the number is valid if it is of a
/// known type (fixed line, mobile, toll free, ...) in that region's plan.
fn is_valid(code: u16, national: &str) -> bool {
    let Some(regions) = DATABASE.region(&code) else {
        return false;
    };
    let plan = match regions.as_slice() {
        [NON_GEOGRAPHIC_REGION] => main_plan(code).ok(),
        [region] => DATABASE.by_id(*region).and_then(plan),
        _ => regions
            .iter()
            .filter_map(|region| DATABASE.by_id(*region).and_then(plan))
            .find(|plan| match &plan.leading_digits {
                Some(leading) => leading.is_match(national),
                None => plan.has_known_type(national),
            }),
    };
    plan.is_some_and(|plan| plan.has_known_type(national))
}

/// The plan libphonenumber uses for numbers with this country calling code: that of the code's
/// main region (the first listed; GB for +44), or the non-geographic entity's (+800).
fn main_plan(code: u16) -> Result<Arc<Plan>, Error> {
    let regions = DATABASE.region(&code).ok_or(Error::PhoneCountryCode)?;
    let meta = match regions.first() {
        Some(&NON_GEOGRAPHIC_REGION) => DATABASE
            .by_code(&code)
            .and_then(|metas| metas.into_iter().next()),
        Some(region) => DATABASE.by_id(*region),
        None => None,
    };
    meta.and_then(plan).ok_or(Error::PhoneCountryCode)
}

/// The plan of a default region.
fn region_plan(region: country::Id) -> Option<Arc<Plan>> {
    DATABASE.by_id(region.as_ref()).and_then(plan)
}

/// One region's numbering plan, its patterns compiled the way libphonenumber applies them.
#[derive(Debug)]
struct Plan {
    country_code: u16,
    /// Matches the start of the digits: the international dialling prefix ("00", "011").
    international_prefix: Option<Regex>,
    /// Matches the start of a national number in this region, for shared country codes.
    leading_digits: Option<Regex>,
    /// Matches the start: the national prefix (and carrier code) to strip.
    national_prefix: Option<Regex>,
    /// How to rewrite the national number when the prefix's last group matched, with `${1}`.
    transform: Option<String>,
    /// Whole match: any number of the plan.
    general: Regex,
    /// Whole match and possible lengths of each number type, in libphonenumber's order.
    types: Vec<(Regex, Vec<u16>)>,
    /// All possible lengths, sorted: the union over the types.
    lengths: Vec<u16>,
    /// Lengths of numbers diallable only locally (without area code), none of `lengths`.
    local_only: Vec<u16>,
}

/// Compiled plans by region id and country calling code (non-geographic entities share an id),
/// built on first use: about 250 exist. Reads, the common case, share the lock.
static PLANS: LazyLock<RwLock<HashMap<PlanKey, Arc<Plan>>>> = LazyLock::new(Default::default);

/// A plan's region id ("GB", or "001" for all non-geographic entities) and country code.
type PlanKey = (&'static str, u16);

/// The compiled plan for a region's metadata. `None` if a pattern does not compile (never, for
/// the shipped metadata, which `phonenumber` compiled already).
fn plan(meta: &'static Metadata) -> Option<Arc<Plan>> {
    let key = (meta.id(), meta.country_code());
    if let Some(plan) = PLANS.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Some(Arc::clone(plan));
    }
    let plan = Arc::new(Plan::compile(meta)?);
    PLANS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Arc::clone(&plan));
    Some(plan)
}

/// Compiles a metadata pattern: laid out over lines (whitespace is ignored, as `phonenumber`
/// does), anchored at the start, and at the end too for `whole`.
fn compile(pattern: &str, whole: bool) -> Option<Regex> {
    let end = if whole { "$" } else { "" };
    RegexBuilder::new(&format!("^(?:{pattern}){end}"))
        .ignore_whitespace(true)
        .build()
        .ok()
}

impl Plan {
    fn compile(meta: &Metadata) -> Option<Plan> {
        let descriptors = meta.descriptors();
        let type_descriptors = [
            descriptors.premium_rate(),
            descriptors.toll_free(),
            descriptors.shared_cost(),
            descriptors.voip(),
            descriptors.personal_number(),
            descriptors.pager(),
            descriptors.uan(),
            descriptors.voicemail(),
            descriptors.fixed_line(),
            descriptors.mobile(),
        ];
        let types = type_descriptors
            .iter()
            .flatten()
            .map(|d| {
                Some((
                    compile(d.national_number().as_str(), true)?,
                    type_lengths(d),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        // libphonenumber's build tool gives the general description the union of the types'
        // lengths; the metadata source (which `phonenumber` reads) leaves that to it.
        let mut lengths: Vec<u16> = type_descriptors
            .iter()
            .flatten()
            .flat_map(|d| d.possible_length().iter().copied())
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut local_only: Vec<u16> = type_descriptors
            .iter()
            .flatten()
            .flat_map(|d| d.possible_local_length().iter().copied())
            .filter(|length| !lengths.contains(length))
            .collect();
        local_only.sort_unstable();
        local_only.dedup();
        // Where the metadata gives no pattern for the national prefix, the prefix is the pattern.
        let national_prefix = match (meta.national_prefix_for_parsing(), meta.national_prefix()) {
            (Some(pattern), _) => Some(compile(pattern.as_str(), false)?),
            (None, Some(prefix)) if !prefix.is_empty() => {
                Some(compile(&regex::escape(prefix), false)?)
            }
            _ => None,
        };
        let optional = |pattern: Option<&str>| match pattern {
            Some(pattern) => compile(pattern, false).map(Some),
            None => Some(None),
        };
        Some(Plan {
            country_code: meta.country_code(),
            international_prefix: optional(meta.international_prefix().map(|r| r.as_str()))?,
            leading_digits: optional(meta.leading_digits().map(|r| r.as_str()))?,
            national_prefix,
            transform: meta
                .national_prefix_transform_rule()
                .filter(|rule| !rule.is_empty())
                .map(braced_group_references),
            general: compile(descriptors.general().national_number().as_str(), true)?,
            types,
            lengths,
            local_only,
        })
    }

    /// libphonenumber's `getNumberType(...) != UNKNOWN`: the national significant number
    /// matches the plan's general pattern and the pattern and lengths of some number type.
    fn has_known_type(&self, national: &str) -> bool {
        let length = u16::try_from(national.len()).unwrap_or(u16::MAX);
        self.general.is_match(national)
            && self.types.iter().any(|(pattern, lengths)| {
                (lengths.is_empty() || lengths.contains(&length)) && pattern.is_match(national)
            })
    }

    /// libphonenumber's `maybeExtractCountryCode` for a number written without '+' or an
    /// international prefix: if it starts with the region's own country calling code ("44 7400
    /// 123456" in GB), the rest (without any national prefix), when taking the code away makes
    /// the number fit the plan, or the number is too long otherwise.
    fn strip_own_country_code(&self, digits: &str) -> Option<String> {
        let after_code = digits.strip_prefix(self.country_code.to_string().as_str())?;
        let national = self
            .strip_national_prefix(after_code)
            .unwrap_or_else(|| after_code.to_owned());
        let fits_only_without = !self.general.is_match(digits) && self.general.is_match(&national);
        (fits_only_without || self.test_length(digits) == Length::TooLong).then_some(national)
    }

    /// libphonenumber's `maybeStripNationalPrefixAndCarrierCode`: the number without its
    /// national prefix (and carrier code), rewritten by the region's rule if it has one; `None`
    /// if there is none, or if the number fits the plan only with it.
    fn strip_national_prefix(&self, national: &str) -> Option<String> {
        let prefix = self.national_prefix.as_ref()?;
        let captures = prefix.captures(national)?;
        let end = captures.get(0)?.end();
        let stripped = match &self.transform {
            Some(rule) if last_group_matched(prefix, &captures) => {
                let mut transformed = String::new();
                captures.expand(rule, &mut transformed);
                transformed.push_str(&national[end..]);
                transformed
            }
            _ => national[end..].to_owned(),
        };
        if self.general.is_match(national) && !self.general.is_match(&stripped) {
            return None;
        }
        Some(stripped)
    }

    /// libphonenumber's `testNumberLength` for a number of unknown type.
    fn test_length(&self, national: &str) -> Length {
        let length = u16::try_from(national.len()).unwrap_or(u16::MAX);
        let (Some(&min), Some(&max)) = (self.lengths.first(), self.lengths.last()) else {
            return Length::Invalid;
        };
        if self.local_only.contains(&length) {
            Length::LocalOnly
        } else if length < min {
            Length::TooShort
        } else if length > max {
            Length::TooLong
        } else if self.lengths.contains(&length) {
            Length::Possible
        } else {
            Length::Invalid
        }
    }
}

/// A number type's possible lengths; empty means "as the general description" in the
/// metadata.
fn type_lengths(descriptor: &Descriptor) -> Vec<u16> {
    descriptor.possible_length().to_vec()
}

/// Whether the pattern's last capture group took part in the match (libphonenumber applies the
/// transform rule only then).
fn last_group_matched(prefix: &Regex, captures: &Captures<'_>) -> bool {
    let groups = prefix.captures_len() - 1;
    groups > 0 && captures.get(groups).is_some()
}

/// Turns the metadata's `$1` group references into `${1}`, so a digit after one can never be
/// read as part of the group number.
fn braced_group_references(rule: &str) -> String {
    let mut out = String::with_capacity(rule.len() + 4);
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some(&d)) if d.is_ascii_digit() => {
                out.push_str("${");
                out.push(d);
                out.push('}');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// libphonenumber's `ValidationResult`, for a number of unknown type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Possible,
    LocalOnly,
    TooShort,
    TooLong,
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(text: &str, region: Option<&str>) -> Result<String, Error> {
        canonicalize(text, region)
    }

    #[test]
    fn whole_numbers_only() {
        // `phonenumber::is_valid` accepts these (its patterns match prefixes); libphonenumber
        // does not.
        for text in ["+387 61 123 4565", "+86 10 1234 5678 5", "+880 2 7111 2345"] {
            let number = phonenumber::parse(None, text).unwrap();
            assert!(
                phonenumber::is_valid(&number),
                "{text}: the crate's bug is fixed?"
            );
            assert_eq!(e164(text, None), Err(Error::PhoneInvalid), "{text}");
        }
    }

    #[test]
    fn shared_country_codes_find_their_region() {
        // +7 is Russia and Kazakhstan, +1 the NANP countries, +44 the UK, Guernsey, ...
        assert_eq!(
            e164("+7 800 123-45-67", None).as_deref(),
            Ok("+78001234567")
        );
        assert_eq!(e164("+7 701 234 5678", None).as_deref(), Ok("+77012345678"));
        assert_eq!(e164("+1 876 210 1234", None).as_deref(), Ok("+18762101234"));
        assert_eq!(
            e164("01481 256789", Some("GG")).as_deref(),
            Ok("+441481256789")
        );
        assert_eq!(
            e164("+375 801 123 4567", None).as_deref(),
            Ok("+3758011234567")
        );
        assert_eq!(e164("+800 1234 5678", None).as_deref(), Ok("+80012345678"));
    }

    #[test]
    fn letters_and_symbols_are_rejected_before_parsing() {
        assert_eq!(e164("0740O 123456", Some("GB")), Err(Error::PhoneLetters));
        assert_eq!(
            e164("07400 123456*", Some("GB")),
            Err(Error::PhoneCharacter { code_point: 0x2a })
        );
        assert_eq!(
            e164("8~10 44 7400 123456", Some("RU")).as_deref(),
            Ok("+447400123456")
        );
    }

    #[test]
    fn idd_followed_by_zero_is_not_an_idd() {
        // "00" then "0...": libphonenumber reads it as a national number.
        assert_eq!(strip_idd("0044", country::Id::GB), Some("44"));
        assert_eq!(strip_idd("00044", country::Id::GB), None);
        assert_eq!(strip_idd("44", country::Id::GB), None);
    }

    #[test]
    fn group_references_are_braced() {
        assert_eq!(braced_group_references("9$1"), "9${1}");
        assert_eq!(braced_group_references("$2"), "${2}");
        assert_eq!(braced_group_references("0549$1"), "0549${1}");
        assert_eq!(braced_group_references("$"), "$");
    }

    #[test]
    fn patterns_match_whole_numbers_and_ignore_layout() {
        let pattern = compile("\n  1|\n  1 2\n", true).unwrap();
        assert!(pattern.is_match("12"));
        assert!(pattern.is_match("1"));
        assert!(!pattern.is_match("123"));
        assert!(compile("(", true).is_none());
        let prefix = compile("0|90", false).unwrap();
        assert!(prefix.is_match("0123"));
        assert!(!prefix.is_match("10"));
    }

    #[test]
    fn plans_are_compiled_once() {
        let gb = region_plan(country::Id::GB).unwrap();
        assert!(Arc::ptr_eq(&gb, &region_plan(country::Id::GB).unwrap()));
        assert_eq!(gb.country_code, 44);
        assert_eq!(gb.test_length("7400123456"), Length::Possible);
        assert_eq!(gb.test_length("740"), Length::TooShort);
        assert_eq!(gb.test_length("74001234567"), Length::TooLong);
    }
}
