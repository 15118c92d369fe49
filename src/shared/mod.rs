//! State that several replicas share through Redis (`shared_state`): the buckets
//! ([`buckets`]) and the tokens ([`tokens`]).
//!
//! The client is redis-rs's multiplexed connection: one TCP (or TLS) connection per replica,
//! pipelining every request's command on it, with connect and response timeouts. redis-rs's
//! `ConnectionManager` would reconnect by itself, but it retries inside the caller's command;
//! here a command that fails must fail at once so the request goes on with the local fallback,
//! so this module owns the reconnecting: a probe every [`PROBE_EVERY`] pings Redis while it is
//! up and reconnects while it is down. While down, nothing on the request path waits for Redis.

pub mod buckets;
pub mod sellers;
pub mod tokens;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use crate::config::{redacted_url, ConfigError, SharedState};

/// How often Redis is pinged (up) or reconnected to (down).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A command, or a connection attempt, that takes longer than this counts as a failure.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// Every key the proxy writes starts with this.
pub const PREFIX: &str = "spapi-proxy:";

/// The connection to Redis, and whether it answers.
pub struct Redis {
    client: redis::Client,
    /// Shown in logs: the URL without user or password.
    shown: String,
    conn: ArcSwapOption<MultiplexedConnection>,
    up: AtomicBool,
    /// Counts outages, so that a bucket's fallback belongs to one.
    outages: AtomicU64,
    /// The first connection attempt (awaited by the first user) and the probe it starts.
    started: tokio::sync::OnceCell<()>,
    /// How many replicas share each bucket; while down, each takes this share.
    pub replicas: u32,
    /// Encrypts tokens at rest.
    pub(crate) sealer: tokens::Sealer,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.shown)
            .field("up", &self.up())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A client for `config`; nothing is connected until first use.
    pub fn new(config: &SharedState, replicas: u32) -> Result<Arc<Redis>, ConfigError> {
        tls_provider();
        let client =
            redis::Client::open(config.url.expose()).map_err(|e| ConfigError::Invalid {
                key: "shared_state".into(),
                problem: format!("{}: {}", redacted_url(config.url.expose()), describe(&e)),
            })?;
        Ok(Arc::new(Redis {
            client,
            shown: redacted_url(config.url.expose()),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            started: tokio::sync::OnceCell::new(),
            replicas,
            sealer: tokens::Sealer::new(&config.key),
        }))
    }

    /// Whether Redis answered last time it was asked.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The current outage's number (the last one's while up).
    pub fn outage(&self) -> u64 {
        self.outages.load(Ordering::Acquire)
    }

    /// The redacted URL, for the status page.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection, while Redis is up. The first call connects (and starts the probe).
    pub async fn connection(self: &Arc<Self>) -> Option<MultiplexedConnection> {
        self.started
            .get_or_init(|| async {
                if !self.connect().await {
                    self.went_down("cannot connect");
                }
                let weak = Arc::downgrade(self);
                tokio::spawn(probe(weak));
            })
            .await;
        if !self.up() {
            return None;
        }
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// A command failed: go on without Redis until the probe reconnects.
    pub fn failed(&self, error: &redis::RedisError) {
        self.went_down(&describe(error));
    }

    fn went_down(&self, why: &str) {
        self.conn.store(None);
        let m = crate::metrics::metrics();
        m.shared_state_up.set(0);
        // Warned once per outage: `up` goes from true to false once. Before the first
        // connection `up` is false already, so the start-up failure is warned here instead.
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let first = !self.started.initialized();
        if was_up || first {
            self.outages.fetch_add(1, Ordering::AcqRel);
            m.shared_state_outages.inc();
            tracing::warn!(
                shared_state = %self.shown,
                error = why,
                replicas = self.replicas,
                "shared state unreachable: each bucket falls back to its local share (1/replicas) until it answers again"
            );
        }
    }

    /// Connects and pings; true if Redis answered.
    async fn connect(&self) -> bool {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(TIMEOUT * 2, attempt).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn)));
                let was_up = self.up.swap(true, Ordering::AcqRel);
                crate::metrics::metrics().shared_state_up.set(1);
                if !was_up {
                    tracing::info!(shared_state = %self.shown, "shared state reachable: buckets and tokens are shared again");
                }
                true
            }
            _ => false,
        }
    }

    /// While up, whether it still answers.
    async fn ping(&self) -> bool {
        let Some(conn) = self.conn.load_full() else {
            return false;
        };
        let mut conn = (*conn).clone();
        match redis::cmd("PING").query_async::<()>(&mut conn).await {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }
}

/// rediss:// goes through rustls, which needs one process-wide crypto provider: ring, as
/// everywhere else in the proxy (a build that also links aws-lc-rs could not pick one itself).
pub(crate) fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What went wrong, in words that never hold the URL or a password.
pub fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_connection_dropped() {
        "connection dropped".into()
    } else {
        format!("{:?}", e.kind())
    }
}

/// Pings while up, reconnects while down; ends when the proxy drops its client.
async fn probe(redis: Weak<Redis>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(r) = redis.upgrade() else { return };
        if r.up() {
            r.ping().await;
        } else {
            r.connect().await;
        }
    }
}
