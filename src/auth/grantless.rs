//! Grantless tokens: `client_credentials` with a scope, one cached token per scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::cache::{Token, TokenCache};
use super::lwa::{self, Grant, LwaClient};
use super::store::TokenStore;
use crate::error::TokenError;

/// One [`TokenCache`] per scope, created on first use.
#[derive(Debug)]
pub struct Grantless {
    client: Arc<LwaClient>,
    store: Option<Arc<dyn TokenStore>>,
    scopes: Mutex<HashMap<String, TokenCache>>,
}

impl Grantless {
    /// No tokens yet.
    pub fn new(client: Arc<LwaClient>, store: Option<Arc<dyn TokenStore>>) -> Grantless {
        Grantless {
            client,
            store,
            scopes: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, scope: &str) -> TokenCache {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes
            .entry(scope.to_string())
            .or_insert_with(|| {
                lwa::cache(
                    Arc::clone(&self.client),
                    Grant::ClientCredentials {
                        scope: scope.to_string(),
                    },
                    self.store.as_ref(),
                )
            })
            .clone()
    }

    /// A token for `scope`, fetched only if none is cached.
    pub async fn get(&self, scope: &str) -> Result<Token, TokenError> {
        self.entry(scope).get().await
    }

    /// Each scope's cached token timing, sorted by scope.
    pub fn timings(&self) -> Vec<(String, Option<super::cache::Timing>)> {
        let scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = scopes
            .iter()
            .map(|(s, c)| (s.clone(), c.timing()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Amazon rejected `used`: forget it.
    pub fn invalidate(&self, scope: &str, used: &Token) {
        self.entry(scope).invalidate(used);
    }
}
