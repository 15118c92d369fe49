//! Token choice: which token a request carries, and where it comes from.
//!
//! - [`app`]: the application's part: the LWA client and its secrets, grantless tokens.
//! - [`seller`]: one seller in one region: its access token, RDTs and what Amazon said.
//! - [`cache`]: [`cache::TokenCache`], one token refreshed ahead and fetched single-flight;
//!   every token below lives in one.
//! - [`lwa`]: LWA access tokens (refresh_token and client_credentials grants).
//! - [`rdt`]: Restricted Data Tokens, cached per restricted resource.
//! - [`grantless`]: client_credentials tokens, cached per scope.
//! - [`pii`]: dataElements the application turned out to have no role for.
//! - [`store`]: where replicas share tokens (the seam under the caches), with wall-clock expiry.

pub mod app;
pub mod cache;
pub mod grantless;
pub mod lwa;
pub mod pii;
pub mod rdt;
pub mod seller;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;

use crate::config::{Config, ConfigError, Region, RestrictedData, SellerConfig};
use crate::error::{ProxyError, TokenError};
use crate::key::Key;
use crate::limiter::Limiter;
use crate::operations::{AuthKind, Operation};

use app::App;
use cache::Token;
use lwa::Grant;
use pii::PiiRoles;
use rdt::{MintQuota, Minter, RdtCache, RdtResource, ReportTypes, SharedRdts};
use seller::SellerAuth;
use store::TokenStore;

/// Request header naming the seller a request acts for.
pub const SELLER_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-seller");
/// Request header forcing the region: `na`, `eu` or `fe`.
pub const REGION_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-region");

/// Response header on operations that may carry personal data: `included` when the request
/// went with an RDT, `omitted` when it went with the LWA token instead.
pub const PII_HEADER: http::HeaderName = http::HeaderName::from_static("x-spapi-proxy-pii");

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
    pub const fn header_value(self) -> &'static str {
        match self {
            Pii::Included => "included",
            Pii::Omitted => "omitted",
        }
    }

    /// [`Pii::header_value`] as a header value, made at compile time (made per request, its
    /// bytes were checked every time).
    pub fn header(self) -> http::HeaderValue {
        const INCLUDED: http::HeaderValue =
            http::HeaderValue::from_static(Pii::Included.header_value());
        const OMITTED: http::HeaderValue =
            http::HeaderValue::from_static(Pii::Omitted.header_value());
        match self {
            Pii::Included => INCLUDED,
            Pii::Omitted => OMITTED,
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
    Rdt(Arc<RdtResource>),
}

impl TokenSource {
    /// `lwa`, `grantless` or `rdt`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenSource::Seller => "lwa",
            TokenSource::Grantless(_) => "grantless",
            TokenSource::Rdt(_) => "rdt",
        }
    }
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
        Ok(Err(e)) if crate::forward::out_of_local_resources(&e) => Err(
            TokenError::LocalResources(crate::forward::describe(&e.without_url())),
        ),
        // Without the URL: the message reaches clients and logs, and names no host of ours.
        Ok(Err(e)) => Err(TokenError::Unavailable(format!(
            "{service}: {}",
            crate::forward::describe(&e.without_url())
        ))),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// A client-given name as it may appear in a message: at most 100 characters, control
/// characters dropped.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(100).collect()
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

/// Builds each seller's per-region auth on first use; what it is built from is compared on
/// reload to decide whether a seller's caches can be kept.
#[derive(Debug)]
struct Factory {
    app: Arc<App>,
    http: reqwest::Client,
    limiter: Arc<Limiter>,
    /// Where replicas share tokens (`shared_state`); none in one process.
    tokens: Option<Arc<dyn TokenStore>>,
    settings: FactorySettings,
}

#[derive(Debug, Clone, PartialEq)]
struct FactorySettings {
    rdt_endpoints: [reqwest::Url; 3],
    target_application: Option<String>,
    token_timeout: Duration,
    max_wait: Duration,
    restricted_report_types: Vec<String>,
    restricted_data_retry: Duration,
}

