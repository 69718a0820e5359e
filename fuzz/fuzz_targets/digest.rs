//! `sha256:<hex>` digests and the bare hex of `List` page tokens: an
//! accepted digest prints back as exactly the text it came from (one name
//! per asset), and a refusal quotes the input.
#![no_main]

use assetd::digest::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Digest>() {
        Ok(digest) => {
            assert_eq!(digest.to_string(), text);
            assert_eq!(format!("{digest:?}"), text);
            assert_eq!(Digest::from_hex(&digest.hex()), Ok(digest));
            assert_eq!(Digest::from_bytes(digest.bytes()), digest);
        }
        Err(e) => {
            assert_eq!(e.value, text);
            let _ = e.to_string();
        }
    }
    match Digest::from_hex(text) {
        Ok(digest) => {
            assert_eq!(digest.hex(), text);
            assert_eq!(assetd::fuzzing::page_token(text).ok(), Some(Some(digest)));
        }
        Err(e) => assert_eq!(e.value, text),
    }
});
