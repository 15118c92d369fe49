//! The upstream side: header hygiene, the SP-API signing headers, and sending over a small
//! keep-alive pool of hyper HTTP/1 connections (rustls for HTTPS).
//!
//! The request target goes out exactly as it came in (`/path?query`, no URL parsing), the
//! headers are built in one filtered pass, and the values that repeat (the date within a second,
//! the token, the user-agent) are built once and shared.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::Url;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::body::{BoxError, ClientBody};
use crate::config::Config;
use crate::error::ProxyError;

/// Our part of the `user-agent`; SP-API requires `Language=` in it.
pub const PROXY_USER_AGENT: &str = concat!(
    "spapi-proxy/",
    env!("CARGO_PKG_VERSION"),
    " (Language=Rust)"
);

/// SP-API rejects a `user-agent` longer than this.
const MAX_USER_AGENT: usize = 500;

/// The access token header SP-API reads.
pub const X_AMZ_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-amz-access-token");
/// The request time header.
pub const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The proxy's own request headers (`x-spapi-*`) steer the proxy and are never forwarded.
pub const OWN_HEADER_PREFIX: &str = "x-spapi-";

/// Headers that describe one connection, not the message, so a proxy must not forward them
/// (RFC 9110 §7.6.1), plus `proxy-authorization`, which is meant for us, not for Amazon. The
/// index is the header's bit in `strip_hop_by_hop`'s set; a chain of comparisons with the
/// constants, because that compiles to cheap tag checks (a loop over an array of names
/// measured slower).
fn hop_by_hop_index(name: &HeaderName) -> Option<u32> {
    let i = if *name == header::CONNECTION {
        0
    } else if *name == header::TE {
        1
    } else if *name == header::TRAILER {
        2
    } else if *name == header::TRANSFER_ENCODING {
        3
    } else if *name == header::UPGRADE {
        4
    } else if *name == header::PROXY_AUTHENTICATE {
        5
    } else if *name == header::PROXY_AUTHORIZATION {
        6
    } else if *name == KEEP_ALIVE {
        7
    } else if *name == PROXY_CONNECTION {
        8
    } else {
        return None;
    };
    Some(i)
}

/// The name of each bit of `hop_by_hop_index`.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// Request headers Amazon never gets from the client: hop-by-hop ones; those the proxy sets
/// itself (so they are replaced, never doubled); `authorization` (SP-API ignores SigV4 since
/// 2023, and a client's credential for something else must not leak to Amazon); `expect`
/// (our server answered 100-continue; the upstream request is sent whole); and `x-spapi-*`.
fn is_dropped_request_header(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || *name == header::HOST
        || *name == header::AUTHORIZATION
        || *name == header::USER_AGENT
        || *name == header::EXPECT
        || *name == X_AMZ_ACCESS_TOKEN
        || *name == X_AMZ_DATE
        || name.as_str().starts_with(OWN_HEADER_PREFIX)
}

