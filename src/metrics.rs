//! Prometheus metrics, served at `GET /_proxy/metrics` in the text exposition format.
//!
//! One set per process (`metrics()`), because the token caches, the limiter and the server
//! that feed it are spread over the whole proxy and a process runs one proxy. Labels are
//! bounded: seller names from the config, operationIds and API names from the catalog, status
//! classes, token kinds. Never a path, an id or a value a client chose.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::operations::Operation;

/// A request as counted: whose, which operation, how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The seller's configured name, or `-` (grantless, or refused before one was chosen).
    pub seller: Arc<str>,
    /// The API (`ordersV0`), or `-` for unknown requests.
    pub api: &'static str,
    /// The operationId, or `-`.
    pub operation: &'static str,
    /// `2xx` ... `5xx`.
    pub status: &'static str,
}

/// One operation of one seller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The seller's configured name, or `-`.
    pub seller: Arc<str>,
    /// The API (`ordersV0`), or `-`.
    pub api: &'static str,
    /// The operationId, or `-`.
    pub operation: &'static str,
}

impl OperationLabels {
    /// `seller`'s series for `op` (`None`: requests that matched no operation).
    pub fn new(seller: Arc<str>, op: Option<&'static Operation>) -> OperationLabels {
        OperationLabels {
            seller,
            api: op.map_or("-", |o| o.api.as_str()),
            operation: op.map_or("-", |o| o.id.as_str()),
        }
    }
}

/// An operation, for the latency histograms (no seller: histograms are the costly series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The API, or `-`.
    pub api: &'static str,
    /// The operationId, or `-`.
    pub operation: &'static str,
}

/// A token kind: `lwa`, `rdt` or `grantless`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: &'static str,
}

/// A failed token call: which service and how (`refused`, `unavailable`, `timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `lwa` or `rdt`.
    pub service: &'static str,
    /// How it failed.
    pub reason: &'static str,
}

/// One rate-limit bucket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// The seller's name, or `-` (the application's own buckets).
    pub seller: String,
    /// `na`, `eu` or `fe`.
    pub region: &'static str,
    /// The API, or `-`.
    pub api: &'static str,
    /// The operationId; `unknown` or `sandbox` for the shared buckets.
    pub operation: String,
}

