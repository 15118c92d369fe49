//! Never an open door: inbound keys, browsers, Host, connection hygiene and hostile input,
//! against the real proxy (and the real binary where start-up rules are concerned).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spapi_proxy::sim::Simulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::{command, scratch_dir, serve_under_nofile, LoggedProxy, BIN};
use crate::support::{json, raw, raw_status, sim_env, Harness};

const KEY: &str = "test-key-0123456789abcdef";
const PARTICIPATIONS: &str = "/sellers/v1/marketplaceParticipations";

#[tokio::test]
async fn with_keys_set_every_request_but_health_needs_one() {
    let h = Harness::with_config(&format!("inbound_keys = [\"{KEY}\"]")).await;
    let resp = h.get(PARTICIPATIONS).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "unauthorized");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(json(resp).await["errors"][0]["code"], "Unauthorized");
    let wrong = h
        .get_with(
            PARTICIPATIONS,
            "x-spapi-proxy-key",
            "wrong-key-0123456789abcd",
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(h.sim.lwa_calls(), 0, "refused before any token call");

    let by_header = h.get_with(PARTICIPATIONS, "x-spapi-proxy-key", KEY).await;
    assert_eq!(by_header.status(), 200);
    let by_bearer = h
        .get_with(PARTICIPATIONS, "authorization", &format!("Bearer {KEY}"))
        .await;
    assert_eq!(by_bearer.status(), 200);
    for r in h.sim.requests() {
        assert!(
            r.header_values("x-spapi-proxy-key").is_empty(),
            "never forwarded"
        );
        assert!(
            r.header_values("authorization").is_empty(),
            "never forwarded"
        );
    }

    assert_eq!(
        h.get("/_proxy/health").await.status(),
        200,
        "open for health checks"
    );
    for own in ["/_proxy/quota", "/_proxy/ready", "/_proxy/status"] {
        assert_eq!(h.get(own).await.status(), 401, "{own}");
        assert_eq!(
            h.get_with(own, "x-spapi-proxy-key", KEY).await.status(),
            200,
            "{own}"
        );
    }
}

