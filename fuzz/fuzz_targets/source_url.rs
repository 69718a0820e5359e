//! Source URLs at the edge: `SourceUrl::parse` and the redacted form that
//! logs, messages and metadata show. The redacted form must not depend on
//! the secrets a URL may carry (user name, password, query values, a
//! fragment), and what messages quote stays bounded.
#![no_main]

use assetd::source::{QUOTED_CHARS, SourceUrl, bounded};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// `url` with other secrets in the same places, or `None` if it has none:
/// user name, password, each query value (a part without `=` is all
/// value), and the fragment but for `gs://` (where it is a generation).
fn other_secrets(url: &Url) -> Option<Url> {
    let mut other = url.clone();
    let mut changed = false;
    if !url.username().is_empty() {
        changed |= other.set_username("someone-else").is_ok();
    }
    if url.password().is_some() {
        changed |= other.set_password(Some("another-password")).is_ok();
    }
    if let Some(query) = url.query() {
        let parts: Vec<String> = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((key, _)) => format!("{key}=other-value"),
                None => "other-value".to_owned(),
            })
            .collect();
        other.set_query(Some(&parts.join("&")));
        changed = true;
    }
    if url.fragment().is_some() && url.scheme() != "gs" {
        other.set_fragment(Some("other-fragment"));
        changed = true;
    }
    changed.then_some(other)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let quoted = bounded(text);
    assert!(quoted.chars().count() <= QUOTED_CHARS + 1);
    match SourceUrl::parse(text) {
        Ok(url) => {
            let shown = url.to_string();
            assert!(shown.chars().count() <= QUOTED_CHARS + 1);
            assert!(url.redacted().starts_with(url.url().scheme()));
            if let Some(other) = other_secrets(url.url()) {
                assert_eq!(
                    SourceUrl::from(other.clone()).redacted(),
                    url.redacted(),
                    "secrets show through: {text:?} vs {other}"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() < 2048, "{} bytes", message.len());
        }
    }
});
