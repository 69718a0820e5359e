//! `Content-Range` of a resumed read as the HTTP source reads it: a value
//! is taken only when it is a valid `bytes FIRST-LAST/TOTAL` or
//! `bytes FIRST-LAST/*` (RFC 9110 14.4: FIRST <= LAST < TOTAL) starting at
//! the offset asked for, and the total is the one it names; ranged reads
//! take FIRST and LAST of exactly such values.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The RFC's grammar, written out plainly: (first, last, total).
fn valid(text: &str) -> Option<(u64, u64, Option<u64>)> {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (span, total) = text.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (number(first)?, number(last)?);
    let total = match total {
        "*" => None,
        t => Some(number(t)?),
    };
    (first <= last && total.is_none_or(|t| last < t)).then_some((first, last, total))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Ask for the offset the value names, if any, and for 0.
    let named = text
        .strip_prefix("bytes ")
        .and_then(|r| r.split(['-', '/']).next())
        .and_then(|s| s.parse::<u64>().ok());
    for offset in named.into_iter().chain([0]) {
        let got = assetd::fuzzing::content_range(text, offset);
        let wanted = valid(text)
            .filter(|&(first, _, _)| first == offset)
            .map(|(_, _, total)| total);
        assert_eq!(got, wanted, "{text:?} at offset {offset}");
    }
    let exact = valid(text).map(|(first, last, _)| (first, last));
    assert_eq!(
        assetd::fuzzing::content_range_exact(text),
        exact,
        "{text:?}"
    );
});
