//! What an operator sees: metrics and the per-request log line.

use std::collections::HashMap;

use spapi_proxy::sim::{AmazonAnswer, Simulator, SIM_REFRESH_TOKEN};

use crate::cli::LoggedProxy;
use crate::support::Harness;

/// `/_proxy/metrics` in OpenMetrics, as series name with labels -> value.
async fn scrape(h: &Harness) -> HashMap<String, f64> {
    let resp = h
        .get_with(
            "/_proxy/metrics",
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    series(&text)
}

/// Sample lines as series name with labels -> value.
pub fn series(text: &str) -> HashMap<String, f64> {
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
    let op = r#"{seller="observed",api="sellers",operation="getMarketplaceParticipations"}"#;
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
            r#"spapi_proxy_local_throttled_total{seller="observed",api="ordersV0",operation="getOrders"}"#
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
            r#"spapi_proxy_queue_wait_seconds_count{api="sellers",operation="getMarketplaceParticipations"}"#
        ) >= 5.0
    );
    assert!(
        value(
            &after,
            r#"spapi_proxy_upstream_duration_seconds_count{api="ordersV0",operation="getOrderItems"}"#
        ) >= 20.0
    );
    let bucket =
        r#"{seller="observed",region="na",api="sellers",operation="getMarketplaceParticipations"}"#;
    // Every bucket's throttle and error series are there at 0 before anything happens.
    let quiet = r#"{seller="observed",api="ordersV0",operation="getOrderItems"}"#;
    for family in ["amazon_errors", "amazon_throttled", "local_throttled"] {
        let name = format!("spapi_proxy_{family}_total{quiet}");
        assert_eq!(after.get(&name), Some(&0.0), "{name}: {after:#?}");
    }
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

/// A proxy with traffic behind it: buckets, tokens and a throttled operation to show.
/// Metrics are process-wide, so each test names its own seller to count its own 429s.
async fn busy_harness(seller: &str) -> Harness {
    let h = Harness::limited(&format!(
        "[sellers.{seller}]\nrefresh_token = \"{SIM_REFRESH_TOKEN}\"\ndefault = true\n\
         [operations.getOrders]\nrate = 0.01\nburst = 1\n"
    ))
    .await;
    assert_eq!(
        h.get("/sellers/v1/marketplaceParticipations")
            .await
            .status(),
        200
    );
    assert_eq!(h.get("/notifications/v1/destinations").await.status(), 200);
    let orders = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER";
    assert_eq!(
        h.get_with(orders, "x-spapi-max-wait", "0").await.status(),
        200
    );
    assert_eq!(
        h.get_with(orders, "x-spapi-max-wait", "0").await.status(),
        429
    );
    h
}

#[tokio::test]
async fn the_status_page_shows_buckets_tokens_and_sellers_but_no_secret() {
    let h = busy_harness("paged").await;
    let resp = h.get("/_proxy/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("<meta http-equiv=\"refresh\""),
        "reloads itself"
    );
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
    assert!(
        html.contains(
            "<td>paged (default)</td><td>na</td><td><span class=\"ok\">healthy</span></td><td>age "
        ),
        "{html}"
    );
    assert!(
        html.contains("<td>sellingpartnerapi::notifications</td><td>age "),
        "{html}"
    );
    // getOrders: its one token taken, one local 429; the rate is the configured one, a
    // ceiling the simulator's higher x-amzn-RateLimit-Limit (0.0167) cannot lift.
    assert!(
        html.contains("<td>paged</td><td>na</td><td>ordersV0.getOrders</td>"),
        "{html}"
    );
    let row = html
        .split("<tr class=\"bucket\">")
        .find(|r| r.contains("ordersV0.getOrders"))
        .unwrap();
    assert!(
        row.contains("0.0 / 1</td><td>0.01</td><td>config</td><td>0</td><td>1, last ")
            && row.ends_with("s ago</td><td>0</td></tr>"),
        "{row}"
    );
    for token in h.sim.issued_tokens() {
        assert!(!html.contains(&token), "a token on the page");
    }
    assert!(!html.contains(SIM_REFRESH_TOKEN));
}

