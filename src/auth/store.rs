//! Where tokens can be shared: the seam under [`super::cache::TokenCache`]. A cache that has a
//! store looks there before it calls LWA or the Tokens API, and takes the store's lock first, so
//! that of several replicas one fetches and the others wait and read. In one process the cache's
//! own single-flight is enough, so it has no store; `shared::tokens::RedisTokens` is the shared
//! one, and [`MemoryTokens`] stands in for it in unit tests.
//!
//! Expiry is on the wall clock (when the token was fetched, and its lifetime), since replicas
//! share no monotonic clock. Names are fingerprints, never a refresh token or a seller's id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::limiter::store::Pending;
use crate::secret::Secret;

/// A token as stored: the secret, when it was fetched, and how long it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    /// The access token or RDT.
    pub token: Secret,
    /// When the request for it was sent.
    pub fetched_at: SystemTime,
    /// `expires_in`.
    pub lifetime: Duration,
}

/// Why a store could not answer; the cache then fetches on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// A lock held on a name, to give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockId(pub String);

/// Shared tokens.
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    /// The token stored under `name`, if any.
    fn load<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<StoredToken>, StoreError>>;
    /// Stores `token` under `name` until it expires.
    fn save<'a>(
        &'a self,
        name: &'a str,
        token: &'a StoredToken,
    ) -> Pending<'a, Result<(), StoreError>>;
    /// Takes the lock on `name` for at most `ttl`, if no one holds it.
    fn lock<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<LockId>, StoreError>>;
    /// Gives the lock back, if it is still ours.
    fn unlock<'a>(&'a self, name: &'a str, id: LockId) -> Pending<'a, Result<(), StoreError>>;
    /// Drops the token under `name` if it is still `token` (Amazon rejected it).
    fn remove_if<'a>(
        &'a self,
        name: &'a str,
        token: &'a Secret,
    ) -> Pending<'a, Result<(), StoreError>>;
}

/// A name for the store: a kind and a fingerprint of what the token is made from (SHA-256,
/// so that neither a refresh token nor a resource path can be read back from it).
pub fn name(kind: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

/// Where a cache keeps its token in a store, and how long its lock may be held (longer than a
/// fetch can take, so that no other replica fetches meanwhile; short enough that a replica that
/// died holding it does not stop the others for long).
#[derive(Debug, Clone)]
pub struct Shared {
    /// The store.
    pub store: std::sync::Arc<dyn TokenStore>,
    /// From [`name`].
    pub name: String,
    /// How long the fetch lock is held at most.
    pub lock_ttl: Duration,
}

/// Tokens in this process's memory: the same contract, for tests of the caches above it.
#[derive(Debug, Default)]
pub struct MemoryTokens {
    tokens: Mutex<HashMap<String, StoredToken>>,
    locks: Mutex<HashMap<String, (String, std::time::Instant)>>,
    next: std::sync::atomic::AtomicU64,
}

impl MemoryTokens {
    fn now_ok<T>(value: T) -> Pending<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(value)))
    }
}

impl TokenStore for MemoryTokens {
    fn load<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<StoredToken>, StoreError>> {
        let found = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        Self::now_ok(found)
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        token: &'a StoredToken,
    ) -> Pending<'a, Result<(), StoreError>> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), token.clone());
        Self::now_ok(())
    }

    fn lock<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<LockId>, StoreError>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let taken = locks.get(name).is_some_and(|(_, until)| now < *until);
        let got = (!taken).then(|| {
            let id = self
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string();
            locks.insert(name.to_string(), (id.clone(), now + ttl));
            LockId(id)
        });
        Self::now_ok(got)
    }

    fn unlock<'a>(&'a self, name: &'a str, id: LockId) -> Pending<'a, Result<(), StoreError>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(name).is_some_and(|(held, _)| *held == id.0) {
            locks.remove(name);
        }
        Self::now_ok(())
    }

    fn remove_if<'a>(
        &'a self,
        name: &'a str,
        token: &'a Secret,
    ) -> Pending<'a, Result<(), StoreError>> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.get(name).is_some_and(|t| t.token == *token) {
            tokens.remove(name);
        }
        Self::now_ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fingerprints_that_tell_parts_apart() {
        let a = name("lwa", &["client", "Atzr|secret"]);
        assert!(a.starts_with("lwa:") && a.len() == 4 + 32, "{a}");
        assert!(!a.contains("Atzr"));
        assert_eq!(a, name("lwa", &["client", "Atzr|secret"]));
        // Length-prefixed: moving a character between parts gives another name.
        assert_ne!(name("lwa", &["ab", "c"]), name("lwa", &["a", "bc"]));
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        let s = MemoryTokens::default();
        let t = StoredToken {
            token: Secret::new("Atza|one"),
            fetched_at: SystemTime::now(),
            lifetime: Duration::from_secs(3600),
        };
        assert_eq!(s.load("n").await, Ok(None));
        s.save("n", &t).await.unwrap();
        assert_eq!(s.load("n").await, Ok(Some(t.clone())));
        // The lock is exclusive until given back.
        let id = s.lock("n", Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(s.lock("n", Duration::from_secs(5)).await, Ok(None));
        s.unlock("n", LockId("someone else".into())).await.unwrap();
        assert_eq!(s.lock("n", Duration::from_secs(5)).await, Ok(None));
        s.unlock("n", id).await.unwrap();
        assert!(s.lock("n", Duration::from_secs(5)).await.unwrap().is_some());
        // Only the rejected token is removed.
        s.remove_if("n", &Secret::new("Atza|other")).await.unwrap();
        assert!(s.load("n").await.unwrap().is_some());
        s.remove_if("n", &Secret::new("Atza|one")).await.unwrap();
        assert_eq!(s.load("n").await, Ok(None));
    }
}