/// The names a `Connection` header lists (each is hop-by-hop for this message), except the
/// usual `keep-alive` and `close` options, which name nothing else to remove.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let values = headers.get_all(header::CONNECTION);
    // Nearly every message says just `keep-alive` or `close`: nothing to parse.
    if values.iter().all(|v| usual(v.as_bytes())) {
        return Vec::new();
    }
    values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !usual(n.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// `Connection`'s usual options, which name no header.
fn usual(option: &[u8]) -> bool {
    // As servers write them, before any other spelling.
    option == b"keep-alive"
        || option == b"close"
        || option.eq_ignore_ascii_case(b"keep-alive")
        || option.eq_ignore_ascii_case(b"close")
}

/// Removes hop-by-hop headers, including any that `Connection` names, in one pass over the
/// names (a response usually has `connection` and nothing else of the kind), and returns the
/// first value of `wanted` (Amazon's request id), found in the same pass. Which hop-by-hop
/// headers are present is a bit set, so the common case allocates nothing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, wanted: &HeaderName) -> Option<HeaderValue> {
    let mut present = 0u16;
    let mut found = None;
    // Whether every `Connection` value is a usual option, which names no other header.
    let mut usual_connection = true;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
            if i == 0 {
                usual_connection &= usual(value.as_bytes());
            }
        } else if found.is_none() && name == wanted {
            found = Some(value.clone());
        }
    }
    if present == 0 {
        return found;
    }
    if present == 1 && usual_connection {
        // Only `Connection`, as nearly every answer has, naming nothing: one removal (an
        // entry, which may insert, cost 60 instructions more).
        headers.remove(header::CONNECTION);
        return found;
    }
    if present & 1 != 0 {
        for name in connection_listed(headers) {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    found
}

/// The headers Amazon receives: the client's, filtered in one pass, plus host, token, date and
/// user-agent.
pub fn upstream_headers(
    inbound: &HeaderMap,
    token: &HeaderValue,
    now: std::time::Instant,
    host: &HeaderValue,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(inbound.len() + 4);
    // The client's agent and whether it sent `Connection` are noted in the same pass (two
    // lookups cost 190 instructions more).
    let mut client_agent = None;
    let mut connection = false;
    for (name, value) in inbound {
        if *name == header::USER_AGENT {
            client_agent = client_agent.or(Some(value));
        } else if *name == header::CONNECTION {
            connection = true;
        } else if !is_dropped_request_header(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if connection {
        // What `Connection` names is hop-by-hop too (before ours are set: it names none).
        for name in connection_listed(inbound) {
            out.remove(name);
        }
    }
    out.insert(header::HOST, host.clone());
    out.insert(X_AMZ_ACCESS_TOKEN, token.clone());
    out.insert(X_AMZ_DATE, amz_date_header(now));
    out.insert(header::USER_AGENT, cached_user_agent(client_agent));
    out
}

thread_local! {
    /// The last client agent seen on this thread and the user-agent made from it: scripts send
    /// the same one every time.
    static USER_AGENT: RefCell<Option<(HeaderValue, HeaderValue)>> = const { RefCell::new(None) };
    /// The `x-amz-date` of the current second, and the monotonic instant the second ends at.
    static AMZ_DATE: RefCell<Option<(std::time::Instant, HeaderValue)>> = const { RefCell::new(None) };
}

fn cached_user_agent(client: Option<&HeaderValue>) -> HeaderValue {
    let Some(client) = client else {
        return HeaderValue::from_static(PROXY_USER_AGENT);
    };
    USER_AGENT.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((seen, made)) = cache.as_ref() {
            if seen == client {
                return made.clone();
            }
        }
        let made = user_agent(Some(client));
        *cache = Some((client.clone(), made.clone()));
        made
    })
}

/// `x-amz-date` at the monotonic instant `now` (a reading the request made anyway), built once
/// per second per thread: within the second, comparing two instants is all it costs, where
/// reading the wall clock and turning it into seconds cost 75 instructions.
pub fn amz_date_header(now: std::time::Instant) -> HeaderValue {
    AMZ_DATE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((until, value)) = cache.as_ref() {
            if now < *until {
                return value.clone();
            }
        }
        let wall = SystemTime::now();
        let into_second = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let left = Duration::from_nanos(u64::from(1_000_000_000 - into_second.min(999_999_999)));
        let value = HeaderValue::from_str(&amz_date(wall)).expect("digits and letters only");
        *cache = Some((now + left, value.clone()));
        value
    })
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

/// The HTTP client for the token services (LWA, the Tokens API): reqwest, where convenience
/// matters more than nanoseconds. rustls, no redirects, no automatic decompression.
pub fn http_client(config: &Config) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeouts.connect)
        .read_timeout(config.timeouts.idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
}

/// A request body on its way to Amazon: none, held whole (replayable), or the client's,
/// streaming. One pointer, so that the upstream request is 232 bytes and hyper's envelope
/// around it 256: hyper moves both several times, and a move of more than 256 bytes takes the
/// copy loop instead of eight loads and stores (from 80 bytes to this took 840 instructions
/// off each request, measured). A GET's empty body allocates nothing.
pub struct UpstreamBody(Option<Box<Held>>);

