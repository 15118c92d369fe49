//! The request pipeline, read top to bottom, and the one place where errors become responses.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tracing::Instrument;

use arc_swap::ArcSwap;

use crate::access::{self, Access};
use crate::auth::cache::Token;
use crate::auth::seller::SellerAuth;
use crate::auth::{self, Auth, Chosen, TokenPlan};
use crate::body::{full, ClientBody, ProxyBody};
use crate::config::{Config, ConfigError, InboundKey, Region, UnknownOperations};
use crate::error::ProxyError;
use crate::forward::{self, Forwarder, UpstreamBody, UpstreamResponseBody};
use crate::key::Key;
use crate::limiter::{self, Limiter};
use crate::operations::{Catalog, Operation};
use crate::{metrics, region, target};

mod admin;
mod documents;
mod state;
mod upstream;

pub use state::ConfigSource;
pub(crate) use state::State;
use upstream::{remaining, Inbound, RequestBody, Upstream, MAX_INSPECTED_403};

/// Header limiting, for one request, how long it may wait for quota (seconds).
pub const MAX_WAIT_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-max-wait");

/// Response header: how long the request waited for quota, in milliseconds.
pub const QUEUED_MS_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-spapi-proxy-queued-ms");

/// Amazon's id for an answer, logged with each request.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-amzn-requestid");

/// getReport/getReports answers up to this size are read to learn report document types.
const MAX_LEARNED_BODY: u64 = 4 * 1024 * 1024;

/// getReport and getReports name each report's type and document.
fn lists_report_documents(op: &Operation) -> bool {
    op.api.starts_with("reports_") && matches!(op.id.as_str(), "getReport" | "getReports")
}

/// `x-spapi-restricted: true|false`, which forces the token for an unseen report document.
fn restricted_header(value: Option<&str>) -> Result<Option<bool>, ProxyError> {
    match value {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(ProxyError::BadRequest(format!(
            "{}: `{v}` is neither true nor false",
            auth::RESTRICTED_HEADER
        ))),
    }
}

/// The proxy's own `x-spapi-*` request headers, as text, read in one pass over the headers
/// (one hash lookup each cost more than the pass, measured).
#[derive(Default)]
struct OwnHeaders<'a> {
    data_elements: Option<&'a str>,
    restricted: Option<&'a str>,
    max_wait: Option<&'a str>,
    seller: Option<&'a str>,
    region: Option<&'a str>,
}

impl<'a> OwnHeaders<'a> {
    fn read(headers: &'a HeaderMap) -> Result<OwnHeaders<'a>, ProxyError> {
        let mut own = OwnHeaders::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                n if !n.starts_with("x-spapi-") => continue,
                n if n == auth::DATA_ELEMENTS_HEADER => &mut own.data_elements,
                n if n == auth::RESTRICTED_HEADER => &mut own.restricted,
                n if n == MAX_WAIT_HEADER => &mut own.max_wait,
                n if n == auth::SELLER_HEADER => &mut own.seller,
                n if n == auth::REGION_HEADER => &mut own.region,
                _ => continue,
            };
            if slot.is_none() {
                let text = value
                    .to_str()
                    .map_err(|_| ProxyError::BadRequest(format!("{name} is not readable text")))?;
                *slot = Some(text);
            }
        }
        Ok(own)
    }
}

