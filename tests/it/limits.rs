//! Rate limits against a simulator that enforces Amazon's published usage plans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spapi_proxy::sim::AmazonAnswer;
use tokio::time::Instant;

use crate::support::{json, queued_ms, Harness};

/// What a run of hammering achieved for one operation, as the simulator saw it.
#[derive(Debug)]
struct Achieved {
    accepted: usize,
    span: Duration,
}

fn achieved(h: &Harness, operation: &str) -> Achieved {
    let accepted: Vec<Instant> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some(operation) && r.status < 300)
        .map(|r| r.at)
        .collect();
    let span = match (accepted.first(), accepted.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    Achieved {
        accepted: accepted.len(),
        span,
    }
}

/// `clients` tasks send GETs to `paths` (round robin) until `run_for` has passed; a request the
/// proxy refuses locally (429 rate_limited) is retried after 100 ms. Returns (upstream 429s seen
/// by clients, local refusals).
async fn hammer(h: &Harness, paths: &[&str], clients: usize, run_for: Duration) -> (u64, u64) {
    let upstream_429 = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = h.client.clone();
        let url = h.url(paths[i % paths.len()]);
        let (upstream_429, refused) = (Arc::clone(&upstream_429), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            loop {
                let resp = client.get(&url).send().await.unwrap();
                match (
                    resp.status().as_u16(),
                    resp.headers().get("x-spapi-proxy-error"),
                ) {
                    (429, Some(_)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    (429, None) => {
                        upstream_429.fetch_add(1, Ordering::Relaxed);
                    }
                    (status, _) => assert!(status < 300, "{status}"),
                }
            }
        }));
    }
    tokio::time::sleep_until(stop_at).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        upstream_429.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_for_twenty_seconds_never_draw_a_429() {
    let h = Harness::limited("").await;
    h.sim.enforce_rate_limits(true);
    let paths = [
        "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER",
        "/reports/2021-06-30/reports/50001",
        "/orders/v0/orders/902-3159896-1390916",
    ];
    let (upstream_429, refused) = hammer(&h, &paths, 200, Duration::from_secs(20)).await;
    assert_eq!(h.sim.throttled(), 0, "the simulator answered 429");
    assert_eq!(upstream_429, 0);
    let cases = [
        ("catalogItems_2022-04-01.getCatalogItem", 2.0, 2.0),
        ("reports_2021-06-30.getReport", 2.0, 15.0),
        ("ordersV0.getOrder", 0.5, 30.0),
    ];
    for (op, rate, burst) in cases {
        let a = achieved(&h, op);
        // Amazon grants the burst at once and then `rate` per second: over the span from the
        // first to the last accepted request that is burst + rate x span.
        let theoretical = burst + rate * a.span.as_secs_f64();
        let ratio = a.accepted as f64 / theoretical;
        eprintln!(
            "{op}: accepted {} in {:.2} s, theoretical {theoretical:.1} ({:.1} %), \
             burst + rate x 20 s = {}; local refusals overall {refused}",
            a.accepted,
            a.span.as_secs_f64(),
            ratio * 100.0,
            burst + rate * 20.0
        );
        // The run covered the window: the last token of 20 s comes at most one interval early.
        let covered = Duration::from_secs_f64(20.0 - 1.0 / rate - 0.2);
        assert!(a.span >= covered, "{op} ran {:?}", a.span);
        assert!(ratio >= 0.98, "{op}: {} of {theoretical:.1}", a.accepted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_lowered_by_amazon_is_followed_within_one_response() {
    let h = Harness::limited("").await;
    h.sim.enforce_rate_limits(true);
    let path = ["/reports/2021-06-30/reports/50001"];
    let (upstream_429, _) = hammer(&h, &path, 30, Duration::from_secs(4)).await;
    assert_eq!(upstream_429, 0);

    h.sim.set_rate("getReport", 1.0);
    let changed_at = Instant::now();
    let (upstream_429, _) = hammer(&h, &path, 30, Duration::from_secs(5)).await;
    assert_eq!(upstream_429, 0);
    assert_eq!(h.sim.throttled(), 0, "the simulator answered 429");

    let quota = json(h.get("/_proxy/quota").await).await;
    let bucket = quota["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["operation"] == "reports_2021-06-30.getReport")
        .unwrap()
        .clone();
    assert_eq!(bucket["rate"], 1.0);
    assert_eq!(bucket["rate_source"], "amazon");
    let after = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.at > changed_at + Duration::from_millis(600) && r.status < 300)
        .count();
    assert!(
        after <= 6,
        "{after} accepted in the 4.4 s after the change at 1/s"
    );
}

#[tokio::test]
async fn a_429_from_amazon_is_retried_only_when_safe() {
    let h = Harness::limited("").await;
    let item = "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER";
    h.sim.answer_next(AmazonAnswer::QuotaExceeded, 1);
    let resp = h.get(item).await;
    assert_eq!(resp.status(), 200, "GET retried after waiting for quota");
    let statuses: Vec<u16> = h.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
    let queued = queued_ms(&resp);
    // The catalog's 2/s cut to 1.4/s: one interval is 714 ms.
    assert!(
        queued >= 650,
        "the retry waited for the slowed bucket: {queued} ms"
    );

    h.sim.answer_next(AmazonAnswer::QuotaExceeded, 1);
    let resp = h
        .client
        .post(h.url("/reports/2021-06-30/reports"))
        .body(r#"{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "POST is never repeated");
    assert!(
        resp.headers().get("x-spapi-proxy-error").is_none(),
        "Amazon's 429, untouched"
    );
    assert_eq!(json(resp).await["errors"][0]["code"], "QuotaExceeded");
}

/// Amazon's 429 slows the bucket down even when the request is not retried: with
/// `throttle_retries = 0`, and for a POST that is never repeated.
#[tokio::test]
async fn a_429_slows_the_bucket_whether_or_not_it_is_retried() {
    let h = Harness::limited(
        "throttle_retries = 0\n[operations.getCatalogItem]\nrate = 2.0\nburst = 2\n",
    )
    .await;
    let item = "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER";
    let bucket = |quota: &serde_json::Value, op: &str| {
        quota["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["operation"].as_str().is_some_and(|o| o.ends_with(op)))
            .cloned()
            .unwrap_or_else(|| panic!("no {op} bucket: {quota}"))
    };
    h.sim.answer_next(AmazonAnswer::QuotaExceeded, 1);
    let resp = h.get(item).await;
    assert_eq!(resp.status(), 429, "not retried: throttle_retries = 0");
    let quota = json(h.get("/_proxy/quota").await).await;
    let catalog = bucket(&quota, "getCatalogItem");
    assert_eq!(catalog["rate_source"], "throttled", "{catalog}");
    assert!(catalog["rate"].as_f64().unwrap() < 2.0, "{catalog}");
}

#[tokio::test]
async fn max_wait_refuses_locally_with_retry_after() {
    let h = Harness::limited("[operations.getCatalogItem]\nrate = 2.0\nburst = 2\n").await;
    let item = "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER";
    for _ in 0..2 {
        let resp = h.get(item).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-spapi-proxy-queued-ms"));
    }
    let resp = h.get_with(item, "x-spapi-max-wait", "0").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "rate_limited");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(json(resp).await["errors"][0]["code"], "QuotaExceeded");
    assert_eq!(h.sim.requests().len(), 2, "Amazon was not called");

    let resp = h.get(item).await;
    assert_eq!(resp.status(), 200);
    let queued = queued_ms(&resp);
    assert!(queued >= 300, "waited for the next token: {queued} ms");

    let resp = h.get_with(item, "x-spapi-max-wait", "soon").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn the_quota_endpoint_shows_every_active_bucket() {
    let h = Harness::limited("").await;
    h.get("/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER")
        .await;
    h.get("/no/such/api").await;
    let quota = json(h.get("/_proxy/quota").await).await;
    assert_eq!(quota["rate_limit"], true);
    let buckets: HashMap<String, serde_json::Value> = quota["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["operation"].as_str().unwrap().to_string(), b.clone()))
        .collect();
    let item = &buckets["catalogItems_2022-04-01.getCatalogItem"];
    assert_eq!(item["seller"], "default");
    assert_eq!(item["rate"], 2.0);
    assert_eq!(item["burst"], 2);
    assert_eq!(item["waiting"], 0);
    assert_eq!(
        item["rate_source"], "amazon",
        "the simulator sent x-amzn-RateLimit-Limit"
    );
    assert!(item["tokens_available"].as_f64().unwrap() <= 2.0);
    let unknown = &buckets["unknown"];
    assert_eq!(unknown["rate"], 1.0);
    assert_eq!(unknown["burst"], 5);
    assert_eq!(unknown["rate_source"], "default");
}

#[tokio::test]
async fn with_rate_limit_off_the_proxy_only_forwards() {
    let h = Harness::with_config("rate_limit = false").await;
    for _ in 0..10 {
        let resp = h
            .get("/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER")
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-spapi-proxy-queued-ms"], "0");
    }
    let quota = json(h.get("/_proxy/quota").await).await;
    assert_eq!(quota["rate_limit"], false);
    assert!(quota["buckets"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_client_that_hangs_up_while_queued_leaves_the_queue() {
    let h = Harness::limited("[operations.getCatalogItem]\nrate = 0.2\nburst = 1\n").await;
    let item = "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER";
    assert_eq!(h.get(item).await.status(), 200);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        impatient.get(h.url(item)).send().await.is_err(),
        "gave up while queued"
    );
    drop(impatient);
    let waiting = |q: &serde_json::Value| q["buckets"][0]["waiting"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let quota = json(h.get("/_proxy/quota").await).await;
        if waiting(&quota) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {quota}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its token was not used: the next request gets the token the bucket refills first.
    let resp = h.get(item).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        h.sim.requests().len(),
        2,
        "the abandoned request never reached Amazon"
    );
}

/// An outside tool drawing on the same quota: every `1/rate` s it sends getOrder straight to
/// Amazon with its own LWA token until `stop_at`. Returns (accepted, refused).
async fn outside_caller(h: &Harness, rate: f64, stop_at: Instant) -> (u64, u64) {
    let client = reqwest::Client::new();
    let token = client
        .post(h.sim.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", spapi_proxy::sim::SIM_REFRESH_TOKEN),
            ("client_id", spapi_proxy::sim::SIM_CLIENT_ID),
            ("client_secret", spapi_proxy::sim::SIM_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    let token = json(token).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/orders/v0/orders/902-3159896-1390916", h.sim.url());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let (mut accepted, mut refused) = (0, 0);
    while Instant::now() < stop_at {
        tick.tick().await;
        let resp = client
            .get(&url)
            .header("x-amz-access-token", &token)
            .header("user-agent", "outside-tool")
            .header(
                "x-amz-date",
                spapi_proxy::forward::amz_date(std::time::SystemTime::now()),
            )
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            429 => refused += 1,
            s => {
                assert!(s < 300, "{s}");
                accepted += 1
            }
        }
    }
    (accepted, refused)
}

/// `clients` tasks send getOrder through the proxy back to back until `stop_at`; returns each
/// request's latency. Amazon's 429s reach them only if retries run out.
async fn closed_loop(h: &Harness, clients: usize, stop_at: Instant) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = h.client.clone();
        let url = h.url("/orders/v0/orders/902-3159896-1390916");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop_at {
                let started = Instant::now();
                let resp = client.get(&url).send().await.unwrap();
                latencies.push(started.elapsed());
                if resp.status() == 429 && resp.headers().contains_key("x-spapi-proxy-error") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// Issue 19's first acceptance point: the proxy at full load shares getOrder's bucket (50/s,
/// burst 30 here) with a tool that takes 30 % of it directly. The proxy learns what is left
/// and paces to it: at most 1 % of its upstream requests draw Amazon's 429, it uses at least
/// 95 % of the quota the other tool leaves, and its p99 is at most 2 s worse than alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_caller_on_the_same_quota_is_paced_around() {
    let h = Harness::limited("").await;
    h.sim.enforce_rate_limits(true);
    h.sim.set_rate("ordersV0.getOrder", 50.0);
    let (rate, burst, clients) = (50.0, 30.0, 20);

    // Alone, for the baseline p99.
    let alone = closed_loop(&h, clients, Instant::now() + Duration::from_secs(6)).await;
    assert_eq!(h.sim.throttled(), 0, "alone, the proxy drew no 429");
    let before = h.sim.requests().len();

    // Let Amazon's bucket fill again, then share it.
    tokio::time::sleep(Duration::from_secs_f64(burst / rate + 0.5)).await;
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(20);
    let (shared, (outside_ok, outside_refused)) = tokio::join!(
        closed_loop(&h, clients, stop_at),
        outside_caller(&h, 0.3 * rate, stop_at)
    );
    let span = started.elapsed().as_secs_f64();
    let requests = h.sim.requests();
    let ours: Vec<_> = requests[before..]
        .iter()
        .filter(|r| r.header_values("user-agent") != ["outside-tool"])
        .collect();
    let ours_429 = ours.iter().filter(|r| r.status == 429).count();
    let times: Vec<String> = ours
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| format!("{:.2}", (r.at - started).as_secs_f64()))
        .collect();
    eprintln!("429 at {times:?}");
    let ours_ok = ours.iter().filter(|r| r.status < 300).count();
    let capacity = burst + rate * span;
    let left = capacity - outside_ok as f64;
    let used = ours_ok as f64 / left;
    eprintln!(
        "outside caller: {outside_ok} accepted, {outside_refused} refused; proxy: {} upstream, \
         {ours_429} answered 429 ({:.2} %), {ours_ok} accepted = {:.1} % of the {left:.0} left; \
         p99 alone {:?}, shared {:?}",
        ours.len(),
        100.0 * ours_429 as f64 / ours.len() as f64,
        100.0 * used,
        p99(&alone),
        p99(&shared),
    );
    assert!(
        ours_429 as f64 <= 0.01 * ours.len() as f64,
        "{ours_429} of {} throttled",
        ours.len()
    );
    assert!(used >= 0.95, "{:.1} % of what was left", 100.0 * used);
    assert!(p99(&shared) <= p99(&alone) + Duration::from_secs(2));
}
