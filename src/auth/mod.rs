//! Token choice: which token a request carries, and where it comes from.

pub mod lwa;

use std::sync::Arc;

use crate::config::Config;
use crate::error::TokenError;
use crate::secret::Secret;

use lwa::{Grant, LwaClient, TokenCache};

/// Every token source the proxy has.
#[derive(Debug, Clone)]
pub struct Auth {
    seller: TokenCache,
}

impl Auth {
    /// Token sources for the configured credentials; nothing is fetched yet.
    pub fn new(config: &Config, http: reqwest::Client) -> Self {
        let client = Arc::new(LwaClient::new(
            http,
            config.token_url.clone(),
            config.credentials.client_id.clone(),
            config.credentials.client_secret.clone(),
            config.timeouts.token,
            config.token_retries,
        ));
        let seller = TokenCache::new(
            client,
            Grant::RefreshToken(config.credentials.refresh_token.clone()),
        );
        Auth { seller }
    }

    /// The seller's LWA access token.
    pub async fn seller_token(&self) -> Result<Secret, TokenError> {
        self.seller.get().await
    }

    /// Amazon rejected `used`: forget it so the next request fetches a new one.
    pub fn reject_seller_token(&self, used: &Secret) {
        self.seller.invalidate(used);
    }
}
