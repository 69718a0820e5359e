//! Forward proxies from the environment: `HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY` and `NO_PROXY` (or their lowercase forms; the uppercase one
//! wins), read once at start with the same rules reqwest applies
//! (hyper-util's matcher: `NO_PROXY` takes names, which also match their
//! subdomains, IP addresses, CIDRs and `*`).
//!
//! A proxy is the operator's and trusted, like a GCS endpoint: its own name
//! is resolved without the source policy, and the target's name is resolved
//! by the proxy. Cloud metadata endpoints never go through a proxy: see
//! [`metadata_no_proxy`].

use hyper_util::client::proxy::matcher::{Builder, Matcher};
use url::Url;

use super::SourceError;

/// What `NO_PROXY` must cover so that requests to a cloud metadata server
/// are never sent to a proxy: link-local addresses (GCE, AWS, Azure:
/// `169.254.169.254`; a proxy elsewhere could only reach its own), AWS's
/// IPv6 endpoint and GCE's name for it, which Google's credentials use
/// (with and without the final dot, which `NO_PROXY` matching tells apart).
pub const METADATA_NO_PROXY: &str =
    "169.254.0.0/16,fe80::/10,fd00:ec2::254,metadata.google.internal,metadata.google.internal.";

/// URLs of the metadata endpoints [`METADATA_NO_PROXY`] keeps off proxies.
const METADATA_URLS: [&str; 5] = [
    "http://169.254.169.254/",
    "http://metadata.google.internal/",
    "http://metadata.google.internal./",
    "http://[fd00:ec2::254]/",
    "http://[fe80::a9fe:a9fe]/",
];

/// A name no `NO_PROXY` list names in practice: asks whether a proxy is set.
const PROBE_HOST: &str = "assetd-proxy-probe.invalid";

/// The proxies in effect.
pub struct Proxies {
    matcher: Matcher,
    /// The proxies' host names (not IP literals), lowercase.
    names: Vec<String>,
    /// For the start-up log: proxies without credentials, and `NO_PROXY`.
    shown: String,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Default for Proxies {
    /// No proxy.
    fn default() -> Proxies {
        Proxies::from_vars(|_| None).unwrap_or_else(|_| Proxies {
            matcher: Matcher::builder().build(),
            names: Vec::new(),
            shown: "none".to_owned(),
        })
    }
}

impl Proxies {
    /// The proxies the environment names. Errors: a proxy that is not
    /// `http://` or `https://` (SOCKS is not supported).
    pub fn from_env() -> Result<Proxies, SourceError> {
        Proxies::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxies `var` (an environment lookup) names.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Proxies, SourceError> {
        let vars = Vars::read(&var);
        let matcher = vars.matcher();
        let mut names = Vec::new();
        let mut shown = Vec::new();
        for scheme in ["http", "https"] {
            let Some(proxy) = intercept(&matcher, scheme, PROBE_HOST) else {
                continue;
            };
            let uri = proxy.uri();
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(SourceError::InvalidUrl {
                    url: uri.to_string(),
                    reason: format!(
                        "the proxy for {scheme}:// URLs (from HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) must be http:// or https://"
                    ),
                });
            }
            shown.push(format!("{scheme}: {uri}"));
            if let Some(host) = uri.host()
                && !host.starts_with('[')
                && host.parse::<std::net::IpAddr>().is_err()
            {
                names.push(host.to_ascii_lowercase());
            }
        }
        let shown = match shown.is_empty() {
            true => "none".to_owned(),
            false => format!("{}; no_proxy: {}", shown.join(", "), vars.no),
        };
        Ok(Proxies {
            matcher,
            names,
            shown,
        })
    }

    /// Whether any proxy is set.
    pub fn any(&self) -> bool {
        self.shown != "none"
    }

    /// Whether a request for `url` goes through a proxy (reqwest decides
    /// the same from the same variables).
    pub fn intercepts(&self, url: &Url) -> bool {
        match (url.host_str(), url.port()) {
            (Some(host), None) => intercept(&self.matcher, url.scheme(), host).is_some(),
            (Some(host), Some(port)) => {
                intercept(&self.matcher, url.scheme(), &format!("{host}:{port}")).is_some()
            }
            (None, _) => false,
        }
    }

    /// The proxies' host names (lowercase; none for a proxy given by IP
    /// address).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The proxy `matcher` picks for a `scheme` URL on `authority`.
fn intercept(
    matcher: &Matcher,
    scheme: &str,
    authority: &str,
) -> Option<hyper_util::client::proxy::matcher::Intercept> {
    let uri = format!("{scheme}://{authority}/")
        .parse::<http::Uri>()
        .ok()?;
    matcher.intercept(&uri)
}

/// The proxy variables, each the first of its names that is set (as
/// hyper-util reads them).
struct Vars {
    cgi: bool,
    all: String,
    http: String,
    https: String,
    no: String,
}

impl Vars {
    fn read(var: &impl Fn(&str) -> Option<String>) -> Vars {
        let first = |names: [&str; 2]| names.iter().find_map(|n| var(n)).unwrap_or_default();
        Vars {
            cgi: var("REQUEST_METHOD").is_some(),
            all: first(["ALL_PROXY", "all_proxy"]),
            http: first(["HTTP_PROXY", "http_proxy"]),
            https: first(["HTTPS_PROXY", "https_proxy"]),
            no: first(["NO_PROXY", "no_proxy"]),
        }
    }

