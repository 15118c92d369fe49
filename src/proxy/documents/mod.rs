//! Reports and feeds in one call:
//!
//! - `GET /_proxy/reports/{reportId}/document`: getReport until DONE, getReportDocument,
//!   download, gunzip, (`?decode=utf-8`) transcode, stream ([`reports`]).
//! - `GET /_proxy/documents/{reportDocumentId}`: the same from getReportDocument on.
//! - `POST /_proxy/feeds?feedType=...&marketplaceIds=...`: createFeedDocument, upload the body
//!   (streamed), createFeed ([`feeds`]).
//! - `GET /_proxy/feeds/{feedId}/result`: getFeed until DONE, the processing report, streamed.
//!
//! Every SP-API call goes through the proxy's own pipeline ([`Flow::call`]), so quotas, tokens
//! (an RDT for a restricted report type), retries and the inbound key's sellers apply as to any
//! request. The document host is only ever sent to the URL Amazon answered in the same flow,
//! never one a client names, and gets no SP-API header ([`Flow::document_url`]).

mod feeds;
mod reports;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::upstream::Inbound;
use super::{Facts, Proxy, State, MAX_WAIT_HEADER};
use crate::auth::{REGION_HEADER, RESTRICTED_HEADER, SELLER_HEADER};
use crate::body::{full, ProxyBody};
use crate::config::InboundKey;
use crate::error::ProxyError;

/// Response header: the report's type, when known.
pub const REPORT_TYPE_HEADER: HeaderName = HeaderName::from_static("x-spapi-report-type");
/// Response header: the document's id.
pub const DOCUMENT_ID_HEADER: HeaderName = HeaderName::from_static("x-spapi-document-id");
/// Response header: the document's charset as the document host named it, or as the
/// per-marketplace rule chose it.
pub const CHARSET_HEADER: HeaderName = HeaderName::from_static("x-spapi-document-charset");
/// Response header: `content-type` when the host named the charset, `rule` when it did not.
pub const CHARSET_SOURCE_HEADER: HeaderName =
    HeaderName::from_static("x-spapi-document-charset-source");
/// Response header: `GZIP` when Amazon said the document was compressed, else `none`.
pub const COMPRESSION_HEADER: HeaderName = HeaderName::from_static("x-spapi-document-compression");
/// Response header on a 202: Amazon's `processingStatus`.
pub const PROCESSING_HEADER: HeaderName = HeaderName::from_static("x-spapi-processing-status");

/// SP-API answers read whole here (they are small JSON).
const MAX_ANSWER: usize = 1024 * 1024;

/// Whether `path` is one of these endpoints.
pub(super) fn handles(path: &str) -> bool {
    path.starts_with("/_proxy/reports/")
        || path.starts_with("/_proxy/documents/")
        || path == "/_proxy/feeds"
        || path.starts_with("/_proxy/feeds/")
}

/// An id as Amazon writes them (report ids are digits; document ids `amzn1.spdoc...`): letters,
/// digits, `.`, `-`, `_`. Anything else (a slash, a URL) is refused before any call.
fn valid_id(id: &str) -> Result<&str, ProxyError> {
    if !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Ok(id)
    } else {
        Err(ProxyError::BadRequest(format!(
            "`{}` is not an SP-API id (letters, digits, `.`, `-`, `_`)",
            crate::logging::capped(id)
        )))
    }
}

impl Proxy {
    /// Routes a documents request.
    pub(super) async fn documents(
        &self,
        state: &State,
        req: &http::request::Parts,
        body: Incoming,
        key: Option<&InboundKey>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        let flow = Flow::new(self, state, key, &req.headers, req.uri.query())?;
        let segments: Vec<&str> = path["/_proxy/".len()..].split('/').collect();
        let answer = match (&method, segments.as_slice()) {
            (&Method::GET, ["reports", id, "document"]) => {
                reports::report_document(&flow, valid_id(id)?).await
            }
            (&Method::GET, ["documents", id]) => reports::document(&flow, valid_id(id)?).await,
            (&Method::POST, ["feeds"]) => feeds::submit(&flow, &req.headers, body).await,
            (&Method::GET, ["feeds", id, "result"]) => feeds::result(&flow, valid_id(id)?).await,
            _ => {
                return Err(ProxyError::NoEndpoint(format!(
                    "{method} {}",
                    crate::logging::capped(&path)
                )))
            }
        };
        match answer {
            Ok(resp) => Ok(resp),
            Err(Stop::Amazon(resp)) => Ok(*resp),
            Err(Stop::Proxy(e)) => Err(e),
        }
    }
}

