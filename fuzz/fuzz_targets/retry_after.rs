//! `Retry-After` as the HTTP source reads it: only delay-seconds
//! (`1*DIGIT`, RFC 9110 10.2.3) are taken, as that many seconds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A header value reaches the parser only as visible ASCII (`to_str`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let trimmed = text.trim();
    let wanted = match !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        true => trimmed.parse::<u64>().ok(),
        false => None,
    };
    let got = assetd::fuzzing::retry_after(text);
    assert_eq!(got.map(|d| d.as_secs()), wanted, "{text:?}");
    assert!(got.is_none_or(|d| d.subsec_nanos() == 0));
});
