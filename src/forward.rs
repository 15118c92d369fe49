//! The upstream side: header hygiene, the SP-API signing headers, and sending over one pooled client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use reqwest::Url;

use crate::config::Config;
use crate::error::ProxyError;
use crate::secret::Secret;

/// Our part of the `user-agent`; SP-API requires `Language=` in it.
pub const PROXY_USER_AGENT: &str = concat!(
    "spapi-proxy/",
    env!("CARGO_PKG_VERSION"),
    " (Language=Rust)"
);

/// SP-API rejects a `user-agent` longer than this.
const MAX_USER_AGENT: usize = 500;

/// Headers that describe one connection, not the message, so a proxy must not forward them
/// (RFC 9110 §7.6.1), plus `proxy-authorization`, which is meant for us, not for Amazon.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers the proxy sets itself, so whatever the client sent for them is dropped, never doubled.
/// `authorization` goes too: SP-API ignores SigV4 since 2023, and a client's credential for
/// something else must not leak to Amazon.
const REPLACED: [&str; 5] = [
    "host",
    "authorization",
    "x-amz-access-token",
    "x-amz-date",
    "user-agent",
];

/// `expect: 100-continue` was answered by our server when it read the body; the upstream
/// request is sent whole, so passing it on would only make Amazon send a stray 100.
const ANSWERED_HERE: [&str; 1] = ["expect"];

/// The proxy's own request headers (`x-spapi-*`) steer the proxy and are never forwarded.
pub const OWN_HEADER_PREFIX: &str = "x-spapi-";

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers Amazon receives: the client's, cleaned, plus token, date and user-agent.
pub fn upstream_headers(inbound: &HeaderMap, token: &Secret, now: SystemTime) -> HeaderMap {
    let mut headers = inbound.clone();
    strip_hop_by_hop(&mut headers);
    for name in REPLACED.iter().chain(&ANSWERED_HERE) {
        headers.remove(*name);
    }
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWN_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in own {
        headers.remove(name);
    }
    let mut token_value = HeaderValue::from_str(token.expose())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-token"));
    token_value.set_sensitive(true);
    headers.insert("x-amz-access-token", token_value);
    headers.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date(now)).expect("digits and letters only"),
    );
    headers.insert(
        http::header::USER_AGENT,
        user_agent(inbound.get(http::header::USER_AGENT)),
    );
    headers
}

/// `spapi-proxy/x.y.z (Language=Rust; Client=<the client's agent>)` when it fits in SP-API's
/// 500 characters, otherwise the proxy's part alone. `;` and parentheses in the client's agent
/// would break SP-API's `key=value` list, so they are replaced.
pub fn user_agent(client: Option<&HeaderValue>) -> HeaderValue {
    let client = client
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(c) = client {
        let clean: String = c
            .chars()
            .map(|ch| match ch {
                ';' => ',',
                '(' => '[',
                ')' => ']',
                ch => ch,
            })
            .collect();
        let combined = format!(
            "{} (Language=Rust; Client={clean})",
            PROXY_USER_AGENT.trim_end_matches(" (Language=Rust)")
        );
        if combined.len() <= MAX_USER_AGENT {
            if let Ok(v) = HeaderValue::from_str(&combined) {
                return v;
            }
        }
    }
    HeaderValue::from_static(PROXY_USER_AGENT)
}

/// `x-amz-date` in SP-API's basic ISO 8601 form, `YYYYMMDDTHHMMSSZ`, UTC.
pub fn amz_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Sends requests to the SP-API endpoint over one pooled, keep-alive client.
#[derive(Debug, Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    base: String,
    response_timeout: Duration,
}

/// The shared HTTP client: rustls, no redirects (a 3xx goes back to the client as Amazon sent
/// it), no automatic decompression, and the configured connect and idle timeouts.
pub fn http_client(config: &Config) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeouts.connect)
        .read_timeout(config.timeouts.idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
}

