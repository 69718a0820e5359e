//! Requests parsed once at the edge into typed values, with the caller's
//! identity from the socket's peer credentials and the role it has.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Request;

use super::RequestError;
use crate::digest::Digest;
use crate::fetch::{Caller, Lease, Want};
use crate::proto;
use crate::source::{MAX_URL_LEN, SourceUrl, bounded};

/// The longest lease name, in bytes.
const MAX_LEASE_LEN: usize = 256;
/// URLs whose parse is remembered: a node's hits name the same few URLs
/// again and again, and parsing one (host and all) was the largest cost of a
/// hit. Cleared when full, so callers naming ever new URLs cost a parse each
/// and nothing more.
const URL_CACHE_ENTRIES: usize = 1024;
/// Longer URLs are parsed every time rather than kept.
const URL_CACHE_MAX_LEN: usize = 2048;
/// How long a group-database answer (is this uid in the admin group?) is
/// kept: a lookup may go to the network (LDAP, SSSD) and blocks, too slow
/// to repeat on every cache hit; a change of membership counts within this.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(30);
/// Uids whose membership is remembered; cleared when full, so callers with
/// ever new uids cost a lookup each and nothing more.
const MEMBERSHIP_ENTRIES: usize = 4096;
/// Mirrors one request may give: plenty for real fallbacks, few enough that
/// one request cannot make a transfer crawl through thousands of URLs.
const MAX_MIRRORS: usize = 16;

/// Parsed URLs by their text; see [`URL_CACHE_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct Urls {
    parsed: Mutex<HashMap<String, SourceUrl>>,
}

impl Urls {
    /// `text` parsed, from the cache when it was parsed before.
    fn parse(&self, text: &str) -> Result<SourceUrl, RequestError> {
        let lock = || self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(url) = lock().get(text) {
            return Ok(url.clone());
        }
        let url = SourceUrl::parse(text).map_err(|e| RequestError::Invalid(e.to_string()))?;
        if text.len() <= URL_CACHE_MAX_LEN {
            let mut parsed = lock();
            if parsed.len() >= URL_CACHE_ENTRIES {
                parsed.clear();
            }
            parsed.insert(text.to_owned(), url.clone());
        }
        Ok(url)
    }
}

/// Who is an admin: root, the daemon's user, and the members of the admin
/// group, if there is one; group-database answers remembered for
/// [`MEMBERSHIP_TTL`].
#[derive(Debug, Default)]
pub(super) struct Roles {
    admin_gid: Option<u32>,
    admin_uids: Vec<u32>,
    known: Mutex<HashMap<(u32, u32), (bool, Instant)>>,
}

impl Roles {
    /// Roles with `admin_uids` and the members of `admin_gid` as admins
    /// too.
    pub(super) fn new(admin_gid: Option<u32>, admin_uids: Vec<u32>) -> Roles {
        Roles {
            admin_gid,
            admin_uids,
            known: Mutex::default(),
        }
    }

    /// The caller of `request`, from the socket's peer credentials, with
    /// its role.
    pub(super) async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, RequestError> {
        let cred = request
            .extensions()
            .get::<super::authority::ConnInfo>()
            .and_then(|info| info.uds.peer_cred)
            .ok_or_else(|| {
                RequestError::Denied(
                    "the caller's credentials are unknown (not a unix socket)".into(),
                )
            })?;
        let (uid, gid) = (cred.uid(), cred.gid());
        Ok(Caller {
            uid,
            gid,
            pid: cred.pid(),
            admin: self.is_admin(uid, gid).await,
        })
    }

    /// Whether `uid` (primary group `gid`) is an admin: root, the daemon's
    /// user, or a member of the admin group: by the primary gid the peer
    /// credentials carry, or as the group database lists the user's groups
    /// (peer credentials carry no supplementary groups).
    async fn is_admin(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() || self.admin_uids.contains(&uid) {
            return true;
        }
        let Some(admins) = self.admin_gid else {
            return false;
        };
        gid == admins || self.listed_in_cached(uid, admins).await
    }

    /// [`listed_in`], remembered for [`MEMBERSHIP_TTL`] by (uid, group).
    async fn listed_in_cached(&self, uid: u32, gid: u32) -> bool {
        let lock = || self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(&(listed, at)) = lock().get(&(uid, gid))
            && now.duration_since(at) < MEMBERSHIP_TTL
        {
            return listed;
        }
        // The group database may be NSS over the network: off the runtime.
        let listed = tokio::task::spawn_blocking(move || listed_in(uid, gid))
            .await
            .unwrap_or(false);
        let mut known = lock();
        if known.len() >= MEMBERSHIP_ENTRIES {
            known.clear();
        }
        known.insert((uid, gid), (listed, now));
        listed
    }

