//! The source policy: which URLs callers may have the daemon read.
//!
//! The cache is readable by everyone on the node and the daemon reaches
//! what the node reaches, so a caller could otherwise have it read loopback
//! services or the cloud metadata server for them. Refused by default, for
//! every caller: loopback, link-local, unspecified and multicast addresses
//! (IPv4-mapped IPv6 forms included). Rules ([`SourceRule`]) allow or deny
//! by CIDR, host name, URL prefix or `gs://` bucket; a deny rule wins over
//! any allow rule, and an allow rule lifts the default refusal only for
//! what it matches.
//!
//! The checks here are pure: the HTTP source applies them to each URL
//! (before the request and at every redirect hop) and to every address its
//! resolver returns, so the address connected to is the one checked. This
//! module must not resolve or connect. Endpoints the operator configured
//! (a GCS endpoint or emulator, a proxy) are not subject to it; a URL that
//! goes through a proxy is checked at the URL level only (the proxy
//! resolves its name), see [`SourcePolicy::check_proxied`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why the policy refuses a source; its text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    /// What is refused and by which rule.
    pub reason: String,
}

/// A rule that does not parse; names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad source rule {rule:?}: {reason}; want a CIDR (10.0.0.0/8), a host name (mirror.example.com, *.example.com), a URL prefix (https://cdn.example.com/images/) or a bucket (gs://bucket)"
)]
pub struct BadRule {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One `--allow-source` or `--deny-source` rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRule {
    text: String,
    kind: RuleKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleKind {
    /// Addresses in a range (a bare address is a range of one).
    Net(Net),
    /// A host name, exact, or any name under it (`*.example.com`).
    Host { name: String, subdomains: bool },
    /// URLs under a prefix: same scheme, host and port, and a path under
    /// `path` (see [`path_under`]).
    Prefix {
        scheme: String,
        host: Host<String>,
        port: Option<u16>,
        path: String,
    },
    /// A `gs://` bucket.
    Bucket(String),
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    len: u8,
}

/// What is refused by default: range, article and name of the class.
const REFUSED_BY_DEFAULT: [(Net, &str); 8] = [
    (Net::v4(Ipv4Addr::new(127, 0, 0, 0), 8), "a loopback"),
    (Net::v4(Ipv4Addr::new(169, 254, 0, 0), 16), "a link-local"),
    // Linux connects 0.0.0.0/8 to the local host.
    (Net::v4(Ipv4Addr::new(0, 0, 0, 0), 8), "an unspecified"),
    (Net::v4(Ipv4Addr::new(224, 0, 0, 0), 4), "a multicast"),
    (Net::v6(Ipv6Addr::LOCALHOST, 128), "a loopback"),
    (
        Net::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        "a link-local",
    ),
    (Net::v6(Ipv6Addr::UNSPECIFIED, 128), "an unspecified"),
    (
        Net::v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        "a multicast",
    ),
];

impl Net {
    const fn v4(addr: Ipv4Addr, len: u8) -> Net {
        Net {
            addr: IpAddr::V4(addr),
            len,
        }
    }

    const fn v6(addr: Ipv6Addr, len: u8) -> Net {
        Net {
            addr: IpAddr::V6(addr),
            len,
        }
    }

    /// Whether `ip`, or the IPv4 address an IPv4-mapped `ip` stands for,
    /// is in the range.
    fn contains(&self, ip: IpAddr) -> bool {
        self.contains_exactly(ip) || self.contains_exactly(ip.to_canonical())
    }

