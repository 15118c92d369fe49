//! One seller in one region: its LWA access token, its RDTs, what Amazon said about its roles
//! and report documents, and whether its refresh token still works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::cache::{Token, TokenCache};
use super::pii::{self, PiiRoles, Refusal};
use super::rdt::{RdtCache, RdtResource, ReportTypes};
use super::{Chosen, OnRefusal, Pii, TokenPlan, TokenSource};
use crate::config::RestrictedData;
use crate::error::{ProxyError, TokenError};
use crate::key::Key;
use crate::lock;

/// After LWA refuses a refresh token (`invalid_grant`), it is tried again after this long,
/// doubling on each further refusal up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a refused refresh token waits before it is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// A refresh token LWA refused: requests fail fast until `until`.
#[derive(Debug, Clone)]
struct Refused {
    until: Instant,
    backoff: Duration,
    error: TokenError,
}

/// The seller's tokens and what is known about them, for one region.
#[derive(Debug)]
pub struct SellerAuth {
    /// Whose.
    pub key: Key,
    token: TokenCache,
    rdt: RdtCache,
    reports: ReportTypes,
    pii: PiiRoles,
    refused: Mutex<Option<Refused>>,
    /// Set when Amazon rejected a token the proxy had just fetched, so that `/_proxy/ready`
    /// does not report ready on the strength of a token Amazon will not take.
    rejected_fresh: Mutex<Option<String>>,
    any_rejected_fresh: AtomicBool,
}

impl SellerAuth {
    /// `token` is the seller's LWA token cache, which `rdt`'s minter uses too.
    pub fn new(
        key: Key,
        token: TokenCache,
        rdt: RdtCache,
        reports: ReportTypes,
        pii: PiiRoles,
    ) -> SellerAuth {
        SellerAuth {
            key,
            token,
            rdt,
            reports,
            pii,
            refused: Mutex::new(None),
            rejected_fresh: Mutex::new(None),
            any_rejected_fresh: AtomicBool::new(false),
        }
    }