#[test]
fn a_public_address_without_a_key_is_refused_at_start_up() {
    let dir = scratch_dir("exposed");
    #[allow(clippy::type_complexity, reason = "a test table")]
    let cases: [(&str, &[&str], &[(&str, &str)]); 3] = [
        ("env", &["serve"], &[("SPAPI_LISTEN", "0.0.0.0:0")]),
        ("flag", &["serve", "--listen", "0.0.0.0:0"], &[]),
        ("demo", &["demo", "--listen", "0.0.0.0:0"], &[]),
    ];
    for (name, args, env) in cases {
        let out = command(&dir)
            .args(args)
            .env("SPAPI_CLIENT_ID", "a")
            .env("SPAPI_CLIENT_SECRET", "b")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains("inbound_keys"), "{name}: {stderr}");
        assert!(stderr.contains("SPAPI_PROXY_KEYS"), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn a_public_address_with_a_key_serves_by_header_and_bearer() {
    let sim = Simulator::start().await.unwrap();
    let mut cmd = command(&scratch_dir("public"));
    cmd.args(["serve", "--listen", "0.0.0.0:0"])
        .envs(sim_env(&sim))
        .env("SPAPI_PROXY_KEYS", format!("other-key-0123456789abc,{KEY}"))
        .env("RUST_LOG", "info");
    let proxy = LoggedProxy::spawn(cmd);
    let port = proxy.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}{PARTICIPATIONS}");
    let client = crate::support::client();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let resp = client
        .get(&url)
        .header("x-spapi-proxy-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let health = Command::new(BIN)
        .args(["health", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    let logs = proxy.stop();
    assert!(!logs.contains(KEY), "the key is never logged");
}

#[test]
fn health_fails_when_nothing_answers() {
    let out = Command::new(BIN)
        .args(["health", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn web_pages_of_other_sites_are_refused_before_any_token_call() {
    let h = Harness::start().await;
    // A form POST from a page the seller opened: text/plain, cross-site.
    let resp = h
        .client
        .post(h.url("/reports/2021-06-30/reports"))
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(r#"{"reportType":"GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING","marketplaceIds":["ATVPDKIKX0DER"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "cross_site_refused");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // A cross-site GET without Origin (an <img> or a navigation).
    let resp = h
        .get_with(
            "/orders/v0/orders/1/buyerInfo",
            "sec-fetch-site",
            "cross-site",
        )
        .await;
    assert_eq!(resp.status(), 403);
    // DNS rebinding: the page's own name in Host.
    let resp = h
        .get_with("/orders/v0/orders/1/buyerInfo", "host", "evil.example:8080")
        .await;
    assert_eq!(resp.status(), 421);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "host_not_allowed");
    assert!(h.sim.requests().is_empty());
    assert_eq!(h.sim.lwa_calls(), 0);

    // Hosts clients legitimately send.
    for host in [
        "localhost:8080",
        "27.0.0.1:8080",
        "sellingpartnerapi-na.amazon.com",
        "[::1]:8080",
    ] {
        assert_eq!(
            h.get_with(PARTICIPATIONS, "host", host).await.status(),
            200,
            "{host}"
        );
    }
    let resp = h.get(PARTICIPATIONS).await;
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "no CORS by default"
    );
}

#[tokio::test]
async fn configured_origins_and_hosts_are_let_in_with_cors() {
    let h = Harness::with_config(
        "allowed_origins = [\"https://tool.example\"]\nallowed_hosts = [\"proxy.internal\"]",
    )
    .await;
    let preflight = h
        .client
        .request(reqwest::Method::OPTIONS, h.url(PARTICIPATIONS))
        .header("origin", "https://tool.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://tool.example"
    );
    let resp = h
        .client
        .get(h.url(PARTICIPATIONS))
        .header("origin", "https://tool.example")
        .header("sec-fetch-site", "cross-site")
        .header("host", "proxy.internal:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://tool.example"
    );
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-spapi-proxy-error"));
    assert_eq!(h.sim.requests().len(), 1, "the preflight reached nothing");
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One `GET /_proxy/health` on `conn`, answered 200.
async fn health_on(conn: &mut TcpStream) {
    conn.write_all(b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Sends a request head that never ends, a byte every 200 ms; returns how long until the
/// server cut the connection off (`None` if it read the whole head).
async fn slow_head_cut_off_after(conn: &mut TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let head = b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buf = [0u8; 64];
    for byte in head {
        if conn.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn slow_silent_and_idle_clients_are_closed_on_time() {
    let h = Harness::with_config("[timeouts]\nheader_read = 1\nclient_idle = 1.5").await;
    let addr = h.url.trim_start_matches("http://").to_string();

    // Connects and says nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let took = time_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(900) && t < Duration::from_millis(2500)),
        "{took:?}"
    );

    // Slowloris: a header byte every 200 ms.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let took = slow_head_cut_off_after(&mut slow)
        .await
        .expect("the slow client was cut off");
    assert!(took < Duration::from_millis(2500), "{took:?}");

    // Keep-alive: one request, then idle.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    health_on(&mut idle).await;
    let took = time_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(1300) && t < Duration::from_millis(3500)),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_slow_head_after_a_keep_alive_request_gets_header_read_not_client_idle() {
    let h = Harness::with_config("[timeouts]\nheader_read = 1\nclient_idle = 6").await;
    let addr = h.url.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    health_on(&mut conn).await;
    // Idle for a while (past the watchdog's first look, well within client_idle), then the
    // next head arrives a byte every 200 ms and never ends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = slow_head_cut_off_after(&mut conn)
        .await
        .expect("the slow head was cut off");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?}: header_read is 1 s, client_idle 6 s"
    );
}

#[tokio::test]
async fn past_the_connection_cap_idle_connections_make_room() {
    let h = Harness::with_config("max_connections = 20").await;
    let addr = h.url.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let started = Instant::now();
    let resp = h.get(PARTICIPATIONS).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn under_a_1024_descriptor_limit_1100_silent_connections_do_not_lock_out_a_client() {
    let Some(mut cmd) = serve_under_nofile("the 1,024-descriptor test", 1024) else {
        return;
    };
    // This test process holds the 1,100 client ends itself.
    let limit = spapi_proxy::server::raise_fd_limit();
    assert!(
        limit >= 2400,
        "the test needs 2,400 descriptors, has {limit}"
    );
    let sim = Simulator::start().await.unwrap();
    cmd.envs(sim_env(&sim)).env("RUST_LOG", "info");
    let proxy = LoggedProxy::spawn(cmd);
    let addr = proxy.addr.clone();
    let mut silent = Vec::new();
    for _ in 0..1100 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await
        {
            silent.push(s);
        }
    }
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        crate::support::client()
            .get(format!("http://{addr}{PARTICIPATIONS}"))
            .send(),
    )
    .await
    .expect("answered within 15 s")
    .unwrap();
    assert_eq!(resp.status(), 200);
    let took = started.elapsed();
    drop(silent);
    let logs = proxy.stop();
    assert!(logs.contains("fd_limit=1024"), "{logs}");
    eprintln!("normal request answered in {took:?} with 1,100 silent connections open");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_not_spoken_unless_configured() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let h = Harness::start().await;
    let answer = raw(&h.url, preface).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    let h = Harness::with_config("h2c = true").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client.get(h.url(PARTICIPATIONS)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn hostile_bytes_get_a_4xx_or_a_closed_connection_and_reach_no_foreign_host() {
    let h = Harness::start().await;
    // A "foreign host" that must never be connected to.
    let foreign = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_addr = foreign.local_addr().unwrap();
    let foreign_hits = Arc::new(AtomicUsize::new(0));
    let hits = Arc::clone(&foreign_hits);
    tokio::spawn(async move {
        while foreign.accept().await.is_ok() {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(500_000));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!("/orders/v0/orders/{}", "1".repeat(70_000));
    let f = foreign_addr;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absolute URI to a foreign name", b"GET http://evil.example/orders/v0/orders HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec()),
        ("foreign Host", b"GET /sellers/v1/marketplaceParticipations HTTP/1.1\r\nHost: attacker.example\r\n\r\n".to_vec()),
        ("foreign Origin", b"GET /sellers/v1/marketplaceParticipations HTTP/1.1\r\nHost: localhost\r\nOrigin: http://attacker.example\r\n\r\n".to_vec()),
        ("CONNECT to a foreign host", format!("CONNECT {f} HTTP/1.1\r\nHost: {f}\r\n\r\n").into_bytes()),
        ("bare CR in a header", b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n".to_vec()),
        ("LF folded header", b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n".to_vec()),
        ("NUL in a header", b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n".to_vec()),
        ("huge header", format!("GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\n{huge_header}\r\n").into_bytes()),
        ("too many headers", format!("GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\n{many_headers}\r\n").into_bytes()),
        ("URI too long", format!("GET {long_uri} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()),
        ("conflicting lengths", b"POST /reports/2021-06-30/reports HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec()),
        ("bad chunk size", b"POST /reports/2021-06-30/reports HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec()),
        ("no method", b" / HTTP/1.1\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in &cases {
        let answer = raw(&h.url, bytes).await;
        let status = raw_status(&answer);
        assert!(
            answer.is_empty() || (400..500).contains(&status),
            "{name}: {}",
            answer.lines().next().unwrap_or("")
        );
        assert!(h.sim.requests().is_empty(), "{name} reached the simulator");
        if name.contains("too long") {
            assert_eq!(status, 414, "{name}");
        }
        if name.contains("huge") || name.contains("many") {
            assert_eq!(status, 431, "{name}");
        }
    }
    assert!(h.sim.requests().is_empty(), "{:?}", h.sim.requests());

    // An absolute URI naming an address literal passes the Host rule (python-amazon-sp-api
    // sends such Hosts), but the request goes to the configured endpoint, never to that address.
    let answer = raw(
        &h.url,
        format!("GET http://{f}/_sim/redirect HTTP/1.1\r\nHost: {f}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 302, "{answer}");
    assert_eq!(h.sim.requests().len(), 1);

    // Content-Length and chunked together: the body is read as chunked alone and the
    // connection closed (RFC 9112 §6.1), so the "smuggled" request after it is never served.
    let answer = raw(
        &h.url,
        b"POST /reports/2021-06-30/reports HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /orders/v0/orders/1/buyerInfo HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(h
        .sim
        .requests()
        .iter()
        .all(|r| !r.path_and_query.contains("buyerInfo")));
    let before = h.sim.requests().len();

    // Pipelining: both answered, in order, on one connection.
    let answer = raw(
        &h.url,
        b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\n\r\nGET /sellers/v1/marketplaceParticipations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert_eq!(h.sim.requests().len(), before + 1);
    assert_eq!(
        foreign_hits.load(Ordering::SeqCst),
        0,
        "no connection to a foreign host"
    );
    assert_eq!(h.get("/_proxy/health").await.status(), 200, "still serving");
}