/// The proxy: everything a request needs, shared by all connections.
pub struct Proxy {
    catalog: &'static Catalog,
    /// Outlives reloads: buckets keep their state when the config changes.
    limiter: Arc<Limiter>,
    /// Upstream connections the descriptor limit leaves room for.
    slots: Arc<forward::UpstreamSlots>,
    /// Redis, when replicas share buckets and tokens (`shared_state`); fixed until restart.
    shared: Option<Arc<crate::shared::Redis>>,
    /// Everything the config decides, swapped whole by a reload; a request keeps the state it
    /// started with until it ends.
    state: ArcSwap<State>,
    /// Reads the config again, for `POST /_proxy/reload` and SIGHUP.
    source: Option<ConfigSource>,
    /// One reload at a time.
    reloading: std::sync::Mutex<()>,
    /// The address the server is bound to, once it is.
    bound: OnceLock<std::net::SocketAddr>,
    /// Onboardings in progress; outlives reloads.
    oauth: admin::OAuthStates,
    /// Hashes of the paths already logged as unknown, so each is logged once (bounded in count,
    /// and 8 bytes each whatever the path's length: a scanner must not grow it).
    unknown_seen: UnknownSeen,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// What a request turned out to be, filled in as it goes, for its log line and its metrics.
struct Facts {
    /// When the request arrived.
    started: Instant,
    /// When the answer's head arrived (`None`: read the clock when the line is written).
    answered: Option<Instant>,
    /// Amazon's `x-amzn-RequestId`, once looked up (`None`: not yet).
    request_id: Option<Option<http::HeaderValue>>,
    seller: Option<Arc<str>>,
    /// `lwa`, `rdt`, `grantless`, or `none` when no token was chosen.
    token: &'static str,
    pii: Option<auth::Pii>,
    queued: Duration,
}

impl Facts {
    fn new(started: Instant) -> Self {
        Facts {
            started,
            answered: None,
            request_id: None,
            seller: None,
            token: "none",
            pii: None,
            queued: Duration::ZERO,
        }
    }
}

/// A wait for quota after which the token is asked for again. Shorter waits cannot age it: a
/// token is used only until a tenth of its lifetime (at most a minute) before it expires.
const REASK_AFTER: Duration = Duration::from_millis(1);

/// Per-request context, carried through the phases once the seller and region are known.
struct Ctx<'a> {
    op: Option<&'static Operation>,
    /// The seller's auth in the chosen region (`None`: a grantless call with no seller).
    seller: Option<&'a SellerAuth>,
    /// Whose quota.
    key: Key,
    /// The bucket the request draws on, looked up once (`None`: rate limiting is off).
    quota: Option<limiter::Quota>,
    forwarder: &'a Forwarder,
}

/// What sending a request again needs besides its body (see [`Proxy::settle`]).
struct Again<'a> {
    ctx: &'a Ctx<'a>,
    auth: &'a Auth,
    config: &'a Config,
    parts: &'a http::request::Parts,
    target: &'a PathAndQuery,
    plan: &'a TokenPlan,
    restricted: Option<bool>,
    deadline: Instant,
    path: &'a str,
}

/// Hashes of unknown paths already logged, with the hasher's random keys.
#[derive(Default)]
struct UnknownSeen {
    hasher: std::hash::RandomState,
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl UnknownSeen {
    fn hash_one(&self, value: impl std::hash::Hash) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held for the memo's entries.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.lock().capacity() * std::mem::size_of::<u64>()
    }
}

/// How many distinct unknown paths are remembered for log-once.
const UNKNOWN_PATHS_REMEMBERED: usize = 10_000;

impl Proxy {
    /// Builds the proxy from validated config. Nothing is fetched until the first request.
    pub fn new(config: &Config) -> Result<Proxy, ConfigError> {
        let with_shared = with_shared_sellers(config.clone());
        let config = &with_shared;
        let shared = config
            .shared_state
            .as_ref()
            .map(|s| crate::shared::Redis::new(s, config.replicas))
            .transpose()?;
        let settings = limiter::Settings::from_config(config);
        let limiter = Arc::new(match &shared {
            Some(redis) => Limiter::with_store(
                settings,
                Arc::new(crate::shared::buckets::RedisStore::new(Arc::clone(redis))),
            ),
            None => Limiter::new(settings),
        });
        let clients = config
            .max_connections
            .unwrap_or_else(crate::server::default_max_connections);
        let slots = forward::UpstreamSlots::for_clients(clients);
        let tokens = shared.as_ref().map(|redis| {
            Arc::new(crate::shared::tokens::RedisTokens::new(Arc::clone(redis)))
                as Arc<dyn crate::auth::store::TokenStore>
        });
        let state = State::new(config.clone(), &limiter, &slots, None, tokens)?;
        Ok(Proxy {
            catalog: Catalog::builtin(),
            limiter,
            slots,
            shared,
            state: ArcSwap::from_pointee(state),
            source: None,
            reloading: std::sync::Mutex::new(()),
            bound: OnceLock::new(),
            oauth: Default::default(),
            unknown_seen: Default::default(),
        })
    }