enum Held {
    /// All of it, sent once per send.
    Full(Bytes),
    /// The client's body, streaming through.
    Client(ClientBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.0.as_deref_mut() {
            None => Poll::Ready(None),
            Some(Held::Full(bytes)) => {
                let bytes = std::mem::take(bytes);
                this.0 = None;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Held::Client(body)) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.0.as_deref() {
            None => true,
            Some(Held::Full(_)) => false,
            Some(Held::Client(body)) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_deref() {
            None => SizeHint::with_exact(0),
            Some(Held::Full(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Some(Held::Client(body)) => body.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// A held body; an empty one is sent as no body at all.
    pub fn full(bytes: Bytes) -> UpstreamBody {
        UpstreamBody((!bytes.is_empty()).then(|| Box::new(Held::Full(bytes))))
    }

    /// The client's body, streaming through.
    pub fn client(body: ClientBody) -> UpstreamBody {
        UpstreamBody(Some(Box::new(Held::Client(body))))
    }
}

/// Idle upstream connections kept for reuse, and for how long.
const MAX_IDLE: usize = 64;
const IDLE_FOR: Duration = Duration::from_secs(90);

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Idle {
    /// Idle too long to trust at `now`: the far end may have closed it meanwhile.
    fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= IDLE_FOR
    }
}

/// Keep-alive HTTP/1 connections to one origin. There is one SP-API origin per forwarder, so
/// the pool is a stack of idle senders: no keys to hash, nothing to format per request.
struct Pool {
    connector: HttpsConnector<HttpConnector>,
    origin: Uri,
    idle: Mutex<Vec<Idle>>,
    /// Upstream connections this process may hold, shared by every region's pool: the file
    /// descriptors kept back from clients, so that a flood of clients cannot leave none for
    /// Amazon. Each connection holds a permit until it closes.
    slots: Arc<UpstreamSlots>,
    /// How long a request waits for a free slot before it is answered 503.
    slot_wait: Duration,
    /// How long an answer's body may send nothing (`timeouts.idle`).
    idle_timeout: Duration,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle sender, if it is ready now: the usual case, taken without
    /// a future (see [`Forwarder::send`]).
    fn take_ready(&self, now: Instant) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        let last = idle.last()?;
        if last.stale(now) || !last.sender.is_ready() {
            return None;
        }
        idle.pop().map(|i| i.sender)
    }

    /// A ready sender: the most recently used idle one, or a new connection. `true` if reused.
    async fn checkout(
        &self,
        now: Instant,
    ) -> Result<(SendRequest<UpstreamBody>, bool), ProxyError> {
        loop {
            let idle = self.lock().pop();
            let Some(mut idle) = idle else { break };
            if idle.stale(now) || idle.sender.is_closed() {
                continue;
            }
            if idle.sender.ready().await.is_ok() {
                return Ok((idle.sender, true));
            }
        }
        // Boxed: connecting (DNS, TCP, TLS, the handshake) holds kilobytes of state, and every
        // request's future would carry room for it, and move it, if it were inline.
        crate::boxed!(self.connect())
            .await
            .map(|sender| (sender, false))
    }

    /// A new connection, once a slot for it is free.
    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, ProxyError> {
        let slot = match Arc::clone(&self.slots.semaphore).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Idle connections of this pool hold slots they may not need.
                self.lock().clear();
                tokio::time::timeout(
                    self.slot_wait,
                    Arc::clone(&self.slots.semaphore).acquire_owned(),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    ProxyError::LocalResources(format!(
                        "all {} upstream connections this proxy keeps descriptors for are \
                             busy",
                        self.slots.total
                    ))
                })?
            }
        };
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| {
                if out_of_local_resources(&*e) {
                    ProxyError::LocalResources(describe(&*e))
                } else {
                    ProxyError::Upstream(describe(&*e))
                }
            })?;
        // hyper's read buffer grows to 400 KiB by default while a body streams fast, and the
        // allocator keeps what it grew to: 64 KiB streams as fast here (measured) and holds
        // RSS near flat. Amazon's response heads are a few KiB.
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            // One copy and one write, as on the server side (250 instructions per request).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| ProxyError::Upstream(describe(&e)))?;
        tokio::spawn(async move {
            // The slot is given back when the connection is gone.
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Keeps `sender` for reuse; `since` is when its last request was sent (a reading the
    /// request made anyway: the idle time is counted a little long, never short).
    fn checkin(&self, sender: SendRequest<UpstreamBody>, since: Instant) {
        // With every slot taken, requests are waiting for one: closing this connection (its
        // task ends and gives the slot back) serves them, where keeping it idle would not.
        if sender.is_closed() || self.slots.semaphore.available_permits() == 0 {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since });
        }
    }
}

/// Upstream connections this process may hold, shared by every region's pool.
#[derive(Debug)]
pub struct UpstreamSlots {
    semaphore: Arc<tokio::sync::Semaphore>,
    /// How many there are, for messages.
    total: usize,
}

impl UpstreamSlots {
    /// The slots for a proxy whose clients may hold `client_connections` descriptors: what
    /// the descriptor limit leaves, less a margin for token calls, the listener and the
    /// runtime's own (at least 8).
    pub fn for_clients(client_connections: usize) -> Arc<UpstreamSlots> {
        /// Descriptors for token calls (their own pool), the listener, the runtime and logs.
        const MARGIN: usize = 32;
        let total = crate::server::fd_soft_limit()
            .saturating_sub(client_connections)
            .saturating_sub(MARGIN)
            .max(8);
        Arc::new(UpstreamSlots {
            semaphore: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
        })
    }
}

/// Sends requests to the SP-API endpoint over the pool.
#[derive(Clone)]
pub struct Forwarder {
    pool: Arc<Pool>,
    host: HeaderValue,
    response_timeout: Duration,
    /// Requests waiting for their answer's head, and when each gives up.
    deadlines: Arc<Deadlines>,
}

/// Upstream requests waiting for their answer's head, and when each gives up: one sweeper task
/// per forwarder marks the late ones and wakes them. A `tokio::time::timeout` per request
/// registered a timer in tokio's wheel and took it out again, every request (about 900
/// instructions); a slot here costs a lock, and the sweeper looks every tenth of the timeout
/// (between 10 and 250 ms), so a timeout fires at most that much late.
struct Deadlines {
    slots: Mutex<DeadlineSlots>,
    sweeping: std::sync::Once,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            slots: Mutex::default(),
            sweeping: std::sync::Once::new(),
        }
    }
}

