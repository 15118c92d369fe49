//! `POST /_proxy/reload`: read the config again and apply it, or say why not.

use http::{Response, StatusCode};

use super::json_response;
use crate::body::ProxyBody;
use crate::config::InboundKey;
use crate::error::ProxyError;
use crate::proxy::Proxy;

pub(super) fn answer(
    proxy: &Proxy,
    key: Option<&InboundKey>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // A key limited to some sellers may act for them, not change the proxy.
    if key.is_some_and(|k| k.sellers.is_some()) {
        return Err(ProxyError::SellerNotAllowed(
            "(reload needs a key that is not limited to sellers)".into(),
        ));
    }
    match proxy.reload() {
        Ok(summary) => Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"status": "reloaded", "summary": summary}),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "reload refused; the proxy keeps the config it had");
            Err(ProxyError::BadRequest(format!(
                "the config was not reloaded, and the proxy keeps running on the one \
                     it had: {e}"
            )))
        }
    }
}
