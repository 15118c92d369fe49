//! Rate-limit benchmark: a mixed workload through the proxy against the simulator, which enforces
//! Amazon's published usage plans. Prints upstream 429s, achieved vs theoretical rate per
//! operation, and p50/p99 queue wait.
//!
//! `cargo run --release --example ratelimit -- [SECONDS] [CLIENTS]` (default 20 s, 200 clients).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spapi_proxy::config::Config;
use spapi_proxy::operations::Catalog;
use spapi_proxy::proxy::Proxy;
use spapi_proxy::server;
use spapi_proxy::sim::{self, Simulator};
use tokio::net::TcpListener;
use tokio::time::Instant;

const WORKLOAD: [(&str, &str); 5] = [
    (
        "catalogItems_2022-04-01.getCatalogItem",
        "/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER",
    ),
    (
        "reports_2021-06-30.getReport",
        "/reports/2021-06-30/reports/50001",
    ),
    ("ordersV0.getOrder", "/orders/v0/orders/902-3159896-1390916"),
    (
        "ordersV0.getOrderItems",
        "/orders/v0/orders/902-3159896-1390916/orderItems",
    ),
    (
        "sellers.getMarketplaceParticipations",
        "/sellers/v1/marketplaceParticipations",
    ),
];

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);

    let simulator = Simulator::start().await.expect("simulator");
    simulator.enforce_rate_limits(true);
    let env: HashMap<&str, String> = [
        ("SPAPI_ENDPOINT", simulator.url()),
        ("SPAPI_TOKEN_URL", simulator.token_url()),
        ("SPAPI_CLIENT_ID", sim::SIM_CLIENT_ID.into()),
        ("SPAPI_CLIENT_SECRET", sim::SIM_CLIENT_SECRET.into()),
        ("SPAPI_REFRESH_TOKEN", sim::SIM_REFRESH_TOKEN.into()),
    ]
    .into_iter()
    .collect();
    let config = Config::from_toml_str("", "bench", &|k| env.get(k).cloned()).expect("config");
    let proxy = Arc::new(Proxy::new(&config).expect("proxy"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(server::serve(
        listener,
        proxy,
        std::future::pending(),
        server::ServerSettings::from_config(&config),
    ));

    let waits: Arc<Mutex<HashMap<&str, Vec<u64>>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0u64));
    let client = reqwest::Client::new();
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (op, path) = WORKLOAD[i % WORKLOAD.len()];
        let url = format!("{base}{path}");
        let (client, waits, refused) = (client.clone(), Arc::clone(&waits), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(resp) = client.get(&url).send().await else {
                    continue;
                };
                if resp.headers().contains_key("x-spapi-proxy-error") {
                    *refused.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let queued = resp
                    .headers()
                    .get("x-spapi-proxy-queued-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                waits.lock().unwrap().entry(op).or_default().push(queued);
            }
        }));
    }
    tokio::time::sleep_until(stop_at).await;
    for t in &tasks {
        t.abort();
    }

    let catalog = Catalog::builtin();
    let requests = simulator.requests();
    println!(
        "{seconds} s, {clients} clients, {} operations; upstream 429s: {}; requests refused locally (max_wait): {}",
        WORKLOAD.len(),
        simulator.throttled(),
        refused.lock().unwrap()
    );
    println!(
        "{:<42} {:>6} {:>5} {:>8} {:>8} {:>11} {:>8} {:>9} {:>9}",
        "operation",
        "rate",
        "burst",
        "accepted",
        "span s",
        "theoretical",
        "achieved",
        "p50 wait",
        "p99 wait"
    );
    for (op, _) in WORKLOAD {
        let (api, id) = op.split_once('.').expect("qualified");
        let o = catalog.by_qualified(api, id).expect("in the catalog");
        let (rate, burst) = (o.rate.unwrap_or(1.0), f64::from(o.burst.unwrap_or(5)));
        let times: Vec<Instant> = requests
            .iter()
            .filter(|r| r.operation.as_deref() == Some(op) && r.status < 300)
            .map(|r| r.at)
            .collect();
        let span = match (times.first(), times.last()) {
            (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
            _ => 0.0,
        };
        let theoretical = burst + rate * span;
        let mut w = waits.lock().unwrap().get(op).cloned().unwrap_or_default();
        w.sort_unstable();
        println!(
            "{op:<42} {rate:>6} {burst:>5} {:>8} {span:>8.2} {theoretical:>11.1} {:>7.1}% {:>7}ms {:>7}ms",
            times.len(),
            100.0 * times.len() as f64 / theoretical.max(1.0),
            percentile(&w, 0.5),
            percentile(&w, 0.99),
        );
    }
}
