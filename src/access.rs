//! Who may act through the proxy: inbound keys, the `Host` allow-list (DNS rebinding), and
//! browsers (`Origin`, `Sec-Fetch-Site`, CORS). Everything here runs before any token call.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, HOST, ORIGIN};
use http::{Method, Response, StatusCode};

use crate::body::{empty, ProxyBody};
use crate::config::{Config, InboundKey};
use crate::error::ProxyError;

/// Header carrying an inbound key (`Authorization: Bearer KEY` works too).
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-spapi-proxy-key");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// SP-API's own host names, which clients such as the npm `amazon-sp-api` library keep sending
/// in `Host` when pointed at the proxy.
const SPAPI_HOSTS: [&str; 6] = [
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
    "sandbox.sellingpartnerapi-na.amazon.com",
    "sandbox.sellingpartnerapi-eu.amazon.com",
    "sandbox.sellingpartnerapi-fe.amazon.com",
];

/// Headers a browser page allowed by `allowed_origins` may read from an answer.
const EXPOSED: &str = "x-spapi-proxy-error, x-spapi-proxy-queued-ms, x-spapi-proxy-pii, \
                       x-amzn-requestid, x-amzn-ratelimit-limit, retry-after";

/// The inbound access policy, built once from config.
#[derive(Debug)]
pub struct Access {
    keys: Vec<InboundKey>,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    /// Tells this policy's remembered `Host` (see [`ALLOWED_HOST`]) from another's.
    id: u64,
}

thread_local! {
    /// The last `Host` this thread found allowed, and the id of the policy that allowed it: a
    /// client sends the same one on every request, and comparing it costs less than judging
    /// it again (parsing an address literal, the loopback and SP-API names: 400 instructions).
    static ALLOWED_HOST: std::cell::RefCell<(u64, Option<HeaderValue>)> =
        const { std::cell::RefCell::new((0, None)) };
}

/// The request headers the access checks read, found in one pass over the names (which are
/// few outside browsers) instead of a lookup each, one of them hashing a name that is not a
/// standard one (400 instructions).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The first `Host`.
    pub host: Option<&'a HeaderValue>,
    /// The first `Origin`.
    pub origin: Option<&'a HeaderValue>,
    /// The first `Sec-Fetch-Site`.
    pub fetch_site: Option<&'a HeaderValue>,
}