    /// Records the address the server actually listens on: a reload is judged against it, not
    /// against the `listen` in the file (which takes effect only at a restart).
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// Answers one request; never fails, because every error is turned into a response here.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let state = self.state.load_full();
        // The head stays here, lent to each step; only the body moves on.
        let (parts, body) = req.into_parts();
        let method = &parts.method;
        let full_path = parts.uri.path();
        let own = full_path.starts_with("/_proxy/");
        // `/_seller/NAME/...` names the seller for tools that cannot set headers; what follows
        // the prefix is what is matched and forwarded.
        let prefixed = seller_prefix(full_path);
        let path: &str = match &prefixed {
            Some(Ok((_, rest))) => rest,
            _ => full_path,
        };
        let op = if own {
            None
        } else {
            self.catalog.find(method, path)
        };
        // Everything logged while the request runs (token fetches, mints, waits) carries these
        // at debug level; at info the span costs nothing, and the summary line below says it.
        let span = tracing::debug_span!(
            "request",
            %method,
            path = &*crate::logging::capped(path),
            op = op.map_or("-", |o| o.id.as_str())
        );
        let mut cors_origin = None;
        let mut facts = Facts::new(started);
        let result = match self.admit(&state, &parts, path, &mut cors_origin) {
            Err(e) => Err(e),
            Ok(Admitted::Preflight(preflight)) => Ok(preflight),
            // Boxed: the request path's future holds room for every branch's state, and it is
            // moved whole; the own endpoints' large states stay out of it.
            Ok(Admitted::Key(key)) if own && documents::handles(path) => {
                crate::boxed!(self.documents(&state, &parts, body, key).instrument(span)).await
            }
            Ok(Admitted::Key(key)) if own => {
                crate::boxed!(self.own_endpoint(&state, &parts, key).instrument(span)).await
            }
            Ok(Admitted::Key(key)) => match prefixed {
                Some(Err(e)) => Err(e),
                prefixed => {
                    let seller = prefixed
                        .and_then(Result::ok)
                        .map(|(name, _)| name.to_string());
                    let pipeline = || {
                        let body = Inbound::Client(body);
                        self.proxy(&state, &parts, body, op, seller, key, &mut facts)
                    };
                    // Below debug the span is disabled: not wrapping the future saves moving
                    // it into the wrapper. Either way it is made where it is awaited.
                    if span.is_disabled() {
                        pipeline().await
                    } else {
                        pipeline().instrument(span).await
                    }
                }
            },
        };
        let m = metrics::metrics();
        // What a log line carries of the path: a client cannot write megabytes per request.
        let logged_path = crate::logging::capped(path);
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                if let ProxyError::RateLimited { .. } = e {
                    m.local_throttled
                        .get_or_create(&metrics::OperationLabels::new(
                            facts.seller.clone().unwrap_or_else(no_seller),
                            op,
                        ))
                        .inc();
                }
                if let ProxyError::ClientBody(_) = e {
                    // The client's own doing (bad chunking, a hang-up): nothing is wrong here.
                    tracing::info!(%method, path = &*logged_path, kind = e.kind(), error = %e, "request body broke off");
                } else if e.status().is_server_error() {
                    tracing::error!(%method, path = &*logged_path, kind = e.kind(), error = %e, "request failed");
                } else {
                    tracing::warn!(%method, path = &*logged_path, kind = e.kind(), error = %e, "request refused");
                }
                e.into_response()
            }
        };
        if let Some(origin) = cors_origin {
            Access::cors(origin, response.headers_mut());
        }
        let status = response.status().as_u16();
        if !own {
            m.request(metrics::RequestLabels {
                seller: facts.seller.clone().unwrap_or_else(no_seller),
                api: op.map_or("-", |o| o.api.as_str()),
                operation: op.map_or("-", |o| o.id.as_str()),
                status: metrics::status_class(status),
            });
        }
        let sink = crate::logging::request_sink();
        if sink == crate::logging::RequestSink::Off {
            return response;
        }
        // The answer's arrival, read when it came, stands for the end: the rest is microseconds.
        let ended = facts.answered.unwrap_or_else(Instant::now);
        let line = crate::logging::RequestLine {
            method: method.as_str(),
            path: &logged_path,
            seller: facts.seller.as_deref().unwrap_or("-"),
            op: op.map_or("-", |o| o.id.as_str()),
            status,
            latency_ms: u64::try_from(ended.saturating_duration_since(started).as_millis())
                .unwrap_or(u64::MAX),
            queue_ms: u64::try_from(facts.queued.as_millis()).unwrap_or(u64::MAX),
            token: facts.token,
            pii: facts.pii.map_or("-", |p| p.header_value()),
            request_id: match &facts.request_id {
                Some(looked) => looked.as_ref(),
                None => response.headers().get(REQUEST_ID),
            }
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        };
        // Written directly when the proxy's own subscriber is installed and this line is all
        // there is to write (info, not debug); through tracing otherwise. Same line either way.
        if let crate::logging::RequestSink::Direct(format) = sink {
            crate::logging::write_request(format, &line);
        } else {
            crate::logging::trace_request(&line);
        }
        response
    }

    /// Everything decided before a request may do anything, cheapest and most general first:
    /// one target, one meaning; `Host` names this proxy; no other site's web page; the inbound
    /// key (except for `/_proxy/health`). A CORS preflight from an allowed origin is answered
    /// here. `cors_origin` is set to the allowed origin an answer must carry CORS headers for.
    fn admit<'s>(
        &self,
        state: &'s State,
        req: &http::request::Parts,
        path: &str,
        cors_origin: &mut Option<http::HeaderValue>,
    ) -> Result<Admitted<'s>, ProxyError> {
        let access = &state.access;
        target::check(&req.method, &req.uri, |a| access.authority_allowed(a))?;
        let headers = &req.headers;
        let seen = access::Seen::read(headers);
        access.check_host(&seen)?;
        // Amazon's redirect back after onboarding's consent page: a navigation from another
        // site, without a key. Only a state this proxy issued lets it do anything.
        if path == admin::OAUTH_CALLBACK && req.method == Method::GET {
            return Ok(Admitted::Key(None));
        }
        *cors_origin = access.check_browser(&seen)?;
        if let Some(origin) = cors_origin.clone() {
            if access::is_preflight(&req.method, headers) {
                *cors_origin = None;
                return Ok(Admitted::Preflight(access.preflight(origin)));
            }
        }
        if path == "/_proxy/health" {
            return Ok(Admitted::Key(None));
        }

        Ok(Admitted::Key(access.check_key(headers)?))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the request's head (lent by `handle`, which logs it) and body, and what \
                  `handle` found out, passed once"
    )]
    async fn proxy(
        &self,
        state: &State,
        parts: &http::request::Parts,
        body: Inbound,
        op: Option<&'static Operation>,
        prefix_seller: Option<String>,
        inbound: Option<&InboundKey>,
        facts: &mut Facts,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let config = &state.config;
        // 0. Unknown requests: refuse, or forward under the shared default limit.
        if op.is_none() {
            self.unknown_request(config, &parts.method, parts.uri.path())?;
        }
        let Some(received) = parts.uri.path_and_query() else {
            // CONNECT's authority form: nothing an SP-API call looks like.
            return Err(ProxyError::BadRequest("the request has no path".into()));
        };
        // What goes upstream: the target exactly as received, minus a `/_seller/NAME` prefix.
        let target = match &prefix_seller {
            None => received.clone(),
            Some(name) => {
                let rest = &received.as_str()[SELLER_PREFIX.len() + name.len()..];
                PathAndQuery::try_from(rest).map_err(|e| {
                    ProxyError::BadRequest(format!("bad path after the seller prefix: {e}"))
                })?
            }
        };
        let path = target.path();
        let own = OwnHeaders::read(&parts.headers)?;

        // 1. Which token: decided before any I/O, so a request we refuse costs no token call.
        let plan = state.plan(op, path, own.data_elements)?;
        let restricted = restricted_header(own.restricted)?;
        let max_wait = self.max_wait(config, own.max_wait)?;
        let deadline = facts.started + max_wait;

        // 2. Whose request: the seller named by header or prefix (which must agree), else the
        //    default; a key limited to sellers acts only for them.
        let named = match (own.seller, &prefix_seller) {
            (Some(h), Some(p)) if h != p => {
                return Err(ProxyError::BadRequest(format!(
                    "{} names `{h}` but the path prefix names `{p}`",
                    auth::SELLER_HEADER
                )))
            }
            (Some(h), _) => Some(h),
            (None, p) => p.as_deref(),
        };
        let grantless = matches!(plan, TokenPlan::Grantless { .. });
        let limit = inbound.and_then(|k| k.sellers.as_deref());
        // An application-wide operation (grantless: notifications destinations, the client
        // secret's rotation) affects every seller: only an unrestricted key may call it.
        if grantless && limit.is_some() {
            return Err(ProxyError::SellerNotAllowed(format!(
                "the application-wide operation {}, which affects every seller; it needs a key \
                 that is not limited to sellers",
                op.map_or("-", |o| o.id.as_str())
            )));
        }
        let seller = state.auth.seller(named, !grantless, limit)?;
        // A grantless call is the application's, whoever the default seller is.
        facts.seller = seller.filter(|_| !grantless).map(|s| Arc::clone(&s.name));
        // Logged once the cheap refusals are behind it: a refused request stores nothing.
        if op.is_none() {
            self.note_unknown(&parts.method, path);
        }

        // 3. Hold small bodies so that a request can be replayed once with a fresh token.
        let mut body = match body {
            // No body (a GET): nothing to wait for.
            Inbound::Client(b) if b.is_end_stream() => RequestBody::Buffered(Bytes::new()),
            body => self.read_body(config, body).await?,
        };

        // 4. Which region: forced by header, else the request's marketplaces, else the
        //    seller's own.
        let region = match region::from_header(own.region)? {
            Some(r) => r,
            None => match region::from_query(target.query())? {
                Some(r) => Some(r),
                None => match &body {
                    RequestBody::Buffered(b) if !b.is_empty() => region::from_body(b)?,
                    _ => None,
                },
            }
            .or(seller.map(|s| s.config.region))
            .unwrap_or(config.region),
        };
        let seller_auth = match seller {
            Some(s) if !grantless => Some(&**s.region(region)),
            _ => None,
        };
        let key = seller_auth.map_or_else(|| Key::application(region), |s| s.key.clone());
        let ctx = Ctx {
            op,
            seller: seller_auth,
            quota: self.limiter.quota(&key, op),
            key,
            forwarder: &state.forwarders[region.index()],
        };

        // 5. Quota, first look: a full queue or a wait past max_wait is refused now, before
        //    any token call.
        if let Some(quota) = &ctx.quota {
            self.limiter.precheck_in(quota, max_wait)?;
        }

        // 6. The token (LWA, grantless or RDT), before queueing: a cold cache is filled now,
        //    not between our turn and the send. Amazon's bucket starts refilling when our
        //    first request arrives, so that request must not be late. The cached token is
        //    taken without a future; fetching one is boxed (its state is large and rare).
        let auth = &state.auth;
        let mut chosen = match auth.cached(ctx.seller, &plan) {
            Some(chosen) => chosen,
            None => {
                let chosen = crate::boxed!(auth.token(ctx.seller, &plan, restricted)).await?;
                // The fetch took time: the queue is looked at again before it is joined.
                if let Some(quota) = &ctx.quota {
                    self.limiter.precheck_in(quota, remaining(deadline))?;
                }
                chosen
            }
        };
        facts.token = chosen.source.kind();

        // 7. Quota: wait our turn in this operation's bucket, or refuse without calling Amazon.
        let mut queued = Duration::ZERO;
        if let Some(quota) = &ctx.quota {
            queued = crate::boxed!(self.limiter.acquire_in(quota, remaining(deadline))).await?;
            facts.queued = queued;
            metrics::metrics().queued(op, queued);
            if queued >= REASK_AFTER {
                // A wait may have aged the token: ask again, the way step 6 does.
                chosen = match auth.cached(ctx.seller, &plan) {
                    Some(chosen) => chosen,
                    None => crate::boxed!(auth.token(ctx.seller, &plan, restricted)).await?,
                };
            }
        }

        // 8. Forward (what `send` does, in its three steps: this future holds the exchange
        //    itself, not a future around it).
        let at = Instant::now();
        let answer = self
            .start_send(&ctx, parts, &target, &mut body, &chosen.token, at)
            .await;
        let (mut upstream, sent) = self.sent(&ctx, &body, answer, at)?;
        // Boxed, and only when Amazon's answer carries its rate: the bucket's store may wait.
        if let Some((quota, rate)) = upstream::rate_seen(&ctx, &upstream) {
            crate::boxed!(self.limiter.observe_rate_in(quota, rate)).await;
        }
        facts.answered = Some(sent.answered);

        // 9-11. Amazon rejected the token, throttled us, or listed report documents: each
        //       needs the answer read or the request sent again (boxed: rare, and large).
        let status = upstream.status();
        if status == StatusCode::FORBIDDEN
            || status == StatusCode::TOO_MANY_REQUESTS
            || (status.is_success() && op.is_some_and(lists_report_documents))
        {
            let again = Again {
                ctx: &ctx,
                auth,
                config,
                parts,
                target: &target,
                plan: &plan,
                restricted,
                deadline,
                path,
            };
            crate::boxed!(self.settle(
                again,
                &mut body,
                &mut upstream,
                &mut chosen,
                &mut queued,
                sent.at,
            ))
            .await?;
            facts.answered = None;
        }
        if upstream.status() != StatusCode::FORBIDDEN {
            if let Some(s) = ctx.seller {
                s.accepted(&chosen);
            }
        }

        facts.queued = queued;
        facts.token = chosen.source.kind();
        facts.pii = chosen.pii;

        // 12. Amazon's answer goes back untouched, minus hop-by-hop headers, plus the wait.
        // Its request id is found in the pass over its names that strips them, not by a
        // lookup hashing this long name (150 instructions).
        let (mut response, request_id) = upstream.into_response(ctx.labels());
        facts.request_id = Some(request_id);
        let headers = response.headers_mut();
        let queued_ms = u64::try_from(queued.as_millis()).unwrap_or(u64::MAX);
        headers.insert(
            QUEUED_MS_HEADER,
            match queued_ms {
                // The usual answer, without formatting (and allocating) a number.
                0 => http::HeaderValue::from_static("0"),
                ms => http::HeaderValue::from(ms),
            },
        );
        if let Some(pii) = chosen.pii {
            headers.insert(auth::PII_HEADER, pii.header());
        }
        Ok(response)
    }

    /// Steps 9 to 11 of [`Proxy::proxy`], for the answers that need more than passing on: a
    /// rejected token (replaced, and the request replayed once), a 429 (the bucket slowed, and
    /// the request retried when safe), a list of report documents (learnt).
    async fn settle(
        &self,
        again: Again<'_>,
        body: &mut RequestBody,
        upstream: &mut Upstream,
        chosen: &mut Chosen,
        queued: &mut Duration,
        mut sent_at: Instant,
    ) -> Result<(), ProxyError> {
        let Again {
            ctx,
            auth,
            config,
            parts,
            target,
            plan,
            restricted,
            deadline,
            path,
        } = again;
        let op = ctx.op;

        // 9. Amazon says the token expired or is invalid: drop it, get a new one, replay once
        //    (if the body was held). A fresh token rejected too means the credentials
        //    themselves are not accepted: /_proxy/ready says so.
        if upstream.status() == StatusCode::FORBIDDEN {
            upstream.take_whole(MAX_INSPECTED_403).await?;
            if upstream.says_token_rejected() {
                auth.reject(ctx.seller, chosen);
                if body.replayable() {
                    tracing::info!(path = &*crate::logging::capped(path), source = ?chosen.source, "Amazon rejected the token; replacing it and replaying once");
                    metrics::metrics()
                        .replays
                        .get_or_create(&ctx.labels())
                        .inc();
                    *chosen = auth.token(ctx.seller, plan, restricted).await?;
                    if let Some(quota) = &ctx.quota {
                        self.limiter.precheck_in(quota, remaining(deadline))?;
                        *queued += self.limiter.acquire_in(quota, remaining(deadline)).await?;
                    }
                    let sent;
                    (*upstream, sent) = self.send(ctx, parts, target, body, &chosen.token).await?;
                    sent_at = sent.at;
                    if upstream.status() == StatusCode::FORBIDDEN {
                        upstream.take_whole(MAX_INSPECTED_403).await?;
                        if upstream.says_token_rejected() {
                            if let Some(s) = ctx.seller {
                                s.rejected_fresh(chosen, &upstream.text());
                            }
                        }
                    }
                }
            }
        }

        // 10. Amazon throttled us anyway (someone else shares the quota): slow the bucket down
        //     and retry requests that are safe to repeat, within the same max wait, taking
        //     the next slot rather than rejoining the back of the queue.
        //     The bucket slows down on every 429, whether or not the request is retried.
        let mut retries = 0;
        while upstream.status() == StatusCode::TOO_MANY_REQUESTS {
            let Some(quota) = &ctx.quota else { break };
            self.limiter
                .throttled_in(quota, tokio::time::Instant::from_std(sent_at))
                .await;
            let retry = retries < config.throttle_retries
                && safe_to_repeat(config, &parts.method)
                && body.replayable();
            if !retry {
                break;
            }
            // At the front of the queue: it waited its turn once already.
            let Ok(waited) = self
                .limiter
                .acquire_again_in(quota, remaining(deadline))
                .await
            else {
                break;
            };
            *queued += waited;
            retries += 1;
            tracing::info!(
                path = &*crate::logging::capped(path),
                retries,
                "Amazon answered 429; retrying after waiting for quota"
            );
            let sent;
            (*upstream, sent) = self.send(ctx, parts, target, body, &chosen.token).await?;
            sent_at = sent.at;
        }

        // 11. getReport/getReports answers say which report documents are restricted.
        if op.is_some_and(lists_report_documents) && upstream.status().is_success() {
            upstream.take_whole(MAX_LEARNED_BODY).await?;
            if let (Upstream::Read { body, .. }, Some(s)) = (&*upstream, ctx.seller) {
                s.learn_reports(body);
            }
        }
        Ok(())
    }

    /// `max_wait`, shortened (never lengthened) by the request's `x-spapi-max-wait`.
    fn max_wait(&self, config: &Config, value: Option<&str>) -> Result<Duration, ProxyError> {
        let Some(v) = value else {
            return Ok(config.max_wait);
        };
        match v.trim().parse::<f64>() {
            // Clamped to max_wait before converting, so no value can overflow a Duration.
            Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs)
                .map_or(config.max_wait, |d| d.min(config.max_wait))),
            _ => Err(ProxyError::BadRequest(format!(
                "{MAX_WAIT_HEADER}: `{v}` is not a number of seconds"
            ))),
        }
    }

    /// Unknown requests are refused when the config says so; otherwise they go on, under the
    /// shared default bucket.
    fn unknown_request(
        &self,
        config: &Config,
        method: &Method,
        path: &str,
    ) -> Result<(), ProxyError> {
        if config.unknown_operations == UnknownOperations::Reject {
            return Err(ProxyError::NoRoute {
                method: method.to_string(),
                path: crate::logging::capped(path).into_owned(),
            });
        }
        Ok(())
    }

    /// Logs an unknown path the first time it is forwarded. Only a hash of each is kept, at
    /// most [`UNKNOWN_PATHS_REMEMBERED`] of them: a scanner's long paths cost 8 bytes each.
    fn note_unknown(&self, method: &Method, path: &str) {
        let hash = self.unknown_seen.hash_one((method.as_str(), path));
        let mut seen = self.unknown_seen.lock();
        if seen.len() < UNKNOWN_PATHS_REMEMBERED && seen.insert(hash) {
            drop(seen);
            tracing::warn!(%method, path = &*crate::logging::capped(path), "no SP-API operation matches; forwarding with the LWA token under the shared default limit (logged once per path)");
        }
    }
}

