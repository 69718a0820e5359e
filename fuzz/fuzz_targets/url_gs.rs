//! `gs://BUCKET/OBJECT[#GENERATION]` as the GCS source parses it, and the
//! JSON API URL it then reads: always the endpoint's
//! `/storage/v1/b/BUCKET/o/OBJECT`, the bucket and the whole object name
//! one path segment each, so no name can reach another API path.
#![no_main]

use std::sync::OnceLock;

use assetd::source::GcsSource;
use libfuzzer_sys::fuzz_target;
use url::Url;

/// `s` percent-decoded (written out here rather than trusting the
/// encoder's own crate).
fn decode(s: &str) -> Vec<u8> {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        let pair = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        );
        match (b[i], pair) {
            (b'%', (Some(h), Some(l))) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn source() -> &'static GcsSource {
    static SOURCE: OnceLock<GcsSource> = OnceLock::new();
    SOURCE.get_or_init(|| GcsSource::new(Some("127.0.0.1:9"), true).expect("an emulator source"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = Url::parse(&format!("gs://{text}")) else {
        return;
    };
    let object = match assetd::fuzzing::gcs_object(source(), &url) {
        Ok(object) => object,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let bucket = &object.bucket;
    assert!((3..=222).contains(&bucket.len()), "{bucket:?}");
    assert!(
        bucket
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
    );
    assert_eq!(url.host_str(), Some(bucket.as_str()));
    assert!(!object.name.is_empty());
    assert_ne!(object.generation, Some(0));
    let api = &object.metadata_url;
    assert_eq!(
        (api.scheme(), api.host_str(), api.port()),
        ("http", Some("127.0.0.1"), Some(9)),
        "{api}"
    );
    let segments: Vec<&str> = api.path_segments().expect("a path").collect();
    assert_eq!(segments.len(), 6, "{url} -> {api}");
    assert_eq!(&segments[..3], ["storage", "v1", "b"], "{api}");
    assert_eq!(segments[4], "o", "{api}");
    assert_eq!(decode(segments[3]), bucket.as_bytes(), "{api}");
    assert_eq!(
        decode(segments[5]),
        object.name.as_bytes(),
        "{url} -> {api}"
    );
    let query: Vec<(String, String)> = api.query_pairs().into_owned().collect();
    let generation = object
        .generation
        .map(|g| ("generation".to_owned(), g.to_string()));
    assert_eq!(query, generation.into_iter().collect::<Vec<_>>(), "{api}");
});