impl<'a> Seen<'a> {
    /// Reads them from `headers`.
    pub fn read(headers: &'a HeaderMap) -> Seen<'a> {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let slot = if *name == HOST {
                &mut seen.host
            } else if *name == ORIGIN {
                &mut seen.origin
            } else if *name == SEC_FETCH_SITE {
                &mut seen.fetch_site
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        seen
    }
}

/// Ids of policies, from 1 (0 is none).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Access {
    /// The policy `config` describes.
    pub fn new(config: &Config) -> Access {
        Access {
            keys: config.inbound_keys.clone(),
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_origins: config.allowed_origins.clone(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether clients must present a key.
    pub fn keys_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The `Host` header (and an absolute-form target's authority) must name this proxy, never
    /// a domain a web page controls: a DNS-rebinding page always sends its own domain name.
    pub fn check_host(&self, seen: &Seen<'_>) -> Result<(), ProxyError> {
        let Some(host) = seen.host else {
            // HTTP/1.0 clients may send none; browsers always do.
            return Ok(());
        };
        let remembered = ALLOWED_HOST.with(|last| {
            let last = last.borrow();
            last.0 == self.id && last.1.as_ref() == Some(host)
        });
        if remembered {
            return Ok(());
        }
        match host.to_str() {
            Ok(h) if self.authority_allowed(h) => {
                ALLOWED_HOST.with(|last| *last.borrow_mut() = (self.id, Some(host.clone())));
                Ok(())
            }
            _ => Err(ProxyError::HostNotAllowed(printable(host.as_bytes()))),
        }
    }

    /// Whether `authority` (`host[:port]`) names this proxy: a loopback name, an IP address
    /// literal, SP-API's own host names, or one of `allowed_hosts`.
    pub fn authority_allowed(&self, authority: &str) -> bool {
        let host = host_of(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return false;
        }
        let ends_with = |suffix: &str| {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        };
        is_ip_literal(host)
            || host.eq_ignore_ascii_case("localhost")
            || ends_with(".localhost")
            || SPAPI_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host))
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Browsers: a request from a page of another site is refused unless its `Origin` is in
    /// `allowed_origins`. `Sec-Fetch-Site` catches the requests that carry no `Origin` (a
    /// cross-site GET, a form POST in some browsers).
    pub fn check_browser(&self, seen: &Seen<'_>) -> Result<Option<HeaderValue>, ProxyError> {
        let Seen {
            host,
            origin,
            fetch_site,
        } = *seen;
        if let Some(origin) = origin {
            // The proxy's own pages (the status page's revoke form): the origin is this very
            // host, and the browser says so. (`Host` passed its own check already.)
            let same_origin = fetch_site.map(HeaderValue::as_bytes) == Some(b"same-origin")
                && host.is_some_and(|host| {
                    origin.as_bytes().strip_prefix(b"http://") == Some(host.as_bytes())
                        || origin.as_bytes().strip_prefix(b"https://") == Some(host.as_bytes())
                });
            if same_origin {
                return Ok(None);
            }
            return match origin.to_str() {
                Ok(o) if self.allowed_origins.iter().any(|a| a == o) => Ok(Some(origin.clone())),
                _ => Err(ProxyError::CrossSite(format!(
                    "requests from the web page origin {} are refused (allowed_origins)",
                    printable(origin.as_bytes())
                ))),
            };
        }
        match fetch_site.map(HeaderValue::as_bytes) {
            Some(b"cross-site" | b"same-site") => Err(ProxyError::CrossSite(
                "a request from another site's web page is refused (Sec-Fetch-Site)".into(),
            )),
            _ => Ok(None),
        }
    }

    /// The inbound key, from `x-spapi-proxy-key` or `Authorization: Bearer`, compared in
    /// constant time with every configured key.
    /// Returns the key that matched (`None` when no keys are configured).
    pub fn check_key(&self, headers: &HeaderMap) -> Result<Option<&InboundKey>, ProxyError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(KEY_HEADER)
            .map(HeaderValue::as_bytes)
            .or_else(|| {
                headers
                    .get(AUTHORIZATION)
                    .map(HeaderValue::as_bytes)
                    .and_then(|v| {
                        v.get(..7)
                            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
                            .map(|_| v[7..].trim_ascii())
                    })
            });
        let Some(presented) = presented else {
            return Err(ProxyError::Unauthorized(
                "no key: send x-spapi-proxy-key: KEY or Authorization: Bearer KEY".into(),
            ));
        };
        // Every key is compared, so the time taken does not say which one came close.
        let matched = self.keys.iter().fold(None, |found, k| {
            let hit = constant_time_eq(k.key.expose().as_bytes(), presented);
            found.or(hit.then_some(k))
        });
        if let Some(k) = matched {
            Ok(Some(k))
        } else {
            Err(ProxyError::Unauthorized("the key is not valid".into()))
        }
    }

    /// The answer to a CORS preflight from an allowed origin (no key needed: browsers send
    /// none on a preflight).
    pub fn preflight(&self, origin: HeaderValue) -> Response<ProxyBody> {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, x-spapi-proxy-key, x-spapi-data-elements, \
                 x-spapi-max-wait, x-spapi-restricted",
            ),
        );
        h.insert(
            http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(http::header::VARY, HeaderValue::from_static("Origin"));
        resp
    }

    /// CORS headers on an answer to an allowed origin.
    pub fn cors(origin: HeaderValue, headers: &mut HeaderMap) {
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The host part of `host[:port]`, `[v6]:port` or `[v6]`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn is_ip_literal(host: &str) -> bool {
    // Only something that starts like an address (a v4 digit, or a v6 address, unbracketed
    // here, with its colons) is worth parsing: names are the common case.
    (host.bytes().next().is_some_and(|b| b.is_ascii_digit()) || host.contains(':'))
        && host.parse::<std::net::IpAddr>().is_ok()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// At most 100 bytes of a client's header, for an error message.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(100)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(toml: &str) -> Access {
        Access::new(&Config::from_toml_str(toml, "test", &|_| None).unwrap())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The remembered `Host` serves only the policy that allowed it, and only that value.
    #[test]
    fn a_remembered_host_belongs_to_its_policy() {
        let wide = access("allowed_hosts = [\"proxy.internal\"]");
        let narrow = access("");
        let internal = headers(&[("host", "proxy.internal:8080")]);
        for _ in 0..2 {
            assert!(wide.check_host(&Seen::read(&internal)).is_ok());
            assert!(
                narrow.check_host(&Seen::read(&internal)).is_err(),
                "another policy's memo"
            );
        }
        assert!(wide
            .check_host(&Seen::read(&headers(&[("host", "evil.example")])))
            .is_err());
        assert!(wide.check_host(&Seen::read(&internal)).is_ok());
    }

    #[test]
    fn host_table() {
        let a = access("allowed_hosts = [\"proxy.internal\"]");
        let cases = [
            ("localhost:8080", true),
            ("LOCALHOST", true),
            ("api.localhost:8080", true),
            ("127.0.0.1:8080", true),
            ("27.0.0.1:8080", true),
            ("[::1]:8080", true),
            ("10.0.0.5", true),
            ("sellingpartnerapi-na.amazon.com", true),
            ("sandbox.sellingpartnerapi-eu.amazon.com:443", true),
            ("proxy.internal:8080", true),
            ("proxy.internal.", true),
            ("evil.example:8080", false),
            ("localhost.evil.example", false),
            ("sellingpartnerapi-na.amazon.com.evil.example", false),
            ("", false),
            (":8080", false),
        ];
        for (host, ok) in cases {
            assert_eq!(a.authority_allowed(host), ok, "{host}");
        }
    }

    #[test]
    fn browser_table() {
        let a = access("allowed_origins = [\"https://tool.example\"]");
        let cases = [
            ("curl", vec![], true),
            (
                "same origin fetch",
                vec![("sec-fetch-site", "same-origin")],
                true,
            ),
            (
                "typed in the address bar",
                vec![("sec-fetch-site", "none")],
                true,
            ),
            (
                "cross-site, no origin",
                vec![("sec-fetch-site", "cross-site")],
                false,
            ),
            ("same-site", vec![("sec-fetch-site", "same-site")], false),
            (
                "foreign origin",
                vec![("origin", "https://evil.example")],
                false,
            ),
            ("null origin", vec![("origin", "null")], false),
            (
                "allowed origin",
                vec![
                    ("origin", "https://tool.example"),
                    ("sec-fetch-site", "cross-site"),
                ],
                true,
            ),
        ];
        for (name, pairs, ok) in cases {
            assert_eq!(
                a.check_browser(&Seen::read(&headers(&pairs))).is_ok(),
                ok,
                "{name}"
            );
        }
        let none = access("");
        assert!(none
            .check_browser(&Seen::read(&headers(&[("origin", "https://tool.example")])))
            .is_err());
    }

    #[test]
    fn key_table() {
        let a = access("inbound_keys = [\"key-one-0123456789\", \"key-two-0123456789\"]");
        let cases = [
            (
                "header",
                vec![("x-spapi-proxy-key", "key-two-0123456789")],
                true,
            ),
            (
                "bearer",
                vec![("authorization", "Bearer key-one-0123456789")],
                true,
            ),
            (
                "bearer any case",
                vec![("authorization", "bearer key-one-0123456789")],
                true,
            ),
            (
                "wrong",
                vec![("x-spapi-proxy-key", "key-six-0123456789")],
                false,
            ),
            (
                "prefix of a key",
                vec![("x-spapi-proxy-key", "key-one-012345678")],
                false,
            ),
            (
                "basic auth",
                vec![("authorization", "Basic key-one-0123456789")],
                false,
            ),
            ("none", vec![], false),
        ];
        for (name, pairs, ok) in cases {
            assert_eq!(a.check_key(&headers(&pairs)).is_ok(), ok, "{name}");
        }
        assert!(access("").check_key(&HeaderMap::new()).is_ok());
    }
}
