//! The request pipeline, read top to bottom, and the one place where errors become responses.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tracing::Instrument;

use crate::access::{self, Access};
use crate::auth::cache::Token;
use crate::auth::{self, Auth};
use crate::body::{full, ClientBody, ProxyBody};
use crate::config::{Config, ConfigError, UnknownOperations};
use crate::error::ProxyError;
use crate::forward::{self, Forwarder, UpstreamBody, UpstreamResponseBody};
use crate::limiter::{self, Limiter};
use crate::operations::{Catalog, Operation};
use crate::target;

/// A 403 body longer than this is not an SP-API token error, so it is not inspected.
const MAX_INSPECTED_403: u64 = 64 * 1024;

/// Header limiting, for one request, how long it may wait for quota (seconds).
pub const MAX_WAIT_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-max-wait");

/// Response header: how long the request waited for quota, in milliseconds.
pub const QUEUED_MS_HEADER: &str = "x-spapi-proxy-queued-ms";

/// getReport/getReports answers up to this size are read to learn report document types.
const MAX_LEARNED_BODY: u64 = 4 * 1024 * 1024;

/// getReport and getReports name each report's type and document.
fn lists_report_documents(op: &Operation) -> bool {
    op.api.starts_with("reports_") && matches!(op.id.as_str(), "getReport" | "getReports")
}

/// `x-spapi-restricted: true|false`, which forces the token for an unseen report document.
fn restricted_header(headers: &HeaderMap) -> Result<Option<bool>, ProxyError> {
    match own_header(headers, &auth::RESTRICTED_HEADER)? {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(ProxyError::BadRequest(format!(
            "{}: `{v}` is neither true nor false",
            auth::RESTRICTED_HEADER
        ))),
    }
}

/// One of the proxy's own `x-spapi-*` request headers, as text.
fn own_header<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a str>, ProxyError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ProxyError::BadRequest(format!("{name} is not readable text")))
        })
        .transpose()
}

/// The proxy: everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    access: Access,
    catalog: &'static Catalog,
    limiter: Arc<Limiter>,
    auth: Auth,
    forwarder: Forwarder,
    /// Paths already logged as unknown, so each is logged once (bounded: a scanner must not
    /// grow it without end).
    unknown_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How many distinct unknown paths are remembered for log-once.
const UNKNOWN_PATHS_REMEMBERED: usize = 10_000;

/// A request body: held in memory when small enough to replay, otherwise streamed once.
enum RequestBody {
    Buffered(Bytes),
    Streaming {
        /// What was read before the body proved too large to hold, and the rest, unread.
        body: Option<(Bytes, Incoming)>,
        /// Set if the client's body broke off while streaming, so that the failure is blamed
        /// on the client, not on Amazon.
        broke: Arc<OnceLock<String>>,
    },
}

/// The upstream's answer: still streaming, or read whole because we had to look inside.
enum Upstream {
    Streaming(Response<UpstreamResponseBody>),
    Read {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

impl Proxy {
    /// Builds the proxy from validated config. Nothing is fetched until the first request.
    pub fn new(config: &Config) -> Result<Proxy, ConfigError> {
        let http = forward::http_client(config).map_err(|e| ConfigError::Invalid {
            key: "(http client)".into(),
            problem: format!("cannot build the HTTP client: {e}"),
        })?;
        let config = Arc::new(config.clone());
        let limiter = Arc::new(Limiter::new(Arc::clone(&config)));
        Ok(Proxy {
            access: Access::new(&config),
            catalog: Catalog::builtin(),
            auth: Auth::new(&config, http.clone(), Arc::clone(&limiter))?,
            limiter,
            forwarder: Forwarder::new(&config, &config.endpoint).map_err(|e| {
                ConfigError::Invalid {
                    key: "endpoint".into(),
                    problem: format!("cannot build the upstream client: {e}"),
                }
            })?,
            unknown_seen: Default::default(),
            config,
        })
    }

    /// Answers one request; never fails, because every error is turned into a response here.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let own = path.starts_with("/_proxy/");
        let op = if own {
            None
        } else {
            self.catalog.find(&method, &path)
        };
        // Everything logged while the request runs (token fetches, mints, waits) carries these
        // at debug level; at info the span costs nothing, and the summary line below says it.
        let span = tracing::debug_span!(
            "request",
            %method,
            %path,
            op = op.map_or("-", |o| o.id.as_str())
        );
        let mut cors_origin = None;
        let result = match self.admit(&req, &path, &mut cors_origin) {
            Err(e) => Err(e),
            Ok(Some(preflight)) => Ok(preflight),
            Ok(None) if own => self.own_endpoint(&method, &path).instrument(span).await,
            Ok(None) => self.proxy(req, op).instrument(span).await,
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                if let ProxyError::ClientBody(_) = e {
                    // The client's own doing (bad chunking, a hang-up): nothing is wrong here.
                    tracing::info!(%method, %path, kind = e.kind(), error = %e, "request body broke off");
                } else if e.status().is_server_error() {
                    tracing::error!(%method, %path, kind = e.kind(), error = %e, "request failed");
                } else {
                    tracing::warn!(%method, %path, kind = e.kind(), error = %e, "request refused");
                }
                e.into_response()
            }
        };
        if let Some(origin) = cors_origin {
            Access::cors(origin, response.headers_mut());
        }
        tracing::info!(
            %method,
            %path,
            op = op.map_or("-", |o| o.id.as_str()),
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            request_id = response
                .headers()
                .get("x-amzn-requestid")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            "request"
        );
        response
    }

