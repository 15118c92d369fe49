//! Restricted Data Tokens and grantless tokens: the right token for every call, minted rarely.

use std::collections::HashMap;

use futures_util::StreamExt;
use spapi_proxy::config::Config;
use spapi_proxy::sim::Simulator;

use crate::support::{config_for, json, sim_env, Harness};

const ADDRESS_TEMPLATE: &str = "/orders/v0/orders/{orderId}/address";

fn order_id(i: usize) -> String {
    format!("{:03}-{:07}-{:07}", 100 + i % 900, i, 7 * i)
}

#[tokio::test]
async fn a_thousand_order_addresses_need_one_rdt() {
    let h = Harness::start().await;
    let results: Vec<(u16, serde_json::Value)> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let client = h.client.clone();
            let url = h.url(&format!("/orders/v0/orders/{}/address", order_id(i)));
            async move {
                let resp = client.get(url).send().await.unwrap();
                (resp.status().as_u16(), json(resp).await)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(results.len(), 1000);
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["payload"]["ShippingAddress"]["Name"], "Sam Rivera");
    }
    let mints = h.sim.rdt_mints();
    assert_eq!(mints.len(), 1, "{mints:?}");
    assert_eq!(mints[0].method, "GET");
    assert_eq!(mints[0].path, ADDRESS_TEMPLATE);
    assert!(mints[0].data_elements.is_empty());
    let lwa_on_address = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.ends_with("/address"))
        .filter(|r| r.header_values("x-amz-access-token")[0].starts_with("Atza|"))
        .count();
    assert_eq!(
        lwa_on_address, 0,
        "the LWA token never carries a restricted call"
    );
}

#[tokio::test]
async fn each_data_elements_set_gets_its_own_rdt() {
    let h = Harness::start().await;
    let get = |elements: Option<&'static str>| {
        let mut req = h.client.get(h.url("/orders/v0/orders/902-3159896-1390916"));
        if let Some(e) = elements {
            req = req.header("x-spapi-data-elements", e);
        }
        async move { req.send().await.unwrap() }
    };
    for _ in 0..2 {
        let order = json(get(Some("buyerInfo")).await).await;
        assert_eq!(order["payload"]["BuyerInfo"]["BuyerName"], "Sam Rivera");
        assert!(order["payload"]["ShippingAddress"].get("Name").is_none());
        let order = json(get(Some("shippingAddress,buyerInfo")).await).await;
        assert_eq!(order["payload"]["ShippingAddress"]["Name"], "Sam Rivera");
    }
    // No header: the default set (buyerInfo, shippingAddress) is the second one again.
    assert_eq!(get(None).await.status(), 200);
    let mints = h.sim.rdt_mints();
    assert_eq!(mints.len(), 2, "{mints:?}");
    assert_eq!(mints[0].data_elements, ["buyerInfo"]);
    assert_eq!(mints[1].data_elements, ["buyerInfo", "shippingAddress"]);
    assert!(h
        .sim
        .requests()
        .iter()
        .all(|r| r.header_values("x-spapi-data-elements").is_empty()));
}

#[tokio::test]
async fn data_elements_an_operation_does_not_accept_are_a_400() {
    let h = Harness::start().await;
    let resp = h
        .get_with(
            "/orders/v0/orders/902-3159896-1390916/orderItems",
            "x-spapi-data-elements",
            "buyerInfo,shippingAddress",
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "bad_request");
    let body = json(resp).await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("shippingAddress"));
    assert!(h.sim.requests().is_empty());
    assert_eq!(h.sim.lwa_calls(), 0, "refused before any token was fetched");
}

#[tokio::test]
async fn an_rdt_amazon_rejects_is_reminted_once() {
    let h = Harness::start().await;
    let url = "/orders/v0/orders/902-3159896-1390916/buyerInfo";
    assert_eq!(h.get(url).await.status(), 200);
    h.sim.expire_rdts();
    let resp = h.get(url).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["payload"]["BuyerName"], "Sam Rivera");
    assert_eq!(h.sim.rdt_mints().len(), 2);
    let statuses: Vec<u16> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query == url)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 403, 200]);
}

#[tokio::test]
async fn a_refused_mint_for_a_restricted_only_operation_reaches_the_client() {
    let h = Harness::start().await;
    let reason = "Application do not have access to some or all requested resource";
    h.sim.deny_restricted_resources(true);
    let resp = h.get("/orders/v0/orders/902-3159896-1390916/address").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "rdt_refused");
    assert!(resp.headers().get("x-spapi-proxy-pii").is_none());
    let body = json(resp).await;
    assert_eq!(body["errors"][0]["code"], "InvalidInput");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains(reason));
    let reached_orders = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/orders/"))
        .count();
    assert_eq!(
        reached_orders, 0,
        "no request went out with the LWA token instead"
    );
}

