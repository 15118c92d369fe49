//! The binary itself: `check`, startup errors, and what it writes to its logs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use spapi_proxy::sim::{LwaFault, Simulator, SIM_CLIENT_SECRET, SIM_REFRESH_TOKEN};

use crate::support::sim_env;

pub const BIN: &str = env!("CARGO_BIN_EXE_spapi-proxy");

/// A fresh directory with no `proxy.toml` in it, so the binary reads only what a test gives it.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spapi-proxy-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn command(dir: &PathBuf) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear();
    cmd
}

/// `serve` on a free loopback port under `prlimit --nofile=N:N`, in a fresh directory with an
/// empty environment; `None`, after [`crate::support::skip`], where prlimit is not installed.
pub fn serve_under_nofile(test: &str, nofile: u32) -> Option<Command> {
    let Some(prlimit) = crate::support::prlimit() else {
        crate::support::skip(test, "prlimit (util-linux) is not installed");
        return None;
    };
    let mut cmd = Command::new(prlimit);
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(scratch_dir(&format!("nofile-{nofile}")))
        .env_clear();
    Some(cmd)
}

#[test]
fn check_with_a_bad_config_names_the_key_and_fails() {
    let dir = scratch_dir("bad-config");
    let cases = [
        (
            "unknown key",
            "listen = \"127.0.0.1:8080\"\nregoin = \"eu\"\n",
            "regoin",
        ),
        ("bad value", "region = \"mars\"\n", "region"),
        (
            "bad timeout",
            "[timeouts]\nconnect = -5\n",
            "timeouts.connect",
        ),
    ];
    for (name, text, key) in cases {
        let file = dir.join("proxy.toml");
        std::fs::write(&file, text).unwrap();
        let out = command(&dir)
            .args(["check", "--config"])
            .arg(&file)
            .env("SPAPI_CLIENT_ID", "a")
            .env("SPAPI_CLIENT_SECRET", "b")
            .env("SPAPI_REFRESH_TOKEN", "c")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
}

#[test]
fn check_prints_effective_settings_with_secrets_masked() {
    let dir = scratch_dir("good-config");
    let out = command(&dir)
        .arg("check")
        .env("LWA_APP_ID", "amzn1.application-oa2-client.abc")
        .env("LWA_CLIENT_SECRET", "very-secret-value")
        .env("SP_API_REFRESH_TOKEN", "Atzr|very-secret-refresh")
        .env("SPAPI_REGION", "eu")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("https://sellingpartnerapi-eu.amazon.com"));
    assert!(stdout.contains("amzn1.application-oa2-client.abc"));
    assert!(stdout.contains("***"));
    assert!(!stdout.contains("very-secret"), "{stdout}");
}

#[test]
fn serve_without_credentials_suggests_demo() {
    let dir = scratch_dir("no-creds");
    let out = command(&dir).arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("credentials.client_id"), "{stderr}");
    assert!(stderr.contains("spapi-proxy demo"), "{stderr}");
}

#[test]
fn a_bad_worker_count_names_the_variable_and_fails() {
    let dir = scratch_dir("bad-workers");
    for bad in ["0", "two", "-1", "99999999999999999999999"] {
        let out = command(&dir)
            .env("SPAPI_WORKERS", bad)
            .arg("serve")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad}: {stderr}");
        assert!(stderr.contains("SPAPI_WORKERS"), "{bad}: {stderr}");
    }
}

/// Runs the binary at trace level against the simulator and collects everything it logs.
pub struct LoggedProxy {
    child: std::process::Child,
    pub addr: String,
    logs: Arc<Mutex<String>>,
}

impl LoggedProxy {
    pub fn start(sim: &Simulator, args: &[&str]) -> LoggedProxy {
        let dir = scratch_dir("trace");
        let mut cmd = command(&dir);
        cmd.args(args)
            .args(["--listen", "127.0.0.1:0"])
            .envs(sim_env(sim))
            .env("RUST_LOG", "trace");
        LoggedProxy::spawn(cmd)
    }

    /// Runs `cmd` (the binary, or a wrapper running it) and waits for its address.
    pub fn spawn(mut cmd: Command) -> LoggedProxy {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("spapi-proxy listening") {
                    let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                    if let Some(addr) = json.as_ref().and_then(|j| j["addr"].as_str()) {
                        let _ = addr_tx.send(addr.to_string());
                    } else if let Some(rest) = line.split("addr=").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = addr_tx.send(addr);
                    }
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the proxy logs its address");
        LoggedProxy { child, addr, logs }
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.logs.lock().unwrap().clone();
        logs
    }
}