impl Forwarder {
    /// A forwarder to the configured endpoint.
    pub fn new(http: reqwest::Client, endpoint: &Url, response_timeout: Duration) -> Self {
        Forwarder {
            http,
            base: endpoint.as_str().trim_end_matches('/').to_string(),
            response_timeout,
        }
    }

    /// The full upstream URL for a request's path and query, which are kept byte for byte.
    pub fn url_for(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// Sends one request and returns the upstream's response with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, ProxyError> {
        let url = self.url_for(path_and_query);
        let request = self
            .http
            .request(method, &url)
            .headers(headers)
            .body(body)
            .send();
        match tokio::time::timeout(self.response_timeout, request).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_timeout() => Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => Err(ProxyError::Upstream(describe_send_error(&e))),
        }
    }
}

/// reqwest's message plus its causes, which say what actually failed (refused, reset, TLS).
fn describe_send_error(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn amz_date_table() {
        let cases = [
            (0, "19700101T000000Z"),
            (1_556_627_760, "20190430T123600Z"),
            (951_782_400, "20000229T000000Z"),
            (1_795_478_399, "20261123T235959Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(amz_date(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn signing_headers_replace_never_duplicate() {
        let inbound = headers(&[
            ("x-amz-access-token", "client-token"),
            ("x-amz-access-token", "second"),
            ("x-amz-date", "yesterday"),
            ("authorization", "AWS4-HMAC-SHA256 ..."),
            ("host", "localhost:8080"),
            ("user-agent", "curl/8.5.0"),
            ("connection", "keep-alive, x-trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-spapi-data-elements", "buyerInfo"),
            ("expect", "100-continue"),
            ("accept", "application/json"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let now = UNIX_EPOCH + Duration::from_secs(1_556_627_760);
        let out = upstream_headers(&inbound, &Secret::new("Atza|ours"), now);
        let all =
            |k: &str| -> Vec<&str> { out.get_all(k).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-amz-access-token"), ["Atza|ours"]);
        assert_eq!(all("x-amz-date"), ["20190430T123600Z"]);
        assert_eq!(
            all("user-agent"),
            [format!(
                "spapi-proxy/{} (Language=Rust; Client=curl/8.5.0)",
                env!("CARGO_PKG_VERSION")
            )]
        );
        for gone in [
            "authorization",
            "host",
            "connection",
            "x-trace",
            "keep-alive",
            "transfer-encoding",
            "x-spapi-data-elements",
            "expect",
        ] {
            assert!(out.get(gone).is_none(), "{gone} was forwarded");
        }
        assert_eq!(all("accept"), ["application/json"]);
        assert_eq!(all("x-custom"), ["a", "b"]);
    }

    #[test]
    fn user_agent_table() {
        let v = env!("CARGO_PKG_VERSION");
        let long = "x".repeat(480);
        let cases: Vec<(&str, Option<&str>, String)> = vec![
            (
                "no client agent",
                None,
                format!("spapi-proxy/{v} (Language=Rust)"),
            ),
            (
                "blank",
                Some("  "),
                format!("spapi-proxy/{v} (Language=Rust)"),
            ),
            (
                "simple",
                Some("my-erp/2.1"),
                format!("spapi-proxy/{v} (Language=Rust; Client=my-erp/2.1)"),
            ),
            (
                "parens and semicolons",
                Some("python-requests/2.31 (Windows; x64)"),
                format!(
                    "spapi-proxy/{v} (Language=Rust; Client=python-requests/2.31 [Windows, x64])"
                ),
            ),
            (
                "too long to fit",
                Some(&long),
                format!("spapi-proxy/{v} (Language=Rust)"),
            ),
        ];
        for (name, client, want) in cases {
            let client = client.map(|c| HeaderValue::from_str(c).unwrap());
            let got = user_agent(client.as_ref());
            assert_eq!(got.to_str().unwrap(), want, "{name}");
            assert!(got.len() <= MAX_USER_AGENT, "{name}");
        }
    }
}