impl FactorySettings {
    fn from_config(config: &Config) -> FactorySettings {
        FactorySettings {
            rdt_endpoints: config.rdt_endpoints.clone(),
            target_application: config.target_application.clone(),
            token_timeout: config.timeouts.token,
            max_wait: config.max_wait,
            restricted_report_types: config.restricted_report_types.clone(),
            restricted_data_retry: config.restricted_data_retry,
        }
    }
}

impl Factory {
    fn build(&self, seller: &SellerConfig, name: &Arc<str>, region: Region) -> SellerAuth {
        let key = Key::seller(name, region);
        let token = lwa::cache(
            Arc::clone(&self.app.lwa),
            Grant::RefreshToken(seller.refresh_token.clone()),
            self.tokens.as_ref(),
        );
        let s = &self.settings;
        let rdt_endpoint = &s.rdt_endpoints[region.index()];
        let shared = self.tokens.as_ref().map(|store| SharedRdts {
            store: Arc::clone(store),
            prefix: store::name(
                "seller",
                &[
                    self.app.lwa.client_id(),
                    seller.refresh_token.expose(),
                    rdt_endpoint.as_str(),
                    s.target_application.as_deref().unwrap_or(""),
                ],
            ),
            lock_ttl: s.max_wait + s.token_timeout * 2 + Duration::from_secs(5),
        });
        let rdt = RdtCache::new(
            Minter::new(
                self.http.clone(),
                rdt_endpoint,
                token.clone(),
                s.target_application.clone(),
                s.token_timeout,
                MintQuota {
                    limiter: Arc::clone(&self.limiter),
                    key: key.clone(),
                    max_wait: s.max_wait,
                },
            ),
            shared,
        );
        SellerAuth::new(
            key,
            token,
            rdt,
            ReportTypes::new(&s.restricted_report_types),
            PiiRoles::new(s.restricted_data_retry),
        )
    }
}

/// One configured seller; its auth in each region is made when first needed.
#[derive(Debug)]
pub struct Seller {
    /// As configured.
    pub config: SellerConfig,
    /// The name, shared by every key made for it.
    pub name: Arc<str>,
    regions: [OnceLock<Arc<SellerAuth>>; 3],
    factory: Arc<Factory>,
}

impl Seller {
    /// The seller's tokens in `region`.
    pub fn region(&self, region: Region) -> &Arc<SellerAuth> {
        self.regions[region.index()]
            .get_or_init(|| Arc::new(self.factory.build(&self.config, &self.name, region)))
    }

    /// The seller's auth in every region used so far.
    pub fn used_regions(&self) -> impl Iterator<Item = &Arc<SellerAuth>> {
        self.regions.iter().filter_map(OnceLock::get)
    }
}

/// Every token source: the application's, and each seller's.
#[derive(Debug)]
pub struct Auth {
    app: Arc<App>,
    factory: Arc<Factory>,
    sellers: HashMap<String, Arc<Seller>>,
    default: Option<Arc<Seller>>,
}

impl Auth {
    /// Token sources for the configured credentials and sellers; nothing is fetched yet.
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        limiter: Arc<Limiter>,
        tokens: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, ConfigError> {
        let app = Arc::new(App::new(config, http.clone(), tokens.clone())?);
        Ok(Auth::assemble(config, app, http, limiter, tokens, None))
    }

    /// The same for a reloaded `config`: the application's tokens are kept if it is the same
    /// application (a new secret is taken either way), and each seller's caches are kept if
    /// the seller and what its tokens are made from did not change.
    pub fn reload(&self, config: &Config) -> Result<Auth, ConfigError> {
        let same_app = self.app.reusable_for(config)?;
        let app = if same_app {
            Arc::clone(&self.app)
        } else {
            Arc::new(App::new(
                config,
                self.factory.http.clone(),
                self.factory.tokens.clone(),
            )?)
        };
        let keep = same_app && FactorySettings::from_config(config) == self.factory.settings;
        Ok(Auth::assemble(
            config,
            app,
            self.factory.http.clone(),
            Arc::clone(&self.factory.limiter),
            self.factory.tokens.clone(),
            keep.then_some(self),
        ))
    }

