//! Where a bucket's state lives: the seam under the FIFO queue. [`MemoryStore`] keeps it in this
//! process; `shared::buckets::RedisStore` keeps it in Redis for several replicas. Both run the
//! same policy ([`super::pacing`]) and are asked the same things: reserve a slot, give one
//! back, note a 429, note Amazon's rate.
//!
//! Buckets are named by what Amazon's usage plans are keyed by ([`BucketName`]), never by a
//! position in a table that could differ between two builds of the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::pacing::{Pacing, Reading, Slot};
use crate::key::Key;

/// A future a store answers with.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bucket's stable name: the application, the seller (none: the application's own grantless
/// calls), the region and the operation (`api.operationId`, `unknown` or `sandbox`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketName {
    /// A short fingerprint of the LWA client id (the application).
    pub application: Arc<str>,
    /// The seller and region.
    pub key: Key,
    /// `api.operationId`, `unknown` or `sandbox`.
    pub operation: Arc<str>,
}

impl BucketName {
    /// `application:seller:region:operation`, the seller `-` for the application's own calls.
    pub fn path(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.application,
            self.key.seller.as_deref().unwrap_or("-"),
            self.key.region.name(),
            self.operation
        )
    }
}

/// The shape a bucket is made with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// The catalog's, the config's or the default rate.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
    /// The rate set in the config, if any: Amazon's header cannot lift the rate above it.
    pub hard_ceiling: Option<f64>,
}

/// Opens buckets.
pub trait BucketStore: Send + Sync + std::fmt::Debug {
    /// The bucket `name`, made with `shape` if it does not exist yet.
    fn open(&self, name: BucketName, shape: Shape) -> Arc<dyn StoredBucket>;
}

/// One bucket's state, wherever it lives.
pub trait StoredBucket: Send + Sync {
    /// Reserves the next slot if it comes within `max_wait`; else how long until it would.
    fn reserve(&self, max_wait: Duration) -> Pending<'_, Result<Slot, Duration>>;
    /// [`StoredBucket::reserve`] answered without a future, by a store that needs no I/O for
    /// it (`None`: await `reserve`). Every request with limiting on reserves a slot: this
    /// spares the memory store's a boxed future each time.
    fn reserve_at_once(&self, _max_wait: Duration) -> Option<Result<Slot, Duration>> {
        None
    }
    /// Gives a reserved slot back, if no later one was reserved since.
    fn release(&self, slot: Slot) -> Pending<'_, ()>;
    /// Amazon answered 429 to a request sent `age` ago.
    fn throttled(&self, age: Duration) -> Pending<'_, ()>;
    /// Amazon reported this rate.
    fn observe(&self, rate: f64) -> Pending<'_, ()>;
    /// Where the bucket stands (for a shared bucket: as last seen).
    fn reading(&self) -> Reading;
}

/// Buckets in this process's memory, on tokio's clock (tests pause it).
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            epoch: Instant::now(),
        }
    }
}

impl BucketStore for MemoryStore {
    fn open(&self, _name: BucketName, shape: Shape) -> Arc<dyn StoredBucket> {
        Arc::new(MemoryBucket::new(self.epoch, shape, f64::from(shape.burst)))
    }
}

/// One bucket in memory.
pub struct MemoryBucket {
    epoch: Instant,
    pacing: Mutex<Pacing>,
}

impl MemoryBucket {
    /// A bucket of `shape` holding `initial` tokens.
    pub fn new(epoch: Instant, shape: Shape, initial: f64) -> MemoryBucket {
        let now = Instant::now()
            .saturating_duration_since(epoch)
            .as_secs_f64();
        MemoryBucket {
            epoch,
            pacing: Mutex::new(Pacing::new(
                now,
                shape.rate,
                shape.burst,
                shape.hard_ceiling,
                initial,
            )),
        }
    }

    fn now(&self) -> f64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacing> {
        // Every change to Pacing is plain arithmetic that cannot panic half-way.
        self.pacing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`StoredBucket::reserve`] without the future.
    pub fn reserve_now(&self, max_wait: Duration) -> Result<Slot, Duration> {
        let now = self.now();
        self.lock()
            .reserve(now, max_wait.as_secs_f64())
            .map_err(|wait| Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
    }

    /// [`StoredBucket::release`] without the future.
    pub fn release_now(&self, slot: &Slot) {
        let now = self.now();
        self.lock().release(now, slot);
    }

    /// [`StoredBucket::throttled`] without the future.
    pub fn throttled_now(&self, age: Duration) {
        let now = self.now();
        self.lock().throttled(now, age.as_secs_f64());
    }

    /// [`StoredBucket::observe`] without the future.
    pub fn observe_now(&self, rate: f64) {
        let now = self.now();
        self.lock().observe(now, rate);
    }

    /// [`StoredBucket::reading`].
    pub fn reading_now(&self) -> Reading {
        let now = self.now();
        self.lock().reading(now)
    }
}

impl StoredBucket for MemoryBucket {
    fn reserve(&self, max_wait: Duration) -> Pending<'_, Result<Slot, Duration>> {
        Box::pin(std::future::ready(self.reserve_now(max_wait)))
    }

    fn reserve_at_once(&self, max_wait: Duration) -> Option<Result<Slot, Duration>> {
        Some(self.reserve_now(max_wait))
    }

    fn release(&self, slot: Slot) -> Pending<'_, ()> {
        self.release_now(&slot);
        Box::pin(std::future::ready(()))
    }

    fn throttled(&self, age: Duration) -> Pending<'_, ()> {
        self.throttled_now(age);
        Box::pin(std::future::ready(()))
    }

    fn observe(&self, rate: f64) -> Pending<'_, ()> {
        self.observe_now(rate);
        Box::pin(std::future::ready(()))
    }

    fn reading(&self) -> Reading {
        self.reading_now()
    }
}
