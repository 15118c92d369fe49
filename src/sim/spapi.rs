//! The simulated SP-API: the checks Amazon makes, and a handful of operations with realistic bodies.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::buckets::{admit, current_rate};
use super::documents;
use super::fixtures::{json_response, AmazonAnswer};
use super::{lock, pattern_byte, pseudo_random, tokens, Recorded, State, TokenKind, MAX_RECORDED};
use crate::body::ProxyBody;
use crate::operations::{Catalog, Operation};

/// `YYYYMMDDTHHMMSSZ`.
fn valid_amz_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// Checks the headers SP-API checks; returns what the token is and whose, or Amazon's refusal.
fn check_request(
    state: &State,
    headers: &HeaderMap,
) -> Result<(TokenKind, Option<String>), AmazonAnswer> {
    let wording = lock(&state.settings).token_wording;
    let rejected = |answer: AmazonAnswer| {
        state.token_rejections.fetch_add(1, Ordering::SeqCst);
        Err(answer)
    };
    let tokens: Vec<&HeaderValue> = headers.get_all("x-amz-access-token").iter().collect();
    let token = match tokens.as_slice() {
        [] => return rejected(AmazonAnswer::MissingAccessToken),
        [one] => one.to_str().unwrap_or(""),
        // Two tokens: which one SP-API reads is not documented; either way it is not one token.
        _ => return rejected(AmazonAnswer::RevokedAccessToken(wording)),
    };
    let kind = match lock(&state.tokens).get(token) {
        None => return rejected(AmazonAnswer::RevokedAccessToken(wording)),
        Some(t) if Instant::now() >= t.expires_at => {
            return rejected(AmazonAnswer::ExpiredAccessToken(wording))
        }
        Some(t) => (t.kind.clone(), t.seller.clone()),
    };
    // Whether SP-API still checks these since SigV4 went away is not documented; the simulator
    // checks them so that the tests see the proxy send them, and answers with the models' 400.
    let date_ok = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .is_some_and(valid_amz_date);
    if !date_ok || headers.get_all(http::header::USER_AGENT).iter().count() != 1 {
        return Err(AmazonAnswer::InvalidInput);
    }
    Ok(kind)
}

/// Whether the application lacks the role for `op`.
fn role_denied(state: &State, op: Option<&Operation>) -> bool {
    let Some(op) = op else { return false };
    let s = lock(&state.settings);
    s.denied_operations.contains(&op.id) || s.denied_operations.contains(&op.qualified())
}

