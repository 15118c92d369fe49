//! Amazon's side of the website authorization workflow: the consent page a seller confirms on
//! Seller Central, and the authorization codes LWA exchanges for refresh tokens.
//!
//! Sources: "Website Authorization Workflow" (developer-docs.amazon.com/sp-api/docs/
//! website-authorization-workflow): the consent URI `/apps/authorize/consent` with
//! `application_id`, `state`, optional `redirect_uri` and `version=beta` for a draft app;
//! Amazon redirects to the redirect URI with `state`, `selling_partner_id` and
//! `spapi_oauth_code`; the code is exchanged with `grant_type=authorization_code` and expires
//! after five minutes (selling-partner-api-models#4112, Amazon's reply).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{lock, pseudo_random, State};
use crate::body::{full, ProxyBody};

/// The simulated application's id (Solution Provider Portal's `amzn1.sp.solution...` form).
pub const SIM_APPLICATION_ID: &str = "amzn1.sp.solution.0a1b2c3d-sim0-4e5f-8a9b-0c1d2e3f4a5b";
/// The merchant id the consent page authorizes.
pub const SIM_SELLING_PARTNER_ID: &str = "A3SIMONBOARDED";
/// Where the consent page is.
pub const CONSENT_PATH: &str = "/apps/authorize/consent";
/// Where its Confirm button goes.
pub const CONFIRM_PATH: &str = "/apps/authorize/confirm";

/// An authorization code handed out and not yet exchanged.
#[derive(Debug, Clone)]
pub(super) struct Code {
    issued: Instant,
    redirect_uri: String,
}

fn html(status: u16, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The consent page: the application's name and a Confirm button. (The page itself is the
/// simulator's; Amazon's is a Seller Central page a seller signs in to.)
pub(super) fn consent(state: &State, req: &Request<Incoming>) -> Response<ProxyBody> {
    let q = query(req);
    let redirect = q
        .get("redirect_uri")
        .cloned()
        .or_else(|| lock(&state.settings).redirect_uri.clone());
    let (Some(app), Some(st), Some(redirect)) = (q.get("application_id"), q.get("state"), redirect)
    else {
        return html(
            400,
            "<p>Missing application_id, state or redirect_uri.</p>".into(),
        );
    };
    if app != SIM_APPLICATION_ID {
        return html(404, "<p>This application was not found.</p>".into());
    }
    let confirm = format!(
        "{CONFIRM_PATH}?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("state", st)
            .append_pair("redirect_uri", &redirect)
            .finish()
    );
    html(
        200,
        format!(
            "<!doctype html><html><head><title>Authorize application</title></head><body>\
             <h1>Authorize the simulator's application</h1>\
             <p>It will act for {SIM_SELLING_PARTNER_ID}.</p>\
             <a id=\"confirm\" href=\"{}\">Confirm</a></body></html>",
            esc(&confirm)
        ),
    )
}

/// Confirm: a new code, and the redirect back to the application.
pub(super) fn confirm(state: &State, req: &Request<Incoming>) -> Response<ProxyBody> {
    let q = query(req);
    let (Some(st), Some(redirect)) = (q.get("state"), q.get("redirect_uri")) else {
        return html(400, "<p>Missing state or redirect_uri.</p>".into());
    };
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let code = format!("ANsim{n}{:x}", pseudo_random(n));
    lock(&state.oauth_codes).insert(
        code.clone(),
        Code {
            issued: Instant::now(),
            redirect_uri: redirect.clone(),
        },
    );
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!(
        "{redirect}{sep}{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("state", st)
            .append_pair("selling_partner_id", SIM_SELLING_PARTNER_ID)
            .append_pair("spapi_oauth_code", &code)
            .finish()
    );
    let mut resp = html(302, String::new());
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

/// LWA's `authorization_code` grant: the code is taken (single use) and must be younger than
/// its lifetime and come with the redirect URI it was issued for.
pub(super) fn take_code(state: &State, code: &str, redirect_uri: &str) -> bool {
    let lifetime = lock(&state.settings).oauth_code_lifetime;
    match lock(&state.oauth_codes).remove(code) {
        Some(c) => c.issued.elapsed() < lifetime && c.redirect_uri == redirect_uri,
        None => false,
    }
}
