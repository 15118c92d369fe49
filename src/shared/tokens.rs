//! Tokens in Redis, encrypted at rest: the [`TokenStore`] that lets one replica fetch a token and
//! the others read it.
//!
//! - A token is a hash `{sealed, fp}` under `spapi-proxy:token:NAME`, expiring with the token.
//!   `sealed` is ChaCha20-Poly1305 (ring) under a key derived from `shared_state_key`, with a
//!   random nonce and the name as associated data, so a value cannot be moved to another name.
//!   `fp` is a keyed fingerprint of the token, so that "drop it if it is still this one" needs
//!   no decryption in Redis.
//! - The fetch lock is `SET spapi-proxy:lock:NAME ID NX PX ttl`, given back by a script that
//!   deletes it only if it still holds our ID.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Redis, PREFIX};
use crate::auth::store::{LockId, StoreError, StoredToken, TokenStore};
use crate::limiter::store::Pending;
use crate::secret::Secret;

/// Seals and opens tokens with the key from `shared_state_key`.
pub(crate) struct Sealer {
    key: LessSafeKey,
    /// For fingerprints.
    mac_key: [u8; 32],
    random: SystemRandom,
}

#[derive(Serialize, Deserialize)]
struct Plain {
    /// The token.
    t: String,
    /// Fetched at, Unix milliseconds.
    f: u64,
    /// Lifetime, milliseconds.
    l: u64,
}

impl Sealer {
    /// Derives the keys from `secret`.
    pub(crate) fn new(secret: &Secret) -> Sealer {
        let derive = |purpose: &str| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"spapi-proxy shared_state_key ");
            h.update(purpose.as_bytes());
            h.update([0]);
            h.update(secret.expose().as_bytes());
            h.finalize().into()
        };
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &derive("seal"))
            .expect("a 32-byte key is the right length for ChaCha20-Poly1305");
        Sealer {
            key: LessSafeKey::new(unbound),
            mac_key: derive("fingerprint"),
            random: SystemRandom::new(),
        }
    }

    /// nonce || ciphertext || tag, `aad` bound to it.
    pub(crate) fn seal_bytes(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut data = plain.to_vec();
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError("no randomness for a nonce".into()))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut data,
            )
            .map_err(|_| StoreError("cannot encrypt".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// What [`Sealer::seal_bytes`] sealed with this `aad`, if it opens.
    pub(crate) fn open_bytes(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }

    /// A token, sealed for `name`.
    pub(crate) fn seal(&self, name: &str, token: &StoredToken) -> Result<Vec<u8>, StoreError> {
        let plain = Plain {
            t: token.token.expose().to_string(),
            f: token
                .fetched_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            l: token.lifetime.as_millis().try_into().unwrap_or(u64::MAX),
        };
        let data = serde_json::to_vec(&plain).map_err(|e| StoreError(e.to_string()))?;
        self.seal_bytes(name, &data)
    }

    /// The token in `sealed`, if it was sealed under this key for this name.
    pub(crate) fn open(&self, name: &str, sealed: &[u8]) -> Option<StoredToken> {
        let plain = self.open_bytes(name, sealed)?;
        let p: Plain = serde_json::from_slice(&plain).ok()?;
        Some(StoredToken {
            token: Secret::new(p.t),
            fetched_at: UNIX_EPOCH.checked_add(Duration::from_millis(p.f))?,
            lifetime: Duration::from_millis(p.l),
        })
    }

    /// A keyed fingerprint of a token.
    pub(crate) fn fingerprint(&self, token: &Secret) -> String {
        let mut h = Sha256::new();
        h.update(self.mac_key);
        h.update(token.expose().as_bytes());
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

static REMOVE_IF: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// Tokens kept in Redis.
#[derive(Debug)]
pub struct RedisTokens {
    redis: Arc<Redis>,
}

impl RedisTokens {
    /// Tokens in `redis`.
    pub fn new(redis: Arc<Redis>) -> RedisTokens {
        RedisTokens { redis }
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        self.redis
            .connection()
            .await
            .ok_or_else(|| StoreError("the shared state is unreachable".into()))
    }

    fn failed(&self, e: redis::RedisError) -> StoreError {
        self.redis.failed(&e);
        StoreError(super::describe(&e))
    }
}

fn token_key(name: &str) -> String {
    format!("{PREFIX}token:{name}")
}

fn lock_key(name: &str) -> String {
    format!("{PREFIX}lock:{name}")
}

impl TokenStore for RedisTokens {
    fn load<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<StoredToken>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let sealed: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(token_key(name))
                .arg("sealed")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            // A value that does not open (another key, or tampered with) is as good as none.
            Ok(sealed.and_then(|s| self.redis.sealer.open(name, &s)))
        })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        token: &'a StoredToken,
    ) -> Pending<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let sealed = self.redis.sealer.seal(name, token)?;
            let fp = self.redis.sealer.fingerprint(&token.token);
            let left = (token.fetched_at + token.lifetime)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut conn = self.conn().await?;
            let key = token_key(name);
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("sealed")
                .arg(sealed)
                .arg("fp")
                .arg(fp)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ms)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
        })
    }

    fn lock<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<LockId>, StoreError>> {
        Box::pin(async move {
            let mut id = [0u8; 16];
            self.redis
                .sealer
                .random
                .fill(&mut id)
                .map_err(|_| StoreError("no randomness for a lock id".into()))?;
            let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut conn = self.conn().await?;
            let got: Option<String> = redis::cmd("SET")
                .arg(lock_key(name))
                .arg(&id)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(got.map(|_| LockId(id)))
        })
    }

    fn unlock<'a>(&'a self, name: &'a str, id: LockId) -> Pending<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            UNLOCK
                .key(lock_key(name))
                .arg(id.0)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| self.failed(e))
        })
    }

    fn remove_if<'a>(
        &'a self,
        name: &'a str,
        token: &'a Secret,
    ) -> Pending<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let fp = self.redis.sealer.fingerprint(token);
            let mut conn = self.conn().await?;
            REMOVE_IF
                .key(token_key(name))
                .arg(fp)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| self.failed(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_under_their_key_and_name() {
        let sealer = Sealer::new(&Secret::new("k".repeat(32)));
        let t = StoredToken {
            token: Secret::new("Atza|secret"),
            fetched_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            lifetime: Duration::from_secs(3600),
        };
        let sealed = sealer.seal("lwa:1", &t).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("Atza"));
        assert_eq!(sealer.open("lwa:1", &sealed), Some(t.clone()));
        // Another name, another key, a flipped bit, a stub: nothing.
        assert_eq!(sealer.open("lwa:2", &sealed), None);
        assert_eq!(
            Sealer::new(&Secret::new("j".repeat(32))).open("lwa:1", &sealed),
            None
        );
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(sealer.open("lwa:1", &bad), None);
        assert_eq!(sealer.open("lwa:1", &sealed[..5]), None);
        // Two seals of one token differ (random nonce); the fingerprint does not.
        assert_ne!(sealer.seal("lwa:1", &t).unwrap(), sealed);
        assert_eq!(sealer.fingerprint(&t.token), sealer.fingerprint(&t.token));
        assert_ne!(
            sealer.fingerprint(&t.token),
            Sealer::new(&Secret::new("j".repeat(32))).fingerprint(&t.token)
        );
    }
}