/// Answers one SP-API request, records it, and adds the headers Amazon adds.
pub(super) async fn answer(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (fault, latency) = {
        let mut s = lock(&state.settings);
        let fault = match &mut s.upstream_fault {
            Some((answer, left)) if *left > 0 => {
                *left -= 1;
                Some(answer.clone())
            }
            _ => None,
        };
        (fault, s.upstream_latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let op = if req.uri().path().starts_with("/_sim/") {
        None
    } else {
        Catalog::builtin().find(req.method(), req.uri().path())
    };
    let checked = check_request(state, req.headers());
    let seller = checked.as_ref().ok().and_then(|(_, s)| s.clone());
    let mut resp = match fault {
        Some(answer) => answer.response(),
        None => match checked {
            Err(answer) => answer.response(),
            Ok(_) if role_denied(state, op) => AmazonAnswer::AccessDenied.response(),
            Ok(_) if !admit(state, op, seller.as_deref()) => {
                state.throttled.fetch_add(1, Ordering::SeqCst);
                AmazonAnswer::QuotaExceeded.response()
            }
            Ok((kind, _)) => route(state, req, &kind, seller.as_deref()).await,
        },
    };
    // "Usage Plans and Rate Limits" (docs-repo @ac9be945): the rate header comes with 20x, 400
    // and 404 answers only; the models mark it "no longer returned" on every other status.
    let status = resp.status().as_u16();
    if (200..300).contains(&status) || status == 400 || status == 404 {
        if let Some(rate) = current_rate(state, op, seller.as_deref()) {
            if let Ok(v) = HeaderValue::from_str(&format!("{rate}")) {
                resp.headers_mut().insert("x-amzn-RateLimit-Limit", v);
            }
        }
    }
    // Every response of every operation declares x-amzn-RequestId (the models).
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    resp.headers_mut().insert(
        "x-amzn-RequestId",
        HeaderValue::from_str(&format!("sim-{n:08x}-{:04x}", pseudo_random(n) & 0xffff))
            .expect("hex"),
    );
    let mut requests = lock(&state.requests);
    if requests.len() >= MAX_RECORDED {
        // A long demo must not grow without end; tests stay far below this.
        requests.drain(..MAX_RECORDED / 2);
    }
    requests.push(Recorded {
        method,
        path_and_query,
        headers,
        status: resp.status().as_u16(),
        at: arrived,
        operation: op.map(Operation::qualified),
        seller,
    });
    resp
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn denied() -> Response<ProxyBody> {
    AmazonAnswer::AccessDenied.response()
}

/// What a restricted operation needs, as Amazon enforces it.
enum Need {
    /// Any seller token (LWA or a covering RDT); PII only with an RDT that grants it.
    SellerToken,
    /// An RDT covering the request; the LWA token is refused.
    Rdt,
    /// An RDT naming exactly this path (restricted report documents).
    RdtSpecific,
    /// A grantless token with this scope.
    Scope(&'static str),
}

/// Checks the token against what the operation needs: the granted dataElements, or `None`
/// when Amazon would deny access.
/// `generic`: whether an RDT naming a `{param}` template covers the paths it stands for.
fn authorize(
    kind: &TokenKind,
    need: Need,
    method: &Method,
    path: &str,
    generic: bool,
) -> Option<Vec<String>> {
    let covering = |exact: bool| match kind {
        TokenKind::Rdt { resources } => resources
            .iter()
            .find(|r| {
                if exact {
                    r.method == method.as_str() && r.path == path
                } else {
                    r.covers(method, path, generic)
                }
            })
            .map(|r| r.data_elements.clone()),
        _ => None,
    };
    match (need, kind) {
        (Need::Scope(scope), TokenKind::Grantless { scope: granted })
            if granted.split(' ').any(|s| s == scope) =>
        {
            Some(Vec::new())
        }
        (Need::Scope(_), _) => None,
        (_, TokenKind::Grantless { .. }) => None,
        (Need::SellerToken, TokenKind::Seller) => Some(Vec::new()),
        (Need::SellerToken, _) => covering(false),
        (Need::Rdt, _) => covering(false),
        (Need::RdtSpecific, _) => covering(true),
    }
}

/// Reports whose id starts with 9 are of a restricted type.
async fn route(
    state: &State,
    req: Request<Incoming>,
    kind: &TokenKind,
    seller: Option<&str>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    // Where this simulator is reached, for the document URLs it hands out.
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let generic = lock(&state.settings).generic_paths;
    macro_rules! authorize {
        ($need:expr) => {
            match authorize(kind, $need, &method, &path, generic) {
                Some(elements) => elements,
                None => return denied(),
            }
        };
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["tokens", "2021-03-01", "restrictedDataToken"]) => {
            if *kind != TokenKind::Seller {
                return denied();
            }
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            tokens::mint(state, body.ok().as_deref(), seller)
        }
        (&Method::GET, ["sellers", "v1", "marketplaceParticipations"]) => {
            authorize!(Need::SellerToken);
            json_response(200, marketplace_participations())
        }
        (&Method::GET, ["orders", "v0", "orders"]) => {
            let elements = authorize!(Need::SellerToken);
            if query_param(&query, "MarketplaceIds").is_none() {
                return AmazonAnswer::InvalidInput.response();
            }
            let orders: Vec<Value> = ORDER_IDS.iter().map(|id| order(id, &elements)).collect();
            json_response(
                200,
                json!({"payload": {"Orders": orders, "CreatedBefore": "2026-11-23T12:00:00Z"}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id]) => {
            let elements = authorize!(Need::SellerToken);
            json_response(200, json!({"payload": order(id, &elements)}))
        }
        (&Method::GET, ["orders", "v0", "orders", id, "orderItems"]) => {
            let elements = authorize!(Need::SellerToken);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "OrderItems": [order_item(&elements)]}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id, "address"]) => {
            authorize!(Need::Rdt);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "ShippingAddress": shipping_address()}}),
            )
        }
        (&Method::GET, ["orders", "v0", "orders", id, "buyerInfo"]) => {
            authorize!(Need::Rdt);
            json_response(200, json!({"payload": buyer_info(id)}))
        }
        (&Method::GET, ["orders", "v0", "orders", id, "orderItems", "buyerInfo"]) => {
            authorize!(Need::Rdt);
            json_response(
                200,
                json!({"payload": {"AmazonOrderId": id, "OrderItems": [{"OrderItemId": "68828574383266", "GiftMessageText": "Happy birthday, Sam!", "GiftWrapLevel": "Classic"}]}}),
            )
        }
        // Orders API v2026-01-01: no RDT; PII follows the application's roles ("Access Orders
        // PII"). The simulator answers without PII, as for an application without PII roles.
        (&Method::GET, ["orders", "2026-01-01", "orders"]) => {
            authorize!(Need::SellerToken);
            let orders: Vec<Value> = ORDER_IDS.iter().map(|id| order(id, &[])).collect();
            json_response(200, json!({"orders": orders}))
        }
        (&Method::GET, ["orders", "2026-01-01", "orders", id]) => {
            authorize!(Need::SellerToken);
            json_response(200, json!({"order": order(id, &[])}))
        }
        (&Method::GET, ["notifications", "v1", "destinations"]) => {
            authorize!(Need::Scope("sellingpartnerapi::notifications"));
            json_response(
                200,
                json!({"payload": [{
                    "name": "orders-queue",
                    "destinationId": "3acafc7e-121b-1329-8ae8-000000000000",
                    "resource": {"sqs": {"arn": "arn:aws:sqs:us-east-1:000000000000:orders-queue"}}
                }]}),
            )
        }
        (&Method::GET, ["catalog", "2022-04-01", "items", asin]) => {
            authorize!(Need::SellerToken);
            json_response(200, catalog_item(asin))
        }
        (&Method::POST, ["reports", "2021-06-30", "reports"]) => {
            authorize!(Need::SellerToken);
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let spec: Option<Value> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
            match spec.as_ref().and_then(|v| v["reportType"].as_str()) {
                Some(_) => json_response(202, json!({"reportId": "50001"})),
                None => AmazonAnswer::InvalidInput.response(),
            }
        }
        (&Method::GET, ["reports", "2021-06-30", "reports"]) => {
            authorize!(Need::SellerToken);
            let d = &state.documents;
            json_response(
                200,
                json!({"reports": [d.report("50001"), d.report("90001")]}),
            )
        }
        (&Method::GET, ["reports", "2021-06-30", "reports", id]) => {
            authorize!(Need::SellerToken);
            json_response(200, state.documents.report(id))
        }
        (&Method::GET, ["reports", "2021-06-30", "documents", doc]) => {
            let report_id = doc.rsplit('.').next().unwrap_or("");
            let restricted = documents::report_type(report_id) != "GET_MERCHANT_LISTINGS_ALL_DATA";
            if restricted {
                authorize!(Need::RdtSpecific);
            } else {
                authorize!(Need::SellerToken);
            }
            match state.documents.report_document(doc, &host) {
                Some(answer) => json_response(200, answer),
                None => AmazonAnswer::NotFound.response(),
            }
        }
        (&Method::POST, ["feeds", "2021-06-30", "documents"]) => {
            authorize!(Need::SellerToken);
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            state
                .documents
                .create_feed_document(&body.unwrap_or_default(), &host)
        }
        (&Method::POST, ["feeds", "2021-06-30", "feeds"]) => {
            authorize!(Need::SellerToken);
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            state.documents.create_feed(&body.unwrap_or_default())
        }
        (&Method::GET, ["feeds", "2021-06-30", "feeds", id]) => {
            authorize!(Need::SellerToken);
            match state.documents.feed(id) {
                Some(feed) => json_response(200, feed),
                None => AmazonAnswer::NotFound.response(),
            }
        }
        (&Method::GET, ["feeds", "2021-06-30", "documents", id]) => {
            authorize!(Need::SellerToken);
            match state.documents.feed_document(id, &host) {
                Some(doc) => json_response(200, doc),
                None => AmazonAnswer::NotFound.response(),
            }
        }
        (&Method::GET, ["_sim", "bytes"]) => {
            let size: u64 = query_param(&query, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pattern_body(size)
        }
        (&Method::GET, ["_sim", "redirect"]) => {
            // A test endpoint, not an SP-API answer: it checks that the proxy follows no redirect.
            let mut resp = json_response(302, json!({}));
            resp.headers_mut().insert(
                http::header::LOCATION,
                HeaderValue::from_static("/sellers/v1/marketplaceParticipations"),
            );
            resp
        }
        (&Method::POST | &Method::PUT, ["_sim", "sha256"]) => {
            let Some((sha256, total)) = super::hash_body(req.into_body()).await else {
                return AmazonAnswer::InvalidInput.response();
            };
            json_response(200, json!({"sha256": sha256, "bytes": total}))
        }
        _ => {
            authorize!(Need::SellerToken);
            AmazonAnswer::NotFound.response()
        }
    }
}

