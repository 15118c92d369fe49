//! Rate limits: a bucket per (application, seller, region, operation), a FIFO queue in front
//! of each, and pacing that adapts to what Amazon says.
//!
//! Amazon's usage plans are per application + seller pair and operation, in each region, so
//! the buckets are named that way ([`store::BucketName`]); grantless operations count against
//! the application's own key.
//!
//! - [`settings`]: the limiter's settings and quota policy (catalog, overrides, sandbox).
//! - [`pacing`]: the policy of one bucket: GCRA slots, Amazon's header as a ceiling, the cut
//!   on a 429 and the slow climb back.
//! - [`store`]: where a bucket's state lives: this process's memory, or (`shared_state`)
//!   Redis, shared by replicas.
//!
//! A request waits in its bucket's local queue; the head of the queue reserves the next slot
//! from the store and sleeps until it, so each replica holds at most one reservation ahead
//! and a cut rate applies from the next request on. A request Amazon throttled reserves again
//! without queueing: it goes before everything queued behind it.

pub mod pacing;
pub mod settings;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::QuotaSource;
use crate::error::ProxyError;
use crate::key::Key;
use crate::operations::{Catalog, Operation};
use pacing::Slot;
pub use settings::{Settings, SANDBOX_QUOTA};
use store::{BucketName, BucketStore, MemoryStore, Shape, StoredBucket};

/// A request that takes a bucket's last whole token is sent this much later. Amazon's bucket
/// starts refilling when our first request *arrives*; if a later request's trip is shorter than
/// that first one's, it would arrive before Amazon's token does. A constant delay on the pacing
/// edge absorbs that jitter without lowering the rate.
pub const PACING_MARGIN: Duration = Duration::from_millis(20);

/// Where a bucket's current rate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Catalog, config or default.
    Configured(QuotaSource),
    /// Amazon's `x-amzn-RateLimit-Limit` header.
    Amazon,
    /// Below the ceiling since Amazon answered 429, climbing back.
    Throttled,
}

impl RateSource {
    /// Name for `/_proxy/quota`.
    pub fn name(self) -> &'static str {
        match self {
            RateSource::Configured(s) => s.name(),
            RateSource::Amazon => "amazon",
            RateSource::Throttled => "throttled",
        }
    }
}

/// One bucket: whose, and which operation (`None`: unknown requests, or the sandbox's one
/// shared limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// The seller and region, or the application.
    pub key: Key,
    /// The operation's catalog index.
    pub op: Option<usize>,
}

/// One bucket as it stands, for `/_proxy/quota`, metrics and the status page.
#[derive(Debug, Clone)]
pub struct BucketView {
    /// Whose.
    pub key: Key,
    /// `api.operationId`, `unknown` or `sandbox`.
    pub operation: String,
    /// The bare operationId, or `-`.
    pub operation_id: &'static str,
    /// The operation's API (`ordersV0`), or `-`.
    pub operation_api: &'static str,
    /// The API.
    pub api: String,
    /// Requests per second now.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
    /// Tokens in the bucket now.
    pub tokens: f64,
    /// Requests waiting.
    pub waiting: usize,
    /// Where the rate came from.
    pub source: RateSource,
    /// How long ago the proxy last refused a request here with its own 429.
    pub last_local_429: Option<Duration>,
    /// How long ago Amazon last answered 429 here.
    pub last_amazon_429: Option<Duration>,
}

/// When a bucket last saw a 429 of each kind, for the status page.
#[derive(Debug, Default, Clone, Copy)]
struct Recent {
    local: Option<Instant>,
    amazon: Option<Instant>,
}

struct Bucket {
    label: String,
    api: String,
    burst: u32,
    /// The configured shape it was made with, so that a reload can tell what changed.
    configured: crate::config::Quota,
    source: QuotaSource,
    /// The config's rate for the operation, which Amazon's header cannot lift.
    hard_ceiling: Option<f64>,
    stored: Arc<dyn StoredBucket>,
    /// A tokio mutex: fair, so waiters get their turn first come, first served. Only the head
    /// of the queue holds it, across its sleep until its reserved slot.
    queue: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
    /// Wakes the head when the rate changes, so it can trade its slot for one at the new rate.
    changed: Notify,
    /// The last rate Amazon's header reported (f64 bits; 0: none yet): the store hears of a
    /// rate only when it changes, not on every answer.
    reported: AtomicU64,
    amazon_seen: AtomicBool,
    /// Touched only on a 429, never on the way to a token.
    recent: Mutex<Recent>,
}