    fn contains_exactly(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn parse(text: &str) -> Option<Result<Net, String>> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = match addr.parse() {
            Ok(a) => a,
            // Not an address: a host name, unless it says it is a CIDR.
            Err(_) if len.is_none() => return None,
            Err(_) => return Some(Err(format!("{addr:?} is not an IP address"))),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len.map(str::parse::<u8>) {
            None => max,
            Some(Ok(n)) if n <= max => n,
            Some(_) => return Some(Err(format!("the prefix length must be 0 to {max}"))),
        };
        Some(Ok(Net { addr, len }))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for SourceRule {
    type Err = BadRule;

    fn from_str(text: &str) -> Result<SourceRule, BadRule> {
        let bad = |reason: &str| BadRule {
            rule: text.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = text.trim();
        let kind = if trimmed.is_empty() {
            return Err(bad("it is empty"));
        } else if let Some(bucket) = trimmed.strip_prefix("gs://") {
            parse_bucket(bucket).map_err(|r| bad(&r))?
        } else if trimmed.contains("://") {
            parse_prefix(trimmed).map_err(|r| bad(&r))?
        } else if let Some(net) = Net::parse(trimmed) {
            RuleKind::Net(net.map_err(|r| bad(&r))?)
        } else {
            parse_host(trimmed).map_err(|r| bad(&r))?
        };
        Ok(SourceRule {
            text: trimmed.to_owned(),
            kind,
        })
    }
}

fn parse_bucket(bucket: &str) -> Result<RuleKind, String> {
    let bucket = bucket.strip_suffix('/').unwrap_or(bucket);
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if bucket.is_empty() || !bucket.chars().all(valid) {
        return Err("a bucket name is lowercase letters, digits, '-', '_' and '.'".into());
    }
    Ok(RuleKind::Bucket(bucket.to_owned()))
}

fn parse_prefix(text: &str) -> Result<RuleKind, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("a URL prefix is http:// or https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL prefix has no user or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a URL prefix has no query or fragment".into());
    }
    let host = url.host().ok_or("a URL prefix names a host")?.to_owned();
    Ok(RuleKind::Prefix {
        scheme: url.scheme().to_owned(),
        host,
        port: url.port_or_known_default(),
        path: url.path().to_owned(),
    })
}

fn parse_host(text: &str) -> Result<RuleKind, String> {
    let (subdomains, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !name.split('.').all(label_ok) {
        return Err("a host name is letters, digits, '-' and '.' (optionally after \"*.\")".into());
    }
    Ok(RuleKind::Host { name, subdomains })
}

impl fmt::Display for SourceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for SourceRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourceRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SourceRule, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A host name as matched: lowercase, without a trailing dot.
fn normal_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl SourceRule {
    fn matches_name(&self, name: &str) -> bool {
        match &self.kind {
            RuleKind::Host {
                name: rule,
                subdomains,
            } => {
                let name = normal_name(name);
                match subdomains {
                    false => name == *rule,
                    true => name
                        .strip_suffix(rule.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                }
            }
            _ => false,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(&self.kind, RuleKind::Net(net) if net.contains(ip))
    }

    /// Whether the rule covers `url`; `deny` for a deny rule, which takes
    /// a path in either reading (see [`path_under`]).
    fn matches_url(&self, url: &Url, deny: bool) -> bool {
        match (&self.kind, url.host()) {
            (
                RuleKind::Prefix {
                    scheme,
                    host,
                    port,
                    path,
                },
                Some(h),
            ) => {
                url.scheme() == scheme
                    && h.to_owned() == *host
                    && url.port_or_known_default() == *port
                    && path_under(path, url.path(), deny)
            }
            (_, Some(Host::Domain(name))) => self.matches_name(name),
            (_, Some(Host::Ipv4(ip))) => self.matches_ip(IpAddr::V4(ip)),
            (_, Some(Host::Ipv6(ip))) => self.matches_ip(IpAddr::V6(ip)),
            (_, None) => false,
        }
    }

    /// The host of a URL prefix rule, when it is a name.
    fn prefix_name(&self) -> Option<&str> {
        match &self.kind {
            RuleKind::Prefix {
                host: Host::Domain(name),
                ..
            } => Some(name),
            _ => None,
        }
    }
}

/// Whether the URL path `path` (as sent, percent-encoded) is under the
/// prefix path `prefix`. A server may decode `%2f` (or `%5c`) into a
/// separator and then resolve `..`, so a path is read two ways: as sent,
/// and decoded with its dot segments resolved. An allow rule needs both
/// under it (`/assets/..%2fsecret` is not under `/assets/`), a deny rule
/// either; the decoded path is held to the prefix decoded the same way (a
/// prefix such as `/my%20files/` must cover its own URLs). "Under" is by
/// whole segments: `/assets` covers `/assets/x`, not `/assets-private`.
fn path_under(prefix: &str, path: &str, deny: bool) -> bool {
    let under = |prefix: &str, path: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    };
    let read = |path: &str| {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        resolve_dots(&decoded.replace('\\', "/"))
    };
    let (as_sent, decoded) = (under(prefix, path), under(&read(prefix), &read(path)));
    if deny {
        as_sent || decoded
    } else {
        as_sent && decoded
    }
}

/// `path` with its `.` and `..` segments resolved (RFC 3986 5.2.4).
fn resolve_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.len() > 1 {
                    out.pop();
                }
                // A trailing dot segment leaves the path ending in `/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

/// The allow- and deny-lists. Without rules, only the default refusal
/// applies.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    allow: Vec<SourceRule>,
    deny: Vec<SourceRule>,
}

impl SourcePolicy {
    /// A policy from `--allow-source` and `--deny-source` rules.
    pub fn new(allow: Vec<SourceRule>, deny: Vec<SourceRule>) -> SourcePolicy {
        SourcePolicy { allow, deny }
    }

    /// Checks an `http(s)` URL before a request or a redirect hop: deny
    /// rules, then the default refusal for an IP-literal host (a host name
    /// is checked again on each address it resolves to, see
    /// [`SourcePolicy::check_resolved`]). Errors: [`Refused`] naming the rule.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches_url(url, true)) {
            return Err(denied_by(rule));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allow.iter().any(|r| r.matches_url(url, false)) {
            return Ok(());
        }
        refused_by_default(ip).map_or(Ok(()), |class| {
            Err(default_refusal(&format!("{ip} is"), class))
        })
    }

    /// Checks an `http(s)` URL that goes through a proxy, after
    /// [`SourcePolicy::check_url`]: the proxy resolves its host name, so no
    /// address is checked here, but the names that always mean this host
    /// (`localhost`, `*.localhost`, RFC 6761) are held to the loopback
    /// refusal, which an allow rule for the name, its URL prefix or
    /// `127.0.0.1` lifts: a proxy on the node would otherwise reach its
    /// loopback services for any caller.
    pub fn check_proxied(&self, url: &Url) -> Result<(), Refused> {
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        let name = normal_name(name);
        if name != "localhost" && !name.ends_with(".localhost") {
            return Ok(());
        }
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(lo)) {
            return Err(denied_by(rule));
        }
        if self
            .allow
            .iter()
            .any(|r| r.matches_url(url, false) || r.matches_ip(lo))
        {
            return Ok(());
        }
        refused_by_default(lo).map_or(Ok(()), |class| {
            Err(default_refusal(&format!("{name} is"), class))
        })
    }

    /// Whether `url` is under an allow rule's URL prefix, so that its host
    /// name's addresses are allowed (see [`SourcePolicy::check_resolved`]).
    pub fn allowed_by_prefix(&self, url: &Url) -> bool {
        self.allow
            .iter()
            .any(|r| r.prefix_name().is_some() && r.matches_url(url, false))
    }

    /// Whether any allow rule is a URL prefix on a host name.
    pub fn has_name_prefixes(&self) -> bool {
        self.allow.iter().any(|r| r.prefix_name().is_some())
    }

    /// Checks one address `name` resolved to: deny rules, then the default
    /// refusal, lifted by an allow rule for the address or the name, or, when
    /// `by_prefix` (the URL is under an allow prefix), for that prefix's host.
    pub fn check_resolved(&self, name: &str, ip: IpAddr, by_prefix: bool) -> Result<(), Refused> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(Refused {
                reason: format!("{name} resolves to {ip}, {}", denied_by(rule)),
            });
        }
        let Some(class) = refused_by_default(ip) else {
            return Ok(());
        };
        let lifted = self.allow.iter().any(|r| {
            r.matches_ip(ip)
                || r.matches_name(name)
                || (by_prefix && r.prefix_name() == Some(&normal_name(name)))
        });
        match lifted {
            true => Ok(()),
            false => Err(default_refusal(&format!("{name} resolves to {ip},"), class)),
        }
    }