    /// Everything decided before a request may do anything, cheapest and most general first:
    /// one target, one meaning; `Host` names this proxy; no other site's web page; the inbound
    /// key (except for `/_proxy/health`). A CORS preflight from an allowed origin is answered
    /// here. `cors_origin` is set to the allowed origin an answer must carry CORS headers for.
    fn admit(
        &self,
        req: &Request<Incoming>,
        path: &str,
        cors_origin: &mut Option<http::HeaderValue>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        target::check(req.method(), req.uri(), |a| {
            self.access.authority_allowed(a)
        })?;
        let headers = req.headers();
        self.access.check_host(headers)?;
        *cors_origin = self.access.check_browser(headers)?;
        if let Some(origin) = cors_origin.clone() {
            if access::is_preflight(req.method(), headers) {
                *cors_origin = None;
                return Ok(Some(self.access.preflight(origin)));
            }
        }
        if path != "/_proxy/health" {
            self.access.check_key(headers)?;
        }
        Ok(None)
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        op: Option<&Operation>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 0. Unknown requests: refuse, or forward under the shared default limit.
        if op.is_none() {
            self.unknown_request(req.method(), req.uri().path())?;
        }
        let (parts, body) = req.into_parts();
        if parts.uri.path_and_query().is_none() {
            // CONNECT's authority form: nothing an SP-API call looks like.
            return Err(ProxyError::BadRequest("the request has no path".into()));
        }
        let path = parts.uri.path();

        // 1. Which token: decided before any I/O, so a request we refuse costs no token call.
        let plan = auth::plan(
            op,
            path,
            own_header(&parts.headers, &auth::DATA_ELEMENTS_HEADER)?,
            op.and_then(|o| self.config.operations.get(&o.index))
                .and_then(|s| s.data_elements.as_deref()),
            op.map_or(self.config.restricted_data, |o| {
                self.config.restricted_data_for(o)
            }),
        )?;
        let restricted = restricted_header(&parts.headers)?;
        let max_wait = self.max_wait(&parts.headers)?;
        let deadline = Instant::now() + max_wait;

        // 2. Hold small bodies so that a request can be replayed once with a fresh token.
        let mut body = self.read_body(body).await?;

        // 3. Quota, first look: a full queue or a wait past max_wait is refused now, before
        //    any token call.
        self.limiter.precheck(op, max_wait)?;

        // 4. The token (LWA, grantless or RDT), before queueing: a cold cache is filled now,
        //    not between our turn and the send. Amazon's bucket starts refilling when our
        //    first request arrives, so that request must not be late.
        let mut chosen = self.auth.token(&plan, restricted).await?;

        // 5. Quota: wait our turn in this operation's bucket, or refuse without calling Amazon.
        let mut queued = self.limiter.acquire(op, remaining(deadline)).await?;
        if !queued.is_zero() {
            // A long wait may have aged the token: ask again (a cache hit unless it was
            // refreshed meanwhile).
            chosen = self.auth.token(&plan, restricted).await?;
        }

        // 6. Forward.
        let mut upstream = self.send(op, &parts, &mut body, &chosen.token).await?;

        // 7. Amazon says the token expired or is invalid: drop it, get a new one, replay once
        //    (if the body was held). A fresh token rejected too means the credentials
        //    themselves are not accepted: /_proxy/ready says so.
        if upstream.status() == StatusCode::FORBIDDEN {
            upstream = upstream.read_whole(MAX_INSPECTED_403).await?;
            if upstream.says_token_rejected() {
                self.auth.reject(&chosen);
                if body.replayable() {
                    tracing::info!(path = %path, source = ?chosen.source, "Amazon rejected the token; replacing it and replaying once");
                    chosen = self.auth.token(&plan, restricted).await?;
                    queued += self.limiter.acquire(op, remaining(deadline)).await?;
                    upstream = self.send(op, &parts, &mut body, &chosen.token).await?;
                    if upstream.status() == StatusCode::FORBIDDEN {
                        upstream = upstream.read_whole(MAX_INSPECTED_403).await?;
                        if upstream.says_token_rejected() {
                            self.auth.rejected_fresh(&chosen, &upstream.text());
                        }
                    }
                }
            }
        }
        if upstream.status() != StatusCode::FORBIDDEN {
            self.auth.accepted(&chosen);
        }

        // 8. Amazon throttled us anyway (someone else shares the quota): slow the bucket down
        //    and retry requests that are safe to repeat, within the same max wait.
        let mut retries = 0;
        while upstream.status() == StatusCode::TOO_MANY_REQUESTS
            && self.limiter.enabled()
            && retries < self.config.throttle_retries
            && self.safe_to_repeat(&parts.method)
            && body.replayable()
        {
            self.limiter.throttled(op);
            let Ok(waited) = self.limiter.acquire(op, remaining(deadline)).await else {
                break;
            };
            queued += waited;
            retries += 1;
            tracing::info!(path = %path, retries, "Amazon answered 429; retrying after waiting for quota");
            upstream = self.send(op, &parts, &mut body, &chosen.token).await?;
        }

        // 9. getReport/getReports answers say which report documents are restricted.
        if op.is_some_and(lists_report_documents) && upstream.status().is_success() {
            upstream = upstream.read_whole(MAX_LEARNED_BODY).await?;
            if let Upstream::Read { body, .. } = &upstream {
                self.auth.learn_reports(body);
            }
        }

        // 10. Amazon's answer goes back untouched, minus hop-by-hop headers, plus the wait.
        let mut response = upstream.into_response();
        let headers = response.headers_mut();
        headers.insert(
            QUEUED_MS_HEADER,
            http::HeaderValue::from(u64::try_from(queued.as_millis()).unwrap_or(u64::MAX)),
        );
        if let Some(pii) = chosen.pii {
            headers.insert(
                auth::PII_HEADER,
                http::HeaderValue::from_static(pii.header_value()),
            );
        }
        Ok(response)
    }