    /// The seller's LWA access token. While the refresh token stands refused, the refusal is
    /// answered at once, without calling LWA; after the backoff one call tries again.
    pub async fn access_token(&self) -> Result<Token, TokenError> {
        self.check_refused()?;
        match self.token.get().await {
            Ok(t) => {
                if lock(&self.refused).take().is_some() {
                    tracing::info!(seller = %self.key, "LWA accepts the refresh token again");
                }
                Ok(t)
            }
            Err(e @ TokenError::Refused { .. }) if is_grant_refusal(&e) => {
                let mut refused = lock(&self.refused);
                let backoff = next_backoff(refused.as_ref().map(|r| r.backoff));
                tracing::error!(
                    seller = %self.key,
                    error = %e,
                    retry_in_secs = backoff.as_secs(),
                    "LWA refused the seller's refresh token; its requests fail at once until the retry"
                );
                *refused = Some(Refused {
                    until: Instant::now() + backoff,
                    backoff,
                    error: e.clone(),
                });
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// LWA's refusal, while the refresh token stands refused and its retry is not due.
    fn check_refused(&self) -> Result<(), TokenError> {
        match lock(&self.refused).as_ref() {
            Some(r) if Instant::now() < r.until => Err(r.error.clone()),
            _ => Ok(()),
        }
    }

    /// The access token's age and time to its refresh, if one is cached.
    pub fn token_timing(&self) -> Option<super::cache::Timing> {
        self.token.timing()
    }

    /// Drops the cached access token and fetches a new one now (`tokens --refresh`); a refused
    /// refresh token is tried again at once.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        self.token.clear();
        lock(&self.refused).take();
        self.access_token().await.map(|_| ())
    }

    /// Whether the refresh token currently stands refused.
    pub fn healthy(&self) -> bool {
        lock(&self.refused).is_none()
    }

    /// The token `plan` calls for (never a grantless plan). `restricted` is the
    /// `x-spapi-restricted` header, if any.
    pub async fn token(
        &self,
        plan: &TokenPlan,
        restricted: Option<bool>,
    ) -> Result<Chosen, ProxyError> {
        match plan {
            TokenPlan::Lwa => self.seller_chosen(None).await,
            // Grantless tokens are the application's; [`super::Auth::token`] serves them.
            TokenPlan::Grantless { .. } => Err(TokenError::NotConfigured(
                "a grantless token is the application's, not a seller's".into(),
            )
            .into()),
            TokenPlan::LwaNoPii => self.seller_chosen(Some(Pii::Omitted)).await,
            TokenPlan::Rdt {
                resource,
                on_refusal,
            } => self.rdt_or_fallback(resource, *on_refusal).await,
            TokenPlan::RdtIfRestrictedReport { path, policy } => {
                let document = path.rsplit('/').next().unwrap_or("");
                if restricted.or_else(|| self.reports.is_restricted(document)) != Some(true) {
                    return self.seller_chosen(None).await;
                }
                let resource = Arc::new(RdtResource::new("GET".into(), path.clone(), Vec::new()));
                match policy {
                    RestrictedData::Never => self.seller_chosen(Some(Pii::Omitted)).await,
                    RestrictedData::Always => {
                        self.rdt_or_fallback(&resource, OnRefusal::Fail).await
                    }
                    RestrictedData::Auto => {
                        self.rdt_or_fallback(&resource, OnRefusal::FallBack).await
                    }
                }
            }
        }
    }

    async fn seller_chosen(&self, pii: Option<Pii>) -> Result<Chosen, ProxyError> {
        Ok(Chosen {
            token: self.access_token().await?,
            source: TokenSource::Seller,
            pii,
        })
    }

    /// The token `plan` calls for, when it is at hand: cached, with no refusal learnt or
    /// standing in the way. `None`: ask [`SellerAuth::token`], which may fetch or decide more.
    pub fn cached(&self, plan: &TokenPlan) -> Option<Chosen> {
        // Looked at first, so that a token not served is not counted as a cache hit.
        if !self.healthy() {
            return None;
        }
        let (token, source, pii) = match plan {
            TokenPlan::Lwa | TokenPlan::LwaNoPii => {
                let pii = matches!(plan, TokenPlan::LwaNoPii).then_some(Pii::Omitted);
                (self.token.cached(), TokenSource::Seller, pii)
            }
            TokenPlan::Rdt {
                resource,
                on_refusal,
            } => {
                if *on_refusal != OnRefusal::Fail
                    && self.pii.refused(&resource.data_elements).is_some()
                {
                    return None;
                }
                (
                    self.rdt.cached(resource),
                    TokenSource::Rdt(Arc::clone(resource)),
                    Some(Pii::Included),
                )
            }
            _ => return None,
        };
        Some(Chosen {
            token: token?,
            source,
            pii,
        })
    }

    /// An RDT for `resource`; if Amazon says the application has no role for its dataElements,
    /// what `on_refusal` says. A refusal is remembered so that it is not asked again for a while.
    async fn rdt_or_fallback(
        &self,
        resource: &Arc<RdtResource>,
        on_refusal: OnRefusal,
    ) -> Result<Chosen, ProxyError> {
        let learnt = match on_refusal {
            OnRefusal::Fail => None,
            OnRefusal::FallBack | OnRefusal::NotPermitted => {
                self.pii.refused(&resource.data_elements)
            }
        };
        let refusal = match learnt {
            Some(r) => r,
            None => {
                // A refused refresh token fails fast here too, before a mint is attempted.
                self.check_refused()?;
                match self.rdt.get(resource).await {
                    Ok(token) => {
                        return Ok(Chosen {
                            token,
                            source: TokenSource::Rdt(Arc::clone(resource)),
                            pii: Some(Pii::Included),
                        })
                    }
                    Err(TokenError::Refused {
                        service: "rdt",
                        code,
                        description,
                    }) if pii::is_role_refusal(&description) => {
                        let refusal = Refusal {
                            code,
                            message: description,
                        };
                        self.pii.learn(&resource.data_elements, refusal.clone());
                        refusal
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match on_refusal {
            OnRefusal::FallBack => self.seller_chosen(Some(Pii::Omitted)).await,
            OnRefusal::NotPermitted => Err(TokenError::PiiNotPermitted {
                code: refusal.code,
                description: refusal.message,
            }
            .into()),
            OnRefusal::Fail => Err(TokenError::Refused {
                service: "rdt",
                code: refusal.code,
                description: refusal.message,
            }
            .into()),
        }
    }

    /// What the proxy has learnt about the application's roles for this seller.
    pub fn pii_roles(&self) -> serde_json::Value {
        self.pii.snapshot()
    }

    /// Amazon rejected `chosen` (a seller token or RDT): forget it.
    pub fn reject(&self, chosen: &Chosen) {
        match &chosen.source {
            TokenSource::Seller => self.token.invalidate(&chosen.token),
            TokenSource::Rdt(resource) => self.rdt.invalidate(resource, &chosen.token),
            TokenSource::Grantless(_) => {}
        }
    }

    /// Amazon rejected `chosen` although it was fetched for this very request's replay: the
    /// credentials themselves are not accepted, and `/_proxy/ready` says so until a request
    /// with a seller token succeeds again.
    pub fn rejected_fresh(&self, chosen: &Chosen, amazon: &str) {
        if chosen.source == TokenSource::Seller {
            *lock(&self.rejected_fresh) = Some(amazon.to_string());
            self.any_rejected_fresh.store(true, Ordering::Release);
        }
    }

    /// Amazon's words when it last rejected a freshly fetched seller token, if that is the
    /// latest news.
    pub fn fresh_rejection(&self) -> Option<String> {
        lock(&self.rejected_fresh).clone()
    }

    /// A request with a seller token got an answer other than a token rejection.
    pub fn accepted(&self, chosen: &Chosen) {
        // One atomic load on the request path; the lock only after a rejection.
        if chosen.source == TokenSource::Seller
            && self.any_rejected_fresh.swap(false, Ordering::AcqRel)
        {
            *lock(&self.rejected_fresh) = None;
        }
    }

    /// Learns report document types from a getReport or getReports answer.
    pub fn learn_reports(&self, body: &[u8]) {
        self.reports.learn(body);
    }

    /// Whether a seller token can be had now (for `/_proxy/ready`).
    pub async fn ready(&self) -> Result<(), TokenError> {
        if let Some(amazon) = self.fresh_rejection() {
            return Err(TokenError::Unavailable(format!(
                "SP-API rejected a freshly issued access token: {amazon}"
            )));
        }
        self.access_token().await.map(|_| ())
    }
}

/// How long to wait before trying a refused refresh token again, after waiting `previous`.
fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF))
}

/// `invalid_grant`: LWA does not take the refresh token (revoked, expired or wrong).
fn is_grant_refusal(e: &TokenError) -> bool {
    matches!(e, TokenError::Refused { service: "lwa", code, .. } if code == "invalid_grant")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        let secs = |s| Duration::from_secs(s);
        let cases = [
            (None, secs(60)),
            (Some(secs(60)), secs(120)),
            (Some(secs(1920)), secs(3600)),
            (Some(secs(3600)), secs(3600)),
        ];
        for (previous, want) in cases {
            assert_eq!(next_backoff(previous), want, "{previous:?}");
        }
    }
}
