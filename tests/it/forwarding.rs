//! What reaches Amazon, and what comes back.

use std::time::{Duration, SystemTime};

use spapi_proxy::forward::amz_date;
use spapi_proxy::sim::AmazonAnswer;

use crate::support::{config_for, json, Harness};

#[tokio::test]
async fn signing_headers_are_set_once_with_the_right_values() {
    let h = Harness::start().await;
    let resp = h
        .client
        .get(h.url("/sellers/v1/marketplaceParticipations"))
        .header("x-amz-access-token", "client-supplied")
        .header("x-amz-date", "19990101T000000Z")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=x")
        .header("user-agent", "my-erp/4.2")
        .header("host", "localhost:8080")
        .header("x-spapi-anything", "ours")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    let recorded = h.sim.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    let tokens = r.header_values("x-amz-access-token");
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].starts_with("Atza|sim-"), "{tokens:?}");
    let dates = r.header_values("x-amz-date");
    assert_eq!(dates.len(), 1);
    let now = amz_date(SystemTime::now());
    assert_eq!(&dates[0][..9], &now[..9], "date is today, UTC");
    assert_eq!(
        r.header_values("user-agent"),
        [format!(
            "spapi-proxy/{} (Language=Rust; Client=my-erp/4.2)",
            env!("CARGO_PKG_VERSION")
        )]
    );
    assert_eq!(
        r.header_values("host"),
        [h.sim.url().trim_start_matches("http://")]
    );
    assert!(r.header_values("authorization").is_empty());
    assert!(r.header_values("x-spapi-anything").is_empty());
    assert_eq!(r.header_values("x-custom"), ["kept"]);
}

#[tokio::test]
async fn path_and_query_are_forwarded_byte_for_byte() {
    let h = Harness::start().await;
    let cases = [
        "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&MarketplaceIds=A2EUQ1WTGCTBG2",
        "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER%2CA2EUQ1WTGCTBG2&OrderStatuses=Unshipped,PartiallyShipped",
        "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail=a+b%40example.com&x=%20&empty=",
        "/orders/v0/orders?z=1&a=2&MarketplaceIds=ATVPDKIKX0DER&a=1",
        "/catalog/2022-04-01/items/B0%2FSLASH?marketplaceIds=ATVPDKIKX0DER",
        "/catalog/2022-04-01/items/B0.C-1+2?marketplaceIds=ATVPDKIKX0DER&includedData=summaries%2Cimages",
        "/orders/v0/orders/902-3159896-1390916/",
    ];
    for pq in cases {
        let resp = h.get(pq).await;
        assert!(resp.status().is_success(), "{pq}: {}", resp.status());
        let last = h.sim.requests().pop().unwrap();
        assert_eq!(last.path_and_query, pq);
    }
}

#[tokio::test]
async fn bodies_and_methods_are_forwarded() {
    let h = Harness::start().await;
    let body =
        r#"{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA","marketplaceIds":["ATVPDKIKX0DER"]}"#;
    let resp = h
        .client
        .post(h.url("/reports/2021-06-30/reports"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(json(resp).await["reportId"], "50001");
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.header_values("content-type"), ["application/json"]);
    assert_eq!(r.header_values("content-length"), [body.len().to_string()]);
}

#[tokio::test]
async fn upstream_answers_pass_through_untouched() {
    let h = Harness::start().await;
    h.sim.answer_next(AmazonAnswer::ServiceUnavailable, 1);
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    assert!(resp.headers().get("x-amzn-requestid").is_some());
    let body = json(resp).await;
    assert_eq!(body["errors"][0]["code"], "ServiceUnavailable");

    let resp = h.get("/orders/v0/orders").await;
    assert_eq!(resp.status(), 400, "SP-API's own validation error");
    assert_eq!(resp.headers()["x-amzn-ratelimit-limit"], "0.0167");
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());

    let resp = h.get("/_sim/redirect").await;
    assert_eq!(resp.status(), 302, "redirects are not followed");
    assert_eq!(
        resp.headers()["location"],
        "/sellers/v1/marketplaceParticipations"
    );
    let not_tokens = h
        .sim
        .requests()
        .iter()
        .filter(|r| !r.path_and_query.starts_with("/tokens/"))
        .count();
    assert_eq!(not_tokens, 3);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_proxy_error() {
    let sim = spapi_proxy::sim::Simulator::start().await.unwrap();
    let mut config = config_for(&sim, "");
    // A port nothing listens on: bind, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    config.endpoints[0] = format!("http://{addr}").parse().unwrap();
    let h = Harness::with(sim, config).await;
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-spapi-proxy-error"],
        "upstream_unreachable"
    );
    let body = json(resp).await;
    assert_eq!(body["errors"][0]["code"], "BadGateway");
}

#[tokio::test]
async fn slow_upstream_is_a_504_proxy_error() {
    let h = Harness::with_config("[timeouts]\nresponse = 0.3").await;
    h.sim.set_upstream_latency(Duration::from_secs(3));
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "upstream_timeout");
}

#[tokio::test]
async fn own_endpoints() {
    let h = Harness::start().await;
    let resp = h.get("/_proxy/health").await;
    assert_eq!(resp.status(), 200);
    let resp = h.get("/_proxy/ready").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["status"], "ready");
    let resp = h.get("/_proxy/nothing-here").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "unknown_operation");
    assert!(
        h.sim.requests().is_empty(),
        "own endpoints never reach Amazon"
    );
}

#[tokio::test]
async fn unknown_operations_are_forwarded_or_rejected_as_configured() {
    let h = Harness::start().await;
    let resp = h.get("/no/such/api?x=1").await;
    assert_eq!(resp.status(), 404, "forwarded: the simulator's own 404");
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    assert_eq!(h.sim.requests().len(), 1);

    let h = Harness::with_config("unknown_operations = \"reject\"").await;
    let resp = h.get("/no/such/api?x=1").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "unknown_operation");
    let body = json(resp).await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/api"));
    assert!(h.sim.requests().is_empty(), "nothing reached Amazon");
    // Known operations still pass.
    assert_eq!(
        h.get("/sellers/v1/marketplaceParticipations")
            .await
            .status(),
        200
    );
}
