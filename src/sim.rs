//! A local stand-in for LWA and SP-API on loopback, used by `demo` and by the tests.
//!
//! It checks what Amazon checks (token present, known, unexpired and single; `x-amz-date`;
//! `user-agent`), answers a handful of operations with small realistic bodies, records every
//! request it receives, and lets a test inject faults and read counters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::{full, ProxyBody};
use crate::operations::{Catalog, Operation};

/// The path of the simulated LWA token endpoint.
pub const TOKEN_PATH: &str = "/auth/o2/token";
/// Requests remembered for [`Simulator::requests`]; the oldest half goes when it is reached.
const MAX_RECORDED: usize = 200_000;

/// The demo credentials the simulator accepts by default.
pub const SIM_CLIENT_ID: &str = "amzn1.application-oa2-client.simulator";
/// The demo client secret.
pub const SIM_CLIENT_SECRET: &str = "sim-client-secret";
/// The demo refresh token.
pub const SIM_REFRESH_TOKEN: &str = "Atzr|sim-refresh-token";

/// A fault in the simulated LWA endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LwaFault {
    /// Answer 500 `server_error`.
    ServerError,
    /// Answer 400 `invalid_grant` (a revoked or wrong refresh token).
    InvalidGrant,
    /// Answer 401 `invalid_client` (a wrong client id or secret).
    InvalidClient,
}

/// One request as the simulated SP-API received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query exactly as received.
    pub path_and_query: String,
    /// Every header, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    /// The status the simulator answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
    /// The catalog operation it matched (`api.operationId`), if any.
    pub operation: Option<String>,
}

impl Recorded {
    /// All values of one header.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One entry of an RDT's `restrictedResources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Method.
    pub method: String,
    /// Generic template or specific path.
    pub path: String,
    /// dataElements granted.
    pub data_elements: Vec<String>,
}

impl Resource {
    /// Whether this resource covers a request: same method, and the same path or a template
    /// whose `{param}` segments stand for the request's ids.
    fn covers(&self, method: &Method, path: &str) -> bool {
        if self.method != method.as_str() {
            return false;
        }
        let want: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let got: Vec<&str> = path.trim_matches('/').split('/').collect();
        want.len() == got.len()
            && want
                .iter()
                .zip(&got)
                .all(|(w, g)| w == g || (w.starts_with('{') && w.ends_with('}')))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    Seller,
    Grantless { scope: String },
    Rdt { resources: Vec<Resource> },
}

#[derive(Debug)]
struct IssuedToken {
    expires_at: Instant,
    kind: TokenKind,
}

#[derive(Debug)]
struct Settings {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_lifetime: Duration,
    lwa_fault: Option<LwaFault>,
    lwa_latency: Duration,
    upstream_fault: Option<(u16, usize)>,
    upstream_latency: Duration,
    rdt_refusal: Option<(u16, String, String)>,
    enforce_limits: bool,
}

/// Amazon's side of a usage plan: a classic token bucket per operation.
#[derive(Debug)]
struct SimBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
    /// A rate change takes effect with the next request it admits, and that request's answer
    /// already reports it, the way a changed usage plan shows up in the next response.
    pending_rate: Option<f64>,
}

impl SimBucket {
    fn new(rate: f64, burst: u32) -> SimBucket {
        SimBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            updated: Instant::now(),
            pending_rate: None,
        }
    }

    fn admit(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + (now - self.updated).as_secs_f64() * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        if let Some(rate) = self.pending_rate.take() {
            self.rate = rate;
        }
        true
    }
}