    /// Whether an allow rule names a bucket (then only those are read).
    pub fn names_buckets(&self) -> bool {
        self.allow
            .iter()
            .any(|r| matches!(r.kind, RuleKind::Bucket(_)))
    }

    /// Checks a `gs://` bucket: deny rules, then, when any allow rule names
    /// a bucket, that it is one of them.
    pub fn check_bucket(&self, bucket: &str) -> Result<(), Refused> {
        let is = |r: &&SourceRule| matches!(&r.kind, RuleKind::Bucket(b) if b == bucket);
        if let Some(rule) = self.deny.iter().find(is) {
            return Err(denied_by(rule));
        }
        let allowed: Vec<&SourceRule> = self
            .allow
            .iter()
            .filter(|r| matches!(r.kind, RuleKind::Bucket(_)))
            .collect();
        if allowed.is_empty() || allowed.iter().any(is) {
            return Ok(());
        }
        let list: Vec<String> = allowed.iter().map(|r| r.to_string()).collect();
        Err(Refused {
            reason: format!(
                "bucket {bucket:?} is not among the allowed buckets (--allow-source {})",
                list.join(", ")
            ),
        })
    }

    /// The rules, for the start-up log.
    pub fn describe(&self) -> String {
        let list = |rules: &[SourceRule]| {
            let texts: Vec<String> = rules.iter().map(ToString::to_string).collect();
            texts.join(" ")
        };
        format!("allow [{}] deny [{}]", list(&self.allow), list(&self.deny))
    }
}

/// The class `ip` belongs to, when refused by default.
fn refused_by_default(ip: IpAddr) -> Option<(Net, &'static str)> {
    REFUSED_BY_DEFAULT
        .iter()
        .find(|(net, _)| net.contains(ip))
        .copied()
}

/// `subject` is "ADDRESS is" or "NAME resolves to ADDRESS,".
fn default_refusal(subject: &str, (net, class): (Net, &str)) -> Refused {
    Refused {
        reason: format!(
            "{subject} {class} address, refused by default; allow it with --allow-source {net}"
        ),
    }
}

fn denied_by(rule: &SourceRule) -> Refused {
    Refused {
        reason: format!("denied by --deny-source {rule}"),
    }
}

/// The policy's refusal in `err`'s chain of causes, if that is why it
/// failed (the resolver's and the redirect policy's errors come wrapped).
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Vec<SourceRule> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> SourcePolicy {
        SourcePolicy::new(rules(allow), rules(deny))
    }

