//! The simulated Login with Amazon token endpoint.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::time::Instant;

use super::fixtures::{json_response, AmazonAnswer};
use super::{lock, pseudo_random, IssuedToken, LwaFault, State, TokenKind};
use crate::body::ProxyBody;

/// LWA's error shape. The codes are the ones Amazon's SDKs know (`LWAExceptionErrorCode.java`);
/// for these, Amazon's description text was not found in public reports, and `error_description`
/// is optional (RFC 6749 §5.2), so none is sent.
fn lwa_error(status: u16, error: &str) -> Response<ProxyBody> {
    json_response(status, json!({ "error": error }))
}

/// Answers a token request: a refresh_token or client_credentials grant.
pub(super) async fn answer(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    state.lwa_calls.fetch_add(1, Ordering::SeqCst);
    let (fault, latency) = {
        let s = lock(&state.settings);
        (s.lwa_fault, s.lwa_latency)
    };
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(LwaFault::ServerError) => return lwa_error(500, "server_error"),
        Some(LwaFault::InvalidGrant) => return AmazonAnswer::LwaInvalidGrant.response(),
        Some(LwaFault::InvalidClient) => return AmazonAnswer::LwaInvalidClient.response(),
        None => {}
    }
    let Ok(body) = body else {
        return lwa_error(400, "invalid_request");
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let (lifetime, client_ok, refresh_ok) = {
        let s = lock(&state.settings);
        (
            s.token_lifetime,
            field("client_id") == s.client_id
                && s.client_secrets.iter().any(|c| c == field("client_secret")),
            s.refresh_tokens.contains(field("refresh_token")),
        )
    };
    if !client_ok {
        return AmazonAnswer::LwaInvalidClient.response();
    }
    if field("grant_type") == "authorization_code" {
        return authorization_code(state, field("code"), field("redirect_uri"), lifetime);
    }
    let kind = match field("grant_type") {
        "refresh_token" if form.contains_key("scope") => return lwa_error(400, "invalid_request"),
        "refresh_token" if refresh_ok => TokenKind::Seller,
        "refresh_token" => return AmazonAnswer::LwaInvalidGrant.response(),
        "client_credentials" if form.contains_key("refresh_token") => {
            return lwa_error(400, "invalid_request")
        }
        "client_credentials" if !field("scope").is_empty() => {
            lock(&state.client_credentials_scopes).push(field("scope").to_string());
            TokenKind::Grantless {
                scope: field("scope").to_string(),
            }
        }
        "client_credentials" => return lwa_error(400, "invalid_scope"),
        _ => return lwa_error(400, "invalid_request"),
    };
    let seller = matches!(kind, TokenKind::Seller).then(|| field("refresh_token").to_string());
    // The documented answer ("Connect to the SP-API"; developer guide, Step 1).
    token_answer(state, kind, seller, lifetime, field("refresh_token"))
}

/// Issues an access token (for `seller`'s refresh token, if any) and answers it, with
/// `refresh_token`, as LWA does.
fn token_answer(
    state: &State,
    kind: TokenKind,
    seller: Option<String>,
    lifetime: std::time::Duration,
    refresh_token: &str,
) -> Response<ProxyBody> {
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("Atza|sim-{n}-{:x}", pseudo_random(n));
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + lifetime,
            seller,
            kind,
        },
    );
    json_response(
        200,
        json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
            "refresh_token": refresh_token,
        }),
    )
}

/// The `authorization_code` grant: a refresh token for the seller who confirmed the consent
/// page, or LWA's refusal of the code (selling-partner-api-docs#149, #2527: the code expired,
/// was used, or came with another redirect URI).
fn authorization_code(
    state: &State,
    code: &str,
    redirect_uri: &str,
    lifetime: std::time::Duration,
) -> Response<ProxyBody> {
    if !super::oauth::take_code(state, code, redirect_uri) {
        return json_response(
            400,
            json!({
                "error_description": "The request has an invalid grant parameter : code",
                "error": "invalid_grant",
            }),
        );
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let refresh_token = format!("Atzr|sim-onboarded-{n}-{:x}", pseudo_random(n));
    lock(&state.settings)
        .refresh_tokens
        .insert(refresh_token.clone());
    // Step 4 of the website workflow: the access token and the refresh token.
    token_answer(
        state,
        TokenKind::Seller,
        Some(refresh_token.clone()),
        lifetime,
        &refresh_token,
    )
}
