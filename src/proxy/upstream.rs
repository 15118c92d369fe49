//! The upstream side of a request: its body (held for replay or streamed once), sending it
//! through the region's pool, and Amazon's answer (streamed on, or read whole when the proxy
//! must look inside).

use super::*;

/// A 403 body longer than this is not an SP-API token error, so it is not inspected.
pub(super) const MAX_INSPECTED_403: u64 = 64 * 1024;

/// When a request went upstream, and when its answer's head came back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub(super) at: Instant,
    pub(super) answered: Instant,
}

/// A request body: held in memory when small enough to replay, otherwise streamed once.
pub(super) enum RequestBody {
    Buffered(Bytes),
    Streaming {
        /// What was read before the body proved too large to hold, and the rest, unread.
        body: Option<(Bytes, Incoming)>,
        /// Set if the client's body broke off while streaming, so that the failure is blamed
        /// on the client, not on Amazon.
        broke: Arc<OnceLock<String>>,
    },
}

/// A request's body as it reaches the pipeline: the client's, or one the proxy made itself
/// (the documents flows' own SP-API calls).
pub(super) enum Inbound {
    Client(Incoming),
    Made(Bytes),
}

/// The upstream's answer: still streaming, or read whole because we had to look inside.
pub(super) enum Upstream {
    Streaming(Response<UpstreamResponseBody>),
    Read {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

impl Proxy {
    /// Sends the request once with `token`; Amazon's rate header adapts `op`'s bucket. Also
    /// returns when it was sent and when the answer's head arrived. [`Proxy::proxy`] does the
    /// same for its first send in three steps ([`Proxy::start_send`], the await,
    /// [`Proxy::sent`]), so that its future holds the exchange itself, not this one.
    pub(super) async fn send(
        &self,
        ctx: &Ctx<'_>,
        parts: &http::request::Parts,
        target: &PathAndQuery,
        body: &mut RequestBody,
        token: &Token,
    ) -> Result<(Upstream, Sent), ProxyError> {
        let at = Instant::now();
        let answer = self.start_send(ctx, parts, target, body, token, at).await;
        let (upstream, sent) = self.sent(ctx, body, answer, at)?;
        if let Some((quota, rate)) = rate_seen(ctx, &upstream) {
            self.limiter.observe_rate_in(quota, rate).await;
        }
        Ok((upstream, sent))
    }

    /// The request on its way, sent `at` (a clock reading the date header, the response
    /// timeout and the pool's idle time use): the headers Amazon gets and the exchange, not
    /// yet polled. Awaited where it is made, it is built in place in the caller's future.
    pub(super) fn start_send<'a>(
        &self,
        ctx: &Ctx<'a>,
        parts: &http::request::Parts,
        target: &PathAndQuery,
        body: &mut RequestBody,
        token: &Token,
        at: Instant,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamResponseBody>, ProxyError>> + Send + 'a
    {
        let headers =
            forward::upstream_headers(&parts.headers, token.header(), at, ctx.forwarder.host());
        // The target as received (target::check made sure it means one thing), cloned
        // without copying its bytes.
        ctx.forwarder.send(
            parts.method.clone(),
            target.clone(),
            headers,
            body.take(),
            tokio::time::Instant::from_std(at),
        )
    }

    /// Amazon's answer to a request sent at `at`: counted, and a failure blamed on the
    /// client when its body broke off. Inlined: the answer (224 bytes) is then moved once into
    /// the caller's future rather than three times (60 instructions per request).
    #[inline(always)]
    pub(super) fn sent(
        &self,
        ctx: &Ctx<'_>,
        body: &RequestBody,
        answer: Result<Response<UpstreamResponseBody>, ProxyError>,
        at: Instant,
    ) -> Result<(Upstream, Sent), ProxyError> {
        let resp = match (answer, body.broke()) {
            (Err(ProxyError::Upstream(_)), Some(why)) => return Err(ProxyError::ClientBody(why)),
            (answer, _) => answer?,
        };
        let answered = Instant::now();
        let m = metrics::metrics();
        m.upstream(ctx.op, answered.saturating_duration_since(at));
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            m.amazon_throttled.get_or_create(&ctx.labels()).inc();
        } else if status.is_server_error() {
            m.amazon_errors.get_or_create(&ctx.labels()).inc();
        }
        Ok((Upstream::Streaming(resp), Sent { at, answered }))
    }

    /// Holds the body if it fits in `replay_buffer_bytes` (chunked ones too), so that the
    /// request can be replayed, and so that a body that breaks off is refused before Amazon
    /// sees any of it. A larger body streams: what was read so far, then the rest.
    pub(super) async fn read_body(
        &self,
        config: &Config,
        body: Inbound,
    ) -> Result<RequestBody, ProxyError> {
        let mut body = match body {
            Inbound::Made(bytes) => return Ok(RequestBody::Buffered(bytes)),
            Inbound::Client(body) => body,
        };
        let limit = config.replay_buffer_bytes;
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
}

impl RequestBody {
    pub(super) fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one send; a streaming body can be taken only once.
    pub(super) fn take(&mut self) -> UpstreamBody {
        match self {
            RequestBody::Buffered(b) => UpstreamBody::full(b.clone()),
            RequestBody::Streaming { body, broke } => match body.take() {
                Some((prefix, rest)) => {
                    UpstreamBody::client(ClientBody::new(prefix, rest, Arc::clone(broke)))
                }
                None => UpstreamBody::full(Bytes::new()),
            },
        }
    }

    /// Why the client's streaming body broke off, if it did.
    pub(super) fn broke(&self) -> Option<String> {
        match self {
            RequestBody::Buffered(_) => None,
            RequestBody::Streaming { broke, .. } => broke.get().cloned(),
        }
    }
}

pub(super) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Upstream {
    pub(super) fn headers(&self) -> &HeaderMap {
        match self {
            Upstream::Streaming(r) => r.headers(),
            Upstream::Read { headers, .. } => headers,
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            Upstream::Streaming(r) => r.status(),
            Upstream::Read { status, .. } => *status,
        }
    }

    /// Reads the body into memory, in place, if its announced length is at most `limit`; a
    /// body of unknown or larger length keeps streaming untouched.
    pub(super) async fn take_whole(&mut self, limit: u64) -> Result<(), ProxyError> {
        let short = matches!(self, Upstream::Streaming(_))
            && self
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= limit);
        if !short {
            return Ok(());
        }
        let held = Upstream::Read {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let Upstream::Streaming(resp) = std::mem::replace(self, held) else {
            return Ok(());
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ProxyError::Upstream(format!("the upstream body broke off: {e}")))?
            .to_bytes();
        *self = Upstream::Read {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        Ok(())
    }

    pub(super) fn says_token_rejected(&self) -> bool {
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
    pub(super) fn text(&self) -> String {
        match self {
            Upstream::Read { body, .. } => {
                String::from_utf8_lossy(body).chars().take(300).collect()
            }
            Upstream::Streaming(_) => String::new(),
        }
    }

    /// The answer the client gets: Amazon's, minus hop-by-hop headers; and Amazon's request
    /// id, found in the same pass. A streamed one keeps its head as hyper parsed it (status,
    /// headers, and a reason phrase Amazon worded its own way), so nothing is built and
    /// dropped around it; the version is this server's. Its body is said to be `labels`'s if
    /// it breaks off.
    pub(super) fn into_response(
        self,
        labels: metrics::OperationLabels,
    ) -> (Response<ProxyBody>, Option<http::HeaderValue>) {
        match self {
            Upstream::Streaming(resp) => {
                let (mut parts, body) = resp.into_parts();
                parts.version = http::Version::HTTP_11;
                let request_id = forward::strip_hop_by_hop(&mut parts.headers, &REQUEST_ID);
                let whose = forward::Whose {
                    labels,
                    status: parts.status.as_u16(),
                    request_id: request_id.clone(),
                };
                let body = forward::Answer::new(body, whose).boxed();
                (Response::from_parts(parts, body), request_id)
            }
            Upstream::Read {
                status,
                mut headers,
                body,
            } => {
                let request_id = forward::strip_hop_by_hop(&mut headers, &REQUEST_ID);
                let mut response = Response::new(full(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                (response, request_id)
            }
        }
    }
}

/// The rate in Amazon's answer (`x-amzn-RateLimit-Limit`), for the request's bucket to adapt
/// to; `None` without one, with limiting off, or when the bucket has it already.
pub(super) fn rate_seen<'c>(
    ctx: &'c Ctx<'_>,
    upstream: &Upstream,
) -> Option<(&'c limiter::Quota, f64)> {
    let quota = ctx.quota.as_ref()?;
    let rate = limiter::rate_header(upstream.headers())?;
    quota.is_news(rate).then_some((quota, rate))
}
