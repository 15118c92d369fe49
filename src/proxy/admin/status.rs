//! `GET /_proxy/status`: what the proxy has learnt, as JSON (the status page and the `status`
//! command show it).

use http::{Response, StatusCode};

use super::{json_response, Viewer};
use crate::auth;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::limiter::Limiter;
use crate::metrics;
use crate::proxy::{no_seller, State};

pub(super) fn answer(
    state: &State,
    limiter: &Limiter,
    shared: serde_json::Value,
    viewer: Viewer<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    Ok(json_response(
        StatusCode::OK,
        status(state, limiter, shared, viewer),
    ))
}

/// `/_proxy/status`: policies, which client secret works, each seller's state and token
/// timing, and every bucket with its recent 429s; never a secret's value. The status page and
/// `spapi-proxy status` show this.
pub(super) fn status(
    state: &State,
    limiter: &Limiter,
    shared: serde_json::Value,
    viewer: Viewer<'_>,
) -> serde_json::Value {
    let auth = &state.auth;
    let config = &state.config;
    let timing = |t: Option<auth::cache::Timing>| {
        t.map(|t| {
            serde_json::json!({
                "age_secs": t.age.as_secs(),
                "refresh_in_secs": t.refresh_in.as_secs(),
            })
        })
    };
    let default = auth
        .default_seller()
        .filter(|s| viewer.sees(Some(&s.name)))
        .map(|s| s.region(s.config.region));
    let sellers: serde_json::Map<String, serde_json::Value> = auth
        .sellers()
        .iter()
        .filter(|s| viewer.sees(Some(&s.name)))
        .map(|s| {
            let regions: serde_json::Map<String, serde_json::Value> = s
                .used_regions()
                .map(|a| {
                    (
                        a.key.region.name().to_string(),
                        serde_json::json!({
                            "healthy": a.healthy(),
                            "token": timing(a.token_timing()),
                            "rejected_by_amazon": a.fresh_rejection(),
                            "refused_data_elements": a.pii_roles(),
                        }),
                    )
                })
                .collect();
            (
                s.name.to_string(),
                serde_json::json!({
                    "region": s.config.region.name(),
                    "selling_partner_id": s.config.selling_partner_id,
                    // Sellers added by onboarding (kept in sellers_file): when, and that they
                    // can be revoked here.
                    "authorized_at": s.config.authorized_at,
                    "stored": s.config.authorized_at.is_some(),
                    "default": config.default_seller.as_deref() == Some(&*s.name),
                    "healthy": s.used_regions().all(|a| a.healthy()),
                    "regions": regions,
                }),
            )
        })
        .collect();
    // Application-wide: only for an unrestricted key.
    let grantless: Vec<serde_json::Value> = auth
        .grantless_timings()
        .into_iter()
        .filter(|_| viewer.unrestricted())
        .map(|(scope, t)| serde_json::json!({"scope": scope, "token": timing(t)}))
        .collect();
    let m = metrics::metrics();
    let count =
        |family: &prometheus_client::metrics::family::Family<
            metrics::OperationLabels,
            prometheus_client::metrics::counter::Counter,
        >,
         labels: &metrics::OperationLabels| { family.get(labels).map_or(0, |c| c.get()) };
    let buckets: Vec<serde_json::Value> = limiter
        .views()
        .into_iter()
        .filter(|v| viewer.sees(v.key.seller.as_deref()))
        .map(|v| {
            let labels = metrics::OperationLabels {
                seller: v.key.seller.clone().unwrap_or_else(no_seller),
                api: v.operation_api,
                operation: v.operation_id,
            };
            serde_json::json!({
                "seller": v.key.seller.as_deref(),
                "region": v.key.region.name(),
                "operation": v.operation,
                "rate": v.rate,
                "rate_source": v.source.name(),
                "burst": v.burst,
                "tokens_available": (v.tokens * 100.0).floor() / 100.0,
                "waiting": v.waiting,
                "local_429": count(&m.local_throttled, &labels),
                "amazon_429": count(&m.amazon_throttled, &labels),
                "local_429_last_secs_ago": v.last_local_429.map(|d| d.as_secs()),
                "amazon_429_last_secs_ago": v.last_amazon_429.map(|d| d.as_secs()),
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "rate_limit": limiter.enabled(),
        "shared_state": shared,
        "restricted_data": {
            "default": config.restricted_data.name(),
            "retry_secs": config.restricted_data_retry.as_secs(),
            "refused_data_elements": default.map_or(serde_json::json!({}), |d| d.pii_roles()),
        },
        "seller_token": {
            "rejected_by_amazon": default.and_then(|d| d.fresh_rejection()),
        },
        "client_secret": viewer.unrestricted().then(|| auth.secret_in_use()),
        "sellers": sellers,
        "grantless": grantless,
        "buckets": buckets,
    })
}