/// Each slot keeps its `Expiry` for the next request that takes it: arming allocates nothing
/// once the slots are there.
#[derive(Default)]
struct DeadlineSlots {
    taken: Vec<(Option<Instant>, Arc<Expiry>)>,
    free: Vec<usize>,
}

/// One waiting request's flag, set by the sweeper, and its task's waker.
#[derive(Default)]
struct Expiry {
    fired: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

/// A request's slot, given back when it is dropped (answered, failed or cancelled).
struct Armed<'a> {
    deadlines: &'a Deadlines,
    index: usize,
    expiry: Arc<Expiry>,
}

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeadlineSlots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot until `deadline`; the first one also starts the sweeper.
    fn arm(self: &Arc<Self>, deadline: Instant, timeout: Duration) -> Armed<'_> {
        self.sweeping.call_once(|| {
            let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
            tokio::spawn(sweep_deadlines(Arc::downgrade(self), tick));
        });
        let mut slots = self.lock();
        let (index, expiry) = match slots.free.pop() {
            Some(i) => {
                let slot = &mut slots.taken[i];
                slot.0 = Some(deadline);
                // Taken back from the sweeper only when the slot was free (see `Armed::drop`).
                slot.1
                    .fired
                    .store(false, std::sync::atomic::Ordering::Release);
                (i, Arc::clone(&slot.1))
            }
            None => {
                let expiry = Arc::new(Expiry::default());
                slots.taken.push((Some(deadline), Arc::clone(&expiry)));
                (slots.taken.len() - 1, expiry)
            }
        };
        drop(slots);
        Armed {
            deadlines: self,
            index,
            expiry,
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let mut slots = self.deadlines.lock();
        if let Some(entry) = slots.taken.get_mut(self.index) {
            entry.0 = None;
            slots.free.push(self.index);
        }
    }
}

