//! What a client sends the daemon: protobuf request messages, decoded and
//! parsed as the handlers parse them (digests, URLs, mirrors, leases, page
//! tokens, URL prefixes). The first byte picks the message.
#![no_main]

use assetd::fetch::Caller;
use assetd::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn fetch(req: proto::FetchRequest, admin: bool) {
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: None,
        admin,
    };
    let copy = req.clone();
    match assetd::fuzzing::fetch_request(req, caller) {
        Ok(want) => {
            assert_eq!(want.digest.to_string(), copy.digest);
            assert_eq!(want.urls.len(), 1 + copy.mirrors.len());
            for (parsed, text) in want
                .urls
                .iter()
                .zip(std::iter::once(&copy.url).chain(&copy.mirrors))
            {
                assert!(text.len() <= assetd::source::MAX_URL_LEN);
                assert_eq!(parsed.url(), &url::Url::parse(text).unwrap());
                let _ = parsed.to_string();
            }
            assert_eq!(want.size, (copy.size != 0).then_some(copy.size));
            assert_eq!(want.max_size, (copy.max_size != 0).then_some(copy.max_size));
            match want.lease {
                None => assert!(copy.lease.is_empty()),
                Some(lease) => {
                    assert_eq!(lease.name, copy.lease);
                    assert!(!lease.name.chars().any(char::is_control));
                }
            }
        }
        Err(e) => {
            // A refusal quotes a bounded part of what it refuses.
            let text = e.to_string();
            assert!(text.len() < 4096, "{} bytes", text.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(req) = proto::FetchRequest::decode(bytes) {
                fetch(req, kind & 0x10 != 0);
            }
        }
        1 => {
            if let Ok(req) = proto::PrewarmRequest::decode(bytes) {
                for asset in req.assets {
                    fetch(asset, kind & 0x10 != 0);
                }
            }
        }
        2 => {
            if let Ok(req) = proto::ListRequest::decode(bytes) {
                let token = assetd::fuzzing::page_token(&req.page_token);
                if let Ok(Some(after)) = token {
                    assert_eq!(after.hex(), req.page_token);
                }
                let prefix = assetd::fuzzing::url_prefix(req.url_prefix.clone());
                if let Ok(prefix) = prefix {
                    assert_eq!(prefix.unwrap_or_default(), req.url_prefix);
                }
            }
        }
        _ => {
            if let Ok(req) = proto::ReleaseLeaseRequest::decode(bytes) {
                if let Ok(name) = assetd::fuzzing::lease(req.lease.clone()) {
                    assert_eq!(name, req.lease);
                    assert!((1..=256).contains(&name.len()));
                }
            }
        }
    }
});
