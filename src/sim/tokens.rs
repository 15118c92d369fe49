//! The simulated Tokens API: createRestrictedDataToken.

use std::sync::atomic::Ordering;

use http::Response;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::fixtures::{json_response, AmazonAnswer};
use super::{lock, pseudo_random, IssuedToken, Resource, State, TokenKind};
use crate::body::ProxyBody;

/// The values of `RestrictedResource.dataElements` (tokens_2021-03-01.json).
const DATA_ELEMENTS: [&str; 3] = ["buyerInfo", "shippingAddress", "buyerTaxInformation"];

/// Validates `restrictedResources` and issues an RDT covering them, unless the application
/// lacks the roles they need.
/// `seller`: the refresh token behind the LWA token the mint was called with.
pub(super) fn mint(
    state: &State,
    body: Option<&[u8]>,
    seller: Option<&str>,
) -> Response<ProxyBody> {
    let (lifetime, denied_elements, deny_resources) = {
        let s = lock(&state.settings);
        (
            s.token_lifetime,
            s.denied_elements.clone(),
            s.deny_resources,
        )
    };
    let refused = || {
        state.refused_mints.fetch_add(1, Ordering::SeqCst);
    };
    let invalid = || {
        refused();
        AmazonAnswer::MintInvalidRequest.response()
    };
    let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
        return invalid();
    };
    let Some(list) = v["restrictedResources"].as_array() else {
        return invalid();
    };
    // The model: restrictedResources holds 1 to 50 entries.
    if list.is_empty() || list.len() > 50 {
        return invalid();
    }
    let mut resources = Vec::new();
    for r in list {
        let method = r["method"].as_str().unwrap_or("");
        let path = r["path"].as_str().unwrap_or("");
        if !matches!(method, "GET" | "PUT" | "POST" | "DELETE") || !path.starts_with('/') {
            return invalid();
        }
        let elements: Vec<String> = r["dataElements"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if elements
            .iter()
            .any(|e| !DATA_ELEMENTS.contains(&e.as_str()))
        {
            return invalid();
        }
        if elements.iter().any(|e| denied_elements.contains(e)) {
            refused();
            return AmazonAnswer::DataElementsNotPermitted(elements).response();
        }
        if deny_resources {
            refused();
            return AmazonAnswer::ResourceNotPermitted.response();
        }
        resources.push(Resource {
            method: method.to_string(),
            path: path.to_string(),
            data_elements: elements,
        });
    }
    lock(&state.mints).extend(resources.iter().cloned());
    lock(&state.target_applications).push(v["targetApplication"].as_str().map(String::from));
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("Atz.sprdt|sim-{n}-{:x}", pseudo_random(n));
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + lifetime,
            kind: TokenKind::Rdt { resources },
            seller: seller.map(String::from),
        },
    );
    // CreateRestrictedDataTokenResponse in tokens_2021-03-01.json: the token and its lifetime.
    json_response(
        200,
        json!({"restrictedDataToken": token, "expiresIn": lifetime.as_secs()}),
    )
}
