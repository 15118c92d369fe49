//! `GET /_proxy/quota`: the rate-limit buckets in use, and each seller's health.

use http::{Response, StatusCode};

use super::{json_response, Viewer};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};

pub(super) fn answer(
    proxy: &Proxy,
    state: &State,
    viewer: Viewer<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let auth = &state.auth;
    let mut quota = proxy.limiter.snapshot();
    if let Some(rows) = quota["buckets"].as_array_mut() {
        rows.retain(|b| viewer.sees(b["seller"].as_str()));
    }
    quota["sellers"] = auth
        .sellers()
        .iter()
        .filter(|s| viewer.sees(Some(&s.name)))
        .map(|s| {
            serde_json::json!({
                "seller": &*s.name,
                "region": s.config.region.name(),
                "healthy": s.used_regions().all(|a| a.healthy()),
            })
        })
        .collect();
    quota["shared_state"] = proxy.shared_view();
    Ok(json_response(StatusCode::OK, quota))
}
