//! Where a bucket's tokens live: the seam under the FIFO queue. [`MemoryStore`] keeps them in
//! this process (governor's GCRA); a store shared by several proxies (Redis) would implement
//! the same two traits, and the queue in front of each bucket would not change.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota as GovernorQuota, RateLimiter};
use tokio::time::Instant;

use super::{BucketKey, RateSource};
use crate::config::Quota;

/// Makes the token state of each bucket.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The tokens of a new bucket `key` with shape `quota`, full.
    fn tokens(&self, key: &BucketKey, quota: Quota, source: RateSource) -> Box<dyn Tokens>;
}

/// One bucket's tokens.
pub trait Tokens: Send + Sync {
    /// Takes a token: `Ok(whole tokens left)`, or `Err(when the next one comes)`.
    fn take(&self) -> Result<u32, Instant>;
    /// Tokens in the bucket now (fractional: refilling).
    fn available(&self) -> f64;
    /// The current rate and where it came from.
    fn rate(&self) -> (f64, RateSource);
    /// Replaces the rate, keeping the tokens held now; returns whether the rate changed.
    fn set_rate(&self, rate: f64, source: RateSource) -> bool;
    /// Empties the bucket.
    fn drain(&self);
}

/// governor's clock, read from tokio's: tests pause tokio's time and the buckets follow it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

fn gcra(rate: f64, burst: u32) -> Gcra {
    let period = Duration::from_secs_f64(1.0 / rate);
    let quota = GovernorQuota::with_period(period)
        .unwrap_or_else(|| GovernorQuota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    RateLimiter::direct_with_clock(quota, TokioClock)
        .with_middleware::<StateInformationMiddleware>()
}

/// Buckets in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn tokens(&self, _key: &BucketKey, quota: Quota, source: RateSource) -> Box<dyn Tokens> {
        Box::new(MemoryTokens {
            burst: quota.burst,
            state: Mutex::new(State {
                gcra: gcra(quota.rate, quota.burst),
                rate: quota.rate,
                source,
                remaining: quota.burst,
                measured_at: Instant::now(),
            }),
        })
    }
}

struct MemoryTokens {
    burst: u32,
    state: Mutex<State>,
}

struct State {
    gcra: Gcra,
    rate: f64,
    source: RateSource,
    /// Whole tokens left after the last take, and when; governor does not expose its state
    /// without taking a token, so this is what `available` is computed from.
    remaining: u32,
    measured_at: Instant,
}

impl State {
    fn tokens_now(&self, burst: u32) -> f64 {
        let refilled = self.measured_at.elapsed().as_secs_f64() * self.rate;
        (f64::from(self.remaining) + refilled).min(f64::from(burst))
    }
}

impl MemoryTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tokens for MemoryTokens {
    fn take(&self) -> Result<u32, Instant> {
        let mut s = self.lock();
        match s.gcra.check() {
            Ok(snapshot) => {
                s.remaining = snapshot.remaining_burst_capacity();
                s.measured_at = Instant::now();
                Ok(s.remaining)
            }
            Err(not_until) => {
                s.remaining = 0;
                s.measured_at = Instant::now();
                let wait = not_until.wait_time_from(TokioClock.now());
                Err(Instant::now() + wait)
            }
        }
    }

    fn available(&self) -> f64 {
        self.lock().tokens_now(self.burst)
    }

    fn rate(&self) -> (f64, RateSource) {
        let s = self.lock();
        (s.rate, s.source)
    }

    fn set_rate(&self, rate: f64, source: RateSource) -> bool {
        let mut s = self.lock();
        let changed = (s.rate - rate).abs() > 1e-9;
        if !changed && s.source == source {
            return false;
        }
        let tokens = s.tokens_now(self.burst).floor() as u32;
        let fresh = gcra(rate, self.burst);
        if let Some(used) = NonZeroU32::new(self.burst.saturating_sub(tokens)) {
            let _ = fresh.check_n(used);
        }
        s.gcra = fresh;
        s.rate = rate;
        s.source = source;
        s.remaining = tokens;
        s.measured_at = Instant::now();
        changed
    }

    fn drain(&self) {
        let mut s = self.lock();
        while s.gcra.check().is_ok() {}
        s.remaining = 0;
        s.measured_at = Instant::now();
    }
}