/// Why a flow stopped before its document: an error of the proxy's, or Amazon's own answer to
/// one of the calls, passed on untouched.
pub(super) enum Stop {
    Proxy(ProxyError),
    Amazon(Box<Response<ProxyBody>>),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Stop {
        Stop::Proxy(e)
    }
}

/// An SP-API answer read whole.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, for a 2xx answer; Amazon's answer itself otherwise.
    pub fn json(self) -> Result<serde_json::Value, Stop> {
        if !self.status.is_success() {
            let mut resp = Response::new(full(self.body));
            *resp.status_mut() = self.status;
            *resp.headers_mut() = self.headers;
            return Err(Stop::Amazon(Box::new(resp)));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Stop::Proxy(ProxyError::Upstream(format!(
                "SP-API answered {} with a body that is not JSON: {e}",
                self.status
            )))
        })
    }
}

/// One documents request: whose it is, how long it may take, and the way to SP-API and to the
/// document host.
pub(super) struct Flow<'a> {
    proxy: &'a Proxy,
    state: &'a State,
    key: Option<&'a InboundKey>,
    /// The client's own `x-spapi-*` headers that decide whose call it is and how.
    own: HeaderMap,
    deadline: Instant,
    /// The query's parameters.
    query: Vec<(String, String)>,
}