/// Counts a queued request; the count drops however the wait ends (token, timeout, hang-up).
struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    fn take(counter: &'a AtomicUsize) -> Place<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Place(counter)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reserved slot not yet used: given back to the store if the waiter leaves first.
struct Held {
    bucket: Arc<dyn StoredBucket>,
    slot: Option<Slot>,
}

impl Held {
    fn used(mut self) {
        self.slot = None;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let bucket = Arc::clone(&self.bucket);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { bucket.release(slot).await });
            }
        }
    }
}

impl Bucket {
    /// How long `ahead` more requests would wait for their tokens.
    fn estimate(&self, ahead: usize) -> Duration {
        let r = self.stored.reading();
        let missing = (ahead as f64 + 1.0 - r.tokens).max(0.0);
        Duration::try_from_secs_f64(missing / r.rate).unwrap_or(Duration::MAX)
    }

    fn rate(&self) -> (f64, RateSource) {
        let r = self.stored.reading();
        let source = if r.throttled {
            RateSource::Throttled
        } else if self.amazon_seen.load(Ordering::Relaxed)
            && self
                .hard_ceiling
                .is_none_or(|h| f64::from_bits(self.reported.load(Ordering::Relaxed)) <= h)
        {
            RateSource::Amazon
        } else {
            RateSource::Configured(self.source)
        };
        (r.rate, source)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proxy's own 429 for this bucket: noted for the status page, and handed back.
    fn refuse(&self, wait: Duration, reason: String) -> ProxyError {
        self.recent().local = Some(Instant::now());
        refuse(wait, reason)
    }

    fn too_late(&self, wait: Duration, max_wait: Duration) -> ProxyError {
        self.refuse(
            wait,
            format!(
                "{} did not get quota within {:.1} s",
                self.label,
                max_wait.as_secs_f64()
            ),
        )
    }

    /// Amazon reported `rate`: the store hears of it when it differs from the last report.
    async fn observe(&self, rate: f64) {
        self.amazon_seen.store(true, Ordering::Relaxed);
        if self.reported.swap(rate.to_bits(), Ordering::Relaxed) == rate.to_bits() {
            return;
        }
        let before = self.stored.reading().rate;
        self.stored.observe(rate).await;
        let after = self.stored.reading().rate;
        if (after - before).abs() > 1e-9 {
            tracing::info!(bucket = %self.label, rate = after, "rate changed");
            self.changed.notify_waiters();
        }
    }

    /// Reserves the next slot within `deadline` and sleeps until it (`now` is the caller's
    /// clock reading); a rate changed meanwhile trades the slot for one at the new rate.
    async fn take_slot(
        &self,
        mut now: Instant,
        deadline: Instant,
        max_wait: Duration,
    ) -> Result<Option<Slot>, ProxyError> {
        loop {
            let within = deadline.saturating_duration_since(now);
            let reserved = match self.stored.reserve_at_once(within) {
                Some(reserved) => reserved,
                None => self.stored.reserve(within).await,
            };
            let slot = match reserved {
                Ok(slot) => slot,
                Err(wait) => return Err(self.too_late(wait, max_wait)),
            };
            if slot.wait <= 0.0 {
                return Ok(Some(slot));
            }
            let held = Held {
                bucket: Arc::clone(&self.stored),
                slot: Some(slot),
            };
            // The store's figure (Redis's, with shared state) is input: converted checked.
            let at = now + Duration::try_from_secs_f64(slot.wait).unwrap_or(max_wait);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    held.used();
                    return Ok(Some(slot));
                }
                () = self.changed.notified() => {
                    held.used();
                    self.stored.release(slot).await;
                    now = Instant::now();
                }
            }
        }
    }
}

/// The proxy's own 429: when to retry, rounded up to whole seconds, and why.
fn refuse(wait: Duration, reason: String) -> ProxyError {
    ProxyError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        reason,
    }
}

