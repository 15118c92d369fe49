//! `GET /_proxy/ready[?seller=NAME]`: whether a token can be had.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{json_response, seller_param, Viewer};
use crate::auth;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};

impl Proxy {
    /// `shared_state` in `/_proxy/ready`, `/_proxy/status` and `/_proxy/quota`: `null` without
    /// Redis; else whether it answers, and what the buckets do meanwhile. Readiness does not
    /// depend on it: while Redis is away the proxy serves within its local share.
    pub(crate) fn shared_view(&self) -> serde_json::Value {
        match &self.shared {
            None => serde_json::Value::Null,
            Some(r) => {
                let up = r.up();
                serde_json::json!({
                    "url": r.shown(),
                    "up": up,
                    "replicas": r.replicas,
                    "limits": if up { "shared" } else { "local share (1/replicas) until Redis answers" },
                })
            }
        }
    }

    /// `/_proxy/ready[?seller=NAME]`: ready when a token can be had for that seller, or
    /// without one named, for at least one seller (grantless with no sellers configured). The
    /// answer lists every seller checked, so one revoked seller shows without taking the
    /// others out of service.
    pub(super) async fn ready(
        &self,
        state: &State,
        query: Option<&str>,
        viewer: Viewer<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let auth = &state.auth;
        let named = seller_param(query);
        let sellers: Vec<&Arc<auth::Seller>> = match &named {
            Some(name) => vec![auth
                .seller(Some(name), true, viewer.0)?
                .ok_or_else(|| ProxyError::BadRequest("the request names no seller".into()))?],
            None => auth
                .sellers()
                .into_iter()
                .filter(|s| viewer.sees(Some(&s.name)))
                .collect(),
        };
        if sellers.is_empty() {
            return match auth.ready(None).await {
                Ok(()) => Ok(json_response(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "sellers": {}, "shared_state": self.shared_view()}),
                )),
                Err(e) => Err(ProxyError::NotReady(format!(
                    "no access token could be obtained: {e}"
                ))),
            };
        }
        let mut report = serde_json::Map::new();
        let mut first_error = None;
        let mut any_ready = false;
        for s in &sellers {
            let result = auth.ready(Some(s)).await;
            any_ready |= result.is_ok();
            report.insert(
                s.name.to_string(),
                match &result {
                    Ok(()) => {
                        serde_json::json!({"status": "ready", "region": s.config.region.name()})
                    }
                    Err(e) => serde_json::json!({
                        "status": "not ready",
                        "region": s.config.region.name(),
                        "error": e.to_string(),
                    }),
                },
            );
            if let Err(e) = result {
                first_error.get_or_insert(format!("{}: {e}", s.name));
            }
        }
        if any_ready {
            return Ok(json_response(
                StatusCode::OK,
                serde_json::json!({"status": "ready", "sellers": report, "shared_state": self.shared_view()}),
            ));
        }
        Err(ProxyError::NotReady(format!(
            "no access token could be obtained: {}",
            first_error.unwrap_or_default()
        )))
    }
}
