//! What a hostile probe and a new user's first hour found: each test here failed before its fix.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spapi_proxy::proxy::Proxy;
use spapi_proxy::sim::{self, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::{command, scratch_dir, serve_under_nofile, LoggedProxy, BIN};
use crate::support::{config_for, sim_env, Harness};

const PARTICIPATIONS: &str = "/sellers/v1/marketplaceParticipations";
const KEY: &str = "probe-key-0123456789abcdef";

/// Point 1: Bound to 0.0.0.0 with keys, a reload to a keyless loopback config is refused: the socket
/// that is open is still public.
#[tokio::test]
async fn a_reload_cannot_drop_keys_while_the_bound_socket_is_public() {
    let sim = Simulator::start().await.unwrap();
    let config = config_for(
        &sim,
        &format!("rate_limit = false\nlisten = \"0.0.0.0:0\"\ninbound_keys = [\"{KEY}\"]\n"),
    );
    let next = Arc::new(Mutex::new(config_for(
        &sim,
        "rate_limit = false\nlisten = \"127.0.0.1:0\"\n",
    )));
    let source = Arc::clone(&next);
    let proxy = Proxy::new(&config)
        .unwrap()
        .with_source(Box::new(move || Ok(source.lock().unwrap().clone())));
    let h = Harness::with_proxy_on(sim, proxy, &config, "0.0.0.0:0").await;
    let resp = h
        .client
        .post(h.url("/_proxy/reload"))
        .header("x-spapi-proxy-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("inbound_keys") && text.contains("0.0.0.0"),
        "{text}"
    );
    // The old config, keys and all, is still in force.
    assert_eq!(h.get(PARTICIPATIONS).await.status(), 401);
    let with_key = h
        .get_with(PARTICIPATIONS, "x-spapi-proxy-key", KEY)
        .await
        .status();
    assert_eq!(with_key, 200);
}

/// Point 5 and 7: Unknown 60 KB paths cost a capped log line each, and control characters from a
/// client (`?seller=`, `x-spapi-seller`) reach no log line raw, in either format.
#[tokio::test]
async fn log_lines_are_capped_and_carry_no_raw_control_characters() {
    for format in ["text", "json"] {
        let sim = Simulator::start().await.unwrap();
        let mut cmd = command(&scratch_dir("log-probe"));
        cmd.args(["serve", "--log-format", format, "--listen", "127.0.0.1:0"])
            .envs(sim_env(&sim))
            .env("RUST_LOG", "debug");
        let proxy = LoggedProxy::spawn(cmd);
        let client = crate::support::client();
        let base = format!("http://{}", proxy.addr);
        for i in 0..20 {
            let path = format!("/scan/{i}/{}", "x".repeat(60_000));
            let resp = client.get(format!("{base}{path}")).send().await.unwrap();
            assert!(
                resp.status().as_u16() < 500 || resp.status() == 502,
                "{format}"
            );
        }
        let forged = "acme\r\n2026-01-01T00:00:00.000Z  INFO spapi_proxy: forged \u{1b}]0;pwn\u{7}";
        let query: String = form_urlencoded::byte_serialize(forged.as_bytes()).collect();
        client
            .get(format!("{base}/_proxy/ready?seller={query}"))
            .send()
            .await
            .unwrap();
        // A C1 control (CSI) is legal in a header as UTF-8 bytes.
        let csi = reqwest::header::HeaderValue::from_bytes("x\u{9b}31m".as_bytes()).unwrap();
        client
            .get(format!("{base}{PARTICIPATIONS}"))
            .header("x-spapi-seller", csi)
            .send()
            .await
            .unwrap();
        // Its request line (an unknown seller: 400) is the last one.
        assert!(proxy.wait_for_log(PARTICIPATIONS), "{}", proxy.logs());
        let logs = proxy.stop();
        assert!(
            logs.len() < 200_000,
            "{format}: 20 paths of 60 KB wrote {} bytes of log",
            logs.len()
        );
        for line in logs.lines() {
            assert!(line.len() < 4_000, "{format}: a {} byte line", line.len());
            assert!(
                !line.chars().any(|c| c.is_control()),
                "{format}: a raw control character in {line:?}"
            );
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
        assert!(
            !logs
                .lines()
                .any(|l| l.starts_with("2026-01-01T00:00:00.000Z")),
            "{format}: a forged line"
        );
    }
}

/// A fake SP-API that answers 200 with a `Content-Length` of 100,000 and breaks off after
/// 1,000 bytes. Returns its base URL.
async fn breaking_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            x-amzn-RequestId: probe-request-1\r\ncontent-length: 100000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b' '; 1000]).await;
                let _ = stream.flush().await;
                // Gone: the body breaks off.
            });
        }
    });
    url
}

