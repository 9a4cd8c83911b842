#!/usr/bin/env python3
"""Generates vectors.json, the leakbloom identifier test vectors, independently of the Rust code.

The expected canonical forms and keys in vectors.json must not come from the code they test, so
this script derives them from other implementations of the same rules:

- phone: first leakbloom's own character rule (ASCII digits, whitespace, '+' and the separators
  in PHONE_PUNCTUATION only; letters and other symbols are rejected), then Google's libphonenumber
  rules via the Python `phonenumbers` package, E.164 output, and only numbers
  `phonenumbers.is_valid_number` accepts. Pin it to the metadata version the Rust
  `phonenumber` crate embeds (its version's `+9.0.33` suffix), since validity depends on it:
      pip install phonenumbers==9.0.33 idna==3.13
- email: trim, lowercase, exactly one '@', non-empty parts, no whitespace or control characters,
  domain through UTS #46 nontransitional processing via the Python `idna` package
  (`idna.encode(domain, uts46=True, transitional=False)`). The standard library's "idna" codec is
  IDNA2003 and gets some domains wrong (it maps 'ß' to "ss"), so it is not used.
- other: trim, Unicode NFC (`unicodedata`).
- keys: `hashlib.sha256` and `hmac` (HMAC-SHA256) over the UTF-8 canonical form, the latter keyed
  by the test pepper below.

Some cases also carry a hand-written expected canonical form, checked here too, so a change in
either Python package that alters a vector fails loudly instead of silently rewriting the file.
Invalid cases are checked to be rejected by the Python rules as well; their `error` is the
category name that leakbloom_ident::Error::category() gives (see ERROR_CATEGORIES).

It also writes phones.json: a broad sample of libphonenumber-formatted numbers across every
region and number type with the E.164 form Python phonenumbers gives (or null), which the Rust
tests check case by case.

Run from anywhere; it rewrites vectors.json and phones.json next to itself:
    python3 crates/ident/testdata/gen_vectors.py
"""

import hashlib
import hmac
import json
import pathlib
import random
import sys
import unicodedata

import idna
import phonenumbers
from phonenumbers import PhoneNumberFormat as PNF
from phonenumbers import PhoneNumberType as PT

PHONENUMBERS_VERSION = "9.0.33"
IDNA_VERSION = "3.13"

TEST_PEPPER = "leakbloom-test-pepper-v1"

# Besides ASCII digits and whitespace, what a phone number may contain (leakbloom's rule).
PHONE_PUNCTUATION = "+-./()[]~\u2010\u2011\u2012\u2013\u2014\u2015\u2212"

ERROR_CATEGORIES = {
    "empty": "the identifier is empty or only whitespace",
    "unknown_region": "the default region is not an ISO 3166-1 alpha-2 code libphonenumber knows",
    "missing_region": "a phone number in national form was given without a default region",
    "phone_letters": "the phone number contains letters (vanity numbers, extensions, tel: URIs)",
    "phone_character": "the phone number contains a character other than ASCII digits, whitespace and + - . / ( ) [ ] ~ and dashes",
    "phone_not_a_number": "the text has too few digits to be a phone number",
    "phone_country_code": "the country calling code is not assigned",
    "phone_too_short": "too few digits for any phone number",
    "phone_too_long": "too many digits for any phone number",
    "phone_invalid": "parses, but is not a valid number in its region's numbering plan",
    "email_at_count": "not exactly one '@'",
    "email_empty_local": "nothing before the '@'",
    "email_empty_domain": "nothing after the '@'",
    "email_forbidden_character": "whitespace or a control character inside the address",
    "email_domain": "the domain is rejected by IDNA (UTS #46) processing",
}

