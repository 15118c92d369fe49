//! Login with Amazon: the token endpoint's request and answer formats, with retries.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use super::cache::{FreshToken, TokenCache};
use crate::error::TokenError;
use crate::secret::Secret;

/// What we ask LWA for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// A seller's access token (`grant_type=refresh_token`).
    RefreshToken(Secret),
    /// A grantless token for these space-separated scopes (`grant_type=client_credentials`).
    ClientCredentials {
        /// e.g. `sellingpartnerapi::notifications`.
        scope: String,
    },
}

/// The LWA token endpoint and the app's credentials.
#[derive(Debug)]
pub struct LwaClient {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    timeout: Duration,
    retries: u32,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct LwaErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// LWA error codes that say "try again" rather than "no".
fn is_transient_code(code: &str) -> bool {
    matches!(code, "server_error" | "temporarily_unavailable")
}

impl LwaClient {
    /// A client for `token_url` with the app's credentials.
    pub fn new(
        http: reqwest::Client,
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        timeout: Duration,
        retries: u32,
    ) -> Self {
        LwaClient {
            http,
            token_url,
            client_id,
            client_secret,
            timeout,
            retries,
        }
    }

    /// Fetches a token, retrying transient failures with exponential backoff. The whole fetch,
    /// retries and backoff included, gets one `timeout`: a hung token service costs a request
    /// `timeouts.token`, not that times the number of attempts.
    pub async fn fetch(&self, grant: &Grant) -> Result<FreshToken, TokenError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(TokenError::Timeout);
            }
            match self.fetch_once(grant, left).await {
                Ok(t) => return Ok(t),
                Err(e @ (TokenError::Unavailable(_) | TokenError::Timeout))
                    if attempt < self.retries =>
                {
                    let backoff = Duration::from_millis(200) * 2u32.pow(attempt);
                    if tokio::time::Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, attempt, ?backoff, "LWA token request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_once(&self, grant: &Grant, timeout: Duration) -> Result<FreshToken, TokenError> {
        let form = self.form(grant);
        let request = self
            .http
            .post(self.token_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body(form);
        let (status, _, body) = super::call_token_service(request, timeout, "LWA").await?;
        self.parse(status, &body)
    }

    /// The documented form body; `refresh_token` and `scope` are never sent together.
    fn form(&self, grant: &Grant) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        match grant {
            Grant::RefreshToken(rt) => {
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", rt.expose());
            }
            Grant::ClientCredentials { scope } => {
                form.append_pair("grant_type", "client_credentials")
                    .append_pair("scope", scope);
            }
        }
        form.append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose());
        form.finish()
    }

    fn parse(&self, status: http::StatusCode, body: &[u8]) -> Result<FreshToken, TokenError> {
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
                TokenError::Unavailable(format!(
                    "LWA answered {status} with a body we cannot read: {e}"
                ))
            })?;
            return Ok(FreshToken {
                token: Secret::new(parsed.access_token),
                lifetime: Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
            });
        }
        let parsed: Option<LwaErrorBody> = serde_json::from_slice(body).ok();
        match parsed {
            Some(e)
                if !status.is_server_error() && status != 429 && !is_transient_code(&e.error) =>
            {
                Err(TokenError::Refused {
                    service: "lwa",
                    description: self.scrub(&e.error_description),
                    code: e.error,
                })
            }
            Some(e) => Err(TokenError::Unavailable(format!(
                "LWA answered {status}: {}",
                e.error
            ))),
            None => Err(TokenError::Unavailable(format!("LWA answered {status}"))),
        }
    }

    /// LWA's own text is passed on to clients; make sure it cannot echo a credential back.
    fn scrub(&self, text: &str) -> String {
        text.replace(self.client_secret.expose(), "***")
    }
}

/// An empty token cache for an LWA grant; the first `get` fetches.
pub fn cache(client: Arc<LwaClient>, grant: Grant) -> TokenCache {
    let label = match &grant {
        Grant::RefreshToken(_) => "lwa refresh_token".to_string(),
        Grant::ClientCredentials { scope } => format!("lwa client_credentials {scope}"),
    };
    let grant = Arc::new(grant);
    TokenCache::new(
        label,
        Arc::new(move || {
            let client = Arc::clone(&client);
            let grant = Arc::clone(&grant);
            Box::pin(async move { client.fetch(&grant).await })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_debug_hides_the_refresh_token() {
        let g = Grant::RefreshToken(Secret::new("Atzr|secret"));
        assert!(!format!("{g:?}").contains("Atzr|secret"));
    }
}
