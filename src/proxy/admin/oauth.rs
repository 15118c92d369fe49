//! Onboarding: `GET /_proxy/oauth/start`, `GET /_proxy/oauth/callback` and
//! `POST /_proxy/sellers/revoke`. The proxy runs Amazon's website authorization workflow: it
//! sends the operator's browser to the region's Seller (or Vendor) Central consent page with an
//! unguessable, single-use `state` bound to the seller's name, takes Amazon's redirect back,
//! exchanges the authorization code at LWA for the seller's refresh token, keeps it in
//! `sellers_file` (or, with `shared_state`, in Redis), and applies it at once.
//!
//! `start` and `revoke` need an unrestricted key (or no keys: a loopback-only proxy). The
//! callback is the one endpoint reachable without a key (and from Amazon's page, another
//! site): all it can do is finish an onboarding this proxy started, once, within ten minutes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

use super::{json_response, Viewer};
use crate::body::ProxyBody;
use crate::config::stored::{self, StoredSeller};
use crate::config::{Config, Region, SellerConfig};
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};
use crate::secret::Secret;

/// How long a `state` is good for.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Onboardings in progress at once, at most.
const MAX_PENDING: usize = 1000;

/// Onboardings started and not finished.
#[derive(Default)]
pub(crate) struct OAuthStates {
    /// By the state's random part.
    pending: Mutex<HashMap<String, Pending>>,
    /// One read-modify-write of the seller store at a time.
    writing: tokio::sync::Mutex<()>,
}

struct Pending {
    /// The whole state as handed out.
    state: String,
    seller: String,
    region: Region,
    issued: Instant,
}

impl OAuthStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The consent page's host: Seller Central or Vendor Central of the region ("Seller Central
/// URLs" and "Vendor Central URLs" in Amazon's SP-API docs), unless `oauth.authorize_url`
/// replaces it.
fn consent_base(config: &Config, region: Region, vendor: bool) -> String {
    if let Some(u) = &config.oauth.authorize_url {
        return u.as_str().trim_end_matches('/').to_string();
    }
    match (vendor, region) {
        (false, Region::Na) => "https://sellercentral.amazon.com",
        (false, Region::Eu) => "https://sellercentral-europe.amazon.com",
        (false, Region::Fe) => "https://sellercentral.amazon.co.jp",
        (true, Region::Na) => "https://vendorcentral.amazon.com",
        (true, Region::Eu) => "https://vendorcentral.amazon.co.uk",
        (true, Region::Fe) => "https://vendorcentral.amazon.co.jp",
    }
    .to_string()
}

/// What onboarding needs from the config, or which keys are missing.
fn settings(config: &Config) -> Result<(&str, &str), ProxyError> {
    let mut missing = Vec::new();
    let app = config.credentials.application_id.as_deref();
    if app.is_none() {
        missing.push("credentials.application_id");
    }
    let redirect = config.oauth.redirect_uri.as_ref().map(|u| u.as_str());
    if redirect.is_none() {
        missing.push("oauth.redirect_uri");
    }
    if !stored::available(config) {
        missing.push("sellers_file (or shared_state)");
    }
    match (app, redirect) {
        (Some(a), Some(r)) if missing.is_empty() => Ok((a, r)),
        _ => Err(ProxyError::NotConfigured(format!(
            "onboarding needs {}",
            missing.join(", ")
        ))),
    }
}

fn html(status: StatusCode, title: &str, text: &str) -> Response<ProxyBody> {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:40em}}</style></head>\
         <body><h1>{t}</h1><p>{}</p></body></html>",
        crate::status_page::esc(text),
        t = crate::status_page::esc(title)
    );
    let mut resp = super::html_response(status, body);
    if !status.is_success() {
        resp.headers_mut().insert(
            crate::error::PROXY_ERROR_HEADER,
            HeaderValue::from_static("oauth"),
        );
    }
    resp
}

/// A refused callback: a page saying why, and a WARN line without the code or any token.
fn refused(status: StatusCode, why: &str) -> Response<ProxyBody> {
    tracing::warn!(reason = why, "onboarding callback refused");
    html(status, "Authorization not completed", why)
}