# (kind, input, region, expected canonical or None, note or None)
VALID = [
    # --- phone: United Kingdom
    ("phone", "07400 123456", "GB", "+447400123456", "UK mobile, national format"),
    ("phone", "07400123456", "gb", "+447400123456", "region is case-insensitive"),
    ("phone", "+44 7400 123456", None, "+447400123456", "international format, no region needed"),
    ("phone", "+44 (0)7400 123456", None, "+447400123456", "'(0)' national prefix in an international number"),
    ("phone", "0044 7400 123456", "GB", "+447400123456", "international dialling prefix 00 from the UK"),
    ("phone", "(0121) 234-5678", "GB", "+441212345678", "UK landline with parentheses and a dash"),
    ("phone", "  +44 121 234 5678\n", "US", "+441212345678", "'+' number: the region is ignored (and its national prefix 1 must not be stripped); whitespace trimmed"),
    # --- phone: United States
    ("phone", "(201) 555-0123", "US", "+12015550123", "US, national format"),
    ("phone", "201.555.0123", "US", "+12015550123", "US with dots"),
    ("phone", "1 (201) 555-0123", "US", "+12015550123", "US with the national prefix 1"),
    ("phone", "+1 650-253-0000", "DE", "+16502530000", "'+' number: the region is ignored"),
    ("phone", "011 44 7400 123456", "US", "+447400123456", "international dialling prefix 011 from the US"),
    ("phone", "011 44 121 234 5678", "US", "+441212345678", "011 from the US to a UK number starting with 1: the US national prefix 1 must not be stripped"),
    # --- phone: Germany
    ("phone", "01512 3456789", "DE", "+4915123456789", "German mobile, national format"),
    ("phone", "+49 (0)30 123456", None, "+4930123456", "German landline"),
    ("phone", "030/123456", "DE", "+4930123456", "German landline with a slash"),
    # --- phone: France
    ("phone", "06 12 34 56 78", "FR", "+33612345678", "French mobile"),
    ("phone", "01.23.45.67.89", "FR", "+33123456789", "French landline with dots"),
    ("phone", "+33 6 12 34 56 78", "GB", "+33612345678", "'+' number: the region is ignored"),
    ("phone", "+39 02 1234 5678", "FR", "+390212345678", "Italian landline from France: the French national prefix 0 must not be stripped"),
    ("phone", "00 39 02 1234 5678", "FR", "+390212345678", "the same dialled with 00 from France"),
    ("phone", "8 10 44 7400 123456", "RU", "+447400123456", "Russian international dialling prefix 8~10"),
    ("phone", "8 800 123-45-67", "RU", "+78001234567", "Russian toll-free: the national prefix 8 is removed once, not twice"),
    ("phone", "+7 800 123-45-67", None, "+78001234567", "the 8 after +7 is part of the number"),
    ("phone", "44 7400 123456", "GB", "+447400123456", "country calling code without '+'"),
    ("phone", "250 123 456", "RW", "+250250123456", "a Rwandan number that starts with Rwanda's code 250"),
    ("phone", "011 15-2345-6789", "AR", "+5491123456789", "Argentine mobile: national prefix and 15 transformed to 9"),
    ("phone", "0 21 (11) 96123-4567", "BR", "+5511961234567", "Brazilian carrier code 21 removed"),
    ("phone", "01481 256789", "GG", "+441481256789", "Guernsey shares +44 with the UK"),
    ("phone", "+0044 7400 123456", "GB", "+447400123456", "'+' before the international prefix"),
    ("phone", "(+44) 7400 123456", "FR", "+447400123456", "'+' in parentheses: the region is ignored"),
    # --- phone: India
    ("phone", "081234 56789", "IN", "+918123456789", "Indian mobile with national prefix"),
    ("phone", "81234-56789", "IN", "+918123456789", "Indian mobile without national prefix"),
    ("phone", "+91 74104 10123", None, "+917410410123", "Indian landline, international"),
    # --- phone: Brazil
    ("phone", "(11) 96123-4567", "BR", "+5511961234567", "Brazilian mobile"),
    ("phone", "+55 11 2345-6789", None, "+551123456789", "Brazilian landline"),
    # --- phone: Japan
    ("phone", "090-1234-5678", "JP", "+819012345678", "Japanese mobile"),
    ("phone", "03-1234-5678", "JP", "+81312345678", "Tokyo landline"),
    ("phone", "+81 3-1234-5678", None, "+81312345678", "Tokyo landline, international"),
    # --- phone: others
    ("phone", "02 1234 5678", "IT", "+390212345678", "Italy keeps the leading 0 of landlines"),
    ("phone", "312 345 6789", "IT", "+393123456789", "Italian mobile"),
    ("phone", "0412 345 678", "AU", "+61412345678", "Australian mobile"),
    ("phone", "612 34 56 78", "ES", "+34612345678", "Spanish mobile"),
    ("phone", "131 2345 6789", "CN", "+8613123456789", "Chinese mobile"),
    ("phone", "06-12345678", "NL", "+31612345678", "Dutch mobile"),
    ("phone", "078 123 45 67", "CH", "+41781234567", "Swiss mobile"),
    # --- email
    ("email", "User@Example.COM", None, "user@example.com", "everything lowercased"),
    ("email", "  alice@example.org \n", None, "alice@example.org", "surrounding whitespace trimmed"),
    ("email", "\tBob@Example.NET\r\n", None, "bob@example.net", None),
    ("email", "First.Last+news@Example.com", None, "first.last+news@example.com", "dots and plus-address kept"),
    ("email", "john.doe@gmail.com", None, "john.doe@gmail.com", "no gmail dot folding"),
    ("email", "johndoe@gmail.com", None, "johndoe@gmail.com", "a different key from john.doe@gmail.com"),
    ("email", "JohnDoe+spam@GMail.com", None, "johndoe+spam@gmail.com", "no plus folding"),
    ("email", "user@bücher.example", "GB", "user@xn--bcher-kva.example", "IDN domain to ASCII; region ignored"),
    ("email", "USER@BÜCHER.EXAMPLE", None, "user@xn--bcher-kva.example", "uppercase IDN domain"),
    ("email", "user@xn--bcher-kva.example", None, "user@xn--bcher-kva.example", "already ASCII"),
    ("email", "info@münchen.de", None, "info@xn--mnchen-3ya.de", None),
    ("email", "user@straße.example", None, "user@xn--strae-oqa.example", "nontransitional: 'ß' is kept, not mapped to \"ss\""),
    ("email", "контакт@пример.рф", None, "контакт@xn--e1afmkfd.xn--p1ai", "non-ASCII local part kept (lowercase)"),
    ("email", "Ünïcode@Example.com", None, "ünïcode@example.com", "non-ASCII local part lowercased"),
    ("email", "x@例え.テスト", None, "x@xn--r8jz45g.xn--zckzah", "Japanese IDN"),
    ("email", "o'brien@example.ie", None, "o'brien@example.ie", None),
    ("email", "a@b", None, "a@b", "shortest possible"),
    # --- other
    ("other", "Cafe\u0301", None, "Caf\u00e9", "NFD input (e + U+0301) becomes NFC"),
    ("other", "  hello world  ", None, "hello world", "trimmed, inner space kept"),
    ("other", "A\u030aNGSTRO\u0308M", None, "\u00c5NGSTR\u00d6M", "NFD to NFC, case kept"),
    ("other", "\u212b", None, "\u00c5", "ANGSTROM SIGN normalizes to A WITH RING ABOVE"),
    ("other", "\u1112\u1161\u11ab", None, "\ud55c", "Hangul jamo compose"),
    ("other", "MixedCase_User42", None, "MixedCase_User42", "no lowercasing for other"),
    ("other", "123-45-6789", "US", "123-45-6789", "not parsed as a phone; region ignored"),
    ("other", "\u00a0padded\u00a0", None, "padded", "no-break spaces trimmed"),
    ("other", "\tline\n", None, "line", None),
]