/// Point 8: A body Amazon breaks off is a WARN with its own outcome, and counted.
#[tokio::test]
async fn a_body_amazon_breaks_off_is_logged_at_warn_and_counted() {
    let sim = Simulator::start().await.unwrap();
    let upstream = breaking_upstream().await;
    let dir = scratch_dir("broken-body");
    let mut cmd = command(&dir);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .envs(sim_env(&sim))
        .env("SPAPI_ENDPOINT", &upstream)
        .env("RUST_LOG", "info");
    let proxy = LoggedProxy::spawn(cmd);
    let client = crate::support::client();
    let base = format!("http://{}", proxy.addr);
    let resp = client
        .get(format!("{base}{PARTICIPATIONS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the client sees the break too");
    assert!(
        proxy.wait_for_log("upstream_body_broken"),
        "{}",
        proxy.logs()
    );
    let metrics = client
        .get(format!("{base}/_proxy/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = crate::observe::series(&metrics);
    let broken = r#"spapi_proxy_upstream_body_broken_total{seller="default",api="sellers",operation="getMarketplaceParticipations"}"#;
    assert_eq!(series.get(broken), Some(&1.0), "{metrics}");
    let logs = proxy.stop();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream_body_broken"))
        .unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("probe-request-1") && line.contains("status=200"),
        "{line}"
    );
}

/// Point 9: The proxy's own errors say nosniff, and a token error does not show the LWA URL.
#[tokio::test]
async fn own_errors_are_nosniff_and_token_errors_name_no_url() {
    let sim = Simulator::start().await.unwrap();
    // LWA on a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/auth/o2/token", dead.local_addr().unwrap());
    drop(dead);
    let mut env = sim_env(&sim);
    env.insert("SPAPI_TOKEN_URL".into(), dead_url);
    let config =
        spapi_proxy::config::Config::from_toml_str("rate_limit = false\n", "t.toml", &|k| {
            env.get(k).cloned()
        })
        .unwrap();
    let h = Harness::with(sim, config).await;
    let resp = h.get(PARTICIPATIONS).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_unavailable");
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("auth/o2/token") && !text.contains("http://"),
        "{text}"
    );
}

/// Point 12: Without an OpenMetrics `Accept`, metrics are Prometheus's classic text.
#[tokio::test]
async fn metrics_default_to_the_classic_text_format() {
    let h = Harness::start().await;
    assert_eq!(h.get(PARTICIPATIONS).await.status(), 200);
    let resp = h.get("/_proxy/metrics").await;
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE spapi_proxy_requests_total counter"),
        "{text}"
    );
    assert!(
        !text.contains("# TYPE spapi_proxy_requests counter"),
        "{text}"
    );
}

/// Point 13: `/_proxy/nope` says there is no such proxy endpoint.
#[tokio::test]
async fn an_unknown_proxy_endpoint_says_so() {
    let h = Harness::start().await;
    let resp = h.get("/_proxy/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "unknown_operation");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("no such proxy endpoint: GET /_proxy/nope"),
        "{text}"
    );
    assert!(!text.contains("SP-API operation"), "{text}");
}

/// Point 13: The commands say what a user needs when nothing listens; a fatal config error comes
/// without a misleading warning; a top-level typo gets a did-you-mean.
#[test]
fn commands_and_config_errors_speak_plainly() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let dir = scratch_dir("plain-errors");
    for args in [
        vec!["status", "--url", &url],
        vec!["health", "--url", &url],
        vec!["tokens", "--refresh", "--url", &url],
    ] {
        let out = command(&dir).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr.contains(&format!(
                "connection refused: is the proxy running at {url}?"
            )),
            "{args:?}: {stderr}"
        );
    }
    // No credentials: the error, and no "no seller configured" warning before it.
    let out = command(&dir).arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(!stderr.contains("WARN"), "{stderr}");
    std::fs::write(dir.join("typo.toml"), "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = command(&dir)
        .args(["check", "--config", "typo.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("did you mean `listen`?"), "{stderr}");
    // SPAPI_RATE_LIMIT takes what the README documents.
    for (value, shown) in [
        ("off", "off"),
        ("OFF", "off"),
        ("on", "on"),
        ("false", "off"),
    ] {
        let out = command(&dir)
            .arg("check")
            .env("SPAPI_RATE_LIMIT", value)
            .env("SPAPI_CLIENT_ID", "a")
            .env("SPAPI_CLIENT_SECRET", "b")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("rate_limit          {shown} ")),
            "{value}: {stdout}"
        );
    }
}

