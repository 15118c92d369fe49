//! LWA access tokens: caching, single flight, refresh, failures and recovery.

use std::time::{Duration, Instant};

use spapi_proxy::sim::{AmazonAnswer, LwaFault, SIM_CLIENT_SECRET, SIM_REFRESH_TOKEN};

use crate::support::{json, Harness};

#[tokio::test]
async fn two_hundred_concurrent_requests_make_one_lwa_call() {
    let h = Harness::start().await;
    let url = h.url("/sellers/v1/marketplaceParticipations");
    let calls = (0..200).map(|_| {
        let client = h.client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(h.sim.lwa_calls(), 1);
    assert_eq!(h.sim.requests().len(), 200);
}

#[tokio::test]
async fn short_lived_tokens_never_reach_amazon_expired() {
    let h = Harness::start().await;
    h.sim.set_token_lifetime(Duration::from_secs(2));
    let run_for = Duration::from_secs(7);
    let started = Instant::now();
    let workers = (0..16).map(|_| {
        let client = h.client.clone();
        let url = h.url("/orders/v0/orders/902-3159896-1390916");
        tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < run_for {
                let status = client.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
                n += 1;
            }
            n
        })
    });
    let total: u32 = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert!(total > 100, "only {total} requests");
    assert_eq!(h.sim.token_rejections(), 0);
    // Seven seconds of two-second tokens: about one refresh every 1.5 s, never one per request.
    let calls = h.sim.lwa_calls();
    assert!((4..=8).contains(&calls), "{calls} LWA calls");
}

#[tokio::test]
async fn invalid_grant_is_a_502_naming_it_without_secrets() {
    let h = Harness::start().await;
    h.sim.set_lwa_fault(Some(LwaFault::InvalidGrant));
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_refused");
    let text = resp.text().await.unwrap();
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(!text.contains(SIM_CLIENT_SECRET) && !text.contains(SIM_REFRESH_TOKEN));
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["errors"][0]["code"], "invalid_grant");
    assert!(h.sim.requests().is_empty(), "nothing reached SP-API");
    assert_eq!(h.sim.lwa_calls(), 1, "a refusal is not retried");

    let resp = h.get("/_proxy/ready").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "not_ready");
    assert!(resp.text().await.unwrap().contains("invalid_grant"));
}

#[tokio::test]
async fn lwa_outage_then_recovery_without_restart() {
    let h = Harness::with_config("token_retries = 1").await;
    h.sim.set_lwa_fault(Some(LwaFault::ServerError));
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_unavailable");
    assert_eq!(h.sim.lwa_calls(), 2, "one try plus one retry");

    h.sim.set_lwa_fault(None);
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h.get("/_proxy/ready").await.status(), 200);
}

#[tokio::test]
async fn transient_lwa_failure_is_retried_transparently() {
    let h = Harness::with_config("token_retries = 3").await;
    h.sim.set_lwa_fault(Some(LwaFault::ServerError));
    let sim_url = h.url("/sellers/v1/marketplaceParticipations");
    let client = h.client.clone();
    let pending = tokio::spawn(async move { client.get(sim_url).send().await.unwrap() });
    // The first attempt fails at once; backoff is 200 ms, so LWA is back before the retry.
    while h.sim.lwa_calls() == 0 {
        tokio::task::yield_now().await;
    }
    h.sim.set_lwa_fault(None);
    let resp = pending.await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn outage_failures_are_shared_not_stormed() {
    let h = Harness::with_config("token_retries = 0").await;
    h.sim.set_lwa_fault(Some(LwaFault::ServerError));
    h.sim.set_lwa_latency(Duration::from_millis(200));
    let calls = (0..50).map(|_| {
        let client = h.client.clone();
        let url = h.url("/sellers/v1/marketplaceParticipations");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status.unwrap(), 502);
    }
    let calls = h.sim.lwa_calls();
    assert!(calls <= 3, "{calls} LWA calls for 50 waiting requests");
}

#[tokio::test]
async fn lwa_timeout_is_a_504() {
    let h = Harness::with_config("token_retries = 0\n[timeouts]\ntoken = 0.2").await;
    h.sim.set_lwa_latency(Duration::from_secs(3));
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_timeout");
}

#[tokio::test]
async fn expired_token_403_refreshes_once_and_replays() {
    let h = Harness::start().await;
    let item = "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER";
    assert_eq!(h.get(item).await.status(), 200);
    assert_eq!(h.sim.lwa_calls(), 1);

    h.sim.expire_all_tokens();
    let resp = h.get(item).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h.sim.lwa_calls(), 2);
    let statuses: Vec<u16> = h.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 200]);

    // A small POST body is replayed as it was sent.
    h.sim.expire_all_tokens();
    let body =
        r#"{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA","marketplaceIds":["ATVPDKIKX0DER"]}"#;
    let resp = h
        .client
        .post(h.url("/reports/2021-06-30/reports"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(json(resp).await["reportId"], "50001");
    assert_eq!(h.sim.lwa_calls(), 3);
}

#[tokio::test]
async fn a_403_for_a_missing_role_is_not_replayed() {
    // The simulator says "Access to requested resource is denied." when no token arrives,
    // which is also what Amazon says for a missing role: pass it through, no refresh.
    let h = Harness::start().await;
    h.sim.answer_next(AmazonAnswer::AccessDenied, 1);
    let resp = h.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("x-spapi-proxy-error").is_none());
    assert_eq!(h.sim.requests().len(), 1);
    assert_eq!(h.sim.lwa_calls(), 1);
}