type Seconds = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the proxy keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by seller, API, operation and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from sending upstream to the response headers.
    pub upstream_seconds: Seconds,
    /// Time waited for quota.
    pub queue_wait_seconds: Seconds,
    /// The proxy's own 429s (no quota within max_wait, or a full queue).
    pub local_throttled: Family<OperationLabels, Counter>,
    /// Amazon's 429s.
    pub amazon_throttled: Family<OperationLabels, Counter>,
    /// Amazon's 5xx answers.
    pub amazon_errors: Family<OperationLabels, Counter>,
    /// Answers whose body Amazon broke off after the status line had gone to the client.
    pub upstream_body_broken: Family<OperationLabels, Counter>,
    /// Requests replayed with a fresh token after Amazon rejected the first.
    pub replays: Family<OperationLabels, Counter>,
    /// Calls to LWA's token endpoint, by grant kind (`lwa` seller tokens, `grantless`).
    pub lwa_calls: Family<KindLabels, Counter>,
    /// Token calls that failed, LWA's or the Tokens API's.
    pub token_failures: Family<FailureLabels, Counter>,
    /// RDTs minted.
    pub rdt_mints: Counter,
    /// RDT mints Amazon refused.
    pub rdt_refusals: Counter,
    /// Tokens served from a cache without a call, by kind.
    pub token_cache_hits: Family<KindLabels, Counter>,
    /// Whole tokens in each bucket, at scrape time.
    pub bucket_tokens: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    /// Requests waiting in each bucket's queue, at scrape time.
    pub bucket_waiting: Family<BucketLabels, Gauge>,
    /// Open client connections.
    pub client_connections: Gauge,
    /// With `shared_state`: 1 while Redis answers, 0 while the proxy runs on its fallback
    /// limits (its share of each bucket, `1/replicas`).
    pub shared_state_up: Gauge,
    /// Times Redis stopped answering and the proxy fell back to local limits.
    pub shared_state_outages: Counter,
    /// The histograms' series per catalog operation (the last slot for `-`), resolved once:
    /// looking a series up in its family hashes the labels under a lock on every request.
    upstream_by_op: Box<[OnceLock<Histogram>]>,
    queue_wait_by_op: Box<[OnceLock<Histogram>]>,
    /// The request series seen so far, hashed with foldhash: the family's own map hashes its
    /// labels with SipHash under a lock on every request.
    requests_seen: std::sync::Mutex<
        std::collections::HashMap<RequestLabels, Counter, foldhash::fast::RandomState>,
    >,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spapi_proxy");
        let m = Metrics {
            requests: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            queue_wait_seconds: Family::new_with_constructor(latency_histogram),
            local_throttled: Family::default(),
            amazon_throttled: Family::default(),
            amazon_errors: Family::default(),
            replays: Family::default(),
            upstream_body_broken: Family::default(),
            lwa_calls: Family::default(),
            token_failures: Family::default(),
            rdt_mints: Counter::default(),
            rdt_refusals: Counter::default(),
            token_cache_hits: Family::default(),
            bucket_tokens: Family::default(),
            bucket_waiting: Family::default(),
            client_connections: Gauge::default(),
            shared_state_up: Gauge::default(),
            shared_state_outages: Counter::default(),
            registry: Registry::default(),
            upstream_by_op: per_operation(),
            queue_wait_by_op: per_operation(),
            requests_seen: Default::default(),
        };
        // Each kind's series exists from the start, at zero.
        for kind in ["lwa", "rdt", "grantless"] {
            drop(m.token_cache_hits.get_or_create(&KindLabels { kind }));
        }
        registry.register(
            "requests",
            "Requests answered, by seller, API, operation and status class",
            m.requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to SP-API to its response headers",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a request waited for quota",
            m.queue_wait_seconds.clone(),
        );
        registry.register(
            "local_throttled",
            "Requests the proxy answered 429 itself (no quota within max_wait, or a full queue)",
            m.local_throttled.clone(),
        );
        registry.register(
            "amazon_throttled",
            "429 answers from SP-API",
            m.amazon_throttled.clone(),
        );
        registry.register(
            "amazon_errors",
            "5xx answers from SP-API",
            m.amazon_errors.clone(),
        );
        registry.register(
            "upstream_body_broken",
            "Answers whose body SP-API broke off after the status had gone to the client",
            m.upstream_body_broken.clone(),
        );
        registry.register(
            "token_replays",
            "Requests replayed with a fresh token after SP-API rejected the first",
            m.replays.clone(),
        );
        registry.register(
            "lwa_calls",
            "Calls to the LWA token endpoint, by token kind",
            m.lwa_calls.clone(),
        );
        registry.register(
            "token_failures",
            "Token calls that failed, by service and reason",
            m.token_failures.clone(),
        );
        registry.register(
            "rdt_mints",
            "Restricted Data Tokens minted",
            m.rdt_mints.clone(),
        );
        registry.register(
            "rdt_refusals",
            "RDT mints SP-API refused",
            m.rdt_refusals.clone(),
        );
        registry.register(
            "token_cache_hits",
            "Tokens served from a cache without a call, by kind",
            m.token_cache_hits.clone(),
        );
        registry.register(
            "bucket_tokens_available",
            "Whole tokens in a rate-limit bucket",
            m.bucket_tokens.clone(),
        );
        registry.register(
            "bucket_waiting",
            "Requests waiting for a rate-limit bucket",
            m.bucket_waiting.clone(),
        );
        registry.register(
            "client_connections",
            "Open client connections",
            m.client_connections.clone(),
        );
        registry.register(
            "shared_state_up",
            "1 while the shared state (Redis) answers, 0 while limits are local (shared_state only)",
            m.shared_state_up.clone(),
        );
        registry.register(
            "shared_state_outages",
            "Times the shared state (Redis) stopped answering",
            m.shared_state_outages.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Every metric in OpenMetrics text (`application/openmetrics-text; version=1.0.0`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every metric in Prometheus's classic text format (`text/plain; version=0.0.4`).
    pub fn encode_classic(&self) -> String {
        to_classic(&self.encode())
    }

    /// Counts an answered request.
    pub fn request(&self, labels: RequestLabels) {
        // The last series this thread counted, compared by pointer: a run of requests for one
        // operation of one seller (the common case) counts without the lock and the hash.
        thread_local! {
            static LAST: std::cell::RefCell<Option<(RequestLabels, Counter)>> =
                const { std::cell::RefCell::new(None) };
        }
        let same = |a: &RequestLabels, b: &RequestLabels| {
            Arc::ptr_eq(&a.seller, &b.seller)
                && std::ptr::eq(a.api, b.api)
                && std::ptr::eq(a.operation, b.operation)
                && std::ptr::eq(a.status, b.status)
        };
        let hit = LAST.with(|last| match &*last.borrow() {
            Some((l, counter)) if same(l, &labels) => {
                counter.inc();
                true
            }
            _ => false,
        });
        if hit {
            return;
        }
        let counter = {
            let mut seen = self.requests_seen.lock().unwrap_or_else(|p| p.into_inner());
            match seen.get(&labels) {
                Some(counter) => counter.clone(),
                None => {
                    let counter = self.requests.get_or_create(&labels).clone();
                    seen.insert(labels.clone(), counter.clone());
                    counter
                }
            }
        };
        counter.inc();
        LAST.with(|last| *last.borrow_mut() = Some((labels, counter)));
    }

    /// Records the wait for quota.
    pub fn queued(&self, op: Option<&'static Operation>, waited: Duration) {
        series(&self.queue_wait_seconds, &self.queue_wait_by_op, op).observe(waited.as_secs_f64());
    }

    /// Records the upstream's time to response headers.
    pub fn upstream(&self, op: Option<&'static Operation>, took: Duration) {
        series(&self.upstream_seconds, &self.upstream_by_op, op).observe(took.as_secs_f64());
    }

    /// The counter of tokens of `kind` served from a cache, for a cache to keep and count
    /// with (an atomic add per hit, no lookup).
    pub fn cache_hits(&self, kind: &'static str) -> Counter {
        self.token_cache_hits
            .get_or_create(&KindLabels { kind })
            .clone()
    }

    /// Counts a failed token call.
    pub fn token_failure(&self, service: &'static str, error: &crate::error::TokenError) {
        use crate::error::TokenError;
        let reason = match error {
            TokenError::Refused { .. } => "refused",
            TokenError::Timeout => "timeout",
            _ => "unavailable",
        };
        self.token_failures
            .get_or_create(&FailureLabels { service, reason })
            .inc();
    }
}

/// One empty slot per catalog operation, and one for requests that matched none.
fn per_operation() -> Box<[OnceLock<Histogram>]> {
    let n = crate::operations::Catalog::builtin().operations().len() + 1;
    (0..n).map(|_| OnceLock::new()).collect()
}

/// `op`'s series in `family`, from `cache` after the first time.
fn series<'a>(
    family: &Seconds,
    cache: &'a [OnceLock<Histogram>],
    op: Option<&'static Operation>,
) -> &'a Histogram {
    let slot = op.map_or(cache.len() - 1, |o| o.index.min(cache.len() - 1));
    cache[slot].get_or_init(|| {
        family
            .get_or_create(&OpLabels {
                api: op.map_or("-", |o| o.api.as_str()),
                operation: op.map_or("-", |o| o.id.as_str()),
            })
            .clone()
    })
}