#[tokio::test]
async fn a_token_refresh_fetches_new_tokens_now() {
    let h = busy_harness("refreshed").await;
    let before = h.sim.lwa_calls();
    let resp = h
        .client
        .post(h.url("/_proxy/tokens/refresh?seller=refreshed"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = crate::support::json(resp).await;
    assert_eq!(body["ok"], true);
    assert_eq!(body["tokens"]["refreshed@na"]["refreshed"], true);
    assert_eq!(h.sim.lwa_calls(), before + 1);
    let resp = h
        .client
        .post(h.url("/_proxy/tokens/refresh?seller=nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// chromedriver on a free loopback port, or `None` (with the reason) where it is not installed.
/// A headless chromium session through the chromedriver at `webdriver`.
pub(crate) async fn headless_chromium(webdriver: &str) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    // The WebDriver link is plain HTTP, but its client wants a TLS provider chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    fantoccini::ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a chromium session")
}

pub(crate) async fn chromedriver() -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt as _;
    let binary = ["chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or("no chromedriver on this machine (.ci/run installs Debian's chromium-driver)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut child = tokio::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    // It says so on stdout once it listens.
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if line.contains("started successfully") {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, format!("http://127.0.0.1:{port}")));
        }
    }
    Err("chromedriver exited before listening".into())
}

#[tokio::test]
async fn the_status_page_in_a_headless_browser() {
    use fantoccini::Locator;
    let (_driver, webdriver) = match chromedriver().await {
        Ok(d) => d,
        Err(why) => {
            crate::support::skip("the headless-browser test", &why);
            return;
        }
    };
    let h = std::sync::Arc::new(busy_harness("browsed").await);
    // Load behind the page while the browser renders it.
    let load = {
        let h = std::sync::Arc::clone(&h);
        tokio::spawn(async move {
            // Past its burst of 15, the local limiter answers 429 at once (max wait 0).
            for _ in 0..200 {
                let status = h
                    .get_with(
                        "/sellers/v1/marketplaceParticipations",
                        "x-spapi-max-wait",
                        "0",
                    )
                    .await
                    .status();
                assert!(status == 200 || status == 429, "{status}");
            }
        })
    };
    let browser = headless_chromium(&webdriver).await;
    browser.goto(&h.url("/_proxy/")).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "spapi-proxy status");

    let rows = |table: &'static str| {
        let browser = &browser;
        async move {
            let mut out = Vec::new();
            for row in browser.find_all(Locator::Css(table)).await? {
                out.push(row.text().await?);
            }
            Ok::<_, fantoccini::error::CmdError>(out)
        }
    };
    let sellers = rows("#sellers tr.seller").await.unwrap();
    assert!(
        sellers
            .iter()
            .any(|r| r.starts_with("browsed (default) na healthy age ")
                && r.contains(", refresh in ")),
        "{sellers:?}"
    );
    let orders = |rows: &[String]| {
        rows.iter()
            .find(|r| r.contains("ordersV0.getOrders"))
            .cloned()
            .unwrap_or_default()
    };
    let buckets = rows("#buckets tr.bucket").await.unwrap();
    // seller, region, operation, fill, rate, source, waiting, local 429s (and when the last
    // was), Amazon 429s.
    let row = orders(&buckets);
    assert!(
        row.contains("0.0 / 1 0.01 config 0 1, last ") && row.ends_with("s ago 0"),
        "{buckets:?}"
    );
    assert!(
        buckets
            .iter()
            .any(|r| r.contains("sellers.getMarketplaceParticipations")),
        "{buckets:?}"
    );
    load.await.unwrap();

    // One more local 429; the page reloads itself and shows it, with no one touching it.
    let orders_path = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER";
    assert_eq!(
        h.get_with(orders_path, "x-spapi-max-wait", "0")
            .await
            .status(),
        429
    );
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            // Mid-reload, the rows read may vanish under the driver: read again.
            if let Ok(buckets) = rows("#buckets tr.bucket").await {
                if orders(&buckets).contains(" config 0 2, last ") {
                    return buckets;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    browser.close().await.unwrap();
    assert!(
        seen.is_ok(),
        "the page never reloaded to show the second 429"
    );
}
