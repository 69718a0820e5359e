//! Prewarm manifests, TOML or JSON, as `assetctl prewarm` reads them (the
//! binary's own module, included by path), and then each asset as the
//! daemon parses the `Prewarm` request they become.
#![no_main]

#[path = "../../src/bin/assetctl/manifest.rs"]
#[allow(dead_code)]
mod manifest;

use assetd::fetch::Caller;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(parsed) = manifest::Manifest::parse(text, kind & 1 == 1) else {
        return;
    };
    let request = parsed.request();
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: Some(1),
        admin: false,
    };
    for asset in request.assets {
        let (url, mirrors) = (asset.url.clone(), asset.mirrors.clone());
        if let Ok(want) = assetd::fuzzing::fetch_request(asset, caller) {
            assert_eq!(want.urls.len(), 1 + mirrors.len());
            for (parsed, text) in want.urls.iter().zip(std::iter::once(&url).chain(&mirrors)) {
                assert_eq!(parsed.url(), &url::Url::parse(text).unwrap());
            }
        }
    }
});