fn shipping_address() -> Value {
    json!({
        "Name": "Sam Rivera",
        "AddressLine1": "1200 Pine St Apt 4",
        "City": "SEATTLE",
        "StateOrRegion": "WA",
        "PostalCode": "98101",
        "CountryCode": "US",
        "Phone": "+1 206-555-0100"
    })
}

fn buyer_info(id: &str) -> Value {
    json!({
        "AmazonOrderId": id,
        "BuyerEmail": "sam.rivera@marketplace.amazon.com",
        "BuyerName": "Sam Rivera",
        "PurchaseOrderNumber": "PO-7781"
    })
}

fn pattern_body(size: u64) -> Response<ProxyBody> {
    const CHUNK: u64 = 64 * 1024;
    let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(size);
        let data: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok::<_, crate::body::BoxError>(Frame::data(Bytes::from(data)))
    }));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

const ORDER_IDS: [&str; 3] = [
    "902-3159896-1390916",
    "113-7645321-0042219",
    "701-2299001-8872305",
];

/// An order; PII only for the dataElements an RDT granted.
fn order(id: &str, elements: &[String]) -> Value {
    let mut o = json!({
        "AmazonOrderId": id,
        "PurchaseDate": "2026-11-20T18:26:01Z",
        "LastUpdateDate": "2026-11-21T09:14:42Z",
        "OrderStatus": "Unshipped",
        "FulfillmentChannel": "MFN",
        "SalesChannel": "Amazon.com",
        "ShipServiceLevel": "Std US D2D Dom",
        "OrderTotal": {"CurrencyCode": "USD", "Amount": "27.98"},
        "NumberOfItemsShipped": 0,
        "NumberOfItemsUnshipped": 2,
        "PaymentMethod": "Other",
        "MarketplaceId": "ATVPDKIKX0DER",
        "ShipmentServiceLevelCategory": "Standard",
        "OrderType": "StandardOrder",
        "EarliestShipDate": "2026-11-21T08:00:00Z",
        "LatestShipDate": "2026-11-23T07:59:59Z",
        "IsBusinessOrder": false,
        "IsPrime": false,
        "IsPremiumOrder": false,
        "IsReplacementOrder": false,
        "ShippingAddress": {"StateOrRegion": "WA", "PostalCode": "98101", "City": "SEATTLE", "CountryCode": "US"}
    });
    if elements.iter().any(|e| e == "shippingAddress") {
        o["ShippingAddress"] = shipping_address();
    }
    if elements.iter().any(|e| e == "buyerInfo") {
        o["BuyerInfo"] =
            json!({"BuyerEmail": "sam.rivera@marketplace.amazon.com", "BuyerName": "Sam Rivera"});
    }
    o
}