# (kind, input, region, error category, note or None)
INVALID = [
    ("phone", "", "GB", "empty", None),
    ("phone", "   ", "GB", "empty", None),
    ("phone", "12", "GB", "phone_invalid", "too few digits"),
    ("phone", "+", None, "phone_not_a_number", "no digits"),
    ("phone", "call me maybe", "GB", "phone_letters", "letters, no digits"),
    ("phone", "0740O 123456", "GB", "phone_letters", "letter O typed for zero: libphonenumber would read it as keypad 6"),
    ("phone", "1-800-FLOWERS", "US", "phone_letters", "vanity numbers must be given as digits"),
    ("phone", "+1 650-253-0000 ext. 1234", None, "phone_letters", "extensions are not accepted: E.164 has none"),
    ("phone", "tel:+1-650-253-0000", None, "phone_letters", "tel: URIs are not accepted"),
    ("phone", "07400 123456#", "GB", "phone_character", "symbols other than + - . / ( ) [ ] ~ and dashes are not accepted"),
    ("phone", "\uff10\uff17\uff14\uff10\uff10 \uff11\uff12\uff13\uff14\uff15\uff16", "GB", "phone_character", "only ASCII digits are accepted (these are fullwidth)"),
    ("phone", "07400 12345", "GB", "phone_invalid", "one digit short for a UK mobile"),
    ("phone", "+44 7700 900123", None, "phone_invalid", "Ofcom's drama range is not a valid number"),
    ("phone", "(201) 555-012", "US", "phone_invalid", "one digit short"),
    ("phone", "+1 201 555 01234", None, "phone_invalid", "one digit too many"),
    ("phone", "07400 123456", None, "missing_region", "national format needs a region"),
    ("phone", "07400 123456", "UK", "unknown_region", "the UK's code is GB"),
    ("phone", "07400 123456", "XX", "unknown_region", None),
    ("phone", "07400 123456", "GBR", "unknown_region", "alpha-3 codes are not accepted"),
    ("phone", "+999 1234 5678", None, "phone_country_code", "unassigned country calling code"),
    ("phone", "+44 1234567890123456789", None, "phone_too_long", None),
    ("email", "", None, "empty", None),
    ("email", " \t ", None, "empty", None),
    ("email", "userexample.com", None, "email_at_count", "no '@'"),
    ("email", "a@b@example.com", None, "email_at_count", "two '@'"),
    ("email", "@example.com", None, "email_empty_local", None),
    ("email", "user@", None, "email_empty_domain", None),
    ("email", "us er@example.com", None, "email_forbidden_character", "inner space"),
    ("email", "user@exa\tmple.com", None, "email_forbidden_character", "inner tab"),
    ("email", "\"john doe\"@example.com", None, "email_forbidden_character", "quoted local parts with spaces are not accepted"),
    ("email", "user\u0000@example.com", None, "email_forbidden_character", "NUL"),
    ("email", "user@xn--a.example", None, "email_domain", "malformed punycode label"),
    ("other", "", None, "empty", None),
    ("other", " \t\n ", None, "empty", None),
]


