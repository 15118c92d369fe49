//! Token choice: which token a request carries, and where it comes from.
//!
//! - [`cache`]: [`cache::TokenCache`], one token refreshed ahead and fetched single-flight;
//!   every token below lives in one.
//! - [`lwa`]: LWA access tokens (refresh_token and client_credentials grants).
//! - [`rdt`]: Restricted Data Tokens, cached per restricted resource.
//! - [`grantless`]: client_credentials tokens, cached per scope.

pub mod cache;
pub mod grantless;
pub mod lwa;
pub mod rdt;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::error::{ProxyError, TokenError};
use crate::limiter::Limiter;
use crate::operations::{AuthKind, Operation};
use crate::secret::Secret;

use cache::TokenCache;
use grantless::Grantless;
use lwa::{Grant, LwaClient};
use rdt::{Minter, RdtCache, RdtResource, ReportTypes};

/// The scope `/_proxy/ready` checks when there is no refresh token.
const READY_SCOPE: &str = "sellingpartnerapi::notifications";

/// Header forcing the choice for a report document the proxy has not seen: `true` or `false`.
pub const RESTRICTED_HEADER: &str = "x-spapi-restricted";

/// Where a token came from, so that it can be dropped if Amazon rejects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The seller's LWA access token.
    Seller,
    /// A grantless token for this scope.
    Grantless(String),
    /// An RDT for this resource.
    Rdt(RdtResource),
}

/// The token a request carries, and where it came from.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The value for `x-amz-access-token`.
    pub token: Secret,
    /// Its source.
    pub source: TokenSource,
}

/// Every token source the proxy has.
#[derive(Debug)]
pub struct Auth {
    seller: Option<TokenCache>,
    grantless: Grantless,
    rdt: Option<RdtCache>,
    reports: ReportTypes,
}