impl Ctx<'_> {
    /// The request's seller and operation, as metric labels.
    fn labels(&self) -> metrics::OperationLabels {
        metrics::OperationLabels::new(self.key.seller.clone().unwrap_or_else(no_seller), self.op)
    }
}

/// With `shared_state`, the sellers onboarding stored in Redis join the config's (a config
/// file's `sellers_file` ones were added when it was parsed).
pub(crate) fn with_shared_sellers(mut config: Config) -> Config {
    if config.shared_state.is_some() {
        if let Ok(found) = crate::config::stored::load_for(&config) {
            config.add_stored(found);
        }
    }
    config
}

/// The seller label of a request that has none.
pub(crate) fn no_seller() -> Arc<str> {
    static DASH: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));
    Arc::clone(&DASH)
}

/// What [`Proxy::admit`] let through: a preflight it answered, or a request, with the inbound
/// key it presented (`None` when no keys are configured, or for `/_proxy/health`).
enum Admitted<'s> {
    Preflight(Response<ProxyBody>),
    Key(Option<&'s InboundKey>),
}

/// The path prefix naming a seller.
const SELLER_PREFIX: &str = "/_seller/";

/// `/_seller/NAME/rest` as `(NAME, /rest)`; `None` without the prefix, an error when the
/// prefix is there but no path follows it.
fn seller_prefix(path: &str) -> Option<Result<(&str, &str), ProxyError>> {
    let after = path.strip_prefix(SELLER_PREFIX)?;
    let parsed = after
        .find('/')
        .map(|i| after.split_at(i))
        .filter(|(name, rest)| !name.is_empty() && !rest.starts_with("/_proxy/"));
    Some(parsed.ok_or_else(|| {
        ProxyError::BadRequest(format!(
            "`{path}`: a seller prefix is /_seller/NAME/ followed by the SP-API path"
        ))
    }))
}

