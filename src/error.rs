//! The proxy's error vocabulary, and the one place where an error becomes a status code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// Header on every response the proxy makes itself, so clients can tell it from Amazon's.
pub const PROXY_ERROR_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-spapi-proxy-error");

/// Why the token service (LWA or the Tokens API) did not give us a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token service answered and said no (`invalid_grant`, `invalid_client`, ...).
    #[error("{service} refused: {code}: {description}")]
    Refused {
        /// Which service refused: `lwa` or `rdt`.
        service: &'static str,
        /// The service's own error code, e.g. `invalid_grant`.
        code: String,
        /// The service's own explanation.
        description: String,
    },
    /// Connection failure, a 5xx, or an answer we could not read.
    #[error("the token service is unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured token timeout.
    #[error("the token service did not answer in time")]
    Timeout,
    /// This process ran out of something of its own (file descriptors) calling the service.
    #[error("the proxy is out of local resources: {0}")]
    LocalResources(String),
    /// The configuration has no credential for this kind of token.
    #[error("{0}")]
    NotConfigured(String),
    /// The request asked for personal data the application may not have: Amazon refused the
    /// dataElements for lack of a role, or `restricted_data = "never"`.
    #[error("personal data not permitted: {code}: {description}")]
    PiiNotPermitted {
        /// Amazon's error code (`InvalidInput`), or `restricted_data`.
        code: String,
        /// Amazon's message naming the elements, or the proxy's reason.
        description: String,
    },
}

