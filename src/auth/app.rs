//! The application's part of auth: the LWA client with its client secrets, and the grantless
//! tokens, which belong to the application rather than to any seller.

use std::sync::Arc;

use super::grantless::Grantless;
use super::lwa::{ClientSecrets, LwaClient};
use super::store::TokenStore;
use crate::config::{Config, ConfigError};

/// The application's LWA client and grantless tokens.
#[derive(Debug)]
pub struct App {
    /// Fetches every LWA token, the sellers' included.
    pub lwa: Arc<LwaClient>,
    /// Grantless tokens, per scope.
    pub grantless: Grantless,
}

/// The secrets `config` holds.
fn secrets(config: &Config) -> Result<ClientSecrets, ConfigError> {
    config.require_credentials()?;
    let c = &config.credentials;
    let current = c
        .client_secret
        .clone()
        .ok_or_else(|| ConfigError::Missing {
            key: "credentials.client_secret".into(),
            hint: "set SPAPI_CLIENT_SECRET".into(),
        })?;
    Ok(ClientSecrets {
        current,
        next: c.next_client_secret.clone(),
    })
}

impl App {
    /// The application `config` describes; nothing is fetched yet.
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Result<App, ConfigError> {
        let secrets = secrets(config)?;
        let client_id = config.credentials.client_id.clone().unwrap_or_default();
        let lwa = Arc::new(LwaClient::new(
            http,
            config.token_url.clone(),
            client_id,
            secrets,
            config.timeouts.token,
            config.token_retries,
        ));
        Ok(App {
            grantless: Grantless::new(Arc::clone(&lwa), store),
            lwa,
        })
    }

    /// Whether `config` describes this same application (same client id, token endpoint and
    /// token timeouts), so that its tokens stay good; the secrets are taken from it either way.
    pub fn reusable_for(&self, config: &Config) -> Result<bool, ConfigError> {
        let secrets = secrets(config)?;
        let same = self.lwa.same_app(
            &config.token_url,
            config.credentials.client_id.as_deref().unwrap_or_default(),
            config.timeouts.token,
            config.token_retries,
        );
        if same {
            self.lwa.set_secrets(secrets);
        }
        Ok(same)
    }
}