    fn check(p: &SourcePolicy, url: &str) -> Result<(), String> {
        p.check_url(&Url::parse(url).unwrap()).map_err(|r| r.reason)
    }

    #[test]
    fn rules_parse_into_their_kinds() {
        let kind = |t: &str| t.parse::<SourceRule>().unwrap().kind;
        assert_eq!(
            kind("10.0.0.0/8"),
            RuleKind::Net(Net::v4(Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(
            kind("::1/128"),
            RuleKind::Net(Net::v6(Ipv6Addr::LOCALHOST, 128))
        );
        assert_eq!(
            kind("127.0.0.1"),
            RuleKind::Net(Net::v4(Ipv4Addr::LOCALHOST, 32))
        );
        assert_eq!(
            kind("Mirror.Example.com"),
            RuleKind::Host {
                name: "mirror.example.com".into(),
                subdomains: false
            }
        );
        assert_eq!(
            kind("*.example.com"),
            RuleKind::Host {
                name: "example.com".into(),
                subdomains: true
            }
        );
        assert_eq!(kind("gs://my-bucket"), RuleKind::Bucket("my-bucket".into()));
        assert!(matches!(
            kind("https://CDN.example.com:443/images/"),
            RuleKind::Prefix { port: Some(443), ref path, .. } if path == "/images/"
        ));
    }

    #[test]
    fn bad_rules_are_refused_naming_them() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/129",
            "gs://",
            "gs://Bad Bucket",
            "ftp://host/",
            "https://u:p@host/",
            "https://host/?q=1",
            "bad host",
            "*.",
            "a..b",
        ] {
            let err = bad.parse::<SourceRule>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn default_refuses_loopback_link_local_unspecified_and_multicast() {
        let p = SourcePolicy::default();
        for (url, class, range) in [
            ("http://127.0.0.1:8080/x", "a loopback", "127.0.0.0/8"),
            ("http://127.9.9.9/x", "a loopback", "127.0.0.0/8"),
            ("http://[::1]/x", "a loopback", "::1/128"),
            ("http://[::ffff:127.0.0.1]/x", "a loopback", "127.0.0.0/8"),
            (
                "http://169.254.169.254/computeMetadata/v1/",
                "a link-local",
                "169.254.0.0/16",
            ),
            ("http://[fe80::1]/x", "a link-local", "fe80::/10"),
            ("http://0.0.0.0/x", "an unspecified", "0.0.0.0/8"),
            ("http://[::]/x", "an unspecified", "::/128"),
            ("http://224.0.0.1/x", "a multicast", "224.0.0.0/4"),
            ("http://[ff02::1]/x", "a multicast", "ff00::/8"),
        ] {
            let reason = check(&p, url).unwrap_err();
            let want = format!(
                "{class} address, refused by default; allow it with --allow-source {range}"
            );
            assert!(reason.ends_with(&want), "{url}: {reason}");
        }
        assert_eq!(
            check(&p, "http://127.0.0.1/").unwrap_err(),
            "127.0.0.1 is a loopback address, refused by default; allow it with --allow-source 127.0.0.0/8"
        );
        for url in [
            "http://10.1.2.3/x",
            "https://[2001:db8::1]/",
            "https://example.com/",
        ] {
            assert_eq!(check(&p, url), Ok(()), "{url}");
        }
    }

    #[test]
    fn allow_lifts_only_what_it_matches_and_deny_wins() {
        let p = policy(&["127.0.0.0/8"], &[]);
        assert_eq!(check(&p, "http://127.0.0.1:9/x"), Ok(()));
        assert_eq!(check(&p, "http://[::ffff:127.0.0.1]/x"), Ok(()));
        assert!(check(&p, "http://[::1]/x").is_err());
        assert!(check(&p, "http://169.254.169.254/").is_err());

        let p = policy(&["http://127.0.0.1:8000/ok/"], &[]);
        assert_eq!(check(&p, "http://127.0.0.1:8000/ok/a"), Ok(()));
        assert!(check(&p, "http://127.0.0.1:8001/ok/a").is_err());
        assert!(check(&p, "http://127.0.0.1:8000/other").is_err());
        assert!(check(&p, "https://127.0.0.1:8000/ok/a").is_err());

        let p = policy(&["127.0.0.0/8"], &["127.0.0.1/32"]);
        assert_eq!(
            check(&p, "http://127.0.0.1/").unwrap_err(),
            "denied by --deny-source 127.0.0.1/32"
        );
        assert_eq!(check(&p, "http://127.0.0.2/"), Ok(()));

        let p = policy(
            &[],
            &["*.example.com", "10.0.0.0/8", "https://cdn.test/private/"],
        );
        assert!(
            check(&p, "https://a.b.EXAMPLE.com/")
                .unwrap_err()
                .contains("*.example.com")
        );
        assert_eq!(check(&p, "https://example.com/"), Ok(()));
        assert_eq!(check(&p, "https://notexample.com/"), Ok(()));
        assert!(
            check(&p, "http://10.2.3.4/")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(check(&p, "https://u@cdn.test/private/x").is_err());
        assert_eq!(check(&p, "https://cdn.test/public/x"), Ok(()));
    }

    #[test]
    fn resolved_addresses_are_checked_against_rules_and_name() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let p = SourcePolicy::default();
        assert_eq!(
            p.check_resolved("localhost", lo, false).unwrap_err().reason,
            "localhost resolves to 127.0.0.1, a loopback address, refused by default; allow it with --allow-source 127.0.0.0/8"
        );
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(p.check_resolved("evil.test", mapped, false).is_err());
        assert!(
            p.check_resolved("a.test", "93.184.216.34".parse().unwrap(), false)
                .is_ok()
        );

        let p = policy(&["localhost"], &[]);
        assert!(p.check_resolved("LOCALHOST.", lo, false).is_ok());
        let p = policy(&["http://localhost:8000/"], &[]);
        assert!(p.check_resolved("localhost", lo, false).is_err());
        assert!(p.check_resolved("localhost", lo, true).is_ok());
        assert!(p.has_name_prefixes());
        assert!(p.allowed_by_prefix(&Url::parse("http://localhost:8000/x").unwrap()));
        assert!(!p.allowed_by_prefix(&Url::parse("http://localhost:8001/x").unwrap()));
        let p = policy(&["localhost"], &["127.0.0.0/8"]);
        let reason = p.check_resolved("localhost", lo, false).unwrap_err().reason;
        assert!(
            reason.ends_with("denied by --deny-source 127.0.0.0/8"),
            "{reason}"
        );
    }

    #[test]
    fn through_a_proxy_localhost_names_are_loopback() {
        let p = SourcePolicy::default();
        for url in [
            "http://localhost:22/x",
            "https://LOCALHOST./x",
            "http://a.b.localhost/x",
        ] {
            let reason = p
                .check_proxied(&Url::parse(url).unwrap())
                .unwrap_err()
                .reason;
            assert!(
                reason.ends_with(
                    "is a loopback address, refused by default; allow it with --allow-source 127.0.0.0/8"
                ),
                "{url}: {reason}"
            );
        }
        let ok = |p: &SourcePolicy, url: &str| p.check_proxied(&Url::parse(url).unwrap());
        assert!(ok(&p, "http://notlocalhost/x").is_ok());
        assert!(ok(&p, "http://example.com/x").is_ok());
        for allow in ["127.0.0.0/8", "localhost", "http://localhost:8080/ok/"] {
            let p = policy(&[allow], &[]);
            assert!(ok(&p, "http://localhost:8080/ok/a").is_ok(), "{allow}");
        }
        assert!(
            ok(
                &policy(&["http://localhost:8080/ok/"], &[]),
                "http://localhost:8080/no"
            )
            .is_err()
        );
        let p = policy(&["localhost"], &["127.0.0.1"]);
        assert!(
            ok(&p, "http://localhost/")
                .unwrap_err()
                .reason
                .contains("--deny-source")
        );
    }

    #[test]
    fn buckets_are_denied_or_allow_listed() {
        assert!(SourcePolicy::default().check_bucket("any").is_ok());
        let p = policy(&["gs://public"], &["gs://secret"]);
        assert_eq!(
            p.check_bucket("secret").unwrap_err().reason,
            "denied by --deny-source gs://secret"
        );
        assert!(p.check_bucket("public").is_ok());
        assert!(
            p.check_bucket("other")
                .unwrap_err()
                .reason
                .contains("gs://public")
        );
        assert!(policy(&[], &["gs://secret"]).check_bucket("other").is_ok());
    }

    #[test]
    fn refusal_is_found_in_a_chain_of_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn std::error::Error + Send + Sync>);
        let err = Outer(Box::new(Refused {
            reason: "no".into(),
        }));
        assert_eq!(refusal(&err).map(|r| r.reason.as_str()), Some("no"));
        assert!(refusal(&std::io::Error::other("x")).is_none());
    }

    #[test]
    fn a_prefix_covers_whole_segments_read_both_ways() {
        let rule = |text: &str| -> SourceRule { text.parse().unwrap() };
        let p = SourcePolicy::new(
            vec![
                rule("http://127.0.0.1:8080/assets/"),
                rule("http://127.0.0.1:8080/pub"),
            ],
            vec![rule("http://127.0.0.1:8080/assets/private/")],
        );
        let check = |u: &str| p.check_url(&Url::parse(u).unwrap()).map_err(|e| e.reason);
        assert!(check("http://127.0.0.1:8080/assets/a.img").is_ok());
        assert!(check("http://127.0.0.1:8080/pub/a.img").is_ok());
        assert!(check("http://127.0.0.1:8080/pub").is_ok());
        for escape in [
            "http://127.0.0.1:8080/assets/..%2fsecret.txt",
            "http://127.0.0.1:8080/assets/..%2Fsecret.txt",
            "http://127.0.0.1:8080/assets/x/..%2f..%2fsecret.txt",
            "http://127.0.0.1:8080/assets/..%5csecret.txt",
            "http://127.0.0.1:8080/assets/%2e%2e%2fsecret.txt",
            "http://127.0.0.1:8080/pub-private/a.img",
            "http://127.0.0.1:8080/pubx",
        ] {
            let err = check(escape).expect_err(escape);
            assert!(err.contains("loopback"), "{escape}: {err}");
        }
        // A deny prefix catches the path either way it may be read.
        for denied in [
            "http://127.0.0.1:8080/assets/private/k",
            "http://127.0.0.1:8080/assets/x/..%2fprivate/k",
            "http://127.0.0.1:8080/assets/PRIVATE/../private/k",
        ] {
            let err = check(denied).expect_err(denied);
            assert!(err.contains("--deny-source"), "{denied}: {err}");
        }
        // An encoded separator that stays under the prefix is fine.
        assert!(check("http://127.0.0.1:8080/assets/dir%2Fa.img").is_ok());
    }

    #[test]
    fn a_prefix_with_encoded_characters_covers_its_own_urls() {
        // Found by the fuzz target `url_http`: the decoded path was held to
        // the prefix as written, so `/my%20files/` allowed nothing.
        let rule: SourceRule = "http://127.0.0.1:8080/my%20files/".parse().unwrap();
        let p = SourcePolicy::new(vec![rule.clone()], Vec::new());
        let check = |u: &str| p.check_url(&Url::parse(u).unwrap()).map_err(|e| e.reason);
        assert!(check("http://127.0.0.1:8080/my%20files/a.img").is_ok());
        assert!(check("http://127.0.0.1:8080/my%20files/..%2fsecret").is_err());
        assert!(check("http://127.0.0.1:8080/my%20filesx/a.img").is_err());
        let deny = SourcePolicy::new(Vec::new(), vec![rule]);
        let denied = |u: &str| deny.check_url(&Url::parse(u).unwrap()).is_err();
        assert!(denied("http://127.0.0.1:8080/my%20files/a.img"));
        assert!(denied("http://127.0.0.1:8080/my%20files%2Fa.img"));
    }

    #[test]
    fn dot_segments_resolve_as_a_server_would() {
        for (path, resolved) in [
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//b", "/a//b"),
        ] {
            assert_eq!(resolve_dots(path), resolved, "{path}");
        }
    }
}
