//! Amazon's real answers, from the simulator's fixtures: token rejections in every wording,
//! applications without PII roles, and request targets that must not mean two things.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use spapi_proxy::sim::{AmazonAnswer, TokenWording};

use crate::support::{json, raw, raw_status, Harness};

const PARTICIPATIONS: &str = "/sellers/v1/marketplaceParticipations";
const ADDRESS: &str = "/orders/v0/orders/902-3159896-1390916/address";
const ORDER: &str = "/orders/v0/orders/902-3159896-1390916";
const ORDERS: &str = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER";

fn statuses_for(h: &Harness, path: &str) -> Vec<u16> {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query == path)
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn expired_and_revoked_lwa_tokens_are_replaced_once_in_either_wording() {
    for wording in [TokenWording::Current, TokenWording::SigV4Era] {
        for revoke in [false, true] {
            let case = format!("{wording:?}, revoked: {revoke}");
            let h = Harness::start().await;
            h.sim.set_token_wording(wording);
            assert_eq!(h.get(PARTICIPATIONS).await.status(), 200, "{case}");
            if revoke {
                h.sim.revoke_all_tokens();
            } else {
                h.sim.expire_all_tokens();
            }
            let resp = h.get(PARTICIPATIONS).await;
            assert_eq!(resp.status(), 200, "{case}");
            assert_eq!(h.sim.lwa_calls(), 2, "one refresh: {case}");
            assert_eq!(statuses_for(&h, PARTICIPATIONS), [200, 403, 200], "{case}");
            assert_eq!(h.get("/_proxy/ready").await.status(), 200, "{case}");
        }
    }
}

#[tokio::test]
async fn expired_and_revoked_rdts_are_reminted_once_in_either_wording() {
    for wording in [TokenWording::Current, TokenWording::SigV4Era] {
        for revoke in [false, true] {
            let case = format!("{wording:?}, revoked: {revoke}");
            let h = Harness::start().await;
            h.sim.set_token_wording(wording);
            assert_eq!(h.get(ADDRESS).await.status(), 200, "{case}");
            if revoke {
                h.sim.revoke_rdts();
            } else {
                h.sim.expire_rdts();
            }
            let resp = h.get(ADDRESS).await;
            assert_eq!(resp.status(), 200, "{case}");
            assert_eq!(resp.headers()["x-spapi-proxy-pii"], "included", "{case}");
            assert_eq!(h.sim.rdt_mints().len(), 2, "one re-mint: {case}");
            assert_eq!(h.sim.lwa_calls(), 1, "the LWA token was fine: {case}");
            assert_eq!(statuses_for(&h, ADDRESS), [200, 403, 200], "{case}");
        }
    }
}

#[tokio::test]
async fn a_missing_role_403_passes_through_without_a_refresh() {
    let h = Harness::start().await;
    h.sim.deny_operations(&["getMarketplaceParticipations"]);
    let resp = h.get(PARTICIPATIONS).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    let body = json(resp).await;
    assert_eq!(body["errors"][0]["code"], "Unauthorized");
    assert_eq!(body["errors"][0]["details"], "");
    assert_eq!(h.sim.lwa_calls(), 1);
    assert_eq!(statuses_for(&h, PARTICIPATIONS), [403]);
    assert_eq!(h.get("/_proxy/ready").await.status(), 200);
}

#[tokio::test]
async fn an_rdt_that_does_not_cover_the_path_passes_through_without_a_remint() {
    let h = Harness::start().await;
    h.sim.accept_generic_paths(false);
    let resp = h.get(ADDRESS).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    assert_eq!(h.sim.rdt_mints().len(), 1);
    assert_eq!(statuses_for(&h, ADDRESS), [403]);
}

#[tokio::test]
async fn a_fresh_token_amazon_rejects_makes_ready_say_so_until_a_request_succeeds() {
    let h = Harness::start().await;
    h.sim
        .answer_next(AmazonAnswer::ExpiredAccessToken(TokenWording::Current), 2);
    let resp = h.get(PARTICIPATIONS).await;
    assert_eq!(
        resp.status(),
        403,
        "Amazon's answer to the replay goes back"
    );
    assert_eq!(h.sim.lwa_calls(), 2, "one refresh, not a loop");
    let ready = h.get("/_proxy/ready").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("has expired"));
    assert_eq!(h.get(PARTICIPATIONS).await.status(), 200);
    assert_eq!(h.get("/_proxy/ready").await.status(), 200);
}