/// Point 14: `demo --sim-listen` puts the simulator where asked and prints a config for it; that
/// config (two sellers, two regions) serves through a proxy of its own.
#[tokio::test]
async fn the_demo_prints_a_config_a_user_can_serve() {
    let sim_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = scratch_dir("demo-config");
    let mut demo = command(&dir)
        .args(["demo", "--listen", "127.0.0.1:0", "--sim-listen"])
        .arg(format!("127.0.0.1:{sim_port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut text = String::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("region = \"eu\"") {
                break;
            }
        }
        // Keep reading what the demo prints after: a closed pipe would end it (a write to it
        // fails, and `println!` panics), and with it the simulator this test uses.
        std::thread::spawn(move || for _ in lines {});
        text
    })
    .await
    .unwrap();
    assert!(printed.contains(sim::SIM_CLIENT_SECRET), "{printed}");
    let snippet = &printed[printed.find("token_url = ").expect("a proxy.toml snippet")..];
    assert!(
        snippet.contains(&format!("127.0.0.1:{sim_port}")),
        "{snippet}"
    );
    std::fs::write(dir.join("mine.toml"), snippet).unwrap();
    let mut serve = command(&dir);
    serve.args(["serve", "--config", "mine.toml", "--listen", "127.0.0.1:0"]);
    let proxy = LoggedProxy::spawn(serve);
    let client = crate::support::client();
    for seller in ["us_shop", "eu_shop"] {
        let resp = client
            .get(format!("http://{}{PARTICIPATIONS}", proxy.addr))
            .header("x-spapi-seller", seller)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 200, "{seller}: {}", resp.text().await.unwrap());
    }
    proxy.stop();
    let _ = demo.kill();
    let _ = demo.wait();
}

/// Point 15: `health --config` checks the `listen` in the file, as the image's HEALTHCHECK does.
#[tokio::test]
async fn health_follows_the_listen_address_in_the_file() {
    let sim = Simulator::start().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = scratch_dir("health-config");
    std::fs::write(
        dir.join("proxy.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut cmd = command(&dir);
    cmd.args(["serve", "--config", "proxy.toml"])
        .envs(sim_env(&sim));
    let proxy = LoggedProxy::spawn(cmd);
    assert_eq!(proxy.addr, format!("127.0.0.1:{port}"));
    let health = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(&dir)
            .env_clear()
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(health(&["health", "--config", "proxy.toml"]), Some(0));
    // The default file is ./proxy.toml.
    assert_eq!(health(&["health"]), Some(0));
    proxy.stop();
    assert_eq!(health(&["health", "--config", "proxy.toml"]), Some(1));
}

/// Point 4: Under a small descriptor limit, a crowd of clients waiting on a slow Amazon gets 200s
/// or the proxy's own 503, never a 502 blaming Amazon for "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_a_503_of_our_own_not_amazons_fault() {
    let Some(mut cmd) = serve_under_nofile("the descriptor-exhaustion test", 256) else {
        return;
    };
    let limit = spapi_proxy::server::raise_fd_limit();
    assert!(
        limit >= 2_000,
        "the test needs 2,000 descriptors, has {limit}"
    );
    let sim = Simulator::start().await.unwrap();
    sim.set_upstream_latency(Duration::from_millis(1500));
    cmd.envs(sim_env(&sim))
        .env("SPAPI_RATE_LIMIT", "off")
        .env("RUST_LOG", "warn,spapi_proxy=info");
    let proxy = LoggedProxy::spawn(cmd);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{}{PARTICIPATIONS}", proxy.addr);
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            match client.get(&url).send().await {
                Ok(r) => {
                    let kind = r
                        .headers()
                        .get("x-spapi-proxy-error")
                        .map(|v| v.to_str().unwrap_or("").to_string());
                    (r.status().as_u16(), kind)
                }
                Err(_) => (0, None),
            }
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    let logs = proxy.stop();
    for ((status, kind), n) in &counts {
        assert!(
            *status == 200
                || *status == 0
                || (*status == 503 && kind.as_deref() == Some("local_resources_exhausted")),
            "{n} answered {status} {kind:?}: {counts:?}\n{}",
            logs.lines()
                .filter(|l| l.contains("ERROR"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        counts.get(&(200, None)).copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(!logs.contains("upstream_unreachable"), "{logs}");
    eprintln!("400 clients under 256 descriptors: {counts:?}");
}