    /// Changing the cache is for admins: root, the daemon's own user, or the
    /// admin group's members. Every user with access to the socket may fetch
    /// and look.
    pub(super) fn require_admin(&self, caller: &Caller) -> Result<(), RequestError> {
        self.require_admin_to("change or verify the cache", caller)
    }

    /// [`Roles::require_admin`], the refusal saying that only admins may
    /// `what`.
    pub(super) fn require_admin_to(&self, what: &str, caller: &Caller) -> Result<(), RequestError> {
        if caller.admin {
            return Ok(());
        }
        let me = nix::unistd::geteuid().as_raw();
        let uids = if self.admin_uids.is_empty() {
            String::new()
        } else {
            let listed: Vec<_> = self.admin_uids.iter().map(u32::to_string).collect();
            format!(", the admin uids {}", listed.join(", "))
        };
        let group = self
            .admin_gid
            .map(|gid| format!(", or members of the admin group (gid {gid}),"))
            .unwrap_or_default();
        Err(RequestError::Denied(format!(
            "only uid 0 or the daemon's uid {me}{uids}{group} may {what}; the caller is uid {}",
            caller.uid
        )))
    }
}

/// Whether the group database puts `uid`'s user in group `gid`. A user or
/// group that cannot be looked up is no member.
fn listed_in(uid: u32, gid: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let listed = |group: Group| group.mem.contains(&user.name);
    if Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .is_some_and(listed)
    {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name.as_str()) else {
        return false;
    };
    getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

/// A span naming the call and the caller, for the log lines the call makes.
pub(super) fn span(call: &'static str, caller: &Caller) -> tracing::Span {
    tracing::info_span!("rpc", call, uid = caller.uid, pid = caller.pid)
}

/// A `sha256:<hex>` digest.
pub(crate) fn digest(value: &str) -> Result<Digest, RequestError> {
    value
        .parse()
        .map_err(|e: crate::digest::DigestError| RequestError::Invalid(e.to_string()))
}

/// An optional digest: empty for none.
pub(crate) fn optional_digest(value: &str) -> Result<Option<Digest>, RequestError> {
    match value {
        "" => Ok(None),
        d => digest(d).map(Some),
    }
}

/// A `List` page token: the last digest's hex, or empty for the first page.
pub(crate) fn page_token(token: &str) -> Result<Option<Digest>, RequestError> {
    match token {
        "" => Ok(None),
        token => Digest::from_hex(token).map(Some).map_err(|e| {
            RequestError::Invalid(format!("malformed page_token {token:?}: {}", e.reason))
        }),
    }
}

/// A fetch request from `caller`.
pub(crate) fn want(
    req: proto::FetchRequest,
    caller: Caller,
    parsed: &Urls,
) -> Result<Want, RequestError> {
    // Before any other work: nothing below should see a megabyte of URL.
    if req.mirrors.len() > MAX_MIRRORS {
        return Err(RequestError::Invalid(format!(
            "{} mirrors given; at most {MAX_MIRRORS} are accepted",
            req.mirrors.len()
        )));
    }
    url_len("url", &req.url)?;
    for mirror in &req.mirrors {
        url_len("mirror", mirror)?;
    }
    let lease = match req.lease.as_str() {
        "" if req.lease_ttl_seconds > 0 => {
            return Err(RequestError::Invalid(
                "lease_ttl_seconds without a lease".into(),
            ));
        }
        "" => None,
        _ => Some(Lease {
            name: lease(req.lease)?,
            ttl: nonzero(req.lease_ttl_seconds).map(Duration::from_secs),
        }),
    };
    let digest = digest(&req.digest)?;
    let urls = std::iter::once(&req.url)
        .chain(&req.mirrors)
        .map(|u| parsed.parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Want {
        digest,
        urls,
        size: nonzero(req.size),
        max_size: nonzero(req.max_size),
        connections: nonzero(u64::from(req.connections)).map(|n| n as usize),
        lease,
        caller,
    })
}

/// `List`'s `url_prefix` filter: `None` when empty; longer than
/// [`MAX_URL_LEN`] is refused, as no URL kept can start with it.
pub(crate) fn url_prefix(prefix: String) -> Result<Option<String>, RequestError> {
    url_len("url_prefix", &prefix)?;
    Ok((!prefix.is_empty()).then_some(prefix))
}

/// Refuses a URL (`what`: "url" or "mirror") longer than [`MAX_URL_LEN`].
fn url_len(what: &str, url: &str) -> Result<(), RequestError> {
    if url.len() <= MAX_URL_LEN {
        return Ok(());
    }
    Err(RequestError::Invalid(format!(
        "{what} of {} bytes is longer than the bound of {MAX_URL_LEN} bytes: {:?}",
        url.len(),
        bounded(url)
    )))
}

/// A lease name: 1 to 256 printable ASCII characters, no spaces (what
/// sandbox and job ids are made of). Anything else is refused naming its
/// code point: Unicode has too many characters that render as nothing or as
/// another (bidi controls, fillers, combining marks, spaces) for a list of
/// them to be safe in `ls`.
pub(crate) fn lease(name: String) -> Result<String, RequestError> {
    let want = format!("want 1 to {MAX_LEASE_LEN} printable ASCII characters, no spaces");
    if name.is_empty() || name.len() > MAX_LEASE_LEN {
        return Err(RequestError::Invalid(format!(
            "malformed lease of {} bytes {:?}: {want}",
            name.len(),
            bounded(&name)
        )));
    }
    match name
        .chars()
        .enumerate()
        .find(|&(_, c)| !c.is_ascii_graphic())
    {
        None => Ok(name),
        Some((at, c)) => {
            let shown: String = name.chars().map(escaped).collect();
            Err(RequestError::Invalid(format!(
                "malformed lease \"{shown}\": character {} at position {at} is not allowed; {want}",
                code_point(c)
            )))
        }
    }
}

/// `U+XXXX`, as Unicode names a character.
fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// `c` as a message may show it: anything but printable ASCII as its code
/// point.
fn escaped(c: char) -> String {
    if c.is_ascii_graphic() {
        c.to_string()
    } else {
        format!("<{}>", code_point(c))
    }
}

fn nonzero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: None,
        admin: true,
    };
    const HEX: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    fn request() -> proto::FetchRequest {
        proto::FetchRequest {
            url: "https://h/x?sig=secret".into(),
            digest: format!("sha256:{HEX}"),
            mirrors: vec!["gs://b/o".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_fetch_request_becomes_typed_values() {
        let want = want(request(), ROOT, &Urls::default()).unwrap();
        assert_eq!(want.urls.len(), 2);
        assert_eq!(want.urls[0].redacted(), "https://h/x?sig=…");
        assert_eq!(want.size, None);
        assert!(want.lease.is_none());
    }

    #[test]
    fn bad_fields_are_refused_naming_the_value() {
        let mut bad_url = request();
        bad_url.mirrors = vec!["not a url".into()];
        let mut bad_lease = request();
        bad_lease.lease = "a\nb".into();
        let mut ttl_alone = request();
        ttl_alone.lease_ttl_seconds = 5;
        let mut bad_digest = request();
        bad_digest.digest = "sha256:XYZ".into();
        let mut many = request();
        many.mirrors = vec!["https://h/m".into(); 17];
        for (req, part) in [
            (bad_url, "\"not a url\""),
            (bad_lease, "U+000A"),
            (ttl_alone, "lease_ttl_seconds"),
            (bad_digest, "XYZ"),
            (many, "17 mirrors"),
        ] {
            let err = want(req, ROOT, &Urls::default()).unwrap_err();
            assert!(matches!(err, RequestError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(part), "{err} lacks {part}");
        }
    }

    #[test]
    fn overlong_urls_are_refused_naming_length_and_bound() {
        let at_bound = format!("https://h/{}", "a".repeat(MAX_URL_LEN - 10));
        let mut ok = request();
        ok.url = at_bound.clone();
        assert!(want(ok, ROOT, &Urls::default()).is_ok());
        let over = format!("{at_bound}a");
        let mut long_url = request();
        long_url.url = over.clone();
        // Refused before the digest is even looked at.
        long_url.digest = "not a digest".into();
        let mut long_mirror = request();
        long_mirror.mirrors = vec![over];
        for (req, what) in [
            (long_url, "url of 8193 bytes"),
            (long_mirror, "mirror of 8193"),
        ] {
            let err = want(req, ROOT, &Urls::default()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, RequestError::Invalid(_)), "{text}");
            assert!(text.contains(what) && text.contains("8192"), "{text}");
            assert!(text.len() < 512 && text.contains('…'), "{text}");
        }
    }

    #[test]
    fn an_overlong_url_prefix_is_refused_naming_length_and_bound() {
        assert_eq!(url_prefix(String::new()).unwrap(), None);
        let at_bound = "h".repeat(MAX_URL_LEN);
        assert_eq!(
            url_prefix(at_bound.clone()).unwrap(),
            Some(at_bound.clone())
        );
        let err = url_prefix(format!("{at_bound}h")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RequestError::Invalid(_)), "{text}");
        assert!(
            text.contains("url_prefix of 8193 bytes") && text.contains("bound of 8192 bytes"),
            "{text}"
        );
        assert!(text.len() < 512, "{text}");
    }

    #[test]
    fn lease_names_are_printable_ascii_and_refusals_name_the_code_point() {
        for (name, point) in [
            ("a\u{202E}b", "U+202E"),
            ("a\u{200B}b", "U+200B"),
            ("\u{2066}a\u{2069}", "U+2066"),
            ("\u{FEFF}a", "U+FEFF"),
            ("a\u{7F}", "U+007F"),
            ("a\u{2028}", "U+2028"),
            ("tag\u{E0041}", "U+E0041"),
            ("a\u{034F}b", "U+034F"),
            ("a\u{115F}b", "U+115F"),
            ("a\u{FE0F}b", "U+FE0F"),
            ("\u{3164}", "U+3164"),
            ("\u{3000}", "U+3000"),
            ("a b", "U+0020"),
            ("été", "U+00E9"),
        ] {
            let err = lease(name.into()).unwrap_err().to_string();
            assert!(err.contains(point), "{err}");
            // The message itself shows nothing but printable ASCII.
            assert!(
                err.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "{err:?}"
            );
        }
        for name in ["sandbox-42", "job/7:a.b_c", "x".repeat(256).as_str()] {
            assert_eq!(lease(name.into()).unwrap(), name);
        }
        let long = lease("x".repeat(10_000)).unwrap_err().to_string();
        assert!(long.contains("10000 bytes") && long.len() < 512, "{long}");
        assert!(lease(String::new()).is_err());
    }

    #[test]
    fn the_url_cache_answers_repeats_and_stays_bounded() {
        let urls = Urls::default();
        let a = urls.parse("https://h/a").unwrap();
        assert_eq!(urls.parse("https://h/a").unwrap(), a);
        assert_eq!(urls.parsed.lock().unwrap().len(), 1);
        for i in 0..3 * URL_CACHE_ENTRIES {
            urls.parse(&format!("https://h/{i}")).unwrap();
        }
        assert!(urls.parsed.lock().unwrap().len() <= URL_CACHE_ENTRIES);
        assert!(urls.parse("no scheme").is_err());
        assert!(!urls.parsed.lock().unwrap().contains_key("no scheme"));
    }

    #[tokio::test]
    async fn admins_are_root_the_daemons_user_and_the_admin_groups_members() {
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 4242 { 4343 } else { 4242 };
        let (none, group) = (Roles::new(None, vec![]), Roles::new(Some(4711), vec![4712]));
        assert!(none.is_admin(0, 0).await);
        assert!(none.is_admin(me, 100).await);
        assert!(!none.is_admin(other, 100).await);
        assert!(group.is_admin(other, 4711).await, "by primary gid");
        assert!(!group.is_admin(other, 100).await);
        assert!(group.is_admin(4712, 100).await, "by uid");
        // Root's user is listed in its own primary group by getgrouplist.
        assert!(listed_in(0, 0));
        assert!(!listed_in(other, 4711));
    }

    #[test]
    fn only_root_and_the_daemons_user_are_admins() {
        let roles = Roles::new(Some(4711), vec![]);
        assert!(roles.require_admin(&ROOT).is_ok());
        let me = nix::unistd::geteuid().as_raw();
        let other = Caller {
            uid: if me == 4242 { 4343 } else { 4242 },
            gid: 100,
            pid: Some(1),
            admin: false,
        };
        let err = roles.require_admin(&other).unwrap_err();
        assert!(err.to_string().contains(&other.uid.to_string()), "{err}");
        assert!(err.to_string().contains("gid 4711"), "{err}");
    }
}