/// The simulator's buyer: what its restricted answers hold (src/sim/spapi.rs).
const BUYER_PII: [&str; 8] = [
    "Sam Rivera",
    "sam.rivera@marketplace.amazon.com",
    "+1 206-555-0100",
    "1200 Pine St",
    "98101",
    "SEATTLE",
    "Happy birthday, Sam!",
    "PO-7781",
];

#[tokio::test]
async fn no_secret_or_personal_data_appears_in_trace_logs() {
    for format in ["text", "json"] {
        no_secret_or_personal_data_in(format).await;
    }
}

async fn no_secret_or_personal_data_in(format: &str) {
    let sim = Simulator::start().await.unwrap();
    let proxy = LoggedProxy::start(&sim, &["serve", "--log-format", format]);
    let client = crate::support::client();
    let base = format!("http://{}", proxy.addr);
    let url = format!("{base}/orders/v0/orders/902-3159896-1390916");

    // Restricted answers with the buyer's name, address, e-mail and phone, through RDTs.
    for path in [
        "/orders/v0/orders/902-3159896-1390916/address",
        "/orders/v0/orders/902-3159896-1390916/buyerInfo",
        "/orders/v0/orders/902-3159896-1390916/orderItems/buyerInfo",
        "/orders/v0/orders/902-3159896-1390916/orderItems",
        "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER",
    ] {
        let resp = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body = resp.text().await.unwrap();
        assert!(
            BUYER_PII.iter().any(|p| body.contains(p)),
            "{path} carried personal data: {body}"
        );
    }
    // A normal request, a 403-expired replay, a POST, and a refused refresh token.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    sim.expire_all_tokens();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let report = format!("http://{}/reports/2021-06-30/reports", proxy.addr);
    let resp = client
        .post(report)
        .body(r#"{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A grantless call, the proxy's own pages, and a forced token refresh.
    let grantless = format!("{base}/notifications/v1/destinations");
    assert_eq!(client.get(grantless).send().await.unwrap().status(), 200);
    for page in [
        "/_proxy/",
        "/_proxy/status",
        "/_proxy/metrics",
        "/_proxy/quota",
    ] {
        let resp = client.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{page}");
    }
    let refresh = format!("{base}/_proxy/tokens/refresh");
    assert_eq!(client.post(refresh).send().await.unwrap().status(), 200);
    sim.expire_all_tokens();
    sim.set_lwa_fault(Some(LwaFault::InvalidGrant));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 502);

    let logs = proxy.stop();
    assert!(logs.contains("TRACE"), "ran at trace level");
    for pii in BUYER_PII {
        assert!(
            !logs.contains(pii),
            "personal data leaked into the {format} logs"
        );
    }
    assert!(logs.lines().count() > 20, "{logs}");
    let mut secrets = vec![SIM_CLIENT_SECRET.to_string(), SIM_REFRESH_TOKEN.to_string()];
    secrets.extend(sim.issued_tokens());
    assert!(secrets.len() >= 4, "tokens were issued: {secrets:?}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
        // The form-encoded spelling of the refresh token too.
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(
            !logs.contains(&encoded),
            "an encoded secret leaked into the logs"
        );
    }
}