    fn assemble(
        config: &Config,
        app: Arc<App>,
        http: reqwest::Client,
        limiter: Arc<Limiter>,
        tokens: Option<Arc<dyn TokenStore>>,
        previous: Option<&Auth>,
    ) -> Auth {
        let factory = match previous {
            Some(p) => Arc::clone(&p.factory),
            None => Arc::new(Factory {
                app: Arc::clone(&app),
                http,
                limiter,
                tokens,
                settings: FactorySettings::from_config(config),
            }),
        };
        let sellers: HashMap<String, Arc<Seller>> = config
            .sellers
            .iter()
            .map(|s| {
                let kept = previous
                    .and_then(|p| p.sellers.get(&s.name))
                    .filter(|old| old.config == *s)
                    .cloned();
                let seller = kept.unwrap_or_else(|| {
                    Arc::new(Seller {
                        config: s.clone(),
                        name: Arc::from(s.name.as_str()),
                        regions: Default::default(),
                        factory: Arc::clone(&factory),
                    })
                });
                (s.name.clone(), seller)
            })
            .collect();
        let default = config
            .default_seller
            .as_ref()
            .and_then(|n| sellers.get(n))
            .cloned();
        Auth {
            app,
            factory,
            sellers,
            default,
        }
    }

    /// The seller a request acts for: the one it names, else the default. `None` only when
    /// it names none, there is no default, and `needed` is false (grantless operations).
    ///
    /// `limit` is the inbound key's list of sellers, when it has one: such a key acts only
    /// for them (named one another is refused before it is looked up, so an answer never says
    /// whether another seller exists), and errors name only them.
    pub fn seller(
        &self,
        named: Option<&str>,
        needed: bool,
        limit: Option<&[String]>,
    ) -> Result<Option<&Arc<Seller>>, ProxyError> {
        let visible = || match limit {
            Some(allowed) => format!("this key may act for: {}", allowed.join(", ")),
            None => format!("configured: {}", self.seller_names()),
        };
        match named {
            Some(name) if limit.is_some_and(|l| !l.iter().any(|n| n == name)) => {
                Err(ProxyError::SellerNotAllowed(format!(
                    "seller `{}` ({})",
                    printable(name),
                    visible()
                )))
            }
            Some(name) => self.sellers.get(name).map(Some).ok_or_else(|| {
                ProxyError::BadRequest(format!(
                    "no seller is called `{}` ({})",
                    printable(name),
                    visible()
                ))
            }),
            None => match &self.default {
                Some(d) if limit.is_some_and(|l| !l.iter().any(|n| **n == *d.name)) => {
                    Err(ProxyError::SellerNotAllowed(format!(
                        "the default seller; name one with {SELLER_HEADER} or a /_seller/NAME/ \
                         prefix ({})",
                        visible()
                    )))
                }
                Some(d) => Ok(Some(d)),
                None if !needed => Ok(None),
                None if self.sellers.is_empty() => Err(Self::no_refresh_token().into()),
                None => Err(ProxyError::BadRequest(format!(
                    "the request names no seller and none is the default; name one with \
                     {SELLER_HEADER} or a /_seller/NAME/ prefix ({})",
                    visible()
                ))),
            },
        }
    }

    fn seller_names(&self) -> String {
        let mut names: Vec<&str> = self.sellers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }

    /// Exchanges a website-authorization code for a seller's refresh token.
    pub async fn exchange_code(
        &self,
        code: &crate::secret::Secret,
        redirect_uri: &str,
    ) -> Result<crate::secret::Secret, TokenError> {
        self.app.lwa.exchange_code(code, redirect_uri).await
    }

