//! One cached token (an LWA grant's or an RDT's): refreshed ahead of expiry, fetched single-flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderValue;
use tokio::time::Instant;

use crate::error::TokenError;
use crate::secret::Secret;

/// A token as its service handed it out.
#[derive(Debug, Clone)]
pub struct FreshToken {
    /// The access token.
    pub token: Secret,
    /// `expires_in`.
    pub lifetime: Duration,
}

/// A token ready to send: the secret, and its `x-amz-access-token` value built once (marked
/// sensitive, so hyper never logs it), shared by every request that carries it.
#[derive(Debug, Clone)]
pub struct Token {
    secret: Secret,
    header: HeaderValue,
}

impl Token {
    /// Fails if the token cannot be a header value (a token service answering garbage).
    pub fn new(secret: Secret) -> Result<Token, TokenError> {
        let mut header = HeaderValue::from_str(secret.expose()).map_err(|_| {
            TokenError::Unavailable("the token service answered a token that is not text".into())
        })?;
        header.set_sensitive(true);
        Ok(Token { secret, header })
    }

    /// The value for `x-amz-access-token`.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The token itself.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// When to start refreshing a token and when to stop using it, relative to when it was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// From here on, a request triggers a background refresh and still uses the token.
    pub refresh_after: Duration,
    /// From here on, the token is not sent any more; requests wait for a new one.
    pub use_until: Duration,
}

/// Refresh five minutes (or a quarter of the lifetime) early; stop using the token a minute
/// (or a tenth of the lifetime) before it expires, to absorb clock skew and time on the wire.
pub fn schedule(lifetime: Duration) -> Schedule {
    let margin = (lifetime / 10).min(Duration::from_secs(60));
    let lead = (lifetime / 4).min(Duration::from_secs(300));
    Schedule {
        refresh_after: lifetime - lead,
        use_until: lifetime - margin,
    }
}

struct Cached {
    token: Token,
    fetched_at: Instant,
    refresh_at: Instant,
    use_until: Instant,
}

/// When the cached token was fetched and when it is refreshed: for the status page, never the
/// token.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Since the token was fetched.
    pub age: Duration,
    /// Until the next refresh (zero: due now).
    pub refresh_in: Duration,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// Bumped after every fetch, so that requests which queued behind a failed fetch share its
    /// error instead of each calling LWA again.
    generation: u64,
    last_error: Option<TokenError>,
}

/// Fetches a fresh token: an LWA grant, or an RDT mint.
pub type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<FreshToken, TokenError>> + Send + Sync>;

struct Inner {
    /// What the token is for, for logs (never a secret).
    label: String,
    /// `lwa`, `grantless` or `rdt`, for metrics.
    kind: &'static str,
    fetch: Fetch,
    /// A std mutex: it is held only to read or swap the cached token, never across an await.
    state: Mutex<State>,
    /// A tokio mutex, held across the LWA call: whoever holds it is the one fetching, which
    /// makes refresh single-flight however many requests arrive at once.
    fetching: tokio::sync::Mutex<()>,
    background: AtomicBool,
}

/// One cached token (an LWA grant's, or one RDT's), refreshed before it expires.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// An empty cache around any fetch; the first `get` fetches.
    pub fn new(label: String, fetch: Fetch) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                kind: if label.starts_with("rdt") {
                    "rdt"
                } else if label.contains("client_credentials") {
                    "grantless"
                } else {
                    "lwa"
                },
                label,
                fetch,
                state: Mutex::new(State::default()),
                fetching: tokio::sync::Mutex::new(()),
                background: AtomicBool::new(false),
            }),
        }
    }

    /// A token that is valid now; fetches one only when there is none.
    pub async fn get(&self) -> Result<Token, TokenError> {
        let seen_generation = {
            let state = self.lock_state();
            if let Some(token) = self.usable(&state) {
                crate::metrics::metrics().cache_hit(self.inner.kind);
                return Ok(token);
            }
            state.generation
        };
        let _fetching = self.inner.fetching.lock().await;
        {
            let state = self.lock_state();
            if let Some(token) = self.usable(&state) {
                return Ok(token);
            }
            if state.generation != seen_generation {
                if let Some(e) = &state.last_error {
                    return Err(e.clone());
                }
            }
        }
        self.fetch_and_store().await
    }

    /// The cached token's age and time to refresh, if one is cached.
    pub fn timing(&self) -> Option<Timing> {
        let state = self.lock_state();
        let c = state.current.as_ref()?;
        let now = Instant::now();
        Some(Timing {
            age: now.saturating_duration_since(c.fetched_at),
            refresh_in: c.refresh_at.saturating_duration_since(now),
        })
    }

    /// Forgets the cached token, whatever it is, so that the next `get` fetches a new one.
    pub fn clear(&self) {
        self.lock_state().current = None;
    }

    /// Whether a token is cached and usable without calling LWA.
    pub fn has_token(&self) -> bool {
        let state = self.lock_state();
        state
            .current
            .as_ref()
            .is_some_and(|c| Instant::now() < c.use_until)
    }

    /// Drops `used` if it is still the cached token (Amazon said it expired or is invalid).
    pub fn invalidate(&self, used: &Token) {
        let mut state = self.lock_state();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.token.secret == used.secret)
        {
            state.current = None;
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-written: every write is a
        // single assignment. So a poisoned lock is still safe to use.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn usable(&self, state: &State) -> Option<Token> {
        let c = state.current.as_ref()?;
        let now = Instant::now();
        if now >= c.use_until {
            return None;
        }
        if now >= c.refresh_at {
            self.refresh_in_background();
        }
        Some(c.token.clone())
    }

    fn refresh_in_background(&self) {
        if self.inner.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _fetching = this.inner.fetching.lock().await;
            let due = {
                let state = this.lock_state();
                state
                    .current
                    .as_ref()
                    .is_none_or(|c| Instant::now() >= c.refresh_at)
            };
            if due {
                if let Err(e) = this.fetch_and_store().await {
                    tracing::warn!(token = %this.inner.label, error = %e, "background token refresh failed; the current token stays in use");
                }
            }
            this.inner.background.store(false, Ordering::Release);
        });
    }

    /// Call only while holding `fetching`.
    async fn fetch_and_store(&self) -> Result<Token, TokenError> {
        let requested_at = Instant::now();
        let result = (self.inner.fetch)()
            .await
            .and_then(|fresh| Ok((Token::new(fresh.token)?, fresh.lifetime)));
        let mut state = self.lock_state();
        state.generation += 1;
        match result {
            Ok((token, lifetime)) => {
                let s = schedule(lifetime);
                tracing::debug!(token = %self.inner.label, ?lifetime, "new token");
                state.current = Some(Cached {
                    token: token.clone(),
                    fetched_at: requested_at,
                    refresh_at: requested_at + s.refresh_after,
                    use_until: requested_at + s.use_until,
                });
                state.last_error = None;
                Ok(token)
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_table() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            ("one hour", s(3600), s(3300), s(3540)),
            ("ten minutes", s(600), s(450), s(540)),
            ("two seconds", s(2), ms(1500), ms(1800)),
            ("zero", s(0), s(0), s(0)),
        ];
        for (name, lifetime, refresh_after, use_until) in cases {
            let got = schedule(lifetime);
            assert_eq!(got.refresh_after, refresh_after, "{name}");
            assert_eq!(got.use_until, use_until, "{name}");
            assert!(got.refresh_after <= got.use_until, "{name}");
        }
    }
}
