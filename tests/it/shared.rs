//! Replicas sharing buckets and tokens through a real Redis (`shared_state`), started here on a
//! free loopback port; several proxies in front of one simulator, whose buckets are keyed like
//! Amazon's (application + seller, per operation).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use spapi_proxy::limiter::pacing::{Pacing, Slot};
use spapi_proxy::limiter::store::Shape;
use spapi_proxy::shared::buckets::{step, Step};

use crate::support::{config_for, json, skip, Harness, Replica};

const KEY: &str = "0123456789abcdef0123456789abcdef-test";

/// A redis-server of our own; killed when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or says why it cannot (the test then calls `skip`).
    async fn start() -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut r = RedisServer { port, child: None };
        r.run().await?;
        Ok(r)
    }

    async fn run(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (Debian package redis-server)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.conn().await {
                if redis::cmd("PING").query_async::<()>(&mut c).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("redis-server did not answer within 10 s".into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().await.unwrap();
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis_or_skip(test: &str) -> Option<RedisServer> {
    match RedisServer::start().await {
        Ok(r) => Some(r),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// A harness (the simulator and the first proxy) and `n - 1` more proxies, all configured by
/// `toml` with the shared state in `redis`.
async fn replicas(
    redis: &RedisServer,
    n: usize,
    toml: &str,
) -> (Harness, Vec<Replica>, Vec<String>) {
    let toml = format!(
        "shared_state = \"{}\"\nshared_state_key = \"{KEY}\"\nreplicas = {n}\n{toml}",
        redis.url()
    );
    let sim = spapi_proxy::sim::Simulator::start().await.unwrap();
    let config = config_for(&sim, &toml);
    let h = Harness::with(sim, config.clone()).await;
    let mut others = Vec::new();
    for _ in 1..n {
        others.push(h.replica(&config).await);
    }
    let mut urls = vec![h.url.clone()];
    urls.extend(others.iter().map(|r| r.url.clone()));
    (h, others, urls)
}

/// `clients` per replica send `path` back to back until `stop_at`; answers by status.
async fn load(urls: &[String], path: &str, clients: usize, stop_at: Instant) -> Vec<u16> {
    let mut tasks = Vec::new();
    for url in urls {
        for _ in 0..clients {
            let client = crate::support::client();
            let url = format!("{url}{path}");
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                while Instant::now() < stop_at {
                    let max_wait = stop_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                        .max(0.0);
                    let Ok(resp) = client
                        .get(&url)
                        .header("x-spapi-max-wait", format!("{max_wait:.3}"))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    statuses.push(resp.status().as_u16());
                    if resp.headers().contains_key("x-spapi-proxy-error") {
                        // The proxy's own refusal (no slot before stop_at): wait for the end.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                statuses
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Three replicas, two operations at full load for 20 s: Amazon never answers 429, and the
/// replicas together get at least 95 % of the published plans (burst + rate x time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_each_bucket_through_redis() {
    let Some(redis) = redis_or_skip("three_replicas_share_each_bucket_through_redis").await else {
        return;
    };
    let (h, _others, urls) = replicas(&redis, 3, "rate_limit = true").await;
    h.sim.enforce_rate_limits(true);
    // Published plans (the catalog): getReport 2/s burst 15, getCatalogItem 2/s burst 2.
    let plans = [
        (
            "/reports/2021-06-30/reports/50001",
            "reports_2021-06-30.getReport",
            2.0,
            15.0,
        ),
        (
            "/catalog/2022-04-01/items/B0TEST?marketplaceIds=ATVPDKIKX0DER",
            "catalogItems_2022-04-01.getCatalogItem",
            2.0,
            2.0,
        ),
    ];
    let span = Duration::from_secs(20);
    let started = Instant::now();
    let stop_at = started + span;
    let (a, b) = tokio::join!(
        load(&urls, plans[0].0, 4, stop_at),
        load(&urls, plans[1].0, 4, stop_at)
    );
    let requests = h.sim.requests();
    assert_eq!(
        h.sim.throttled(),
        0,
        "Amazon answered 429 to replicas sharing their buckets"
    );
    let mut report = Vec::new();
    for ((path, name, rate, burst), statuses) in plans.iter().zip([a, b]) {
        let _ = path;
        let sent: Vec<_> = requests
            .iter()
            .filter(|r| r.operation.as_deref() == Some(*name) && r.status == 200)
            .collect();
        let first = sent.first().map_or(started, |r| r.at);
        let window = stop_at.saturating_duration_since(first).as_secs_f64();
        let theoretical = burst + rate * window;
        let share = sent.len() as f64 / theoretical;
        report.push(format!(
            "{name}: {} accepted of {theoretical:.1} ({:.1} %), {} client answers",
            sent.len(),
            share * 100.0,
            statuses.len()
        ));
        assert!(share >= 0.95, "{report:?}");
    }
    eprintln!("three replicas: {report:?}");
    // The buckets are in Redis, under their stable names.
    let keys = redis.keys("spapi-proxy:bucket:*").await;
    assert!(
        keys.iter()
            .any(|k| k.contains(":default:na:reports_2021-06-30.getReport:")),
        "{keys:?}"
    );
}

/// 200 requests at once for a restricted operation, spread over three replicas: one LWA call
/// and one RDT mint between them, and the tokens in Redis are not readable as tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fetch_one_token_and_mint_one_rdt() {
    let Some(redis) = redis_or_skip("replicas_fetch_one_token_and_mint_one_rdt").await else {
        return;
    };
    let (h, _others, urls) = replicas(&redis, 3, "rate_limit = false").await;
    h.sim.set_lwa_latency(Duration::from_millis(100));
    let client = crate::support::client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = format!(
            "{}/orders/v0/orders/902-3159896-1390916/address",
            urls[i % urls.len()]
        );
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.sim.lwa_calls(), 1, "one LWA call for all replicas");
    assert_eq!(h.sim.rdt_mints().len(), 1, "one RDT mint for all replicas");
    let keys = redis.keys("spapi-proxy:token:*").await;
    assert_eq!(keys.len(), 2, "the LWA token and the RDT: {keys:?}");
    let mut c = redis.conn().await.unwrap();
    for key in &keys {
        let sealed: Vec<u8> = redis::cmd("HGET")
            .arg(key)
            .arg("sealed")
            .query_async(&mut c)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&sealed);
        for issued in h.sim.issued_tokens() {
            assert!(!text.contains(&issued), "a token is readable in Redis");
        }
        assert!(!key.contains(spapi_proxy::sim::SIM_REFRESH_TOKEN));
    }
}

/// Redis dies mid-run: requests keep flowing within each replica's share (429s at most 5 %),
/// `/_proxy/ready` says so, and when Redis is back the buckets are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_replicas_fall_back_to_their_share_and_resume() {
    let Some(mut redis) =
        redis_or_skip("when_redis_dies_replicas_fall_back_to_their_share_and_resume").await
    else {
        return;
    };
    let (h, _others, urls) = replicas(
        &redis,
        3,
        "rate_limit = true\n[operations.ordersV0.getOrder]\nrate = 10\nburst = 10\n",
    )
    .await;
    h.sim.enforce_rate_limits(true);
    h.sim.set_rate("ordersV0.getOrder", 10.0);
    let path = "/orders/v0/orders/902-3159896-1390916";
    let phase = Duration::from_secs(6);
    let client = crate::support::client();
    let shared_up = |url: String| {
        let client = client.clone();
        async move {
            let ready = json(
                client
                    .get(format!("{url}/_proxy/ready"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            ready["shared_state"]["up"].clone()
        }
    };
    assert_eq!(shared_up(urls[0].clone()).await, true);

    let before = h.sim.requests().len();
    load(&urls, path, 4, Instant::now() + phase).await;
    let shared_phase = h.sim.requests().len() - before;

    redis.kill();
    let outage_started = Instant::now();
    let during = h.sim.requests().len();
    load(&urls, path, 4, Instant::now() + phase).await;
    let outage = h.sim.requests().len() - during;
    let outage_span = outage_started.elapsed().as_secs_f64();
    for url in &urls {
        assert_eq!(
            shared_up(url.clone()).await,
            false,
            "{url} says Redis is down"
        );
    }

    redis.run().await.unwrap();
    // The probe reconnects within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in &urls {
        while shared_up(url.clone()).await != true {
            assert!(Instant::now() < deadline, "{url} never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = h.sim.requests().len();
    load(&urls, path, 4, Instant::now() + phase).await;
    let resumed = h.sim.requests().len() - after;

    let total = h.sim.requests().len() - before;
    let throttled = h.sim.throttled();
    eprintln!(
        "redis outage: {shared_phase} sent shared, {outage} during the outage ({outage_span:.1} s), \
         {resumed} after; {throttled} of {total} answered 429"
    );
    assert!(
        (throttled as f64) <= 0.05 * total as f64,
        "{throttled} of {total} answered 429"
    );
    // During the outage each replica sends its share: together at most the plan, and not
    // nothing.
    assert!(outage > 0, "nothing was sent while Redis was down");
    assert!(
        outage as f64 <= 10.0 * outage_span + 10.0,
        "{outage} sent in {outage_span:.1} s while Redis was down: more than the plan"
    );
    // Shared again: the bucket is back in Redis.
    assert!(
        !redis.keys("spapi-proxy:bucket:*getOrder*").await.is_empty(),
        "the bucket is not in Redis after it came back"
    );
    assert!(
        resumed as f64 >= 0.9 * 10.0 * phase.as_secs_f64() - 10.0,
        "{resumed} after the restart"
    );
}

/// The Lua script and `Pacing` take the same steps: one script of events through both gives
/// the same slots and readings.
#[tokio::test]
async fn the_lua_pacing_step_matches_the_rust_one() {
    let Some(redis) = redis_or_skip("the_lua_pacing_step_matches_the_rust_one").await else {
        return;
    };
    let mut conn = redis.conn().await.unwrap();
    for hard in [None, Some(3.0)] {
        let shape = Shape {
            rate: 5.0,
            burst: 4,
            hard_ceiling: hard,
        };
        let key = format!("spapi-proxy:test:{hard:?}");
        let mut rust = Pacing::new(100.0, shape.rate, shape.burst, shape.hard_ceiling, 4.0);
        let mut last_slot: Option<Slot> = None;
        // (at, step, argument)
        let events: Vec<(f64, Step, f64)> = vec![
            (100.0, Step::Reserve, 60.0),
            (100.0, Step::Reserve, 60.0),
            (100.0, Step::Reserve, 60.0),
            (100.0, Step::Reserve, 60.0),
            (100.0, Step::Reserve, 60.0),
            (100.0, Step::Reserve, 0.1),
            (100.1, Step::Release, -1.0),
            (100.2, Step::Observe, 8.0),
            (100.3, Step::Reserve, 60.0),
            (100.5, Step::Throttled, 0.1),
            (100.6, Step::Throttled, 0.0),
            (101.0, Step::Reserve, 60.0),
            (103.0, Step::Reserve, 60.0),
            (103.0, Step::Reserve, 60.0),
            (104.0, Step::Throttled, 0.2),
            (104.1, Step::Observe, 2.0),
            (110.0, Step::Reserve, 60.0),
            (110.0, Step::Read, 0.0),
            (190.0, Step::Read, 0.0),
        ];
        for (i, (at, what, arg)) in events.into_iter().enumerate() {
            // Release gives back the last slot reserved.
            let arg = if what == Step::Release {
                last_slot.map_or(0.0, |s| s.seq as f64)
            } else {
                arg
            };
            let answer = step(&mut conn, &key, &shape, 4.0, what, arg, Some(at), false)
                .await
                .unwrap();
            match what {
                Step::Reserve => {
                    let ours = rust.reserve(at, arg);
                    if let Ok(s) = ours {
                        last_slot = Some(s);
                    }
                    match (ours, answer.slot.unwrap()) {
                        (Ok(a), Ok(b)) => {
                            assert!((a.wait - b.wait).abs() < 1e-9, "{i}: {a:?} {b:?}");
                            assert_eq!((a.left, a.seq), (b.left, b.seq), "{i}");
                        }
                        (Err(a), Err(b)) => assert!((a - b).abs() < 1e-9, "{i}: {a} {b}"),
                        (a, b) => panic!("{i}: Rust {a:?}, Lua {b:?}"),
                    }
                }
                Step::Release => {
                    if let Some(s) = &last_slot {
                        rust.release(at, s);
                    }
                }
                Step::Throttled => rust.throttled(at, arg),
                Step::Observe => rust.observe(at, arg),
                Step::Read => {}
            }
            let r = rust.reading(at);
            let l = answer.reading;
            assert!(
                (r.rate - l.rate).abs() < 1e-9,
                "{i} {what:?}: rate {r:?} {l:?}"
            );
            assert!(
                (r.tokens - l.tokens).abs() < 1e-6,
                "{i} {what:?}: tokens {r:?} {l:?}"
            );
            assert_eq!(r.throttled, l.throttled, "{i} {what:?}");
        }
    }
}

/// With `shared_state`, onboarding keeps the seller in Redis, sealed: another replica loading
/// its config finds it and serves it; revoking removes it there.
#[tokio::test]
async fn onboarded_sellers_are_kept_in_redis_for_every_replica() {
    let Some(redis) = redis_or_skip("onboarded_sellers_are_kept_in_redis_for_every_replica").await
    else {
        return;
    };
    let store = format!(
        "shared_state = \"{}\"\nshared_state_key = \"{KEY}\"\n",
        redis.url()
    );
    let (h, toml) = crate::onboarding::onboarding_harness_with(false, &store).await;
    let callback = crate::onboarding::consent(&h, "newco", None).await;
    let done = crate::support::client()
        .get(&callback)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    let mut c = redis.conn().await.unwrap();
    let stored: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("spapi-proxy:sellers")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "newco");
    let sealed = String::from_utf8_lossy(&stored[0].1).into_owned();
    assert!(
        !sealed.contains("Atzr|"),
        "the refresh token is readable in Redis"
    );

    // Another replica, starting now from the same config, finds the seller in Redis and
    // serves it.
    let config = config_for(&h.sim, &toml);
    assert!(
        !config.sellers.iter().any(|s| s.name == "newco"),
        "parsing does no I/O"
    );
    let replica = h.replica(&config).await;
    let resp = crate::support::client()
        .get(format!(
            "{}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER",
            replica.url
        ))
        .header("x-spapi-seller", "newco")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Revoked: gone from Redis.
    let revoked = crate::support::client()
        .post(h.url("/_proxy/sellers/revoke?seller=newco"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let left: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("spapi-proxy:sellers")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty());
}