def fail(message):
    sys.exit(f"gen_vectors.py: {message}")


def phone_canonical(text, region):
    """E.164 per the Python phonenumbers package, or an exception / None if not valid."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    for c in text:
        if c in "0123456789" or c.isspace() or c in PHONE_PUNCTUATION:
            continue
        raise ValueError("phone_letters" if c.isalpha() else "phone_character")
    number = phonenumbers.parse(text, region.strip().upper() if region else None)
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_canonical(text):
    """The email rules, written independently of the Rust code."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in text):
        raise ValueError("email_forbidden_character")
    if text.count("@") != 1:
        raise ValueError("email_at_count")
    local, domain = text.lower().split("@")
    if not local:
        raise ValueError("email_empty_local")
    if not domain:
        raise ValueError("email_empty_domain")
    try:
        domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError("email_domain") from e
    return f"{local}@{domain}"


def other_canonical(text):
    text = text.strip()
    if not text:
        raise ValueError("empty")
    return unicodedata.normalize("NFC", text)


def canonical(kind, text, region):
    if kind == "phone":
        return phone_canonical(text, region)
    if kind == "email":
        return email_canonical(text)
    return other_canonical(text)


def case(fields, note):
    if note:
        fields["note"] = note
    return fields


def phone_sample():
    """A broad sample of libphonenumber's own formatting of example numbers, for phones.json:
    every region and number type, national, international and dialled-from-abroad forms, and
    variants with changed, missing or extra digits (mostly invalid). Deterministic."""
    rng = random.Random(20261129)
    types = [
        PT.MOBILE, PT.FIXED_LINE, PT.TOLL_FREE, PT.PREMIUM_RATE, PT.VOIP,
        PT.PERSONAL_NUMBER, PT.UAN, PT.PAGER, PT.SHARED_COST, PT.VOICEMAIL,
    ]
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    cases = []
    for region in regions:
        code = phonenumbers.country_code_for_region(region)
        for numtype in types:
            example = phonenumbers.example_number_for_type(region, numtype)
            if example is None:
                continue
            digits = list(phonenumbers.national_significant_number(example))
            for variant in range(3):
                changed = list(digits)
                if variant > 0:
                    for _ in range(rng.choice([1, 2])):
                        changed[rng.randrange(len(changed))] = str(rng.randrange(10))
                    roll = rng.random()
                    if roll < 0.15:
                        changed.pop()
                    elif roll < 0.3:
                        changed.append(str(rng.randrange(10)))
                try:
                    number = phonenumbers.parse("+%d%s" % (code, "".join(changed)), None)
                except phonenumbers.NumberParseException:
                    continue
                abroad = rng.choice(regions)
                forms = [
                    (phonenumbers.format_number(number, PNF.NATIONAL), region),
                    (phonenumbers.format_number(number, PNF.INTERNATIONAL), rng.choice(regions)),
                    (phonenumbers.format_out_of_country_calling_number(number, abroad), abroad),
                ]
                for text, text_region in forms:
                    if not text or any(c.isalpha() for c in text):
                        continue
                    try:
                        expected = phone_canonical(text, text_region)
                    except (phonenumbers.NumberParseException, ValueError):
                        expected = None
                    cases.append([text_region, text, expected])
    return cases


