//! `--allow-source` / `--deny-source` rules (flags or the config file):
//! an accepted rule prints back as its trimmed text and parses again to
//! the same rule; against any URL a deny rule wins over the same allow
//! rule. Input: the rule, then optionally a newline and a URL.
#![no_main]

use assetd::source::{SourcePolicy, SourceRule};
use libfuzzer_sys::fuzz_target;
use url::Url;

const URLS: &[&str] = &[
    "http://127.0.0.1/x",
    "https://[::1]:8443/assets/a",
    "http://10.1.2.3/",
    "https://mirror.example.com/images/vmlinux",
    "https://cdn.example.com:443/images/",
    "http://localhost:8080/x",
    "https://a.b.localhost./y",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule_text, url_text) = text.split_once('\n').unwrap_or((text, ""));
    let rule = match rule_text.parse::<SourceRule>() {
        Ok(rule) => rule,
        Err(e) => {
            assert_eq!(e.rule, rule_text);
            return;
        }
    };
    assert_eq!(rule.to_string(), rule_text.trim());
    assert_eq!(
        rule.to_string().parse::<SourceRule>().ok(),
        Some(rule.clone())
    );
    let deny = SourcePolicy::new(Vec::new(), vec![rule.clone()]);
    let both = SourcePolicy::new(vec![rule.clone()], vec![rule.clone()]);
    let allow = SourcePolicy::new(vec![rule.clone()], Vec::new());
    let _ = (deny.describe(), allow.has_name_prefixes());
    let given = Url::parse(url_text).ok();
    let fixed = URLS.iter().map(|u| Url::parse(u).unwrap());
    for url in given.into_iter().chain(fixed) {
        assert_eq!(
            deny.check_url(&url),
            both.check_url(&url),
            "{rule} on {url}"
        );
        // Through a proxy, `check_proxied` follows `check_url`.
        let check = |p: &SourcePolicy| p.check_url(&url).and_then(|()| p.check_proxied(&url));
        assert_eq!(check(&deny), check(&both), "{rule} on {url}, proxied");
        let _ = allow.check_url(&url);
        let _ = allow.allowed_by_prefix(&url);
        if let Some(host) = url.host_str() {
            let _ = allow.check_bucket(host);
            let _ = deny.check_bucket(host);
        }
    }
});