/// GET, HEAD and DELETE may be repeated; PUT and PATCH only if configured; POST never.
fn safe_to_repeat(config: &Config, method: &Method) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::DELETE => true,
        Method::PUT | Method::PATCH => config.retry_put_patch,
        _ => false,
    }
}

fn list(names: &[&String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(toml: &str) -> Config {
        let env = |k: &str| match k {
            "SPAPI_CLIENT_ID" => Some("amzn1.application-oa2-client.test".to_string()),
            "SPAPI_CLIENT_SECRET" => Some("secret".to_string()),
            "SPAPI_REFRESH_TOKEN" => Some("Atzr|test".to_string()),
            _ => None,
        };
        Config::from_toml_str(toml, "t.toml", &env).unwrap()
    }

    /// 10,500 distinct unknown paths of 60 KB (630 MB of text) leave the memo at the size of
    /// its hashes; remembered ones are not logged again.
    #[test]
    fn the_unknown_path_memo_is_bounded_by_bytes() {
        let proxy = Proxy::new(&test_config("")).unwrap();
        let mut path = format!("/scan/{}", "a".repeat(60_000));
        for i in 0..10_500u32 {
            path.truncate(60_006);
            path.push_str(itoa::Buffer::new().format(i));
            proxy.note_unknown(&Method::GET, &path);
        }
        let held = proxy.unknown_seen.held_bytes();
        assert!(held < 1024 * 1024, "{held} bytes held");
        assert_eq!(proxy.unknown_seen.lock().len(), UNKNOWN_PATHS_REMEMBERED);
    }

    /// The plans kept per operation are the plans: for every operation, two requests with
    /// different ids get what `auth::plan` decides for each (a plan naming the request's own
    /// path must not be served from the first request's).
    #[tokio::test]
    async fn kept_plans_are_what_plan_decides() {
        let env = |k: &str| match k {
            "SPAPI_CLIENT_ID" => Some("amzn1.application-oa2-client.test".to_string()),
            "SPAPI_CLIENT_SECRET" => Some("secret".to_string()),
            "SPAPI_REFRESH_TOKEN" => Some("Atzr|test".to_string()),
            _ => None,
        };
        let toml = "restricted_data = \"always\"\n[operations.ordersV0.getOrder]\ndata_elements = [\"buyerInfo\"]\n";
        let config = Config::from_toml_str(toml, "t.toml", &env).unwrap();
        let limiter = Arc::new(Limiter::new(limiter::Settings::from_config(&config)));
        let slots = forward::UpstreamSlots::for_clients(1000);
        let state = State::new(config, &limiter, &slots, None, None).unwrap();
        let config = Arc::clone(&state.config);
        let mut path_bound = 0;
        for op in Catalog::builtin().operations() {
            for id in ["first", "second"] {
                let path = op.template.replace('{', id).replace('}', "");
                let want = auth::plan(
                    Some(op),
                    &path,
                    None,
                    config
                        .operations
                        .get(&op.index)
                        .and_then(|s| s.data_elements.as_deref()),
                    config.restricted_data_for(op),
                );
                let got = state.plan(Some(op), &path, None);
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{} at {path}",
                    op.id
                );
            }
            path_bound += usize::from(auth::plan_depends_on_path(op));
        }
        assert!(path_bound > 0, "some plans name the request's path");
        // A request naming dataElements is decided afresh.
        let order = Catalog::builtin()
            .by_qualified("ordersV0", "getOrder")
            .unwrap();
        let named = state.plan(Some(order), "/orders/v0/orders/1", Some("shippingAddress"));
        let Ok(TokenPlan::Rdt { resource, .. }) = named else {
            panic!("{named:?}");
        };
        assert_eq!(resource.data_elements, ["shippingAddress"]);
    }
}