/// Requests that reached the Orders API (mints go to the Tokens API).
fn orders_reached(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/orders/"))
        .count()
}

/// An application with no PII roles, as most are.
async fn without_pii_roles(toml: &str) -> Harness {
    let h = Harness::with_config(toml).await;
    h.sim
        .deny_data_elements(&["buyerInfo", "shippingAddress", "buyerTaxInformation"]);
    h
}

#[tokio::test]
async fn without_pii_roles_orders_work_with_the_lwa_token_after_one_refused_mint() {
    let h = without_pii_roles("").await;
    let first = h.get(ORDERS).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-spapi-proxy-pii"], "omitted");
    let results: Vec<(u16, String, serde_json::Value)> = futures_util::stream::iter(0..99)
        .map(|i| {
            let client = h.client.clone();
            let url = h.url(if i % 2 == 0 { ORDERS } else { ORDER });
            async move {
                let resp = client.get(url).send().await.unwrap();
                let pii = resp.headers()["x-spapi-proxy-pii"]
                    .to_str()
                    .unwrap()
                    .to_string();
                (resp.status().as_u16(), pii, json(resp).await)
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    for (status, pii, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(pii, "omitted");
        assert!(
            !body.to_string().contains("Sam Rivera"),
            "no PII without an RDT"
        );
    }
    assert_eq!(h.sim.refused_mints(), 1);
    assert!(h.sim.rdt_mints().is_empty());
    let status = json(h.get("/_proxy/status").await).await;
    let refused = &status["restricted_data"]["refused_data_elements"][0];
    assert_eq!(
        refused["data_elements"],
        serde_json::json!(["buyerInfo", "shippingAddress"])
    );
    assert_eq!(refused["amazon_code"], "InvalidInput");
}

#[tokio::test]
async fn naming_data_elements_without_the_role_gets_amazons_reason() {
    let h = without_pii_roles("").await;
    for _ in 0..2 {
        let resp = h
            .get_with(ORDER, "x-spapi-data-elements", "buyerInfo")
            .await;
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-spapi-proxy-error"], "pii_not_permitted");
        let body = json(resp).await;
        assert_eq!(body["errors"][0]["code"], "InvalidInput");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("does not have access to one or more requested data elements"),
            "{message}"
        );
    }
    assert_eq!(h.sim.refused_mints(), 1, "the refusal is remembered");
    assert_eq!(orders_reached(&h), 0, "never silently downgraded");
}

#[tokio::test]
async fn restricted_data_always_and_never() {
    let h = without_pii_roles("restricted_data = \"always\"").await;
    let resp = h.get(ORDER).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "rdt_refused");
    assert_eq!(orders_reached(&h), 0);

    let h = Harness::with_config("restricted_data = \"never\"").await;
    for path in [ORDER, ORDERS] {
        let resp = h.get(path).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-spapi-proxy-pii"], "omitted");
    }
    assert_eq!(h.sim.refused_mints() + h.sim.rdt_mints().len() as u64, 0);
    let resp = h.get(ADDRESS).await;
    assert_eq!(
        resp.status(),
        200,
        "restricted-only operations still get their RDT"
    );
    assert_eq!(resp.headers()["x-spapi-proxy-pii"], "included");

    // Per operation: never for getOrder only.
    let h =
        Harness::with_config("[operations.ordersV0.getOrder]\nrestricted_data = \"never\"").await;
    assert_eq!(h.get(ORDER).await.headers()["x-spapi-proxy-pii"], "omitted");
    assert_eq!(
        h.get(ORDERS).await.headers()["x-spapi-proxy-pii"],
        "included"
    );
}

#[tokio::test]
async fn with_pii_roles_the_answer_says_included() {
    let h = Harness::start().await;
    let resp = h.get(ORDER).await;
    assert_eq!(resp.headers()["x-spapi-proxy-pii"], "included");
    assert_eq!(
        json(resp).await["payload"]["BuyerInfo"]["BuyerName"],
        "Sam Rivera"
    );
}

#[tokio::test]
async fn orders_2026_01_01_uses_the_lwa_token() {
    let h = Harness::start().await;
    for path in [
        "/orders/2026-01-01/orders?marketplaceIds=ATVPDKIKX0DER",
        "/orders/2026-01-01/orders/902-3159896-1390916",
    ] {
        let resp = h.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert!(resp.headers().get("x-spapi-proxy-pii").is_none());
    }
    assert!(h.sim.rdt_mints().is_empty());
    for r in h.sim.requests() {
        assert!(r.header_values("x-amz-access-token")[0].starts_with("Atza|"));
    }
}

#[tokio::test]
async fn hostile_request_targets_reach_nothing() {
    let h = Harness::start().await;
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
    };
    let mut cases: Vec<(String, String)> = [
        "/x/%2e%2e/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER",
        "/x/%2E%2E/orders/v0/orders",
        "/x/.%2e/orders/v0/orders",
        "/x/../orders/v0/orders",
        "/orders/v0/orders/%2e%2e",
        "/orders/v0/orders/902-3159896-1390916/.",
        "/orders//v0/orders",
        "/orders/v0/orders/%zz",
        "http://evil.example/orders/v0/orders",
    ]
    .iter()
    .map(|t| (t.to_string(), get(t, "")))
    .collect();
    cases.push((
        "OPTIONS *".into(),
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    ));
    cases.push((
        "CONNECT".into(),
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".into(),
    ));
    for bad in ["inf", "NaN", "-1", "soon"] {
        cases.push((
            format!("max-wait {bad}"),
            get(PARTICIPATIONS, &format!("x-spapi-max-wait: {bad}\r\n")),
        ));
    }
    cases.push((
        "broken chunking".into(),
        "POST /reports/2021-06-30/reports HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Content-Type: application/json\r\nConnection: close\r\n\r\n5\r\n{\"rep\r\nzz\r\nortType\r\n0\r\n\r\n"
            .into(),
    ));
    for (name, request) in &cases {
        let answer = raw(&h.url, request.as_bytes()).await;
        let status = raw_status(&answer);
        assert!(
            (400..500).contains(&status),
            "{name}: {}",
            answer.lines().next().unwrap_or("(nothing)")
        );
    }
    assert!(h.sim.requests().is_empty(), "{:?}", h.sim.requests());
    assert_eq!(h.sim.lwa_calls(), 0, "refused before any token call");

    // A huge max wait is clamped to max_wait, not a panic.
    let answer = raw(
        &h.url,
        get(PARTICIPATIONS, "x-spapi-max-wait: 1e20\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn a_hung_token_service_costs_one_timeout_not_one_per_retry() {
    let h = Harness::with_config("token_retries = 3\n[timeouts]\ntoken = 3").await;
    h.sim.set_lwa_latency(Duration::from_secs(30));
    let started = Instant::now();
    let (a, b) = tokio::join!(h.get(PARTICIPATIONS), h.get(ADDRESS));
    let took = started.elapsed();
    for resp in [a, b] {
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_timeout");
    }
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(4500),
        "{took:?}"
    );
    assert_eq!(
        h.sim.lwa_calls(),
        1,
        "the waiter shared the fetch's timeout"
    );
}

#[tokio::test]
async fn a_mint_refused_for_an_expired_lwa_token_refreshes_it_and_mints_again() {
    let h = Harness::start().await;
    h.sim
        .answer_next(AmazonAnswer::ExpiredAccessToken(TokenWording::Current), 1);
    let resp = h.get(ADDRESS).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h.sim.lwa_calls(), 2, "the LWA token was refreshed once");
    assert_eq!(h.sim.rdt_mints().len(), 1);
    assert_eq!(
        statuses_for(&h, "/tokens/2021-03-01/restrictedDataToken"),
        [403, 200]
    );
}
