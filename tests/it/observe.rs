//! What an operator sees: metrics and the per-request log line.

use std::collections::HashMap;

use spapi_proxy::sim::{AmazonAnswer, Simulator, SIM_REFRESH_TOKEN};

use crate::cli::LoggedProxy;
use crate::support::Harness;

/// `/_proxy/metrics`, as series name with labels -> value.
async fn scrape(h: &Harness) -> HashMap<String, f64> {
    let resp = h.get("/_proxy/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_labels_stay_bounded() {
    // A seller name no other test uses: the metrics belong to the process, and the tests run
    // side by side in one.
    let h = Harness::limited(&format!(
        "[sellers.observed]\nrefresh_token = \"{SIM_REFRESH_TOKEN}\"\ndefault = true\n\
         [operations.getMarketplaceParticipations]\nrate = 100.0\nburst = 100\n\
         [operations.getOrders]\nrate = 0.01\nburst = 1\n"
    ))
    .await;
    let before = scrape(&h).await;
    let ok = r#"spapi_proxy_requests_total{seller="observed",api="sellers",operation="getMarketplaceParticipations",status="2xx"}"#;
    for _ in 0..3 {
        assert_eq!(
            h.get("/sellers/v1/marketplaceParticipations")
                .await
                .status(),
            200
        );
    }
    // Twenty different order ids: one series, no id in any label.
    for i in 0..20 {
        let id = format!("902-0000000-{i:07}");
        // Unknown: one shared default bucket; past its burst, refused at once.
        h.get_with(
            &format!("/orders/v2026-01-01-not-a-version/{id}"),
            "x-spapi-max-wait",
            "0",
        )
        .await;
        h.get(&format!("/orders/v0/orders/{id}/orderItems")).await;
    }
    // A token expires: one replay.
    h.sim.expire_all_tokens();
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
    // The proxy's own 429: getOrders' one token is gone and x-spapi-max-wait is 0.
    let orders = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER";
    assert_eq!(
        h.get_with(orders, "x-spapi-max-wait", "0").await.status(),
        200
    );
    assert_eq!(
        h.get_with(orders, "x-spapi-max-wait", "0").await.status(),
        429
    );
    // Amazon throttles. Last, because the bucket is slowed down after it.
    h.sim.answer_next(AmazonAnswer::QuotaExceeded, 3);
    assert_eq!(
        h.get("/sellers/v1/marketplaceParticipations")
            .await
            .status(),
        429
    );

    let after = scrape(&h).await;
    assert_eq!(value(&after, ok) - value(&before, ok), 4.0, "{after:#?}");
    let items = r#"spapi_proxy_requests_total{seller="observed",api="ordersV0",operation="getOrderItems",status="2xx"}"#;
    assert_eq!(value(&after, items) - value(&before, items), 20.0);
    let op = r#"{seller="observed",operation="getMarketplaceParticipations"}"#;
    // One: the halved rate leaves no quota within max_wait for a retry.
    assert_eq!(
        value(&after, &format!("spapi_proxy_amazon_throttled_total{op}")),
        1.0
    );
    assert_eq!(
        value(&after, &format!("spapi_proxy_token_replays_total{op}")),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"spapi_proxy_local_throttled_total{seller="observed",operation="getOrders"}"#
        ),
        1.0
    );
    assert!(value(&after, r#"spapi_proxy_lwa_calls_total{kind="lwa"}"#) >= 2.0);
    assert!(value(&after, r#"spapi_proxy_token_cache_hits_total{kind="lwa"}"#) >= 20.0);
    assert!(
        value(&after, r#"spapi_proxy_rdt_mints_total"#) >= 1.0,
        "getOrderItems took an RDT"
    );
    assert!(
        value(
            &after,
            r#"spapi_proxy_queue_wait_seconds_count{operation="getMarketplaceParticipations"}"#
        ) >= 5.0
    );
    assert!(
        value(
            &after,
            r#"spapi_proxy_upstream_duration_seconds_count{operation="getOrderItems"}"#
        ) >= 20.0
    );
    let bucket =
        r#"{seller="observed",region="na",operation="sellers.getMarketplaceParticipations"}"#;
    assert!(
        after.contains_key(&format!("spapi_proxy_bucket_tokens_available{bucket}")),
        "{after:#?}"
    );
    assert_eq!(
        value(&after, &format!("spapi_proxy_bucket_waiting{bucket}")),
        0.0
    );
    assert!(value(&after, "spapi_proxy_client_connections") >= 1.0);
    for series in after.keys() {
        assert!(
            !series.contains("902-0000000"),
            "an id in a label: {series}"
        );
        assert!(
            !series.contains("v2026-01-01-not-a-version"),
            "a path in a label: {series}"
        );
    }
}

#[tokio::test]
async fn the_json_request_line_says_what_happened() {
    let sim = Simulator::start().await.unwrap();
    let proxy = LoggedProxy::start(&sim, &["serve", "--log-format", "json"]);
    let client = crate::support::client();
    let base = format!("http://{}", proxy.addr);
    let resp = client
        .get(format!(
            "{base}/orders/v0/orders/902-3159896-1390916/address"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let resp = client
        .get(format!("{base}/notifications/v1/destinations"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(proxy.wait_for_log("/notifications/v1/destinations"));
    let logs = proxy.stop();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = |path: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["path"] == path)
            .unwrap_or_else(|| panic!("no request line for {path}: {logs}"))
            .clone()
    };
    let address = request("/orders/v0/orders/902-3159896-1390916/address");
    assert_eq!(address["level"], "INFO");
    assert_eq!(address["seller"], "default");
    assert_eq!(address["op"], "getOrderAddress");
    assert_eq!(address["status"], 200);
    assert_eq!(address["token"], "rdt");
    assert_eq!(address["pii"], "included");
    assert_eq!(address["request_id"], request_id.as_str());
    assert!(
        address["latency_ms"].is_u64() && address["queue_ms"].is_u64(),
        "{address}"
    );
    assert!(address["timestamp"].is_string());
    let grantless = request("/notifications/v1/destinations");
    assert_eq!(grantless["token"], "grantless");
    assert_eq!(grantless["seller"], "-");
    assert_eq!(grantless["pii"], "-");
}
