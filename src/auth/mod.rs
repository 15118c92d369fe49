//! Token choice: which token a request carries, and where it comes from.
//!
//! - [`cache`]: [`cache::TokenCache`], one token refreshed ahead and fetched single-flight;
//!   every token below lives in one.
//! - [`lwa`]: LWA access tokens (refresh_token and client_credentials grants).
//! - [`rdt`]: Restricted Data Tokens, cached per restricted resource.
//! - [`grantless`]: client_credentials tokens, cached per scope.
//! - [`pii`]: dataElements the application turned out to have no role for.

pub mod cache;
pub mod grantless;
pub mod lwa;
pub mod pii;
pub mod rdt;

use std::sync::{Arc, Mutex};

use http::HeaderMap;

use crate::config::{Config, ConfigError, RestrictedData};
use crate::error::{ProxyError, TokenError};
use crate::limiter::Limiter;
use crate::operations::{AuthKind, Operation};

use cache::{Token, TokenCache};
use grantless::Grantless;
use lwa::{Grant, LwaClient};
use pii::{PiiRoles, Refusal};
use rdt::{Minter, RdtCache, RdtResource, ReportTypes};

/// Response header on operations that may carry personal data: `included` when the request
/// went with an RDT, `omitted` when it went with the LWA token instead.
pub const PII_HEADER: &str = "x-spapi-proxy-pii";

/// Whether the answer can hold personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pii {
    /// Sent with an RDT.
    Included,
    /// Sent with the LWA token although the operation could return personal data with an RDT.
    Omitted,
}

impl Pii {
    /// The value of [`PII_HEADER`].
    pub fn header_value(self) -> &'static str {
        match self {
            Pii::Included => "included",
            Pii::Omitted => "omitted",
        }
    }
}

/// The scope `/_proxy/ready` checks when there is no refresh token.
const READY_SCOPE: &str = "sellingpartnerapi::notifications";

/// Header forcing the choice for a report document the proxy has not seen: `true` or `false`.
pub const RESTRICTED_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-restricted");

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
    /// The token for `x-amz-access-token`.
    pub token: Token,
    /// Its source.
    pub source: TokenSource,
    /// For operations that may carry personal data: whether this token lets them.
    pub pii: Option<Pii>,
}

