//! Token choice: which token a request carries, and where it comes from.

pub mod lwa;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::error::{ProxyError, TokenError};
use crate::operations::{AuthKind, Operation};
use crate::secret::Secret;

use lwa::{Grant, LwaClient, TokenCache};

/// Every token source the proxy has.
#[derive(Debug, Clone)]
pub struct Auth {
    seller: TokenCache,
}

impl Auth {
    /// Token sources for the configured credentials; nothing is fetched yet.
    pub fn new(config: &Config, http: reqwest::Client) -> Result<Self, ConfigError> {
        config.require_credentials()?;
        let c = &config.credentials;
        let (Some(client_id), Some(secret), Some(refresh)) =
            (&c.client_id, &c.client_secret, &c.refresh_token)
        else {
            unreachable!("require_credentials checked all three");
        };
        let client = Arc::new(LwaClient::new(
            http,
            config.token_url.clone(),
            client_id.clone(),
            secret.clone(),
            config.timeouts.token,
            config.token_retries,
        ));
        let seller = TokenCache::new(client, Grant::RefreshToken(refresh.clone()));
        Ok(Auth { seller })
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