/// Sends a request to a token service (LWA or the Tokens API) and reads the answer whole,
/// within `timeout`. Token answers are small, and the whole answer is needed to parse it.
pub(crate) async fn call_token_service(
    request: reqwest::RequestBuilder,
    timeout: std::time::Duration,
    service: &str,
) -> Result<(http::StatusCode, http::HeaderMap, bytes::Bytes), TokenError> {
    let call = async {
        let resp = request.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(TokenError::Timeout),
        Ok(Err(e)) if e.is_timeout() => Err(TokenError::Timeout),
        Ok(Err(e)) => Err(TokenError::Unavailable(format!("{service}: {e}"))),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// SP-API's answer to an expired or unknown token: 403 `Unauthorized` whose message says the
/// security token is expired or invalid. A 403 for a missing role says "Access to requested
/// resource is denied" and must not trigger a refresh.
pub fn says_token_rejected(body: &str) -> bool {
    let text = body.to_ascii_lowercase();
    text.contains("unauthorized")
        && (text.contains("token included in the request is expired")
            || text.contains("token included in the request is invalid"))
}

impl Auth {
    /// Token sources for the configured credentials; nothing is fetched yet.
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ConfigError> {
        config.require_credentials()?;
        let c = &config.credentials;
        let (Some(client_id), Some(secret)) = (&c.client_id, &c.client_secret) else {
            unreachable!("require_credentials checked both");
        };
        let client = Arc::new(LwaClient::new(
            http.clone(),
            config.token_url.clone(),
            client_id.clone(),
            secret.clone(),
            config.timeouts.token,
            config.token_retries,
        ));
        let seller = c
            .refresh_token
            .as_ref()
            .map(|rt| lwa::cache(Arc::clone(&client), Grant::RefreshToken(rt.clone())));
        let rdt = seller.as_ref().map(|seller| {
            RdtCache::new(Minter::new(
                http,
                &config.rdt_endpoint,
                seller.clone(),
                config.target_application.clone(),
                config.timeouts.token,
                limiter,
                config.max_wait,
            ))
        });
        Ok(Auth {
            seller,
            grantless: Grantless::new(client),
            rdt,
            reports: ReportTypes::new(&config.restricted_report_types),
        })
    }

    fn no_refresh_token() -> TokenError {
        TokenError::NotConfigured(
            "no refresh token is configured, so only grantless operations can be served; \
             set SPAPI_REFRESH_TOKEN or credentials.refresh_token"
                .into(),
        )
    }

    /// The seller's LWA access token.
    pub async fn seller_token(&self) -> Result<Secret, TokenError> {
        match &self.seller {
            Some(s) => s.get().await,
            None => Err(Self::no_refresh_token()),
        }
    }

    /// The token `plan` calls for. `restricted` is the `x-spapi-restricted` header, if any.
    pub async fn token(
        &self,
        plan: &TokenPlan,
        restricted: Option<bool>,
    ) -> Result<Chosen, ProxyError> {
        let (token, source) = match plan {
            TokenPlan::Lwa => (self.seller_token().await?, TokenSource::Seller),
            TokenPlan::Grantless { scope } => (
                self.grantless.get(scope).await?,
                TokenSource::Grantless(scope.clone()),
            ),
            TokenPlan::Rdt {
                method,
                path,
                data_elements,
            } => {
                let resource = RdtResource {
                    method: method.clone(),
                    path: path.clone(),
                    data_elements: data_elements.clone(),
                };
                self.rdt_for(resource).await?
            }
            TokenPlan::RdtIfRestrictedReport { path } => {
                let document = path.rsplit('/').next().unwrap_or("");
                if restricted.or_else(|| self.reports.is_restricted(document)) == Some(true) {
                    let resource = RdtResource {
                        method: "GET".into(),
                        path: path.clone(),
                        data_elements: Vec::new(),
                    };
                    self.rdt_for(resource).await?
                } else {
                    (self.seller_token().await?, TokenSource::Seller)
                }
            }
        };
        Ok(Chosen { token, source })
    }

    async fn rdt_for(&self, resource: RdtResource) -> Result<(Secret, TokenSource), TokenError> {
        let rdt = self.rdt.as_ref().ok_or_else(Self::no_refresh_token)?;
        let token = rdt.get(&resource).await?;
        Ok((token, TokenSource::Rdt(resource)))
    }

    /// Amazon rejected `chosen`: forget it so the next request gets a new one.
    pub fn reject(&self, chosen: &Chosen) {
        match &chosen.source {
            TokenSource::Seller => {
                if let Some(s) = &self.seller {
                    s.invalidate(&chosen.token);
                }
            }
            TokenSource::Grantless(scope) => self.grantless.invalidate(scope, &chosen.token),
            TokenSource::Rdt(resource) => {
                if let Some(rdt) = &self.rdt {
                    rdt.invalidate(resource, &chosen.token);
                }
            }
        }
    }

    /// Learns report document types from a getReport or getReports answer.
    pub fn learn_reports(&self, body: &[u8]) {
        self.reports.learn(body);
    }

    /// Whether a token can be had now (for `/_proxy/ready`): the seller's, or without a
    /// refresh token, a grantless one.
    pub async fn ready(&self) -> Result<(), TokenError> {
        match &self.seller {
            Some(s) => s.get().await.map(|_| ()),
            None => self.grantless.get(READY_SCOPE).await.map(|_| ()),
        }
    }
}

/// Which token a request will carry: decided from the operation alone, before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlan {
    /// The seller's LWA access token.
    Lwa,
    /// An RDT for this restricted resource.
    Rdt {
        /// The method named in the RDT request.
        method: String,
        /// The path named in the RDT request: the template (generic) or the request's path.
        path: String,
        /// dataElements, sorted.
        data_elements: Vec<String>,
    },
    /// getReportDocument: an RDT for this specific path if the document's report type is
    /// restricted, the LWA token otherwise.
    RdtIfRestrictedReport {
        /// The document's path.
        path: String,
    },
    /// A grantless token for this scope.
    Grantless {
        /// e.g. `sellingpartnerapi::notifications`.
        scope: String,
    },
}

/// Header naming the dataElements for one request, e.g. `buyerInfo,shippingAddress`.
pub const DATA_ELEMENTS_HEADER: &str = "x-spapi-data-elements";

/// Decides the token for a request to `op` at `path` (no query).
///
/// `requested` is the `x-spapi-data-elements` header, if any; `configured` the operation's
/// `data_elements` setting. Elements the operation does not accept are a 400, never dropped.
pub fn plan(
    op: Option<&Operation>,
    path: &str,
    requested: Option<&str>,
    configured: Option<&[String]>,
) -> Result<TokenPlan, ProxyError> {
    let Some(op) = op else {
        return Ok(TokenPlan::Lwa);
    };
    match &op.auth {
        AuthKind::Lwa => Ok(TokenPlan::Lwa),
        AuthKind::Grantless { scope } => Ok(TokenPlan::Grantless {
            scope: scope.clone(),
        }),
        AuthKind::RdtConditional => Ok(TokenPlan::RdtIfRestrictedReport {
            path: path.to_string(),
        }),
        AuthKind::Rdt(spec) => {
            let mut elements: Vec<String> = match requested {
                Some(h) => h
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(String::from)
                    .collect(),
                None => {
                    configured.map_or_else(|| spec.default_elements.clone(), <[String]>::to_vec)
                }
            };
            let bad: Vec<&str> = elements
                .iter()
                .filter(|e| !spec.elements.contains(e))
                .map(String::as_str)
                .collect();
            if !bad.is_empty() {
                return Err(ProxyError::BadRequest(format!(
                    "{} does not accept the dataElements {} (accepted: {})",
                    op.id,
                    bad.join(", "),
                    if spec.elements.is_empty() {
                        "none".to_string()
                    } else {
                        spec.elements.join(", ")
                    }
                )));
            }
            elements.sort();
            elements.dedup();
            Ok(TokenPlan::Rdt {
                method: op.method.to_string(),
                path: if spec.generic {
                    op.template.clone()
                } else {
                    path.to_string()
                },
                data_elements: elements,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Catalog;

    fn op(api: &str, id: &str) -> Option<&'static Operation> {
        Catalog::builtin().by_qualified(api, id)
    }

    #[test]
    fn plan_table() {
        let rdt = |path: &str, els: &[&str]| TokenPlan::Rdt {
            method: "GET".into(),
            path: path.into(),
            data_elements: els.iter().map(|s| s.to_string()).collect(),
        };
        let configured = vec!["shippingAddress".to_string()];
        #[allow(clippy::type_complexity, reason = "a test table")]
        let cases: Vec<(
            &str,
            Option<&Operation>,
            &str,
            Option<&str>,
            Option<&[String]>,
            TokenPlan,
        )> = vec![
            ("unknown", None, "/x", None, None, TokenPlan::Lwa),
            (
                "plain",
                op("sellers", "getMarketplaceParticipations"),
                "/sellers/v1/marketplaceParticipations",
                None,
                None,
                TokenPlan::Lwa,
            ),
            (
                "generic path",
                op("ordersV0", "getOrderAddress"),
                "/orders/v0/orders/1-2-3/address",
                None,
                None,
                rdt("/orders/v0/orders/{orderId}/address", &[]),
            ),
            (
                "default elements",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                None,
                rdt(
                    "/orders/v0/orders/{orderId}",
                    &["buyerInfo", "shippingAddress"],
                ),
            ),
            (
                "configured elements",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                Some(&configured),
                rdt("/orders/v0/orders/{orderId}", &["shippingAddress"]),
            ),
            (
                "header wins, sorted",
                op("ordersV0", "getOrders"),
                "/orders/v0/orders",
                Some("shippingAddress, buyerInfo"),
                Some(&configured),
                rdt("/orders/v0/orders", &["buyerInfo", "shippingAddress"]),
            ),
            (
                "specific path",
                op("shipping", "getShipment"),
                "/shipping/v1/shipments/S1",
                None,
                None,
                rdt("/shipping/v1/shipments/S1", &[]),
            ),
            (
                "report document",
                op("reports_2021-06-30", "getReportDocument"),
                "/reports/2021-06-30/documents/D1",
                None,
                None,
                TokenPlan::RdtIfRestrictedReport {
                    path: "/reports/2021-06-30/documents/D1".into(),
                },
            ),
            (
                "grantless",
                op("notifications", "getDestinations"),
                "/notifications/v1/destinations",
                None,
                None,
                TokenPlan::Grantless {
                    scope: "sellingpartnerapi::notifications".into(),
                },
            ),
        ];
        for (name, op, path, requested, configured, want) in cases {
            assert_eq!(
                plan(op, path, requested, configured).unwrap(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn elements_an_operation_does_not_accept_are_named() {
        let err = plan(
            op("ordersV0", "getOrderItems"),
            "/orders/v0/orders/1/orderItems",
            Some("buyerInfo,shippingAddress,bogus"),
            None,
        )
        .unwrap_err();
        assert_eq!(err.status(), 400);
        let msg = err.to_string();
        assert!(msg.contains("shippingAddress, bogus"), "{msg}");
    }
}