    /// `max_wait`, shortened (never lengthened) by the request's `x-spapi-max-wait`.
    fn max_wait(&self, headers: &HeaderMap) -> Result<Duration, ProxyError> {
        let Some(v) = own_header(headers, &MAX_WAIT_HEADER)? else {
            return Ok(self.config.max_wait);
        };
        match v.trim().parse::<f64>() {
            // Clamped to max_wait before converting, so no value can overflow a Duration.
            Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs)
                .map_or(self.config.max_wait, |d| d.min(self.config.max_wait))),
            _ => Err(ProxyError::BadRequest(format!(
                "{MAX_WAIT_HEADER}: `{v}` is not a number of seconds"
            ))),
        }
    }

    /// GET, HEAD and DELETE may be repeated; PUT and PATCH only if configured; POST never.
    fn safe_to_repeat(&self, method: &Method) -> bool {
        match *method {
            Method::GET | Method::HEAD | Method::DELETE => true,
            Method::PUT | Method::PATCH => self.config.retry_put_patch,
            _ => false,
        }
    }

    fn unknown_request(&self, method: &Method, path: &str) -> Result<(), ProxyError> {
        if self.config.unknown_operations == UnknownOperations::Reject {
            return Err(ProxyError::NoRoute {
                method: method.to_string(),
                path: path.to_string(),
            });
        }
        let key = format!("{method} {path}");
        let mut seen = self.unknown_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < UNKNOWN_PATHS_REMEMBERED && seen.insert(key) {
            tracing::warn!(%method, %path, "no SP-API operation matches; forwarding with the LWA token under the shared default limit (logged once per path)");
        }
        Ok(())
    }

    /// Sends the request once with `token`; Amazon's rate header adapts `op`'s bucket.
    async fn send(
        &self,
        op: Option<&Operation>,
        parts: &http::request::Parts,
        body: &mut RequestBody,
        token: &Token,
    ) -> Result<Upstream, ProxyError> {
        // The target exactly as received: target::check made sure it means one thing.
        let target = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let headers = forward::upstream_headers(
            &parts.headers,
            token.header(),
            SystemTime::now(),
            self.forwarder.host(),
        );
        let sent = self
            .forwarder
            .send(parts.method.clone(), target, headers, body.take())
            .await;
        let resp = match (sent, body.broke()) {
            (Err(ProxyError::Upstream(_)), Some(why)) => return Err(ProxyError::ClientBody(why)),
            (sent, _) => sent?,
        };
        if let Some(rate) = limiter::rate_header(resp.headers()) {
            self.limiter.observe_rate(op, rate);
        }
        Ok(Upstream::Streaming(resp))
    }

    /// Holds the body if it fits in `replay_buffer_bytes` (chunked ones too), so that the
    /// request can be replayed, and so that a body that breaks off is refused before Amazon
    /// sees any of it. A larger body streams: what was read so far, then the rest.
    async fn read_body(&self, mut body: Incoming) -> Result<RequestBody, ProxyError> {
        let limit = self.config.replay_buffer_bytes;
        let mut held = BytesMut::new();
        if body.size_hint().lower() <= limit {
            loop {
                match body.frame().await {
                    None => return Ok(RequestBody::Buffered(held.freeze())),
                    Some(Err(e)) => return Err(ProxyError::ClientBody(e.to_string())),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            held.extend_from_slice(&data);
                            if held.len() as u64 > limit {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(RequestBody::Streaming {
            body: Some((held.freeze(), body)),
            broke: Arc::default(),
        })
    }

    async fn own_endpoint(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        match (method, path) {
            (&Method::GET, "/_proxy/health") => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({"status": "ok"}),
            )),
            (&Method::GET, "/_proxy/quota") => {
                Ok(json_response(StatusCode::OK, self.limiter.snapshot()))
            }
            (&Method::GET, "/_proxy/status") => Ok(json_response(
                StatusCode::OK,
                serde_json::json!({
                    "restricted_data": {
                        "default": self.config.restricted_data.name(),
                        "retry_secs": self.config.restricted_data_retry.as_secs(),
                        "refused_data_elements": self.auth.pii_roles(),
                    },
                    "seller_token": {
                        "rejected_by_amazon": self.auth.fresh_rejection(),
                    },
                }),
            )),
            (&Method::GET, "/_proxy/ready") => match self.auth.ready().await {
                Ok(_) => Ok(json_response(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready"}),
                )),
                Err(e) => Err(ProxyError::NotReady(format!(
                    "no access token could be obtained: {e}"
                ))),
            },
            _ => Err(ProxyError::NoRoute {
                method: method.to_string(),
                path: path.to_string(),
            }),
        }
    }
}

impl RequestBody {
    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one send; a streaming body can be taken only once.
    fn take(&mut self) -> UpstreamBody {
        match self {
            RequestBody::Buffered(b) => UpstreamBody::full(b.clone()),
            RequestBody::Streaming { body, broke } => match body.take() {
                Some((prefix, rest)) => {
                    UpstreamBody::Client(ClientBody::new(prefix, rest, Arc::clone(broke)))
                }
                None => UpstreamBody::full(Bytes::new()),
            },
        }
    }

    /// Why the client's streaming body broke off, if it did.
    fn broke(&self) -> Option<String> {
        match self {
            RequestBody::Buffered(_) => None,
            RequestBody::Streaming { broke, .. } => broke.get().cloned(),
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Upstream {
    fn status(&self) -> StatusCode {
        match self {
            Upstream::Streaming(r) => r.status(),
            Upstream::Read { status, .. } => *status,
        }
    }

    /// Reads the body into memory if its announced length is at most `limit`; a body of
    /// unknown or larger length keeps streaming untouched.
    async fn read_whole(self, limit: u64) -> Result<Upstream, ProxyError> {
        match self {
            Upstream::Streaming(resp) => {
                let length = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if length.is_none_or(|n| n > limit) {
                    return Ok(Upstream::Streaming(resp));
                }
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| ProxyError::Upstream(format!("the upstream body broke off: {e}")))?
                    .to_bytes();
                Ok(Upstream::Read {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            }
            read => Ok(read),
        }
    }

    fn says_token_rejected(&self) -> bool {
        match self {
            Upstream::Read {
                status,
                headers,
                body,
            } if *status == StatusCode::FORBIDDEN => auth::says_token_rejected(headers, body),
            _ => false,
        }
    }

    /// A read answer's body as text, at most 300 characters (for `/_proxy/ready`).
    fn text(&self) -> String {
        match self {
            Upstream::Read { body, .. } => {
                String::from_utf8_lossy(body).chars().take(300).collect()
            }
            Upstream::Streaming(_) => String::new(),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let (status, mut headers, body) = match self {
            Upstream::Streaming(resp) => {
                let (parts, body) = resp.into_parts();
                (parts.status, parts.headers, body.boxed())
            }
            Upstream::Read {
                status,
                headers,
                body,
            } => (status, headers, full(body)),
        };
        forward::strip_hop_by_hop(&mut headers);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