/// Marks and wakes the requests past their deadline, every `tick`; ends with its forwarder.
async fn sweep_deadlines(deadlines: std::sync::Weak<Deadlines>, tick: Duration) {
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(deadlines) = deadlines.upgrade() else {
            return;
        };
        let now = Instant::now();
        for (deadline, expiry) in &deadlines.lock().taken {
            let Some(deadline) = deadline else { continue };
            if now >= *deadline && !expiry.fired.swap(true, std::sync::atomic::Ordering::AcqRel) {
                expiry.waker.wake();
            }
        }
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("origin", &self.pool.origin)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder to `endpoint` (scheme, host and port; any path is ignored, as before).
    pub fn new(
        config: &Config,
        endpoint: &Url,
        slots: Arc<UpstreamSlots>,
    ) -> Result<Forwarder, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeouts.connect));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| e.to_string())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let authority = endpoint
            .host_str()
            .map(|h| match endpoint.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
            .ok_or("the endpoint has no host")?;
        let origin = Uri::builder()
            .scheme(if endpoint.scheme() == "https" {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Forwarder {
            pool: Arc::new(Pool {
                connector,
                origin,
                idle: Mutex::new(Vec::new()),
                slots,
                slot_wait: config.timeouts.connect,
                idle_timeout: config.timeouts.idle,
            }),
            host: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
            response_timeout: config.timeouts.response,
            deadlines: Arc::default(),
        })
    }

    /// The `host` header Amazon gets.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends one request (`target` exactly as received) at `now` and returns the upstream's
    /// response with its body still streaming. A reused connection that turns out closed
    /// before the request went out is replaced once.
    ///
    /// The usual case, a pooled connection ready now, is sent here, before the future exists:
    /// the future then holds only hyper's wait for the answer's head. Anything else (waiting
    /// for a connection, connecting, replacing a closed one) is the boxed slow path. An
    /// `async fn` kept the request, the pool's checkout and the exchange side by side (1.4 KB,
    /// moved whole into every caller's future).
    pub fn send(
        &self,
        method: http::Method,
        target: PathAndQuery,
        headers: HeaderMap,
        body: UpstreamBody,
        now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamResponseBody>, ProxyError>> + Send + '_ {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from(target);
        *request.headers_mut() = headers;
        let armed = self
            .deadlines
            .arm(now + self.response_timeout, self.response_timeout);
        let (first, sender, slow) = match self.pool.take_ready(now) {
            Some(mut sender) => (Some(sender.try_send_request(request)), Some(sender), None),
            None => (None, None, Some(self.exchange_boxed(request, now))),
        };
        Sending {
            forwarder: self,
            armed,
            first,
            sender,
            slow,
            now,
        }
    }

    /// [`Forwarder::exchange`], boxed: the slow path of [`Sending`].
    fn exchange_boxed(&self, request: Request<UpstreamBody>, now: Instant) -> SlowExchange<'_> {
        // Bound first: the box's own type must be settled before it becomes a trait object.
        let slow = crate::boxed!(self.exchange(request, now));
        slow
    }

    /// Sends `request` over a pooled connection, or a new one if a reused one turns out closed
    /// before the request went out.
    async fn exchange(
        &self,
        mut request: Request<UpstreamBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, SendRequest<UpstreamBody>), ProxyError> {
        loop {
            let (mut sender, reused) = self.pool.checkout(now).await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(ProxyError::Upstream(describe(&e.into_error()))),
                },
            }
        }
    }
}

/// The exchange's slow path: a connection waited for or made, or a closed one replaced.
type SlowExchange<'a> = Pin<
    Box<
        dyn Future<Output = Result<(Response<Incoming>, SendRequest<UpstreamBody>), ProxyError>>
            + Send
            + 'a,
    >,
>;

pin_project_lite::pin_project! {
    /// One request to the upstream, until its answer's head arrives or its response deadline
    /// (see [`Deadlines`]) passes; then its slot is given back.
    struct Sending<'a, F> {
        forwarder: &'a Forwarder,
        armed: Armed<'a>,
        // The request, sent on a pooled connection that was ready: hyper's wait for the head.
        #[pin]
        first: Option<F>,
        // That connection, which the answer's body takes along.
        sender: Option<SendRequest<UpstreamBody>>,
        // Everything else (see `Forwarder::send`).
        slow: Option<SlowExchange<'a>>,
        now: Instant,
    }
}

