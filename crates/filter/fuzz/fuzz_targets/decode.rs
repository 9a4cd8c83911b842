//! Arbitrary bytes into the decoders: they must return an error or a filter, never panic or
//! allocate from an unchecked length, and whatever they accept must re-encode to the same bytes.
#![no_main]

use leakbloom_filter::Filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from_slice = Filter::decode(data);
    let from_stream = Filter::decode_from(&mut &data[..]);
    match from_slice {
        Ok(filter) => {
            assert_eq!(filter.encode(), data, "accepted bytes are canonical");
            assert_eq!(
                from_stream.expect("slice accepted, stream must too"),
                filter
            );
        }
        Err(_) => {
            // The stream decoder reads one filter and ignores what follows, so it may accept a
            // prefix; it must then have read exactly an encoded filter.
            if let Ok(filter) = from_stream {
                let encoded = filter.encode();
                assert!(data.len() > encoded.len() && data.starts_with(&encoded));
            }
        }
    }
});
