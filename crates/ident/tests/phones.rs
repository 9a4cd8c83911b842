//! Checks phone canonical forms against `testdata/phones.json`: libphonenumber's (Python
//! `phonenumbers`) reading of a broad sample of numbers in every region, written by
//! `testdata/gen_vectors.py`. This is what catches `phonenumber` crate behaviour that differs
//! from libphonenumber, now and after an upgrade of either.

use leakbloom_ident::{canonicalize, Kind};
use serde::Deserialize;

#[derive(Deserialize)]
struct Sample {
    libphonenumber_metadata: String,
    cases: Vec<(Option<String>, String, Option<String>)>,
}

#[test]
fn phone_canonical_forms_agree_with_libphonenumber() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/phones.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let sample: Sample = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(sample.cases.len() > 5000, "{} cases", sample.cases.len());
    let valid = sample.cases.iter().filter(|c| c.2.is_some()).count();
    assert!(
        valid > 3000 && sample.cases.len() - valid > 1000,
        "{valid} valid"
    );

    let mut disagreements = Vec::new();
    for (region, text, expected) in &sample.cases {
        let got = canonicalize(Kind::Phone, text, region.as_deref()).ok();
        if got != *expected {
            disagreements.push(format!(
                "{region:?} {text:?}: want {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree with libphonenumber {} (first 20):\n{}",
        disagreements.len(),
        sample.cases.len(),
        sample.libphonenumber_metadata,
        disagreements[..disagreements.len().min(20)].join("\n")
    );
}