    /// Every seller, sorted by name.
    pub fn sellers(&self) -> Vec<&Arc<Seller>> {
        let mut all: Vec<&Arc<Seller>> = self.sellers.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The default seller, if any.
    pub fn default_seller(&self) -> Option<&Arc<Seller>> {
        self.default.as_ref()
    }

    fn no_refresh_token() -> TokenError {
        TokenError::NotConfigured(
            "no refresh token is configured, so only grantless operations can be served; \
             set SPAPI_REFRESH_TOKEN or credentials.refresh_token, or add [sellers.NAME]"
                .into(),
        )
    }

    /// The token `plan` calls for: a grantless one from the application, anything else from
    /// `seller`. `restricted` is the `x-spapi-restricted` header, if any.
    pub async fn token(
        &self,
        seller: Option<&SellerAuth>,
        plan: &TokenPlan,
        restricted: Option<bool>,
    ) -> Result<Chosen, ProxyError> {
        match (plan, seller) {
            (TokenPlan::Grantless { scope }, _) => Ok(Chosen {
                token: self.app.grantless.get(scope).await?,
                source: TokenSource::Grantless(scope.clone()),
                pii: None,
            }),
            (_, Some(seller)) => seller.token(plan, restricted).await,
            (_, None) => Err(Self::no_refresh_token().into()),
        }
    }

    /// The seller's token `plan` calls for, if it is cached and nothing stands in the way (see
    /// [`SellerAuth::cached`]); `None`: ask [`Auth::token`].
    pub fn cached(&self, seller: Option<&SellerAuth>, plan: &TokenPlan) -> Option<Chosen> {
        match (plan, seller) {
            (TokenPlan::Grantless { .. }, _) | (_, None) => None,
            (_, Some(seller)) => seller.cached(plan),
        }
    }

    /// Amazon rejected `chosen`: forget it so the next request gets a new one.
    pub fn reject(&self, seller: Option<&SellerAuth>, chosen: &Chosen) {
        match (&chosen.source, seller) {
            (TokenSource::Grantless(scope), _) => {
                self.app.grantless.invalidate(scope, &chosen.token);
            }
            (_, Some(seller)) => seller.reject(chosen),
            (_, None) => {}
        }
    }

    /// Each grantless scope's cached token timing.
    pub fn grantless_timings(&self) -> Vec<(String, Option<cache::Timing>)> {
        self.app.grantless.timings()
    }

    /// Which configured client secret LWA accepts (never its value).
    pub fn secret_in_use(&self) -> &'static str {
        self.app.lwa.secret_in_use()
    }

    /// Whether a token can be had now, for `/_proxy/ready`: for `seller` in its region; with
    /// no sellers configured, a grantless token.
    pub async fn ready(&self, seller: Option<&Seller>) -> Result<(), TokenError> {
        match seller {
            Some(s) => s.region(s.config.region).ready().await,
            None => self.app.grantless.get(READY_SCOPE).await.map(|_| ()),
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
        /// What the RDT is asked for (shared: a default plan is cached per operation).
        resource: Arc<RdtResource>,
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

/// Whether `op`'s plan names the request's own path (an RDT for one specific resource, or a
/// report document), so that it cannot be decided once for every request.
pub fn plan_depends_on_path(op: &Operation) -> bool {
    match &op.auth {
        AuthKind::RdtConditional => true,
        AuthKind::Rdt(spec) => !spec.generic,
        AuthKind::Lwa | AuthKind::Grantless { .. } => false,
    }
}

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
                resource: Arc::new(RdtResource::new(
                    op.method.to_string(),
                    if spec.generic {
                        op.template.clone()
                    } else {
                        path.to_string()
                    },
                    elements,
                )),
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
            resource: Arc::new(RdtResource::new(
                "GET".into(),
                path.into(),
                els.iter().map(|s| s.to_string()).collect(),
            )),
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
