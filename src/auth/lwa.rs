//! Login with Amazon: the token endpoint's request and answer formats, with retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use reqwest::Url;
use serde::Deserialize;

use super::cache::{FreshToken, TokenCache};
use super::store::{self, Shared, TokenStore};
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

/// The app's client secret, and the one generated to replace it (Amazon keeps the old one
/// valid for 7 days after a new one is generated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecrets {
    /// `client_secret`.
    pub current: Secret,
    /// `next_client_secret`.
    pub next: Option<Secret>,
}

/// The LWA token endpoint and the app's credentials.
#[derive(Debug)]
pub struct LwaClient {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    /// Replaced by a reload; read once per token call.
    secrets: ArcSwap<ClientSecrets>,
    /// Set once LWA refused the current secret and took the next one.
    using_next: AtomicBool,
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
        secrets: ClientSecrets,
        timeout: Duration,
        retries: u32,
    ) -> Self {
        LwaClient {
            http,
            token_url,
            client_id,
            secrets: ArcSwap::from_pointee(secrets),
            using_next: AtomicBool::new(false),
            timeout,
            retries,
        }
    }

    /// Whether this client talks to the same endpoint as the same application.
    pub fn same_app(
        &self,
        token_url: &Url,
        client_id: &str,
        timeout: Duration,
        retries: u32,
    ) -> bool {
        self.token_url == *token_url
            && self.client_id == client_id
            && self.timeout == timeout
            && self.retries == retries
    }

    /// Takes reloaded secrets; if they differ, the current one is tried first again.
    pub fn set_secrets(&self, secrets: ClientSecrets) {
        if **self.secrets.load() != secrets {
            self.secrets.store(Arc::new(secrets));
            self.using_next.store(false, Ordering::Release);
        }
    }

    /// Which configured secret LWA accepts: `client_secret` or `next_client_secret`.
    pub fn secret_in_use(&self) -> &'static str {
        if self.using_next.load(Ordering::Acquire) {
            "next_client_secret"
        } else {
            "client_secret"
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

    /// One token call; if LWA answers `invalid_client` and the other configured secret has not
    /// been tried, it is tried at once, and used from then on if LWA takes it.
    async fn fetch_once(&self, grant: &Grant, timeout: Duration) -> Result<FreshToken, TokenError> {
        let secrets = self.secrets.load_full();
        let using_next = self.using_next.load(Ordering::Acquire);
        let (first, other) = match (&secrets.next, using_next) {
            (Some(next), true) => (next, Some(&secrets.current)),
            (next, _) => (&secrets.current, next.as_ref()),
        };
        let result = self.fetch_with(grant, first, timeout).await;
        let (Err(TokenError::Refused { code, .. }), Some(other)) = (&result, other) else {
            return result;
        };
        if code != "invalid_client" {
            return result;
        }
        let retried = self.fetch_with(grant, other, timeout).await;
        if retried.is_ok() {
            let now_next = !using_next;
            self.using_next.store(now_next, Ordering::Release);
            if now_next {
                tracing::warn!(
                    "LWA refused client_secret (invalid_client) and accepted next_client_secret;                      the proxy uses next_client_secret from now on. Promote it: make it                      client_secret (SPAPI_CLIENT_SECRET) and remove next_client_secret"
                );
            } else {
                tracing::warn!(
                    "LWA refused next_client_secret (invalid_client) and accepted client_secret                      again; the proxy uses client_secret"
                );
            }
        }
        retried
    }

    async fn fetch_with(
        &self,
        grant: &Grant,
        secret: &Secret,
        timeout: Duration,
    ) -> Result<FreshToken, TokenError> {
        let request = self.token_request(self.form(grant, secret));
        let kind = match grant {
            Grant::RefreshToken(_) => "lwa",
            Grant::ClientCredentials { .. } => "grantless",
        };
        let m = crate::metrics::metrics();
        m.lwa_calls
            .get_or_create(&crate::metrics::KindLabels { kind })
            .inc();
        let result = super::call_token_service(request, timeout, "LWA")
            .await
            .and_then(|(status, _, body)| self.parse(status, &body));
        if let Err(e) = &result {
            m.token_failure("lwa", e);
        }
        result
    }

    /// Exchanges an authorization code from the website authorization workflow for the
    /// seller's refresh token (`grant_type=authorization_code`, with the registered
    /// `redirect_uri`). One attempt per configured secret: a code is single-use, so a
    /// transient failure is not retried with the same code.
    pub async fn exchange_code(
        &self,
        code: &Secret,
        redirect_uri: &str,
    ) -> Result<Secret, TokenError> {
        let secrets = self.secrets.load_full();
        let mut tried = vec![&secrets.current];
        tried.extend(secrets.next.as_ref());
        let mut last = None;
        for secret in tried {
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", code.expose())
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("client_id", &self.client_id)
                .append_pair("client_secret", secret.expose())
                .finish();
            let request = self.token_request(form);
            crate::metrics::metrics()
                .lwa_calls
                .get_or_create(&crate::metrics::KindLabels {
                    kind: "authorization_code",
                })
                .inc();
            let answer = super::call_token_service(request, self.timeout, "LWA").await;
            let result = answer.and_then(|(status, _, body)| {
                self.parse(status, &body)?;
                #[derive(Deserialize)]
                struct WithRefresh {
                    refresh_token: Option<String>,
                }
                serde_json::from_slice::<WithRefresh>(&body)
                    .ok()
                    .and_then(|w| w.refresh_token)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new)
                    .ok_or_else(|| {
                        TokenError::Unavailable("LWA answered without a refresh_token".into())
                    })
            });
            match result {
                Err(TokenError::Refused { ref code, .. }) if code == "invalid_client" => {
                    last = Some(result);
                }
                other => return other,
            }
        }
        last.unwrap_or_else(|| Err(TokenError::NotConfigured("no client secret".into())))
    }

    /// A POST of `form` to the token endpoint, as the docs show it.
    fn token_request(&self, form: String) -> reqwest::RequestBuilder {
        self.http
            .post(self.token_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body(form)
    }

    /// The documented form body; `refresh_token` and `scope` are never sent together.
    fn form(&self, grant: &Grant, secret: &Secret) -> String {
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
            .append_pair("client_secret", secret.expose());
        form.finish()
    }

    /// The application's LWA client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
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
        let secrets = self.secrets.load();
        let mut out = text.replace(secrets.current.expose(), "***");
        if let Some(next) = &secrets.next {
            out = out.replace(next.expose(), "***");
        }
        out
    }
}

/// An empty token cache for an LWA grant; the first `get` fetches. With a store, replicas
/// share the token: named by the application and the refresh token (or scope).
pub fn cache(
    client: Arc<LwaClient>,
    grant: Grant,
    store: Option<&Arc<dyn TokenStore>>,
) -> TokenCache {
    let (label, name) = match &grant {
        Grant::RefreshToken(r) => (
            "lwa refresh_token".to_string(),
            store::name("lwa", &[&client.client_id, r.expose()]),
        ),
        Grant::ClientCredentials { scope } => (
            format!("lwa client_credentials {scope}"),
            store::name("grantless", &[&client.client_id, scope]),
        ),
    };
    // Longer than a fetch with all its retries can take.
    let lock_ttl = client.timeout * (client.retries + 1) + Duration::from_secs(5);
    let shared = store.map(|store| Shared {
        store: Arc::clone(store),
        name,
        lock_ttl,
    });
    let grant = Arc::new(grant);
    TokenCache::with_store(
        label,
        Arc::new(move || {
            let client = Arc::clone(&client);
            let grant = Arc::clone(&grant);
            Box::pin(async move { client.fetch(&grant).await })
        }),
        shared,
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