#[test]
fn explain_names_the_operation_and_its_rdt() {
    let dir = scratch_dir("explain");
    let out = command(&dir)
        .args([
            "explain",
            "GET",
            "/orders/v0/orders/902-3159896-1390916/address",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("getOrderAddress"), "{stdout}");
    assert!(
        stdout.contains("Restricted Data Token for GET /orders/v0/orders/{orderId}/address"),
        "{stdout}"
    );

    let out = command(&dir)
        .args(["explain", "GET", "/no/such/api?x=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("unknown"), "{stdout}");
    assert!(
        stdout.contains("forwarded with the seller's LWA token"),
        "{stdout}"
    );

    let out = command(&dir)
        .args(["explain", "GET", "no-slash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn operations_lists_the_whole_catalog() {
    let dir = scratch_dir("operations");
    let out = command(&dir).arg("operations").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 371, "header plus 370 operations");
    assert!(table
        .lines()
        .any(|l| l.starts_with("getOrders ") && l.contains("0.0167")));

    let out = command(&dir)
        .args(["operations", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = json.as_array().unwrap();
    assert_eq!(ops.len(), 370);
    let address = ops
        .iter()
        .find(|o| o["operationId"] == "getOrderAddress")
        .unwrap();
    assert_eq!(address["auth"], "rdt");
    assert_eq!(address["genericPath"], true);
}

fn sellers_file(dir: &std::path::Path, sim: &Simulator, extra: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    let text = format!(
        "token_url = \"{}\"\n\
         [credentials]\nclient_id = \"{}\"\nclient_secret = \"{SIM_CLIENT_SECRET}\"\n\
         [endpoints]\nna = \"{}\"\neu = \"{}\"\n\
         [sellers.acme]\nrefresh_token = \"{SIM_REFRESH_TOKEN}\"\nregion = \"na\"\ndefault = true\n\
         [sellers.beta]\nrefresh_token = \"Atzr|beta\"\nregion = \"eu\"\nselling_partner_id = \"A2BETA\"\n{extra}",
        sim.token_url(),
        spapi_proxy::sim::SIM_CLIENT_ID,
        sim.url(),
        sim.url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn check_and_explain_show_sellers_regions_and_endpoints() {
    let sim = Simulator::start().await.unwrap();
    let dir = scratch_dir("sellers");
    let file = sellers_file(&dir, &sim, "");
    let out = command(&dir)
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("seller              acme: region na"),
        "{stdout}"
    );
    assert!(stdout.contains("selling_partner_id A2BETA"), "{stdout}");
    assert!(
        !stdout.contains("Atzr|beta") && !stdout.contains(SIM_CLIENT_SECRET),
        "{stdout}"
    );

    let out = command(&dir)
        .args([
            "explain",
            "--config",
            file.to_str().unwrap(),
            "--seller",
            "beta",
            "GET",
            "/orders/v0/orders?MarketplaceIds=A1VC38T7YXB528",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("seller       beta\n"), "{stdout}");
    assert!(
        stdout.contains("region       fe (from the marketplaces in the query)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("endpoint     https://sellingpartnerapi-fe.amazon.com"),
        "{stdout}"
    );

    let out = command(&dir)
        .args([
            "explain",
            "--config",
            file.to_str().unwrap(),
            "--seller",
            "zeta",
            "GET",
            "/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("acme, beta"));
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let sim = Simulator::start().await.unwrap();
    sim.add_seller("Atzr|delta");
    let dir = scratch_dir("sighup");
    let file = sellers_file(&dir, &sim, "");
    let mut cmd = command(&dir);
    cmd.args([
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let proxy = LoggedProxy::spawn(cmd);
    let client = crate::support::client();
    let url = format!("http://{}/sellers/v1/marketplaceParticipations", proxy.addr);
    let as_delta = || client.get(&url).header("x-spapi-seller", "delta").send();
    assert_eq!(
        as_delta().await.unwrap().status(),
        400,
        "not configured yet"
    );

    // A broken file is refused and the proxy keeps serving.
    std::fs::write(&file, "[sellers.delta]\nregion = 1\n").unwrap();
    let pid = proxy.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        proxy.wait_for_log("SIGHUP: the config was not reloaded"),
        "{}",
        proxy.logs()
    );
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let refusal = proxy.logs();
    let refusal = refusal
        .lines()
        .find(|l| l.contains("SIGHUP: the config was not reloaded"))
        .unwrap();
    assert!(
        refusal.contains(" WARN "),
        "a refused reload is a warning: {refusal}"
    );

    sellers_file(
        &dir,
        &sim,
        "[sellers.delta]\nrefresh_token = \"Atzr|delta\"\n",
    );
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(proxy.wait_for_log("SIGHUP: reloaded"), "{}", proxy.logs());
    assert_eq!(as_delta().await.unwrap().status(), 200);
    proxy.stop();
}

// Several threads: the commands block this one while the simulator answers the proxy's LWA call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_tokens_refresh_talk_to_a_running_proxy() {
    let sim = Simulator::start().await.unwrap();
    let proxy = LoggedProxy::start(&sim, &["serve"]);
    let client = crate::support::client();
    let url = format!("http://{}", proxy.addr);
    let orders = format!("{url}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER");
    assert_eq!(client.get(&orders).send().await.unwrap().status(), 200);
    let dir = scratch_dir("admin");
    let run = |args: &[&str]| {
        let out = command(&dir)
            .args(args)
            .args(["--url", &url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (code, table, err) = run(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.contains("client secret in use: client_secret"),
        "{table}"
    );
    let seller = table
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or("");
    assert!(
        seller.contains(" na ") && seller.contains("healthy") && seller.contains("age "),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.contains("ordersV0.getOrders")),
        "{table}"
    );
    for token in sim.issued_tokens() {
        assert!(!table.contains(&token), "a token in the table");
    }

    let calls = sim.lwa_calls();
    let (code, out, err) = run(&["tokens", "--refresh"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "default@na: refreshed");
    assert_eq!(sim.lwa_calls(), calls + 1);
    let (code, _, err) = run(&["tokens", "--refresh", "--seller", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("400") && err.contains("default"), "{err}");

    let (code, _, err) = run(&["tokens"]);
    assert_eq!(code, Some(2), "--refresh is required: {err}");
    proxy.stop();
}