def main():
    if phonenumbers.__version__ != PHONENUMBERS_VERSION:
        fail(f"phonenumbers {phonenumbers.__version__} installed, need {PHONENUMBERS_VERSION}")
    if idna.__version__ != IDNA_VERSION:
        fail(f"idna {idna.__version__} installed, need {IDNA_VERSION}")
    pepper = TEST_PEPPER.encode("utf-8")

    valid = []
    for kind, text, region, expected, note in VALID:
        got = canonical(kind, text, region)
        if got is None:
            fail(f"valid case {text!r} ({region}) is not a valid number per phonenumbers")
        if expected is not None and got != expected:
            fail(f"{text!r}: computed {got!r}, hand-written expectation {expected!r}")
        data = got.encode("utf-8")
        valid.append(case({
            "input": text,
            "kind": kind,
            "region": region,
            "canonical": got,
            "sha256": hashlib.sha256(data).hexdigest(),
            "hmac_sha256": hmac.new(pepper, data, hashlib.sha256).hexdigest(),
        }, note))

    invalid = []
    for kind, text, region, error, note in INVALID:
        if error not in ERROR_CATEGORIES:
            fail(f"unknown error category {error!r}")
        if kind == "phone" and region and region.strip().upper() not in phonenumbers.SUPPORTED_REGIONS:
            if error != "unknown_region":
                fail(f"{text!r}: region {region!r} is unknown, expected error unknown_region")
        else:
            try:
                got = canonical(kind, text, region)
            except phonenumbers.NumberParseException:
                got = None
            except ValueError as e:
                if str(e) != error:
                    fail(f"{text!r}: Python rules say {e}, the case says {error}")
                got = None
            if got is not None:
                fail(f"invalid case {text!r} is accepted by the Python rules as {got!r}")
        invalid.append(case({"input": text, "kind": kind, "region": region, "error": error}, note))

    document = {
        "description": (
            "leakbloom identifier test vectors. For each case, canonicalize `input` as `kind` "
            "with default region `region` (phone only; null = none), then key = SHA-256 of the "
            "UTF-8 canonical form (`sha256`) or HMAC-SHA256 keyed by the test pepper's bytes over "
            "it (`hmac_sha256`), both lowercase hex. Every `invalid` case must be rejected; "
            "`error` names the reason (see `error_categories`). Strings are JSON-escaped so that "
            "Unicode normalization of this file cannot change them."
        ),
        "rules": {
            "phone": "trim; only ASCII digits, whitespace and + - . / ( ) [ ] ~ and dashes "
                     "(U+2010-U+2015, U+2212), so no letters, extensions or tel: URIs; parse "
                     "with libphonenumber (default region for numbers without '+'), must be a "
                     "valid number; canonical = E.164",
            "email": "trim; no whitespace or control characters inside; exactly one '@'; "
                     "non-empty local part and domain; lowercase; domain to ASCII by UTS #46 "
                     "nontransitional processing without STD3 rules; no dot or plus folding",
            "other": "trim, Unicode NFC",
        },
        "libphonenumber_metadata": PHONENUMBERS_VERSION,
        "generator": "crates/ident/testdata/gen_vectors.py",
        "pepper": {"utf8": TEST_PEPPER, "hex": pepper.hex()},
        "error_categories": ERROR_CATEGORIES,
        "cases": valid,
        "invalid": invalid,
    }
    out = pathlib.Path(__file__).with_name("vectors.json")
    out.write_text(json.dumps(document, indent=2, ensure_ascii=True) + "\n", encoding="ascii")
    print(f"wrote {out}: {len(valid)} cases, {len(invalid)} invalid cases")

    phones = phone_sample()
    sample = {
        "description": (
            "A broad sample of phone numbers as libphonenumber formats them, with the E.164 form "
            "libphonenumber (Python phonenumbers) gives, or null where it finds no valid number. "
            "Each case is [default region, text, expected]. Checks that leakbloom's phone "
            "canonical form agrees with libphonenumber across every region and number type."
        ),
        "libphonenumber_metadata": PHONENUMBERS_VERSION,
        "generator": "crates/ident/testdata/gen_vectors.py",
        "cases": phones,
    }
    out = pathlib.Path(__file__).with_name("phones.json")
    text = json.dumps(sample, indent=None, ensure_ascii=True, separators=(",", ":"))
    # One case per line keeps diffs readable.
    text = text.replace(',"cases":[[', ',\n"cases":[\n[').replace("],[", "],\n[")
    out.write_text(text + "\n", encoding="ascii")
    valid_phones = sum(1 for case in phones if case[2] is not None)
    print(f"wrote {out}: {len(phones)} cases, {valid_phones} valid")


if __name__ == "__main__":
    main()
