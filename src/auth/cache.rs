//! One cached token (an LWA grant's or an RDT's): refreshed ahead of expiry, fetched single-flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use http::HeaderValue;
use tokio::time::Instant;

use super::store::{Shared, StoredToken};
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
    /// The same on the wall clock, which replicas share.
    fetched_wall: SystemTime,
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
    /// A token fetched at or before this was dropped here (Amazon rejected it, or a refresh was
    /// asked for): the store's copy of it is not taken again.
    floor: Option<SystemTime>,
}

/// What a token from the store must still be good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Usable now (a request waits for it).
    Usable,
    /// Not due for refresh yet (the background refresh).
    Fresh,
}

/// How often a replica waiting for another's fetch looks in the store.
const STORE_POLL: Duration = Duration::from_millis(20);

/// Fetches a fresh token: an LWA grant, or an RDT mint.
pub type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<FreshToken, TokenError>> + Send + Sync>;

struct Inner {
    /// What the token is for, for logs (never a secret).
    label: String,
    /// Its kind's cache-hit counter (`lwa`, `grantless` or `rdt`), resolved once.
    hits: prometheus_client::metrics::counter::Counter,
    fetch: Fetch,
    /// Where replicas share this token, if they do.
    shared: Option<Shared>,
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
        TokenCache::with_store(label, fetch, None)
    }

    /// The same, looking in `shared` before fetching and storing there what it fetched.
    pub fn with_store(label: String, fetch: Fetch, shared: Option<Shared>) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                hits: crate::metrics::metrics().cache_hits(if label.starts_with("rdt") {
                    "rdt"
                } else if label.contains("client_credentials") {
                    "grantless"
                } else {
                    "lwa"
                }),
                label,
                fetch,
                shared,
                state: Mutex::new(State::default()),
                fetching: tokio::sync::Mutex::new(()),
                background: AtomicBool::new(false),
            }),
        }
    }

    /// A token that is valid now; fetches one only when there is none.
    pub async fn get(&self) -> Result<Token, TokenError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let seen_generation = self.lock_state().generation;
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
        self.fetch_and_store(Need::Usable).await
    }

    /// The cached token if it is usable now, without waiting (a refresh that is due starts
    /// in the background).
    pub fn cached(&self) -> Option<Token> {
        let token = self.usable(&self.lock_state())?;
        self.inner.hits.inc();
        Some(token)
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
        let mut state = self.lock_state();
        if let Some(c) = state.current.take() {
            state.floor = Some(c.fetched_wall);
        }
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
        if let Some(c) = state.current.take_if(|c| c.token.secret == used.secret) {
            state.floor = Some(c.fetched_wall);
        }
        drop(state);
        if let Some(shared) = self.inner.shared.clone() {
            let used = used.secret.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.store.remove_if(&shared.name, &used).await {
                    tracing::debug!(error = %e.0, "could not drop a rejected token from the shared store");
                }
            });
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
                if let Err(e) = this.fetch_and_store(Need::Fresh).await {
                    tracing::warn!(token = %this.inner.label, error = %e, "background token refresh failed; the current token stays in use");
                }
            }
            this.inner.background.store(false, Ordering::Release);
        });
    }

    /// Call only while holding `fetching`. With a store: a token another replica stored, or
    /// one fetched under the store's lock; without one, or when the store fails: fetched here.
    async fn fetch_and_store(&self, need: Need) -> Result<Token, TokenError> {
        if let Some(shared) = &self.inner.shared {
            match self.through_store(shared, need).await {
                Ok(result) => return result,
                Err(e) => {
                    tracing::debug!(token = %self.inner.label, error = %e.0, "the shared token store did not answer; fetching here");
                }
            }
        }
        self.fetch_here().await.map(|(token, _)| token)
    }

    /// Looks in the store; if the token there will not do, takes the lock and fetches (or,
    /// when another replica holds the lock, waits for what it stores).
    async fn through_store(
        &self,
        shared: &Shared,
        need: Need,
    ) -> Result<Result<Token, TokenError>, super::store::StoreError> {
        let started = Instant::now();
        loop {
            if let Some(t) = self.adoptable(shared.store.load(&shared.name).await?, need) {
                return Ok(self.adopt(t));
            }
            if let Some(id) = shared.store.lock(&shared.name, shared.lock_ttl).await? {
                // Another replica may have stored one between the look and the lock.
                let again = shared.store.load(&shared.name).await;
                let result = match again.map(|found| self.adoptable(found, need)) {
                    Ok(Some(t)) => self.adopt(t),
                    _ => match self.fetch_here().await {
                        Ok((token, stored)) => {
                            if let Err(e) = shared.store.save(&shared.name, &stored).await {
                                tracing::debug!(token = %self.inner.label, error = %e.0, "could not share a new token");
                            }
                            Ok(token)
                        }
                        Err(e) => Err(e),
                    },
                };
                let _ = shared.store.unlock(&shared.name, id).await;
                return Ok(result);
            }
            if started.elapsed() > shared.lock_ttl {
                return Err(super::store::StoreError(
                    "the replica fetching this token held its lock to the end".into(),
                ));
            }
            tokio::time::sleep(STORE_POLL).await;
        }
    }

    /// `found`, if it is good for `need` and was not dropped here.
    fn adoptable(&self, found: Option<StoredToken>, need: Need) -> Option<StoredToken> {
        let t = found?;
        if self.lock_state().floor.is_some_and(|f| t.fetched_at <= f) {
            return None;
        }
        let age = SystemTime::now()
            .duration_since(t.fetched_at)
            .unwrap_or(Duration::ZERO);
        let s = schedule(t.lifetime);
        let limit = match need {
            Need::Usable => s.use_until,
            Need::Fresh => s.refresh_after,
        };
        (age < limit).then_some(t)
    }

    /// Caches a token another replica fetched.
    fn adopt(&self, t: StoredToken) -> Result<Token, TokenError> {
        let token = Token::new(t.token)?;
        let age = SystemTime::now()
            .duration_since(t.fetched_at)
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let fetched_at = now.checked_sub(age).unwrap_or(now);
        self.put(token.clone(), fetched_at, t.fetched_at, t.lifetime);
        Ok(token)
    }

    fn put(&self, token: Token, fetched_at: Instant, fetched_wall: SystemTime, lifetime: Duration) {
        let s = schedule(lifetime);
        let mut state = self.lock_state();
        state.generation += 1;
        state.current = Some(Cached {
            token,
            fetched_at,
            fetched_wall,
            refresh_at: fetched_at + s.refresh_after,
            use_until: fetched_at + s.use_until,
        });
        state.last_error = None;
    }

    /// Fetches from the token service itself.
    async fn fetch_here(&self) -> Result<(Token, StoredToken), TokenError> {
        let requested_at = Instant::now();
        let requested_wall = SystemTime::now();
        let result = (self.inner.fetch)()
            .await
            .and_then(|fresh| Ok((Token::new(fresh.token)?, fresh.lifetime)));
        match result {
            Ok((token, lifetime)) => {
                tracing::debug!(token = %self.inner.label, ?lifetime, "new token");
                self.put(token.clone(), requested_at, requested_wall, lifetime);
                let stored = StoredToken {
                    token: token.secret.clone(),
                    fetched_at: requested_wall,
                    lifetime,
                };
                Ok((token, stored))
            }
            Err(e) => {
                let mut state = self.lock_state();
                state.generation += 1;
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

    fn counting(fetches: &Arc<std::sync::atomic::AtomicUsize>) -> Fetch {
        let fetches = Arc::clone(fetches);
        Arc::new(move || {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // Slow enough that every cache asks while the first fetch is on its way.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(FreshToken {
                    token: Secret::new(format!("Atza|{n}")),
                    lifetime: Duration::from_secs(3600),
                })
            })
        })
    }

    fn shared(store: &Arc<super::super::store::MemoryTokens>) -> Option<Shared> {
        Some(Shared {
            store: Arc::clone(store) as Arc<dyn super::super::store::TokenStore>,
            name: super::super::store::name("lwa", &["client", "refresh"]),
            lock_ttl: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn caches_sharing_a_store_fetch_once() {
        let store = Arc::new(super::super::store::MemoryTokens::default());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Three "replicas", each with many requests at once.
        let caches: Vec<TokenCache> = (0..3)
            .map(|i| TokenCache::with_store(format!("lwa {i}"), counting(&fetches), shared(&store)))
            .collect();
        let gets = caches
            .iter()
            .flat_map(|c| (0..20).map(move |_| c.get()))
            .collect::<Vec<_>>();
        let tokens = futures_util::future::join_all(gets).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(tokens
            .iter()
            .all(|t| t.as_ref().unwrap().secret().expose() == "Atza|0"));
    }

    #[tokio::test]
    async fn a_rejected_token_is_not_taken_back_from_the_store() {
        let store = Arc::new(super::super::store::MemoryTokens::default());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = TokenCache::with_store("lwa a".into(), counting(&fetches), shared(&store));
        let b = TokenCache::with_store("lwa b".into(), counting(&fetches), shared(&store));
        let first = a.get().await.unwrap();
        assert_eq!(b.get().await.unwrap().secret().expose(), "Atza|0");
        // Amazon rejects it on replica a: a fetches a new one, which b then reads too.
        a.invalidate(&first);
        let second = a.get().await.unwrap();
        assert_eq!(second.secret().expose(), "Atza|1");
        b.invalidate(&first);
        assert_eq!(b.get().await.unwrap().secret().expose(), "Atza|1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