impl Proxy {
    /// `GET /_proxy/oauth/start?seller=NAME&region=na|eu|fe[&vendor=true]`: a redirect to the
    /// consent page (or, asked with `Accept: application/json`, its URL as JSON).
    pub(super) fn oauth_start(
        &self,
        state: &State,
        query: Option<&str>,
        accept_json: bool,
        viewer: Viewer<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !viewer.unrestricted() {
            return Err(ProxyError::SellerNotAllowed(
                "onboarding, which adds a seller; it needs a key that is not limited to sellers"
                    .into(),
            ));
        }
        let q = parse_query(query);
        let seller = param(&q, "seller")
            .filter(|s| crate::config::valid_seller_name(s))
            .ok_or_else(|| {
                ProxyError::BadRequest(
                    "seller=NAME is required: 1 to 64 letters, digits, `-`, `_` or `.`".into(),
                )
            })?
            .to_string();
        let region = Region::parse("region", param(&q, "region").unwrap_or(""))
            .map_err(|_| ProxyError::BadRequest("region=na, eu or fe is required".into()))?;
        let vendor = match param(&q, "vendor") {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ProxyError::BadRequest("vendor is true or false".into())),
        };
        let config = &state.config;
        let (application_id, redirect_uri) = settings(config)?;

        let mut nonce = [0u8; 32];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ProxyError::Internal("no randomness for a state".into()))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let state_value = format!("{nonce}.{seller}");
        {
            let mut pending = self.oauth.lock();
            pending.retain(|_, p| p.issued.elapsed() < STATE_TTL);
            if pending.len() >= MAX_PENDING {
                return Err(ProxyError::RateLimited {
                    retry_after_secs: 60,
                    reason: format!("{MAX_PENDING} onboardings are in progress already"),
                });
            }
            pending.insert(
                nonce,
                Pending {
                    state: state_value.clone(),
                    seller: seller.clone(),
                    region,
                    issued: Instant::now(),
                },
            );
        }
        let mut consent = form_urlencoded::Serializer::new(String::new());
        consent
            .append_pair("application_id", application_id)
            .append_pair("state", &state_value)
            .append_pair("redirect_uri", redirect_uri);
        if config.oauth.draft {
            consent.append_pair("version", "beta");
        }
        let url = format!(
            "{}/apps/authorize/consent?{}",
            consent_base(config, region, vendor),
            consent.finish()
        );
        tracing::info!(seller = %seller, region = region.name(), vendor, "onboarding started");
        if accept_json {
            return Ok(json_response(
                StatusCode::OK,
                serde_json::json!({
                    "seller": seller,
                    "region": region.name(),
                    "url": url,
                    "expires_in_secs": STATE_TTL.as_secs(),
                }),
            ));
        }
        let mut resp = html(
            StatusCode::FOUND,
            "Authorize on Amazon",
            "Continue to Amazon to authorize the application.",
        );
        resp.headers_mut().insert(
            http::header::LOCATION,
            HeaderValue::from_str(&url).map_err(|e| ProxyError::Internal(e.to_string()))?,
        );
        Ok(resp)
    }

    /// `GET /_proxy/oauth/callback?state=..&selling_partner_id=..&spapi_oauth_code=..`.
    pub(super) async fn oauth_callback(
        &self,
        state: &State,
        query: Option<&str>,
    ) -> Response<ProxyBody> {
        let q = parse_query(query);
        let (Some(given), Some(code), Some(partner)) = (
            param(&q, "state"),
            param(&q, "spapi_oauth_code"),
            param(&q, "selling_partner_id"),
        ) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "The callback needs state, spapi_oauth_code and selling_partner_id, as Amazon sends them.",
            );
        };
        // The state: single use (taken out whatever follows), issued here, for this seller, and
        // not older than ten minutes; compared in constant time.
        let nonce = given.split_once('.').map_or(given, |(n, _)| n);
        let Some(pending) = self.oauth.lock().remove(nonce) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "This authorization was not started here, or was completed or refused already (a state works once). Start again from /_proxy/oauth/start.",
            );
        };
        if !crate::access::constant_time_eq(pending.state.as_bytes(), given.as_bytes()) {
            return refused(
                StatusCode::BAD_REQUEST,
                "The state does not match the seller this authorization was started for. Start again from /_proxy/oauth/start.",
            );
        }
        if pending.issued.elapsed() >= STATE_TTL {
            return refused(
                StatusCode::BAD_REQUEST,
                "This authorization was started more than ten minutes ago. Start again from /_proxy/oauth/start.",
            );
        }
        if partner.is_empty()
            || partner.len() > 64
            || !partner.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return refused(
                StatusCode::BAD_REQUEST,
                "The selling_partner_id is not a merchant id.",
            );
        }
        let (_, redirect_uri) = match settings(&state.config) {
            Ok(s) => s,
            Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let refresh_token = match state
            .auth
            .exchange_code(&Secret::new(code), redirect_uri)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                return refused(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "Login with Amazon did not exchange the authorization code ({e}). A code \
                         works once and for five minutes: start again from /_proxy/oauth/start."
                    ),
                )
            }
        };
        let seller = StoredSeller {
            name: pending.seller.clone(),
            refresh_token,
            region: pending.region,
            selling_partner_id: Some(partner.to_string()),
            authorized_at: {
                let mut t = String::new();
                let _ = crate::logging::write_timestamp(&mut t, std::time::SystemTime::now());
                t
            },
        };
        if let Err(e) = self.store_seller(Some(seller.clone()), &seller.name).await {
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The seller was authorized but could not be stored: {e}"),
            );
        }
        tracing::info!(seller = %seller.name, selling_partner_id = partner, region = seller.region.name(), "seller authorized through onboarding; it serves requests now");
        html(
            StatusCode::OK,
            "Seller authorized",
            &format!(
                "Seller {} ({partner}, {}) is authorized and serves requests now.",
                seller.name,
                seller.region.name()
            ),
        )
    }

    /// `POST /_proxy/sellers/revoke?seller=NAME`: deletes a seller onboarding stored.
    pub(super) async fn sellers_revoke(
        &self,
        state: &State,
        query: Option<&str>,
        from_page: bool,
        viewer: Viewer<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !viewer.unrestricted() {
            return Err(ProxyError::SellerNotAllowed(
                "revoking a seller; it needs a key that is not limited to sellers".into(),
            ));
        }
        let q = parse_query(query);
        let name = param(&q, "seller")
            .ok_or_else(|| ProxyError::BadRequest("seller=NAME is required".into()))?
            .to_string();
        if !stored::available(&state.config) {
            return Err(ProxyError::NotConfigured(
                "revoking needs sellers_file (or shared_state)".into(),
            ));
        }
        let stored =
            stored::load_for(&state.config).map_err(|e| ProxyError::Internal(e.to_string()))?;
        if !stored.iter().any(|s| s.name == name) {
            return Err(ProxyError::BadRequest(format!(
                "no seller `{}` was added by onboarding (sellers in proxy.toml are removed there)",
                crate::logging::capped(&name)
            )));
        }
        self.store_seller(None, &name)
            .await
            .map_err(ProxyError::Internal)?;
        tracing::info!(seller = %name, "stored seller revoked");
        if from_page {
            let mut resp = html(StatusCode::SEE_OTHER, "Revoked", "The seller was revoked.");
            resp.headers_mut()
                .insert(http::header::LOCATION, HeaderValue::from_static("/_proxy/"));
            return Ok(resp);
        }
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"revoked": name}),
        ))
    }

    /// Stores (or, with `None`, removes) the seller `name`, then applies the current config
    /// with it, so that it serves (or stops serving) at once.
    async fn store_seller(&self, seller: Option<StoredSeller>, name: &str) -> Result<(), String> {
        let _one = self.oauth.writing.lock().await;
        // From the latest config: a reload may have come since this request started.
        let latest = self.current_config();
        // The store calls block briefly (a file, or a short Redis connection).
        let (store, store_seller, store_name) =
            (Arc::clone(&latest), seller.clone(), name.to_string());
        tokio::task::spawn_blocking(move || match &store_seller {
            Some(s) => stored::put_for(&store, s),
            None => stored::remove_for(&store, &store_name),
        })
        .await
        .map_err(|e| e.to_string())??;
        let mut config = (*latest).clone();
        config.sellers.retain(|s| s.name != name);
        if let Some(s) = seller {
            config.sellers.push(SellerConfig {
                name: s.name,
                refresh_token: s.refresh_token,
                region: s.region,
                selling_partner_id: s.selling_partner_id,
                authorized_at: Some(s.authorized_at),
            });
            config.sellers.sort_by(|a, b| a.name.cmp(&b.name));
        } else if config.default_seller.as_deref() == Some(name) {
            config.default_seller = None;
        }
        self.apply(config).map(|_| ()).map_err(|e| e.to_string())
    }
}