#[tokio::test]
async fn report_documents_use_an_rdt_only_for_restricted_report_types() {
    let h = Harness::start().await;
    // Report 90001 is a restricted type, 50001 is not; the proxy learns it from getReport(s).
    let report = json(h.get("/reports/2021-06-30/reports/90001").await).await;
    assert_eq!(
        report["reportType"],
        "GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING"
    );
    let doc = "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.90001";
    assert_eq!(h.get(doc).await.status(), 200);
    let mints = h.sim.rdt_mints();
    assert_eq!(mints.len(), 1);
    assert_eq!(mints[0].path, doc, "a specific path, never the template");

    assert_eq!(
        h.get("/reports/2021-06-30/reports/50001").await.status(),
        200
    );
    let plain = "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.50001";
    assert_eq!(h.get(plain).await.status(), 200);
    assert_eq!(
        h.sim.rdt_mints().len(),
        1,
        "no RDT for an unrestricted report"
    );
    let last = h.sim.requests().pop().unwrap();
    assert!(last.header_values("x-amz-access-token")[0].starts_with("Atza|"));

    // getReports teaches the proxy about every report it lists.
    let h = Harness::start().await;
    assert_eq!(
        h.get("/reports/2021-06-30/reports?reportTypes=X")
            .await
            .status(),
        200
    );
    assert_eq!(h.get(doc).await.status(), 200);
    assert_eq!(h.sim.rdt_mints().len(), 1);

    // A document the proxy has not seen: LWA by default, an RDT when the client says so.
    let h = Harness::start().await;
    let unseen = "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.90002";
    assert_eq!(
        h.get(unseen).await.status(),
        403,
        "Amazon's refusal passes through"
    );
    let resp = h.get_with(unseen, "x-spapi-restricted", "true").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h.sim.rdt_mints().len(), 1);
}

#[tokio::test]
async fn grantless_operations_need_no_refresh_token() {
    let sim = Simulator::start().await.unwrap();
    let mut env: HashMap<String, String> = sim_env(&sim);
    env.remove("SPAPI_REFRESH_TOKEN");
    let config = Config::from_toml_str("", "t", &|k| env.get(k).cloned()).unwrap();
    let h = Harness::with(sim, config).await;

    let resp = h.get("/notifications/v1/destinations").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["payload"][0]["name"], "orders-queue");
    assert_eq!(h.get("/notifications/v1/destinations").await.status(), 200);
    assert_eq!(
        h.sim.client_credentials_scopes(),
        ["sellingpartnerapi::notifications"],
        "one grantless token, cached"
    );
    assert_eq!(h.get("/_proxy/ready").await.status(), 200);

    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["x-spapi-proxy-error"],
        "token_not_configured"
    );
    assert!(json(resp).await["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("SPAPI_REFRESH_TOKEN"));
}

#[tokio::test]
async fn concurrency_never_mints_the_same_resource_twice() {
    let h = Harness::start().await;
    let paths = [
        "/orders/v0/orders/{id}/address",
        "/orders/v0/orders/{id}/buyerInfo",
        "/orders/v0/orders/{id}",
        "/orders/v0/orders/{id}/orderItems",
        "/orders/v0/orders/{id}/orderItems/buyerInfo",
    ];
    let statuses: Vec<u16> = futures_util::stream::iter(0..300)
        .map(|i| {
            let client = h.client.clone();
            let url = h.url(&paths[i % paths.len()].replace("{id}", &order_id(i)));
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mints = h.sim.rdt_mints();
    assert_eq!(mints.len(), paths.len(), "{mints:?}");
    let mut keys: Vec<(String, Vec<String>)> = mints
        .into_iter()
        .map(|m| (m.path, m.data_elements))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), paths.len());
}

#[tokio::test]
async fn rdts_are_minted_where_rdt_endpoint_points() {
    // The sandbox needs RDTs minted in production: `rdt_endpoint` names where.
    let production = Simulator::start().await.unwrap();
    let sandbox = Simulator::start().await.unwrap();
    let mut config = config_for(&sandbox, "");
    config.rdt_endpoints[0] = production.url().parse().unwrap();
    // Both simulators accept the same demo credentials, so one LWA server is enough.
    config.token_url = production.token_url().parse().unwrap();
    let h = Harness::with(sandbox, config).await;
    let _ = h.get("/orders/v0/orders/902-3159896-1390916/address").await;
    assert!(!production.rdt_mints().is_empty(), "minted in production");
    assert!(h.sim.rdt_mints().is_empty(), "not in the sandbox");
    let sent = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.ends_with("/address"))
        .unwrap();
    assert!(sent.header_values("x-amz-access-token")[0].starts_with("Atz.sprdt|"));
}

#[tokio::test]
async fn target_application_is_sent_when_configured() {
    let h = Harness::with_config("target_application = \"amzn1.sellerapps.app.delegate\"").await;
    assert_eq!(h.get("/orders/v0/orders/1-2-3/address").await.status(), 200);
    let h2 = Harness::start().await;
    assert_eq!(
        h2.get("/orders/v0/orders/1-2-3/address").await.status(),
        200
    );
    assert_eq!(
        h.sim.rdt_target_applications(),
        [Some("amzn1.sellerapps.app.delegate".to_string())]
    );
    assert_eq!(h2.sim.rdt_target_applications(), [None]);
}

#[tokio::test]
async fn restricted_report_types_are_configurable() {
    // Declaring the listings report restricted makes its documents need an RDT.
    let h = Harness::with_config("restricted_report_types = [\"GET_MERCHANT_LISTINGS_ALL_DATA\"]")
        .await;
    assert_eq!(
        h.get("/reports/2021-06-30/reports/50001").await.status(),
        200
    );
    let doc = "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.50001";
    assert_eq!(h.get(doc).await.status(), 200);
    assert_eq!(h.sim.rdt_mints().len(), 1);
    assert_eq!(h.sim.rdt_mints()[0].path, doc);
}