    fn matcher(&self) -> Matcher {
        if self.cgi {
            // What hyper-util does under CGI, where HTTP_PROXY may come
            // from a request header ("httpoxy").
            return Matcher::builder().build();
        }
        Builder::default()
            .all(self.all.as_str())
            .http(self.http.as_str())
            .https(self.https.as_str())
            .no(self.no.as_str())
            .build()
    }
}

/// When a proxy is set and `NO_PROXY` (or `no_proxy`) does not keep every
/// cloud metadata endpoint off it, the `NO_PROXY` value that does: the
/// current list with [`METADATA_NO_PROXY`] added. `None` when nothing needs
/// to change. `var` is an environment lookup.
///
/// Google's credentials library (and others) build their own HTTP clients,
/// which read these variables; the daemon sets them for the whole process
/// (it starts itself again with them, see the `assetd` binary), so no
/// client in it sends a metadata request, or the token in its answer,
/// through a proxy.
pub fn metadata_no_proxy(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let vars = Vars::read(&var);
    let matcher = vars.matcher();
    let proxied = ["http", "https"]
        .iter()
        .any(|scheme| intercept(&matcher, scheme, PROBE_HOST).is_some());
    if !proxied {
        return None;
    }
    let covered = METADATA_URLS.iter().all(|url| {
        let url = Url::parse(url).ok();
        url.and_then(|u| {
            u.host_str().map(|h| {
                ["http", "https"]
                    .iter()
                    .all(|s| intercept(&matcher, s, h).is_none())
            })
        })
        .unwrap_or(false)
    });
    match (covered, vars.no.trim()) {
        (true, _) => None,
        (false, "") => Some(METADATA_NO_PROXY.to_owned()),
        (false, list) => Some(format!("{list},{METADATA_NO_PROXY}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn proxies_are_read_like_reqwest_reads_them() {
        let p = Proxies::from_vars(env(&[
            ("HTTP_PROXY", "http://user:secret@Proxy.Example:3128"),
            ("https_proxy", "http://10.0.0.1:3129"),
            ("NO_PROXY", "internal.example,10.0.0.0/8"),
        ]))
        .unwrap();
        assert!(p.any());
        assert_eq!(p.names(), ["proxy.example"]);
        assert!(p.intercepts(&url("http://cdn.example.com/x")));
        assert!(p.intercepts(&url("https://cdn.example.com:8443/x")));
        assert!(!p.intercepts(&url("http://a.internal.example/x")));
        assert!(!p.intercepts(&url("http://10.1.2.3:8080/x")));
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("Proxy.Example:3128"), "{shown}");

        let upper_wins = Proxies::from_vars(env(&[
            ("HTTP_PROXY", "http://upper:1"),
            ("http_proxy", "http://lower:1"),
        ]))
        .unwrap();
        assert_eq!(upper_wins.names(), ["upper"]);
        assert!(!upper_wins.intercepts(&url("https://x.example/")));

        let none = Proxies::from_vars(env(&[])).unwrap();
        assert!(!none.any() && !none.intercepts(&url("http://x.example/")));
        let cgi = Proxies::from_vars(env(&[
            ("HTTP_PROXY", "http://p:1"),
            ("REQUEST_METHOD", "GET"),
        ]))
        .unwrap();
        assert!(!cgi.any());
        let socks = Proxies::from_vars(env(&[("ALL_PROXY", "socks5://p:1080")])).unwrap_err();
        assert!(socks.to_string().contains("http:// or https://"), "{socks}");
    }

    #[test]
    fn metadata_endpoints_are_added_to_no_proxy_only_when_needed() {
        assert_eq!(metadata_no_proxy(env(&[])), None, "no proxy, nothing to do");
        assert_eq!(
            metadata_no_proxy(env(&[("HTTPS_PROXY", "http://p:3128")])),
            Some(METADATA_NO_PROXY.to_owned())
        );
        assert_eq!(
            metadata_no_proxy(env(&[
                ("http_proxy", "http://p:3128"),
                ("no_proxy", "localhost, .corp"),
            ])),
            Some(format!("localhost, .corp,{METADATA_NO_PROXY}"))
        );
        // Only 169.254.169.254 covered: the rest is still missing.
        assert!(
            metadata_no_proxy(env(&[
                ("HTTP_PROXY", "http://p:3128"),
                ("NO_PROXY", "169.254.169.254"),
            ]))
            .is_some()
        );
        let extended = format!("x,{METADATA_NO_PROXY}");
        assert_eq!(
            metadata_no_proxy(env(&[
                ("HTTP_PROXY", "http://p:3128"),
                ("NO_PROXY", &extended)
            ])),
            None,
            "once added, it is stable (no second restart)"
        );
        assert_eq!(
            metadata_no_proxy(env(&[("HTTP_PROXY", "http://p:3128"), ("NO_PROXY", "*")])),
            None
        );
        let p = Proxies::from_vars(env(&[
            ("ALL_PROXY", "http://p:3128"),
            ("NO_PROXY", METADATA_NO_PROXY),
        ]))
        .unwrap();
        for metadata in [
            "http://169.254.169.254/computeMetadata/v1/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./x",
            "http://[fd00:ec2::254]/latest/",
            "http://169.254.170.2/v2/credentials",
        ] {
            assert!(!p.intercepts(&url(metadata)), "{metadata}");
        }
        assert!(p.intercepts(&url("https://storage.googleapis.com/")));
    }
}