impl<F> Future for Sending<'_, F>
where
    F: Future<
        Output = Result<
            Response<Incoming>,
            hyper::client::conn::TrySendError<Request<UpstreamBody>>,
        >,
    >,
{
    type Output = Result<Response<UpstreamResponseBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = match this.first.as_mut().as_pin_mut() {
            Some(first) => match first.poll(cx) {
                Poll::Ready(Ok(response)) => match this.sender.take() {
                    Some(sender) => Poll::Ready(Ok((response, sender))),
                    None => Poll::Ready(Err(ProxyError::Upstream(
                        "the connection went missing".into(),
                    ))),
                },
                Poll::Ready(Err(mut e)) => {
                    this.first.set(None);
                    *this.sender = None;
                    match e.take_message() {
                        // The pooled connection closed before the request went out: another.
                        Some(unsent) => {
                            let mut slow = this.forwarder.exchange_boxed(unsent, *this.now);
                            let polled = slow.as_mut().poll(cx);
                            *this.slow = Some(slow);
                            polled
                        }
                        None => Poll::Ready(Err(ProxyError::Upstream(describe(&e.into_error())))),
                    }
                }
                Poll::Pending => Poll::Pending,
            },
            None => match this.slow {
                Some(slow) => slow.as_mut().poll(cx),
                None => Poll::Ready(Err(ProxyError::Upstream(
                    "the request was already answered".into(),
                ))),
            },
        };
        let (response, sender) = match polled {
            Poll::Ready(Ok(answered)) => answered,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Registered before the flag is read, so a sweep between the two still wakes
                // us.
                this.armed.expiry.waker.register(cx.waker());
                if this
                    .armed
                    .expiry
                    .fired
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return Poll::Ready(Err(ProxyError::UpstreamTimeout));
                }
                return Poll::Pending;
            }
        };
        let (parts, body) = response.into_parts();
        let body = UpstreamResponseBody {
            body,
            sender: Some(sender),
            pool: Arc::clone(&this.forwarder.pool),
            idle: None,
            sent_at: *this.now,
        };
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// Amazon's response body: streamed to the client, with the idle-read timeout, and its
/// connection returned to the pool once the body has been read to the end. 112 bytes, so that
/// the answer, which the pipeline moves a few times before boxing its body, stays within 256
/// (see [`UpstreamBody`]); whose answer it is joins it in the box ([`Answer`]).
pub struct UpstreamResponseBody {
    body: Incoming,
    sender: Option<SendRequest<UpstreamBody>>,
    pool: Arc<Pool>,
    /// Armed while waiting for the next frame.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the request was sent: the connection's idle time counts from it.
    sent_at: Instant,
}

