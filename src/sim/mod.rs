//! A local stand-in for LWA and SP-API on loopback, used by `demo` and by the tests.
//!
//! It checks what Amazon checks (token present, known, unexpired and single; `x-amz-date`;
//! `user-agent`), answers a handful of operations with small realistic bodies, records every
//! request it receives, and lets a test inject faults and read counters. Every error it sends is
//! one of Amazon's own answers from [`fixtures`], where each cites its source.
//!
//! - [`lwa`]: the token endpoint.
//! - [`spapi`]: SP-API's checks and operations.
//! - [`tokens`]: the Tokens API (RDT minting).
//! - [`buckets`]: usage plans, enforced on request.
//! - [`fixtures`]: Amazon's answers, word for word.

mod buckets;
pub mod documents;
pub mod fixtures;
mod lwa;
pub mod oauth;
mod spapi;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::lock;
use crate::operations::{Catalog, Operation};
use buckets::SimBucket;
pub use fixtures::{AmazonAnswer, TokenWording};

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
    /// The refresh token of the seller whose token it carried, if it carried a known one.
    pub seller: Option<String>,
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
    /// With `generic` false, a template covers nothing.
    fn covers(&self, method: &Method, path: &str, generic: bool) -> bool {
        if self.method != method.as_str() || (!generic && self.path.contains('{')) {
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
    /// The refresh token of the seller it acts for (seller tokens and RDTs), as Amazon keys
    /// usage plans by application + seller.
    seller: Option<String>,
}

#[derive(Debug)]
struct Settings {
    client_id: String,
    /// Every secret LWA accepts for the client id (two while a rotation is under way).
    client_secrets: Vec<String>,
    /// The refresh tokens of the sellers who authorised the application.
    refresh_tokens: HashSet<String>,
    token_lifetime: Duration,
    lwa_fault: Option<LwaFault>,
    lwa_latency: Duration,
    /// The next `usize` SP-API requests get this answer instead of their own.
    upstream_fault: Option<(AmazonAnswer, usize)>,
    upstream_latency: Duration,
    enforce_limits: bool,
    token_wording: TokenWording,
    /// dataElements the application has no role for.
    denied_elements: HashSet<String>,
    /// The application has no role for any restricted resource.
    deny_resources: bool,
    /// Whether an RDT may name a `{param}` template (Amazon documents it for Orders v0 and MFN).
    generic_paths: bool,
    /// Operations (operationId or `api.operationId`) the application has no role for.
    denied_operations: HashSet<String>,
    /// The redirect URI registered for the application (the consent page's default).
    redirect_uri: Option<String>,
    /// How long an authorization code can be exchanged (Amazon: five minutes).
    oauth_code_lifetime: Duration,
}

#[derive(Debug)]
struct State {
    settings: Mutex<Settings>,
    /// Shared by the simulators of every region: a token LWA issued is good everywhere.
    tokens: Arc<Mutex<HashMap<String, IssuedToken>>>,
    requests: Mutex<Vec<Recorded>>,
    lwa_calls: AtomicU64,
    client_credentials_scopes: Mutex<Vec<String>>,
    mints: Mutex<Vec<Resource>>,
    refused_mints: AtomicU64,
    target_applications: Mutex<Vec<Option<String>>>,
    /// Per seller (refresh token; empty for grantless calls) and operation.
    buckets: Mutex<HashMap<(String, usize), SimBucket>>,
    /// Rates set by [`Simulator::set_rate`], for buckets made later.
    rates: Mutex<HashMap<usize, f64>>,
    throttled: AtomicU64,
    token_rejections: AtomicU64,
    counter: Arc<AtomicU64>,
    /// Report and feed documents, and the document host's log.
    documents: documents::Documents,
    /// Authorization codes not yet exchanged.
    oauth_codes: Mutex<HashMap<String, oauth::Code>>,
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

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0` with the demo credentials and one-hour tokens.
    pub async fn start() -> std::io::Result<Simulator> {
        Simulator::start_on(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Starts a simulator on a bound listener.
    pub fn start_on(listener: TcpListener) -> std::io::Result<Simulator> {
        Simulator::serve(listener, Default::default(), Default::default())
    }

    /// Starts another region's SP-API on `127.0.0.1:0`: it accepts the tokens this one's LWA
    /// issues, and keeps its own requests, faults and buckets.
    pub async fn start_region(&self) -> std::io::Result<Simulator> {
        Simulator::serve(
            TcpListener::bind("127.0.0.1:0").await?,
            Arc::clone(&self.state.tokens),
            Arc::clone(&self.state.counter),
        )
    }

    fn serve(
        listener: TcpListener,
        tokens: Arc<Mutex<HashMap<String, IssuedToken>>>,
        counter: Arc<AtomicU64>,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            settings: Mutex::new(Settings {
                client_id: SIM_CLIENT_ID.into(),
                client_secrets: vec![SIM_CLIENT_SECRET.into()],
                refresh_tokens: [SIM_REFRESH_TOKEN.to_string()].into(),
                token_lifetime: Duration::from_secs(3600),
                lwa_fault: None,
                lwa_latency: Duration::ZERO,
                upstream_fault: None,
                upstream_latency: Duration::ZERO,
                enforce_limits: false,
                token_wording: TokenWording::Current,
                denied_elements: HashSet::new(),
                deny_resources: false,
                generic_paths: true,
                denied_operations: HashSet::new(),
                redirect_uri: None,
                oauth_code_lifetime: Duration::from_secs(300),
            }),
            tokens,
            requests: Mutex::new(Vec::new()),
            lwa_calls: AtomicU64::new(0),
            client_credentials_scopes: Mutex::new(Vec::new()),
            mints: Mutex::new(Vec::new()),
            refused_mints: AtomicU64::new(0),
            target_applications: Mutex::new(Vec::new()),
            buckets: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            throttled: AtomicU64::new(0),
            token_rejections: AtomicU64::new(0),
            counter,
            documents: documents::Documents::default(),
            oauth_codes: Mutex::new(HashMap::new()),
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

    /// How long authorization codes can be exchanged (zero: they expire at once).
    pub fn set_oauth_code_lifetime(&self, lifetime: Duration) {
        lock(&self.state.settings).oauth_code_lifetime = lifetime;
    }

    /// What the document host received as uploads (feed documents).
    pub fn uploads(&self) -> Vec<documents::Upload> {
        self.state.documents.uploads()
    }

    /// Every request the document host received.
    pub fn document_host_requests(&self) -> Vec<documents::HostRequest> {
        self.state.documents.host_requests()
    }

    /// Another seller authorises the application: LWA takes `refresh_token` from now on.
    pub fn add_seller(&self, refresh_token: &str) {
        lock(&self.state.settings)
            .refresh_tokens
            .insert(refresh_token.to_string());
    }

    /// The seller revokes the authorisation: LWA answers `invalid_grant` for `refresh_token`,
    /// and the access tokens issued for it stop working.
    pub fn revoke_seller(&self, refresh_token: &str) {
        lock(&self.state.settings)
            .refresh_tokens
            .remove(refresh_token);
        lock(&self.state.tokens).retain(|_, t| t.seller.as_deref() != Some(refresh_token));
    }

    /// The client secrets LWA accepts (a rotation: the old and the new one, then the new).
    pub fn set_client_secrets(&self, secrets: &[&str]) {
        lock(&self.state.settings).client_secrets = secrets.iter().map(|s| s.to_string()).collect();
    }

    /// The refresh token of the seller an access token was issued for.
    pub fn seller_of(&self, access_token: &str) -> Option<String> {
        lock(&self.state.tokens)
            .get(access_token)
            .and_then(|t| t.seller.clone())
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

    /// The next `count` SP-API requests get Amazon's `answer` instead of their own.
    pub fn answer_next(&self, answer: AmazonAnswer, count: usize) {
        lock(&self.state.settings).upstream_fault = Some((answer, count));
    }

    /// Delays every SP-API answer.
    pub fn set_upstream_latency(&self, latency: Duration) {
        lock(&self.state.settings).upstream_latency = latency;
    }

    /// How SP-API words its refusal of an expired or unknown token.
    pub fn set_token_wording(&self, wording: TokenWording) {
        lock(&self.state.settings).token_wording = wording;
    }

    /// The application lacks the roles for these dataElements: a mint asking for any of them
    /// is refused with Amazon's `InvalidInput` answer.
    pub fn deny_data_elements(&self, elements: &[&str]) {
        lock(&self.state.settings).denied_elements =
            elements.iter().map(|e| e.to_string()).collect();
    }

    /// The application has no role for restricted resources at all: every mint is refused.
    pub fn deny_restricted_resources(&self, deny: bool) {
        lock(&self.state.settings).deny_resources = deny;
    }

    /// Whether RDTs naming a `{param}` template cover the requests they stand for. With
    /// `false`, such an RDT is minted but covers nothing, as for an API where Amazon does not
    /// accept generic paths, and SP-API answers 403 with empty details.
    pub fn accept_generic_paths(&self, accept: bool) {
        lock(&self.state.settings).generic_paths = accept;
    }

    /// The application lacks the role for these operations (operationId or `api.operationId`):
    /// SP-API answers 403 "Access to requested resource is denied." whatever the token.
    pub fn deny_operations(&self, operations: &[&str]) {
        lock(&self.state.settings).denied_operations =
            operations.iter().map(|o| o.to_string()).collect();
    }

    /// Every token issued so far is revoked: SP-API no longer knows it.
    pub fn revoke_all_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Every RDT issued so far is revoked; LWA tokens stay valid.
    pub fn revoke_rdts(&self) {
        lock(&self.state.tokens).retain(|_, t| !matches!(t.kind, TokenKind::Rdt { .. }));
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
        let mut rates = lock(&self.state.rates);
        for op in ops {
            rates.insert(op.index, rate);
            for ((_, index), bucket) in buckets.iter_mut() {
                if *index == op.index {
                    bucket.pending_rate = Some(rate);
                }
            }
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

    /// How many mints the Tokens API refused.
    pub fn refused_mints(&self) -> u64 {
        self.state.refused_mints.load(Ordering::SeqCst)
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
    let path = req.uri().path();
    if path == TOKEN_PATH {
        lwa::answer(state, req).await
    } else if path == oauth::CONSENT_PATH {
        oauth::consent(state, &req)
    } else if path == oauth::CONFIRM_PATH {
        oauth::confirm(state, &req)
    } else if path.starts_with(documents::S3_GET) || path.starts_with(documents::S3_PUT) {
        // The document host (S3) checks its own presigned URLs, not SP-API's tokens.
        state.documents.host(req).await
    } else {
        spapi::answer(state, req).await
    }
}

fn pseudo_random(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (n ^ nanos).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A request body read to its end: its SHA-256 (hex) and length; `None` if it broke off.
async fn hash_body(mut body: Incoming) -> Option<(String, u64)> {
    use http_body_util::BodyExt as _;
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(d) = frame.data_ref() {
            total += d.len() as u64;
            hasher.update(d);
        }
    }
    Some((hex(&hasher.finalize()), total))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
