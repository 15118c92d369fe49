//! `POST /_proxy/tokens/refresh[?seller=NAME]`: fresh access tokens now.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{json_response, seller_param};
use crate::auth::{self, seller::SellerAuth};
use crate::body::ProxyBody;
use crate::config::InboundKey;
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};

impl Proxy {
    /// A key limited to sellers may act for them, not refresh every seller's tokens.
    pub(super) async fn tokens_refresh(
        &self,
        state: &State,
        query: Option<&str>,
        key: Option<&InboundKey>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if key.is_some_and(|k| k.sellers.is_some()) {
            return Err(ProxyError::SellerNotAllowed(
                "(a token refresh needs a key that is not limited to sellers)".into(),
            ));
        }
        self.refresh_tokens(state, query).await
    }

    /// `POST /_proxy/tokens/refresh[?seller=NAME]`: drops each seller's cached access tokens
    /// (every region in use) and fetches new ones now; says per seller how it went.
    async fn refresh_tokens(
        &self,
        state: &State,
        query: Option<&str>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let auth = &state.auth;
        let named = seller_param(query);
        let sellers: Vec<&Arc<auth::Seller>> = match &named {
            Some(name) => auth.seller(Some(name), true, None)?.into_iter().collect(),
            None => auth.sellers(),
        };
        let mut report = serde_json::Map::new();
        let mut failed = false;
        for s in sellers {
            // The seller's own region at least, and every other region it was used in.
            let home = s.region(s.config.region);
            let mut regions: Vec<&Arc<SellerAuth>> = vec![home];
            regions.extend(s.used_regions().filter(|a| a.key.region != s.config.region));
            for a in regions {
                let result = a.refresh().await;
                failed |= result.is_err();
                tracing::info!(seller = %a.key, ok = result.is_ok(), "access token refreshed on request");
                report.insert(
                    a.key.to_string(),
                    match result {
                        Ok(()) => serde_json::json!({"refreshed": true}),
                        Err(e) => serde_json::json!({"refreshed": false, "error": e.to_string()}),
                    },
                );
            }
        }
        // A report, not an error: each seller says how it went, and `ok` sums it up.
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"ok": !failed, "tokens": report}),
        ))
    }
}
