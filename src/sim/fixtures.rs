//! Amazon's own answers, word for word, each next to the public source it was taken from.
//!
//! Everything the simulator says when something is wrong comes from here, so that the tests can
//! drive the proxy through each answer Amazon really gives (see [`super::Simulator::answer_next`]).

use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{full, ProxyBody};

/// How SP-API words its refusal of a bad access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenWording {
    /// Today's: 403 `Unauthorized`, "Access to requested resource is denied.", the reason in
    /// `details`.
    #[default]
    Current,
    /// The SigV4 era's (before 2023-10): "The security token included in the request is
    /// expired" with `x-amzn-ErrorType: ExpiredTokenException`.
    SigV4Era,
}

/// One of Amazon's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmazonAnswer {
    /// An LWA access token (or RDT) past its hour.
    ExpiredAccessToken(TokenWording),
    /// A token SP-API does not know: revoked, malformed, or never issued.
    RevokedAccessToken(TokenWording),
    /// No `x-amz-access-token` at all.
    MissingAccessToken,
    /// A missing role, or an RDT that does not cover the path: both look alike, and neither is
    /// fixed by a new token.
    AccessDenied,
    /// Throttled.
    QuotaExceeded,
    /// The Tokens API refusing dataElements the application has no role for; the elements as
    /// requested.
    DataElementsNotPermitted(Vec<String>),
    /// The Tokens API refusing a restricted resource the application may not use.
    ResourceNotPermitted,
    /// A malformed createRestrictedDataToken request (the Tokens model's sandbox wording).
    MintInvalidRequest,
    /// A request SP-API cannot parse (the models' sandbox wording).
    InvalidInput,
    /// No such resource (the models' wording).
    NotFound,
    /// 500 (the models' sandbox wording).
    InternalFailure,
    /// 503 (the models' sandbox wording).
    ServiceUnavailable,
    /// LWA: the refresh token was revoked or never granted.
    LwaInvalidGrant,
    /// LWA: the client id or secret is wrong or expired.
    LwaInvalidClient,
}

impl AmazonAnswer {
    /// The answer as SP-API (or LWA) sends it.
    pub fn response(&self) -> Response<ProxyBody> {
        use AmazonAnswer::*;
        use TokenWording::*;
        const DENIED: &str = "Access to requested resource is denied.";
        match self {
            // npm `amazon-sp-api` lib/SellingPartner.js refreshes on exactly this; also
            // jasara/php-amzn-selling-partner-api `shouldRefreshToken`, jlevers/selling-partner-api#891.
            ExpiredAccessToken(Current) => errors(
                403,
                "Unauthorized",
                DENIED,
                Some("The access token you provided has expired."),
            ),
            // ericcj/amz_sp_api#35, selling-partner-api-docs#3153: the SigV4-era wording, with
            // the error type header; no `details`.
            ExpiredAccessToken(SigV4Era) => with_error_type(
                errors(
                    403,
                    "Unauthorized",
                    "The security token included in the request is expired",
                    None,
                ),
                "ExpiredTokenException",
            ),
            // selling-partner-api-docs#2147, selling-partner-api-models#2333 (raw body).
            RevokedAccessToken(Current) => errors(
                403,
                "Unauthorized",
                DENIED,
                Some("The access token you provided is revoked, malformed or invalid."),
            ),
            // jlevers/selling-partner-api#282: "The security token included in the request is
            // invalid." with code InvalidInput.
            RevokedAccessToken(SigV4Era) => errors(
                403,
                "InvalidInput",
                "The security token included in the request is invalid.",
                None,
            ),
            // selling-partner-api-docs#76 (raw body; no `details`).
            MissingAccessToken => errors(403, "MissingAuthenticationToken", DENIED, None),
            // selling-partner-api-docs#2011, #3579, #830; selling-partner-api-models#826.
            AccessDenied => errors(403, "Unauthorized", DENIED, Some("")),
            // selling-partner-api-models#418, #1176 (body); selling-partner-api-docs#86 (the
            // error type header). No rate header on a 429: "Usage Plans and Rate Limits".
            QuotaExceeded => with_error_type(
                errors(
                    429,
                    "QuotaExceeded",
                    "You exceeded your quota for the requested resource.",
                    Some(""),
                ),
                "TooManyRequestsException",
            ),
            // abuzuhri/Amazon-SP-API-CSharp#155 (raw HTTP), selling-partner-api-docs#1201.
            DataElementsNotPermitted(elements) => errors(
                400,
                "InvalidInput",
                &format!(
                    "Application does not have access to one or more requested data elements: [{}]",
                    elements.join(", ")
                ),
                Some(""),
            ),
            // selling-partner-api-docs#702, #1396; jlevers/selling-partner-api#476 (Amazon's
            // grammar kept).
            ResourceNotPermitted => errors(
                400,
                "InvalidInput",
                "Application do not have access to some or all requested resource",
                Some(""),
            ),
            // tokens_2021-03-01.json x-amzn-api-sandbox answer for 400.
            MintInvalidRequest => errors(
                400,
                "InvalidRequest",
                "Request is missing or has invalid parameters",
                Some("Resource not provided."),
            ),
            // The models' x-amzn-api-sandbox answers for 400 (e.g. ordersV0.json).
            InvalidInput => errors(400, "InvalidInput", "Invalid Input", None),
            // The models' 404 example wording (e.g. sellerWallet_2024-03-01.json).
            NotFound => errors(
                404,
                "NotFound",
                "The requested resource is invalid or doesn't exist",
                None,
            ),
            // fbaInbound.json x-amzn-api-sandbox TEST_CASE_500.
            InternalFailure => errors(
                500,
                "InternalFailure",
                "We encountered an internal error. Please try again.",
                None,
            ),
            // fbaInbound.json x-amzn-api-sandbox TEST_CASE_503.
            ServiceUnavailable => errors(
                503,
                "ServiceUnavailable",
                "Service is temporarily unavailable. Please try again.",
                None,
            ),
            // selling-partner-api-docs#2379 (raw body).
            LwaInvalidGrant => lwa_error(
                400,
                "invalid_grant",
                "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.",
            ),
            // jlevers/selling-partner-api#602 (raw body).
            LwaInvalidClient => lwa_error(401, "invalid_client", "Client authentication failed"),
        }
    }
}

/// SP-API's error shape (`Error`/`ErrorList` in every model): `details` is optional.
fn errors(status: u16, code: &str, message: &str, details: Option<&str>) -> Response<ProxyBody> {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = details {
        error["details"] = json!(d);
    }
    json_response(status, json!({ "errors": [error] }))
}

/// LWA's error shape: `error` and `error_description` (Amazon's SDKs, `LWAClient.java`).
fn lwa_error(status: u16, error: &str, description: &str) -> Response<ProxyBody> {
    json_response(
        status,
        json!({"error_description": description, "error": error}),
    )
}

fn with_error_type(mut resp: Response<ProxyBody>, error_type: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
    resp
}

/// A JSON answer; every SP-API model `produces` `application/json`.
pub fn json_response(status: u16, value: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