/// Everything that makes the proxy answer a request itself instead of passing Amazon's answer on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request body broke off (bad chunking, a hang-up): the client's fault.
    #[error("bad request: the request body could not be read: {0}")]
    ClientBody(String),
    /// No inbound key, or a wrong one.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// `Host` names something other than this proxy (DNS rebinding, or a misdirected request).
    #[error("the Host `{0}` is not this proxy's; add it to allowed_hosts if it is")]
    HostNotAllowed(String),
    /// A web page of another site tried to use the proxy.
    #[error("cross-site request refused: {0}")]
    CrossSite(String),
    /// The inbound key is limited to other sellers (or to sellers, for an admin endpoint or
    /// an application-wide operation). The text says for what, naming only what the client
    /// named itself.
    #[error("this key may not act for {0}")]
    SellerNotAllowed(String),
    /// No SP-API operation has this method and path, and the config says to reject such requests.
    #[error("no SP-API operation matches {method} {path}")]
    NoRoute {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A `/_proxy/` path (or method) the proxy has no endpoint for.
    #[error(
        "no such proxy endpoint: {0}; the proxy's own are GET /_proxy/ (status page), \
         /_proxy/health, /_proxy/ready, /_proxy/status, /_proxy/quota, /_proxy/metrics, \
         /_proxy/reports/ID/document, /_proxy/documents/ID, /_proxy/feeds/ID/result, \
         /_proxy/oauth/start, /_proxy/oauth/callback, and POST /_proxy/reload, \
         /_proxy/tokens/refresh, /_proxy/feeds, /_proxy/sellers/revoke"
    )]
    NoEndpoint(String),
    /// Waiting for quota would take longer than allowed, or too many requests are waiting.
    #[error("rate limited: {reason}")]
    RateLimited {
        /// Seconds after which a retry may succeed.
        retry_after_secs: u64,
        /// Why the request was not queued.
        reason: String,
    },
    /// No token could be had for this request.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The upstream could not be reached (connect, TLS, reset).
    #[error("the SP-API endpoint could not be reached: {0}")]
    Upstream(String),
    /// This process ran out of something of its own (file descriptors, upstream connection
    /// slots): a 503 of ours, not a 502 that would blame Amazon.
    #[error("the proxy is out of local resources: {0}")]
    LocalResources(String),
    /// The upstream did not answer within the response timeout.
    #[error("the SP-API endpoint did not answer in time")]
    UpstreamTimeout,
    /// The proxy is not ready to serve (reported by `/_proxy/ready`).
    #[error("not ready: {0}")]
    NotReady(String),
    /// A report or feed ended CANCELLED or FATAL: there is no document to give.
    #[error("{what} {id} ended {status}: {reason}")]
    Processing {
        /// `report` or `feed`.
        what: &'static str,
        /// Its id.
        id: String,
        /// `CANCELLED` or `FATAL`.
        status: String,
        /// Amazon's words for the status (the model's description).
        reason: String,
        /// What Amazon's error document says, for a FATAL one that has one.
        document: Option<String>,
    },
    /// The document host (S3) refused or failed a download or upload.
    #[error("the document host answered {0}")]
    DocumentHost(String),
    /// The document URL Amazon answered is not one the proxy fetches.
    #[error("the document URL is refused: {0}")]
    DocumentUrl(String),
    /// An upload without a length: the document host needs one, and the proxy does not hold
    /// a body whole to count it.
    #[error("length required: {0}")]
    LengthRequired(String),
    /// A feature the config does not set up (onboarding without its keys).
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// A broken invariant: a bug in the proxy.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status code, decided by where the failure came from.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } | ProxyError::NoEndpoint(_) => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::HostNotAllowed(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::CrossSite(_) | ProxyError::SellerNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Token(TokenError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Token(TokenError::Refused { .. })
            | ProxyError::Token(TokenError::Unavailable(_)) => StatusCode::BAD_GATEWAY,
            ProxyError::Token(TokenError::NotConfigured(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Token(TokenError::PiiNotPermitted { .. }) => StatusCode::FORBIDDEN,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::LocalResources(_) | ProxyError::Token(TokenError::LocalResources(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Processing { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::DocumentHost(_) | ProxyError::DocumentUrl(_) => StatusCode::BAD_GATEWAY,
            ProxyError::LengthRequired(_) => StatusCode::LENGTH_REQUIRED,
            ProxyError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The value of the `x-spapi-proxy-error` header: a stable, scriptable name.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => "bad_request",
            // The header's value for an unknown /_proxy/ path predates its own message: kept.
            ProxyError::NoRoute { .. } | ProxyError::NoEndpoint(_) => "unknown_operation",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::HostNotAllowed(_) => "host_not_allowed",
            ProxyError::CrossSite(_) => "cross_site_refused",
            ProxyError::SellerNotAllowed(_) => "seller_not_allowed",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Token(TokenError::Refused { service: "rdt", .. }) => "rdt_refused",
            ProxyError::Token(TokenError::Refused { .. }) => "token_refused",
            ProxyError::Token(TokenError::Unavailable(_)) => "token_unavailable",
            ProxyError::Token(TokenError::Timeout) => "token_timeout",
            ProxyError::Token(TokenError::NotConfigured(_)) => "token_not_configured",
            ProxyError::Token(TokenError::PiiNotPermitted { .. }) => "pii_not_permitted",
            ProxyError::Upstream(_) => "upstream_unreachable",
            ProxyError::LocalResources(_) | ProxyError::Token(TokenError::LocalResources(_)) => {
                "local_resources_exhausted"
            }
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::NotReady(_) => "not_ready",
            ProxyError::Processing {
                what: "feed",
                status,
                ..
            } if status == "CANCELLED" => "feed_cancelled",
            ProxyError::Processing { what: "feed", .. } => "feed_fatal",
            ProxyError::Processing { status, .. } if status == "CANCELLED" => "report_cancelled",
            ProxyError::Processing { .. } => "report_fatal",
            ProxyError::DocumentHost(_) => "document_host_error",
            ProxyError::DocumentUrl(_) => "document_url_refused",
            ProxyError::LengthRequired(_) => "length_required",
            ProxyError::NotConfigured(_) => "not_configured",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The `code` in SP-API's error body; SP-API's own codes where one fits.
    fn code(&self) -> String {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => "InvalidInput".into(),
            ProxyError::NoRoute { .. } | ProxyError::NoEndpoint(_) => "NotFound".into(),
            ProxyError::Unauthorized(_)
            | ProxyError::CrossSite(_)
            | ProxyError::SellerNotAllowed(_) => "Unauthorized".into(),
            ProxyError::HostNotAllowed(_) => "InvalidInput".into(),
            ProxyError::RateLimited { .. } => "QuotaExceeded".into(),
            ProxyError::Processing { what, status, .. } => {
                let what = if *what == "feed" { "Feed" } else { "Report" };
                let status = if status == "CANCELLED" {
                    "Cancelled"
                } else {
                    "Fatal"
                };
                format!("{what}{status}")
            }
            ProxyError::LengthRequired(_) => "InvalidInput".into(),
            ProxyError::Token(
                TokenError::Refused { code, .. } | TokenError::PiiNotPermitted { code, .. },
            ) => code.clone(),
            _ => match self.status() {
                StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout".into(),
                StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable".into(),
                StatusCode::BAD_GATEWAY => "BadGateway".into(),
                _ => "InternalFailure".into(),
            },
        }
    }

    /// The `details` in SP-API's error body: where the answer came from and what to do.
    fn details(&self) -> String {
        let origin = "This response was made by spapi-proxy, not by Amazon.";
        match self {
            ProxyError::Token(TokenError::Refused { service: "lwa", .. }) => format!(
                "{origin} Login with Amazon refused the proxy's credentials; check the client id, \
                 client secret and refresh token."
            ),
            ProxyError::Token(TokenError::Refused { service: "rdt", .. }) => format!(
                "{origin} The Tokens API refused to mint the Restricted Data Token this operation \
                 needs; the request was not sent without one."
            ),
            ProxyError::Token(TokenError::PiiNotPermitted { .. }) => format!(
                "{origin} The request named its dataElements (x-spapi-data-elements), so it was \
                 not sent without personal data; grant the application the role for them, or \
                 leave the header out to get the answer without personal data."
            ),
            ProxyError::RateLimited { .. } => {
                format!(
                    "{origin} The request was not sent to Amazon; retry after Retry-After seconds."
                )
            }
            ProxyError::Processing {
                document: Some(d), ..
            } => format!("{origin} Amazon's error document says: {d}"),
            _ => origin.to_string(),
        }
    }

    /// The response the client sees: SP-API's error shape plus the proxy-error header.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "errors": [{
                "code": self.code(),
                "message": self.to_string(),
                "details": self.details(),
            }]
        });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.kind()));
        // The body is JSON and nothing else: no browser may sniff it into HTML.
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let ProxyError::Unauthorized(_) = &self {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        if let ProxyError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn refused() -> ProxyError {
        ProxyError::Token(TokenError::Refused {
            service: "lwa",
            code: "invalid_grant".into(),
            description: "bad refresh token".into(),
        })
    }

    #[test]
    fn status_and_kind_by_source() {
        let cases: Vec<(&str, ProxyError, u16, &str)> = vec![
            (
                "malformed request",
                ProxyError::BadRequest("x".into()),
                400,
                "bad_request",
            ),
            (
                "no route",
                ProxyError::NoRoute {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                "unknown_operation",
            ),
            (
                "rate limited",
                ProxyError::RateLimited {
                    retry_after_secs: 3,
                    reason: "x".into(),
                },
                429,
                "rate_limited",
            ),
            ("token refused", refused(), 502, "token_refused"),
            (
                "token service down",
                TokenError::Unavailable("x".into()).into(),
                502,
                "token_unavailable",
            ),
            (
                "token timeout",
                TokenError::Timeout.into(),
                504,
                "token_timeout",
            ),
            (
                "upstream unreachable",
                ProxyError::Upstream("x".into()),
                502,
                "upstream_unreachable",
            ),
            (
                "upstream timeout",
                ProxyError::UpstreamTimeout,
                504,
                "upstream_timeout",
            ),
            ("bug", ProxyError::Internal("x".into()), 500, "internal"),
            (
                "no key",
                ProxyError::Unauthorized("x".into()),
                401,
                "unauthorized",
            ),
            (
                "foreign host",
                ProxyError::HostNotAllowed("x".into()),
                421,
                "host_not_allowed",
            ),
            (
                "web page",
                ProxyError::CrossSite("x".into()),
                403,
                "cross_site_refused",
            ),
            (
                "client body broke",
                ProxyError::ClientBody("x".into()),
                400,
                "bad_request",
            ),
            (
                "personal data not permitted",
                TokenError::PiiNotPermitted {
                    code: "InvalidInput".into(),
                    description: "x".into(),
                }
                .into(),
                403,
                "pii_not_permitted",
            ),
        ];
        for (name, err, status, kind) in cases {
            assert_eq!(err.status().as_u16(), status, "{name}");
            assert_eq!(err.kind(), kind, "{name}");
        }
    }

    #[tokio::test]
    async fn response_has_spapi_shape_and_header() {
        let resp = refused().into_response();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[PROXY_ERROR_HEADER], "token_refused");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let e = &v["errors"][0];
        assert_eq!(e["code"], "invalid_grant");
        assert!(e["message"].as_str().unwrap().contains("invalid_grant"));
        assert!(e["details"].is_string());
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let resp = ProxyError::RateLimited {
            retry_after_secs: 7,
            reason: "queue full".into(),
        }
        .into_response();
        assert_eq!(resp.headers()["retry-after"], "7");
    }
}