impl UpstreamResponseBody {
    fn finished(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.checkin(sender, self.sent_at);
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.idle = None;
                match &frame {
                    None => this.finished(),
                    Some(Err(_)) => this.sender = None,
                    Some(Ok(_)) if this.body.is_end_stream() => this.finished(),
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.pool.idle_timeout;
                let sleep = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.sender = None;
                    let why = format!("the upstream sent nothing for {timeout:?} (timeouts.idle)");
                    return Poll::Ready(Some(Err(why.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whose answer a streaming body is: said if the body breaks off after its status has gone to
/// the client (the request's own log line, already written, says the status).
#[derive(Debug, Clone)]
pub struct Whose {
    /// The seller and operation, as metric labels.
    pub labels: crate::metrics::OperationLabels,
    /// The status Amazon sent.
    pub status: u16,
    /// Amazon's `x-amzn-RequestId`, if it sent one.
    pub request_id: Option<HeaderValue>,
}

/// Amazon's body on its way to the client, and whose answer it is: if Amazon breaks it off
/// (or sends nothing for `timeouts.idle`), a WARN line with its own outcome, and a count.
pub struct Answer {
    body: UpstreamResponseBody,
    whose: Option<Whose>,
}

impl Answer {
    /// `body`, said to be `whose` if it breaks off.
    pub fn new(body: UpstreamResponseBody, whose: Whose) -> Answer {
        Answer {
            body,
            whose: Some(whose),
        }
    }

    fn broke_off(&mut self, why: &dyn std::fmt::Display) {
        let Some(whose) = self.whose.take() else {
            return;
        };
        crate::metrics::metrics()
            .upstream_body_broken
            .get_or_create(&whose.labels)
            .inc();
        tracing::warn!(
            outcome = "upstream_body_broken",
            seller = &*whose.labels.seller,
            op = whose.labels.operation,
            status = whose.status,
            request_id = whose
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            error = %why,
            "Amazon broke the response body off; the client got a truncated answer"
        );
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            this.broke_off(e);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether `e` (or one of its causes) says this process or machine ran out of something of its
/// own (descriptors, buffers, memory): not Amazon's fault, and not a reason to call it down.
pub fn out_of_local_resources(e: &(dyn std::error::Error + 'static)) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
                || io.kind() == std::io::ErrorKind::OutOfMemory
            {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// An error's message plus its causes, which say what actually failed (refused, reset, TLS).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
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

    /// What the request path moves most stays within 256 bytes (see [`UpstreamBody`]; hyper's
    /// envelope adds 24 bytes to the request).
    #[test]
    fn the_moved_values_fit_eight_vector_moves() {
        assert_eq!(std::mem::size_of::<UpstreamBody>(), 8);
        assert!(std::mem::size_of::<Request<UpstreamBody>>() <= 232);
        assert!(std::mem::size_of::<Response<UpstreamResponseBody>>() <= 256);
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

    /// Headers given, and the names left after stripping.
    type StripCase = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );

    /// Each hop-by-hop name has its own bit, in any case; other names, some of the same
    /// lengths, have none.
    #[test]
    fn every_hop_by_hop_name_has_its_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i as u32), "{name}");
            let upper = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&upper), Some(i as u32), "{upper}");
        }
        for other in [
            "tx",
            "x-token",
            "keep-alivx",
            "content-length",
            "x-amzn-requestid",
            "date",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
    }

    #[test]
    fn hop_by_hop_strip_table() {
        let cases: [StripCase; 8] = [
            (&[("content-type", "application/json")], &["content-type"]),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("x-amzn-requestid", "r"),
                ],
                &["x-amzn-requestid"],
            ),
            (&[("connection", "Keep-Alive"), ("date", "d")], &["date"]),
            (
                &[
                    ("connection", "close, x-trace"),
                    ("x-trace", "1"),
                    ("x-other", "2"),
                ],
                &["x-other"],
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("connection", "x-trace"),
                    ("x-trace", "1"),
                ],
                &[],
            ),
            (
                &[
                    ("connection", "Keep-Alive"),
                    ("etag", "e"),
                    ("connection", "close"),
                    ("x-trace", "1"),
                ],
                &["etag", "x-trace"],
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("trailer", "x"),
                    ("upgrade", "h2c"),
                    ("te", "trailers"),
                ],
                &[],
            ),
            (
                &[
                    ("proxy-connection", "keep-alive"),
                    ("proxy-authenticate", "Basic"),
                    ("etag", "e"),
                ],
                &["etag"],
            ),
        ];
        for (given, kept) in cases {
            let mut h = headers(given);
            let id = strip_hop_by_hop(&mut h, &HeaderName::from_static("etag"));
            assert_eq!(id.is_some(), kept.contains(&"etag"), "{given:?}");
            // In any order: removing a name moves the last one into its place.
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            let mut kept = kept.to_vec();
            kept.sort_unstable();
            assert_eq!(names, kept, "{given:?}");
        }
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
        let before = amz_date(SystemTime::now());
        let out = upstream_headers(
            &inbound,
            &HeaderValue::from_static("Atza|ours"),
            std::time::Instant::now(),
            &HeaderValue::from_static("sellingpartnerapi-na.amazon.com"),
        );
        let after = amz_date(SystemTime::now());
        let all =
            |k: &str| -> Vec<&str> { out.get_all(k).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-amz-access-token"), ["Atza|ours"]);
        assert_eq!(all("host"), ["sellingpartnerapi-na.amazon.com"]);
        let date = all("x-amz-date");
        assert_eq!(date.len(), 1);
        assert!(
            date[0] == before || date[0] == after,
            "{date:?}: now is {after}"
        );
        assert_eq!(
            all("user-agent"),
            [format!(
                "spapi-proxy/{} (Language=Rust; Client=curl/8.5.0)",
                env!("CARGO_PKG_VERSION")
            )]
        );
        for gone in [
            "authorization",
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
