//! Amazon's side of a usage plan: a classic token bucket per operation, enforced when asked.

use tokio::time::Instant;

use super::{lock, State};
use crate::operations::Operation;

/// Amazon's side of a usage plan: a classic token bucket per operation.
#[derive(Debug)]
pub(super) struct SimBucket {
    pub(super) rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
    /// A rate change takes effect with the next request it admits, and that request's answer
    /// already reports it, the way a changed usage plan shows up in the next response.
    pub(super) pending_rate: Option<f64>,
}

impl SimBucket {
    pub(super) fn new(rate: f64, burst: u32) -> SimBucket {
        SimBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            updated: Instant::now(),
            pending_rate: None,
        }
    }

    pub(super) fn admit(&mut self) -> bool {
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

/// Takes a token from the bucket of `seller` (a refresh token; `None` for grantless calls)
/// for the operation, when limits are enforced. Amazon's usage plans are per application +
/// seller pair ("Usage Plans and Rate Limits").
pub(super) fn admit(state: &State, op: Option<&Operation>, seller: Option<&str>) -> bool {
    let Some(op) = op else { return true };
    if !lock(&state.settings).enforce_limits {
        return true;
    }
    let (Some(rate), Some(burst)) = (op.rate, op.burst) else {
        return true;
    };
    let rate = lock(&state.rates).get(&op.index).copied().unwrap_or(rate);
    lock(&state.buckets)
        .entry((seller.unwrap_or_default().to_string(), op.index))
        .or_insert_with(|| SimBucket::new(rate, burst))
        .admit()
}

/// The rate reported in `x-amzn-RateLimit-Limit`: the seller's bucket's, or the published one.
pub(super) fn current_rate(
    state: &State,
    op: Option<&Operation>,
    seller: Option<&str>,
) -> Option<f64> {
    let op = op?;
    let key = (seller.unwrap_or_default().to_string(), op.index);
    match lock(&state.buckets).get(&key) {
        Some(b) => Some(b.rate),
        None => lock(&state.rates).get(&op.index).copied().or(op.rate),
    }
}