/// The media type of Prometheus's classic text format.
pub const CLASSIC_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The media type of OpenMetrics text.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a scraper's `Accept` asks for OpenMetrics (Prometheus sends it first when it can
/// parse it); anything else gets the classic format, which every scraper reads.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';');
            let media = params.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| p.trim().replace(' ', "") == "q=0")
        })
    })
}

/// OpenMetrics text as Prometheus's classic format: a counter's family is named with its
/// `_total` (OpenMetrics names it without), and `# UNIT` and `# EOF` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match header {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Only the series of the sellers `visible` accepts: a line with a `seller` label of another
/// seller (or of none, `-`) goes, and so does a line without one (application-wide counts);
/// `# HELP` and `# TYPE` lines stay.
pub fn only_sellers(text: &str, visible: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let keep = line.starts_with('#')
            || seller_label(line).is_some_and(|seller| seller != "-" && visible(seller));
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The value of a sample line's `seller` label (seller names are config keys: no quotes or
/// backslashes in them).
fn seller_label(line: &str) -> Option<&str> {
    let labels = &line[line.find('{')? + 1..];
    let at = labels.find("seller=\"")?;
    if at > 0 && !labels[..at].ends_with(',') {
        return None;
    }
    let value = &labels[at + 8..];
    Some(&value[..value.find('"')?])
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `2xx` ... `5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counters_with_total_and_drops_eof() {
        let om = "# HELP spapi_proxy_requests Requests answered.\n\
                  # TYPE spapi_proxy_requests counter\n\
                  spapi_proxy_requests_total{seller=\"a\",api=\"ordersV0\",operation=\"getOrders\",status=\"2xx\"} 3\n\
                  # HELP spapi_proxy_client_connections Open client connections.\n\
                  # TYPE spapi_proxy_client_connections gauge\n\
                  spapi_proxy_client_connections 2\n\
                  # HELP spapi_proxy_queue_wait_seconds Time waited.\n\
                  # TYPE spapi_proxy_queue_wait_seconds histogram\n\
                  # UNIT spapi_proxy_queue_wait_seconds seconds\n\
                  spapi_proxy_queue_wait_seconds_sum{api=\"ordersV0\",operation=\"getOrders\"} 0.5\n\
                  # EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP spapi_proxy_requests_total Requests answered.\n\
             # TYPE spapi_proxy_requests_total counter\n\
             spapi_proxy_requests_total{seller=\"a\",api=\"ordersV0\",operation=\"getOrders\",status=\"2xx\"} 3\n\
             # HELP spapi_proxy_client_connections Open client connections.\n\
             # TYPE spapi_proxy_client_connections gauge\n\
             spapi_proxy_client_connections 2\n\
             # HELP spapi_proxy_queue_wait_seconds Time waited.\n\
             # TYPE spapi_proxy_queue_wait_seconds histogram\n\
             spapi_proxy_queue_wait_seconds_sum{api=\"ordersV0\",operation=\"getOrders\"} 0.5\n"
        );
    }

    #[test]
    fn accept_table() {
        let cases = [
            (None, false),
            (Some("*/*"), false),
            (Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2"), false),
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                true,
            ),
            (Some("application/openmetrics-text; q=0"), false),
            (Some("Application/OpenMetrics-Text"), true),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_openmetrics(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn only_a_limited_keys_sellers_are_kept() {
        let text = "# TYPE x counter\n\
                    x_total{seller=\"acme\",operation=\"a\"} 1\n\
                    x_total{seller=\"beta\",operation=\"a\"} 2\n\
                    x_total{seller=\"-\",operation=\"a\"} 3\n\
                    y_total{kind=\"lwa\"} 4\n\
                    z{region=\"na\",seller=\"acme\"} 5\n\
                    w{oldseller=\"acme\"} 6\n";
        let kept = only_sellers(text, |s| s == "acme");
        assert_eq!(
            kept,
            "# TYPE x counter\n\
             x_total{seller=\"acme\",operation=\"a\"} 1\n\
             z{region=\"na\",seller=\"acme\"} 5\n"
        );
    }
}
