//! `http(s)://` URLs against the source policy. With no rules, an IP
//! literal is refused exactly when it is loopback, link-local, unspecified
//! or multicast (IPv4-mapped forms too), judged here with std's own
//! classification; a host name waits for its addresses, except that
//! through a proxy `localhost` and `*.localhost` are refused. A rule made from
//! the URL's own host refuses it as a deny rule and admits it as an allow
//! rule, and a deny rule wins over the same allow rule; a URL-prefix rule
//! made from the URL admits it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use assetd::source::{SourcePolicy, SourceRule};
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

fn refused_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_link_local() || ip.octets()[0] == 0 || ip.is_multicast()
}

fn refused_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => refused_v4(ip),
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.segments()[0] & 0xffc0 == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(refused_v4)
        }
    }
}

fn policy(allow: &[&SourceRule], deny: &[&SourceRule]) -> SourcePolicy {
    let list = |rules: &[&SourceRule]| rules.iter().map(|&r| r.clone()).collect();
    SourcePolicy::new(list(allow), list(deny))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let scheme = if kind & 1 == 0 { "http" } else { "https" };
    let Ok(url) = Url::parse(&format!("{scheme}://{rest}")) else {
        return;
    };
    let refused = SourcePolicy::default().check_url(&url).is_err();
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    assert_eq!(refused, ip.is_some_and(refused_by_default), "{url}");
    // Through a proxy, which resolves names itself, the names that always
    // mean this host (RFC 6761) are refused like loopback.
    let local = match url.host() {
        Some(Host::Domain(name)) => {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        _ => false,
    };
    let proxied = SourcePolicy::default().check_proxied(&url).is_err();
    assert_eq!(proxied, local, "{url} through a proxy");
    let Some(host) = url.host() else {
        return;
    };
    let own = match host {
        Host::Domain(name) => name.to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => Ipv6Addr::to_string(&ip),
    };
    if let Ok(rule) = own.parse::<SourceRule>() {
        assert!(
            policy(&[], &[&rule]).check_url(&url).is_err(),
            "deny {rule}: {url}"
        );
        assert!(
            policy(&[&rule], &[]).check_url(&url).is_ok(),
            "allow {rule}: {url}"
        );
        assert!(
            policy(&[&rule], &[&rule]).check_url(&url).is_err(),
            "both {rule}: {url}"
        );
        if let Some(ip) = ip {
            let resolved = |p: SourcePolicy| p.check_resolved("name", ip, false);
            assert!(
                resolved(policy(&[], &[&rule])).is_err(),
                "deny {rule}: {ip}"
            );
            assert!(
                resolved(policy(&[&rule], &[])).is_ok(),
                "allow {rule}: {ip}"
            );
        }
    }
    let dir = &url.path()[..url.path().rfind('/').map_or(0, |i| i + 1)];
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let prefix = format!(
        "{scheme}://{}{port}{dir}",
        url.host_str().unwrap_or_default()
    );
    if let Ok(rule) = prefix.parse::<SourceRule>() {
        let allow = policy(&[&rule], &[]);
        assert!(allow.check_url(&url).is_ok(), "allow {rule}: {url}");
        assert!(
            allow.allowed_by_prefix(&url) == matches!(host, Host::Domain(_)),
            "{rule}: {url}"
        );
        assert!(
            policy(&[&rule], &[&rule]).check_url(&url).is_err(),
            "both {rule}: {url}"
        );
    }
});