/// Every token source the proxy has.
#[derive(Debug)]
pub struct Auth {
    seller: Option<TokenCache>,
    grantless: Grantless,
    rdt: Option<RdtCache>,
    reports: ReportTypes,
    pii: PiiRoles,
    /// Set when Amazon rejected a token the proxy had just fetched, so that `/_proxy/ready`
    /// does not report ready on the strength of a token Amazon will not take.
    rejected_fresh: Mutex<Option<String>>,
    any_rejected_fresh: std::sync::atomic::AtomicBool,
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

/// SP-API's words for "this token is no good", lowercased: today's `details` for an expired and
/// for a revoked or unknown access token (npm `amazon-sp-api` lib/SellingPartner.js,
/// selling-partner-api-docs#2147), a variant seen for an LWA token (PipedreamHQ/pipedream#16843),
/// and the SigV4 era's messages (selling-partner-api-docs#3153, jlevers/selling-partner-api#282).
const TOKEN_REJECTED: [&str; 4] = [
    "access token you provided has expired",
    "access token you provided is revoked",
    "token you provided has expired",
    "security token included in the request is",
];

/// Whether a 403 from SP-API (or the Tokens API) says the token itself is expired, revoked or
/// unknown, so that a fresh one may succeed. "Access to requested resource is denied." alone is
/// also Amazon's answer for a missing role and for an RDT that does not cover the path, which no
/// new token fixes, so only the token wording (or an `ExpiredTokenException` error type) counts.
pub fn says_token_rejected(headers: &HeaderMap, body: &[u8]) -> bool {
    let expired_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("ExpiredTokenException"));
    if expired_type {
        return true;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    TOKEN_REJECTED.iter().any(|phrase| text.contains(phrase))
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
            pii: PiiRoles::new(config.restricted_data_retry),
            rejected_fresh: Mutex::new(None),
            any_rejected_fresh: Default::default(),
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
    pub async fn seller_token(&self) -> Result<Token, TokenError> {
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
        match plan {
            TokenPlan::Lwa => self.seller_chosen(None).await,
            TokenPlan::LwaNoPii => self.seller_chosen(Some(Pii::Omitted)).await,
            TokenPlan::Grantless { scope } => Ok(Chosen {
                token: self.grantless.get(scope).await?,
                source: TokenSource::Grantless(scope.clone()),
                pii: None,
            }),
            TokenPlan::Rdt {
                resource,
                on_refusal,
            } => self.rdt_or_fallback(resource, *on_refusal).await,
            TokenPlan::RdtIfRestrictedReport { path, policy } => {
                let document = path.rsplit('/').next().unwrap_or("");
                if restricted.or_else(|| self.reports.is_restricted(document)) != Some(true) {
                    return self.seller_chosen(None).await;
                }
                let resource = RdtResource {
                    method: "GET".into(),
                    path: path.clone(),
                    data_elements: Vec::new(),
                };
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
            token: self.seller_token().await?,
            source: TokenSource::Seller,
            pii,
        })
    }

    /// An RDT for `resource`; if Amazon says the application has no role for its dataElements,
    /// what `on_refusal` says. A refusal is remembered so that it is not asked again for a while.
    async fn rdt_or_fallback(
        &self,
        resource: &RdtResource,
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
                let rdt = self.rdt.as_ref().ok_or_else(Self::no_refresh_token)?;
                match rdt.get(resource).await {
                    Ok(token) => {
                        return Ok(Chosen {
                            token,
                            source: TokenSource::Rdt(resource.clone()),
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

    /// What the proxy has learnt about the application's roles, for `/_proxy/status`.
    pub fn pii_roles(&self) -> serde_json::Value {
        self.pii.snapshot()
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

    /// Amazon rejected `chosen` although it was fetched for this very request's replay: the
    /// credentials themselves are not accepted, and `/_proxy/ready` says so until a request
    /// with a seller token succeeds again.
    pub fn rejected_fresh(&self, chosen: &Chosen, amazon: &str) {
        if chosen.source == TokenSource::Seller {
            *self
                .rejected_fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(amazon.to_string());
            self.any_rejected_fresh
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Amazon's words when it last rejected a freshly fetched seller token, if that is the
    /// latest news.
    pub fn fresh_rejection(&self) -> Option<String> {
        self.rejected_fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A request with a seller token got an answer other than a token rejection.
    pub fn accepted(&self, chosen: &Chosen) {
        // One atomic load on the request path; the lock only after a rejection.
        if chosen.source == TokenSource::Seller
            && self
                .any_rejected_fresh
                .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            *self
                .rejected_fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Learns report document types from a getReport or getReports answer.
    pub fn learn_reports(&self, body: &[u8]) {
        self.reports.learn(body);
    }

    /// Whether a token can be had now (for `/_proxy/ready`): the seller's, or without a
    /// refresh token, a grantless one.
    pub async fn ready(&self) -> Result<(), TokenError> {
        if let Some(amazon) = self.fresh_rejection() {
            return Err(TokenError::Unavailable(format!(
                "SP-API rejected a freshly issued access token: {amazon}"
            )));
        }
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
    /// The seller's LWA access token for an operation that could return personal data with
    /// an RDT (`restricted_data = "never"`).
    LwaNoPii,
    /// An RDT for this restricted resource.
    Rdt {
        /// What the RDT is asked for.
        resource: RdtResource,
        /// What happens when Amazon says the application has no role for the dataElements.
        on_refusal: OnRefusal,
    },
    /// getReportDocument: an RDT for this specific path if the document's report type is
    /// restricted, the LWA token otherwise.
    RdtIfRestrictedReport {
        /// The document's path.
        path: String,
        /// `restricted_data` for the operation.
        policy: RestrictedData,
    },
    /// A grantless token for this scope.
    Grantless {
        /// e.g. `sellingpartnerapi::notifications`.
        scope: String,
    },
}

/// What a mint refused for lack of a role leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRefusal {
    /// An error carrying Amazon's reason (502 `rdt_refused`): restricted-only operations, and
    /// `restricted_data = "always"`.
    Fail,
    /// The LWA token, and the answer without personal data (`restricted_data = "auto"`).
    FallBack,
    /// The request named its dataElements: 403 `pii_not_permitted` with Amazon's reason.
    NotPermitted,
}

/// Header naming the dataElements for one request, e.g. `buyerInfo,shippingAddress`.
pub const DATA_ELEMENTS_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-spapi-data-elements");

/// Decides the token for a request to `op` at `path` (no query).
///
/// `requested` is the `x-spapi-data-elements` header, if any; `configured` the operation's
/// `data_elements` setting; `policy` its `restricted_data`. Elements the operation does not
/// accept are a 400, never dropped.
pub fn plan(
    op: Option<&Operation>,
    path: &str,
    requested: Option<&str>,
    configured: Option<&[String]>,
    policy: RestrictedData,
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
            policy,
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
            let on_refusal = match (op.auth.pii_optional(), requested.is_some(), policy) {
                (false, _, _) => OnRefusal::Fail,
                (true, true, RestrictedData::Never) => {
                    return Err(TokenError::PiiNotPermitted {
                        code: "restricted_data".into(),
                        description: format!(
                            "restricted_data = \"never\" for {}: the proxy does not ask for \
                             personal data, so {DATA_ELEMENTS_HEADER} cannot be honoured",
                            op.id
                        ),
                    }
                    .into())
                }
                (true, false, RestrictedData::Never) => return Ok(TokenPlan::LwaNoPii),
                (true, true, _) => OnRefusal::NotPermitted,
                (true, false, RestrictedData::Always) => OnRefusal::Fail,
                (true, false, RestrictedData::Auto) => OnRefusal::FallBack,
            };
            Ok(TokenPlan::Rdt {
                resource: RdtResource {
                    method: op.method.to_string(),
                    path: if spec.generic {
                        op.template.clone()
                    } else {
                        path.to_string()
                    },
                    data_elements: elements,
                },
                on_refusal,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Catalog;
    use RestrictedData::{Always, Auto, Never};

    fn op(api: &str, id: &str) -> Option<&'static Operation> {
        Catalog::builtin().by_qualified(api, id)
    }

    #[test]
    fn plan_table() {
        let rdt = |path: &str, els: &[&str], on_refusal| TokenPlan::Rdt {
            resource: RdtResource {
                method: "GET".into(),
                path: path.into(),
                data_elements: els.iter().map(|s| s.to_string()).collect(),
            },
            on_refusal,
        };
        let configured = vec!["shippingAddress".to_string()];
        let order = "/orders/v0/orders/{orderId}";
        let both = ["buyerInfo", "shippingAddress"];
        #[allow(clippy::type_complexity, reason = "a test table")]
        let cases: Vec<(
            &str,
            Option<&Operation>,
            &str,
            Option<&str>,
            Option<&[String]>,
            RestrictedData,
            TokenPlan,
        )> = vec![
            ("unknown", None, "/x", None, None, Auto, TokenPlan::Lwa),
            (
                "plain",
                op("sellers", "getMarketplaceParticipations"),
                "/sellers/v1/marketplaceParticipations",
                None,
                None,
                Auto,
                TokenPlan::Lwa,
            ),
            (
                "restricted only: a refusal is an error whatever the policy",
                op("ordersV0", "getOrderAddress"),
                "/orders/v0/orders/1-2-3/address",
                None,
                None,
                Never,
                rdt("/orders/v0/orders/{orderId}/address", &[], OnRefusal::Fail),
            ),
            (
                "optional PII, auto: default elements, fall back",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                None,
                Auto,
                rdt(order, &both, OnRefusal::FallBack),
            ),
            (
                "optional PII, always",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                None,
                Always,
                rdt(order, &both, OnRefusal::Fail),
            ),
            (
                "optional PII, never",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                None,
                Never,
                TokenPlan::LwaNoPii,
            ),
            (
                "configured elements",
                op("ordersV0", "getOrder"),
                "/orders/v0/orders/1-2-3",
                None,
                Some(&configured),
                Auto,
                rdt(order, &["shippingAddress"], OnRefusal::FallBack),
            ),
            (
                "header wins, sorted, and wants PII",
                op("ordersV0", "getOrders"),
                "/orders/v0/orders",
                Some("shippingAddress, buyerInfo"),
                Some(&configured),
                Auto,
                rdt("/orders/v0/orders", &both, OnRefusal::NotPermitted),
            ),
            (
                "specific path",
                op("shipping", "getShipment"),
                "/shipping/v1/shipments/S1",
                None,
                None,
                Auto,
                rdt("/shipping/v1/shipments/S1", &[], OnRefusal::Fail),
            ),
            (
                "report document",
                op("reports_2021-06-30", "getReportDocument"),
                "/reports/2021-06-30/documents/D1",
                None,
                None,
                Always,
                TokenPlan::RdtIfRestrictedReport {
                    path: "/reports/2021-06-30/documents/D1".into(),
                    policy: Always,
                },
            ),
            (
                "orders 2026-01-01 never needs an RDT",
                op("orders_2026-01-01", "getOrder"),
                "/orders/2026-01-01/orders/1-2-3",
                None,
                None,
                Always,
                TokenPlan::Lwa,
            ),
            (
                "grantless",
                op("notifications", "getDestinations"),
                "/notifications/v1/destinations",
                None,
                None,
                Auto,
                TokenPlan::Grantless {
                    scope: "sellingpartnerapi::notifications".into(),
                },
            ),
        ];
        for (name, op, path, requested, configured, policy, want) in cases {
            assert_eq!(
                plan(op, path, requested, configured, policy).unwrap(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn naming_elements_under_never_is_refused() {
        let err = plan(
            op("ordersV0", "getOrder"),
            "/orders/v0/orders/1",
            Some("buyerInfo"),
            None,
            Never,
        )
        .unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(err.kind(), "pii_not_permitted");
    }

    #[test]
    fn elements_an_operation_does_not_accept_are_named() {
        let err = plan(
            op("ordersV0", "getOrderItems"),
            "/orders/v0/orders/1/orderItems",
            Some("buyerInfo,shippingAddress,bogus"),
            None,
            Auto,
        )
        .unwrap_err();
        assert_eq!(err.status(), 400);
        let msg = err.to_string();
        assert!(msg.contains("shippingAddress, bogus"), "{msg}");
    }

    #[test]
    fn token_rejections_are_told_from_access_denied() {
        let body = |code: &str, message: &str, details: &str| {
            serde_json::json!({"errors": [{"code": code, "message": message, "details": details}]})
                .to_string()
        };
        let denied = "Access to requested resource is denied.";
        let mut expired_type = HeaderMap::new();
        expired_type.insert("x-amzn-errortype", "ExpiredTokenException".parse().unwrap());
        let none = HeaderMap::new();
        let cases = [
            (
                "expired, today's wording",
                &none,
                body("Unauthorized", denied, "The access token you provided has expired."),
                true,
            ),
            (
                "revoked, today's wording",
                &none,
                body(
                    "Unauthorized",
                    denied,
                    "The access token you provided is revoked, malformed or invalid.",
                ),
                true,
            ),
            (
                "expired LWA secret token wording",
                &none,
                body("Unauthorized", denied, "The LWA secret token you provided has expired."),
                true,
            ),
            (
                "SigV4 era, expired",
                &none,
                r#"{"errors":[{"message":"The security token included in the request is expired","code":"Unauthorized"}]}"#.to_string(),
                true,
            ),
            (
                "SigV4 era, invalid",
                &none,
                body("InvalidInput", "The security token included in the request is invalid.", ""),
                true,
            ),
            ("error type header alone", &expired_type, "{}".to_string(), true),
            ("missing role or uncovered RDT", &none, body("Unauthorized", denied, ""), false),
            (
                "missing token",
                &none,
                r#"{"errors":[{"message":"Access to requested resource is denied.","code":"MissingAuthenticationToken"}]}"#.to_string(),
                false,
            ),
            ("not JSON", &none, "<html>Forbidden</html>".to_string(), false),
        ];
        for (name, headers, body, want) in cases {
            assert_eq!(
                says_token_rejected(headers, body.as_bytes()),
                want,
                "{name}"
            );
        }
    }
}
