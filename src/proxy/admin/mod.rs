//! The proxy's own endpoints under `/_proxy/`, one file each; [`Proxy::own_endpoint`] routes
//! a request to them. Every one but `health` has passed the inbound-key check before it gets
//! here; what a key limited to sellers may see is decided by [`Viewer`].

mod metrics;
mod oauth;
mod page;
mod quota;
mod ready;
mod reload;
mod status;
mod tokens;

use http::{Method, Response, StatusCode};

pub(crate) use oauth::OAuthStates;

/// Amazon's redirect back from the consent page: reachable without a key.
pub(crate) const OAUTH_CALLBACK: &str = "/_proxy/oauth/callback";

use crate::body::{full, ProxyBody};
use crate::config::InboundKey;
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};

impl Proxy {
    pub(super) async fn own_endpoint(
        &self,
        state: &State,
        req: &http::request::Parts,
        key: Option<&InboundKey>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let method = &req.method;
        let path = req.uri.path();
        let viewer = Viewer::of(key);
        match (method, path) {
            (&Method::GET, "/_proxy/health") => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({"status": "ok"}),
            )),
            (&Method::GET, "/_proxy/quota") => quota::answer(self, state, viewer),
            (&Method::GET, "/_proxy/status") => {
                status::answer(state, &self.limiter, self.shared_view(), viewer)
            }
            (&Method::GET, "/_proxy/") => page::answer(self, state, viewer),
            (&Method::GET, "/_proxy/metrics") => metrics::answer(self, req, viewer),
            (&Method::GET, "/_proxy/ready") => self.ready(state, req.uri.query(), viewer).await,
            (&Method::POST, "/_proxy/reload") => reload::answer(self, key),
            (&Method::GET, "/_proxy/oauth/start") => {
                let json = req
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("application/json"));
                self.oauth_start(state, req.uri.query(), json, viewer)
            }
            (&Method::GET, OAUTH_CALLBACK) => Ok(self.oauth_callback(state, req.uri.query()).await),
            (&Method::POST, "/_proxy/sellers/revoke") => {
                // The status page's form: answered with a redirect back to it.
                let from_page = req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
                self.sellers_revoke(state, req.uri.query(), from_page, viewer)
                    .await
            }
            (&Method::POST, "/_proxy/tokens/refresh") => {
                self.tokens_refresh(state, req.uri.query(), key).await
            }
            _ => Err(ProxyError::NoEndpoint(format!(
                "{method} {}",
                crate::logging::capped(path)
            ))),
        }
    }
}

/// Whose state an admin endpoint may show: everything (no keys, or an unrestricted key), or a
/// limited key's own sellers and nothing application-wide.
#[derive(Clone, Copy)]
pub(super) struct Viewer<'a>(Option<&'a [String]>);

impl<'a> Viewer<'a> {
    fn of(key: Option<&'a InboundKey>) -> Viewer<'a> {
        Viewer(key.and_then(|k| k.sellers.as_deref()))
    }

    fn unrestricted(self) -> bool {
        self.0.is_none()
    }

    /// Whether this viewer may see `seller`'s state (`None`: the application's own).
    fn sees(self, seller: Option<&str>) -> bool {
        match (self.0, seller) {
            (None, _) => true,
            (Some(allowed), Some(s)) => allowed.iter().any(|n| n == s),
            (Some(_), None) => false,
        }
    }
}

/// The `seller` parameter of a `/_proxy/*` query (`ready`, `tokens/refresh`).
pub(super) fn seller_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "seller")
        .map(|(_, v)| v.into_owned())
}

/// One of the proxy's own HTML pages: everything inline, nothing else may load, no other site
/// may frame it, and nothing keeps a copy.
pub(super) fn html_response(status: StatusCode, html: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

pub(super) fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