impl<'a> Flow<'a> {
    fn new(
        proxy: &'a Proxy,
        state: &'a State,
        key: Option<&'a InboundKey>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Flow<'a>, ProxyError> {
        let max_wait = proxy.max_wait(
            &state.config,
            headers
                .get(MAX_WAIT_HEADER)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        ProxyError::BadRequest(format!("{MAX_WAIT_HEADER} is not text"))
                    })
                })
                .transpose()?,
        )?;
        let mut own = HeaderMap::new();
        for name in [SELLER_HEADER, REGION_HEADER, RESTRICTED_HEADER] {
            if let Some(v) = headers.get(&name) {
                own.insert(name, v.clone());
            }
        }
        let query = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Ok(Flow {
            proxy,
            state,
            key,
            own,
            deadline: Instant::now() + max_wait,
            query,
        })
    }

    /// A query parameter.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `?decode=utf-8`: whether to transcode to UTF-8.
    fn decode(&self) -> Result<bool, ProxyError> {
        match self.param("decode") {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8") => {
                Ok(true)
            }
            Some(v) => Err(ProxyError::BadRequest(format!(
                "decode={} is not supported; decode=utf-8 transcodes the document to UTF-8, and \
                 without it the document's own bytes come back",
                crate::logging::capped(v)
            ))),
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// One SP-API call through the pipeline (quota, token, retries), read whole. `region`
    /// forces the region when the flow knows it from its marketplaces.
    fn call<'s>(
        &'s self,
        method: Method,
        target: &'s str,
        body: Option<serde_json::Value>,
    ) -> futures_util::future::BoxFuture<'s, Result<Answer, ProxyError>> {
        Box::pin(self.call_inner(method, target, body))
    }

    async fn call_inner(
        &self,
        method: Method,
        target: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, ProxyError> {
        let mut req = Request::builder().method(method).uri(target);
        if let Some(h) = req.headers_mut() {
            h.extend(self.own.clone());
            // What is left of the flow's time is this call's to wait for quota.
            h.insert(
                MAX_WAIT_HEADER,
                HeaderValue::from_str(&format!("{:.3}", self.remaining().as_secs_f64()))
                    .map_err(|e| ProxyError::Internal(e.to_string()))?,
            );
            if body.is_some() {
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = req
            .body(Inbound::Made(body))
            .map_err(|e| ProxyError::Internal(format!("an SP-API call of the proxy's: {e}")))?;
        let op = self.proxy.catalog.find(req.method(), req.uri().path());
        let mut facts = Facts::new(std::time::Instant::now());
        let (head, body) = req.into_parts();
        let resp = self
            .proxy
            .proxy(self.state, &head, body, op, None, self.key, &mut facts)
            .await?;
        let (parts, mut body) = resp.into_parts();
        let mut held = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ProxyError::Upstream(format!("reading SP-API's answer: {e}")))?;
            if let Ok(data) = frame.into_data() {
                held.extend_from_slice(&data);
                if held.len() > MAX_ANSWER {
                    return Err(ProxyError::Upstream(format!(
                        "SP-API's answer is larger than {MAX_ANSWER} bytes"
                    )));
                }
            }
        }
        let body = held.freeze();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The URL Amazon answered, if the proxy may fetch it: https, or http only to the host of
    /// an SP-API endpoint configured as http (a local simulator or fake); no user or password.
    fn document_url(&self, url: &str) -> Result<reqwest::Url, ProxyError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ProxyError::DocumentUrl(format!("not a URL: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ProxyError::DocumentUrl(
                "it carries a user or password".into(),
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| ProxyError::DocumentUrl("it has no host".into()))?;
        let allowed = match parsed.scheme() {
            "https" => true,
            "http" => self.state.config.endpoints.iter().any(|e| {
                e.scheme() == "http"
                    && e.host_str() == Some(host)
                    && e.port_or_known_default() == parsed.port_or_known_default()
            }),
            _ => false,
        };
        if !allowed {
            return Err(ProxyError::DocumentUrl(format!(
                "{}://{host} is not https (plain http is fetched only from a configured http \
                 endpoint's own host)",
                parsed.scheme()
            )));
        }
        Ok(parsed)
    }

    /// Downloads a document: a plain GET, no SP-API header, no redirect followed.
    async fn download(&self, url: &str) -> Result<reqwest::Response, ProxyError> {
        let url = self.document_url(url)?;
        let resp = self
            .state
            .documents_http
            .get(url)
            .send()
            .await
            .map_err(|e| {
                ProxyError::DocumentHost(format!(
                    "nothing: {}",
                    crate::forward::describe(&e.without_url())
                ))
            })?;
        host_status(resp).await
    }
}

/// A document host's answer, if it is a success; its status and error code otherwise.
async fn host_status(resp: reqwest::Response) -> Result<reqwest::Response, ProxyError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    // S3's error document: <Error><Code>..</Code><Message>..</Message>...
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_string())
    };
    Err(ProxyError::DocumentHost(
        match (field("Code"), field("Message")) {
            (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
            _ => status.to_string(),
        },
    ))
}

/// 202: not done within the wait; Retry-After says when to look again.
fn processing(id_name: &str, id: &str, status: &str, retry_after: Duration) -> Response<ProxyBody> {
    let secs = retry_after.as_secs().max(1);
    let body = serde_json::json!({
        id_name: id,
        "processingStatus": status,
        "retryAfterSeconds": secs,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    if let Ok(v) = HeaderValue::from_str(status) {
        h.insert(PROCESSING_HEADER, v);
    }
    resp
}

/// GETs `target` (getReport, getFeed) until it reports an end state (CANCELLED, DONE, FATAL)
/// or the flow's time is up: 0.5 s, then doubling up to 15 s between looks. Answers the last
/// look and, when the time was up first, how long the client should wait before asking again.
async fn poll(
    flow: &Flow<'_>,
    target: &str,
) -> Result<(serde_json::Value, Option<Duration>), Stop> {
    let mut interval = Duration::from_millis(500);
    loop {
        let answer = flow.call(Method::GET, target, None).await?.json()?;
        let status = answer["processingStatus"].as_str().unwrap_or("");
        if matches!(status, "DONE" | "CANCELLED" | "FATAL") {
            return Ok((answer, None));
        }
        if flow.remaining() < interval {
            return Ok((answer, Some(interval)));
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_secs(15));
    }
}