fn order_item(elements: &[String]) -> Value {
    let mut item = json!({
        "ASIN": "B0C1EXAMPL",
        "SellerSKU": "MUG-BLUE-12OZ",
        "OrderItemId": "68828574383266",
        "Title": "Stoneware Coffee Mug, 12 oz, Blue",
        "QuantityOrdered": 2,
        "QuantityShipped": 0,
        "ItemPrice": {"CurrencyCode": "USD", "Amount": "27.98"},
        "ItemTax": {"CurrencyCode": "USD", "Amount": "2.66"},
        "IsGift": "false",
        "ConditionId": "New"
    });
    if elements.iter().any(|e| e == "buyerInfo") {
        item["BuyerInfo"] =
            json!({"GiftMessageText": "Happy birthday, Sam!", "GiftWrapLevel": "Classic"});
    }
    item
}

fn catalog_item(asin: &str) -> Value {
    json!({
        "asin": asin,
        "summaries": [{
            "marketplaceId": "ATVPDKIKX0DER",
            "brand": "Harbor & Kiln",
            "itemName": "Stoneware Coffee Mug, 12 oz, Blue",
            "manufacturer": "Harbor & Kiln",
            "itemClassification": "BASE_PRODUCT"
        }]
    })
}

fn marketplace_participations() -> Value {
    json!({"payload": [{
        "marketplace": {
            "id": "ATVPDKIKX0DER",
            "countryCode": "US",
            "name": "Amazon.com",
            "defaultCurrencyCode": "USD",
            "defaultLanguageCode": "en_US",
            "domainName": "www.amazon.com"
        },
        "participation": {"isParticipating": true, "hasSuspendedListings": false}
    }]})
}

#[cfg(test)]
mod tests {
    use super::valid_amz_date;

    #[test]
    fn amz_date_check_table() {
        let cases = [
            ("20261123T173800Z", true),
            ("20261123T1738Z", false),
            ("2026-11-23T17:38:00Z", false),
            ("20261123 173800Z", false),
            ("", false),
        ];
        for (v, ok) in cases {
            assert_eq!(valid_amz_date(v), ok, "{v}");
        }
    }
}