/// Every bucket, created on first use.
pub struct Limiter {
    settings: ArcSwap<Settings>,
    /// `settings.enabled`, `sandbox` and `max_queue`, read on every request: atomic loads, not
    /// an `ArcSwap` guard each (50 to 70 instructions).
    enabled: AtomicBool,
    sandbox: AtomicBool,
    max_queue: AtomicUsize,
    store: Arc<dyn BucketStore>,
    /// Looked up on every request with limiting on: foldhash, not SipHash, for the string key.
    buckets: Mutex<HashMap<BucketKey, Arc<Bucket>, foldhash::quality::RandomState>>,
}

/// One bucket, looked up once for a request (see [`Limiter::quota`]).
pub struct Quota(Arc<Bucket>);

impl Quota {
    /// Whether Amazon's `rate` would tell the bucket anything: the rate it reported last
    /// time (its usual answer) needs no step of its own.
    pub fn is_news(&self, rate: f64) -> bool {
        let b = &self.0;
        !(b.amazon_seen.load(Ordering::Relaxed)
            && b.reported.load(Ordering::Relaxed) == rate.to_bits())
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// Buckets shaped by `settings`, kept in memory.
    pub fn new(settings: Settings) -> Limiter {
        Limiter::with_store(settings, Arc::new(MemoryStore::default()))
    }

    /// Buckets shaped by `settings`, kept in `store`.
    pub fn with_store(settings: Settings, store: Arc<dyn BucketStore>) -> Limiter {
        Limiter {
            enabled: AtomicBool::new(settings.enabled),
            sandbox: AtomicBool::new(settings.sandbox),
            max_queue: AtomicUsize::new(settings.max_queue),
            settings: ArcSwap::from_pointee(settings),
            store,
            buckets: Mutex::new(HashMap::default()),
        }
    }

    /// Whether local limiting is on (`rate_limit`).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Applies reloaded settings: a bucket whose configured shape changed is rebuilt with it,
    /// and the buckets of keys `keep` says are gone are dropped.
    pub fn reconfigure(&self, settings: Settings, keep: impl Fn(&Key) -> bool) {
        let catalog = Catalog::builtin();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|k, _| keep(&k.key));
        if settings != **self.settings.load() {
            buckets.retain(|k, b| {
                let op = k.op.map(|i| &catalog.operations()[i]);
                let (quota, _) = settings.quota(op.filter(|_| !settings.sandbox));
                quota == b.configured
            });
        }
        self.enabled.store(settings.enabled, Ordering::Relaxed);
        self.sandbox.store(settings.sandbox, Ordering::Relaxed);
        self.max_queue.store(settings.max_queue, Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
    }

    fn bucket(&self, key: &Key, op: Option<&Operation>) -> Arc<Bucket> {
        // In the sandbox every operation shares one limit, so they share one bucket too.
        let sandbox = self.sandbox.load(Ordering::Relaxed);
        let op = op.filter(|_| !sandbox);
        let bucket_key = BucketKey {
            key: key.clone(),
            op: op.map(|o| o.index),
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get(&bucket_key) {
            return Arc::clone(b);
        }
        let settings = self.settings.load();
        let (quota, source) = settings.quota(op);
        let label: String = match op {
            Some(o) => o.qualified(),
            None if settings.sandbox => "sandbox".into(),
            None => "unknown".into(),
        };
        let name = BucketName {
            application: Arc::clone(&settings.application),
            key: key.clone(),
            operation: Arc::from(label.as_str()),
        };
        let shape = Shape {
            rate: quota.rate,
            burst: quota.burst,
            hard_ceiling: op.and_then(|o| settings.rate_override(o)),
        };
        let bucket = Arc::new(Bucket {
            label: format!("{label} ({key})"),
            api: op.map_or_else(String::new, |o| o.api.clone()),
            burst: quota.burst,
            configured: quota,
            source,
            hard_ceiling: shape.hard_ceiling,
            stored: self.store.open(name, shape),
            queue: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
            reported: AtomicU64::new(0),
            amazon_seen: AtomicBool::new(false),
            recent: Mutex::default(),
        });
        buckets.insert(bucket_key, Arc::clone(&bucket));
        bucket
    }

    /// The bucket `op` under `key` draws on, for a request to use at each step (`None` with
    /// limiting off): one lookup per request rather than one per step.
    pub fn quota(&self, key: &Key, op: Option<&Operation>) -> Option<Quota> {
        self.enabled().then(|| Quota(self.bucket(key, op)))
    }

    /// Refuses at once, waiting for nothing, when `quota`'s queue is full or its wait would
    /// pass `max_wait`; lets the caller skip work (a token call) for a request that would be
    /// refused.
    pub fn precheck_in(&self, quota: &Quota, max_wait: Duration) -> Result<(), ProxyError> {
        self.refuse_early(&quota.0, max_wait)
    }

    fn refuse_early(&self, bucket: &Bucket, max_wait: Duration) -> Result<(), ProxyError> {
        let ahead = bucket.waiting.load(Ordering::SeqCst);
        if ahead >= self.max_queue.load(Ordering::Relaxed) {
            return Err(bucket.refuse(
                bucket.estimate(ahead),
                format!("{} requests already wait for {}", ahead, bucket.label),
            ));
        }
        let estimate = bucket.estimate(ahead);
        if estimate > max_wait {
            return Err(bucket.refuse(
                estimate,
                format!(
                    "{} would wait about {:.1} s for quota, longer than the {:.1} s allowed",
                    bucket.label,
                    estimate.as_secs_f64(),
                    max_wait.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }

    /// Waits for a slot for `op` under `key` (FIFO per bucket) for at most `max_wait`;
    /// returns how long the request waited. Past `max_wait`, or with the queue full, the
    /// request is refused at once with the time after which a retry may succeed.
    pub async fn acquire(
        &self,
        key: &Key,
        op: Option<&Operation>,
        max_wait: Duration,
    ) -> Result<Duration, ProxyError> {
        match self.quota(key, op) {
            Some(quota) => {
                self.precheck_in(&quota, max_wait)?;
                self.acquire_in(&quota, max_wait).await
            }
            None => Ok(Duration::ZERO),
        }
    }

    /// [`Limiter::acquire`] in `quota`'s bucket, for a request [`Limiter::precheck_in`] let
    /// through with nothing awaited since (the request path checks once, not twice).
    pub async fn acquire_in(
        &self,
        quota: &Quota,
        max_wait: Duration,
    ) -> Result<Duration, ProxyError> {
        let bucket = &quota.0;
        let started = Instant::now();
        let deadline = started + max_wait;
        let _place = Place::take(&bucket.waiting);
        // Nobody ahead: the head of the queue without a timer. With someone ahead (or handed
        // the lock as it was released), `try_lock` fails and this request queues behind them.
        let (head, now) = match bucket.queue.try_lock() {
            Ok(head) => (head, started),
            Err(_) => match tokio::time::timeout_at(deadline, bucket.queue.lock()).await {
                Ok(head) => (head, Instant::now()),
                Err(_) => {
                    return Err(bucket.too_late(
                        bucket.estimate(bucket.waiting.load(Ordering::SeqCst)),
                        max_wait,
                    ))
                }
            },
        };
        let slot = bucket.take_slot(now, deadline, max_wait).await;
        drop(head);
        Self::sent(slot?, started).await
    }

    /// Like [`Limiter::acquire_in`], for a request Amazon throttled: it does not queue again
    /// behind the requests that came after it, but takes the next slot.
    pub async fn acquire_again_in(
        &self,
        quota: &Quota,
        max_wait: Duration,
    ) -> Result<Duration, ProxyError> {
        let bucket = &quota.0;
        let started = Instant::now();
        let _place = Place::take(&bucket.waiting);
        let slot = bucket
            .take_slot(started, started + max_wait, max_wait)
            .await;
        Self::sent(slot?, started).await
    }

    async fn sent(slot: Option<Slot>, started: Instant) -> Result<Duration, ProxyError> {
        if slot.is_some_and(|s| s.left == 0) {
            tokio::time::sleep(PACING_MARGIN).await;
        }
        Ok(started.elapsed())
    }

    /// Amazon reported the rate it applies to `op` for `key`: a ceiling for the bucket.
    pub async fn observe_rate(&self, key: &Key, op: Option<&Operation>, rate: f64) {
        if let Some(quota) = self.quota(key, op) {
            self.observe_rate_in(&quota, rate).await;
        }
    }

    /// [`Limiter::observe_rate`] for `quota`'s bucket.
    pub async fn observe_rate_in(&self, quota: &Quota, rate: f64) {
        // The sandbox's shared limit is not the per-operation rate its answers may report.
        let sandbox = self.sandbox.load(Ordering::Relaxed);
        if self.enabled() && !sandbox && rate.is_finite() && rate > 0.0 {
            quota.0.observe(rate).await;
        }
    }

    /// Amazon answered 429 for `op` under `key` to a request sent at `sent`: someone else
    /// draws on the quota.
    pub async fn throttled(&self, key: &Key, op: Option<&Operation>, sent: Instant) {
        if let Some(quota) = self.quota(key, op) {
            self.throttled_in(&quota, sent).await;
        }
    }

    /// [`Limiter::throttled`] for `quota`'s bucket, a request sent at `sent`: someone else
    /// draws on the quota.
    pub async fn throttled_in(&self, quota: &Quota, sent: Instant) {
        let bucket = &quota.0;
        bucket.recent().amazon = Some(Instant::now());
        let before = bucket.stored.reading().rate;
        bucket.stored.throttled(sent.elapsed()).await;
        let after = bucket.stored.reading().rate;
        if (after - before).abs() > 1e-9 {
            tracing::info!(bucket = %bucket.label, rate = after, "Amazon answered 429; rate cut");
        }
    }

    /// Every bucket in use, sorted by key and operation.
    pub fn views(&self) -> Vec<BucketView> {
        let buckets: Vec<(BucketKey, Arc<Bucket>)> = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, b)| (k.clone(), Arc::clone(b)))
            .collect();
        let catalog = Catalog::builtin();
        let mut views: Vec<BucketView> = buckets
            .into_iter()
            .map(|(k, b)| {
                let (rate, source) = b.rate();
                let recent = *b.recent();
                let now = Instant::now();
                let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
                let operation = match k.op {
                    Some(i) => catalog.operations()[i].qualified(),
                    None if b.label.starts_with("sandbox") => "sandbox".into(),
                    None => "unknown".into(),
                };
                BucketView {
                    key: k.key,
                    operation,
                    operation_id: k.op.map_or("-", |i| catalog.operations()[i].id.as_str()),
                    operation_api: k.op.map_or("-", |i| catalog.operations()[i].api.as_str()),
                    api: b.api.clone(),
                    rate,
                    burst: b.burst,
                    tokens: b.stored.reading().tokens,
                    waiting: b.waiting.load(Ordering::SeqCst),
                    source,
                    last_local_429: ago(recent.local),
                    last_amazon_429: ago(recent.amazon),
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.key, &a.operation).cmp(&(&b.key, &b.operation)));
        views
    }

    /// Every bucket in use, for `/_proxy/quota`.
    pub fn snapshot(&self) -> Value {
        let rows: Vec<Value> = self
            .views()
            .into_iter()
            .map(|v| {
                json!({
                    "seller": v.key.seller.as_deref(),
                    "region": v.key.region.name(),
                    "operation": v.operation,
                    "api": v.api,
                    "rate": v.rate,
                    "burst": v.burst,
                    "tokens_available": (v.tokens * 100.0).floor() / 100.0,
                    "waiting": v.waiting,
                    "rate_source": v.source.name(),
                })
            })
            .collect();
        json!({"rate_limit": self.enabled(), "buckets": rows})
    }

    /// The bucket's current rate and source (for tests and `explain`).
    pub fn rate_of(&self, key: &Key, op: Option<&Operation>) -> (f64, RateSource) {
        self.bucket(key, op).rate()
    }
}

/// The rate in Amazon's `x-amzn-RateLimit-Limit` header (requests per second), if any.
pub fn rate_header(headers: &http::HeaderMap) -> Option<f64> {
    // Found by a pass over the answer's few names: a lookup hashes this long custom name a
    // byte at a time (130 instructions), and a `&str` name is parsed on every call (190).
    const RATE_LIMIT: http::HeaderName = http::HeaderName::from_static("x-amzn-ratelimit-limit");
    headers
        .iter()
        .find_map(|(name, value)| (*name == RATE_LIMIT).then_some(value))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// `createRestrictedDataToken`, whose bucket RDT mints share with clients calling it directly.
pub fn mint_operation() -> Option<&'static Operation> {
    Catalog::builtin().by_qualified("tokens_2021-03-01", "createRestrictedDataToken")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{Config, Region};

    fn limiter(toml: &str) -> Arc<Limiter> {
        let config = Config::from_toml_str(toml, "t", &|_| None).unwrap();
        Arc::new(Limiter::new(Settings::from_config(&config)))
    }

    fn k() -> Key {
        Key::seller(&Arc::from("default"), Region::Na)
    }

    fn op(id: &str) -> Option<&'static Operation> {
        Catalog::builtin().by_id(id).into_iter().next()
    }

    const CATALOG_ITEM: &str = "[operations.getCatalogItem]\nrate = 2.0\nburst = 2\n";

    #[test]
    fn rate_header_table() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers, Option<f64>)] = &[
            (&[], None),
            (&[("x-amzn-ratelimit-limit", "0.0167")], Some(0.0167)),
            (
                &[
                    ("content-type", "application/json"),
                    ("x-amzn-RateLimit-Limit", " 5 "),
                ],
                Some(5.0),
            ),
            (&[("x-amzn-ratelimit-limit", "fast")], None),
            (&[("x-amzn-ratelimit-limit", "")], None),
            // Repeated: the first, as `HeaderMap::get` would give.
            (
                &[
                    ("x-amzn-ratelimit-limit", "2"),
                    ("x-amzn-ratelimit-limit", "3"),
                ],
                Some(2.0),
            ),
            (&[("x-amzn-ratelimit-limit-extra", "2")], None),
        ];
        for (headers, want) in cases {
            let mut map = http::HeaderMap::new();
            for (name, value) in *headers {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            assert_eq!(rate_header(&map), *want, "{headers:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_is_news_until_the_bucket_has_it() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        let quota = l.quota(&k(), item).unwrap();
        assert!(quota.is_news(2.0), "nothing reported yet");
        l.observe_rate_in(&quota, 2.0).await;
        assert!(!quota.is_news(2.0));
        assert!(quota.is_news(1.0));
        l.observe_rate_in(&quota, 1.0).await;
        assert!(!quota.is_news(1.0));
        assert!(quota.is_news(2.0));
        // The one bucket, whichever way it is reached.
        assert!(!l.quota(&k(), item).unwrap().is_news(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_remember_when_they_last_saw_each_429() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        let view = |l: &Limiter| l.views().into_iter().next().unwrap();
        for _ in 0..2 {
            l.acquire(&k(), item, Duration::ZERO).await.unwrap();
        }
        let v = view(&l);
        assert_eq!((v.last_local_429, v.last_amazon_429), (None, None));

        assert!(l.acquire(&k(), item, Duration::ZERO).await.is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        l.throttled(&k(), item, Instant::now()).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let v = view(&l);
        assert_eq!(v.last_local_429, Some(Duration::from_secs(7)));
        assert_eq!(v.last_amazon_429, Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        let start = Instant::now();
        let mut admitted = Vec::new();
        for _ in 0..6 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
            admitted.push(start.elapsed());
        }
        let ms: Vec<u128> = admitted.iter().map(Duration::as_millis).collect();
        // Two at once (the second takes the last token and is paced), then one per 500 ms.
        assert_eq!(ms, [0, 20, 520, 1020, 1520, 2020]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_first_come_first_served() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        l.acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap();
        l.acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (l, order) = (Arc::clone(&l), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                l.acquire(&k(), item, Duration::from_secs(60))
                    .await
                    .unwrap();
                order.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_expiry_refuses_with_retry_after() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        for _ in 0..2 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let started = Instant::now();
        let err = l
            .acquire(&k(), item, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(1),
            "refused at once, not after waiting"
        );
        assert_eq!(err.status(), 429);
        let ProxyError::RateLimited {
            retry_after_secs, ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(retry_after_secs, 1);
        // A wait that fits is granted.
        let waited = l.acquire(&k(), item, Duration::from_secs(1)).await.unwrap();
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded() {
        let l = limiter(&format!("max_queue = 3\n{CATALOG_ITEM}"));
        let item = op("getCatalogItem");
        for _ in 0..2 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let mut queued = Vec::new();
        for _ in 0..3 {
            let l = Arc::clone(&l);
            queued.push(tokio::spawn(async move {
                l.acquire(&k(), item, Duration::from_secs(60)).await
            }));
            tokio::task::yield_now().await;
        }
        let err = l
            .acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("3 requests already wait"), "{err}");
        for q in queued {
            assert!(q.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_and_takes_no_quota() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        for _ in 0..2 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let gone = {
            let l = Arc::clone(&l);
            tokio::spawn(async move { l.acquire(&k(), item, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(l.snapshot()["buckets"][0]["waiting"], 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(l.snapshot()["buckets"][0]["waiting"], 0);
        // The token the cancelled waiter would have had goes to the next request.
        let started = Instant::now();
        l.acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            started.elapsed() <= Duration::from_millis(520),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn amazons_header_moves_the_rate_down_and_up() {
        // The catalog's 2/s, burst 2: Amazon's header replaces it both ways.
        let l = limiter("");
        let item = op("getCatalogItem");
        for _ in 0..2 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
        }
        l.observe_rate(&k(), item, 0.5).await;
        assert_eq!(l.rate_of(&k(), item), (0.5, RateSource::Amazon));
        let started = Instant::now();
        l.acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap();
        let down = started.elapsed();
        assert!(down >= Duration::from_millis(1900), "{down:?}");

        l.observe_rate(&k(), item, 10.0).await;
        let started = Instant::now();
        for _ in 0..5 {
            l.acquire(&k(), item, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let up = started.elapsed();
        assert!(up <= Duration::from_millis(600), "{up:?}");
        assert_eq!(l.snapshot()["buckets"][0]["rate_source"], "amazon");
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_rate_is_a_ceiling_amazons_header_cannot_lift() {
        let l = limiter(CATALOG_ITEM.replace("2.0", "1.0").as_str());
        let item = op("getCatalogItem");
        l.observe_rate(&k(), item, 10.0).await;
        assert_eq!(l.rate_of(&k(), item).0, 1.0);
        l.observe_rate(&k(), item, 0.5).await;
        assert_eq!(l.rate_of(&k(), item), (0.5, RateSource::Amazon));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_follows_a_rate_raised_while_it_sleeps() {
        // An operation without a published plan: the default rate, which Amazon's header lifts.
        let l = limiter("default_rate = 0.1\ndefault_burst = 1\n");
        let orders = op("listAccounts");
        l.acquire(&k(), orders, Duration::from_secs(60))
            .await
            .unwrap();
        let waiter = {
            let l = Arc::clone(&l);
            tokio::spawn(async move { l.acquire(&k(), orders, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        l.observe_rate(&k(), orders, 10.0).await;
        let waited = waiter.await.unwrap().unwrap();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_empties_and_slows_the_bucket() {
        let l = limiter(CATALOG_ITEM);
        let item = op("getCatalogItem");
        l.throttled(&k(), item, Instant::now()).await;
        let cut = 2.0 * pacing::CUT;
        assert_eq!(l.rate_of(&k(), item), (cut, RateSource::Throttled));
        let started = Instant::now();
        l.acquire(&k(), item, Duration::from_secs(60))
            .await
            .unwrap();
        let waited = started.elapsed().as_secs_f64();
        assert!(waited >= 1.0 / cut - 0.01, "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sandbox_has_one_bucket_for_everything() {
        let l = limiter("sandbox = true");
        for (i, id) in ["getOrders", "getCatalogItem", "getReport"]
            .iter()
            .cycle()
            .take(15)
            .enumerate()
        {
            let waited = l
                .acquire(&k(), op(id), Duration::from_secs(60))
                .await
                .unwrap();
            assert!(waited <= PACING_MARGIN, "request {i}: {waited:?}");
        }
        let waited = l
            .acquire(&k(), op("getFeed"), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            waited >= Duration::from_millis(180),
            "the 16th waits for 1/5 s: {waited:?}"
        );
        l.observe_rate(&k(), op("getOrders"), 0.0167).await;
        let snapshot = l.snapshot();
        assert_eq!(snapshot["buckets"].as_array().unwrap().len(), 1);
        assert_eq!(snapshot["buckets"][0]["operation"], "sandbox");
        assert_eq!(snapshot["buckets"][0]["rate"], 5.0);
    }

    #[tokio::test]
    async fn disabled_limiting_admits_everything_at_once() {
        let l = limiter(&format!("rate_limit = false\n{CATALOG_ITEM}"));
        for _ in 0..100 {
            let waited = l
                .acquire(&k(), op("getCatalogItem"), Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(waited, Duration::ZERO);
        }
        assert_eq!(l.snapshot()["buckets"].as_array().unwrap().len(), 0);
    }
}