#[derive(Debug)]
struct State {
    settings: Mutex<Settings>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    requests: Mutex<Vec<Recorded>>,
    lwa_calls: AtomicU64,
    client_credentials_scopes: Mutex<Vec<String>>,
    mints: Mutex<Vec<Resource>>,
    target_applications: Mutex<Vec<Option<String>>>,
    buckets: Mutex<HashMap<usize, SimBucket>>,
    throttled: AtomicU64,
    token_rejections: AtomicU64,
    counter: AtomicU64,
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0` with the demo credentials and one-hour tokens.
    pub async fn start() -> std::io::Result<Simulator> {
        Simulator::start_on(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Starts a simulator on a bound listener.
    pub fn start_on(listener: TcpListener) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            settings: Mutex::new(Settings {
                client_id: SIM_CLIENT_ID.into(),
                client_secret: SIM_CLIENT_SECRET.into(),
                refresh_token: SIM_REFRESH_TOKEN.into(),
                token_lifetime: Duration::from_secs(3600),
                lwa_fault: None,
                lwa_latency: Duration::ZERO,
                upstream_fault: None,
                upstream_latency: Duration::ZERO,
                rdt_refusal: None,
                enforce_limits: false,
            }),
            tokens: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            lwa_calls: AtomicU64::new(0),
            client_credentials_scopes: Mutex::new(Vec::new()),
            mints: Mutex::new(Vec::new()),
            target_applications: Mutex::new(Vec::new()),
            buckets: Mutex::new(HashMap::new()),
            throttled: AtomicU64::new(0),
            token_rejections: AtomicU64::new(0),
            counter: AtomicU64::new(0),
        });
        let (stop, mut stopped) = oneshot::channel();
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&serving);
                        let service = service_fn(move |req| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                        tokio::spawn(conn);
                    }
                    _ = &mut stopped => break,
                }
            }
        });
        Ok(Simulator {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The LWA token URL.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.url())
    }

    /// `expires_in` for tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state.settings).token_lifetime = lifetime;
    }

    /// Makes LWA fail (or, with `None`, work again).
    pub fn set_lwa_fault(&self, fault: Option<LwaFault>) {
        lock(&self.state.settings).lwa_fault = fault;
    }

    /// Delays every LWA answer.
    pub fn set_lwa_latency(&self, latency: Duration) {
        lock(&self.state.settings).lwa_latency = latency;
    }

    /// The next `count` SP-API requests are answered with `status` (e.g. 503).
    pub fn fail_upstream(&self, status: u16, count: usize) {
        lock(&self.state.settings).upstream_fault = Some((status, count));
    }

    /// Delays every SP-API answer.
    pub fn set_upstream_latency(&self, latency: Duration) {
        lock(&self.state.settings).upstream_latency = latency;
    }

    /// The Tokens API refuses every mint with this status, code and message (`None`: mints work).
    pub fn set_rdt_refusal(&self, refusal: Option<(u16, &str, &str)>) {
        lock(&self.state.settings).rdt_refusal =
            refusal.map(|(s, c, m)| (s, c.to_string(), m.to_string()));
    }

    /// Enforces every operation's published usage plan (rate and burst from the catalog),
    /// answering 429 `QuotaExceeded` when a bucket is empty, as Amazon does.
    pub fn enforce_rate_limits(&self, on: bool) {
        lock(&self.state.settings).enforce_limits = on;
    }

    /// Changes the rate Amazon applies to every operation named `operation` (an operationId
    /// or `api.operationId`), effective from the next request it admits.
    pub fn set_rate(&self, operation: &str, rate: f64) {
        let catalog = Catalog::builtin();
        let ops: Vec<&Operation> = match operation.split_once('.') {
            Some((api, id)) => catalog.by_qualified(api, id).into_iter().collect(),
            None => catalog.by_id(operation),
        };
        let mut buckets = lock(&self.state.buckets);
        for op in ops {
            buckets
                .entry(op.index)
                .or_insert_with(|| SimBucket::new(op.rate.unwrap_or(1.0), op.burst.unwrap_or(5)))
                .pending_rate = Some(rate);
        }
    }

    /// How many requests were answered 429 because a bucket was empty.
    pub fn throttled(&self) -> u64 {
        self.state.throttled.load(Ordering::SeqCst)
    }

    /// Every RDT issued so far expires now; LWA tokens stay valid.
    pub fn expire_rdts(&self) {
        let now = Instant::now();
        for t in lock(&self.state.tokens).values_mut() {
            if matches!(t.kind, TokenKind::Rdt { .. }) {
                t.expires_at = now;
            }
        }
    }

    /// Every restricted resource an RDT was minted for, in order.
    pub fn rdt_mints(&self) -> Vec<Resource> {
        lock(&self.state.mints).clone()
    }

    /// The `targetApplication` of every mint, in order (`None` when absent).
    pub fn rdt_target_applications(&self) -> Vec<Option<String>> {
        lock(&self.state.target_applications).clone()
    }

    /// The scope of every client_credentials grant LWA answered, in order.
    pub fn client_credentials_scopes(&self) -> Vec<String> {
        lock(&self.state.client_credentials_scopes).clone()
    }

    /// Every token issued so far expires now, as if an hour had passed.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for t in lock(&self.state.tokens).values_mut() {
            t.expires_at = now;
        }
    }

    /// How many times the LWA endpoint was called.
    pub fn lwa_calls(&self) -> u64 {
        self.state.lwa_calls.load(Ordering::SeqCst)
    }

    /// How many SP-API requests were refused for a missing, unknown, expired or doubled token.
    pub fn token_rejections(&self) -> u64 {
        self.state.token_rejections.load(Ordering::SeqCst)
    }

    /// Every access token issued so far (for tests that check nothing leaked).
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.tokens).keys().cloned().collect()
    }

    /// Every SP-API request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }
}

/// The simulator's deterministic body byte at `offset` (for `/_sim/bytes`).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.uri().path() == TOKEN_PATH {
        lwa(state, req).await
    } else {
        spapi(state, req).await
    }
}

fn json_response(status: u16, value: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn spapi_error(status: u16, code: &str, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        json!({"errors": [{"code": code, "message": message, "details": ""}]}),
    )
}

async fn lwa(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    state.lwa_calls.fetch_add(1, Ordering::SeqCst);
    let (fault, latency) = {
        let s = lock(&state.settings);
        (s.lwa_fault, s.lwa_latency)
    };
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let lwa_error = |status, error: &str, description: &str| {
        json_response(
            status,
            json!({"error": error, "error_description": description}),
        )
    };
    match fault {
        Some(LwaFault::ServerError) => return lwa_error(500, "server_error", "simulated outage"),
        Some(LwaFault::InvalidGrant) => {
            return lwa_error(
                400,
                "invalid_grant",
                "The request has an invalid grant parameter : refresh_token",
            )
        }
        Some(LwaFault::InvalidClient) => {
            return lwa_error(401, "invalid_client", "Client authentication failed")
        }
        None => {}
    }
    let Ok(body) = body else {
        return lwa_error(400, "invalid_request", "unreadable body");
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let (lifetime, client_ok, refresh_ok) = {
        let s = lock(&state.settings);
        (
            s.token_lifetime,
            field("client_id") == s.client_id && field("client_secret") == s.client_secret,
            field("refresh_token") == s.refresh_token,
        )
    };
    if !client_ok {
        return lwa_error(401, "invalid_client", "Client authentication failed");
    }
    let kind = match field("grant_type") {
        "refresh_token" if form.contains_key("scope") => {
            return lwa_error(
                400,
                "invalid_request",
                "send refresh_token or scope, not both",
            )
        }
        "refresh_token" if refresh_ok => TokenKind::Seller,
        "refresh_token" => {
            return lwa_error(
                400,
                "invalid_grant",
                "The request has an invalid grant parameter : refresh_token",
            )
        }
        "client_credentials" if form.contains_key("refresh_token") => {
            return lwa_error(
                400,
                "invalid_request",
                "send refresh_token or scope, not both",
            )
        }
        "client_credentials" if !field("scope").is_empty() => {
            lock(&state.client_credentials_scopes).push(field("scope").to_string());
            TokenKind::Grantless {
                scope: field("scope").to_string(),
            }
        }
        "client_credentials" => return lwa_error(400, "invalid_scope", "scope is required"),
        _ => return lwa_error(400, "unsupported_grant_type", "unknown grant_type"),
    };
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("Atza|sim-{n}-{:x}", pseudo_random(n));
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + lifetime,
            kind,
        },
    );
    json_response(
        200,
        json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
            "refresh_token": field("refresh_token"),
        }),
    )
}

fn pseudo_random(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (n ^ nanos).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// `YYYYMMDDTHHMMSSZ`.
fn valid_amz_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// SP-API's refusal: status, code, message.
type Refusal = (u16, &'static str, &'static str);

/// Checks the headers SP-API checks; returns what the token is.
fn check_request(state: &State, headers: &HeaderMap) -> Result<TokenKind, Refusal> {
    let denied = |message: &'static str| {
        state.token_rejections.fetch_add(1, Ordering::SeqCst);
        Err((403, "Unauthorized", message))
    };
    let tokens: Vec<&HeaderValue> = headers.get_all("x-amz-access-token").iter().collect();
    let token = match tokens.as_slice() {
        [] => return denied("Access to requested resource is denied."),
        [one] => one.to_str().unwrap_or(""),
        _ => return denied("The security token included in the request is invalid."),
    };
    let kind = match lock(&state.tokens).get(token) {
        None => return denied("The security token included in the request is invalid."),
        Some(t) if Instant::now() >= t.expires_at => {
            return denied("The security token included in the request is expired")
        }
        Some(t) => t.kind.clone(),
    };
    let date_ok = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .is_some_and(valid_amz_date);
    if !date_ok {
        return Err((
            400,
            "InvalidInput",
            "Missing or malformed x-amz-date header (expected YYYYMMDDTHHMMSSZ).",
        ));
    }
    if headers.get_all(http::header::USER_AGENT).iter().count() != 1 {
        return Err((
            400,
            "InvalidInput",
            "A single user-agent header is required.",
        ));
    }
    Ok(kind)
}

/// Takes a token from the operation's bucket when limits are enforced.
fn admit(state: &State, op: Option<&Operation>) -> bool {
    let Some(op) = op else { return true };
    if !lock(&state.settings).enforce_limits {
        return true;
    }
    let (Some(rate), Some(burst)) = (op.rate, op.burst) else {
        return true;
    };
    lock(&state.buckets)
        .entry(op.index)
        .or_insert_with(|| SimBucket::new(rate, burst))
        .admit()
}

/// The rate reported in `x-amzn-RateLimit-Limit`: the bucket's, or the published one.
fn current_rate(state: &State, op: Option<&Operation>) -> Option<f64> {
    let op = op?;
    match lock(&state.buckets).get(&op.index) {
        Some(b) => Some(b.rate),
        None => op.rate,
    }
}

async fn spapi(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (fault, latency) = {
        let mut s = lock(&state.settings);
        let fault = match &mut s.upstream_fault {
            Some((status, left)) if *left > 0 => {
                *left -= 1;
                Some(*status)
            }
            _ => None,
        };
        (fault, s.upstream_latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let op = if req.uri().path().starts_with("/_sim/") {
        None
    } else {
        Catalog::builtin().find(req.method(), req.uri().path())
    };
    let mut resp = match fault {
        Some(429) => spapi_error(
            429,
            "QuotaExceeded",
            "You exceeded your quota for the requested resource.",
        ),
        Some(status) => spapi_error(status, "ServiceUnavailable", "Simulated failure."),
        None => match check_request(state, req.headers()) {
            Err((status, code, message)) => spapi_error(status, code, message),
            Ok(_) if !admit(state, op) => {
                state.throttled.fetch_add(1, Ordering::SeqCst);
                spapi_error(
                    429,
                    "QuotaExceeded",
                    "You exceeded your quota for the requested resource.",
                )
            }
            Ok(kind) => route(state, req, &kind).await,
        },
    };
    // Amazon sends the rate on 2xx, 400 and 404 answers only.
    let status = resp.status().as_u16();
    if (200..300).contains(&status) || status == 400 || status == 404 {
        if let Some(rate) = current_rate(state, op) {
            if let Ok(v) = HeaderValue::from_str(&format!("{rate}")) {
                resp.headers_mut().insert("x-amzn-RateLimit-Limit", v);
            }
        }
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    resp.headers_mut().insert(
        "x-amzn-RequestId",
        HeaderValue::from_str(&format!("sim-{n:08x}-{:04x}", pseudo_random(n) & 0xffff))
            .expect("hex"),
    );
    let mut requests = lock(&state.requests);
    if requests.len() >= MAX_RECORDED {
        // A long demo must not grow without end; tests stay far below this.
        requests.drain(..MAX_RECORDED / 2);
    }
    requests.push(Recorded {
        method,
        path_and_query,
        headers,
        status: resp.status().as_u16(),
        at: arrived,
        operation: op.map(Operation::qualified),
    });
    resp
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn denied() -> Response<ProxyBody> {
    spapi_error(
        403,
        "Unauthorized",
        "Access to requested resource is denied.",
    )
}

/// What a restricted operation needs, as Amazon enforces it.
enum Need {
    /// Any seller token (LWA or a covering RDT); PII only with an RDT that grants it.
    SellerToken,
    /// An RDT covering the request; the LWA token is refused.
    Rdt,
    /// An RDT naming exactly this path (restricted report documents).
    RdtSpecific,
    /// A grantless token with this scope.
    Scope(&'static str),
}

/// Checks the token against what the operation needs: the granted dataElements, or `None`
/// when Amazon would deny access.
fn authorize(kind: &TokenKind, need: Need, method: &Method, path: &str) -> Option<Vec<String>> {
    let covering = |exact: bool| match kind {
        TokenKind::Rdt { resources } => resources
            .iter()
            .find(|r| {
                if exact {
                    r.method == method.as_str() && r.path == path
                } else {
                    r.covers(method, path)
                }
            })
            .map(|r| r.data_elements.clone()),
        _ => None,
    };
    match (need, kind) {
        (Need::Scope(scope), TokenKind::Grantless { scope: granted })
            if granted.split(' ').any(|s| s == scope) =>
        {
            Some(Vec::new())
        }
        (Need::Scope(_), _) => None,
        (_, TokenKind::Grantless { .. }) => None,
        (Need::SellerToken, TokenKind::Seller) => Some(Vec::new()),
        (Need::SellerToken, _) => covering(false),
        (Need::Rdt, _) => covering(false),
        (Need::RdtSpecific, _) => covering(true),
    }
}

/// Reports whose id starts with 9 are of a restricted type.
fn report_type(report_id: &str) -> &'static str {
    if report_id.starts_with('9') {
        "GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING"
    } else {
        "GET_MERCHANT_LISTINGS_ALL_DATA"
    }
}

fn report(id: &str) -> Value {
    json!({
        "reportId": id,
        "reportType": report_type(id),
        "processingStatus": "DONE",
        "marketplaceIds": ["ATVPDKIKX0DER"],
        "createdTime": "2026-11-23T10:00:00+00:00",
        "reportDocumentId": format!("amzn1.spdoc.1.4.na.{id}"),
    })
}

async fn route(state: &State, req: Request<Incoming>, kind: &TokenKind) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    macro_rules! authorize {
        ($need:expr) => {
            match authorize(kind, $need, &method, &path) {
                Some(elements) => elements,
                None => return denied(),
            }
        };
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["tokens", "2021-03-01", "restrictedDataToken"]) => {
            if *kind != TokenKind::Seller {
                return denied();
            }
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            mint(state, body.ok().as_deref())
        }
        (&Method::GET, ["sellers", "v1", "marketplaceParticipations"]) => {
            authorize!(Need::SellerToken);
            json_response(200, marketplace_participations())
        }
        (&Method::GET, ["orders", "v0", "orders"]) => {
            let elements = authorize!(Need::SellerToken);
            if query_param(&query, "MarketplaceIds").is_none() {
                return spapi_error(400, "InvalidInput", "Missing required 'MarketplaceIds'.");
            }
            let orders: Vec<Value> = ORDER_IDS.iter().map(|id| order(id, &elements)).collect();
            json_response(
                200,
                json!({"payload": {"Orders": orders, "CreatedBefore": "2026-11-23T12:00:00Z"}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id]) => {
            let elements = authorize!(Need::SellerToken);
            json_response(200, json!({"payload": order(id, &elements)}))
        }
        (&Method::GET, ["orders", "v0", "orders", id, "orderItems"]) => {
            let elements = authorize!(Need::SellerToken);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "OrderItems": [order_item(&elements)]}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id, "address"]) => {
            authorize!(Need::Rdt);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "ShippingAddress": shipping_address()}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id, "buyerInfo"]) => {
            authorize!(Need::Rdt);
            json_response(200, json!({"payload": buyer_info(id)}))
        }
        (&Method::GET, ["orders", "v0", "orders", id, "orderItems", "buyerInfo"]) => {
            authorize!(Need::Rdt);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "OrderItems": [{"OrderItemId": "68828574383266", "GiftMessageText": "Happy birthday, Sam!", "GiftWrapLevel": "Classic"}]}}),
            )
        }
        (&Method::GET, ["notifications", "v1", "destinations"]) => {
            authorize!(Need::Scope("sellingpartnerapi::notifications"));
            json_response(
                200,
                json!({"payload": [{
                    "name": "orders-queue",
                    "destinationId": "3acafc7e-121b-1329-8ae8-000000000000",
                    "resource": {"sqs": {"arn": "arn:aws:sqs:us-east-1:000000000000:orders-queue"}}
                }]}),
            )
        }
        (&Method::GET, ["catalog", "2022-04-01", "items", asin]) => {
            authorize!(Need::SellerToken);
            json_response(200, catalog_item(asin))
        }
        (&Method::POST, ["reports", "2021-06-30", "reports"]) => {
            authorize!(Need::SellerToken);
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let spec: Option<Value> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
            match spec.as_ref().and_then(|v| v["reportType"].as_str()) {
                Some(_) => json_response(202, json!({"reportId": "50001"})),
                None => spapi_error(400, "InvalidInput", "reportType is required."),
            }
        }
        (&Method::GET, ["reports", "2021-06-30", "reports"]) => {
            authorize!(Need::SellerToken);
            json_response(200, json!({"reports": [report("50001"), report("90001")]}))
        }
        (&Method::GET, ["reports", "2021-06-30", "reports", id]) => {
            authorize!(Need::SellerToken);
            json_response(200, report(id))
        }
        (&Method::GET, ["reports", "2021-06-30", "documents", doc]) => {
            let report_id = doc.rsplit('.').next().unwrap_or("");
            let restricted = report_type(report_id) != "GET_MERCHANT_LISTINGS_ALL_DATA";
            if restricted {
                authorize!(Need::RdtSpecific);
            } else {
                authorize!(Need::SellerToken);
            }
            json_response(
                200,
                json!({
                    "reportDocumentId": doc,
                    "url": format!("https://tortuga-prod-na.s3-external-1.amazonaws.com/{doc}"),
                    "compressionAlgorithm": "GZIP",
                }),
            )
        }
        (&Method::GET, ["_sim", "bytes"]) => {
            let size: u64 = query_param(&query, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pattern_body(size)
        }
        (&Method::GET, ["_sim", "redirect"]) => {
            let mut resp = spapi_error(302, "Found", "Moved.");
            resp.headers_mut().insert(
                http::header::LOCATION,
                HeaderValue::from_static("/sellers/v1/marketplaceParticipations"),
            );
            resp
        }
        (&Method::POST | &Method::PUT, ["_sim", "sha256"]) => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            total += d.len() as u64;
                            hasher.update(d);
                        }
                    }
                    Err(e) => return spapi_error(400, "InvalidInput", &e.to_string()),
                }
            }
            json_response(
                200,
                json!({"sha256": hex(&hasher.finalize()), "bytes": total}),
            )
        }
        _ => {
            authorize!(Need::SellerToken);
            spapi_error(404, "NotFound", "Resource not found.")
        }
    }
}

const DATA_ELEMENTS: [&str; 3] = ["buyerInfo", "shippingAddress", "buyerTaxInformation"];

/// The Tokens API: validates `restrictedResources` and issues an RDT covering them.
fn mint(state: &State, body: Option<&[u8]>) -> Response<ProxyBody> {
    let (refusal, lifetime) = {
        let s = lock(&state.settings);
        (s.rdt_refusal.clone(), s.token_lifetime)
    };
    if let Some((status, code, message)) = refusal {
        return spapi_error(status, &code, &message);
    }
    let invalid = |m: &str| spapi_error(400, "InvalidInput", m);
    let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
        return invalid("The request body is not JSON.");
    };
    let Some(list) = v["restrictedResources"].as_array() else {
        return invalid("restrictedResources is required.");
    };
    if list.is_empty() || list.len() > 50 {
        return invalid("restrictedResources must hold 1 to 50 entries.");
    }
    let mut resources = Vec::new();
    for r in list {
        let method = r["method"].as_str().unwrap_or("");
        let path = r["path"].as_str().unwrap_or("");
        if !matches!(method, "GET" | "PUT" | "POST" | "DELETE") || !path.starts_with('/') {
            return invalid(
                "Each restricted resource needs a method (GET, PUT, POST, DELETE) and a path.",
            );
        }
        let elements: Vec<String> = r["dataElements"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = elements
            .iter()
            .find(|e| !DATA_ELEMENTS.contains(&e.as_str()))
        {
            return invalid(&format!("Unknown dataElement {bad}."));
        }
        resources.push(Resource {
            method: method.to_string(),
            path: path.to_string(),
            data_elements: elements,
        });
    }
    lock(&state.mints).extend(resources.iter().cloned());
    lock(&state.target_applications).push(v["targetApplication"].as_str().map(String::from));
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("Atz.sprdt|sim-{n}-{:x}", pseudo_random(n));
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + lifetime,
            kind: TokenKind::Rdt { resources },
        },
    );
    json_response(
        200,
        json!({"restrictedDataToken": token, "expiresIn": lifetime.as_secs()}),
    )
}

fn shipping_address() -> Value {
    json!({
        "Name": "Sam Rivera",
        "AddressLine1": "1200 Pine St Apt 4",
        "City": "SEATTLE",
        "StateOrRegion": "WA",
        "PostalCode": "98101",
        "CountryCode": "US",
        "Phone": "+1 206-555-0100"
    })
}

fn buyer_info(id: &str) -> Value {
    json!({
        "AmazonOrderId": id,
        "BuyerEmail": "sam.rivera@marketplace.amazon.com",
        "BuyerName": "Sam Rivera",
        "PurchaseOrderNumber": "PO-7781"
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pattern_body(size: u64) -> Response<ProxyBody> {
    const CHUNK: u64 = 64 * 1024;
    let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(size);
        let data: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok::<_, crate::body::BoxError>(Frame::data(Bytes::from(data)))
    }));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

const ORDER_IDS: [&str; 3] = [
    "902-3159896-1390916",
    "113-7645321-0042219",
    "701-2299001-8872305",
];

/// An order; PII only for the dataElements an RDT granted.
fn order(id: &str, elements: &[String]) -> Value {
    let mut o = json!({
        "AmazonOrderId": id,
        "PurchaseDate": "2026-11-20T18:26:01Z",
        "LastUpdateDate": "2026-11-21T09:14:42Z",
        "OrderStatus": "Unshipped",
        "FulfillmentChannel": "MFN",
        "SalesChannel": "Amazon.com",
        "ShipServiceLevel": "Std US D2D Dom",
        "OrderTotal": {"CurrencyCode": "USD", "Amount": "27.98"},
        "NumberOfItemsShipped": 0,
        "NumberOfItemsUnshipped": 2,
        "PaymentMethod": "Other",
        "MarketplaceId": "ATVPDKIKX0DER",
        "ShipmentServiceLevelCategory": "Standard",
        "OrderType": "StandardOrder",
        "EarliestShipDate": "2026-11-21T08:00:00Z",
        "LatestShipDate": "2026-11-23T07:59:59Z",
        "IsBusinessOrder": false,
        "IsPrime": false,
        "IsPremiumOrder": false,
        "IsReplacementOrder": false,
        "ShippingAddress": {"StateOrRegion": "WA", "PostalCode": "98101", "City": "SEATTLE", "CountryCode": "US"}
    });
    if elements.iter().any(|e| e == "shippingAddress") {
        o["ShippingAddress"] = shipping_address();
    }
    if elements.iter().any(|e| e == "buyerInfo") {
        o["BuyerInfo"] =
            json!({"BuyerEmail": "sam.rivera@marketplace.amazon.com", "BuyerName": "Sam Rivera"});
    }
    o
}

fn order_item(elements: &[String]) -> Value {
    let mut item = json!({
        "ASIN": "B0C1EXAMPL",
        "SellerSKU": "MUG-BLUE-12OZ",
        "OrderItemId": "68828574383266",
        "Title": "Stoneware Coffee Mug, 12 oz, Blue",
        "QuantityOrdered": 2,
        "QuantityShipped": 0,
        "ItemPrice": {"CurrencyCode": "USD", "Amount": "27.98"},
        "ItemTax": {"CurrencyCode": "USD", "Amount": "2.66"},
        "IsGift": "false",
        "ConditionId": "New"
    });
    if elements.iter().any(|e| e == "buyerInfo") {
        item["BuyerInfo"] =
            json!({"GiftMessageText": "Happy birthday, Sam!", "GiftWrapLevel": "Classic"});
    }
    item
}

fn catalog_item(asin: &str) -> Value {
    json!({
        "asin": asin,
        "summaries": [{
            "marketplaceId": "ATVPDKIKX0DER",
            "brand": "Harbor & Kiln",
            "itemName": "Stoneware Coffee Mug, 12 oz, Blue",
            "manufacturer": "Harbor & Kiln",
            "itemClassification": "BASE_PRODUCT"
        }]
    })
}

fn marketplace_participations() -> Value {
    json!({"payload": [{
        "marketplace": {
            "id": "ATVPDKIKX0DER",
            "countryCode": "US",
            "name": "Amazon.com",
            "defaultCurrencyCode": "USD",
            "defaultLanguageCode": "en_US",
            "domainName": "www.amazon.com"
        },
        "participation": {"isParticipating": true, "hasSuspendedListings": false}
    }]})
}

#[cfg(test)]
mod tests {
    use super::valid_amz_date;

    #[test]
    fn amz_date_check_table() {
        let cases = [
            ("20261123T173800Z", true),
            ("20261123T1738Z", false),
            ("2026-11-23T17:38:00Z", false),
            ("20261123 173800Z", false),
            ("", false),
        ];
        for (v, ok) in cases {
            assert_eq!(valid_amz_date(v), ok, "{v}");
        }
    }
}
